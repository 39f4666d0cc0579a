"""CHAIR and Object HalBench: golden reference outputs (LisaAnne + Maxlinn Recall, RLAIF-V text path),
hand-computed values, the loaders, the lenient reading, and the synthetic-world helpers."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import mmpo.generation as generation
from mmpo.evaluation import chair
from mmpo.evaluation.chair import (
    COCO_CATEGORIES,
    COCO_SYNONYMS,
    caption_objects,
    coco_name_table,
    extract_object_words,
    lisaanne_tables,
    load_chair_questions,
    load_generations,
    merge_two_words,
    open_image_field,
    rlaifv_tables,
    run_chair,
    score_chair,
    score_object_halbench,
)
from mmpo.evaluation.coco import CocoGroundTruth, load_coco_ground_truth
from mmpo.evaluation.mentions import chair_scores, extract_mentions, singular_forms, tokenize
from mmpo.toyworld.benchmark_files import write_toy_benchmarks
from mmpo.toyworld.scenes import DESCRIBE_PROMPT, SHAPES, WorldConfig, sample_scenes

FIXTURES = Path(__file__).parents[2] / "fixtures" / "reference" / "chair"
PARTS = {"with_captions": "annotations", "instances_only": "annotations_instances_only"}
AGGREGATES = json.loads((FIXTURES / "aggregates.json").read_text())


def _jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module", params=list(PARTS))
def scored(request):
    """Both scorers on one ground-truth variant, inputs read through the public loaders."""
    part = request.param
    truth = load_coco_ground_truth(FIXTURES / PARTS[part])
    return {
        "part": part,
        "truth": truth,
        "chair": score_chair(load_generations(FIXTURES / "generations_imgToEval.json"), truth),
        "objhal": score_object_halbench(load_generations(FIXTURES / "generations.jsonl"), truth),
    }


def _assert_same(ours, reference, where):
    """Equal, floats within 1e-9 (recursing into dicts and lists)."""
    if isinstance(reference, float) and not isinstance(ours, bool):
        assert ours == pytest.approx(reference, abs=1e-9), where
    elif isinstance(reference, dict):
        assert isinstance(ours, dict) and set(ours) >= set(reference), where
        for key, value in reference.items():
            _assert_same(ours[key], value, f"{where}.{key}")
    elif isinstance(reference, list):
        assert isinstance(ours, list) and len(ours) == len(reference), where
        for i, (a, b) in enumerate(zip(ours, reference, strict=True)):
            _assert_same(a, b, f"{where}[{i}]")
    else:
        assert ours == reference and type(ours) is type(reference), where


# ------------------------------------------------------------------------------- golden: tables

def test_constructed_tables_equal_the_references():
    tables = json.loads((FIXTURES / "reference_tables.json").read_text())
    assert lisaanne_tables().two_word_table == tables["lisaanne"]["two_word_table"]
    assert lisaanne_tables().vocabulary == tables["lisaanne"]["vocabulary"]
    assert rlaifv_tables().two_word_table == tables["rlaifv"]["two_word_table"]
    assert rlaifv_tables().vocabulary == tables["rlaifv"]["vocabulary"]


def test_shipped_synonym_files_are_the_reference_files():
    for name in ("synonyms_lisaanne.txt", "synonyms_rlaifv_refine.txt"):
        assert (chair.DATA / name).read_bytes() == (FIXTURES / name).read_bytes()


def test_table_quirks():
    """LisaAnne keeps two entries with a leading space; RLAIF-V strips and adds four entries."""
    lisa, rlaifv = lisaanne_tables().vocabulary, rlaifv_tables().vocabulary
    assert lisa[" motor bike"] == "motorcycle" and "motor bike" not in lisa
    assert lisa[" cheesecake"] == "cake" and "cheesecake" not in lisa
    assert rlaifv["motor bike"] == "motorcycle" and rlaifv["cheesecake"] == "cake"
    assert {k: rlaifv[k] for k in ("brother", "pedestrian", "coffee table", "remote control")} == {
        "brother": "person", "pedestrian": "person", "coffee table": "dining table", "remote control": "remote"}
    assert not {"brother", "pedestrian", "coffee table", "remote control"} & set(lisa)
    assert lisaanne_tables().two_word_table["wine glas"] == "wine glass"
    assert "coffee table" in rlaifv_tables().two_word_table and "dining table" not in lisaanne_tables().two_word_table


# --------------------------------------------------------------------------- golden: per caption

CHAIR_FIELDS = ("image_id", "caption", "tokens", "singular", "merged", "mentions", "gt_categories", "hallucinated",
                "hallucinated_categories", "chair_s", "chair_i", "recall", "covered_gt_categories",
                "gt_from_instances", "gt_reference_captions")
OBJHAL_FIELDS = ("image_id", "question", "caption", "tokens", "lemmas", "merged", "mentions", "gt_categories",
                 "hallucinated", "hallucinated_categories", "chair_s", "chair_i", "has_mentions",
                 "correct_categories", "n_words", "gpt_path_short_answer")


def test_chair_every_per_caption_field(scored):
    reference = _jsonl(f"chair_per_caption.{scored['part']}.jsonl")
    ours = scored["chair"]["per_response"]
    assert len(ours) == len(reference) == 167
    for mine, ref in zip(ours, reference, strict=True):
        for key in CHAIR_FIELDS:
            if key in ref:
                _assert_same(mine[key], ref[key], f"{ref['image_id']}.{key}")
    if scored["part"] == "with_captions":       # the reference captions' extractions are checked too
        assert sum(len(r["gt_reference_captions"]) for r in reference) > 0


def test_objhal_every_per_caption_field(scored):
    reference = _jsonl(f"objhal_per_caption.{scored['part']}.jsonl")
    ours = scored["objhal"]["per_response"]
    assert len(ours) == len(reference) == 167
    for mine, ref in zip(ours, reference, strict=True):
        for key in OBJHAL_FIELDS:
            _assert_same(mine[key], ref[key], f"{ref['image_id']}.{key}")


# ---------------------------------------------------------------------------- golden: aggregates

def test_chair_aggregates(scored):
    reference = AGGREGATES[scored["part"]]
    result = scored["chair"]
    _assert_same({k: result[k] for k in reference["chair"]}, reference["chair"], "chair")
    assert result["printed"] == reference["chair"]["printed"]
    _assert_same({k: result[k] for k in reference["maxlinn"]}, reference["maxlinn"], "maxlinn")
    assert result["parsing"] == "reference" and result["images_without_ground_truth"] == []


def test_objhal_aggregates(scored):
    reference = AGGREGATES[scored["part"]]["object_halbench"]
    result = scored["objhal"]
    _assert_same({k: result[k] for k in reference}, reference, "object_halbench")
    assert result["printed"] == reference["printed"]
    assert result["summary_printed"] == reference["summary_printed"]
    assert result["response_hallucination_rate"] == result["CHAIRs_refine"]
    assert result["response_correct_rate"] == result["correct_rate"]
    assert result["mention_hallucination_rate"] == result["CHAIRi"]
    assert result["object_recall"] == result["obj_rec"]


def test_instances_only_is_captions_left_out():
    """The with-captions folder read with ``captions=()`` gives the instances-only numbers."""
    truth = load_coco_ground_truth(FIXTURES / "annotations", captions=())
    result = score_chair(load_generations(FIXTURES / "generations_imgToEval.json"), truth)
    assert result["counts"] == AGGREGATES["instances_only"]["chair"]["counts"]
    files = load_coco_ground_truth([FIXTURES / "annotations" / "instances_val2014.json",
                                    FIXTURES / "annotations" / "instances_train2014.json"],
                                   [FIXTURES / "annotations" / "captions_val2014.json"])
    again = score_chair(load_generations(FIXTURES / "generations_imgToEval.json"), files)
    assert again["counts"] == AGGREGATES["with_captions"]["chair"]["counts"]


def test_run_chair_reproduces_the_references(tmp_path, monkeypatch):
    """Generation replaced by the golden captions: both scorers' numbers come out unchanged."""
    truth = load_coco_ground_truth(FIXTURES / "annotations")
    captions = {row["image_id"]: row["text"] for row in _jsonl("generations.jsonl")}
    for name in truth.file_names.values():
        (tmp_path / name).write_bytes(b"")
    by_name = {name: captions[i] for i, name in truth.file_names.items()}
    monkeypatch.setattr(generation, "generate_responses",
                        lambda model, processor, images, prompts, **kw: [by_name[p.name] for p in images])
    result = run_chair(None, None, truth, tmp_path)
    assert result["chair"]["CHAIRs"] == AGGREGATES["with_captions"]["chair"]["CHAIRs"]
    assert result["chair"]["Recall"] == AGGREGATES["with_captions"]["chair"]["Recall"]
    assert result["object_halbench"]["CHAIRs_refine"] == AGGREGATES["with_captions"]["object_halbench"]["CHAIRs_refine"]
    assert len(result["predictions"]) == 167


