"""DAMA: data- and model-aware per-record beta.

"DAMA: Data- and Model-aware Alignment of Multi-modal LLMs", arXiv:2502.01943, sections 3.1-3.3.

``beta_C = beta * alpha`` per record, with ``alpha`` combining an offline data factor ``alpha_D``
(how clearly CLIP separates chosen from rejected) and an online model factor ``alpha_M`` (how far
the current batch's reward gaps are from their running mean). The DPO loss itself is
:func:`mmpo.losses.dpo.dpo_loss` with ``beta_C``, over the records the model-aware filter keeps
(select them with ``torch.where``, never multiply by the mask: a dropped record's ``inf`` times 0
is NaN).

Both factors are bounded (docs/methods.md, "DAMA numerics"): ``alpha_D`` lies in
:data:`mmpo.types.DATA_ALPHA_RANGE` and, with the default ``"bounded"`` normaliser, ``alpha_M`` in
``[1 / alpha_max, alpha_max]`` and ``|R_B|, |R_bar| <= (N / K) / tau`` whatever the gaps are.

The functions are the paper's equations; :class:`DamaController` is DAMA's training step built on
them (per-record beta, the filtered mean, the running mean and its checkpointed state).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F

from ..types import DATA_ALPHA_RANGE

DeltaMode = Literal["softmax", "ratio"]
FilterMode = Literal["topk", "bottom", "top", "none", "sample"]
CombineMode = Literal["product", "sum"]
Normalizer = Literal["bounded", "paper"]

#: Defaults of the bounded model-aware normaliser (docs/methods.md, "DAMA numerics"): the divisor
#: is never smaller than ``R_FLOOR`` times the batch's mean absolute gap, and ``alpha_M`` is clamped
#: to ``[1 / ALPHA_MODEL_MAX, ALPHA_MODEL_MAX]``.
R_FLOOR = 0.1
ALPHA_MODEL_MAX = 10.0

# alpha = sigmoid(a) / sigmoid(b) is evaluated as exp(logsigmoid(a) - logsigmoid(b)); the exponent
# is capped here so alpha stays finite in float32 even when sigmoid(b) underflows.
_MAX_LOG_ALPHA = 88.0


def _sigmoid_ratio(numerator: float, denominator: float) -> float:
    """``sigmoid(numerator) / sigmoid(denominator)``, in log space, capped at ``e^88``."""
    log_num = F.logsigmoid(torch.tensor(numerator, dtype=torch.float64)).item()
    log_den = F.logsigmoid(torch.tensor(denominator, dtype=torch.float64)).item()
    return math.exp(min(log_num - log_den, _MAX_LOG_ALPHA))


def _as_scores(scores: torch.Tensor | Sequence[float], name: str) -> torch.Tensor:
    out = torch.as_tensor(scores, dtype=torch.float64).detach().flatten().cpu()
    if out.numel() == 0:
        raise ValueError(f"{name} is empty: every response needs at least one scored sub-sentence")
    return out


# ---------------------------------------------------------------------------------------------
# Data-aware (offline)
# ---------------------------------------------------------------------------------------------


def dama_delta(
    clip_chosen: torch.Tensor | Sequence[float],
    clip_rejected: torch.Tensor | Sequence[float],
    mode: DeltaMode = "softmax",
    eps: float = 1e-12,
) -> float:
    """A record's CLIP difference ``delta`` between chosen and rejected, DAMA Eqs. 5-6.

    ``"softmax"`` (paper): ``[P_w; P_l] = softmax([C_w; C_l])``, ``delta = sum P_w - sum P_l``,
    in [-1, 1]. ``"ratio"`` (Table 2's "CLIP Scores" ablation): ``delta = sum C_w / sum C_l``;
    the denominator keeps its sign and is held at least ``eps`` away from 0.
    Intuition: a large ``delta`` means CLIP already tells the two responses apart (easy record).

    Args:
        clip_chosen: ``(p,)`` CLIP scores ``C_w`` of the chosen response's sub-sentences.
        clip_rejected: ``(q,)`` CLIP scores ``C_l`` of the rejected response's sub-sentences.
        mode: ``"softmax"`` or ``"ratio"``.
        eps: smallest magnitude of the "ratio" denominator.

    Returns:
        ``delta`` as a Python float. The dataset mean of it is ``delta_bar``.
    """
    chosen = _as_scores(clip_chosen, "clip_chosen")  # (p,)
    rejected = _as_scores(clip_rejected, "clip_rejected")  # (q,)
    if mode == "softmax":
        probs = torch.softmax(torch.cat([chosen, rejected]), dim=0)  # (p + q,)
        p = chosen.numel()
        return (probs[:p].sum() - probs[p:].sum()).item()
    if mode == "ratio":
        denominator = rejected.sum().item()
        denominator = math.copysign(max(abs(denominator), eps), denominator)
        return chosen.sum().item() / denominator
    raise ValueError(f"mode must be 'softmax' or 'ratio', got {mode!r}")


def dama_alpha_from_delta(delta: float, delta_bar: float) -> float:
    """``alpha_D = sigmoid(delta) / sigmoid(delta_bar)``, DAMA Eq. 7, from a stored ``delta``.

    Clamped to :data:`mmpo.types.DATA_ALPHA_RANGE` = ``[1e-3, 1e3]`` (docs/methods.md, "DAMA
    numerics"), the range records are validated against at load. The paper's softmax mode stays
    inside ``[1/e, e] = [0.37, 2.72]`` for any ``delta`` and ``delta_bar`` in [-1, 1], so the clamp never acts there;
    the ratio ablation's unbounded ``delta`` would otherwise underflow ``alpha_D`` to 0 (a record
    that silently stops training) or overflow it.
    """
    low, high = DATA_ALPHA_RANGE
    return min(max(_sigmoid_ratio(float(delta), float(delta_bar)), low), high)


def dama_data_alpha(
    clip_chosen: torch.Tensor | Sequence[float],
    clip_rejected: torch.Tensor | Sequence[float],
    delta_bar: float,
    mode: DeltaMode = "softmax",
) -> float:
    """The data-aware factor ``alpha_D = sigmoid(delta) / sigmoid(delta_bar)``, DAMA Eq. 7.

    Intuition: records CLIP finds easier than the dataset average get a larger beta (stay close to
    the reference), harder ones a smaller beta.

    Args:
        clip_chosen: ``(p,)`` CLIP scores of the chosen response's sub-sentences.
        clip_rejected: ``(q,)`` CLIP scores of the rejected response's sub-sentences.
        delta_bar: mean of :func:`dama_delta` over the whole dataset, with the same ``mode``.
            (The authors' code hard-codes their dataset's value; recompute it for any other data.)
        mode: ``"softmax"`` (paper) or ``"ratio"`` (ablation), see :func:`dama_delta`.

    Returns:
        ``alpha_D`` as a Python float in :data:`mmpo.types.DATA_ALPHA_RANGE` (computed in log space,
        then clamped; see :func:`dama_alpha_from_delta`).
    """
    return dama_alpha_from_delta(dama_delta(clip_chosen, clip_rejected, mode), delta_bar)


# ---------------------------------------------------------------------------------------------
# Model-aware (online)
# ---------------------------------------------------------------------------------------------


@dataclass
class DamaState:
    """DAMA's training state: the running mean reward gap ``R_bar`` (Eq. 15), saved in checkpoints.

    Attributes:
        r_bar: running mean ``R_bar``; the paper initialises it to 0.
        gamma: EMA momentum; the paper uses 0.9.
        step: number of :meth:`update` calls so far.
    """

    r_bar: float = 0.0
    gamma: float = 0.9
    step: int = 0

    def update(self, r_batch: float | torch.Tensor) -> float:
        """``R_bar <- gamma * R_bar + (1 - gamma) * R_B``, DAMA Eq. 15; call after the optimizer step.

        ``r_batch`` is the ``R_B`` returned by :func:`dama_model_alpha` for this step (the paper mixes
        the normalised ``R_B`` into ``R_bar``; docs/methods.md keeps that as the default). The update
        is a convex combination, so with the bounded normaliser (``|R_B| <= (N / K) / tau``) ``R_bar``
        never leaves that bound once inside it, and it starts at 0. Returns the new ``R_bar``.

        Raises:
            ValueError: ``r_batch`` is NaN or inf (``R_bar`` is left unchanged).
        """
        value = float(r_batch.detach().item()) if isinstance(r_batch, torch.Tensor) else float(r_batch)
        if not math.isfinite(value):
            raise ValueError(f"DAMA update got a non-finite R_B: {value}")
        self.r_bar = self.gamma * self.r_bar + (1.0 - self.gamma) * value
        self.step += 1
        return self.r_bar

    def state_dict(self) -> dict[str, Any]:
        return {"r_bar": self.r_bar, "gamma": self.gamma, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.r_bar = float(state["r_bar"])
        self.gamma = float(state["gamma"])
        self.step = int(state["step"])


def _keep_mask(
    values: torch.Tensor,
    centre: float,
    keep: int,
    filter: FilterMode,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Bool ``(N,)`` mask of the records a filter keeps; ``values`` are float64 on the CPU."""
    n = values.numel()
    if filter == "none" or keep >= n:
        return torch.ones(n, dtype=torch.bool)
    if filter == "topk":
        # Both tails: keep the K smallest squared distances to the batch mean; ties go to the
        # lower index (stable sort), so the result is deterministic.
        order = torch.argsort((values - values.mean()) ** 2, stable=True)  # (N,)
    elif filter == "bottom":
        order = torch.argsort(-values, stable=True)  # highest first: drops the lowest N-K
    elif filter == "top":
        order = torch.argsort(values, stable=True)  # lowest first: drops the highest N-K
    elif filter == "sample":
        # Weighted draw of K without replacement, weights exp(-(R_i - centre)^2 / 2): the K
        # largest of log-weight + Gumbel noise (Gumbel-top-k) is exactly that draw, and working
        # with log-weights means no weight can underflow to 0, so no fallback is ever needed.
        log_w = -0.5 * (values - centre) ** 2  # (N,)
        uniform = torch.rand(n, dtype=torch.float64, generator=generator)
        uniform = uniform.clamp(torch.finfo(torch.float64).tiny, 1.0 - 1e-16)
        gumbel = -torch.log(-torch.log(uniform))  # (N,)
        order = torch.argsort(-(log_w + gumbel), stable=True)
    else:
        raise ValueError(f"filter must be one of topk, bottom, top, none, sample; got {filter!r}")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[:keep]] = True  # (K,) kept indices
    return mask


