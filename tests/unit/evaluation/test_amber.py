"""AMBER: golden numbers of the reference scorer (junyangwang0410/AMBER@534babf inference.py, see
tests/fixtures/reference/amber/README.md), hand-worked rules, the lenient deviation, files, and
property tests."""

from __future__ import annotations

import gzip
import json
import math
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmpo.evaluation import amber
from mmpo.evaluation.amber import (
    AMBER_INITIAL_COUNTERS,
    EXACT_SIMILARITY,
    amber_aggregates,
    amber_nouns,
    amber_yes_no,
    format_amber_stdout,
    load_amber_annotations,
    load_amber_associations,
    load_amber_metrics,
    load_amber_predictions,
    load_amber_queries,
    load_amber_safe_words,
    run_amber,
    score_amber,
    score_amber_discriminative,
    score_amber_generative,
)
from mmpo.evaluation.text import nlp_backends

GOLDEN = Path(__file__).parents[2] / "fixtures" / "reference" / "amber"
VARIANTS = ("plain", "clean", "messy")

#: golden aggregate prefix -> section of our result ("" = top level)
SECTIONS = {"discriminative": "", "existence": "Existence", "attribute": "Attribute", "attribute_state": "State",
            "attribute_number": "Number", "attribute_action": "Action", "relation": "Relation"}
GENERATIVE = {"chair": "CHAIR", "cover": "Cover", "hal": "Hal", "cog": "Cog"}
QA = {"accuracy": "Accuracy", "precision": "Precision", "recall": "Recall", "f1": "F1"}

GENERATIVE_FIELDS = ("nouns", "nouns_in_vocabulary", "noun_status", "hallucinated_flags", "hallucinated_nouns",
                     "truth_covered_flags", "covered_truth", "hallu_covered_flags", "covered_hallu", "counter_deltas")
DISCRIMINATIVE_FIELDS = ("dimension", "truth", "reference_label", "correct", "counted_as_no_answer",
                         "counter_deltas")


def _gz_json(name: str):
    return json.loads(gzip.decompress((GOLDEN / name).read_bytes()))


def _gz_lines(name: str) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress((GOLDEN / name).read_bytes()).decode().splitlines()]


@pytest.fixture(scope="module")
def data():
    annotations = _gz_json("annotations.json.gz")
    return {
        "annotations": {int(a["id"]): a for a in annotations},
        "associations": load_amber_associations(GOLDEN / "relation.json"),
        "safe_words": load_amber_safe_words(GOLDEN / "safe_words.txt"),
        "metrics": load_amber_metrics(GOLDEN / "metrics.txt"),
        "aggregates": json.loads((GOLDEN / "aggregates.json").read_text()),
    }


def _variant(v: str) -> tuple[list[dict], list[dict]]:
    return _gz_json(f"responses_{v}.json.gz"), _gz_lines(f"per_response_{v}.jsonl.gz")


def _score(data, responses, **kwargs):
    return score_amber(responses, data["annotations"], associations=data["associations"],
                       safe_words=data["safe_words"], metrics=data["metrics"], **kwargs)


def _ours(values: Mapping, key: str):
    """Our value for a golden aggregate key such as ``attribute_state/f1``."""
    group, name = key.split("/")
    if group == "generative":
        return values[GENERATIVE[name]]
    section = SECTIONS[group]
    return (values[section] if section else values)[QA[name]]


