"""Claim judges for the synthetic world: the exact one (its annotations), optionally made noisy.

:class:`SceneJudge` is the synthetic world's stand-in for RLAIF-V's labeler. It reads the scene
from the item's ``meta["scene"]`` (as every synthetic item and record carries it) and checks a claim
against the annotations: exact, no model involved. ``flip_prob`` flips that fraction of verdicts
(a hash of the claim's key decides which, so the same claim is always flipped the same way) to model
a labeler that errs; RLAIF-V's open-source labeler is far from exact.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..data.construct.self_pairs import ClaimQuery, Verdict, stable_uniform
from ..evaluation.mentions import singular_forms, tokenize
from .pope import pope_question
from .questions import Question, answer_problem, question_of
from .scenes import COLOURS, QUADRANTS, SHAPES, SIZES, Scene

#: Reasons a claim is wrong, in the order they are checked.
NO_OBJECT, ABSENT, WRONG_COLOUR, WRONG_SIZE, WRONG_POSITION = (
    "no object named", "absent object", "wrong colour", "wrong size", "wrong position")


@dataclass(frozen=True)
class ClaimFacts:
    """What a claim states: the first shape it names and the attributes around it (``None``: not stated)."""

    shape: str | None
    colour: str | None = None
    size: str | None = None
    quadrant: str | None = None


def claim_facts(claim: str) -> ClaimFacts:
    """Read ``"a small red circle is at the top left ."``: the first shape word (plural forms
    too) is the subject; the last colour and size words before it are its colour and size; a
    quadrant phrase anywhere in the claim is its position."""
    words = tokenize(claim)
    for i, word in enumerate(words):
        shape = next((form for form in singular_forms(word) if form in SHAPES), None)
        if shape is not None:
            colour = next((w for w in reversed(words[:i]) if w in COLOURS), None)
            size = next((w for w in reversed(words[:i]) if w in SIZES), None)
            text = " ".join(words)
            quadrant = next((q for q in QUADRANTS if q in text), None)
            return ClaimFacts(shape, colour, size, quadrant)
    return ClaimFacts(None)


def claim_problem(claim: str, scene: Scene) -> str | None:
    """Why ``claim`` is false of ``scene``, or ``None`` when it is true.

    True: some object of the scene has the claim's shape and every attribute the claim states
    (colour, size, position) — all of one object. Otherwise the reason is the first of: no shape
    named (:data:`NO_OBJECT`), no object of that shape (:data:`ABSENT`, a hallucinated object, what
    CHAIR counts), then the attribute no object of that shape matches, checked in the order
    colour, size, position.
    """
    facts = claim_facts(claim)
    if facts.shape is None:
        return NO_OBJECT
    candidates = [o for o in scene.objects if o.shape == facts.shape]
    if not candidates:
        return ABSENT
    for attribute, reason in (("colour", WRONG_COLOUR), ("size", WRONG_SIZE), ("quadrant", WRONG_POSITION)):
        wanted = getattr(facts, attribute)
        if wanted is not None:
            candidates = [o for o in candidates if getattr(o, attribute) == wanted]
            if not candidates:
                return reason
    return None


def scene_of(meta: dict[str, Any], key: str = "") -> Scene:
    """The scene in an item's ``meta["scene"]`` (a JSON string or a dict); ``ValueError`` naming
    the claim's key when it is missing or malformed."""
    raw = meta.get("scene")
    if raw is None:
        raise ValueError(f"claim {key!r}: the item has no meta['scene'] (SceneJudge needs the synthetic world's "
                         "annotations; use a model or endpoint judge for other data)")
    try:
        return Scene.from_dict(json.loads(raw) if isinstance(raw, str) else raw)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"claim {key!r}: meta['scene'] is not a scene ({type(error).__name__}: {error})") from error


@dataclass
class SceneJudge:
    """Judges claims exactly against the synthetic scene in each item's meta (:func:`claim_problem`);
    when the meta also holds a question (``meta["question"]``, :mod:`~mmpo.toyworld.questions`), each
    sentence is judged as an answer to it (:func:`~mmpo.toyworld.questions.answer_problem`).

    Attributes:
        flip_prob: fraction of verdicts flipped (a noisy labeler); which ones is decided by a hash of
            ``(seed, claim key)``. A flipped verdict's reason is ``"flipped"`` (the true verdict
            follows after a colon).
        seed: seeds the flips.
        objects_only: judge only whether the named object exists (ignore colour, size, position).
    """

    flip_prob: float = 0.0
    seed: int = 0
    objects_only: bool = False

    def __post_init__(self):
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob!r}")

    def judge(self, queries: Sequence[ClaimQuery]) -> list[Verdict]:
        verdicts = []
        cache: dict[int, tuple[Scene, Question | None]] = {}  # per item: its scene and question, read once
        for query in queries:
            if id(query.meta) not in cache:
                cache[id(query.meta)] = scene_of(query.meta, query.key), question_of(query.meta)
            scene, question = cache[id(query.meta)]
            problem = claim_problem(query.claim, scene) if question is None else answer_problem(question, query.claim, scene)
            if self.objects_only and question is None and problem not in (None, NO_OBJECT, ABSENT):
                problem = None
            correct = problem is None
            reason = problem
            if self.flip_prob and stable_uniform("scene-judge", self.seed, query.key) < self.flip_prob:
                correct, reason = not correct, f"flipped:{problem or 'correct'}"
            verdicts.append(Verdict(correct=correct, p_correct=1.0 if correct else 0.0, reason=reason))
        return verdicts

    def describe(self) -> dict[str, Any]:
        return {"judge": "SceneJudge", "flip_prob": self.flip_prob, "seed": self.seed,
                "objects_only": self.objects_only}


def claim_question(claim: str) -> str:
    """A claim of the synthetic world as the POPE question the base model was trained to answer
    (``"is there a circle in the image ?"``); the claim itself when it names no shape. The
    question template a model judge (:class:`~mmpo.data.construct.claim_judges.VLMClaimJudge`) uses here."""
    facts = claim_facts(claim)
    return claim if facts.shape is None else pope_question(facts.shape)
