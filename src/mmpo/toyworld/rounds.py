"""The synthetic world's pieces of on-policy rounds (``mmpo iterate``, ``mmpo demo --rounds``).

:func:`mmpo.training.rounds.run_rounds` takes a prompt pool, a judge, an ``enrich`` step and an
evaluator; here are the world's: its preference scenes as the pool (:func:`world_pool`, the scenes
the demo's offline pairs come from), the exact scene judge, AdaViP's annotation backends
(:func:`world_vision_pipeline`) and the held-out evaluation the demo reports (:func:`world_evaluator`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..io import ensure_png
from .scenes import DESCRIBE_PROMPT, Scene, WorldConfig, sample_scenes

#: Entries of an evaluation result left out of a round's metrics (per-scene answers and questions).
BULKY_KEYS = ("samples", "per_scene", "per_question")


def scene_items(scenes: Sequence[Scene], image_dir: str | Path) -> list[tuple[str, str, str, dict[str, Any]]]:
    """``(id, image path, describe prompt, {"scene": JSON})`` per scene, rendered to ``image_dir``
    (a damaged or missing PNG is rendered again)."""
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    return [(scene.id, str(ensure_png(image_dir / f"{scene.id}.png", scene.render)), DESCRIBE_PROMPT,
             {"scene": json.dumps(scene.to_dict())}) for scene in scenes]


def preference_scenes(world: WorldConfig, n: int, seed: int) -> list[Scene]:
    """The scenes preference data is built from: the prior-free distribution with its own seed
    (disjoint from the evaluation scenes), as the demo's offline pairs use."""
    return sample_scenes(world.held_out(seed=seed + 1), n, prefix="pref")


def world_pool(n: int, seed: int, image_dir: str | Path) -> list[tuple[str, str, str, dict[str, Any]]]:
    """A pool of ``n`` preference scenes of the world seeded ``seed``, as items."""
    return scene_items(preference_scenes(WorldConfig(seed=seed), n, seed), image_dir)


def eval_scenes(world: WorldConfig, n: int) -> list[Scene]:
    """The held-out scenes the demo (and every round) is evaluated on."""
    return sample_scenes(world.held_out(), n, prefix="heldout")


def world_evaluator(world: WorldConfig, n_scenes: int, *, seed: int, n_stats_scenes: int = 3000, keep_items: bool = False) -> Callable[[Any, Any], dict[str, Any]]:
    """``evaluate(model, processor)``: CHAIR, coverage and POPE on :func:`eval_scenes`, POPE's
    adversarial negatives from the co-occurrence statistics of ``n_stats_scenes`` training
    scenes (the demo's evaluation). The per-scene answers are kept only with ``keep_items``."""
    from .evaluate import evaluate_world

    scenes = eval_scenes(world, n_scenes)
    stats = sample_scenes(world, n_stats_scenes, prefix="train")

    def evaluate(model: Any, processor: Any) -> dict[str, Any]:
        result = evaluate_world(model, processor, scenes, pope_split_scenes_for_stats=stats, seed=seed, keep_items=keep_items)
        return result if keep_items else scalars(result)

    return evaluate


def scalars(result: dict[str, Any]) -> dict[str, Any]:
    """An evaluation result without its per-scene answers and questions (:data:`BULKY_KEYS`)."""
    return {k: v for k, v in result.items() if k not in BULKY_KEYS}


def world_vision_pipeline(scorer: Any) -> Callable[[list], Any]:
    """``records -> VisionRejectedPipeline`` for AdaViP on the world: nouns of the chosen response
    as tags, the scenes' exact boxes and masks (annotation backends, named as such), Telea
    inpainting and ``scorer`` (the world's tiny CLIP) choosing the removal."""
    from ..methods.adavip.inpainting import TeleaInpainter
    from ..methods.adavip.vision_rejected import VisionRejectedPipeline
    from ..methods.adavip.vision_steps import NounTagger
    from .annotations import AnnotationDetector, AnnotationSegmenter, SceneIndex
    from .scenes import SHAPES

    def pipeline(records: list) -> VisionRejectedPipeline:
        scenes = SceneIndex.from_records(records)
        return VisionRejectedPipeline(tagger=NounTagger(SHAPES), detector=AnnotationDetector(scenes),
                                      segmenter=AnnotationSegmenter(scenes), inpainter=TeleaInpainter(), scorer=scorer)

    return pipeline
