"""ASPO's training step: sentence-level adaptive rewards for the chosen response.

"ASPO: Adaptive Sentence-Level Preference Optimization for Fine-Grained Multimodal Reasoning",
arXiv:2505.19100. Everything ASPO changes in a training step is here, torch only:

1. :func:`aspo_sentence_weights` (section 3.2.1, Eqs. 7-10): a weight ``w_i`` per sentence of the
   chosen response from its CLIP image-text similarity and the policy's own perplexity;
2. :func:`aspo_scale` and :func:`aspo_chosen_logratio` (Eq. 12): the chosen log-ratio re-weighted
   by ``1 + w_i`` per sentence, rescaled (stop-gradient) back onto DPO's scale;
3. :func:`aspo_step`: both, from the trainer's per-token log-ratios, plus the logged diagnostics.

The result replaces DPO's chosen log-ratio in :func:`mmpo.methods.dpo.preference_loss`. The
weights only rescale rewards; they are never differentiated through. The sentences' spans and
similarities come from the data pipeline (:mod:`mmpo.scoring.sentences`,
:mod:`mmpo.data.construct.sentence_scores`).
"""

from __future__ import annotations

from typing import Literal

import torch

from ...logprobs import span_sums

Normalizer = Literal["reward", "count"]

# Values are clamped to this magnitude (in float64) before min-max, so that +-inf inputs (an
# overflowed perplexity) rank as the extremes and ``max - min`` cannot overflow to inf.
_BIG = 1e300