# ------------------------------------------------------------------------ reading, hand-checked

@pytest.mark.parametrize(("caption", "merged", "mentions"), [
    ("A motor bike and a cheesecake.", ["a", "motor bike", "and", "a", "cheesecake", "."], []),
    ("Two buses and a bus.", ["two", "bus", "and", "a", "bu", "."], [("bus", "bus")]),
    ("The train tracks.", ["the", "train track", "."], []),
    ("Men, people and a baby.", ["man", ",", "person", "and", "a", "baby", "."],
     [("man", "person"), ("person", "person"), ("baby", "person")]),
    ("A baby elephant and wine glasses.", ["a", "elephant", "and", "wine glass", "."],
     [("elephant", "elephant"), ("wine glass", "wine glass")]),
    ("A sports ball and a tennis racket.", ["a", "sport", "ball", "and", "a", "tenni", "racket", "."],
     [("ball", "sports ball"), ("racket", "tennis racket")]),
    ("A toilet seat. The seat of a toilet.", ["a", "toilet", ".", "the", "seat", "of", "a", "toilet", "."],
     [("toilet", "toilet"), ("toilet", "toilet")]),
])
def test_lisaanne_reading(caption, merged, mentions):
    read = caption_objects(caption, lisaanne_tables())
    assert read["merged"] == merged
    assert [(m["word"], m["category"]) for m in read["mentions"]] == mentions


