"""ASPO's units: the spans of the chosen response that each get a weight, and their CLIP scores.

The collator calls :func:`unit_batch` with the character offsets of the chosen response's tokens;
:func:`mmpo.methods.aspo.aspo_step` reads the ``unit_spans``, ``unit_mask`` and ``unit_scores`` it
returns. The granularity is ``"sentence"`` (the paper), ``"token"`` (each token a unit, with its
sentence's score) or ``"response"`` (one unit: ASPO is then exactly DPO); Table 6 compares them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ...scoring.sentences import token_spans
from ...types import PreferenceRecord

#: ``(token_start, token_end, similarity)``: a unit's end-exclusive span into the response's tokens.
Unit = tuple[int, int, float]


def chosen_units(record: PreferenceRecord, offsets: Sequence[tuple[int, int]], name: str, splitter: Any,
                 granularity: str = "sentence", need_scores: bool = False,
                 tokenizer_name: str = "the tokenizer") -> list[Unit]:
    """The units of ``record``'s chosen response, from the character offsets of the response tokens
    the encoder kept (a truncated response loses its tail).

    Args:
        record: the record (its ``chosen`` text and ``chosen_sentence_scores``).
        offsets: ``(char_start, char_end)`` per kept response token; ``(-1, -1)`` where the tokenizer
            cannot say (slow tokenizers) or the chat template rewrote the response, which sentence
            and token units refuse.
        name: how errors name the record.
        splitter: the sentence splitter (:mod:`mmpo.scoring.sentences`).
        granularity: ``"sentence"``, ``"token"`` or ``"response"``.
        need_scores: require one ``chosen_sentence_scores`` entry per sentence (ASPO's similarity
            weight); otherwise every unit scores 0.
        tokenizer_name: the tokenizer's class name, for the slow-tokenizer error.

    Raises:
        ValueError: naming the record and the field.
    """
    n_tokens = len(offsets)
    known = not any(o == (-1, -1) for o in offsets)
    if not known and granularity != "response":
        raise ValueError(f"{name}: sentence units need the chosen response's token offsets, which {tokenizer_name} "
                         "cannot give (load the fast tokenizer, use_fast=True), or which are lost where the chat "
                         "template rewrites the response (a reasoning block it reformats); use "
                         "aspo_granularity: response for such data")
    sentences = splitter.split(record.chosen)
    if known:
        sentences = token_spans(sentences, list(offsets))
    scores = record.chosen_sentence_scores
    if need_scores:
        if scores is None:
            raise ValueError(f"{name}: field 'chosen_sentence_scores' is missing; ASPO's similarity weight "
                             "needs it (run `mmpo score-sentences` first, or set aspo_alpha 0)")
        if len(scores) != len(sentences):
            raise ValueError(f"{name}: field 'chosen_sentence_scores' has {len(scores)} scores but the chosen "
                             f"response splits into {len(sentences)} sentences; re-score with the same splitter")
    else:
        scores = [0.0] * len(sentences)
    if not known:  # one unit; every sentence's score counts, as no token span can be empty
        return [(0, n_tokens, sum(scores) / max(len(scores), 1))]
    pieces = [(s.token_start, s.token_end, float(c)) for s, c in zip(sentences, scores, strict=True)]
    pieces = [p for p in pieces if p[1] > p[0]]
    if granularity == "response":
        return [(0, n_tokens, sum(c for *_, c in pieces) / max(len(pieces), 1))]
    if granularity == "token":
        return [(t, t + 1, c) for start, end, c in pieces for t in range(start, end)]
    return pieces


def unit_batch(units: Sequence[Sequence[Unit]]) -> dict[str, torch.Tensor]:
    """The records' units padded into ``unit_spans`` ``(B, S, 2)``, ``unit_mask`` ``(B, S)`` and
    ``unit_scores`` ``(B, S)``, ``S`` the most units of a record."""
    width = max(len(u) for u in units)
    spans = torch.zeros(len(units), width, 2, dtype=torch.long)  # (B, S, 2)
    scores = torch.zeros(len(units), width)  # (B, S)
    mask = torch.zeros(len(units), width, dtype=torch.bool)  # (B, S)
    for b, unit in enumerate(units):
        for s, (start, end, score) in enumerate(unit):
            spans[b, s] = torch.tensor([start, end])
            scores[b, s] = score
            mask[b, s] = True
    return {"unit_spans": spans, "unit_mask": mask, "unit_scores": scores}
