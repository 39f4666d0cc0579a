"""Where in an answer each scorer found its object mentions, and what it decided about each.

Every hallucination scorer of :mod:`mmpo.evaluation` reads object mentions out of a model's text
and judges them. Besides its numbers, each records that reading per answer, so a report can show
*which words* were judged, without scoring anything itself:

* ``spans``: one dict per mention the scorer counted, in text order::

      {"start": 12, "end": 18, "text": "circle", "category": "circle", "verdict": "hallucinated"}

  ``answer[start:end] == text``. ``verdict`` is one of :data:`VERDICTS`. A ``wrong_attribute``
  span also carries ``"attribute": {"start", "end", "text", "said", "true"}``: the attribute word
  the scorer read (its place in the answer), the value it said and the object's true values. Where
  the scorer's own tokens cannot be placed in the text (e.g. nouns supplied by the caller),
  ``start`` and ``end`` are ``None`` and ``text`` is the scorer's word.
* ``missed``: the ground-truth categories the answer never mentions, sorted.

The scorers' counts are the spans' counts: a scorer's hallucinated mentions are exactly its spans
whose verdict is ``hallucinated`` (the tests check this on the reference fixtures).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

#: What a scorer can decide about one mention: the object is there (and, where an attribute was
#: checked, has it); the object is not there; the object is there but the attribute said is not its.
VERDICTS = ("correct", "hallucinated", "wrong_attribute")

#: Treebank tokenizers write a double quote as one of these.
_QUOTE_TOKENS = ("``", "''")


def lower_same_length(text: str) -> str:
    """``text.lower()``, except that a character whose lower case is longer (``"İ"``) is kept, so
    every offset into the result is an offset into ``text``."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


def locate_tokens(text: str, tokens: Sequence[str]) -> list[tuple[int, int] | None]:
    """The ``(start, end)`` of each token in ``text``, searched left to right, ignoring case.

    Tokenizers split text without losing its characters (apart from whitespace), so each token is
    found after the previous one. A token that is not in the rest of the text (a Treebank quote
    ``"``` `` ``"`` is looked for as ``"``; a token a tokenizer rewrote otherwise) gets ``None`` and
    the search goes on from where it was.
    """
    low = lower_same_length(text)
    out: list[tuple[int, int] | None] = []
    cursor = 0
    for token in tokens:
        needle = token.lower()
        at = low.find(needle, cursor)
        if at < 0 and token in _QUOTE_TOKENS:
            needle = '"'
            at = low.find(needle, cursor)
        if at < 0 or not needle:
            out.append(None)
            continue
        out.append((at, at + len(needle)))
        cursor = at + len(needle)
    return out


def make_span(text: str, start: int | None, end: int | None, category: str, verdict: str,
              word: str | None = None, **extra: Any) -> dict[str, Any]:
    """One span dict (module docstring); ``word`` is the text recorded when the span is unlocated."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict {verdict!r} is not one of {VERDICTS}")
    if start is None or end is None:
        return {"start": None, "end": None, "text": word if word is not None else category,
                "category": category, "verdict": verdict, **extra}
    return {"start": start, "end": end, "text": text[start:end], "category": category, "verdict": verdict, **extra}


def char_range(located: Sequence[tuple[int, int] | None], first: int, last: int) -> tuple[int | None, int | None]:
    """The character span from token ``first`` to token ``last`` (inclusive), or ``(None, None)``."""
    a, b = located[first], located[last]
    return (None, None) if a is None or b is None else (a[0], b[1])


def missed(truth: Iterable[str], mentioned: Collection[str]) -> list[str]:
    """The truth categories not among ``mentioned``, sorted."""
    return sorted(set(truth) - set(mentioned))


def verdict_counts(spans: Iterable[dict[str, Any]]) -> dict[str, int]:
    """How many spans carry each verdict (every verdict present, zeros included)."""
    counts = dict.fromkeys(VERDICTS, 0)
    for span in spans:
        counts[span["verdict"]] += 1
    return counts
