"""ASPO's adaptive sentence weights (001_fef0c8c325b372e6, section 3.2.1, Eqs. 7 and 10).

The weights only rescale rewards; they are never differentiated through, so every function here
works on detached inputs.
"""

from __future__ import annotations

import torch

# Values are clamped to this magnitude (in float64) before min-max, so that +-inf inputs (an
# overflowed perplexity) rank as the extremes and ``max - min`` cannot overflow to inf.
_BIG = 1e300


def minmax(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Min-max normalise along the last dimension: ``(x - min) / (max - min)``, ASPO Eq. 7.

    Intuition: put every sentence's score on the same [0, 1] scale within its own response.

    The project's rule (docs/methods.md, ASPO step 4): a row with fewer than two valid entries, or
    whose valid entries are all equal, normalises to all zeros, so ASPO degenerates to DPO there.

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