@pytest.mark.parametrize(("caption", "mentions"), [
    ("A motor bike and a cheesecake.", [("motor bike", "motorcycle"), ("cheesecake", "cake")]),
    ("Two buses and a bus.", [("bus", "bus"), ("bus", "bus")]),
    ("Men and women with vases.", [("woman", "person")]),        # men stays men, vases -> vas
    ("A tennis racket and a sports ball.", [("tennis racket", "tennis racket"), ("ball", "sports ball")]),
    ("A brother on a coffee table with a remote control.", [("brother", "person"),
                                                           ("coffee table", "dining table"),
                                                           ("remote control", "remote")]),
])
def test_rlaifv_reading(caption, mentions):
    assert [(m["word"], m["category"]) for m in caption_objects(caption, rlaifv_tables())["mentions"]] == mentions


def test_merge_two_words_left_to_right():
    table = {"a b": "ab", "b c": "bc"}
    assert merge_two_words(["a", "b", "c"], table) == ["ab", "c"]
    assert merge_two_words(["x", "b", "c"], table) == ["x", "bc"]
    assert merge_two_words([], table) == []


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
        {"id": 2, "image_id": 99, "caption": "A dog."},            # not an image with a response
    ]}))
    return instances, captions


GENERATIONS = [
    {"image_id": 1, "caption": "A man and a woman walk a dog past a bicycle."},
    {"image_id": "COCO_val2014_000000000002.jpg", "response": "A cat sleeps on a sofa."},
    {"image_id": 3, "text": "An empty street at night."},
    {"image_id": "1", "answer": "Assistant: Two dogs and a cat. The dog is happy."},
]


