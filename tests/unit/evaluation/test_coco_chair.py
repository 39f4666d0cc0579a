"""CHAIR / Object HalBench on COCO-style files: the synonym table, the file loaders, hand-computed
scores (including Object HalBench's two denominators) and an oracle run on the synthetic world."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

import mmpo.evaluation.generation as generation
from mmpo.evaluation.chair import tokenize
from mmpo.evaluation.coco_chair import (
    COCO_CATEGORIES,
    COCO_SYNONYMS,
    coco_name_table,
    extract_object_words,
    load_chair_questions,
    load_coco_ground_truth,
    load_generations,
    open_image_field,
    run_chair,
    score_chair,
)
from mmpo.toyworld.benchmarks import write_toy_benchmarks
from mmpo.toyworld.scenes import DESCRIBE_PROMPT, WorldConfig, sample_scenes


def test_synonym_table_is_consistent():
    """80 distinct categories; every synonym names one of them; no synonym shadows a category."""
    assert len(COCO_CATEGORIES) == 80 == len(set(COCO_CATEGORIES))
    assert set(COCO_SYNONYMS.values()) <= set(COCO_CATEGORIES)
    assert not set(COCO_SYNONYMS) & set(COCO_CATEGORIES)
    assert all(tokenize(name) for name in COCO_SYNONYMS)
    # only synonyms of categories present in the file survive
    assert coco_name_table(["dog"], non_object_phrases=()) == {"dog": "dog", "puppy": "dog", "pup": "dog",
                                                               "doggy": "dog", "hound": "dog",
                                                               "baby dog": "dog", "adult dog": "dog"}


@pytest.mark.parametrize(("text", "expected"), [
    ("A man and two women at a dining table.", [("man", "person"), ("women", "person"),
                                                ("dining table", "dining table")]),
    ("hot dogs, a cell phone and traffic lights", [("hot dog", "hot dog"), ("cell phone", "cell phone"),
                                                   ("traffic light", "traffic light")]),
    ("a teddy bear beside a bear", [("teddy bear", "teddy bear"), ("bear", "bear")]),
    ("knives, mice and people", [("knives", "knife"), ("mice", "mouse"), ("people", "person")]),
    ("a baby elephant", [("baby elephant", "elephant")]),       # not a person
    ("the train tracks near a bus stop", []),                    # no train, no bus
    ("a bike, a sofa and a fridge", [("bike", "bicycle"), ("sofa", "couch"), ("fridge", "refrigerator")]),
])
def test_extract_object_words(text, expected):
    assert extract_object_words(text, coco_name_table()) == expected


def write_coco(tmp_path):
    """Three images: 1 = {person, dog}, 2 = {cat} (+ couch from its caption), 3 = {car}."""
    categories = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 17, "name": "cat"},
                  {"id": 3, "name": "car"}, {"id": 63, "name": "couch"}, {"id": 2, "name": "bicycle"}]
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in (1, 2, 3)]
    annotations = [{"id": k, "image_id": i, "category_id": c}
                   for k, (i, c) in enumerate([(1, 1), (1, 1), (1, 18), (2, 17), (3, 3)])]
    instances = tmp_path / "instances_val2014.json"
    instances.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    captions = tmp_path / "captions_val2014.json"
    captions.write_text(json.dumps({"images": images, "annotations": [
        {"id": 1, "image_id": 2, "caption": "A cat asleep on a couch."},
        {"id": 2, "image_id": 99, "caption": "A dog."},            # not an image of the instances file
    ]}))
    return instances, captions


def test_load_ground_truth_merges_instances_and_captions(tmp_path):
    instances, captions = write_coco(tmp_path)
    truth = load_coco_ground_truth(instances, captions)
    assert truth.objects == {1: {"person", "dog"}, 2: {"cat", "couch"}, 3: {"car"}}
    assert truth.categories == ("person", "bicycle", "car", "cat", "dog", "couch")   # category-id order
    assert truth.image_id(2) == truth.image_id("2") == truth.image_id("COCO_val2014_000000000002.jpg") == 2
    with pytest.raises(KeyError):
        truth.image_id(7)
    assert load_coco_ground_truth(instances).objects[2] == {"cat"}                    # captions optional


def test_load_generations_formats(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"image_id": 1, "caption": "a dog"}\n\n{"image_id": "2", "question": "q", "text": "x"}\n')
    as_list = tmp_path / "b.json"
    as_list.write_text(json.dumps([{"image_id": 1, "response": "a dog"}]))
    chair_style = tmp_path / "c.json"
    chair_style.write_text(json.dumps({"overall": {}, "imgToEval": {"1": {"image_id": 1, "caption": "a dog"}}}))
    assert load_generations(jsonl) == [{"image_id": 1, "question": None, "response": "a dog"},
                                       {"image_id": "2", "question": "q", "response": "x"}]
    assert load_generations(as_list)[0]["response"] == load_generations(chair_style)[0]["response"] == "a dog"
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"image_id": 1}\n')
    with pytest.raises(ValueError):
        load_generations(bad)


def test_scores_hand_computed(tmp_path):
    """Truth: image 1 {person, dog}, image 2 {cat, couch (from its caption)}, image 3 {car}.

    r1 (image 1) "A man and a woman walk a dog past a bicycle."
        words man, woman -> person; dog; bicycle.   categories {person, dog, bicycle}, bicycle hallucinated
    r2 (image 2) "A cat sleeps on a sofa."          categories {cat, couch}, none hallucinated
    r3 (image 3) "An empty street at night."        no object mentioned
    r4 (image 1) "Two dogs and a cat. The dog is happy."
        words dog (twice: counted once), cat.        categories {dog, cat}, cat hallucinated

    CHAIR (categories once per response):
        chair_i  = (1 + 0 + 0 + 1) / (3 + 2 + 0 + 2)   = 2/7
        chair_s  = 2 hallucinating responses / 4       = 1/2
        coverage = (2 + 2 + 0 + 1) / (2 + 2 + 1 + 2)   = 5/7
    Object HalBench (the traps):
        response level, RLAIF-V's denominator = responses with >= 1 mention (r1, r2, r4):
            hallucination rate 2/3, non-hallucination rate 1/3
        over *all* responses: non-hallucination rate = 2/4 = 1 - chair_s
        mention level counts distinct *words*: r1 has 4 (man, woman, dog, bicycle), r2 2, r4 2:
            hallucination rate = 2/8 = 1/4 (not chair_i = 2/7), non-hallucination rate 3/4
    """
    instances, captions = write_coco(tmp_path)
    truth = load_coco_ground_truth(instances, captions)
    generations = [
        {"image_id": 1, "caption": "A man and a woman walk a dog past a bicycle."},
        {"image_id": "COCO_val2014_000000000002.jpg", "response": "A cat sleeps on a sofa."},
        {"image_id": 3, "text": "An empty street at night."},
        {"image_id": "1", "answer": "Two dogs and a cat. The dog is happy."},
    ]
    s = score_chair(generations, truth)
    assert s["chair_i"] == pytest.approx(2 / 7)
    assert s["chair_s"] == pytest.approx(1 / 2)
    assert s["coverage"] == pytest.approx(5 / 7)
    assert s["mentions_per_response"] == pytest.approx(7 / 4)
    assert (s["n_responses"], s["n_mentions"], s["n_hallucinated"]) == (4, 7, 2)
    assert s["object_halbench/response_hallucination_rate"] == pytest.approx(2 / 3)
    assert s["object_halbench/response_non_hallucination_rate"] == pytest.approx(1 / 3)
    assert s["object_halbench/response_non_hallucination_rate_all"] == pytest.approx(1 - s["chair_s"])
    assert s["object_halbench/mention_hallucination_rate"] == pytest.approx(1 / 4)
    assert s["object_halbench/mention_non_hallucination_rate"] == pytest.approx(3 / 4)
    assert (s["object_halbench/n_responses_with_mentions"], s["object_halbench/n_object_words"],
            s["object_halbench/n_hallucinated_words"]) == (3, 8, 2)
    assert s["per_response"][0] == {"image_id": 1, "mentioned": ["bicycle", "dog", "person"],
                                    "hallucinated": ["bicycle"]}
    assert "mentioning >= 1 object" in s["definitions"]["object_halbench/response_hallucination_rate"]


def test_no_responses_and_no_mentions_give_zero(tmp_path):
    truth = load_coco_ground_truth(write_coco(tmp_path)[0])
    empty = score_chair([], truth)
    silent = score_chair([{"image_id": 3, "caption": "nothing here"}], truth)
    assert empty["chair_i"] == empty["object_halbench/response_non_hallucination_rate"] == 0.0
    assert silent["object_halbench/response_non_hallucination_rate"] == 0.0      # 0 / 0 responses with mentions
    assert silent["object_halbench/response_non_hallucination_rate_all"] == 1.0


def test_open_image_field_path_or_base64(tmp_path):
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "a.png")
    buffer = io.BytesIO()
    Image.new("RGB", (3, 2), (0, 255, 0)).save(buffer, format="PNG")
    assert open_image_field("a.png", tmp_path) == tmp_path / "a.png"
    assert open_image_field(base64.b64encode(buffer.getvalue()).decode(), tmp_path).size == (3, 2)
    with pytest.raises(FileNotFoundError):
        open_image_field("missing.png", tmp_path)


def test_run_chair_oracle_on_the_synthetic_world(tmp_path, monkeypatch):
    """An oracle that describes each rendered scene exactly scores CHAIR 0 and coverage 1 through
    the COCO-format files the synthetic world writes (shapes as COCO categories)."""
    scenes = sample_scenes(WorldConfig(seed=4).held_out(), 5, prefix="c")
    files = write_toy_benchmarks(tmp_path, scenes)
    by_name = {f"{s.id}.png": s for s in scenes}
    asked = []

    def oracle(model, processor, images, prompts, **kwargs):
        asked.extend(prompts)
        return [by_name[path.name].description() for path in images]

    monkeypatch.setattr(generation, "generate_responses", oracle)
    for questions in (None, files.chair_questions):
        asked.clear()
        result = run_chair(None, None, files.instances, files.images, captions=files.captions,
                           questions=questions, prompt=DESCRIBE_PROMPT, limit=4)
        assert result["n_responses"] == 4 and asked == [DESCRIBE_PROMPT] * 4
        assert result["chair_i"] == result["chair_s"] == 0.0 and result["coverage"] == 1.0
        assert result["object_halbench/mention_non_hallucination_rate"] == 1.0
        assert [p["caption"] for p in result["predictions"]] == [s.description() for s in scenes[:4]]
    assert len(load_chair_questions(files.chair_questions)) == 5
