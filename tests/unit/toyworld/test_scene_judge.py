"""The synthetic world's exact claim judge, and its noisy variant."""

import json

import pytest

from mmpo.data.construct.self_pairs import ClaimQuery
from mmpo.toyworld.judge import SceneJudge, claim_facts, claim_problem, claim_question, scene_of
from mmpo.toyworld.scenes import Scene, SceneObject

SCENE = Scene("s", (SceneObject("circle", "red", "small", "top left", (0, 0, 8, 8)),
                    SceneObject("square", "blue", "large", "bottom right", (30, 30, 60, 60))))


@pytest.mark.parametrize("claim, problem", [
    ("a small red circle is at the top left .", None),
    ("a red circle .", None),                                     # unstated attributes are not checked
    ("there are circles .", None),                                # plural
    ("a small red star is at the top left .", "absent object"),
    ("a small green circle is at the top left .", "wrong colour"),
    ("a large red circle is at the top left .", "wrong size"),
    ("a small red circle is at the bottom right .", "wrong position"),
    ("a small blue circle is at the top left .", "wrong colour"),  # blue belongs to the square, not the circle
    ("is at the top left .", "no object named"),
])
def test_claim_problem(claim, problem):
    assert claim_problem(claim, SCENE) == problem


def test_claim_facts_reads_the_subject():
    assert claim_facts("a large blue square is at the bottom right .") == claim_facts("large blue square bottom right")
    facts = claim_facts("a large blue square is at the bottom right .")
    assert (facts.shape, facts.colour, facts.size, facts.quadrant) == ("square", "blue", "large", "bottom right")


def queries(claims, meta=None):
    meta = meta or {"scene": json.dumps(SCENE.to_dict())}
    return [ClaimQuery(SCENE.render(), "p", "r", c, meta, f"s/0/{i}") for i, c in enumerate(claims)]


def test_exact_judge_and_objects_only():
    claims = ["a small red circle is at the top left .", "a small green circle .", "a star ."]
    assert [v.correct for v in SceneJudge().judge(queries(claims))] == [True, False, False]
    assert [v.reason for v in SceneJudge().judge(queries(claims))] == [None, "wrong colour", "absent object"]
    assert [v.correct for v in SceneJudge(objects_only=True).judge(queries(claims))] == [True, True, False]


def test_flips_are_deterministic_and_at_the_rate_asked():
    claims = ["a small red circle is at the top left ."] * 2000
    first = SceneJudge(flip_prob=0.2, seed=3).judge(queries(claims))
    again = SceneJudge(flip_prob=0.2, seed=3).judge(queries(claims))
    assert [v.correct for v in first] == [v.correct for v in again]
    flipped = sum(not v.correct for v in first)
    assert 0.17 < flipped / len(claims) < 0.23
    assert {v.reason for v in first if not v.correct} == {"flipped:correct"}
    assert [v.correct for v in SceneJudge(flip_prob=1.0).judge(queries(claims[:3]))] == [False] * 3
    with pytest.raises(ValueError, match="flip_prob"):
        SceneJudge(flip_prob=1.5)


def test_items_without_a_scene_are_an_error_naming_the_claim():
    with pytest.raises(ValueError, match=r"claim 's/0/0'.*meta\['scene'\]"):
        SceneJudge().judge(queries(["a circle ."], meta={"other": 1}))
    with pytest.raises(ValueError, match="not a scene"):
        scene_of({"scene": "{}"}, "k")


def test_claim_question_is_the_pope_question():
    assert claim_question("a small red circle is at the top left .") == "is there a circle in the image ?"
    assert claim_question("nothing here") == "nothing here"