def test_reference_scores_hand_computed(tmp_path):
    """Truth: image 1 {person, dog}, image 2 {cat, couch (from its caption)}, image 3 {car}.

    r1 "A man and a woman walk a dog past a bicycle."  mentions person, person, dog, bicycle (1 bad)
    r2 "A cat sleeps on a sofa."                        mentions cat, couch                   (0 bad)
    r3 "An empty street at night."                      no mention
    r4 "Two dogs and a cat. The dog is happy."          mentions dog, cat, dog                (1 bad)

    Every mention counts: CHAIRi = 2 / (4 + 2 + 0 + 3) = 2/9; CHAIRs = 2/4.
    Recall: covered {person, dog}, {cat, couch}, {}, {dog} over |G| 2, 2, 1, 2 -> 5/7.
    Object HalBench: 3 captions with mentions -> CHAIRs_refine = 2/3, correct_rate = 1/3; words per
    caption 11, 6, 5, 9 (after "Assistant:" is removed) -> avg_word_len 31/4.
    """
    instances, captions = write_coco(tmp_path)
    truth = load_coco_ground_truth(instances, captions)
    c = score_chair(GENERATIONS, truth)
    assert (c["CHAIRi"], c["CHAIRs"], c["Recall"]) == (pytest.approx(2 / 9), 0.5, pytest.approx(5 / 7))
    assert c["counts"] == {"n_captions": 4, "n_hallucinated_captions": 2, "n_mentions": 9,
                           "n_hallucinated_mentions": 2, "n_gt_categories": 7, "n_covered_gt_categories": 5}
    assert c["printed"] == "0.0\t0.0\t0.0\t50.0\t22.2"
    assert c["per_response"][1]["gt_reference_captions"] == [{"caption": "A cat asleep on a couch.",
                                                              "categories": ["cat", "couch"]}]
    o = score_object_halbench(GENERATIONS, truth)
    assert o["response_hallucination_rate"] == pytest.approx(2 / 3)
    assert o["response_correct_rate"] == pytest.approx(1 / 3)
    assert o["mention_hallucination_rate"] == pytest.approx(2 / 9)
    assert o["object_recall"] == pytest.approx(5 / 7) and o["CHAIRs"] == 0.5
    assert o["avg_word_len"] == 31 / 4 and o["coco_sentence_num"] == 3
    assert o["per_response"][3]["caption"] == "Two dogs and a cat. The dog is happy."


def test_lenient_scores_hand_computed(tmp_path):
    """The lenient reading de-duplicates per caption (same data as above).

    CHAIR counts categories once: r1 {person, dog, bicycle}, r2 {cat, couch}, r4 {dog, cat}
        CHAIRi = (1 + 0 + 0 + 1) / (3 + 2 + 0 + 2) = 2/7, CHAIRs = 1/2, Recall = 5/7.
    Object HalBench counts distinct (word, category): r1 man, woman, dog, bicycle; r2 cat, sofa;
    r4 dogs->dog, cat (the second "dog" is a repeat): mention rate 2/8 = 1/4; response rate 2/3.
    """
    instances, captions = write_coco(tmp_path)
    truth = load_coco_ground_truth(instances, captions)
    c = score_chair(GENERATIONS, truth, parsing="lenient")
    assert (c["CHAIRi"], c["CHAIRs"], c["Recall"]) == (pytest.approx(2 / 7), 0.5, pytest.approx(5 / 7))
    assert c["counts"]["n_mentions"] == 7 and c["parsing"] == "lenient"
    o = score_object_halbench(GENERATIONS, truth, parsing="lenient")
    assert o["mention_hallucination_rate"] == pytest.approx(1 / 4)
    assert o["response_hallucination_rate"] == pytest.approx(2 / 3)
    assert o["counts"]["n_mentions"] == 8 and o["object_recall"] == pytest.approx(5 / 7)
    with pytest.raises(ValueError, match="parsing"):
        score_chair(GENERATIONS, truth, parsing="loose")


def test_zero_denominators_give_zero(tmp_path):
    """The references raise ZeroDivisionError here; mmpo reports 0.0."""
    truth = load_coco_ground_truth(write_coco(tmp_path)[0])
    for parsing in ("reference", "lenient"):
        empty = score_chair([], truth, parsing)
        assert (empty["CHAIRs"], empty["CHAIRi"], empty["Recall"]) == (0.0, 0.0, 0.0)
        silent = score_object_halbench([{"image_id": 3, "caption": "nothing here"}], truth, parsing)
        assert silent["CHAIRs_refine"] == silent["CHAIRi"] == 0.0 and silent["correct_rate"] == 1.0


