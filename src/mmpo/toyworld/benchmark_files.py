"""The synthetic world written out as the standard hallucination benchmarks, in their published formats.

:func:`write_toy_benchmarks` renders scenes to PNG files and writes, under one directory::

    images/<scene id>.png
    annotations/instances_toyworld.json     COCO instances: the six shapes as categories 1..6
    annotations/captions_toyworld.json      COCO captions: each scene's exact description
    object_halbench/questions.jsonl         {"image_id", "image", "question"} per line
    pope/toyworld_pope_{random,popular,adversarial}.json
                                            POPE: {"question_id", "image", "text", "label"} per line
    amber/data/query/query_all.json, query_generative.json, query_discriminative.json,
        query_discriminative-{existence,attribute,relation}.json   AMBER: [{"id", "image", "query"}]
    amber/data/annotations.json             AMBER: [{"id", "type", "truth", ("hallu")}], ids 1..N
    amber/data/relation.json, safe_words.txt, metrics.txt
                                            AMBER's scorer data: no associations, no safe words,
                                            the counters' initial values
    mmhal/response_template.json            MMHal-Bench: [{"question_type", ..., "model_answer": ""}]

so every loader and scorer of :mod:`mmpo.evaluation` (``chair``, ``pope``, ``amber``, ``mmhal``)
runs end to end on a tiny VLM. The questions use the world's
lower-case, space-separated style (``"is the circle red ?"``); words outside the world's tokenizer
vocabulary ("left", "of", "how", ...) become ``<unk>`` for the tiny model, which is harmless for a
smoke test.

AMBER mapping: generative ``truth`` = the shapes present, ``hallu`` = the absent shapes (absent
partners of present shapes first: the likely hallucinations); existence questions ask about every
``hallu`` shape (truth "no", as in AMBER); attribute questions ask a shape's colour (one true, one
wrong colour; only for shapes present once); relation questions ask "is the A left of the B ?" for
shapes present once that sit in different columns.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..evaluation.mmhal import MMHAL_QUESTION_TYPES
from ..io import atomic_write_json, atomic_write_jsonl, atomic_write_text, write_png_atomic
from .pope import SPLITS, build_pope_questions, category_frequencies, cooccurrence_counts, pope_question
from .scenes import COLOURS, DESCRIBE_PROMPT, PARTNERS, QUADRANTS, SHAPES, Scene, WorldConfig, sample_scenes


@dataclass(frozen=True)
class ToyBenchmarkFiles:
    """Where :func:`write_toy_benchmarks` put each benchmark's files."""

    root: Path
    images: Path
    instances: Path
    captions: Path
    chair_questions: Path
    pope_dir: Path
    pope: dict[str, Path]
    amber_queries: Path
    amber_annotations: Path
    mmhal_template: Path


def coco_instances(scenes: Sequence[Scene]) -> dict[str, Any]:
    """COCO ``instances`` JSON for ``scenes``: image ids ``1..n``, category ids ``1..6`` (``SHAPES``
    order), one annotation per object with its ``bbox`` ``[x, y, w, h]``, exact pixel ``area`` and
    (beyond COCO) its ``attributes`` (colour, size, quadrant)."""
    images, annotations = [], []
    for image_id, scene in enumerate(scenes, start=1):
        images.append({"id": image_id, "file_name": f"{scene.id}.png", "width": scene.image_size,
                       "height": scene.image_size})
        for index, obj in enumerate(scene.objects):
            x0, y0, x1, y1 = obj.box
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": SHAPES.index(obj.shape) + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(scene.mask(index).sum()), "iscrowd": 0,
                "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                "attributes": {"colour": obj.colour, "size": obj.size, "quadrant": obj.quadrant},
            })
    categories = [{"id": i, "name": shape, "supercategory": "shape"} for i, shape in enumerate(SHAPES, start=1)]
    return {"info": {"description": "mmpo synthetic world"}, "licenses": [], "images": images,
            "annotations": annotations, "categories": categories}


