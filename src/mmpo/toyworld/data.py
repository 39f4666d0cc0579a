"""Training text for the synthetic world: SFT rows and ground-truth preference pairs."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import progress
from ..io import ensure_png
from ..types import PreferenceRecord
from .pope import pope_question
from .scenes import (
    COLOURS,
    DESCRIBE_PROMPT,
    QUADRANTS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    WorldConfig,
    noisy_caption,
)


@dataclass(frozen=True)
class Row:
    """One supervised (image, prompt, response) example; ``scene`` renders the image."""

    scene: Scene
    prompt: str
    response: str


def sft_rows(scenes: list[Scene], config: WorldConfig, seed: int = 0, questions_per_scene: int = 1,
             question_kinds: Sequence[str] = ()) -> list[Row]:
    """The base model's training set: a (noisy) caption per scene plus yes/no questions.

    Half the questions ask about a present shape (answer "yes"). The other half ask about an
    absent shape (answer "no"); half of those ask about an absent *partner* of a present shape,
    and with ``caption_noise_prob`` that answer is a wrong "yes" — the same prior the noisy
    captions teach.

    ``question_kinds`` (of :data:`~mmpo.toyworld.questions.QUESTION_KINDS`) adds one row per scene
    and kind with the scene's true answer (:func:`~mmpo.toyworld.questions.true_answer`): an
    instruction-tuned model's other skills, which RLAIF-V's mixed instructions draw on. They come
    from their own random stream, so the rows above are the same with or without them.
    """
    from .questions import ask, check_kinds, true_answer

    extra_rng = random.Random(f"sft-questions-{seed}")
    extra_kinds = check_kinds(question_kinds)
    rng = random.Random(seed)
    rows = []
    for scene in scenes:
        for kind in extra_kinds:
            question = ask(scene, kind, extra_rng)
            rows.append(Row(scene, question.prompt, true_answer(scene, question)))
        rows.append(Row(scene, DESCRIBE_PROMPT, noisy_caption(scene, config, rng)))
        for _ in range(questions_per_scene):
            present = sorted(scene.shapes)
            absent = [s for s in SHAPES if s not in scene.shapes]
            partners = sorted({config.partners[s] for s in present if s in config.partners} - scene.shapes)
            if not absent or rng.random() < 0.5:
                rows.append(Row(scene, pope_question(rng.choice(present)), "yes"))
            elif partners and rng.random() < 0.5:
                wrong = rng.random() < config.caption_noise_prob
                rows.append(Row(scene, pope_question(rng.choice(partners)), "yes" if wrong else "no"))
            else:
                rows.append(Row(scene, pope_question(rng.choice(absent)), "no"))
    return rows


def hallucinated_description(scene: Scene, config: WorldConfig, rng: random.Random) -> str:
    """The scene's exact description with one hallucination: an absent object inserted in a free
    quadrant (the partner of a present shape when possible — the likely error), or, when the scene
    is full, one object's shape swapped for an absent one."""
    objects = list(scene.objects)
    absent = [s for s in SHAPES if s not in scene.shapes]
    partners = sorted({config.partners[s] for s in scene.shapes if s in config.partners} - scene.shapes)
    free = [q for q in QUADRANTS if q not in {o.quadrant for o in objects}]
    ghost_shape = rng.choice(partners or absent)
    if free:
        ghost = SceneObject(ghost_shape, rng.choice(COLOURS), rng.choice(SIZES), rng.choice(free), (0, 0, 0, 0))
        objects.append(ghost)
        objects.sort(key=lambda o: QUADRANTS.index(o.quadrant))
    else:
        i = rng.randrange(len(objects))
        o = objects[i]
        objects[i] = SceneObject(ghost_shape, o.colour, o.size, o.quadrant, o.box)
    return " ".join(o.sentence() for o in objects)


def ground_truth_pairs(scenes: list[Scene], config: WorldConfig, image_dir: str | Path, seed: int = 0) -> list[PreferenceRecord]:
    """Preference records: chosen = exact description, rejected = one hallucinated object.

    Images are written as PNG files under ``image_dir``, atomically (skipped when a complete one is
    already there; a damaged one is re-rendered), and each record keeps its scene in ``meta`` so
    evaluation can recover the annotations.
    """
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    records = []
    for scene in progress.bar(scenes, desc="preference pairs"):
        path = ensure_png(image_dir / f"{scene.id}.png", scene.render)
        records.append(PreferenceRecord(
            image=str(path), prompt=DESCRIBE_PROMPT, chosen=scene.description(),
            rejected=hallucinated_description(scene, config, rng), id=scene.id,
            meta={"scene": json.dumps(scene.to_dict())},
        ))
    return records