def test_unknown_image_has_empty_ground_truth(tmp_path):
    """As in the reference, an image no file lists has no ground truth: every mention is hallucinated."""
    truth = load_coco_ground_truth(write_coco(tmp_path)[0])
    result = score_chair([{"image_id": 7, "caption": "A dog."}], truth)
    assert result["CHAIRi"] == 1.0 and result["images_without_ground_truth"] == [7]


# ------------------------------------------------------------------------------------- loaders

def test_load_ground_truth(tmp_path):
    instances, captions = write_coco(tmp_path)
    truth = load_coco_ground_truth(instances, captions)
    assert truth.instances == {1: {"person", "dog"}, 2: {"cat"}, 3: {"car"}}
    assert truth.captions == {2: ("A cat asleep on a couch.",), 99: ("A dog.",)}
    assert truth.categories == ("person", "bicycle", "car", "cat", "dog", "couch")   # category-id order
    assert truth.image_id(2) == truth.image_id("2") == truth.image_id("COCO_val2014_000000000002.jpg") == 2
    assert load_coco_ground_truth(tmp_path).captions == truth.captions                # a folder
    assert load_coco_ground_truth(tmp_path, image_ids=[1]).instances == {1: {"person", "dog"}}
    bad = tmp_path / "bad" / "instances_val2014.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"annotations": [], "images": []}))
    with pytest.raises(ValueError, match="categories"):
        load_coco_ground_truth(bad)
    bad.write_text(json.dumps({"annotations": [{"image_id": 1, "category_id": 5}], "categories": []}))
    with pytest.raises(ValueError, match=r"annotations\[0\].*category_id 5"):
        load_coco_ground_truth(bad)


def test_train_categories_name_the_ids(tmp_path):
    """The references name category ids with instances_train2014's ``categories``."""
    (tmp_path / "instances_val2014.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "category_id": 1}],
        "categories": [{"id": 1, "name": "dog"}]}))
    (tmp_path / "instances_train2014.json").write_text(json.dumps({
        "images": [], "annotations": [], "categories": [{"id": 1, "name": "cat"}]}))
    assert load_coco_ground_truth(tmp_path).instances == {1: {"cat"}}


def test_load_generations_formats_and_errors(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"image_id": 1, "caption": "a dog"}\n\n{"image_id": "2", "question": "q", "text": "x"}\n')
    assert load_generations(jsonl) == [{"image_id": 1, "question": None, "caption": "a dog"},
                                       {"image_id": "2", "question": "q", "caption": "x"}]
    as_list = tmp_path / "b.json"
    as_list.write_text(json.dumps([{"image_id": 1, "answer": "a dog", "prompt": "p", "question": "q"}]))
    assert load_generations(as_list) == [{"image_id": 1, "question": "p", "caption": "a dog"}]
    chair_style = tmp_path / "c.json"
    chair_style.write_text(json.dumps({"overall": {}, "imgToEval": {"1": {"image_id": 1, "caption": "a dog",
                                                                           "SPICE": 0.5}}}))
    assert load_generations(chair_style) == [{"image_id": 1, "question": None, "caption": "a dog", "SPICE": 0.5}]
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"image_id": 1, "text": "ok"}\n\n{"image_id": 2}\n')
    with pytest.raises(ValueError, match="line 3"):
        load_generations(bad)
    chair_style.write_text(json.dumps({"imgToEval": {"5": {"image_id": 5}}}))
    with pytest.raises(ValueError, match=r"imgToEval\['5'\]"):
        load_generations(chair_style)
    bad.write_text('{"image_id": 1, "text": "ok"}\nnot json\n')
    with pytest.raises(ValueError, match="line 2"):
        load_generations(bad)
    golden = load_generations(FIXTURES / "generations_imgToEval.json")
    assert [g["caption"] for g in golden] == [g["caption"] for g in load_generations(FIXTURES / "generations.jsonl")]


