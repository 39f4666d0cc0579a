"""Exact hallucination metrics of a VLM on a world whose truth is known (CHAIR, POPE, colours).

Every scene's objects are known, so nothing here is estimated by a detector or a judge: a shape
mentioned that is not in the scene is a hallucination, full stop. The scorer knows no particular
world: the vocabulary (``shapes``, ``colours``), the description prompt and the POPE questions
come from the caller — :func:`mmpo.toyworld.evaluate.evaluate_world` passes the built-in
synthetic world's.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mmpo.evaluation.mentions import chair_scores, find_mentions, word_spans
from mmpo.evaluation.pope import parse_yes_no, pope_metrics
from mmpo.evaluation.spans import make_span, missed
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


@dataclass(frozen=True)
class ColourClaim:
    """One sentence's colour claim: its subject (the first shape mentioned, ``text[start:end]``)
    and the last colour word before it (``text[colour_start:colour_end]``)."""

    shape: str
    start: int
    end: int
    colour: str
    colour_start: int
    colour_end: int


def colour_claims(response: str, shapes: Collection[str], colours: Collection[str]) -> list[ColourClaim]:
    """The colour claims of ``response``, one per sentence that has one.

    The response is cut into sentences at ``"."``. In each sentence the first shape mentioned
    (:func:`~mmpo.evaluation.mentions.find_mentions`) is the sentence's subject and the last colour word
    before it is its colour (``"a small red circle is ..."`` -> ``(red, circle)``); a sentence whose
    subject has no colour word before it makes no claim. Offsets are into ``response``.
    """
    claims = []
    offset = 0
    for sentence in response.split("."):
        subject = next(iter(find_mentions(sentence, shapes)), None)
        if subject is not None:
            shape, start, end = subject
            colour = next(((w, a, b) for w, a, b in reversed(word_spans(sentence[:start])) if w in colours), None)
            if colour is not None:
                claims.append(ColourClaim(shape, offset + start, offset + end, colour[0],
                                          offset + colour[1], offset + colour[2]))
        offset += len(sentence) + 1
    return claims


def _colours_of(scene: KnownScene) -> dict[str, set[str]]:
    colours_of: dict[str, set[str]] = {}
    for obj in scene.objects:
        colours_of.setdefault(obj.shape, set()).add(obj.colour)
    return colours_of


def _checked_claims(response: str, scene: KnownScene, shapes: Collection[str], colours: Collection[str]
                    ) -> tuple[dict[str, set[str]], list[ColourClaim], list[ColourClaim]]:
    """The scene's colours per shape, the checked colour claims (shape present) and the wrong ones."""
    colours_of = _colours_of(scene)
    checked = [c for c in colour_claims(response, shapes, colours) if c.shape in colours_of]
    return colours_of, checked, [c for c in checked if c.colour not in colours_of[c.shape]]


def attribute_errors(response: str, scene: KnownScene, shapes: Collection[str],
                     colours: Collection[str]) -> tuple[int, int]:
    """``(wrong, checked)`` colour claims (:func:`colour_claims`) of ``response`` about shapes really
    in ``scene``. A claim is *checked* when its shape is present in the scene; it is *wrong* when no
    object of that shape has that colour. Claims about absent shapes are CHAIR's business and are
    skipped."""
    _, checked, wrong = _checked_claims(response, scene, shapes, colours)
    return len(wrong), len(checked)


def answer_spans(response: str, scene: KnownScene, shapes: Collection[str],
                 colours: Collection[str]) -> dict[str, Any]:
    """Every shape mention of ``response`` with the exact verdict (:mod:`mmpo.evaluation.spans`):
    ``hallucinated`` when the shape is not in ``scene``; ``wrong_attribute`` when it is the subject
    of a checked, wrong colour claim (:func:`attribute_errors`), with the colour word; else
    ``correct``. Also ``missed``: the scene's shapes never mentioned."""
    return _read_answer(response, scene, shapes, colours)[1]


