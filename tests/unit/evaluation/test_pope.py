"""POPE: the reference answer rule, metrics worked by hand, both answer formats, and every per-answer
reading and aggregate of the reference scorers (AoiDragon and LLaVA) on the golden fixtures."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mmpo.generation as generation
from mmpo.evaluation.pope import (
    POPE_RATES,
    SPLITS,
    find_pope_files,
    load_pope_predictions,
    load_pope_questions,
    parse_pope_answer,
    parse_yes_no,
    pope_metrics,
    pope_summary_line,
    run_pope,
    score_pope,
)

GOLDEN = Path(__file__).resolve().parents[2] / "fixtures" / "reference" / "pope"


def label_file(split: str) -> Path:
    return GOLDEN / "annotations" / f"coco_pope_{split}.json"


def write_lines(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------------- the reference rule

READ_NO = ["No", "no.", "No, there is not.", "There is no cat in the image.", "Yes, no.", "No. Wait, yes.",
           "yes, but not clearly", "Absolutely not", "yes  no"]
READ_YES = ["NO", "NOT", "Not", "Not at all.", "Nope", "No!", "No;", "(No)", "No\n", "no\n\n", "No\nThere is none",
            "no\tthere is none", "no,there is none", "Yes.\nNo", "Yes,no", "There isn't one.", "I cannot tell",
            "Mr. No", ""]


@pytest.mark.parametrize("answer", READ_NO)
def test_reference_reads_no(answer):
    """README section 2's verified "no" examples: a piece (before the first '.', commas deleted, split
    on ' ') is exactly No / not / no."""
    assert parse_pope_answer(answer) == "no"
    assert parse_pope_answer(answer, "reference") == "no"


@pytest.mark.parametrize("answer", READ_YES)
def test_reference_reads_yes(answer):
    """README section 2's verified "yes" examples: case-sensitive pieces, only ' ' separates, and
    anything that is not a "no" (empty, hedged, "Nope", "No!") is a yes."""
    assert parse_pope_answer(answer) == "yes"


@pytest.mark.parametrize(("answer", "lenient", "strict"), [
    ("Yes, there is a dog.", "yes", "yes"),
    ("No.", "no", "no"),
    ("There is a dog in the image.", "yes", None),          # says neither: the published rule reads yes
    ("I do not see one.", "no", None),                      # "not" in the first sentence
    ("Yes. There is no cat though.", "yes", "yes"),         # only the first sentence is read
    ("NOT at all", "no", None),                             # lenient lower-cases; the reference reads yes
    ("No\n", "no", "no"),                                   # lenient splits on any whitespace
    ("no\tthere is none", "no", "no"),
    ("Nope", "yes", None),
    ("", "yes", None),
])
def test_lenient_and_strict_readings(answer, lenient, strict):
    assert parse_pope_answer(answer, "lenient") == lenient
    assert parse_pope_answer(answer, "strict") == strict


@pytest.mark.parametrize(("answer", "expected"), [
    ("yes", "yes"), ("Yes.", "yes"), ("  YES , there is a circle .", "yes"), ("yes it is", "yes"),
    ("no", "no"), ("No.", "no"), ("no, there is not", "no"), ("no . yes .", "no"), ('"No"', "no"),
    ("", None), ("   ", None), ("there is a circle .", None), ("yesterday", None), ("nope", None),
    ("not really", None), ("the answer is yes", None), ("circle circle", None), ("...", None),
])
def test_parse_yes_no(answer, expected):
    assert parse_yes_no(answer) == expected


def test_unknown_parsing():
    with pytest.raises(ValueError, match="parsing"):
        parse_pope_answer("yes", "pope")
    with pytest.raises(ValueError, match="parsing"):
        score_pope({"random": []}, {"random": []}, "fuzzy")


@given(st.text())
def test_every_reading_is_total(answer):
    assert parse_pope_answer(answer) in ("yes", "no")
    assert parse_pope_answer(answer, "lenient") in ("yes", "no")
    assert parse_pope_answer(answer, "strict") in ("yes", "no", None)


@given(st.text(alphabet=st.sampled_from(list("Nnoteys., \t\n!;()")), max_size=30))
def test_reference_rule_equals_a_regex_restatement(answer):
    """Independent statement of the rule: in the first sentence with commas removed, No/not/no is
    bounded by single spaces or the ends of the text."""
    first = answer.split(".")[0].replace(",", "")
    expected = "no" if re.search(r"(?:^| )(?:No|not|no)(?= |$)", first) else "yes"
    assert parse_pope_answer(answer) == expected


# ------------------------------------------------------------------------------------------- metrics


def test_pope_metrics_hand_computed():
    """labels      yes yes  yes  no  no no  no
    predictions    yes no   None yes no no  None

    TP = 1, FN = 2 (a "no" and an unparsed), FP = 1, TN = 2, the unparsed "no" question is just wrong.
    accuracy  = (1 + 2) / 7 = 3/7
    precision = 1 / (1 + 1) = 1/2
    recall    = 1 / (1 + 2) = 1/3
    f1        = 2 * 1/2 * 1/3 / (1/2 + 1/3) = 2/5
    yes_ratio = (TP + FP) / 7 = 2/7   (the *labels'* yes share would be 3/7 — the trap)
    unparsed  = 2
    """
    labels = ["yes", "yes", "yes", "no", "no", "no", "no"]
    predictions = ["yes", "no", None, "yes", "no", "no", None]
    m = pope_metrics(labels, predictions)
    assert m["accuracy"] == pytest.approx(3 / 7)
    assert m["precision"] == pytest.approx(1 / 2)
    assert m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(2 / 5)
    assert m["yes_ratio"] == pytest.approx(2 / 7)
    assert (m["TP"], m["FP"], m["TN"], m["FN"], m["n"], m["unparsed"]) == (1, 1, 2, 2, 7, 2)


def test_yes_ratio_counts_predictions_not_labels():
    """All labels yes, all predictions no: yes_ratio 0 (labels would say 1).
    A yes-always model on balanced labels: yes_ratio 1, accuracy 1/2, precision 1/2, recall 1, f1 2/3."""
    m = pope_metrics(["yes"] * 4, ["no"] * 4)
    assert m["yes_ratio"] == 0.0 and m["accuracy"] == 0.0
    biased = pope_metrics(["yes", "yes", "no", "no"], ["yes"] * 4)
    assert biased["yes_ratio"] == 1.0 and biased["accuracy"] == 0.5
    assert (biased["precision"], biased["recall"]) == (0.5, 1.0)
    assert biased["f1"] == pytest.approx(2 / 3)


def test_unparsed_answers_never_help():
    """Replacing a correct "no" by an unparsed answer lowers accuracy (it is not a true negative)."""
    labels = ["yes", "no"]
    assert pope_metrics(labels, ["yes", "no"])["accuracy"] == 1.0
    assert pope_metrics(labels, ["yes", None])["accuracy"] == 0.5
    assert pope_metrics(labels, [None, None]) == {
        "accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0,
        "TP": 0, "FP": 0, "TN": 0, "FN": 1, "n": 2, "unparsed": 2}


def test_zero_denominators_are_zero_where_the_reference_raises():
    assert pope_metrics([], []) == {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0,
                                    "yes_ratio": 0.0, "TP": 0, "FP": 0, "TN": 0, "FN": 0, "n": 0, "unparsed": 0}
    only_no = pope_metrics(["no", "no"], ["no", "no"])          # no positives, no yes predictions
    assert only_no["accuracy"] == 1.0 and only_no["precision"] == only_no["recall"] == only_no["f1"] == 0.0


def test_pope_metrics_rejects_raw_answers_bad_labels_and_mismatched_lengths():
    with pytest.raises(ValueError, match="parse_pope_answer"):
        pope_metrics(["yes"], ["Yes."])
    with pytest.raises(ValueError, match="labels"):
        pope_metrics(["maybe"], ["yes"])
    with pytest.raises(ValueError):
        pope_metrics(["yes"], [])


@given(st.lists(st.tuples(st.sampled_from(["yes", "no"]), st.sampled_from(["yes", "no", None]))))
def test_metrics_finite_and_consistent_for_any_lists(pairs):
    labels = [label for label, _ in pairs]
    predictions = [p for _, p in pairs]
    m = pope_metrics(labels, predictions)
    assert all(math.isfinite(m[k]) and 0.0 <= m[k] <= 1.0 for k in POPE_RATES)
    unparsed_no = pairs.count(("no", None))   # counted in none of TP/FP/TN/FN
    assert m["TP"] + m["FP"] + m["TN"] + m["FN"] + unparsed_no == m["n"]
    assert m["n"] == len(pairs) and m["unparsed"] == predictions.count(None)


def test_summary_line_is_llavas_format():
    """LLaVA prints f1, accuracy, precision, recall, yes_ratio with %.3f."""
    m = {"f1": 0.7857142857142857, "accuracy": 0.75, "precision": 0.6875, "recall": 0.9166666666666666,
         "yes_ratio": 2 / 3}
    assert pope_summary_line(m) == "0.786, 0.750, 0.688, 0.917, 0.667"


# --------------------------------------------------------------------------------- files and loaders

POPE_QUESTIONS = [{"question_id": i, "image": "a.jpg", "text": "?", "label": label}
                  for i, label in enumerate(["yes", "yes", "no", "no", "no", "no"], start=1)]
POPE_ANSWERS = [  # out of order: matched by question_id
    {"question_id": 6, "text": "no"},
    {"question_id": 1, "text": "Yes, there is."},
    {"question_id": 2, "text": "There is a dog."},
    {"question_id": 3, "answer": "No."},
    {"question_id": 4, "text": "I do not think so"},
    {"question_id": 5, "text": "Yes"},
]


def test_pope_files(tmp_path):
    for split in ("random", "adversarial"):
        write_lines(tmp_path / f"coco_pope_{split}.json", POPE_QUESTIONS)
    files = find_pope_files(tmp_path)
    assert sorted(files) == ["adversarial", "random"]
    assert load_pope_questions(files["random"]) == POPE_QUESTIONS
    (tmp_path / "gqa_pope_random.json").write_text("")
    with pytest.raises(ValueError, match="several"):
        find_pope_files(tmp_path)
    assert find_pope_files(tmp_path, dataset="coco")["random"].name == "coco_pope_random.json"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        find_pope_files(tmp_path / "empty")
    write_lines(tmp_path / "bad_pope_random.json", [{"question_id": 1, "text": "?"}])
    with pytest.raises(ValueError, match=r"record 0 lacks \['image', 'label'\]"):
        load_pope_questions(tmp_path / "bad_pope_random.json")


def test_aoidragon_answers_pair_by_position(tmp_path):
    labels = write_lines(tmp_path / "coco_pope_random.json", POPE_QUESTIONS)
    answers = write_lines(tmp_path / "answers.json", [{"question": "?", "answer": f"a{i}"} for i in range(6)])
    assert load_pope_predictions(answers, labels) == [f"a{i}" for i in range(6)]
    assert load_pope_predictions(answers, POPE_QUESTIONS) == [f"a{i}" for i in range(6)]
    short = write_lines(tmp_path / "short.json", [{"question": "?", "answer": "yes"}] * 5)
    with pytest.raises(ValueError, match=r"short\.json has 5 answers but label file .*coco_pope_random\.json "
                                         r"has 6 questions"):
        load_pope_predictions(short, labels)


def test_llava_answers_match_by_question_id(tmp_path):
    """One answers file may cover several splits: each label line takes the answer with its id."""
    labels = write_lines(tmp_path / "coco_pope_random.json", POPE_QUESTIONS[:3])
    answers = write_lines(tmp_path / "answers.jsonl", POPE_ANSWERS)
    assert load_pope_predictions(answers, labels) == ["Yes, there is.", "There is a dog.", "No."]
    with pytest.raises(ValueError, match=r"3 questions of the given labels have no answer .*"
                                         r"question_id \[11, 12, 13\]"):
        load_pope_predictions(answers, [{**q, "question_id": q["question_id"] + 10} for q in POPE_QUESTIONS[:3]])
    twice = write_lines(tmp_path / "twice.jsonl", [*POPE_ANSWERS, {"question_id": 6, "text": "yes"}])
    with pytest.raises(ValueError, match="record 7: question_id 6 answered twice"):
        load_pope_predictions(twice, labels)


def test_llava_pairing_through_the_question_file(tmp_path):
    """With LLaVA's question file, the answers of category == split are paired by position (LLaVA's
    own rule); the split comes from the label file's name."""
    labels = write_lines(tmp_path / "coco_pope_popular.json", POPE_QUESTIONS[:2])
    questions = write_lines(tmp_path / "q.jsonl", [{**q, "category": "popular" if q["question_id"] < 3 else "random"}
                                                   for q in POPE_QUESTIONS])
    answers = write_lines(tmp_path / "a.jsonl", [{"question_id": i, "text": f"t{i}"} for i in (3, 2, 1, 4)])
    assert load_pope_predictions(answers, labels, questions=questions) == ["t2", "t1"]   # LLaVA: by position
    assert load_pope_predictions(answers, labels) == ["t1", "t2"]                         # by question_id
    with pytest.raises(ValueError, match="split="):
        load_pope_predictions(answers, POPE_QUESTIONS[:2], questions=questions)
    assert load_pope_predictions(answers, POPE_QUESTIONS[:2], questions=questions, split="popular") == ["t2", "t1"]
    with pytest.raises(ValueError, match="2 answers of category 'random'"):
        load_pope_predictions(answers, POPE_QUESTIONS[:3], questions=questions, split="random")


