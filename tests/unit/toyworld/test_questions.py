"""Questions beyond "describe": asked, answered truthfully, judged; the base model's rows and recipe."""

import json
import random

import pytest

from mmpo.data.construct.self_pairs import ClaimQuery
from mmpo.toyworld.base_model import BaseModelRecipe
from mmpo.toyworld.data import sft_rows
from mmpo.toyworld.judge import SceneJudge
from mmpo.toyworld.questions import (
    NO_ANSWER,
    QUESTION_KINDS,
    WRONG_ANSWER,
    Question,
    answer_problem,
    ask,
    mixed_items,
    question_of,
    true_answer,
)
from mmpo.toyworld.scenes import Scene, SceneObject, WorldConfig, sample_scenes

SCENE = Scene("s", (SceneObject("circle", "red", "small", "top left", (0, 0, 8, 8)),
                    SceneObject("square", "blue", "large", "top right", (30, 0, 60, 30)),
                    SceneObject("square", "green", "small", "bottom right", (30, 30, 60, 60))))
COLOUR = Question("colour", "what colour is the circle ?", shape="circle")
COUNT = Question("count", "how many objects are there ?")
WHERE = Question("position", "what is at the top right ?", quadrant="top right")
THERE = Question("existence", "is there a star in the image ?", shape="star")


@pytest.mark.parametrize("question, answer, problem", [
    (COLOUR, "the circle is red .", None),
    (COLOUR, "it is a red circle .", None),
    (COLOUR, "the circle is blue .", WRONG_ANSWER),
    (COLOUR, "the square is red .", WRONG_ANSWER),          # about another object
    (COLOUR, "the circle .", NO_ANSWER),
    (COUNT, "there are 3 objects .", None),
    (COUNT, "there are 2 objects .", WRONG_ANSWER),
    (COUNT, "there are objects .", NO_ANSWER),
    (WHERE, "a large blue square is at the top right .", None),
    (WHERE, "a square .", None),                             # unstated attributes are not checked
    (WHERE, "a small blue square is at the top right .", WRONG_ANSWER),   # the size of the other square
    (WHERE, "a large green square is at the top right .", WRONG_ANSWER),
    (WHERE, "a large blue square is at the bottom right .", WRONG_ANSWER),
    (WHERE, "a red circle is at the top right .", WRONG_ANSWER),
    (WHERE, "is at the top right .", NO_ANSWER),
    (THERE, "no", None),
    (THERE, "yes", WRONG_ANSWER),
    (THERE, "a star", NO_ANSWER),
])
def test_answers_are_judged_against_the_scene(question, answer, problem):
    assert answer_problem(question, answer, SCENE) == problem


def test_every_kind_is_asked_and_its_true_answer_is_judged_right():
    rng = random.Random(0)
    scenes = sample_scenes(WorldConfig(), 50)
    for scene in scenes:
        for kind in QUESTION_KINDS:
            question = ask(scene, kind, rng)
            assert answer_problem(question, true_answer(scene, question), scene) is None, (scene, question)
    # a colour question is only asked about a shape the scene holds once (else it is a count question)
    assert ask(Scene("t", SCENE.objects[1:]), "colour", rng).kind == "count"
    with pytest.raises(ValueError, match="unknown question kind 'size'"):
        ask(SCENE, "size", rng)


def test_the_scene_judge_judges_answers_when_the_item_holds_a_question():
    meta = {"scene": json.dumps(SCENE.to_dict()), "question": json.dumps(COUNT.to_dict())}
    queries = [ClaimQuery(SCENE.render(), COUNT.prompt, a, a, meta, f"s/{i}/0")
               for i, a in enumerate(["there are 3 objects .", "there are 4 objects ."])]
    assert [v.correct for v in SceneJudge().judge(queries)] == [True, False]
    # without the question the same sentence is a description claim naming no object
    plain = [ClaimQuery(SCENE.render(), "p", "r", "there are 3 objects .", {"scene": meta["scene"]}, "s/0/0")]
    assert SceneJudge().judge(plain)[0].reason == "no object named"
    with pytest.raises(ValueError, match="question kind"):
        question_of({"question": {"kind": "size"}})


def test_mixed_items_ask_about_the_share_asked_for(tmp_path):
    scenes = sample_scenes(WorldConfig(), 400)
    items = mixed_items(scenes, tmp_path, question_share=0.5, seed=0)
    asked = [question_of(meta) for *_, meta in items]
    share = sum(q is not None for q in asked) / len(items)
    assert 0.4 < share < 0.6
    assert {q.kind for q in asked if q} == set(QUESTION_KINDS)
    for (_, _, prompt, meta), q in zip(items, asked, strict=True):
        assert prompt == (q.prompt if q else "describe the image .")
        assert "scene" in meta
    assert items == mixed_items(scenes, tmp_path, question_share=0.5, seed=0)     # deterministic
    assert all(question_of(m) is None for *_, m in mixed_items(scenes[:20], tmp_path, question_share=0.0))


def test_question_rows_leave_the_default_rows_and_recipe_hash_alone():
    scenes = sample_scenes(WorldConfig(), 30)
    plain = sft_rows(scenes, WorldConfig(), seed=0)
    more = sft_rows(scenes, WorldConfig(), seed=0, question_kinds=("colour", "count", "position"))
    assert [r for r in more if r.prompt.startswith(("describe", "is there"))] == plain
    assert len(more) == len(plain) + 3 * len(scenes)
    assert all(answer_problem(question_of_row(r), r.response, r.scene) is None
               for r in more if not r.prompt.startswith(("describe", "is there")))
    # the shipped model's hash predates the field; a recipe with questions hashes differently
    assert "question_kinds" not in BaseModelRecipe().to_dict()
    assert BaseModelRecipe(question_kinds=("count",)).fingerprint() != BaseModelRecipe().fingerprint()


def question_of_row(row):
    """The question a supervised row asks (its kind read from the prompt's wording)."""
    words = row.prompt.split()
    if row.prompt.startswith("what colour"):
        return Question("colour", row.prompt, shape=words[4])
    if row.prompt.startswith("how many"):
        return Question("count", row.prompt)
    return Question("position", row.prompt, quadrant=" ".join(words[4:6]))