def _numbers(values: Mapping) -> Iterable[float]:
    for value in values.values():
        if isinstance(value, Mapping):
            yield from _numbers(value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield value


def _tagger_is_exact() -> bool:
    return "exact" in nlp_backends(tagging=True)["tagger"]


# ---------------------------------------------------------------------------------------- golden

@pytest.mark.parametrize("variant", VARIANTS)
def test_golden_from_the_reference_nouns_is_exact(data, variant):
    """Fed the reference's own nouns per response, every per-response field, the final counters,
    every published and unrounded aggregate (abs 1e-9) and the printed text equal the reference's."""
    responses, gold = _variant(variant)
    nouns = {g["id"]: g["nouns"] for g in gold if g["type"] == "generative"}
    result = _score(data, responses, nouns=nouns)
    expected = data["aggregates"][variant]

    assert len(result["per_response"]) == len(gold)
    for ours, ref in zip(result["per_response"], gold, strict=True):
        assert (ours["id"], ours["type"]) == (ref["id"], ref["type"])
        fields = GENERATIVE_FIELDS if ref["type"] == "generative" else DISCRIMINATIVE_FIELDS
        for field in fields:
            assert ours[field] == ref[field], (variant, ref["id"], field)

    assert result["counters"].keys() == expected["counters_final"].keys()
    for name, value in expected["counters_final"].items():
        assert result["counters"][name] == pytest.approx(value, abs=1e-9), name
    for key, value in expected["published"].items():
        assert _ours(result, key) == pytest.approx(value, abs=1e-9), key
    for key, value in expected["unrounded"].items():
        assert _ours(result["unrounded"], key) == pytest.approx(value, abs=1e-9), key
    assert format_amber_stdout(result) == expected["published_stdout"]
    assert (result["n_generative"], result["n_discriminative"]) == (expected["n_generative"],
                                                                    expected["n_discriminative"])
    assert result["AMBER_score"] == pytest.approx((100 - result["CHAIR"] + result["F1"]) / 2)
    assert result["similarity"] == EXACT_SIMILARITY and result["parsing"] == "reference"
    assert result["nlp"] == {"nouns": "supplied by the caller (nouns=)"}


#: Measured with the fallback tagger (textblob-aptagger weights; NLTK's tagger data absent):
#: responses whose vocabulary nouns differ from the reference's, and the published generative
#: values that then differ, as (reference, ours). Discriminative values never depend on tagging.
FALLBACK_TAGGER_RESIDUAL = {
    "plain": (0, {}),
    "clean": (0, {}),
    "messy": (5, {"CHAIR": (35.1, 35.3), "Cover": (42.3, 42.2), "Cog": (23.9, 24.0)}),
}
FALLBACK_TAGGER_COUNTER_DIFFERENCES = {"messy": {"chair_num": 1, "chair_score": 3, "safe_cover_score": -1,
                                                 "hallu_cover_score": 1}}


@pytest.mark.parametrize("variant", VARIANTS)
def test_golden_full_pipeline_with_the_fallback_tagger_has_the_measured_residual(data, variant):
    """Our text pipeline (amber_nouns on the raw responses) without NLTK's tagger data: the
    residual is exactly the measured one (messy: ids 148, 176, 215, 226, 227)."""
    if _tagger_is_exact():
        pytest.skip("NLTK's averaged_perceptron_tagger_eng is installed: the exact test applies")
    responses, gold = _variant(variant)
    result = _score(data, responses)
    expected = data["aggregates"][variant]
    n_different, published_differences = FALLBACK_TAGGER_RESIDUAL[variant]
    generative = [(o, g) for o, g in zip(result["per_response"], gold, strict=True) if g["type"] == "generative"]
    assert sum(o["nouns_in_vocabulary"] != g["nouns_in_vocabulary"] for o, g in generative) == n_different
    # given the same vocabulary nouns, everything downstream agrees
    for ours, ref in generative:
        if ours["nouns_in_vocabulary"] == ref["nouns_in_vocabulary"]:
            assert ours["counter_deltas"] == ref["counter_deltas"], ref["id"]
    for key, value in expected["published"].items():
        name = GENERATIVE.get(key.split("/")[1]) if key.startswith("generative/") else None
        if name in published_differences:
            assert (value, _ours(result, key)) == published_differences[name]
        else:
            assert _ours(result, key) == pytest.approx(value, abs=1e-9), key
    differences = {k: v - expected["counters_final"][k] for k, v in result["counters"].items()
                   if v != pytest.approx(expected["counters_final"][k], abs=1e-9)}
    assert differences == pytest.approx(FALLBACK_TAGGER_COUNTER_DIFFERENCES.get(variant, {}))
    assert "textblob" in result["nlp"]["tagger"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_golden_full_pipeline_is_exact_with_nltks_tagger_data(data, variant):
    if not _tagger_is_exact():
        pytest.skip("needs NLTK's averaged_perceptron_tagger_eng data "
                    "(python -m nltk.downloader averaged_perceptron_tagger_eng)")
    responses, gold = _variant(variant)
    result = _score(data, responses)
    for ours, ref in zip(result["per_response"], gold, strict=True):
        if ref["type"] == "generative":
            assert ours["nouns"] == ref["nouns"], ref["id"]
    for key, value in data["aggregates"][variant]["unrounded"].items():
        assert _ours(result["unrounded"], key) == pytest.approx(value, abs=1e-9), key
    assert format_amber_stdout(result) == data["aggregates"][variant]["published_stdout"]


def test_golden_files_through_the_file_loaders(data, tmp_path):
    """AMBER's data/ layout: run_amber finds relation.json, safe_words.txt, metrics.txt beside
    annotations.json; the loaders read what the in-memory golden test used."""
    (tmp_path / "annotations.json").write_text(json.dumps(_gz_json("annotations.json.gz")))
    responses, _ = _variant("clean")
    (tmp_path / "responses.json").write_text(json.dumps(responses))
    assert load_amber_annotations(tmp_path / "annotations.json") == data["annotations"]
    assert load_amber_predictions(tmp_path / "responses.json") == responses
    assert data["metrics"] == AMBER_INITIAL_COUNTERS


# ------------------------------------------------------------------------------------ the rules

ASSOCIATIONS = {"tree": ["forest", "leaf"], "forest": ["tree"], "person": ["man", "woman"], "dog": ["puppy"],
                "cat": ["kitten"], "orange": [], "TV": ["television"], "grass": []}


def _generative(nouns, truth, hallu, safe_words=("orange",), **kwargs):
    return score_amber_generative(nouns, truth, hallu, associations=ASSOCIATIONS, safe_words=safe_words, **kwargs)


def test_first_equal_entry_decides_which_truth_object_is_covered():
    """truth = [tree, forest]: safe list = tree's words [forest, leaf], forest's [tree], then the
    objects [tree, forest]. The noun "forest" first equals tree's association word, so it covers
    tree, not forest; "tree" first equals forest's association word, so it covers forest."""
    assert _generative(["forest"], ["tree", "forest"], [])["truth_covered_flags"] == [1, 0]
    assert _generative(["tree"], ["tree", "forest"], [])["covered_truth"] == ["forest"]
    assert _generative(["man"], ["person"], [])["covered_truth"] == ["person"]


def test_safe_words_count_in_the_denominator_and_repeats_each_count():
    """nouns: orange (global safe), dog, dog (hallucinated twice; dog is a hallu object), grass
    (truth), kitten (cat's association word; hallu cat covered), Dog (not in the vocabulary).
    kept 5, hallucinated 3 -> chair_num 5, chair_score 3; truth [grass] covered; hallu [dog, cat]
    both covered; the response is not hallucination-free."""
    out = _generative(["orange", "dog", "dog", "grass", "kitten", "Dog"], ["grass"], ["dog", "cat"])
    assert out["nouns_in_vocabulary"] == ["orange", "dog", "dog", "grass", "kitten"]
    assert out["noun_status"] == ["global_safe_word", "hallucinated", "hallucinated", "truth_or_association",
                                  "hallucinated"]
    assert out["hallucinated_nouns"] == ["dog", "dog", "kitten"]
    assert out["counter_deltas"] == {"chair_num": 5, "chair_score": 3, "safe_cover_num": 1, "safe_cover_score": 1,
                                     "hallu_cover_num": 2, "hallu_cover_score": 2, "non_hallu_num": 1}
    # a global safe word never covers a truth object, even when it is one
    assert _generative(["orange"], ["orange"], [])["counter_deltas"] == {
        "chair_num": 1, "safe_cover_num": 1, "non_hallu_score": 1, "non_hallu_num": 1}


def test_vocabulary_is_case_sensitive_and_capitals_are_kept():
    """The lemmatiser keeps case: "Dogs" stays "Dogs" (not in the vocabulary); "TV" is the one
    upper-case entry. (Uses the real NLP pipeline; nouns are tags NN*.)"""
    nouns = amber_nouns("Dogs and the cats near a TV.")
    assert nouns[0] == "Dogs" and "cat" in nouns and "TV" in nouns
    assert _generative(nouns, ["TV"], ["cat"])["nouns_in_vocabulary"] == ["cat", "TV"]
    assert amber_nouns("") == []


def test_similarity_fallback_follows_the_reference_order():
    """similarity: kitten ~ puppy at 0.9 (> 0.8), otherwise exact equality. Lists (association
    words first, then objects): dog -> [puppy, dog], cat -> [kitten, cat].

    * "kitten", truth [grass], hallu [dog]: no exact match; the hallu-list similarity step marks dog
      (Cog), the safe-list step finds nothing similar -> hallucinated.
    * "kitten", truth [grass, dog]: the safe-list similarity step covers dog -> not hallucinated.
    * "puppy", hallu [cat, dog]: the exact step marks dog, then the similarity step still runs and
      marks the first similar entry, kitten -> cat too: flags [1, 1].
    * threshold 0.95: kitten is similar to nothing -> hallucinated, nothing covered.
    """
    def similar(a, b):
        return 0.9 if {a, b} == {"kitten", "puppy"} else float(a == b)

    cog = _generative(["kitten"], ["grass"], ["dog"], safe_words=(), similarity=similar)
    assert cog["hallu_covered_flags"] == [1] and cog["hallucinated_flags"] == [1]
    assert _generative(["kitten"], ["grass"], ["dog"], safe_words=())["hallu_covered_flags"] == [0]
    rescued = _generative(["kitten"], ["grass", "dog"], [], safe_words=(), similarity=similar)
    assert rescued["covered_truth"] == ["dog"] and rescued["noun_status"] == ["truth_or_association"]
    both = _generative(["puppy"], ["grass"], ["cat", "dog"], safe_words=(), similarity=similar)
    assert both["hallu_covered_flags"] == [1, 1] and both["hallucinated_flags"] == [1]
    strict = _generative(["kitten"], ["grass", "dog"], ["dog"], safe_words=(), similarity=similar,
                         similarity_threshold=0.95)
    assert strict["hallucinated_flags"] == [1] and strict["covered_truth"] == strict["covered_hallu"] == []
    named = score_amber([{"id": 1, "response": "x"}], {1: {"id": 1, "type": "generative", "truth": [], "hallu": []}},
                        associations=ASSOCIATIONS, safe_words=[], nouns={1: []}, similarity=similar)
    assert named["similarity"] == "caller-supplied similar(a, b) > 0.8, after exact matches"


def test_truth_object_missing_from_relation_json_names_it():
    with pytest.raises(ValueError, match="'unicorn' is not a key of relation.json"):
        _generative(["dog"], ["unicorn"], [], entry_id=7)


def test_yes_no_reference_needs_the_exact_strings():
    assert [amber_yes_no(r) for r in ("Yes", "No", "Yes.", "yes", " No", "NO", "No, there is not.", "")] == \
        ["Yes", "No", None, None, None, None, None, None]
    assert [amber_yes_no(r, "lenient") for r in ("Yes.", "no, it is not", "there is", "")] == \
        ["Yes", "No", None, None]
    neither = score_amber_discriminative("yes", "yes", "discriminative-attribute-state")
    assert not neither["correct"] and neither["counter_deltas"] == {"qa_correct_num": 1, "as_qa_correct_num": 1}
    right = score_amber_discriminative("No", "no", "relation")
    assert right["dimension"] == "relation" and right["counter_deltas"] == {
        name: 1 for prefix in ("", "asso_") for name in (prefix + k for k in (
            "qa_correct_score", "qa_correct_num", "qa_no_score", "qa_no_num", "qa_ans_no_score", "qa_ans_no_num"))}


def test_discriminative_hand_worked_with_the_counter_offsets():
    """truths  no   no   no     yes  yes   (existence x3, state x2)
       answers No   Yes  maybe  Yes  No

    "No" positive. Counters start at 0.001 (denominators):
        correct 2 / 5.001, ans_no_score 1 / ans_no_num 2.001, no_score 1 / no_num 3.001
        Accuracy = 39.992... -> 40.0, Precision = 49.975... -> 50.0, Recall = 33.322... -> 33.3
        published F1 = 2 * .5 * .333 / (.5 + .333 + 1e-4) * 100 = 39.971... -> 40.0
    Existence: correct 1/3.001, P = 1/1.001, R = 1/3.001, F1 with +1e-3. State: 1/2.001 -> 50.0;
    Attribute pools state, number and action, offsets included: 1/2.003 -> 49.9.
    Lenient (counters from 0, F1 without epsilon): 40, 50, 33.3 and exactly 40.
    """
    kinds = ["discriminative-hallucination"] * 3 + ["discriminative-attribute-state"] * 2
    annotations = {i: {"id": i, "type": k, "truth": t} for i, (k, t) in
                   enumerate(zip(kinds, ["no", "no", "no", "yes", "yes"], strict=True), 1)}
    predictions = [{"id": i, "response": r} for i, r in enumerate(["No", "Yes", "maybe", "Yes", "No"], 1)]
    out = score_amber(predictions, annotations, associations={}, safe_words=[])
    assert (out["Accuracy"], out["Precision"], out["Recall"], out["F1"]) == (40.0, 50.0, 33.3, 40.0)
    assert out["unrounded"]["Accuracy"] == pytest.approx(2 / 5.001 * 100)
    p, r = 100 / 2.001, 100 / 3.001
    assert out["unrounded"]["F1"] == pytest.approx(2 * (p / 100) * (r / 100) / (p / 100 + r / 100 + 1e-4) * 100)
    pe, re_ = 100 / 1.001, 100 / 3.001
    assert out["unrounded"]["Existence"]["F1"] == pytest.approx(
        2 * (pe / 100) * (re_ / 100) / (pe / 100 + re_ / 100 + 1e-3) * 100)
    # Attribute pools three dimensions' counters, offsets included: 1 / (2 + 0.003) -> 49.9
    assert out["State"]["Accuracy"] == 50.0 and out["Attribute"]["Accuracy"] == 49.9
    assert out["Relation"] == {"Accuracy": 0.0, "Precision": 0.0, "Recall": 0.0, "F1": 0.0}
    assert out["AMBER_score"] is None and out["n_discriminative"] == 5
    lenient = score_amber(predictions, annotations, parsing="lenient")
    assert lenient["unrounded"]["F1"] == pytest.approx(40.0)
    assert lenient["unrounded"]["Recall"] == pytest.approx(100 / 3)


def test_published_f1_uses_the_rounded_precision_and_recall():
    """Counters with P = 2/3 and R = 1/2 (offsets 0): published P 66.7, R 50.0 ->
    F1 = 2 * .667 * .5 / (.667 + .5 + 1e-4) = 57.15... -> 57.2; unrounded 57.137..."""
    counters = dict.fromkeys(AMBER_INITIAL_COUNTERS, 0)
    counters |= {"qa_ans_no_score": 2, "qa_ans_no_num": 3, "qa_no_score": 2, "qa_no_num": 4}
    published, unrounded = amber_aggregates(counters), amber_aggregates(counters, rounded=False)
    assert (published["Precision"], published["Recall"], published["F1"]) == (66.7, 50.0, 57.2)
    assert unrounded["F1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5 + 1e-4) * 100)


def test_attribute_pools_the_three_counters():
    counters = dict(AMBER_INITIAL_COUNTERS) | {"as_qa_correct_score": 1, "as_qa_correct_num": 2.001,
                                               "an_qa_correct_score": 3, "an_qa_correct_num": 3.001}
    assert amber_aggregates(counters, rounded=False)["Attribute"]["Accuracy"] == pytest.approx(4 / 5.003 * 100)


# -------------------------------------------------------------------------------------- lenient

LENIENT_ASSOCIATIONS = {"ship": ["boat"], "person": ["man", "woman"], "man": ["gentleman"]}
RESPONSE_A = "A boat and a bird near a man under the sun. Another boat."
RESPONSE_B = "A dog and a woman on the grass."
TRUTH_A, HALLU_A = ["sky", "man", "ship", "ship"], ["plane", "bird", "sun"]
TRUTH_B, HALLU_B = ["dog", "grass"], ["cat", "person"]


def test_lenient_generative_hand_computed():
    """mmpo's earlier reading (migrated). associations: ship -> boat; person -> man, woman;
    man -> gentleman.

    A: truth {sky, man, ship} (the duplicate ship counts once), hallu {plane, bird, sun}
       words: boat, bird, man, sun, boat (5); safe = {sky, man, gentleman, ship, boat}
       hallucinated: bird, sun (2); truth covered: man, ship (via boat) -> 2 of 3;
       hallu named by a hallucinated word: bird, sun -> 2 of 3
    B: truth {dog, grass}, hallu {cat, person}
       words: dog, woman, grass (3); hallucinated: woman (1); truth covered 2 of 2;
       hallu: person (via woman) -> 1 of 2

    CHAIR = 3/8 = 37.5 %   Cover = 4/5 = 80 %   Hal = 100 %   Cog = 3/5 = 60 %
    With safe word "bird" (dropped, not in the denominator): CHAIR (1 + 1) / (4 + 3) = 2/7.
    """
    annotations = {1: {"id": 1, "type": "generative", "truth": TRUTH_A, "hallu": HALLU_A},
                   2: {"id": 2, "type": "generative", "truth": TRUTH_B, "hallu": HALLU_B}}
    predictions = [{"id": 1, "response": RESPONSE_A}, {"id": 2, "response": RESPONSE_B}]
    out = score_amber(predictions, annotations, associations=LENIENT_ASSOCIATIONS, parsing="lenient")
    assert {k: out["unrounded"][k] for k in ("CHAIR", "Cover", "Hal", "Cog")} == pytest.approx(
        {"CHAIR": 37.5, "Cover": 80.0, "Hal": 100.0, "Cog": 60.0})
    assert out["per_response"][0]["nouns_in_vocabulary"] == ["boat", "bird", "man", "sun", "boat"]
    safe = score_amber(predictions, annotations, associations=LENIENT_ASSOCIATIONS, safe_words={"bird"},
                       parsing="lenient")
    assert safe["unrounded"]["CHAIR"] == pytest.approx(200 / 7)
    assert out["similarity"].startswith("not used") and out["nlp"]["nouns"].startswith("word matching")


def test_lenient_and_reference_amber_score():
    """Generative as above (lenient CHAIR 37.5). Discriminative: existence (no, "No"),
    attribute-state (yes, "Yes, it is."), relation (no, "yes"):
        lenient: "No" answers 1, correct "no" 1, truths "no" 2 -> P 100, R 50, F1 66.67
        AMBER score = (100 - 37.5 + 66.7) / 2 = 64.6 published, 64.583... unrounded
    Reference reading: "Yes, it is." and "yes" are neither answer, so only the first is correct.
    """
    annotations = {1: {"id": 1, "type": "generative", "truth": TRUTH_A, "hallu": HALLU_A},
                   2: {"id": 2, "type": "generative", "truth": TRUTH_B, "hallu": HALLU_B},
                   3: {"id": 3, "type": "discriminative-hallucination", "truth": "no"},
                   4: {"id": 4, "type": "discriminative-attribute-state", "truth": "yes"},
                   5: {"id": 5, "type": "discriminative-relation", "truth": "no"}}
    predictions = [{"id": 1, "response": RESPONSE_A}, {"id": 2, "response": RESPONSE_B},
                   {"id": 3, "response": "No"}, {"id": "4", "response": "Yes, it is."},
                   {"id": 5, "response": "yes"}]
    lenient = score_amber(predictions, annotations, associations=LENIENT_ASSOCIATIONS, parsing="lenient")
    assert lenient["F1"] == 66.7 and lenient["AMBER_score"] == pytest.approx(64.6)
    assert lenient["unrounded"]["AMBER_score"] == pytest.approx((100 - 37.5 + 200 / 3) / 2)
    assert lenient["State"]["Accuracy"] == 100.0 and lenient["Relation"]["Accuracy"] == 0.0
    reference = score_amber(predictions, annotations, associations={**LENIENT_ASSOCIATIONS, **dict.fromkeys(
        ["sky", "plane", "bird", "sun", "dog", "grass", "cat"], [])}, safe_words=[])
    assert [r.get("correct") for r in reference["per_response"][2:]] == [True, False, False]
    with pytest.raises(ValueError, match="id 9 is not in the annotations"):
        score_amber([{"id": 9, "response": "x"}], annotations, associations={}, safe_words=[])
    with pytest.raises(ValueError, match="relation.json"):
        score_amber(predictions, annotations)
    with pytest.raises(ValueError, match="parsing"):
        score_amber(predictions, annotations, parsing="strict")


# ---------------------------------------------------------------------------------------- files

def test_loaders_validate_and_name_the_problem(tmp_path):
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps([{"id": 1, "type": "generative", "truth": [], "hallu": []},
                                {"id": 1, "type": "discriminative-relation", "truth": "no"}]))
    with pytest.raises(ValueError, match="record 1 repeats id 1"):
        load_amber_annotations(path)
    path.write_text(json.dumps([{"id": 2, "type": "generative", "truth": ["dog"]}]))
    with pytest.raises(ValueError, match=r"lacks 'hallu'"):
        load_amber_annotations(path)

    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text('{"id": 1, "response": "Yes"}\n{"id": 2, "response": "No"}\n')
    assert load_amber_predictions(predictions) == [{"id": 1, "response": "Yes"}, {"id": 2, "response": "No"}]
    predictions.write_text(json.dumps([{"id": 1, "response": "Yes"}, {"id": 2, "text": "No"}]))
    with pytest.raises(ValueError, match=r"record 1 lacks \['response'\]"):
        load_amber_predictions(predictions)
    predictions.write_text(json.dumps([{"id": 1, "response": None}]))
    with pytest.raises(ValueError, match="record 0 .*not a string"):
        load_amber_predictions(predictions)
    predictions.write_text('{"id": 1, "response": "Yes"}\n{"id": 2,\n')
    with pytest.raises(ValueError, match="line 2"):
        load_amber_predictions(predictions)

    metrics = tmp_path / "metrics.txt"
    metrics.write_text("chair_num=0.001\n")
    with pytest.raises(ValueError, match="lacks counters"):
        load_amber_metrics(metrics)
    metrics.write_text("chair_num=abc\n")
    with pytest.raises(ValueError, match="line 1"):
        load_amber_metrics(metrics)
    assert load_amber_safe_words(GOLDEN / "safe_words.txt") == ["orange", "snack", "line", "camera", "light",
                                                                "shoe", "sign", "range", "individual"]


# ------------------------------------------------------------------------------------------ run

def _toy(tmp_path, monkeypatch):
    from mmpo import generation
    from mmpo.toyworld.benchmark_files import write_toy_benchmarks
    from mmpo.toyworld.scenes import SHAPES, WorldConfig, sample_scenes

    scenes = sample_scenes(WorldConfig(seed=11).held_out(), 4, prefix="o")
    by_name = {f"{s.id}.png": s for s in scenes}

    def generate(model, processor, images, prompts, **kwargs):
        out = []
        for path, prompt in zip(images, prompts, strict=True):
            scene = by_name[Path(path).name]
            if prompt.startswith("is there a"):
                out.append("Yes" if prompt.split()[3] in scene.shapes else "No")
            elif prompt.startswith("is the"):
                out.append("maybe")
            else:
                out.append(scene.description())
        return out

    monkeypatch.setattr(generation, "generate_responses", generate)
    toy = write_toy_benchmarks(tmp_path, scenes)
    return toy, SHAPES


def test_run_amber_finds_the_data_files_beside_the_annotations(tmp_path, monkeypatch):
    """An oracle describing only true shapes: CHAIR 0, Hal 0. Existence answered exactly "No":
    Existence accuracy 100 (published); attribute/relation answered "maybe": wrong."""
    toy, shapes = _toy(tmp_path, monkeypatch)
    data_dir = Path(toy.amber_annotations).parent
    own = run_amber(None, None, toy.amber_queries, toy.amber_annotations, toy.images)  # the toy's own data files
    assert own["CHAIR"] == 0.0 and own["Existence"]["Accuracy"] == 100.0
    for name in ("relation.json", "safe_words.txt", "metrics.txt"):
        (data_dir / name).unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match="relation.json, safe_words.txt, metrics.txt"):
        run_amber(None, None, toy.amber_queries, toy.amber_annotations, toy.images)
    (data_dir / "relation.json").write_text(json.dumps({s: [] for s in shapes}))
    (data_dir / "safe_words.txt").write_text("\n")
    shutil.copy(GOLDEN / "metrics.txt", data_dir / "metrics.txt")
    out = run_amber(None, None, toy.amber_queries, toy.amber_annotations, toy.images)
    assert out["CHAIR"] == 0.0 and out["Hal"] == 0.0 and out["Existence"]["Accuracy"] == 100.0
    assert out["State"]["Accuracy"] == 0.0
    assert [p["id"] for p in out["predictions"]] == sorted(int(q["id"]) for q in load_amber_queries(toy.amber_queries))
    limited = run_amber(None, None, toy.amber_queries, toy.amber_annotations, toy.images, limit=2)
    assert (limited["n_generative"], limited["n_discriminative"]) == (2, 2)
    lenient = run_amber(None, None, toy.amber_queries, toy.amber_annotations, toy.images, parsing="lenient")
    assert lenient["Cover"] == 100.0 and lenient["parsing"] == "lenient"


# ------------------------------------------------------------------------------------ properties

RESPONSES = st.lists(st.one_of(st.text(max_size=60), st.sampled_from(["", "Yes", "No", "a dog and a Dogs .",
                                                                      "tree forest TV orange"])),
                     min_size=0, max_size=6)


@settings(max_examples=40, deadline=None)
@given(RESPONSES, st.sampled_from(["reference", "lenient"]))
def test_any_responses_score_to_finite_numbers(responses, parsing):
    kinds = ["generative", "discriminative-hallucination", "discriminative-attribute-number", "relation"]
    annotations = {}
    for i in range(len(responses)):
        kind = kinds[i % len(kinds)]
        annotations[i + 1] = ({"id": i + 1, "type": kind, "truth": ["tree", "dog"], "hallu": ["cat"]}
                              if kind == "generative" else {"id": i + 1, "type": kind, "truth": "no"})
    predictions = [{"id": i + 1, "response": r} for i, r in enumerate(responses)]
    out = score_amber(predictions, annotations, associations=ASSOCIATIONS, safe_words=["orange"], parsing=parsing)
    assert all(math.isfinite(x) for x in _numbers({k: v for k, v in out.items() if k != "per_response"}))
    assert len(out["per_response"]) == len(responses)
    zero = score_amber(predictions, annotations, associations=ASSOCIATIONS, safe_words=[], parsing=parsing,
                       metrics=dict.fromkeys(AMBER_INITIAL_COUNTERS, 0))
    assert all(math.isfinite(x) for x in _numbers({k: v for k, v in zero.items() if k != "per_response"}))


def test_module_docstring_states_the_similarity_substitution():
    assert "en_core_web_lg" in amber.__doc__ and "exact string equality" in amber.__doc__


def test_spacy_similarity_without_spacy_says_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_spacy(name, *args, **kwargs):
        if name == "spacy":
            raise ImportError("No module named 'spacy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_spacy)
    with pytest.raises(ImportError, match="pip install spacy"):
        amber.spacy_similarity("/models/en_core_web_lg")


def test_spacy_similarity_parses_each_word_once_and_feeds_the_fallback(monkeypatch):
    """A stand-in ``spacy`` module (named as such) whose pipeline gives 0.9 for dog/puppy, else
    0.1: the adapter caches each word's parse and its callable plugs into score_amber_generative."""
    import sys
    import types

    parsed = []

    class Doc:
        def __init__(self, word):
            self.word = word

        def similarity(self, other):
            return 0.9 if {self.word, other.word} == {"dog", "puppy"} else 0.1

    def load(path):
        assert path == "/models/vectors"
        return lambda word: parsed.append(word) or Doc(word)

    monkeypatch.setitem(sys.modules, "spacy", types.SimpleNamespace(load=load))
    similar = amber.spacy_similarity("/models/vectors")
    assert similar("puppy", "dog") == 0.9 and similar("puppy", "cat") == 0.1 and similar("dog", "cat") == 0.1
    assert parsed == ["puppy", "dog", "cat"]
    item = amber.score_amber_generative(["puppy"], ["dog"], ["cat"], associations={"dog": [], "cat": [], "puppy": []},
                                        safe_words=[], similarity=similar)
    assert item["hallucinated_nouns"] == [] and item["covered_truth"] == ["dog"]
