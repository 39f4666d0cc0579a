"""CHAIR: object hallucination in free-form descriptions.

Rohrbach et al., "Object Hallucination in Image Captioning", EMNLP 2018, Sec. 2 (CHAIR_i and
CHAIR_s). A response *mentions* a category when one of the category's names (or synonyms) appears
in it; a mention is *hallucinated* when the category is not in the image's ground truth.

This module is vocabulary-agnostic: the synthetic world passes its ``SHAPES``; a COCO-style
evaluation passes the 80 COCO categories and a synonym table. It imports nothing but the standard
library.

Definitions used by :func:`chair_scores` (``M_r`` = set of categories mentioned in response ``r``,
``T_r`` = set of true categories of its image, ``N`` = number of responses)::

    chair_i               = sum_r |M_r - T_r| / sum_r |M_r|
    chair_s               = #{r : |M_r - T_r| >= 1} / N
    coverage              = sum_r |M_r & T_r| / sum_r |T_r|
    mentions_per_response = sum_r |M_r| / N

Each category counts at most once per response (``M_r`` is a set), as in the CHAIR evaluations
of Object HalBench / RLHF-V. Every ratio whose denominator is zero is reported as ``0.0``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

_WORD = re.compile(r"[a-z]+")


def tokenize(text: str) -> list[str]:
    """Lower-case alphabetic words of ``text``; punctuation and digits separate words."""
    return _WORD.findall(text.lower())


def singular_forms(word: str) -> list[str]:
    """``word`` followed by its candidate singulars under simple English plural rules.

    ``"circles" -> ["circles", "circle"]``, ``"crosses" -> ["crosses", "crosse", "cross"]``,
    ``"berries" -> ["berries", "berrie", "berry"]``. Candidates are only *tried* against the
    vocabulary, so a wrong candidate (``"crosse"``) matches only if it is itself a name.
    """
    forms = [word]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        forms.append(word[:-1])
        if word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh")):
            forms.append(word[:-2])
        if word.endswith("ies"):
            forms.append(word[:-3] + "y")
    return forms


def _phrase_table(vocabulary: Iterable[str], synonyms: Mapping[str, str] | None) -> dict[tuple[str, ...], str]:
    """Map each name (a tuple of tokens) to its category: the category names, then the synonyms."""
    vocabulary = list(vocabulary)
    table: dict[tuple[str, ...], str] = {}
    for category in vocabulary:
        table[tuple(tokenize(category))] = category
    for name, category in (synonyms or {}).items():
        if category not in vocabulary:
            raise ValueError(f"synonym {name!r} maps to {category!r}, which is not in the vocabulary")
        table.setdefault(tuple(tokenize(name)), category)
    table.pop((), None)
    return table


def extract_mentions(text: str, vocabulary: Iterable[str], synonyms: Mapping[str, str] | None = None) -> list[str]:
    """The categories ``text`` mentions, in order of appearance, repeats kept.

    The text is lower-cased and split into words (:func:`tokenize`). At each word the longest name
    that matches is taken (so ``"traffic light"`` wins over ``"light"`` when both are names) and the
    scan continues after it. The *last* word of a name may be a simple plural (``"circles"``,
    ``"crosses"``, ``"traffic lights"``; see :func:`singular_forms`).

    Args:
        text: one response.
        vocabulary: the category names (may contain spaces).
        synonyms: optional ``{name: category}``; each ``category`` must be in ``vocabulary``.

    Returns:
        The category (never the synonym) of every match, in text order. :func:`chair_scores`
        de-duplicates per response.
    """
    table = _phrase_table(vocabulary, synonyms)
    if not table:
        return []
    longest = max(len(name) for name in table)
    words = tokenize(text)
    mentions: list[str] = []
    i = 0
    while i < len(words):
        for length in range(min(longest, len(words) - i), 0, -1):
            head = tuple(words[i:i + length - 1])
            match = next((table[head + (last,)] for last in singular_forms(words[i + length - 1])
                          if head + (last,) in table), None)
            if match is not None:
                mentions.append(match)
                i += length
                break
        else:
            i += 1
    return mentions


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, or ``0.0`` when the denominator is zero."""
    return numerator / denominator if denominator else 0.0


def chair_scores(mentions_per_response: Sequence[Iterable[str]],
                 truth_per_response: Sequence[Iterable[str]]) -> dict[str, float]:
    """CHAIR_i, CHAIR_s and coverage over a set of responses (definitions in the module docstring).

    Args:
        mentions_per_response: for each response, the categories it mentions (e.g. the output of
            :func:`extract_mentions`); repeats are collapsed, each category counts once.
        truth_per_response: for each response, the categories really in its image.

    Returns:
        ``chair_i``: hallucinated mentions / all mentions (``0.0`` when nothing is mentioned);
        ``chair_s``: fraction of responses with at least one hallucinated mention (``0.0`` when
        there are no responses); ``coverage``: true categories mentioned / all true categories,
        micro-averaged (``0.0`` when no image has any true category); ``mentions_per_response``:
        mean number of distinct categories mentioned (``0.0`` without responses);
        ``n_responses``, ``n_mentions``, ``n_hallucinated``: the raw counts.
    """
    if len(mentions_per_response) != len(truth_per_response):
        raise ValueError(f"{len(mentions_per_response)} responses but {len(truth_per_response)} ground truths")
    n_mentions = n_hallucinated = n_bad_responses = n_true = n_covered = 0
    for mentions, truth in zip(mentions_per_response, truth_per_response, strict=True):
        mentioned, true = set(mentions), set(truth)
        hallucinated = mentioned - true
        n_mentions += len(mentioned)
        n_hallucinated += len(hallucinated)
        n_bad_responses += bool(hallucinated)
        n_true += len(true)
        n_covered += len(mentioned & true)
    n = len(mentions_per_response)
    return {
        "chair_i": _ratio(n_hallucinated, n_mentions),
        "chair_s": _ratio(n_bad_responses, n),
        "coverage": _ratio(n_covered, n_true),
        "mentions_per_response": _ratio(n_mentions, n),
        "n_responses": n,
        "n_mentions": n_mentions,
        "n_hallucinated": n_hallucinated,
    }