@pytest.mark.parametrize(("rows", "message"), [
    ([{"question": "?", "answer": "yes"}, {"question_id": 2, "text": "no"}], "mixes formats: record 1 is 'by_position', "
                                                                            "record 2 is 'by_id'"),
    ([{"question": "?", "answer": "yes"}, {"question": "?", "response": "no"}], "record 2: neither AoiDragon"),
    ([{"question_id": 1, "prompt": "?"}], "record 1: neither"),
    (["yes"], "record 1: neither"),
    ([{"question_id": 1, "text": None}], "record 1: 'text' is not a string"),
])
def test_unknown_or_mixed_answer_formats_name_the_line(tmp_path, rows, message):
    answers = write_lines(tmp_path / "answers.jsonl", rows)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_pope_predictions(answers, POPE_QUESTIONS[:len(rows)])


# ------------------------------------------------------------------------------------------- scoring


def test_score_pope_split_hand_computed():
    """Labels: q1, q2 yes; q3..q6 no (the *labels'* yes share is 2/6).

    Reference rule: answers read yes, yes, no, no, yes, no ->
        TP = 2 (q1, q2), FN = 0, FP = 1 (q5), TN = 3 (q3, q4, q6)
        accuracy 5/6, precision 2/3, recall 1, F1 = 2 * (2/3) / (2/3 + 1) = 0.8
        yes_ratio = predicted yes / all = 3/6 = 0.5 (from predictions, not the labels' 1/3)
        unclear (first word not yes/no) = 2 (q2, q4)
    Strict rule: yes, None, no, None, yes, no ->
        TP = 1, FN = 1 (q2 unparsed), FP = 1 (q5), TN = 2 (q3, q6); q4 is neither
        accuracy 3/6, precision 1/2, recall 1/2, F1 1/2, yes_ratio 2/6, unparsed 2
    """
    ref = score_pope({"random": POPE_ANSWERS}, {"random": POPE_QUESTIONS})
    assert ref["parsing"] == "reference"
    assert ref["random"] == pytest.approx({
        "accuracy": 5 / 6, "precision": 2 / 3, "recall": 1.0, "f1": 0.8, "yes_ratio": 0.5,
        "TP": 2, "FP": 1, "TN": 3, "FN": 0, "n": 6, "unparsed": 0, "unclear": 2,
        "summary_line": "0.800, 0.833, 0.667, 1.000, 0.500"})
    strict = score_pope({"random": POPE_ANSWERS}, {"random": POPE_QUESTIONS}, "strict")["random"]
    assert {k: strict[k] for k in ("TP", "FP", "TN", "FN", "unparsed")} == \
        {"TP": 1, "FP": 1, "TN": 2, "FN": 1, "unparsed": 2}
    assert (strict["accuracy"], strict["f1"], strict["yes_ratio"]) == pytest.approx((0.5, 0.5, 2 / 6))


