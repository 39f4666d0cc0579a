"""The synthetic world's POPE questions: per scene its present shapes, then absent ones.

Li et al., "Evaluating Object Hallucination in Large Vision-Language Models", EMNLP 2023, Sec. 4.
For each image the model is asked "is there a <category> in the image ?" about every category
present (label ``yes``) and about as many absent ones (label ``no``). The absent categories are
sampled in one of three ways, from easiest to hardest:

* ``random``: uniformly among the absent categories;
* ``popular``: the absent categories that are most frequent overall (a frequency prior);
* ``adversarial``: the absent categories that most often co-occur with the present ones (a
  co-occurrence prior — the prior the synthetic world plants with its partner shapes).

Question texts keep the synthetic world's style: lower case, punctuation as separate words.
Reading the answers and scoring them is :mod:`mmpo.evaluation.pope`'s job (``parse_yes_no``,
``pope_metrics`` and ``Split`` are re-exported here for the synthetic evaluation).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from mmpo.evaluation.pope import SPLITS, Split, parse_yes_no, pope_metrics
from mmpo.toyworld.scenes import SHAPES

__all__ = [
    "SPLITS", "Split", "AnnotatedImage", "PopeQuestion", "pope_question", "category_frequencies",
    "cooccurrence_counts", "build_pope_questions", "parse_yes_no", "pope_metrics",
]


class AnnotatedImage(Protocol):
    """Anything with an id and its set of true categories (e.g. ``mmpo.toyworld.scenes.Scene``)."""

    @property
    def id(self) -> str: ...

    @property
    def shapes(self) -> frozenset[str]: ...


@dataclass(frozen=True)
class PopeQuestion:
    """One yes/no probe: is ``category`` in image ``scene_id``? ``label`` is the true answer."""

    scene_id: str
    category: str
    label: Literal["yes", "no"]
    question: str


def pope_question(category: str) -> str:
    """``"is there a circle in the image ?"`` (``"an"`` before a vowel)."""
    article = "an" if category[:1] in "aeiou" else "a"
    return f"is there {article} {category} in the image ?"


def category_frequencies(scenes: Iterable[AnnotatedImage]) -> Counter[str]:
    """Number of scenes each category appears in (each scene counts a category once)."""
    return Counter(c for scene in scenes for c in scene.shapes)


def cooccurrence_counts(scenes: Iterable[AnnotatedImage]) -> dict[str, Counter[str]]:
    """``counts[a][b]``: number of scenes holding both ``a`` and ``b`` (``a != b``; symmetric)."""
    counts: dict[str, Counter[str]] = {}
    for scene in scenes:
        present = sorted(scene.shapes)
        for a in present:
            row = counts.setdefault(a, Counter())
            row.update(b for b in present if b != a)
    return counts


def build_pope_questions(
    scenes: Sequence[AnnotatedImage],
    split: Split = "random",
    n_negatives_per_scene: int | None = None,
    seed: int = 0,
    cooccurrence: Mapping[str, Mapping[str, float]] | None = None,
    frequency: Mapping[str, float] | None = None,
    vocabulary: Sequence[str] = SHAPES,
) -> list[PopeQuestion]:
    """The POPE questions for ``scenes``: per scene its positives, then its negatives.

    Args:
        scenes: the evaluated images, each with ``id`` and ``shapes`` (its true categories).
        split: how negatives are chosen (see the module docstring). For a scene with present set
            ``P`` and absent candidate ``c``:
            ``random`` samples uniformly (with ``random.Random(seed)``);
            ``popular`` ranks by ``frequency[c]``;
            ``adversarial`` ranks by ``sum_{p in P} cooccurrence[p][c]``.
            Ranking ties are broken by ``vocabulary`` order, so ranked splits are deterministic.
        n_negatives_per_scene: negatives per scene; ``None`` asks for as many as the scene has
            positives (the balanced POPE setting). Always capped by the number of absent categories.
        seed: seed of the ``random`` split.
        cooccurrence: ``{a: {b: count}}`` table for ``adversarial``; ``None`` computes it from
            ``scenes`` (:func:`cooccurrence_counts`). Pass the training scenes' table to probe the
            priors the model was trained on.
        frequency: ``{category: count}`` table for ``popular``; ``None`` computes it from ``scenes``
            (:func:`category_frequencies`).
        vocabulary: all categories a question may be about.

    Returns:
        ``PopeQuestion`` list; positives in ``vocabulary`` order, then negatives in sampled/ranked order.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown POPE split {split!r}; known: {SPLITS}")
    if split == "popular" and frequency is None:
        frequency = category_frequencies(scenes)
    if split == "adversarial" and cooccurrence is None:
        cooccurrence = cooccurrence_counts(scenes)
    rng = random.Random(seed)
    rank = {c: i for i, c in enumerate(vocabulary)}

    questions: list[PopeQuestion] = []
    for scene in scenes:
        present = [c for c in vocabulary if c in scene.shapes]
        unknown = set(scene.shapes) - set(vocabulary)
        if unknown:
            raise ValueError(f"scene {scene.id!r} has categories outside the vocabulary: {sorted(unknown)}")
        absent = [c for c in vocabulary if c not in scene.shapes]
        k = len(present) if n_negatives_per_scene is None else n_negatives_per_scene
        k = min(max(k, 0), len(absent))
        if split == "random":
            negatives = rng.sample(absent, k)
        elif split == "popular":
            negatives = sorted(absent, key=lambda c: (-frequency.get(c, 0), rank[c]))[:k]
        else:
            score = {c: sum(cooccurrence.get(p, {}).get(c, 0) for p in present) for c in absent}
            negatives = sorted(absent, key=lambda c: (-score[c], rank[c]))[:k]
        questions += [PopeQuestion(scene.id, c, "yes", pope_question(c)) for c in present]
        questions += [PopeQuestion(scene.id, c, "no", pope_question(c)) for c in negatives]
    return questions