def test_open_image_field_path_or_base64(tmp_path):
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "a.png")
    buffer = io.BytesIO()
    Image.new("RGB", (3, 2), (0, 255, 0)).save(buffer, format="PNG")
    assert open_image_field("a.png", tmp_path) == tmp_path / "a.png"
    assert open_image_field(base64.b64encode(buffer.getvalue()).decode(), tmp_path).size == (3, 2)
    with pytest.raises(FileNotFoundError):
        open_image_field("missing.png", tmp_path)


def test_run_chair_oracle_on_the_synthetic_world(tmp_path, monkeypatch):
    """An oracle that describes each rendered scene exactly scores CHAIR 0 and Recall 1 with the
    lenient reading (the shapes are the file's categories; the reference tables know only COCO)."""
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
                           questions=questions, prompt=DESCRIBE_PROMPT, limit=4, parsing="lenient")
        assert result["chair"]["counts"]["n_captions"] == 4 and asked == [DESCRIBE_PROMPT] * 4
        assert result["chair"]["CHAIRs"] == result["chair"]["CHAIRi"] == 0.0 and result["chair"]["Recall"] == 1.0
        assert result["object_halbench"]["object_correct_rate"] == 1.0
        assert [p["caption"] for p in result["predictions"]] == [s.description() for s in scenes[:4]]
    assert len(load_chair_questions(files.chair_questions)) == 5


# ----------------------------------------------------------------------------- lenient table

def test_lenient_synonym_table_is_consistent():
    """80 distinct categories; every synonym names one of them; no synonym shadows a category."""
    assert len(COCO_CATEGORIES) == 80 == len(set(COCO_CATEGORIES))
    assert set(COCO_SYNONYMS.values()) <= set(COCO_CATEGORIES)
    assert not set(COCO_SYNONYMS) & set(COCO_CATEGORIES)
    assert all(tokenize(name) for name in COCO_SYNONYMS)
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
    ("a baby elephant", [("baby elephant", "elephant")]),
    ("the train tracks near a bus stop", []),
    ("a bike, a sofa and a fridge", [("bike", "bicycle"), ("sofa", "couch"), ("fridge", "refrigerator")]),
])
def test_lenient_object_words(text, expected):
    assert extract_object_words(text, coco_name_table()) == expected


# ------------------------------------------------------------------------------ property tests

WORDS = st.sampled_from(["a", "dog", "dogs", "bus", "buses", "men", "people", "motor", "bike", "toilet",
                         "seat", "wine", "glasses", "hot", "train", "tracks", "baby", "Assistant:", ".", ",",
                         "'s", "-", "ties", "four", "'", '"', "\n", "  "])
TEXTS = st.one_of(st.text(max_size=60), st.lists(WORDS, max_size=25).map(" ".join))


@settings(max_examples=60, deadline=None)
@given(st.lists(TEXTS, max_size=4))
def test_any_text_scores_finite(texts):
    truth = _property_truth()
    rows = [{"image_id": 1 + i % 3, "text": t} for i, t in enumerate(texts)]
    for parsing in ("reference", "lenient"):
        c = score_chair(rows, truth, parsing)
        o = score_object_halbench(rows, truth, parsing)
        values = [c["CHAIRs"], c["CHAIRi"], c["Recall"], o["CHAIRs"], o["CHAIRs_refine"], o["CHAIRi"],
                  o["obj_rec"], o["correct_rate"], o["object_correct_rate"]]
        assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values)
        assert math.isfinite(o["avg_word_len"])
        assert len(c["per_response"]) == len(o["per_response"]) == len(texts)


def _property_truth():
    return CocoGroundTruth({1: frozenset({"dog"}), 2: frozenset(), 3: frozenset({"bus", "person"})},
                           {3: ("Two dogs.",)}, {1: "1.jpg", 2: "2.jpg", 3: "3.jpg"}, COCO_CATEGORIES)


# ---------------------------------------------------------------------- synthetic-world helpers

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
    (counting the repeated "star" would give 3/8, as the reference COCO scorers do).
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
