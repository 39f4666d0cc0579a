"""The built-in synthetic world's exact evaluation: its scenes, vocabulary and POPE questions,
scored by :func:`mmpo.evaluation.synthetic.evaluate_synthetic`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from mmpo.evaluation.synthetic import evaluate_synthetic
from mmpo.toyworld.pope import Split, build_pope_questions, category_frequencies, cooccurrence_counts
from mmpo.toyworld.scenes import COLOURS, DESCRIBE_PROMPT, SHAPES, Scene


def world_questions(scenes: Sequence[Scene], split: Split = "adversarial", *,
                    stats_scenes: Iterable[Scene] | None = None, n_negatives_per_scene: int | None = None,
                    seed: int = 0):
    """POPE questions about ``scenes``; for ``adversarial`` / ``popular`` the co-occurrence /
    frequency tables come from ``stats_scenes`` (e.g. the training scenes, whose priors the model
    may have learnt) or, if ``None``, from ``scenes`` themselves."""
    stats = list(scenes) if stats_scenes is None else list(stats_scenes)
    return build_pope_questions(
        scenes, split, n_negatives_per_scene=n_negatives_per_scene, seed=seed,
        cooccurrence=cooccurrence_counts(stats) if split == "adversarial" else None,
        frequency=category_frequencies(stats) if split == "popular" else None,
    )


def evaluate_world(model: Any, processor: Any, scenes: Sequence[Scene], *,
                   pope_split_scenes_for_stats: Iterable[Scene] | None = None, pope_split: Split = "adversarial",
                   n_negatives_per_scene: int | None = None, seed: int = 0, **kwargs: Any) -> dict[str, Any]:
    """:func:`evaluate_synthetic` on ``scenes`` with the world's shapes, colours and description
    prompt, and ``pope_split`` questions from :func:`world_questions`. ``kwargs`` go to
    :func:`evaluate_synthetic` (``batch_size``, ``max_new_tokens``, ``n_samples``, ...)."""
    scenes = list(scenes)
    questions = world_questions(scenes, pope_split, stats_scenes=pope_split_scenes_for_stats,
                                n_negatives_per_scene=n_negatives_per_scene, seed=seed)
    return evaluate_synthetic(model, processor, scenes, questions, shapes=SHAPES, colours=COLOURS,
                              prompt=DESCRIBE_PROMPT, **kwargs)
