"""ASPO: adaptive sentence-level rewards for the chosen response (001_fef0c8c325b372e6, Eq. 12)."""

from __future__ import annotations

from typing import Literal

import torch

Normalizer = Literal["reward", "count"]


def aspo_scale(
    sentence_logratios: torch.Tensor,
    sentence_weights: torch.Tensor,
    sentence_mask: torch.Tensor,
    normalizer: Normalizer = "reward",
    eps: float = 1e-6,
) -> torch.Tensor:
    """The stop-gradient factor that multiplies ASPO's re-weighted chosen sum, detached.

    ASPO Eq. 12's ``R_c / R*_c``, implemented as docs/methods.md ("ASPO", the project's choice):

    * ``"reward"``: ``sg(R_c / R*_c)`` with ``R_c = sum_i ratio_i`` and
      ``R*_c = sum_i (1 + w_i) ratio_i``; where ``|R*_c| < eps`` it falls back to ``"count"``.
    * ``"count"``: ``sg(n / sum_i (1 + w_i))``, ``n`` the number of real sentences.

    ``R_c / R*_c`` does not depend on beta, so both sums are taken in log-ratio units and ``eps`` is
    compared with the beta-free ``R*_c / beta``. A record with no real sentence gets scale 1.
    In "reward" mode the scale can be large, or negative when the sentence log-ratios have mixed
    signs (``R_c`` and ``R*_c`` of opposite sign); that is the paper's formula, logged as a diagnostic.

    Args:
        sentence_logratios: ``(B, S)`` per-sentence log-ratios of the chosen response, padded.
        sentence_weights: ``(B, S)`` weights ``w_i`` (see :mod:`mmpo.scoring.weights`).
        sentence_mask: ``(B, S)`` bool or 0/1, true at real sentences.
        normalizer: ``"reward"`` (paper, default) or ``"count"`` (ablation).
        eps: threshold on ``|R*_c| / beta`` below which "reward" falls back to "count".

    Returns:
        ``(B,)`` detached scales, finite for finite inputs.
    """
    if normalizer not in ("reward", "count"):
        raise ValueError(f"normalizer must be 'reward' or 'count', got {normalizer!r}")
    valid = sentence_mask.to(torch.bool)  # (B, S)
    ratios = torch.where(valid, sentence_logratios.detach(), torch.zeros_like(sentence_logratios))  # (B, S)
    weights = torch.where(
        valid, sentence_weights.detach().to(ratios.dtype), torch.zeros_like(ratios)
    )  # (B, S)
    one_plus_w = torch.where(valid, 1.0 + weights, torch.zeros_like(weights))  # (B, S)

    count = valid.sum(dim=-1).to(ratios.dtype)  # (B,)
    weight_total = one_plus_w.sum(dim=-1)  # (B,) >= count since w_i >= 0 in ASPO
    safe_total = torch.where(weight_total > 0, weight_total, torch.ones_like(weight_total))
    count_scale = torch.where(weight_total > 0, count / safe_total, torch.ones_like(weight_total))  # (B,)
    if normalizer == "count":
        return count_scale

    original = ratios.sum(dim=-1)  # (B,) R_c / beta
    reweighted = (one_plus_w * ratios).sum(dim=-1)  # (B,) R*_c / beta
    small = reweighted.abs() < eps
    safe_reweighted = torch.where(small, torch.ones_like(reweighted), reweighted)
    return torch.where(small, count_scale, original / safe_reweighted)


def aspo_chosen_logratio(
    sentence_logratios: torch.Tensor,
    sentence_weights: torch.Tensor,
    sentence_mask: torch.Tensor,
    normalizer: Normalizer = "reward",
    eps: float = 1e-6,
) -> torch.Tensor:
    """ASPO's re-weighted chosen log-ratio, ``sg(scale) * sum_i (1 + w_i) ratio(s_i)``.

    ASPO Eq. 12 divided by beta: ``M* = beta * aspo_chosen_logratio(...) - beta * ratio(y_l)``, so
    the result replaces ``chosen_logratios`` in :func:`mmpo.losses.dpo.dpo_loss` (and in the DAMA
    and AdaViP paths, which multiply by their own beta). This is consistent because the scale
    ``R_c / R*_c`` is invariant to beta.
    Intuition: sentences that match the image and that the model finds fluent get a larger share
    of the chosen response's gradient, while the total stays on DPO's scale.

    Departure from the paper (docs/methods.md, "ASPO", ambiguity): taken literally, with gradients
    through ``R_c / R*_c``, Eq. 12 equals DPO. The scale is therefore a stop-gradient
    (:func:`aspo_scale`): the value matches DPO's chosen log-ratio (normalizer "reward", away from
    the ``|R*_c| < eps`` fallback) while the gradient of sentence ``i`` is ``scale * (1 + w_i)``
    times DPO's. At step 0 (policy == reference) every ratio is 0, the fallback applies, and the
    result is exactly 0, DPO's value, with no 0/0. With one sentence ``w = 0`` and it is DPO.

    Args:
        sentence_logratios: ``(B, S)`` policy minus reference log-prob summed over each sentence's
            tokens of the chosen response, padded; padded entries are ignored (may hold anything
            finite).
        sentence_weights: ``(B, S)`` ASPO weights ``w_i``; treated as constants (detached).
        sentence_mask: ``(B, S)`` bool or 0/1, true at real sentences.
        normalizer: ``"reward"`` (``sg(R_c / R*_c)``, default) or ``"count"`` (``sg(n / sum(1 + w_i))``).
        eps: fallback threshold, see :func:`aspo_scale`.

    Returns:
        ``(B,)`` chosen log-ratios (log-ratio units, no beta), differentiable w.r.t.
        ``sentence_logratios``.
    """
    valid = sentence_mask.to(torch.bool)  # (B, S)
    ratios = torch.where(valid, sentence_logratios, torch.zeros_like(sentence_logratios))  # (B, S)
    weights = sentence_weights.detach().to(ratios.dtype)
    one_plus_w = torch.where(valid, 1.0 + weights, torch.zeros_like(weights))  # (B, S)
    scale = aspo_scale(sentence_logratios, sentence_weights, sentence_mask, normalizer, eps)  # (B,)
    return scale * (one_plus_w * ratios).sum(dim=-1)  # (B, S) -> (B,)
