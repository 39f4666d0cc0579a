"""DAMA's two factors: the offline data-aware ``alpha_D`` and the online model-aware ``alpha_M``,
and how they combine (arXiv:2502.01943, Eqs. 5-17; docs/methods.md, "DAMA", restates them and the
authors' code). Torch only; :mod:`mmpo.methods.dama.controller` drives them in a training step."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

#: The range a record's DAMA ``data_alpha`` must lie in. ``alpha_D = sigmoid(delta) / sigmoid(delta_bar)``
#: is within [0.37, 2.72] in the paper's softmax mode; the bound leaves room for the ratio ablation
#: and hand-made values while keeping ``beta * alpha_D`` far from float overflow.
DATA_ALPHA_RANGE = (1e-3, 1e3)

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
    scale: float = 1.0,
) -> float:
    """A record's CLIP difference ``delta`` between chosen and rejected, DAMA Eqs. 5-6.

    ``"softmax"`` (paper): ``[P_w; P_l] = softmax(scale * [C_w; C_l])``, ``delta = sum P_w - sum P_l``,
    in [-1, 1]. The paper uses CLIP as a classifier, whose logits are the cosine similarities times
    the model's ``logit_scale.exp()`` (100 for OpenAI CLIP): pass cosines and that ``scale``. With
    ``scale = 1`` (raw cosines, about 0.2-0.35 apart by a few hundredths) the softmax is nearly
    uniform and ``delta`` is about ``(p - q) / (p + q)``, a sentence count, not a quality.
    ``"ratio"`` (Table 2's "CLIP Scores" ablation): ``delta = sum C_w / sum C_l`` (``scale`` cancels);
    the denominator keeps its sign and is held at least ``eps`` away from 0.
    Intuition: a large ``delta`` means CLIP already tells the two responses apart (easy record).

    Args:
        clip_chosen: ``(p,)`` CLIP scores ``C_w`` of the chosen response's sub-sentences.
        clip_rejected: ``(q,)`` CLIP scores ``C_l`` of the rejected response's sub-sentences.
        mode: ``"softmax"`` or ``"ratio"``.
        eps: smallest magnitude of the "ratio" denominator.
        scale: multiplies the scores before the softmax (CLIP's logit scale; > 0).

    Returns:
        ``delta`` as a Python float. The dataset mean of it is ``delta_bar``.
    """
    chosen = _as_scores(clip_chosen, "clip_chosen")  # (p,)
    rejected = _as_scores(clip_rejected, "clip_rejected")  # (q,)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale}")
    if mode == "softmax":
        probs = torch.softmax(scale * torch.cat([chosen, rejected]), dim=0)  # (p + q,)
        p = chosen.numel()
        return (probs[:p].sum() - probs[p:].sum()).item()
    if mode == "ratio":
        denominator = rejected.sum().item()
        denominator = math.copysign(max(abs(denominator), eps), denominator)
        return chosen.sum().item() / denominator
    raise ValueError(f"mode must be 'softmax' or 'ratio', got {mode!r}")


def dama_alpha_from_delta(delta: float, delta_bar: float) -> float:
    """``alpha_D = sigmoid(delta) / sigmoid(delta_bar)``, DAMA Eq. 7, from a stored ``delta``.

    Clamped to :data:`DATA_ALPHA_RANGE` = ``[1e-3, 1e3]`` (docs/methods.md, "DAMA
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
    scale: float = 1.0,
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
        scale: CLIP's logit scale, see :func:`dama_delta`.

    Returns:
        ``alpha_D`` as a Python float in :data:`DATA_ALPHA_RANGE` (computed in log space,
        then clamped; see :func:`dama_alpha_from_delta`).
    """
    return dama_alpha_from_delta(dama_delta(clip_chosen, clip_rejected, mode, scale=scale), delta_bar)


# ---------------------------------------------------------------------------------------------
# Model-aware (online)
# ---------------------------------------------------------------------------------------------


def _keep_mask(
    values: torch.Tensor,
    centre: float,
    keep: int,
    filter: FilterMode,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Bool ``(N,)`` mask of the records a filter keeps; ``values`` are the gaps on the CPU, in their
    own dtype (the ``"sample"`` draw depends on it, as the authors' does)."""
    n = values.numel()
    if filter == "none" or keep >= n:
        return torch.ones(n, dtype=torch.bool)
    wide = values.to(torch.float64)  # (N,)
    if filter == "topk":
        # Both tails: keep the K smallest squared distances to the batch mean; ties go to the
        # lower index (stable sort), so the result is deterministic.
        order = torch.argsort((wide - wide.mean()) ** 2, stable=True)  # (N,)
    elif filter == "bottom":
        order = torch.argsort(-wide, stable=True)  # highest first: drops the lowest N-K
    elif filter == "top":
        order = torch.argsort(wide, stable=True)  # lowest first: drops the highest N-K
    elif filter == "sample":
        return _sample_mask(values, centre, keep, generator)
    else:
        raise ValueError(f"filter must be one of topk, bottom, top, none, sample; got {filter!r}")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[:keep]] = True  # (K,) kept indices
    return mask


def _sample_mask(values: torch.Tensor, centre: float, keep: int, generator: torch.Generator | None) -> torch.Tensor:
    """The authors' draw: ``K`` records without replacement, weights ``exp(-(A_i - centre)^2 / 2)``.

    The weights are computed as the authors' code computes them (the gaps' dtype, the centre as a
    float32 tensor) and drawn with ``torch.multinomial(weights, K, replacement=False)`` from
    ``generator``, so the same generator state keeps the same records. One fix: when fewer than ``K``
    weights are positive (they underflow beyond ``|A_i - centre| ~ 14`` in float32),
    ``multinomial`` fills the draw with zero-weight records in index order, which can be the
    farthest, and the authors' all-zero fallback draws ``K`` with replacement (duplicates); here
    the draw keeps the ``K`` records nearest to the centre instead (every positive-weight record
    among them, since the weight falls with the distance). A NaN gap gets weight 0 and is kept last.
    """
    centre_t = torch.tensor([centre], dtype=torch.float32)
    weights = torch.exp(-0.5 * (values - centre_t).pow(2))  # (N,)
    weights = torch.nan_to_num(weights, nan=0.0)
    mask = torch.zeros(values.numel(), dtype=torch.bool)
    if int((weights > 0).sum()) >= keep:
        mask[torch.multinomial(weights, keep, replacement=False, generator=generator)] = True
        return mask
    distance = (values.to(torch.float64) - centre).abs().nan_to_num(nan=math.inf)  # (N,)
    mask[torch.argsort(distance, stable=True)[:keep]] = True
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


def _check_model_inputs(gaps: torch.Tensor, keep: int, centre: float, name: str) -> tuple[float, torch.dtype]:
    """The checks both ``alpha_M`` forms make: ``(N,)`` gaps, ``K >= 1`` and a finite running mean
    (called ``name``). Returns the running mean as a float and the dtype of the outputs."""
    if gaps.dim() != 1 or gaps.numel() == 0:
        raise ValueError(f"gaps must be a non-empty 1-d tensor, got shape {tuple(gaps.shape)}")
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    centre = float(centre)
    if not math.isfinite(centre):
        raise ValueError(f"{name} must be finite, got {centre}")
    return centre, gaps.dtype if gaps.dtype in (torch.float32, torch.float64) else torch.float32


def paper_r_batch(raw: torch.Tensor, mask: torch.Tensor, r_bar: float, normalizer: Normalizer, floor: float,
                   eps: float = 1e-6) -> float:
    """The paper's ``R_B`` (Eqs. 10-12) of the kept records, with the zero-start guard of
    :func:`dama_model_alpha`. ``raw``: ``(N,)`` float64 gaps; ``mask``: ``(N,)`` bool."""
    guarded = abs(r_bar) <= eps
    if normalizer == "paper":
        return (raw / (1.0 if guarded else r_bar))[mask].mean().item()  # (K,) -> ()
    return _bounded_r_batch(raw, mask, 0.0 if guarded else r_bar, floor)


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
    """The model-aware factor ``alpha_M``, its keep mask, and the batch statistic ``R_B`` (the paper's form).

    DAMA Eqs. 10-13: ``Rn_i = R_i / R_bar``; keep ``K`` records (``M_i``); ``R_B = (1/K) sum_i M_i Rn_i``;
    ``alpha_M = sigmoid(R_B) / sigmoid(R_bar)``. Intuition: when the batch's reward gaps run ahead of
    their running mean the model already separates the pairs, so beta grows; when they lag, it shrinks.
    docs/methods.md ("DAMA" and "DAMA numerics, paper recipe") gives each filter, both normalisers,
    the zero-start guard (``alpha_M = 1`` while ``|r_bar| <= eps``) and why each departs from the paper.
    All statistics are float64 on the CPU; ``alpha_M`` is evaluated in log space.

    Args:
        gaps: ``(N,)`` reward gaps ``R_i`` of the global batch (gathered across processes); detached here.
        r_bar: the running mean ``R_bar`` (:attr:`DamaState.r_bar`); must be finite.
        keep: ``K``, the number of records to keep (paper: 12 of 16; ``keep >= N`` keeps all).
        filter: ``"topk"`` (the K gaps closest to the batch mean), ``"bottom"`` / ``"top"`` (drop the
            lowest / highest raw gaps), ``"none"``, or ``"sample"`` (the authors' weighted draw with
            ``generator``; see :func:`dama_model_alpha_authors`).
        eps: zero-start guard threshold on ``|r_bar|``.
        generator: random generator for ``"sample"`` (CPU); ``None`` uses the global one.
        normalizer: ``"bounded"`` (divide by ``R_bar`` held at least ``floor`` x the batch's mean
            ``|R_i|`` away from 0, ``alpha_M`` clamped to ``[1 / alpha_max, alpha_max]``) or ``"paper"``
            (unguarded, capped at ``e^88`` only; ``floor`` and ``alpha_max`` ignored).
        floor: ``tau > 0``, the bounded divisor's floor; bounds ``|R_B|`` by ``(N / K) / tau``.
        alpha_max: ``>= 1``; the bounded ``alpha_M`` lies in ``[1 / alpha_max, alpha_max]``.

    Returns:
        ``(alpha_model, keep_mask, r_batch)``: 0-dim ``alpha_M``; ``(N,)`` bool mask on ``gaps``'
        device; 0-dim ``R_B`` for :meth:`DamaState.update`. All detached; with ``"bounded"`` finite
        for any finite input.
    """
    r_bar, out_dtype = _check_model_inputs(gaps, keep, r_bar, "r_bar")
    if normalizer not in ("bounded", "paper"):
        raise ValueError(f"normalizer must be 'bounded' or 'paper', got {normalizer!r}")
    if not (math.isfinite(floor) and floor > 0):
        raise ValueError(f"floor must be a finite number > 0, got {floor}")
    if not (math.isfinite(alpha_max) and alpha_max >= 1):
        raise ValueError(f"alpha_max must be a finite number >= 1, got {alpha_max}")
    device = gaps.device
    raw = gaps.detach().to(device="cpu", dtype=torch.float64)  # (N,)

    mask = _keep_mask(gaps.detach().cpu(), r_bar, keep, filter, generator)  # (N,)
    guarded = abs(r_bar) <= eps  # zero-start guard
    r_batch = paper_r_batch(raw, mask, r_bar, normalizer, floor, eps)
    if guarded:
        alpha = 1.0
    else:
        alpha = _sigmoid_ratio(r_batch, r_bar)
        if normalizer == "bounded":
            alpha = min(max(alpha, 1.0 / alpha_max), alpha_max)

    def as_out(value: float) -> torch.Tensor:
        return torch.tensor(value, dtype=out_dtype, device=device)

    return as_out(alpha), mask.to(device), as_out(r_batch)


def dama_model_alpha_authors(
    gaps: torch.Tensor,
    running_mean: float,
    keep: int,
    filter: FilterMode = "sample",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model-aware factor as the authors' code computes it, and its keep mask.

    ``alpha_M = (1/K) sum_kept sigmoid(A_i) / sigmoid(m)``: the mean of the kept gaps' sigmoids over
    the sigmoid of the running mean ``m`` (not the paper's sigmoid of a normalised mean). ``m`` starts
    at 0, where ``sigmoid(m) = 1/2`` and nothing divides by zero; at step 0 every gap is 0 and
    ``alpha_M = 1``. At steady state the kept gaps scatter around ``m`` and ``alpha_M`` is near 1
    (exactly 1 when they all equal ``m``).

    Filters as in :func:`dama_model_alpha`; the authors' is ``"sample"``, a weighted draw of ``K``
    without replacement centred at ``m`` (:func:`_sample_mask`: ``torch.multinomial`` with
    ``generator``, the underflow fixed by keeping the nearest records).

    Args:
        gaps: ``(N,)`` gaps ``A_i`` of the global batch (the authors': raw log-ratio margins, no beta);
            detached here. Their dtype is the draw's (the authors' are float32).
        running_mean: ``m``, the EMA of the batch mean gap (:attr:`DamaState.r_bar`); finite.
        keep: ``K``, at least 1 (the authors: ``int(0.8 * N)``).
        filter: one of ``"sample" | "topk" | "bottom" | "top" | "none"``.
        generator: the draw's CPU generator; ``None`` uses the global one.

    Returns:
        ``(alpha_model, keep_mask)``: 0-dim ``alpha_M`` (computed in log space, capped at ``e^88``)
        and the ``(N,)`` bool mask, on ``gaps``' device. Finite for any finite input.
    """
    running_mean, out_dtype = _check_model_inputs(gaps, keep, running_mean, "running_mean")
    values = gaps.detach().cpu()  # (N,)
    mask = _keep_mask(values, running_mean, keep, filter, generator)  # (N,)
    kept = values.to(torch.float64)[mask]  # (K,)
    log_mean = (torch.logsumexp(F.logsigmoid(kept), dim=0) - math.log(kept.numel())).item()
    log_den = F.logsigmoid(torch.tensor(running_mean, dtype=torch.float64)).item()
    alpha = math.exp(min(log_mean - log_den, _MAX_LOG_ALPHA))
    return torch.tensor(alpha, dtype=out_dtype, device=gaps.device), mask.to(gaps.device)


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


