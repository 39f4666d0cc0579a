"""DAMA: data- and model-aware per-record beta (003_d7f65a13b9e44e88, sections 3.1-3.3).

``beta_C = beta * alpha`` per record, with ``alpha`` combining an offline data factor ``alpha_D``
(how clearly CLIP separates chosen from rejected) and an online model factor ``alpha_M`` (how far
the current batch's reward gaps are from their running mean). The DPO loss itself is
:func:`mmpo.losses.dpo.dpo_loss` with ``beta_C``, over the records the model-aware filter keeps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

DeltaMode = Literal["softmax", "ratio"]
FilterMode = Literal["topk", "bottom", "top", "none", "sample"]
CombineMode = Literal["product", "sum"]

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
    """``alpha_D = sigmoid(delta) / sigmoid(delta_bar)``, DAMA Eq. 7, from a stored ``delta``."""
    return _sigmoid_ratio(float(delta), float(delta_bar))


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
        ``alpha_D`` as a positive Python float (computed in log space, capped at ``e^88``).
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
        the normalised ``R_B`` into ``R_bar``; docs/methods.md keeps that as the default).
        Returns the new ``R_bar``.
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


def dama_model_alpha(
    gaps: torch.Tensor,
    r_bar: float,
    keep: int,
    filter: FilterMode = "topk",
    eps: float = 1e-6,
    generator: torch.Generator | None = None,
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

    Departures (docs/methods.md): Eq. 11 writes the distance to ``R_bar`` and Eq. 12 divides by
    ``N - K``; the project uses the distance to the batch mean and the mean over the K kept
    records. Zero-start guard: the paper starts from ``R_bar = 0``, where ``Rn`` divides by zero.
    While ``|r_bar| <= eps`` this function skips normalisation: ``alpha_M = 1`` (plain beta), the
    filter runs on raw gaps, and ``R_B`` is the mean of the kept *raw* gaps, so the EMA update can
    move ``R_bar`` away from 0 once the gaps are non-zero (at step 0 they are all 0 and
    ``R_bar`` stays 0, which is correct: nothing is known yet). Afterwards the paper's formula
    applies, including its update of the un-normalised ``R_bar`` with the normalised ``R_B``.
    ``alpha_M`` is evaluated in log space and capped at ``e^88``, so it is finite even when
    ``sigmoid(R_bar)`` underflows; all statistics are computed in float64.

    Args:
        gaps: ``(N,)`` reward gaps ``R_i = beta * ratio(y_w,i) - beta * ratio(y_l,i)`` of the global
            batch (gathered across processes); detached here.
        r_bar: the running mean ``R_bar`` (:attr:`DamaState.r_bar`).
        keep: ``K``, the number of records to keep (paper: 12 of 16).
        filter: one of ``"topk" | "bottom" | "top" | "none" | "sample"``.
        eps: zero-start guard threshold on ``|r_bar|``.
        generator: random generator for ``"sample"`` (CPU); ``None`` uses the global one.

    Returns:
        ``(alpha_model, keep_mask, r_batch)``: 0-dim ``alpha_M``; ``(N,)`` bool mask on ``gaps``'
        device; 0-dim ``R_B`` to pass to :meth:`DamaState.update` after the optimizer step.
        All detached and finite for finite inputs.
    """
    if gaps.dim() != 1 or gaps.numel() == 0:
        raise ValueError(f"gaps must be a non-empty 1-d tensor, got shape {tuple(gaps.shape)}")
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    device = gaps.device
    out_dtype = gaps.dtype if gaps.dtype in (torch.float32, torch.float64) else torch.float32
    raw = gaps.detach().to(device="cpu", dtype=torch.float64)  # (N,)
    r_bar = float(r_bar)

    mask = _keep_mask(raw, r_bar, keep, filter, generator)  # (N,)
    if abs(r_bar) <= eps:  # zero-start guard
        r_batch = raw[mask].mean().item()  # (K,) -> ()
        alpha = 1.0
    else:
        normalised = raw / r_bar  # (N,)
        r_batch = normalised[mask].mean().item()  # (K,) -> ()
        alpha = _sigmoid_ratio(r_batch, r_bar)

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
