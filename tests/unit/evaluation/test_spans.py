"""The spans and verdicts every scorer records per answer: hand-worked cases, and on the reference
fixtures the invariant that a scorer's hallucinated spans are exactly the mentions it counts."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmpo.evaluation.amber import load_amber_associations, load_amber_safe_words, score_amber
from mmpo.evaluation.chair import (
    caption_objects,
    lisaanne_tables,
    load_generations,
    rlaifv_tables,
    score_chair,
    score_object_halbench,
)
from mmpo.evaluation.coco import load_coco_ground_truth
from mmpo.evaluation.mentions import find_mentions
from mmpo.evaluation.spans import VERDICTS, locate_tokens, make_span, missed, verdict_counts
from mmpo.evaluation.synthetic import answer_spans, attribute_errors, score_descriptions
from mmpo.toyworld.scenes import COLOURS, SHAPES, Scene, SceneObject, WorldConfig, sample_scenes

FIXTURES = Path(__file__).parents[2] / "fixtures" / "reference"


def _check_offsets(text: str, spans: list[dict]) -> None:
    for span in spans:
        assert span["verdict"] in VERDICTS
        if span["start"] is not None:
            assert text[span["start"]:span["end"]] == span["text"]


# ------------------------------------------------------------------------------------ helpers

def test_locate_tokens_places_each_token_after_the_last():
    text = 'A "Red" dog, a dog.'
    assert locate_tokens(text, ["a", "``", "red", "''", "dog", ",", "a", "dog", "."]) == [
        (0, 1), (2, 3), (3, 6), (6, 7), (8, 11), (11, 12), (13, 14), (15, 18), (18, 19)]
    assert locate_tokens("a cat", ["a", "n't", "cat"]) == [(0, 1), None, (2, 5)]     # not there: skipped
    assert locate_tokens("İs a cat", ["a", "cat"]) == [(3, 4), (5, 8)]             # offsets of the original


def test_make_span_and_missed():
    assert make_span("a red cat", 6, 9, "cat", "correct") == {
        "start": 6, "end": 9, "text": "cat", "category": "cat", "verdict": "correct"}
    assert make_span("x", None, None, "dog", "hallucinated", word="dogs")["text"] == "dogs"
    with pytest.raises(ValueError, match="verdict 'wrong'"):
        make_span("x", 0, 1, "x", "wrong")
    assert missed(["b", "a", "c", "a"], {"c"}) == ["a", "b"]


def test_find_mentions_gives_the_written_name():
    text = "Two Traffic  Lights and a circle."
    assert find_mentions(text, ["traffic light", "circle"]) == [("traffic light", 4, 19), ("circle", 26, 32)]
    assert text[4:19] == "Traffic  Lights"


# ---------------------------------------------------------------------------------- synthetic

SCENE = Scene("s", (SceneObject("circle", "red", "small", "top left", (0, 0, 1, 1)),
                    SceneObject("square", "blue", "large", "bottom right", (0, 0, 1, 1)),
                    SceneObject("star", "green", "small", "top right", (0, 0, 1, 1))))


def test_synthetic_spans_hand_worked():
    """circle: right colour -> correct; square said green (it is blue) -> wrong attribute, with the
    colour word; triangle is not in the scene -> hallucinated; star is never mentioned -> missed."""
    text = "A red circle is at the top left. A large green square. A triangle is here. Squares!"
    out = answer_spans(text, SCENE, SHAPES, COLOURS)
    _check_offsets(text, out["spans"])
    assert [(s["text"], s["verdict"]) for s in out["spans"]] == [
        ("circle", "correct"), ("square", "wrong_attribute"), ("triangle", "hallucinated"), ("Squares", "correct")]
    assert out["spans"][1]["attribute"] == {"start": 41, "end": 46, "text": "green", "said": "green",
                                            "true": ["blue"]}
    assert out["missed"] == ["star"]
    assert attribute_errors(text, SCENE, SHAPES, COLOURS) == (1, 2)


def test_score_descriptions_counts_are_the_spans_counts():
    scenes = sample_scenes(WorldConfig(seed=3), 30)
    rng_texts = [scenes[(i + 1) % 30].description() if i % 3 else s.description() for i, s in enumerate(scenes)]
    out = score_descriptions(rng_texts, scenes, shapes=SHAPES, colours=COLOURS)
    counts = verdict_counts(span for row in out["per_scene"] for span in row["spans"])
    n_mentions = sum(len(row["spans"]) for row in out["per_scene"])
    # chair_i counts each category once per response; with repeats the hallucinated share is the same
    # only per distinct category, so check against the distinct categories judged
    distinct_bad = sum(len({s["category"] for s in row["spans"] if s["verdict"] == "hallucinated"})
                       for row in out["per_scene"])
    distinct = sum(len({s["category"] for s in row["spans"]}) for row in out["per_scene"])
    assert out["chair_i"] == pytest.approx(distinct_bad / distinct)
    assert counts["wrong_attribute"] == out["n_wrong_attributes"] > 0
    assert counts["hallucinated"] > 0 and counts["correct"] > 0 and n_mentions == sum(counts.values())
    for row, scene in zip(out["per_scene"], scenes, strict=True):
        _check_offsets(row["response"], row["spans"])
        assert row["missed"] == sorted(set(scene.shapes) - set(row["mentioned"]))
    own = score_descriptions([s.description() for s in scenes], scenes, shapes=SHAPES, colours=COLOURS)
    assert all(s["verdict"] == "correct" for row in own["per_scene"] for s in row["spans"])
    assert all(row["missed"] == [] for row in own["per_scene"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(list("aeiou ., ") + ["red ", "circle", "squares ", "İ", "star."]),
                max_size=30).map("".join))
def test_synthetic_spans_always_index_the_text(text):
    out = answer_spans(text, SCENE, SHAPES, COLOURS)
    _check_offsets(text, out["spans"])
    wrong, _ = attribute_errors(text, SCENE, SHAPES, COLOURS)
    assert verdict_counts(out["spans"])["wrong_attribute"] == wrong


# ------------------------------------------------------------------------ CHAIR / Object HalBench

def test_reference_reading_spans_two_word_names():
    caption = "A man at the Coffee Table, with a toilet seat."
    read = caption_objects(caption, lisaanne_tables())
    assert [caption[a:b] for a, b in read["offsets"]] == ["man", "Table", "toilet seat"]
    assert [m["category"] for m in read["mentions"]] == ["person", "dining table", "toilet"]
    read = caption_objects(caption, rlaifv_tables())
    assert [caption[a:b] for a, b in read["offsets"]] == ["man", "Coffee Table", "toilet seat"]


@pytest.fixture(scope="module")
def coco():
    truth = load_coco_ground_truth(FIXTURES / "chair" / "annotations")
    return {parsing: {"chair": score_chair(load_generations(FIXTURES / "chair" / "generations_imgToEval.json"),
                                           truth, parsing),
                      "objhal": score_object_halbench(load_generations(FIXTURES / "chair" / "generations.jsonl"),
                                                      truth, parsing)}
            for parsing in ("reference", "lenient")}


@pytest.mark.parametrize("parsing", ["reference", "lenient"])
@pytest.mark.parametrize("scorer", ["chair", "objhal"])
def test_coco_spans_are_the_counted_mentions(coco, parsing, scorer):
    result = coco[parsing][scorer]
    rows = result["per_response"]
    counts = verdict_counts(s for row in rows for s in row["spans"])
    assert counts["hallucinated"] == result["counts"]["n_hallucinated_mentions"] > 0
    assert sum(counts.values()) == result["counts"]["n_mentions"]
    unlocated = 0
    for row in rows:
        _check_offsets(row["caption"], row["spans"])
        assert [s["category"] for s in row["spans"]] == [m["category"] for m in row["mentions"]]
        assert row["missed"] == sorted(set(row["gt_categories"]) - {m["category"] for m in row["mentions"]})
        unlocated += sum(s["start"] is None for s in row["spans"])
    assert unlocated == 0          # every mention of the fixture captions is placed in its text


# ------------------------------------------------------------------------------------------ AMBER

@pytest.fixture(scope="module")
def amber_data():
    gold = FIXTURES / "amber"
    annotations = json.loads(gzip.decompress((gold / "annotations.json.gz").read_bytes()))
    responses = json.loads(gzip.decompress((gold / "responses_messy.json.gz").read_bytes()))
    return ({int(a["id"]): a for a in annotations}, load_amber_associations(gold / "relation.json"),
            load_amber_safe_words(gold / "safe_words.txt"), responses)


@pytest.mark.parametrize("parsing", ["reference", "lenient"])
def test_amber_spans_are_the_counted_nouns(amber_data, parsing):
    annotations, associations, safe_words, responses = amber_data
    generative = [r for r in responses if annotations[int(r["id"])]["type"] == "generative"][:150]
    result = score_amber(generative, annotations, associations=associations, safe_words=safe_words,
                         parsing=parsing)
    rows = result["per_response"]
    counts = verdict_counts(s for row in rows for s in row["spans"])
    deltas = [row["counter_deltas"] for row in rows]
    assert counts["hallucinated"] == sum(d.get("chair_score", 0) for d in deltas) > 0
    assert sum(counts.values()) == sum(d.get("chair_num", 0) for d in deltas)
    for row in rows:
        _check_offsets(row["response"], row["spans"])
        assert row["missed"] == sorted(set(annotations[row["id"]]["truth"]) - set(row["covered_truth"]))


def test_amber_nouns_from_the_caller_are_unlocated(amber_data):
    annotations, associations, safe_words, responses = amber_data
    row = next(r for r in responses if annotations[int(r["id"])]["type"] == "generative")
    truth = annotations[int(row["id"])]["truth"]
    out = score_amber([row], annotations, associations=associations, safe_words=safe_words,
                      nouns={int(row["id"]): [truth[0], "unicorn-not-a-word"]})
    spans = out["per_response"][0]["spans"]
    assert [(s["start"], s["text"], s["verdict"]) for s in spans] == [(None, truth[0], "correct")]