def _absent_partners_first(scene: Scene) -> list[str]:
    absent = [s for s in SHAPES if s not in scene.shapes]
    partners = {PARTNERS[s] for s in scene.shapes if s in PARTNERS}
    return sorted(absent, key=lambda s: (s not in partners, SHAPES.index(s)))


def _column(obj) -> int:
    return QUADRANTS.index(obj.quadrant) % 2


def amber_items(scenes: Sequence[Scene], seed: int = 0, max_relations_per_scene: int = 2) -> list[dict[str, Any]]:
    """AMBER queries merged with their annotations (``{"id", "image", "query", "type", "truth",
    ("hallu")}``), ids ``1..N``: generative first, then attribute, existence and relation (AMBER's
    order)."""
    rng = random.Random(seed)
    generative, attribute, existence, relation = [], [], [], []
    for scene in scenes:
        image = f"{scene.id}.png"
        hallu = _absent_partners_first(scene)
        generative.append({"image": image, "query": DESCRIBE_PROMPT, "type": "generative",
                           "truth": [s for s in SHAPES if s in scene.shapes], "hallu": hallu})
        existence += [{"image": image, "query": pope_question(shape),
                       "type": "discriminative-hallucination", "truth": "no"} for shape in hallu]
        once = [o for o in scene.objects if sum(p.shape == o.shape for p in scene.objects) == 1]
        for obj in once:
            wrong = rng.choice([c for c in COLOURS if c != obj.colour])
            attribute += [{"image": image, "query": f"is the {obj.shape} {colour} ?",
                           "type": "discriminative-attribute-state", "truth": truth}
                          for colour, truth in ((obj.colour, "yes"), (wrong, "no"))]
        pairs = [(a, b) for i, a in enumerate(once) for b in once[i + 1:] if _column(a) != _column(b)]
        relation += [{"image": image, "query": f"is the {a.shape} left of the {b.shape} ?",
                      "type": "discriminative-relation", "truth": "yes" if _column(a) < _column(b) else "no"}
                     for a, b in pairs[:max_relations_per_scene]]
    items = generative + attribute + existence + relation
    return [{"id": i, **item} for i, item in enumerate(items, start=1)]


def mmhal_records(scenes: Sequence[Scene]) -> list[dict[str, Any]]:
    """One MMHal-Bench-style record per scene; question types cycle in MMHal-Bench's order."""
    records = []
    for i, scene in enumerate(scenes):
        kind = MMHAL_QUESTION_TYPES[i % len(MMHAL_QUESTION_TYPES)]
        obj = next((o for o in scene.objects if sum(p.shape == o.shape for p in scene.objects) == 1),
                   scene.objects[0])
        absent = _absent_partners_first(scene)
        n = len(scene.objects)
        if kind == "adversarial" and absent:
            question, answer = f"what colour is the {absent[0]} ?", f"there is no {absent[0]} in the image ."
        elif kind == "counting":
            question, answer = "how many objects are in the image ?", f"there {'is' if n == 1 else 'are'} {n} ."
        elif kind == "relation":
            question, answer = f"where is the {obj.shape} ?", f"the {obj.shape} is at the {obj.quadrant} ."
        elif kind == "holistic":
            question, answer = DESCRIBE_PROMPT, scene.description()
        else:
            question, answer = f"what colour is the {obj.shape} ?", f"the {obj.shape} is {obj.colour} ."
        records.append({
            "question_type": kind, "question_topic": "shapes", "image_id": scene.id,
            "image_src": f"{scene.id}.png", "image_content": [f"{o.colour} {o.shape}" for o in scene.objects],
            "question": question, "gt_answer": answer, "model_answer": "",
        })
    return records