def test_score_pope_splits_and_means():
    """random = the split above (F1 0.8); popular = all answered "yes" (strings, in label order):
    TP 2, FP 4 -> precision 1/3, recall 1, F1 0.5, accuracy 1/3, yes_ratio 1. mean/f1 = (0.8 + 0.5) / 2."""
    out = score_pope({"random": POPE_ANSWERS, "popular": ["yes"] * 6},
                     {"random": POPE_QUESTIONS, "popular": POPE_QUESTIONS})
    assert set(out) == {"random", "popular", "mean", "parsing"}
    assert out["popular"]["f1"] == pytest.approx(0.5) and out["popular"]["yes_ratio"] == 1.0
    assert set(out["mean"]) == set(POPE_RATES)
    assert out["mean"]["f1"] == pytest.approx(0.65)
    assert out["mean"]["accuracy"] == pytest.approx((5 / 6 + 1 / 3) / 2)
    with pytest.raises(ValueError, match="no answer"):
        score_pope({"random": POPE_ANSWERS[:3]}, {"random": POPE_QUESTIONS})
    with pytest.raises(ValueError, match="5 answers but 6 questions"):
        score_pope({"random": ["yes"] * 5}, {"random": POPE_QUESTIONS})
    with pytest.raises(ValueError, match="no POPE predictions for split 'popular'"):
        score_pope({"random": POPE_ANSWERS}, {"popular": POPE_QUESTIONS})


