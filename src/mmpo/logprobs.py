"""Per-token log-probabilities of response tokens, laid out response-first.

Every preference method needs ``log p(token | image, prompt, previous tokens)`` for the response
tokens only. This module turns a model's logits into a *response-aligned* tensor ``(R, L)``: row
``r`` holds the log-probs of the ``L_r`` response tokens of sequence ``r`` starting at column 0,
zero-padded to the longest response ``L``. Sentence spans (ASPO) index this layout directly, and
precomputed reference log-probs are stored in it.
"""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Log-prob of each next token: ``out[:, t] = log p(input_ids[:, t + 1] | input_ids[:, :t + 1])``.

    Args:
        logits: ``(R, T, V)`` model outputs.
        input_ids: ``(R, T)`` the sequences the logits were computed on.

    Returns:
        ``(R, T - 1)`` float32 log-probs (computed as ``logit - logsumexp`` to avoid a ``(R, T, V)``
        log-softmax copy).
    """
    logits = logits[:, :-1].float()  # (R, T-1, V)
    targets = input_ids[:, 1:].unsqueeze(-1)  # (R, T-1, 1)
    picked = torch.gather(logits, 2, targets).squeeze(-1)  # (R, T-1)
    return picked - torch.logsumexp(logits, dim=-1)


def response_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, response_start: torch.Tensor, response_length: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Response-aligned per-token log-probs and their mask.

    Args:
        logits: ``(R, T, V)``.
        input_ids: ``(R, T)``.
        response_start: ``(R,)`` index in ``input_ids`` of each row's first response token.
        response_length: ``(R,)`` number of response tokens of each row.

    Returns:
        ``(logps, mask)``, both ``(R, L)`` with ``L = response_length.max()``; ``logps`` is 0 where
        ``mask`` is False.
    """
    per_token = token_logprobs(logits, input_ids)  # (R, T-1)
    width = int(response_length.max().item()) if response_length.numel() else 0
    offsets = torch.arange(width, device=per_token.device)  # (L,)
    mask = offsets.unsqueeze(0) < response_length.unsqueeze(1)  # (R, L)
    # The token at position p is predicted by the logits at p - 1.
    index = (response_start.unsqueeze(1) - 1 + offsets).clamp(0, per_token.shape[1] - 1)  # (R, L)
    logps = torch.gather(per_token, 1, index).masked_fill(~mask, 0.0)
    return logps, mask


def pad_response_logprobs(rows: list[torch.Tensor], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length 1-D per-token log-prob rows into the ``(R, L)`` layout with a mask."""
    width = max((len(r) for r in rows), default=0) if width is None else width
    logps = torch.zeros(len(rows), width)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        n = min(len(row), width)
        logps[i, :n] = row[:n]
        mask[i, :n] = True
    return logps, mask


def span_sums(logps: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Sum response-aligned log-probs over token spans.

    Args:
        logps: ``(R, L)`` response-aligned values (zero-padded).
        spans: ``(R, S, 2)`` end-exclusive ``[start, end)`` token spans; padded spans are ``(0, 0)``.

    Returns:
        ``(R, S)`` sums (0 for empty spans).
    """
    cumsum = torch.nn.functional.pad(logps.cumsum(dim=1), (1, 0))  # (R, L+1)
    start = torch.gather(cumsum, 1, spans[..., 0].clamp(0, logps.shape[1]))  # (R, S)
    end = torch.gather(cumsum, 1, spans[..., 1].clamp(0, logps.shape[1]))  # (R, S)
    return end - start
