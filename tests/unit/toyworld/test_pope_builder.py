"""The synthetic world's POPE questions (three negative splits), worked by hand."""

from __future__ import annotations

import pytest

from mmpo.toyworld.pope import (
    build_pope_questions,
    category_frequencies,
    cooccurrence_counts,
    pope_question,
)
from mmpo.toyworld.scenes import QUADRANTS, SHAPES, Scene, SceneObject, WorldConfig, sample_scenes


def scene(scene_id: str, *shapes: str) -> Scene:
    """A scene holding ``shapes`` (only the categories matter here)."""
    objects = (SceneObject(s, "red", "small", q, (0, 0, 1, 1)) for s, q in zip(shapes, QUADRANTS, strict=False))
    return Scene(scene_id, tuple(objects))


def negatives(questions, scene_id):
    return [q.category for q in questions if q.scene_id == scene_id and q.label == "no"]


def test_question_text_matches_world_style():
    assert pope_question("circle") == "is there a circle in the image ?"
    assert pope_question("apple") == "is there an apple in the image ?"


@pytest.mark.parametrize("split", ["random", "popular", "adversarial"])
def test_positives_and_balanced_negatives(split):
    scenes = sample_scenes(WorldConfig(seed=3), 20)
    questions = build_pope_questions(scenes, split, seed=1)
    for s in scenes:
        mine = [q for q in questions if q.scene_id == s.id]
        yes = {q.category for q in mine if q.label == "yes"}
        no = [q.category for q in mine if q.label == "no"]
        assert yes == s.shapes                                   # every present category, once
        assert len(no) == len(set(no)) == min(len(yes), len(SHAPES) - len(yes))
        assert not set(no) & s.shapes                            # negatives are absent
        assert all(q.question == pope_question(q.category) for q in mine)


def test_random_split_is_seeded_and_uniform_over_absent():
    scenes = [scene(f"s{i}", "circle") for i in range(300)]
    a = build_pope_questions(scenes, "random", seed=0)
    assert a == build_pope_questions(scenes, "random", seed=0)
    assert a != build_pope_questions(scenes, "random", seed=1)
    picked = [q.category for q in a if q.label == "no"]
    assert set(picked) == set(SHAPES) - {"circle"}             # all 5 absent shapes get drawn
    assert max(picked.count(c) for c in set(picked)) < 100      # ~60 each, none dominates


def test_popular_split_picks_most_frequent_absent():
    """Frequencies over the 4 scenes: square 3, circle 1, star 1, triangle 1, diamond 0, cross 0.

    s1 {circle}        -> 1 negative: square (3).
    s2 {square, star}  -> 2 negatives: circle (1) and triangle (1); the tie goes to SHAPES order.
    A given table {cross: 10, diamond: 5} overrides: s1 -> cross.
    """
    scenes = [scene("s1", "circle"), scene("s2", "square", "star"), scene("s3", "square", "triangle"),
              scene("s4", "square")]
    assert category_frequencies(scenes)["square"] == 3
    questions = build_pope_questions(scenes, "popular")
    assert negatives(questions, "s1") == ["square"]
    assert negatives(questions, "s2") == ["circle", "triangle"]
    given = build_pope_questions(scenes, "popular", frequency={"cross": 10, "diamond": 5})
    assert negatives(given, "s1") == ["cross"]
    assert negatives(given, "s2") == ["cross", "diamond"]


def test_adversarial_split_picks_top_cooccurring_absent():
    """Training scenes: {circle, star} x3, {square, cross} x2, {circle, triangle} x1, so
    co-occurrence counts are circle-star 3, square-cross 2, circle-triangle 1.

    Eval {circle}           -> scores star 3, triangle 1, others 0 -> 1 negative: star.
    Eval {square, triangle} -> cross 2 (with square) + circle 1 (with triangle) -> [cross, circle].
    Frequencies alone (popular) would pick circle (4) for the second scene first.
    """
    train = ([scene(f"a{i}", "circle", "star") for i in range(3)]
             + [scene(f"b{i}", "square", "cross") for i in range(2)] + [scene("c", "circle", "triangle")])
    table = cooccurrence_counts(train)
    assert table["circle"]["star"] == table["star"]["circle"] == 3 and table["circle"]["circle"] == 0
    evaluated = [scene("e1", "circle"), scene("e2", "square", "triangle")]
    questions = build_pope_questions(evaluated, "adversarial", cooccurrence=table)
    assert negatives(questions, "e1") == ["star"]
    assert negatives(questions, "e2") == ["cross", "circle"]
    more = build_pope_questions(evaluated, "adversarial", n_negatives_per_scene=2, cooccurrence=table)
    assert negatives(more, "e1") == ["star", "triangle"]


def test_adversarial_without_table_uses_the_scenes_themselves():
    scenes = [scene("s1", "circle", "star"), scene("s2", "circle", "star"), scene("s3", "circle")]
    assert negatives(build_pope_questions(scenes, "adversarial"), "s3") == ["star"]


def test_negatives_capped_by_absent_categories():
    full = scene("s", "circle", "square", "triangle", "star")
    questions = build_pope_questions([full], "random", n_negatives_per_scene=10)
    assert sorted(negatives(questions, "s")) == ["cross", "diamond"]
    assert negatives(build_pope_questions([full], "random", n_negatives_per_scene=0), "s") == []


def test_bad_split_and_unknown_category():
    with pytest.raises(ValueError, match="split"):
        build_pope_questions([scene("s", "circle")], "hard")
    with pytest.raises(ValueError, match="vocabulary"):
        build_pope_questions([scene("s", "circle")], vocabulary=("square",))