def test_run_pope_answers_with_the_generator(tmp_path, monkeypatch):
    """A stand-in generator answers "No, there is not." to odd question ids and "Yes" otherwise."""
    write_lines(tmp_path / "coco_pope_random.json", POPE_QUESTIONS)
    write_lines(tmp_path / "coco_pope_popular.json", POPE_QUESTIONS)
    seen = []

    def generate(model, processor, images, prompts, **kwargs):
        seen.append((list(images), list(prompts), kwargs))
        return ["No, there is not." if i % 2 else "Yes" for i in range(len(prompts))]

    monkeypatch.setattr(generation, "generate_responses", generate)
    out = run_pope(None, None, tmp_path, tmp_path / "img", prompt_suffix=" Answer.", limit=4, batch_size=2)
    images, prompts, kwargs = seen[0]
    assert prompts == ["? Answer."] * 8 and images[0] == tmp_path / "img" / "a.jpg"
    assert kwargs["batch_size"] == 2 and kwargs["max_new_tokens"] == 8
    # per split: labels yes yes no no, read yes no yes no -> TP 1, FN 1, FP 1, TN 1
    for split in ("random", "popular"):
        assert (out[split]["TP"], out[split]["FN"], out[split]["FP"], out[split]["TN"]) == (1, 1, 1, 1)
        assert [p["question_id"] for p in out["predictions"][split]] == [1, 2, 3, 4]
    assert out["predictions"]["random"][1] == {"question_id": 2, "prompt": "? Answer.", "text": "No, there is not."}
    assert out["parsing"] == "reference" and out["mean"]["accuracy"] == 0.5


