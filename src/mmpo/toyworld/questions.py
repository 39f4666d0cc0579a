"""Questions beyond "describe the image": the instruction mix RLAIF-V's data holds, in the synthetic world.

RLAIF-V's prompts are not one instruction: detailed-description requests sit beside short questions
from VQA datasets. The world asks four kinds, each in its own vocabulary (the tokenizer's corpus
already holds every word):

========== ======================================= ============================================
kind       question                                a true answer
========== ======================================= ============================================
existence  ``is there a circle in the image ?``    ``yes`` / ``no``
colour     ``what colour is the circle ?``         ``the circle is red .``
count      ``how many objects are there ?``        ``there are 3 objects .``
position   ``what is at the top left ?``           ``a small red circle is at the top left .``
========== ======================================= ============================================

:func:`ask` poses one about a scene, :func:`true_answer` answers it (the base model's supervised rows
when its recipe names the kind), :func:`answer_problem` judges an answer against the scene (what
:class:`~mmpo.toyworld.judge.SceneJudge` does when an item's ``meta["question"]`` holds the question)
and :func:`mixed_items` builds a pool of describe and question items for self-generated pairs.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..evaluation.mentions import singular_forms, tokenize
from ..evaluation.pope import parse_yes_no
from .pope import pope_question
from .scenes import COLOURS, SHAPES, Scene

#: The question kinds, in the order :func:`ask` draws them.
QUESTION_KINDS: tuple[str, ...] = ("existence", "colour", "count", "position")
#: The kinds a base model learns beyond the yes/no existence questions every base model answers: the
#: recipe ``--prompts mixed`` and ``--base-questions`` start from.
EXTRA_KINDS: tuple[str, ...] = ("colour", "count", "position")
#: Why an answer is wrong (beside :mod:`~mmpo.toyworld.judge`'s reasons for description claims).
NO_ANSWER, WRONG_ANSWER = "no answer", "wrong answer"


@dataclass(frozen=True)
class Question:
    """One question about a scene: its ``kind``, the shape or quadrant it is about, and its text."""

    kind: str
    prompt: str
    shape: str | None = None
    quadrant: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Question:
        kind = d.get("kind")
        if kind not in QUESTION_KINDS:
            raise ValueError(f"question kind must be one of {', '.join(QUESTION_KINDS)}, not {kind!r}")
        return cls(kind=kind, prompt=str(d.get("prompt", "")), shape=d.get("shape"), quadrant=d.get("quadrant"))


def check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    """``kinds`` as a tuple, each one of :data:`QUESTION_KINDS` (``ValueError`` naming the bad one)."""
    for kind in kinds:
        if kind not in QUESTION_KINDS:
            raise ValueError(f"unknown question kind {kind!r}; the kinds are {', '.join(QUESTION_KINDS)}")
    return tuple(kinds)


def ask(scene: Scene, kind: str, rng: random.Random) -> Question:
    """A question of ``kind`` about ``scene``: existence about a present or an absent shape (even
    odds), colour about a shape the scene holds exactly once, position about an occupied quadrant.
    A colour question falls back to a count question when every shape occurs more than once."""
    check_kinds([kind])
    if kind == "existence":
        present = sorted(scene.shapes)
        absent = [s for s in SHAPES if s not in scene.shapes]
        shape = rng.choice(present if (not absent or rng.random() < 0.5) else absent)
        return Question("existence", pope_question(shape), shape=shape)
    if kind == "colour":
        once = sorted(s for s in scene.shapes if sum(o.shape == s for o in scene.objects) == 1)
        if once:
            shape = rng.choice(once)
            return Question("colour", f"what colour is the {shape} ?", shape=shape)
        kind = "count"
    if kind == "count":
        return Question("count", "how many objects are there ?")
    quadrant = rng.choice([o.quadrant for o in scene.objects])
    return Question("position", f"what is at the {quadrant} ?", quadrant=quadrant)


def true_answer(scene: Scene, question: Question) -> str:
    """The scene's true answer to ``question``, in the world's phrasing."""
    if question.kind == "existence":
        return "yes" if question.shape in scene.shapes else "no"
    if question.kind == "colour":
        obj = next(o for o in scene.objects if o.shape == question.shape)
        return f"the {obj.shape} is {obj.colour} ."
    if question.kind == "count":
        return f"there are {len(scene.objects)} objects ."
    return next(o for o in scene.objects if o.quadrant == question.quadrant).sentence()


def answer_problem(question: Question, answer: str, scene: Scene) -> str | None:
    """Why ``answer`` (one sentence of a response) is a wrong answer to ``question`` about ``scene``,
    or None when it is right.

    * existence: the first word is yes or no (else :data:`NO_ANSWER`) and matches the scene;
    * colour: the colour word is the asked object's colour, and any shape named is the asked one;
    * count: the first number is the number of objects;
    * position: the shape named is the one at the asked quadrant, with any colour, size or
      quadrant it states matching that object.
    """
    words = tokenize(answer)
    if question.kind == "existence":
        said = parse_yes_no(answer)
        if said is None:
            return NO_ANSWER
        return None if (said == "yes") == (question.shape in scene.shapes) else WRONG_ANSWER
    if question.kind == "count":
        number = next((int(w) for w in re.findall(r"\d+", answer)), None)
        if number is None:
            return NO_ANSWER
        return None if number == len(scene.objects) else WRONG_ANSWER
    shapes = [form for w in words for form in singular_forms(w) if form in SHAPES]
    if question.kind == "colour":
        colour = next((w for w in reversed(words) if w in COLOURS), None)
        if colour is None:
            return NO_ANSWER
        if any(s != question.shape for s in shapes):
            return WRONG_ANSWER
        obj = next((o for o in scene.objects if o.shape == question.shape), None)
        return None if obj is not None and obj.colour == colour else WRONG_ANSWER
    # position: the answer read as a description claim (:func:`~mmpo.toyworld.judge.claim_facts`)
    from .judge import claim_facts

    facts = claim_facts(answer)
    if facts.shape is None:
        return NO_ANSWER
    obj = next((o for o in scene.objects if o.quadrant == question.quadrant), None)
    if obj is None or facts.shape != obj.shape:
        return WRONG_ANSWER
    for stated, true in ((facts.colour, obj.colour), (facts.size, obj.size), (facts.quadrant, obj.quadrant)):
        if stated is not None and stated != true:
            return WRONG_ANSWER
    return None


def mixed_items(scenes: Sequence[Scene], image_dir: str | Path, *, question_share: float = 0.5,
                kinds: Sequence[str] = QUESTION_KINDS, seed: int = 0) -> list[tuple[str, str, str, dict[str, Any]]]:
    """Items ``(id, image path, prompt, meta)`` for self-generated pairs: each scene asked "describe
    the image" or, with probability ``question_share``, a question of a kind drawn uniformly from
    ``kinds`` (:func:`ask`); ``meta`` holds the scene and the question (``meta["question"]``), which
    is what makes :class:`~mmpo.toyworld.judge.SceneJudge` judge the answer as an answer."""
    from .rounds import scene_items

    if not 0 <= question_share <= 1:
        raise ValueError(f"question_share must be in [0, 1], got {question_share!r}")
    kinds = check_kinds(kinds)
    rng = random.Random(f"mixed-items-{seed}")
    items = []
    for item, scene in zip(scene_items(scenes, image_dir), scenes, strict=True):
        scene_id, image, prompt, meta = item
        if kinds and rng.random() < question_share:
            question = ask(scene, rng.choice(kinds), rng)
            prompt, meta = question.prompt, {**meta, "question": json.dumps(question.to_dict())}
        items.append((scene_id, image, prompt, meta))
    return items


def question_of(meta: dict[str, Any]) -> Question | None:
    """The question in an item's ``meta["question"]`` (a JSON string or a dict), or None."""
    raw = meta.get("question")
    if raw is None:
        return None
    return Question.from_dict(json.loads(raw) if isinstance(raw, str) else raw)


__all__ = ["QUESTION_KINDS", "EXTRA_KINDS", "NO_ANSWER", "WRONG_ANSWER", "Question", "ask", "true_answer",
           "answer_problem", "mixed_items", "question_of", "check_kinds"]