def _bounded_r_batch(raw: torch.Tensor, mask: torch.Tensor, r_bar: float, floor: float) -> float:
    """``mean_kept R_i / D``, ``D = sign(R_bar) max(|R_bar|, floor * mean|R|)`` (``sign(0) = +1``).

    Computed on ``R / m`` with ``m = max |R|``: the scaled gaps lie in [-1, 1] and their mean
    absolute value in [1/N, 1], so neither huge gaps (1e308) nor subnormal ones lose the bound
    ``|R_B| <= (N / K) / floor`` to overflow or rounding. ``raw``: ``(N,)`` float64; ``mask``: ``(N,)``.
    """
    largest = raw.abs().max().item()
    if largest == 0.0:
        return 0.0  # every gap is 0: so is R_B, whatever R_bar is
    unit = raw / largest  # (N,) in [-1, 1]
    floor_unit = floor * unit.abs().mean().item()  # floor * mean|R| / m
    if r_bar != 0.0 and abs(r_bar) / largest >= floor_unit:
        # The paper's formula, computed as the paper does (bit-identical to normalizer="paper").
        return (raw / r_bar)[mask].mean().item()  # (K,) -> (); each term is at most N / floor
    if floor_unit == 0.0:  # only for a floor so small that floor / N underflows
        return 0.0
    divisor = -floor_unit if r_bar < 0 else floor_unit
    return (unit[mask] / divisor).mean().item()  # (K,) -> (); each term is at most N / floor


