"""Exact hallucination metrics of a VLM on a world whose truth is known (CHAIR, POPE, colours).

Every scene's objects are known, so nothing here is estimated by a detector or a judge: a shape
mentioned that is not in the scene is a hallucination, full stop. The scorer knows no particular
world: the vocabulary (``shapes``, ``colours``), the description prompt and the POPE questions
come from the caller — :func:`mmpo.toyworld.evaluate.evaluate_world` passes the built-in
synthetic world's.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Protocol

from mmpo.evaluation.chair import chair_scores, extract_mentions, singular_forms, tokenize
from mmpo.evaluation.pope import parse_yes_no, pope_metrics
from mmpo.generation import generate_responses


class KnownObject(Protocol):
    shape: str
    colour: str


class KnownScene(Protocol):
    """A scene whose objects are known (e.g. ``mmpo.toyworld.scenes.Scene``)."""

    @property
    def id(self) -> str: ...
    @property
    def objects(self) -> Sequence[KnownObject]: ...
    @property
    def shapes(self) -> Collection[str]: ...
    def render(self) -> Any: ...
    def description(self) -> str: ...


class YesNoQuestion(Protocol):
    """A POPE question about one scene (e.g. ``mmpo.toyworld.pope.PopeQuestion``)."""

    scene_id: str
    question: str
    label: str


def attribute_errors(response: str, scene: KnownScene, shapes: Collection[str],
                     colours: Collection[str]) -> tuple[int, int]:
    """``(wrong, checked)`` colour claims of ``response`` about shapes really in ``scene``.

    The response is cut into sentences at ``"."``. In each sentence the first shape mentioned is the
    sentence's subject and the last colour word before it is its colour (``"a small red circle is
    ..."`` -> ``(red, circle)``). A sentence is *checked* when it has both and the shape is present
    in the scene; it is *wrong* when no object of that shape has that colour. Sentences about absent
    shapes are CHAIR's business and are skipped.
    """
    colours_of: dict[str, set[str]] = {}
    for obj in scene.objects:
        colours_of.setdefault(obj.shape, set()).add(obj.colour)
    wrong = checked = 0
    for sentence in response.split("."):
        words = tokenize(sentence)
        for i, word in enumerate(words):
            shape = next((form for form in singular_forms(word) if form in shapes), None)
            if shape is not None:
                colour = next((w for w in reversed(words[:i]) if w in colours), None)
                if colour is not None and shape in colours_of:
                    checked += 1
                    wrong += colour not in colours_of[shape]
                break
    return wrong, checked


def evaluate_synthetic(
    model: Any,
    processor: Any,
    scenes: Sequence[KnownScene],
    questions: Sequence[YesNoQuestion],
    *,
    shapes: Collection[str],
    colours: Collection[str],
    prompt: str,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    pope_max_new_tokens: int = 8,
    n_samples: int = 5,
    progress: bool = False,
    keep_items: bool = False,
) -> dict[str, Any]:
    """Describe every scene and answer the POPE ``questions`` about them; score both exactly.

    CHAIR (:mod:`mmpo.evaluation.chair`): each scene is described with ``prompt``; the mentions of
    ``shapes`` are compared with ``scene.shapes``. POPE: each question is asked about the scene
    ``question.scene_id`` names; an answer whose first word is not yes/no counts as wrong (see
    :func:`mmpo.evaluation.pope.pope_metrics`). Attribute errors: :func:`attribute_errors`.

    Args:
        model, processor: a transformers VLM and its processor (see :func:`generate_responses`).
        scenes: the evaluated scenes.
        questions: yes/no questions about ``scenes`` (``scene_id``, ``question``, ``label``).
        shapes, colours: the world's object and colour words.
        prompt: the description request.
        batch_size: requests per ``generate`` call.
        max_new_tokens: length limit of descriptions.
        pope_max_new_tokens: length limit of POPE answers (only the first word is read).
        n_samples: how many (description, truth) pairs to keep under ``samples``.
        progress: show tqdm bars.
        keep_items: also return ``per_scene`` (``{"scene_id", "response", "mentioned", "truth"}``
            per scene: the categories mentioned and present) and ``per_question`` (``{"scene_id",
            "label", "prediction"}`` per POPE question), from which every aggregate can be
            recomputed on a subset (e.g. a bootstrap over scenes).

    Returns:
        A flat dict of floats — ``chair_i``, ``chair_s``, ``coverage``, ``mentions_per_response``,
        ``attribute_error`` (wrong colours / checked colour claims, ``0.0`` if none checked),
        ``pope_accuracy``, ``pope_precision``, ``pope_recall``, ``pope_f1``, ``pope_yes_ratio``,
        ``pope_unparsed``, ``pope_n``, ``n_scenes`` — plus ``samples``: a list of
        ``{"scene_id", "response", "truth"}`` dicts (kept apart so the rest can be logged as scalars).
    """
    scenes = list(scenes)
    images = {scene.id: scene.render() for scene in scenes}
    if unknown := sorted({q.scene_id for q in questions} - images.keys()):
        raise ValueError(f"{len(unknown)} POPE questions are about scenes not evaluated, e.g. {unknown[:3]}")

    descriptions = generate_responses(model, processor, [images[s.id] for s in scenes], prompt,
                                      batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress)
    mentions = [extract_mentions(d, shapes) for d in descriptions]
    chair = chair_scores(mentions, [s.shapes for s in scenes])
    wrong = checked = 0
    for description, scene in zip(descriptions, scenes, strict=True):
        w, c = attribute_errors(description, scene, shapes, colours)
        wrong, checked = wrong + w, checked + c

    answers = generate_responses(model, processor, [images[q.scene_id] for q in questions],
                                 [q.question for q in questions], batch_size=batch_size,
                                 max_new_tokens=pope_max_new_tokens, progress=progress)
    predictions = [parse_yes_no(a) for a in answers]
    pope = pope_metrics([q.label for q in questions], predictions)

    items = {} if not keep_items else {
        "per_scene": [{"scene_id": s.id, "response": d, "mentioned": sorted(set(m)), "truth": sorted(s.shapes)}
                      for s, d, m in zip(scenes, descriptions, mentions, strict=True)],
        "per_question": [{"scene_id": q.scene_id, "label": q.label, "prediction": p}
                         for q, p in zip(questions, predictions, strict=True)],
    }
    return {
        "chair_i": chair["chair_i"],
        "chair_s": chair["chair_s"],
        "coverage": chair["coverage"],
        "mentions_per_response": chair["mentions_per_response"],
        "attribute_error": wrong / checked if checked else 0.0,
        "pope_accuracy": pope["accuracy"],
        "pope_precision": pope["precision"],
        "pope_recall": pope["recall"],
        "pope_f1": pope["f1"],
        "pope_yes_ratio": pope["yes_ratio"],
        "pope_unparsed": float(pope["unparsed"]),
        "pope_n": float(pope["n"]),
        "n_scenes": float(len(scenes)),
        "samples": [{"scene_id": s.id, "response": d, "truth": s.description()}
                    for s, d in list(zip(scenes, descriptions, strict=True))[:n_samples]],
        **items,
    }
