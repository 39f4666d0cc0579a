"""The mention scanner every word-matching scorer shares: lower-case words, simple plurals, longest
name first (:func:`find_mentions`); and CHAIR_i/CHAIR_s over mention lists (:func:`chair_scores`).
Used by the lenient readings of CHAIR/Object HalBench (:mod:`mmpo.evaluation.chair`) and of AMBER, the
synthetic-world scorer (:mod:`mmpo.evaluation.synthetic`), and the synthetic world's judge and questions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from mmpo.evaluation.common import ratio
from mmpo.evaluation.spans import lower_same_length

_WORD = re.compile(r"[a-z]+")


def word_spans(text: str) -> list[tuple[str, int, int]]:
    """``(word, start, end)`` of every lower-case alphabetic word of ``text`` (offsets into ``text``);
    punctuation and digits separate words."""
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(lower_same_length(text))]


def tokenize(text: str) -> list[str]:
    """Lower-case alphabetic words of ``text``; punctuation and digits separate words."""
    return [word for word, _, _ in word_spans(text)]


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


def find_mentions(text: str, vocabulary: Iterable[str], synonyms: Mapping[str, str] | None = None
                  ) -> list[tuple[str, int, int]]:
    """``(category, start, end)`` of every name of ``vocabulary`` in ``text``, in order, repeats kept.

    The text is lower-cased and split into words (:func:`tokenize`). At each word the longest name
    that matches is taken (so ``"traffic light"`` wins over ``"light"`` when both are names) and the
    scan continues after it. The *last* word of a name may be a simple plural (``"circles"``,
    ``"crosses"``, ``"traffic lights"``; see :func:`singular_forms`). ``text[start:end]`` is the
    matched name as written (``"Traffic  lights"``).

    Args:
        text: one response.
        vocabulary: the category names (may contain spaces).
        synonyms: optional ``{name: category}``; each ``category`` must be in ``vocabulary``.
    """
    table = _phrase_table(vocabulary, synonyms)
    if not table:
        return []
    longest = max(len(name) for name in table)
    located = word_spans(text)
    words = [word for word, _, _ in located]
    found: list[tuple[str, int, int]] = []
    i = 0
    while i < len(words):
        for length in range(min(longest, len(words) - i), 0, -1):
            head = tuple(words[i:i + length - 1])
            match = next((table[head + (last,)] for last in singular_forms(words[i + length - 1])
                          if head + (last,) in table), None)
            if match is not None:
                found.append((match, located[i][1], located[i + length - 1][2]))
                i += length
                break
        else:
            i += 1
    return found


def extract_mentions(text: str, vocabulary: Iterable[str], synonyms: Mapping[str, str] | None = None) -> list[str]:
    """The categories ``text`` mentions, in order of appearance, repeats kept (:func:`find_mentions`
    without the places). The category is returned, never the synonym; :func:`chair_scores`
    de-duplicates per response."""
    return [category for category, _, _ in find_mentions(text, vocabulary, synonyms)]


def chair_scores(mentions_per_response: Sequence[Iterable[str]],
                 truth_per_response: Sequence[Iterable[str]]) -> dict[str, float]:
    """CHAIR_i, CHAIR_s and coverage with each category counted once per response.

    With ``M_r`` the set of categories response ``r`` mentions, ``T_r`` its image's true categories
    and ``N`` the number of responses::

        chair_i               = sum_r |M_r - T_r| / sum_r |M_r|
        chair_s               = #{r : |M_r - T_r| >= 1} / N
        coverage              = sum_r |M_r & T_r| / sum_r |T_r|
        mentions_per_response = sum_r |M_r| / N

    Args:
        mentions_per_response: for each response, the categories it mentions (e.g. the output of
            :func:`extract_mentions`); repeats are collapsed, each category counts once.
        truth_per_response: for each response, the categories really in its image.

    Returns:
        ``chair_i``, ``chair_s``, ``coverage``, ``mentions_per_response`` (each ``0.0`` when its
        denominator is zero) and the raw counts ``n_responses``, ``n_mentions``, ``n_hallucinated``.
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
        "chair_i": ratio(n_hallucinated, n_mentions),
        "chair_s": ratio(n_bad_responses, n),
        "coverage": ratio(n_covered, n_true),
        "mentions_per_response": ratio(n_mentions, n),
        "n_responses": n,
        "n_mentions": n_mentions,
        "n_hallucinated": n_hallucinated,
    }