def dama_model_alpha(
    gaps: torch.Tensor,
    r_bar: float,
    keep: int,
    filter: FilterMode = "topk",
    eps: float = 1e-6,
    generator: torch.Generator | None = None,
    normalizer: Normalizer = "bounded",
    floor: float = R_FLOOR,
    alpha_max: float = ALPHA_MODEL_MAX,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model-aware factor ``alpha_M``, its keep mask, and the batch statistic ``R_B``.

    DAMA Eqs. 10-13 (docs/methods.md, "Model-aware"):
    ``Rn_i = R_i / R_bar``; keep ``K`` records (``M_i``); ``R_B = (1/K) sum_i M_i Rn_i``;
    ``alpha_M = sigmoid(R_B) / sigmoid(R_bar)``.
    Intuition: when the batch's reward gaps run ahead of their running mean the model is already
    separating the pairs, so beta grows; when they lag, beta shrinks.

    Filters (``K = keep``; ``keep >= N`` keeps everything):

    * ``"topk"`` (paper, default): the K records whose gaps are closest to the batch mean, dropping
      both tails. Ranking by ``(Rn_i - mean Rn)^2`` equals ranking raw gaps by ``(R_i - mean R)^2``,
      since ``Rn`` is ``R`` times one constant.
    * ``"bottom"``: drop the N-K lowest gaps. ``"top"``: drop the N-K highest gaps. Both rank the
      raw gaps ``R_i``, so their meaning does not flip when ``R_bar`` is negative (for ``R_bar > 0``
      it is the same as ranking ``Rn_i``).
    * ``"none"``: keep all.
    * ``"sample"``: the authors' code's random draw of K without replacement, weights
      ``exp(-(R_i - R_bar)^2 / 2)`` on raw gaps, drawn with ``generator``. Sampled in log space
      (Gumbel-top-k), so underflowing weights cannot make the draw degenerate.

    Normalisers (docs/methods.md, "DAMA numerics"). ``S = mean_i |R_i|`` over the whole batch,
    ``tau = floor``:

    * ``"bounded"`` (default): ``Rn_i = R_i / D`` with ``D = sign(R_bar) * max(|R_bar|, tau * S)``
      (``sign(0) = +1``). While ``|R_bar| >= tau * S`` this *is* the paper's ``R_i / R_bar``; below
      that the divisor stops shrinking with ``R_bar``, so ``|R_B| <= (N / K) / tau`` for any
      ``R_bar`` and any gaps (the kept ``|R_i|`` sum to at most ``N S``). A running mean fed only
      such values stays inside the same bound. ``alpha_M`` is then clamped to
      ``[1 / alpha_max, alpha_max]``: for ``R_bar > 0`` the paper's value is below 2 and only the
      lower end can act; for ``R_bar < 0`` it grows like ``e^|R_bar|``, which the clamp stops.
    * ``"paper"``: the unguarded formula ``R_i / R_bar`` with ``alpha_M`` only capped at ``e^88``,
      kept to reproduce earlier runs and for ``benchmarks/dama_stability.py``. It is unbounded:
      ``|R_bar|`` just above ``eps`` makes ``R_B`` explode, and ``R_bar << 0`` makes
      ``alpha_M ~ e^-R_bar``, which overflows ``beta * alpha * gap`` in float32. ``floor`` and
      ``alpha_max`` are ignored.

    Zero-start guard: the paper starts from ``R_bar = 0``, where ``Rn`` divides by zero. While
    ``|r_bar| <= eps``, ``alpha_M = 1`` (plain beta) and the filter runs on raw gaps. ``R_B`` is then
    (bounded) ``mean_kept R_i / (tau * S)`` — the divisor formula above with ``R_bar = 0`` — or
    (paper) the mean of the kept *raw* gaps; either way the EMA update moves ``R_bar`` away from 0
    once the gaps are non-zero (at step 0 they are all 0, ``R_B = 0`` and ``R_bar`` stays 0, which is
    correct: nothing is known yet). Other departures (docs/methods.md): Eq. 11 writes the distance
    to ``R_bar`` and Eq. 12 divides by ``N - K``; the project uses the distance to the batch mean and
    the mean over the K kept records. All statistics are float64 on the CPU; ``alpha_M`` is
    evaluated in log space (finite even when ``sigmoid(R_bar)`` underflows).

    Args:
        gaps: ``(N,)`` reward gaps ``R_i = beta * ratio(y_w,i) - beta * ratio(y_l,i)`` of the global
            batch (gathered across processes); detached here.
        r_bar: the running mean ``R_bar`` (:attr:`DamaState.r_bar`); must be finite.
        keep: ``K``, the number of records to keep (paper: 12 of 16).
        filter: one of ``"topk" | "bottom" | "top" | "none" | "sample"``.
        eps: zero-start guard threshold on ``|r_bar|``.
        generator: random generator for ``"sample"`` (CPU); ``None`` uses the global one.
        normalizer: ``"bounded"`` (default) or ``"paper"``.
        floor: ``tau > 0``, the bounded divisor's floor relative to the mean absolute gap.
        alpha_max: ``>= 1``; the bounded ``alpha_M`` lies in ``[1 / alpha_max, alpha_max]``.

    Returns:
        ``(alpha_model, keep_mask, r_batch)``: 0-dim ``alpha_M``; ``(N,)`` bool mask on ``gaps``'
        device; 0-dim ``R_B`` to pass to :meth:`DamaState.update` after the optimizer step.
        All detached. With ``"bounded"`` they are finite for any finite input (float32 or float64,
        any magnitude); a non-finite gap may give a non-finite ``R_B``, which the update refuses.
    """
    if gaps.dim() != 1 or gaps.numel() == 0:
        raise ValueError(f"gaps must be a non-empty 1-d tensor, got shape {tuple(gaps.shape)}")
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    r_bar = float(r_bar)
    if not math.isfinite(r_bar):
        raise ValueError(f"r_bar must be finite, got {r_bar}")
    if normalizer not in ("bounded", "paper"):
        raise ValueError(f"normalizer must be 'bounded' or 'paper', got {normalizer!r}")
    if not (math.isfinite(floor) and floor > 0):
        raise ValueError(f"floor must be a finite number > 0, got {floor}")
    if not (math.isfinite(alpha_max) and alpha_max >= 1):
        raise ValueError(f"alpha_max must be a finite number >= 1, got {alpha_max}")
    device = gaps.device
    out_dtype = gaps.dtype if gaps.dtype in (torch.float32, torch.float64) else torch.float32
    raw = gaps.detach().to(device="cpu", dtype=torch.float64)  # (N,)

    mask = _keep_mask(raw, r_bar, keep, filter, generator)  # (N,)
    guarded = abs(r_bar) <= eps  # zero-start guard
    if normalizer == "paper":
        r_batch = (raw / (1.0 if guarded else r_bar))[mask].mean().item()  # (K,) -> ()
    else:
        r_batch = _bounded_r_batch(raw, mask, 0.0 if guarded else r_bar, floor)
    if guarded:
        alpha = 1.0
    else:
        alpha = _sigmoid_ratio(r_batch, r_bar)
        if normalizer == "bounded":
            alpha = min(max(alpha, 1.0 / alpha_max), alpha_max)

    def as_out(value: float) -> torch.Tensor:
        return torch.tensor(value, dtype=out_dtype, device=device)

    return as_out(alpha), mask.to(device), as_out(r_batch)


# ---------------------------------------------------------------------------------------------
# Combined
# ---------------------------------------------------------------------------------------------


def dama_combine(
    alpha_data: torch.Tensor,
    alpha_model: float | torch.Tensor,
    mode: CombineMode = "product",
    rho: float = 0.5,
) -> torch.Tensor:
    """The combined factor ``alpha`` with ``beta_C = beta * alpha``, DAMA Eqs. 16-17.

    ``"product"`` (paper): ``alpha = alpha_D * alpha_M``. ``"sum"`` (ablation):
    ``alpha = (1 - rho) * alpha_M + rho * alpha_D``. D2PO (data only) is ``alpha_model = 1``;
    MDPO (model only) is ``alpha_data = 1``; with both 1 this is plain DPO.

    Args:
        alpha_data: ``(B,)`` per-record ``alpha_D``.
        alpha_model: the batch's ``alpha_M`` (float or 0-dim tensor).
        mode: ``"product"`` or ``"sum"``.
        rho: weight of ``alpha_D`` in ``"sum"`` mode.

    Returns:
        ``(B,)`` detached factors.
    """
    alpha_data = alpha_data.detach()
    if isinstance(alpha_model, torch.Tensor):
        alpha_model = alpha_model.detach().to(device=alpha_data.device, dtype=alpha_data.dtype)
    if mode == "product":
        return alpha_data * alpha_model
    if mode == "sum":
        return (1.0 - rho) * alpha_model + rho * alpha_data
    raise ValueError(f"mode must be 'product' or 'sum', got {mode!r}")


# ---------------------------------------------------------------------------------------------
# The training step
# ---------------------------------------------------------------------------------------------


class BatchGather(Protocol):
    """How the DAMA step sees the other processes' records (the trainer passes one built on
    ``accelerate``; :class:`SingleProcess` for one process)."""

    num_processes: int

    def concat(self, values: torch.Tensor) -> tuple[torch.Tensor, int]:
        """All processes' ``(B_p,)`` values concatenated in process order, and this process's offset."""

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """A 0-dim value summed over processes."""


class SingleProcess:
    """:class:`BatchGather` for one process: the global batch is the local one."""

    num_processes = 1

    def concat(self, values: torch.Tensor) -> tuple[torch.Tensor, int]:
        return values, 0

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        return value


class DamaController:
    """DAMA's whole training-step logic and its state: the per-record ``beta_C``, the model-aware
    filter's mean over the kept records, and the running mean ``R_bar`` with its update after each
    optimizer step.

    One step, as :class:`~mmpo.training.trainer.PreferenceTrainer` drives it:

    1. :meth:`beta` for each micro-batch: ``beta_C = beta * alpha`` ``(B,)``, the keep mask ``(B,)``
       (model-aware) and diagnostics; the batch's ``R_B`` is queued (training only);
    2. :meth:`mean_loss`: the per-record losses averaged over the records kept in the *global* batch;
    3. :meth:`step_end` after the optimizer step: ``R_bar`` moves by the mean of the queued ``R_B``.
       A skipped batch takes its ``R_B`` back (:meth:`mark` / :meth:`discard_since`), a skipped
       optimizer step all of them (:meth:`discard_pending`).

    :meth:`state_dict` holds ``R_bar`` and the random generator of the ``"sample"`` filter, for
    checkpoints. With both factors off, :meth:`beta` returns the plain ``beta`` and keeps everything:
    the step is DPO's.

    Args:
        beta: the base DPO beta.
        data_aware / model_aware: the two factors (D2PO = data only, MDPO = model only).
        keep: ``K / N``, the fraction of the global batch the model-aware filter keeps.
        filter, normalizer, floor, alpha_max: see :func:`dama_model_alpha`.
        gamma: momentum of ``R_bar`` (:class:`DamaState`).
        gap_uses_beta: ``R_i = beta * (ratio_w - ratio_l)`` (paper) or the raw margin (authors' code).
        combine, rho: see :func:`dama_combine`.
        seed: seed of the ``"sample"`` filter's generator.
        gather: how to see the global batch; default one process.
    """

    def __init__(self, beta: float, *, data_aware: bool = False, model_aware: bool = False, keep: float = 0.75,
                 filter: FilterMode = "topk", gamma: float = 0.9, gap_uses_beta: bool = True,
                 combine: CombineMode = "product", rho: float = 0.5, normalizer: Normalizer = "bounded",
                 floor: float = R_FLOOR, alpha_max: float = ALPHA_MODEL_MAX, seed: int = 0,
                 gather: BatchGather | None = None):
        self.beta_base = beta
        self.data_aware, self.model_aware = data_aware, model_aware
        self.keep, self.filter, self.gap_uses_beta = keep, filter, gap_uses_beta
        self.combine, self.rho = combine, rho
        self.normalizer, self.floor, self.alpha_max = normalizer, floor, alpha_max
        self.state = DamaState(gamma=gamma)
        self.generator = torch.Generator().manual_seed(seed)
        self.gather: BatchGather = gather or SingleProcess()
        self._pending: list[float] = []  # this optimizer step's R_B values, one per micro-batch

    @classmethod
    def from_arguments(cls, dama: Any, beta: float, seed: int = 0, gather: BatchGather | None = None
                       ) -> DamaController:
        """From a :class:`~mmpo.training.config.DamaArguments` (its ``dama_*`` fields)."""
        return cls(beta, data_aware=dama.dama_data, model_aware=dama.dama_model, keep=dama.dama_keep,
                   filter=dama.dama_filter, gamma=dama.dama_gamma, gap_uses_beta=dama.dama_gap_uses_beta,
                   combine=dama.dama_combine, rho=dama.dama_rho, normalizer=dama.dama_normalizer,
                   floor=dama.dama_scale_floor, alpha_max=dama.dama_alpha_model_max, seed=seed, gather=gather)

    @property
    def enabled(self) -> bool:
        return self.data_aware or self.model_aware

    @property
    def r_bar(self) -> float:
        return self.state.r_bar

    def beta(self, chosen: torch.Tensor, rejected: torch.Tensor, data_alpha: torch.Tensor | None = None,
             training: bool = True) -> tuple[float | torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """This micro-batch's ``beta_C``, the model-aware keep mask and the diagnostics.

        Args:
            chosen / rejected: ``(B,)`` log-ratios of the two responses (ASPO's weighted chosen one
                when ASPO is on); detached here.
            data_alpha: ``(B,)`` the records' offline ``alpha_D`` (needed when data-aware).
            training: queue the batch's ``R_B`` for :meth:`step_end` (not in evaluation).

        Returns:
            ``(beta, keep, diagnostics)``: ``beta`` a ``(B,)`` tensor (the float ``beta`` when DAMA is
            off), ``keep`` a ``(B,)`` bool mask of this process's records (None unless model-aware).
        """
        if not self.enabled:
            return self.beta_base, None, {}
        chosen, rejected = chosen.detach(), rejected.detach()
        if self.data_aware and data_alpha is None:
            raise ValueError("data-aware DAMA needs each record's data_alpha (mmpo score-sentences --dama)")
        alpha_data = data_alpha.to(chosen) if self.data_aware else torch.ones_like(chosen)  # (B,)
        gaps = chosen - rejected  # (B,)
        if self.gap_uses_beta:
            gaps = self.beta_base * gaps
        alpha_model: float | torch.Tensor = 1.0
        keep, diag = None, {}
        if self.model_aware:
            global_gaps, offset = self.gather.concat(gaps)  # (N,)
            k = max(1, round(self.keep * global_gaps.shape[0]))
            alpha_model, keep_global, r_batch = dama_model_alpha(
                global_gaps, self.state.r_bar, k, self.filter, generator=self.generator,
                normalizer=self.normalizer, floor=self.floor, alpha_max=self.alpha_max)
            keep = keep_global[offset : offset + chosen.shape[0]].to(chosen.device)  # (B,)
            if training:
                self._pending.append(float(r_batch))
            diag = {"dama/alpha_model": alpha_model.reshape(1), "dama/r_bar": torch.tensor([self.state.r_bar]),
                    "dama/r_batch": r_batch.reshape(1), "dama/kept_fraction": keep.float()}
        alpha = dama_combine(alpha_data, alpha_model, self.combine, self.rho)  # (B,)
        diag["dama/alpha_data_mean"] = alpha_data
        diag["dama/beta_mean"] = self.beta_base * alpha
        if self.data_aware:
            easy = alpha_data >= 1
            diag["dama/gap_easy"] = gaps[easy]
            diag["dama/gap_hard"] = gaps[~easy]
        return self.beta_base * alpha, keep, diag

    def mean_loss(self, losses: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """The mean of ``losses`` ``(B,)`` over the records kept in the global batch (all without a mask).

        DDP averages gradients over processes, so each process scales its kept sum by
        ``P / K_global``. A filtered record's loss is replaced, not multiplied by 0: ``inf * 0`` is NaN.
        """
        if keep is None:
            return losses.mean()
        kept_global = self.gather.sum(keep.float().sum())
        kept_losses = torch.where(keep, losses, torch.zeros_like(losses))  # (B,)
        return kept_losses.sum() * self.gather.num_processes / kept_global.clamp(min=1)

    def mark(self) -> int:
        """A position in the queue of ``R_B`` values, for :meth:`discard_since`."""
        return len(self._pending)

    def discard_since(self, mark: int) -> None:
        """Take back the ``R_B`` values queued after ``mark`` (their batch was skipped)."""
        del self._pending[mark:]

    def discard_pending(self) -> None:
        """Take back every queued ``R_B`` (the optimizer step was skipped)."""
        self._pending.clear()

    def step_end(self) -> None:
        """After each optimizer step: ``R_bar <- gamma R_bar + (1 - gamma) R_B`` (mean over micro-batches)."""
        if self._pending:
            self.state.update(sum(self._pending) / len(self._pending))
            self._pending.clear()

    def state_dict(self) -> dict[str, Any]:
        """``R_bar`` and the filter's generator, in the layout of ``mmpo_state.json``."""
        return {"dama": self.state.state_dict(), "dama_generator": self.generator.get_state().tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state.load_state_dict(state["dama"])
        self.generator.set_state(torch.tensor(state["dama_generator"], dtype=torch.uint8))
