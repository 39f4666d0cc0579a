"""CHAIR mention extraction and scores, checked against values worked out by hand."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmpo.evaluation.chair import chair_scores, extract_mentions, singular_forms
from mmpo.toyworld.scenes import SHAPES


def test_extract_mentions_in_order_with_repeats():
    text = "a small red circle is at the top left . a large blue square is at the bottom right . a circle ."
    assert extract_mentions(text, SHAPES) == ["circle", "square", "circle"]


@pytest.mark.parametrize(("text", "expected"), [
    ("two Circles and three crosses.", ["circle", "cross"]),
    ("Stars, DIAMONDS and triangles", ["star", "diamond", "triangle"]),
    ("a cross", ["cross"]),                      # "cross" ends in s but is not a plural
    ("a starfish, crossing squared", []),        # whole words only, no prefix matches
    ("circle-square/star", ["circle", "square", "star"]),
    ("", []),
])
def test_extract_mentions_words_and_plurals(text, expected):
    assert extract_mentions(text, SHAPES) == expected


def test_singular_forms_are_only_candidates():
    assert singular_forms("circles") == ["circles", "circle"]
    assert "cross" in singular_forms("crosses")
    assert singular_forms("cross") == ["cross"]
    assert "berry" in singular_forms("berries")


def test_multi_word_names_take_the_longest_match():
    """COCO-style names: "traffic light" beats "light"; the last word may be plural."""
    vocabulary = ["traffic light", "light", "dining table", "table"]
    text = "Two traffic lights, a light and a dining table next to a table."
    assert extract_mentions(text, vocabulary) == ["traffic light", "light", "dining table", "table"]


def test_synonyms_map_to_their_category():
    synonyms = {"ball": "circle", "plus sign": "cross", "box": "square"}
    text = "a ball, two plus signs and three boxes and a circle"
    assert extract_mentions(text, SHAPES, synonyms) == ["circle", "cross", "square", "circle"]


def test_synonym_outside_vocabulary_is_rejected():
    with pytest.raises(ValueError, match="not in the vocabulary"):
        extract_mentions("a ball", SHAPES, {"ball": "sphere"})


def test_chair_scores_hand_computed():
    """Three responses (M = distinct mentions, T = truth, H = M - T):

        r1 mentions [circle, square]                 T = {circle, square}            H = {}
        r2 mentions [star, circle, star, cross]      T = {circle}                    H = {star, cross}
        r3 mentions [triangle, diamond]              T = {triangle, diamond, square} H = {}

    Distinct mentions 2 + 3 + 2 = 7, hallucinated 0 + 2 + 0 = 2  ->  chair_i = 2/7
    (counting the repeated "star" would wrongly give 3/8).
    Responses with a hallucination: r2 only                        ->  chair_s = 1/3
    True categories 2 + 1 + 3 = 6, of which mentioned 2 + 1 + 2 = 5 ->  coverage = 5/6
    mentions_per_response = 7/3.
    """
    responses = [
        "a small red circle is at the top left . a large blue square is at the bottom right .",
        "two stars and a circle . the star is orange . a cross is at the top .",
        "a green triangle and a green diamond .",
    ]
    mentions = [extract_mentions(r, SHAPES) for r in responses]
    assert mentions[1] == ["star", "circle", "star", "cross"]
    scores = chair_scores(mentions, [{"circle", "square"}, {"circle"}, {"triangle", "diamond", "square"}])
    assert scores["chair_i"] == pytest.approx(2 / 7)
    assert scores["chair_s"] == pytest.approx(1 / 3)
    assert scores["coverage"] == pytest.approx(5 / 6)
    assert scores["mentions_per_response"] == pytest.approx(7 / 3)
    assert (scores["n_responses"], scores["n_mentions"], scores["n_hallucinated"]) == (3, 7, 2)


def test_chair_scores_empty_denominators_are_zero():
    """No responses; no mentions at all; no true categories: every undefined ratio is 0.0."""
    empty = chair_scores([], [])
    assert empty == {"chair_i": 0.0, "chair_s": 0.0, "coverage": 0.0, "mentions_per_response": 0.0,
                     "n_responses": 0, "n_mentions": 0, "n_hallucinated": 0}
    silent = chair_scores([[], []], [{"circle"}, {"star"}])      # mentions nothing: chair_i 0/0
    assert silent["chair_i"] == 0.0 and silent["coverage"] == 0.0 and silent["chair_s"] == 0.0
    blank = chair_scores([["circle"]], [set()])                  # empty image: coverage 0/0
    assert blank["coverage"] == 0.0 and blank["chair_i"] == 1.0 and blank["chair_s"] == 1.0


def test_chair_scores_length_mismatch():
    with pytest.raises(ValueError):
        chair_scores([["circle"]], [])


@given(st.lists(st.tuples(st.lists(st.sampled_from(SHAPES), max_size=6),
                          st.frozensets(st.sampled_from(SHAPES), max_size=4)), max_size=8))
def test_chair_scores_bounds_and_duplicate_invariance(pairs):
    mentions = [m for m, _ in pairs]
    truths = [t for _, t in pairs]
    scores = chair_scores(mentions, truths)
    assert all(0.0 <= scores[k] <= 1.0 for k in ("chair_i", "chair_s", "coverage"))
    assert chair_scores([m + m for m in mentions], truths) == scores