def write_toy_benchmarks(out_dir: str | Path, scenes: Sequence[Scene] | None = None, *, n_scenes: int = 20,
                         world: WorldConfig | None = None, stats_scenes: Sequence[Scene] | None = None,
                         seed: int = 0) -> ToyBenchmarkFiles:
    """Write every benchmark's files for ``scenes`` under ``out_dir`` (layout in the module docstring).

    Args:
        out_dir: the benchmark root (created).
        scenes: the scenes to use; ``None`` samples ``n_scenes`` from ``world.held_out()`` (the split
            without priors, where a model that learnt them hallucinates).
        n_scenes, world: see ``scenes``; ``world`` defaults to ``WorldConfig()``.
        stats_scenes: scenes whose frequencies / co-occurrences pick POPE's popular / adversarial
            negatives (e.g. the training scenes); ``None`` uses ``scenes``.
        seed: seed of POPE's random split and AMBER's wrong colours.
    """
    root = Path(out_dir)
    if scenes is None:
        scenes = sample_scenes((world or WorldConfig()).held_out(), n_scenes, prefix="bench")
    scenes = list(scenes)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for scene in scenes:
        write_png_atomic(scene.render(), images / f"{scene.id}.png")

    instances = coco_instances(scenes)
    instances_path = atomic_write_json(root / "annotations" / "instances_toyworld.json", instances, indent=1)
    captions_path = atomic_write_json(root / "annotations" / "captions_toyworld.json", {
        "images": instances["images"],
        "annotations": [{"id": i, "image_id": i, "caption": s.description()} for i, s in enumerate(scenes, start=1)],
    }, indent=1)
    questions_path = atomic_write_jsonl(root / "object_halbench" / "questions.jsonl", [
        {"image_id": i, "image": f"{s.id}.png", "question": DESCRIBE_PROMPT} for i, s in enumerate(scenes, start=1)])

    stats = scenes if stats_scenes is None else list(stats_scenes)
    pope = {}
    for split in SPLITS:
        questions = build_pope_questions(scenes, split, seed=seed, cooccurrence=cooccurrence_counts(stats),
                                         frequency=category_frequencies(stats))
        pope[split] = atomic_write_jsonl(root / "pope" / f"toyworld_pope_{split}.json", [
            {"question_id": i, "image": f"{q.scene_id}.png", "text": q.question, "label": q.label}
            for i, q in enumerate(questions, start=1)])

    items = amber_items(scenes, seed=seed)
    amber = root / "amber" / "data"

    def queries(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"id": r["id"], "image": r["image"], "query": r["query"]} for r in rows]

    query_all = atomic_write_json(amber / "query" / "query_all.json", queries(items), indent=1)
    atomic_write_json(amber / "query" / "query_generative.json", queries([r for r in items if r["type"] == "generative"]), indent=1)
    atomic_write_json(amber / "query" / "query_discriminative.json",
                queries([r for r in items if r["type"] != "generative"]), indent=1)
    for dimension, prefix in (("existence", "discriminative-hallucination"),
                              ("attribute", "discriminative-attribute"), ("relation", "discriminative-relation")):
        atomic_write_json(amber / "query" / f"query_discriminative-{dimension}.json",
                    queries([r for r in items if r["type"].startswith(prefix)]), indent=1)
    annotations = atomic_write_json(amber / "annotations.json", [
        {k: r[k] for k in ("id", "type", "truth", "hallu") if k in r} for r in items], indent=1)
    # AMBER's scorer reads three more data files from beside annotations.json: the word
    # associations of each object (none in this world), the global safe words (none) and the
    # counters' initial values (AMBER's own: every denominator starts at 0.001, every numerator at 0)
    atomic_write_json(amber / "relation.json", {shape: [] for shape in SHAPES}, indent=1)
    atomic_write_text(amber / "safe_words.txt", "")
    counters = ["chair", "safe_cover", "hallu_cover", "non_hallu"] + [
        f"{prefix}{name}" for prefix in ("", "as_", "an_", "aa_", "asso_", "ha_") for name in ("qa_correct", "qa_no", "qa_ans_no")]
    atomic_write_text(amber / "metrics.txt", "".join(f"{c}_score=0\n{c}_num=0.001\n" for c in counters))

    template = atomic_write_json(root / "mmhal" / "response_template.json", mmhal_records(scenes), indent=1)
    return ToyBenchmarkFiles(root=root, images=images, instances=instances_path, captions=captions_path,
                             chair_questions=questions_path, pope_dir=root / "pope", pope=pope,
                             amber_queries=query_all, amber_annotations=annotations, mmhal_template=template)