# -------------------------------------------------------------------- golden: the reference outputs


def golden_per_answer() -> list[dict]:
    return [json.loads(line) for line in (GOLDEN / "per_answer.jsonl").read_text().splitlines()]


def golden_aggregates() -> dict:
    return json.loads((GOLDEN / "aggregates.json").read_text())


def test_golden_every_answer_reads_as_both_references():
    rows = golden_per_answer()
    assert len(rows) == 216
    for row in rows:
        ours = parse_pope_answer(row["answer"])
        assert ours == row["aoidragon_parse"] == row["llava_parse"], row


def assert_matches(ours: dict, reference: dict) -> None:
    for key, value in reference.items():
        if isinstance(value, int):
            assert ours[key] == value, key
        else:
            assert ours[key] == pytest.approx(value, abs=1e-9, rel=0), key


def test_golden_aoidragon_aggregates_through_the_loader():
    labels = {s: load_pope_questions(label_file(s)) for s in SPLITS}
    answers = {s: load_pope_predictions(GOLDEN / f"aoi_answers_{s}.json", label_file(s)) for s in SPLITS}
    per_answer = golden_per_answer()
    for split in SPLITS:   # the loader pairs line k with line k, as AoiDragon does
        assert answers[split] == [r["answer"] for r in per_answer if r["split"] == split]
    out = score_pope(answers, labels)
    reference = golden_aggregates()
    for split in SPLITS:
        assert_matches(out[split], reference["aoidragon"][split])
        assert out[split]["summary_line"] == reference["llava_summary_line"][split]


@pytest.mark.parametrize("through_questions", [False, True])
def test_golden_llava_aggregates_through_the_loader(through_questions):
    """LLaVA's single answers file, read by question_id and by LLaVA's category pairing alike."""
    questions = GOLDEN / "llava_questions.jsonl" if through_questions else None
    labels = {s: load_pope_questions(label_file(s)) for s in SPLITS}
    answers = {s: load_pope_predictions(GOLDEN / "llava_answers.jsonl", label_file(s), questions=questions)
               for s in SPLITS}
    out = score_pope(answers, labels)
    reference = golden_aggregates()
    for split in SPLITS:
        assert_matches(out[split], reference["llava"][split])
        assert out[split]["summary_line"] == reference["llava_summary_line"][split]
    for key in POPE_RATES:
        assert out["mean"][key] == pytest.approx(sum(reference["llava"][s][key] for s in SPLITS) / 3, abs=1e-12)


def test_golden_lenient_reading_differs_from_the_reference():
    """mmpo's earlier lower-cased, whitespace-split reading changes answers such as "NO", "Not at
    all." and "No\\n" from yes to no, so its numbers are not the published ones."""
    rows = golden_per_answer()
    changed = [r for r in rows if parse_pope_answer(r["answer"], "lenient") != r["aoidragon_parse"]]
    assert changed and all(r["aoidragon_parse"] == "yes" for r in changed)