def minmax(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Min-max normalise along the last dimension: ``(x - min) / (max - min)``, ASPO Eq. 7.

    Intuition: put every sentence's score on the same [0, 1] scale within its own response.

    The project's rule (docs/methods.md, "ASPO", the min-max paragraph): a row with fewer than two
    valid entries, or whose valid entries are all equal, normalises to all zeros, so ASPO degenerates
    to DPO there.

    Args:
        x: ``(..., S)`` scores.
        mask: optional ``(..., S)`` bool or 0/1 mask of the valid entries; ``None`` means all valid.

    Returns:
        ``(..., S)`` detached values in [0, 1], in ``x``'s dtype, 0 at masked positions.
    """
    x = x.detach()
    out_dtype = x.dtype if x.is_floating_point() else torch.float32
    values = x.to(torch.float64).clamp(-_BIG, _BIG)  # (..., S)
    valid = torch.ones_like(values, dtype=torch.bool) if mask is None else mask.to(torch.bool)

    lo = torch.where(valid, values, torch.full_like(values, _BIG)).amin(dim=-1, keepdim=True)  # (..., 1)
    hi = torch.where(valid, values, torch.full_like(values, -_BIG)).amax(dim=-1, keepdim=True)  # (..., 1)
    span = hi - lo  # (..., 1)
    count = valid.sum(dim=-1, keepdim=True)  # (..., 1)
    degenerate = (count < 2) | ~(span > 0)  # (..., 1)

    safe_span = torch.where(degenerate, torch.ones_like(span), span)
    normalised = (values - lo) / safe_span  # (..., S)
    normalised = torch.where(valid & ~degenerate, normalised, torch.zeros_like(normalised))
    return normalised.clamp(0.0, 1.0).to(out_dtype)


def aspo_sentence_weights(
    similarity: torch.Tensor,
    perplexity: torch.Tensor,
    alpha: float = 0.5,
) -> torch.Tensor:
    """Adaptive weights of one response's sentences, ``w_i = alpha S'_i + (1 - alpha) PPL'_i``.

    ASPO Eq. 10 (with Eq. 7 for ``S'`` and the negated, normalised perplexity for ``PPL'``).
    Intuition: sentences that match the image and that the model is confident about count more.

    Args:
        similarity: ``(S,)`` image-text similarities ``S_i`` (CLIP cosine) of the sentences.
        perplexity: ``(S,)`` sentence perplexities ``PPL_i`` under the policy (Eq. 9).
        alpha: metric-weighting factor; the paper uses 0.5.

    Returns:
        ``(S,)`` detached weights in [0, 1]; all zeros for a single sentence or constant scores.
    """
    return aspo_sentence_weights_batched(similarity[None], perplexity[None], None, alpha)[0]


def aspo_sentence_weights_batched(
    similarity: torch.Tensor,
    perplexity: torch.Tensor,
    mask: torch.Tensor | None = None,
    alpha: float = 0.5,
) -> torch.Tensor:
    """:func:`aspo_sentence_weights` for a padded batch of responses.

    Args:
        similarity: ``(B, S)`` sentence similarities, padded.
        perplexity: ``(B, S)`` sentence perplexities, padded.
        mask: ``(B, S)`` bool or 0/1, true at real sentences; ``None`` means all real.
        alpha: metric-weighting factor.

    Returns:
        ``(B, S)`` detached weights, 0 at padded positions.
    """
    sim_norm = minmax(similarity, mask)  # (B, S)
    ppl_norm = minmax(-perplexity.detach(), mask)  # (B, S), low perplexity -> high weight
    return alpha * sim_norm + (1.0 - alpha) * ppl_norm


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
        sentence_weights: ``(B, S)`` weights ``w_i`` (:func:`aspo_sentence_weights`).
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
    the result replaces ``chosen_logratios`` in :func:`mmpo.methods.dpo.dpo_loss` (and in the DAMA
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
    scale = aspo_scale(sentence_logratios, sentence_weights, sentence_mask, normalizer, eps)  # (B,)
    return _rescaled_sum(sentence_logratios, sentence_weights, sentence_mask, scale)


def _rescaled_sum(sentence_logratios: torch.Tensor, sentence_weights: torch.Tensor, sentence_mask: torch.Tensor,
                  scale: torch.Tensor) -> torch.Tensor:
    """``scale * sum_i (1 + w_i) ratio(s_i)`` over the real sentences, ``(B,)``."""
    valid = sentence_mask.to(torch.bool)  # (B, S)
    ratios = torch.where(valid, sentence_logratios, torch.zeros_like(sentence_logratios))  # (B, S)
    weights = sentence_weights.detach().to(ratios.dtype)
    one_plus_w = torch.where(valid, 1.0 + weights, torch.zeros_like(weights))  # (B, S)
    return scale * (one_plus_w * ratios).sum(dim=-1)  # (B, S) -> (B,)


def aspo_step(
    token_logratios: torch.Tensor,
    policy_logps: torch.Tensor,
    unit_spans: torch.Tensor,
    unit_mask: torch.Tensor,
    unit_similarities: torch.Tensor,
    alpha: float = 0.5,
    normalizer: Normalizer = "reward",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ASPO's part of a training step: the weighted chosen log-ratio of each record, and diagnostics.

    From the same forward pass as the DPO terms: each unit's (sentence's) log-ratio is the sum of its
    tokens' log-ratios; its perplexity under the policy is ``exp(-mean token log-prob)`` (Eq. 9);
    the weights (Eq. 10) combine that with the unit's CLIP similarity; :func:`aspo_chosen_logratio`
    re-weights. A unit is a sentence, a token or the whole response (``aspo_granularity``: the
    collator builds the spans).

    Args:
        token_logratios: ``(B, L)`` the chosen rows' per-token ``log pi - log pi_ref``, zero at padding;
            differentiable (the gradient flows through it).
        policy_logps: ``(B, L)`` the chosen rows' per-token policy log-probs (detached here).
        unit_spans: ``(B, S, 2)`` ``[start, end)`` token offsets of each unit in the response.
        unit_mask: ``(B, S)`` bool, true at real units.
        unit_similarities: ``(B, S)`` CLIP image-text similarity of each unit (ignored when ``alpha = 0``).
        alpha: ``w_i = alpha S'_i + (1 - alpha) PPL'_i``; 1 = similarity only, 0 = perplexity only.
        normalizer: ``"reward"`` (paper) or ``"count"``, see :func:`aspo_scale`.

    Returns:
        ``(chosen_logratios (B,), diagnostics)``: the log-ratios replace DPO's chosen ones; the
        diagnostics are detached: ``aspo/weight_mean`` (every real unit's weight),
        ``aspo/weight_std`` (one value), ``aspo/sentences_per_response`` ``(B,)`` and ``aspo/scale`` ``(B,)``.
    """
    unit_ratios = span_sums(token_logratios, unit_spans)  # (B, S), differentiable
    with torch.no_grad():
        n_tokens = (unit_spans[..., 1] - unit_spans[..., 0]).clamp(min=1)  # (B, S)
        mean_logp = span_sums(policy_logps.detach().double(), unit_spans) / n_tokens  # (B, S)
        perplexity = torch.exp(-mean_logp)  # (B, S), PPL_i under the policy
        weights = aspo_sentence_weights_batched(unit_similarities.double(), perplexity, unit_mask,
                                                alpha).to(unit_ratios.dtype)  # (B, S)
        scale = aspo_scale(unit_ratios, weights, unit_mask, normalizer)  # (B,)
    valid = weights[unit_mask.bool()]  # (n_units,)
    diagnostics = {
        "aspo/weight_mean": valid,
        "aspo/weight_std": valid.std().reshape(1) if valid.numel() > 1 else torch.zeros(1),
        "aspo/sentences_per_response": unit_mask.sum(dim=1).float(),
        "aspo/scale": scale,
    }
    return _rescaled_sum(unit_ratios, weights, unit_mask, scale), diagnostics