def _read_answer(response: str, scene: KnownScene, shapes: Collection[str], colours: Collection[str]
                 ) -> tuple[tuple[int, int], dict[str, Any], list[str]]:
    """One description read once: ``(wrong, checked)`` colour claims, :func:`answer_spans`' dict and
    the categories mentioned (repeats kept)."""
    colours_of, checked, wrong = _checked_claims(response, scene, shapes, colours)
    subjects = {c.start: c for c in wrong}
    found = find_mentions(response, shapes)
    spans = []
    for shape, start, end in found:
        if shape not in colours_of:
            spans.append(make_span(response, start, end, shape, "hallucinated"))
        elif (claim := subjects.get(start)) is not None:
            attribute = {"start": claim.colour_start, "end": claim.colour_end,
                         "text": response[claim.colour_start:claim.colour_end], "said": claim.colour,
                         "true": sorted(colours_of[shape])}
            spans.append(make_span(response, start, end, shape, "wrong_attribute", attribute=attribute))
        else:
            spans.append(make_span(response, start, end, shape, "correct"))
    mentioned = [shape for shape, _, _ in found]
    return (len(wrong), len(checked)), {"spans": spans, "missed": missed(scene.shapes, mentioned)}, mentioned


def score_descriptions(descriptions: Sequence[str], scenes: Sequence[KnownScene], *, shapes: Collection[str],
                       colours: Collection[str]) -> dict[str, Any]:
    """CHAIR and attribute errors of ``descriptions`` (one per scene, in order), exactly.

    Returns:
        ``chair_i``, ``chair_s``, ``coverage``, ``mentions_per_response``, ``attribute_error``
        (wrong colours / checked colour claims, ``0.0`` if none checked), ``n_wrong_attributes``,
        ``n_checked_attributes``, and ``per_scene``: per scene ``scene_id``, ``response``,
        ``mentioned`` and ``truth`` (categories), ``spans`` and ``missed`` (:func:`answer_spans`).
    """
    if len(descriptions) != len(scenes):
        raise ValueError(f"{len(descriptions)} descriptions for {len(scenes)} scenes")
    readings = [_read_answer(d, s, shapes, colours) for d, s in zip(descriptions, scenes, strict=True)]
    chair = chair_scores([mentioned for *_, mentioned in readings], [s.shapes for s in scenes])
    wrong = sum(w for (w, _), _, _ in readings)
    checked = sum(c for (_, c), _, _ in readings)
    rows = [{"scene_id": scene.id, "response": description, "mentioned": sorted(set(mentioned)),
             "truth": sorted(scene.shapes), **spans}
            for description, scene, (_, spans, mentioned) in zip(descriptions, scenes, readings, strict=True)]
    return {**chair, "attribute_error": wrong / checked if checked else 0.0,
            "n_wrong_attributes": wrong, "n_checked_attributes": checked, "per_scene": rows}


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
    keep_items: bool = False,
) -> dict[str, Any]:
    """Describe every scene and answer the POPE ``questions`` about them; score both exactly.

    CHAIR (:func:`mmpo.evaluation.mentions.chair_scores`): each scene is described with ``prompt``;
    the mentions of ``shapes`` are compared with ``scene.shapes``. POPE: each question is asked about
    the scene ``question.scene_id`` names; an answer whose first word is not yes/no counts as wrong (see
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
        keep_items: also return ``per_scene`` (``{"scene_id", "response", "mentioned", "truth",
            "spans", "missed"}`` per scene: the categories mentioned and present, each mention's
            place and verdict, see :func:`score_descriptions`) and ``per_question`` (``{"scene_id",
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
                                      batch_size=batch_size, max_new_tokens=max_new_tokens)
    scored = score_descriptions(descriptions, scenes, shapes=shapes, colours=colours)

    answers = generate_responses(model, processor, [images[q.scene_id] for q in questions],
                                 [q.question for q in questions], batch_size=batch_size,
                                 max_new_tokens=pope_max_new_tokens)
    predictions = [parse_yes_no(a) for a in answers]
    pope = pope_metrics([q.label for q in questions], predictions)

    items = {} if not keep_items else {
        "per_scene": scored["per_scene"],
        "per_question": [{"scene_id": q.scene_id, "label": q.label, "prediction": p}
                         for q, p in zip(questions, predictions, strict=True)],
    }
    return {
        "chair_i": scored["chair_i"],
        "chair_s": scored["chair_s"],
        "coverage": scored["coverage"],
        "mentions_per_response": scored["mentions_per_response"],
        "attribute_error": scored["attribute_error"],
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
