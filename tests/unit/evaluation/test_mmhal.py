"""MMHal-Bench: the reference rating rule, metrics worked by hand, the review-file loader, and every
per-reply reading and aggregate of LLaVA-RLHF's summarize script on the golden fixtures."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mmpo.generation as generation
from mmpo.evaluation.mmhal import (
    MMHAL_QUESTION_TYPES,
    load_mmhal_reviews,
    load_mmhal_template,
    mmhal_judge_prompt,
    mmhal_metrics,
    mmhal_ratings_found,
    parse_mmhal_rating,
    run_mmhal,
    score_mmhal,
    score_mmhal_replies,
)

GOLDEN = Path(__file__).resolve().parents[2] / "fixtures" / "reference" / "mmhal"


# --------------------------------------------------------------------------------------------- rating

# README section 4's verified examples: (reply, reference rating, lenient rating).
RATED = [
    ("Rating: 5", 5, 5), ("rating: 3", 3, 3), ("RATING: 1", 1, 1), ("Overall rating: 4", 4, 4),
    ("Rating: 5\n\nRating: 5", 5, 5),          # the same value twice is one value
    ("Rating: 56", 5, None), ("Rating: 36", 3, None), ("Rating: 10", 1, None),   # only the next digit
    ("Rating: 2.5", 2, 2), ("Rating: 4/6", 4, 4),
]
UNRATED = [  # the reference warns and scores 0
    ("Rating: 7", None), ("Rating: -1", None), ("Rating:4", 4), ("Rating : 3", 3), ("rating:  3", 3),
    ("Rating:\n4", 4), ("Rating:\t4", 4), ("**Rating:** 2", 2), ("Rating: **4**", 4), ("The rating is 4.", None),
    ("Rating: 3\nRating: 3\nRating: 4", None), ("… Rating: 6 (but it could also be Rating: 2)", None),
]


@pytest.mark.parametrize(("reply", "reference", "lenient"), RATED)
def test_reference_reads_one_rating(reply, reference, lenient):
    assert parse_mmhal_rating(reply) == reference
    assert mmhal_ratings_found(reply) == (reference,)
    assert parse_mmhal_rating(reply, "lenient") == lenient


@pytest.mark.parametrize(("reply", "lenient"), UNRATED)
def test_reference_scores_zero_without_exactly_one_rating(reply, lenient):
    assert parse_mmhal_rating(reply) == 0
    assert len(mmhal_ratings_found(reply)) != 1
    assert parse_mmhal_rating(reply, "lenient") == lenient


def test_warning_flags_follow_the_parsing():
    """Reference: a warning for none or several ratings (a real 'Rating: 0' is not one). Lenient:
    a warning for every unparsed (None) reply, which scores 0 as mmpo always did."""
    replies = ["Rating: 0", "Rating:4", "Rating: 56", "nothing"]
    ref = score_mmhal_replies(replies)
    assert [r["rating"] for r in ref["reviews"]] == [0, 0, 5, 0]
    assert [r["warning"] for r in ref["reviews"]] == [False, True, False, True]
    assert ref["n_warnings"] == 2 and ref["parsing"] == "reference"
    lenient = score_mmhal_replies(replies, "lenient")
    assert [r["rating"] for r in lenient["reviews"]] == [0, 4, None, None]
    assert [r["warning"] for r in lenient["reviews"]] == [False, False, True, True]
    assert [r["hallucination"] for r in lenient["reviews"]] == [1, 0, 1, 1]
    assert lenient["n_warnings"] == 2 and lenient["average_score"] == 1.0
    with pytest.raises(ValueError, match="parsing"):
        parse_mmhal_rating("Rating: 1", "strict")


@given(st.text())
def test_rating_is_total(reply):
    assert parse_mmhal_rating(reply) in range(7)
    assert parse_mmhal_rating(reply, "lenient") in (None, *range(7))


@given(st.text(alphabet=st.sampled_from(list("Rating: 0123456789\n*")), max_size=40))
def test_ratings_found_equals_a_regex_restatement(reply):
    """Independent statement: the distinct digits 0-6 right after 'rating: ' in the lower-cased reply."""
    expected = tuple(sorted({int(d) for d in re.findall(r"rating: ([0-6])", reply.lower())}))
    assert mmhal_ratings_found(reply) == expected


# -------------------------------------------------------------------------------------------- metrics


def test_mmhal_metrics_hand_computed():
    """Ratings 6, 2, None, 3 at positions 0-3 (types attribute, adversarial, comparison, counting).
    Scores 6, 2, 0, 3 (None counts 0): average 11/4 = 2.75; hallucination #(< 3) / 4 = 2/4;
    informativeness: adjusted 3, 2, 0, 0 -> mean 5/4, / 3 * 100 = 41.67 %.
    With the records' own types (old mmpo): attribute (6 + 0) / 2 = 3."""
    m = mmhal_metrics([6, 2, None, 3])
    assert (m["average_score"], m["hallucination_rate"], m["n_replies"], m["n_warnings"]) == (2.75, 0.5, 4, 1)
    assert m["informativeness"] == pytest.approx(5 / 4 / 3 * 100)
    assert m["score_per_type"] == {"attribute": 6.0, "adversarial": 2.0, "comparison": 0.0, "counting": 3.0,
                                   "relation": 0.0, "environment": 0.0, "holistic": 0.0, "other": 0.0}
    assert m["n_per_type"] == {"attribute": 1, "adversarial": 1, "comparison": 1, "counting": 1, "relation": 0,
                               "environment": 0, "holistic": 0, "other": 0}
    assert m["printed"]["average_score"] == "2.75" and m["printed"]["hallucination_rate"] == "0.50"
    typed = mmhal_metrics([6, 2, None, 3], ["attribute", "adversarial", "attribute", "counting"])
    assert typed["score_per_type"]["attribute"] == 3.0 and typed["n_per_type"]["attribute"] == 2


def test_question_type_is_position_modulo_eight():
    """Reply 8 is an 'attribute' reply again, whatever it is about."""
    m = mmhal_metrics([6] * 8 + [0])
    assert m["n_per_type"]["attribute"] == 2 and m["score_per_type"]["attribute"] == 3.0
    assert m["n_per_type"]["other"] == 1 and m["printed"]["score_per_type"]["attribute"] == "3.0"


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="0-6"):
        mmhal_metrics([7])
    with pytest.raises(ValueError, match="question types"):
        mmhal_metrics([1, 2], ["attribute"])


@given(st.lists(st.one_of(st.none(), st.integers(0, 6))))
def test_metrics_finite_for_any_ratings(ratings):
    m = mmhal_metrics(ratings)
    values = [m["average_score"], m["hallucination_rate"], m["informativeness"], *m["score_per_type"].values()]
    assert all(math.isfinite(v) for v in values)
    assert 0 <= m["average_score"] <= 6 and 0 <= m["hallucination_rate"] <= 1
    assert 0 <= m["informativeness"] <= 100
    assert sum(m["n_per_type"].values()) == m["n_replies"] == len(ratings)


# -------------------------------------------------------------------------------------------- loaders


def test_load_reviews_in_every_format(tmp_path):
    texts = ["Rating: 1", "Rating: 2", "Rating: 3"]
    (tmp_path / "review.json").write_text(json.dumps(
        [{"choices": [{"message": {"role": "assistant", "content": t}}]} for t in texts]))
    (tmp_path / "plain.json").write_text(json.dumps(texts))
    (tmp_path / "lines.jsonl").write_text("".join(json.dumps({k: t}) + "\n"
                                                  for k, t in zip(("judge_reply", "review", "content"), texts,
                                                                  strict=True)))
    for name in ("review.json", "plain.json", "lines.jsonl"):
        assert load_mmhal_reviews(tmp_path / name) == texts, name
    (tmp_path / "bad.jsonl").write_text('{"judge_reply": "Rating: 1"}\n{"rating": 3}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl, record 1: expected a string"):
        load_mmhal_reviews(tmp_path / "bad.jsonl")
    (tmp_path / "empty_choices.json").write_text(json.dumps([{"choices": []}]))
    with pytest.raises(ValueError, match="record 0"):
        load_mmhal_reviews(tmp_path / "empty_choices.json")


def record(kind, answer):
    return {"question_type": kind, "question_topic": "t", "image_id": "x", "image_src": "https://h/x.jpg",
            "image_content": ["red star"], "question": "what colour is the star ?",
            "gt_answer": "the star is red .", "model_answer": answer}


def test_judge_prompt_carries_the_record():
    prompt = mmhal_judge_prompt(record("attribute", "blue"))
    assert "Image contents: red star" in prompt and "Reference answer: the star is red ." in prompt
    assert "Assistant's answer: blue" in prompt and "Rating: N" in prompt


def test_run_mmhal_generates_then_judges(tmp_path, monkeypatch):
    (tmp_path / "template.json").write_text(json.dumps([record(t, "") for t in MMHAL_QUESTION_TYPES[:3]]))
    monkeypatch.setattr(generation, "generate_responses",
                        lambda model, processor, images, prompts, **kw: [f"answer {i}" for i in range(len(prompts))])
    prompts = []

    def judge(prompt):
        prompts.append(prompt)
        return "Rating: 4"

    out = run_mmhal(None, None, tmp_path / "template.json", tmp_path, judge, limit=2)
    assert out["n_replies"] == len(prompts) == 2 and out["average_score"] == 4.0
    assert out["hallucination_rate"] == 0.0 and out["informativeness"] == pytest.approx(100 / 3)
    assert [p["model_answer"] for p in out["predictions"]] == ["answer 0", "answer 1"]
    assert "Assistant's answer: answer 1" in prompts[1]
    assert len(load_mmhal_template(tmp_path / "template.json")) == 3


# ------------------------------------------------------------------ golden: LLaVA-RLHF's outputs


def golden_aggregates() -> dict:
    return json.loads((GOLDEN / "aggregates.json").read_text())


def golden_per_reply() -> list[dict]:
    return [json.loads(line) for line in (GOLDEN / "per_reply.jsonl").read_text().splitlines()]


def assert_golden(out: dict) -> None:
    reference = golden_aggregates()
    assert out["n_replies"] == reference["n_replies"] and out["n_warnings"] == reference["n_warnings"]
    assert out["average_score"] == pytest.approx(reference["average_score"], abs=1e-9, rel=0)
    assert out["hallucination_rate"] == pytest.approx(reference["hallucination_rate"], abs=1e-9, rel=0)
    assert out["informativeness"] == pytest.approx(reference["rlaifv_informativeness_percent"], abs=1e-9, rel=0)
    assert list(out["score_per_type"]) == list(reference["score_per_type"]) == list(MMHAL_QUESTION_TYPES)
    for kind, score in reference["score_per_type"].items():
        assert out["score_per_type"][kind] == pytest.approx(score, abs=1e-9, rel=0), kind
    assert out["n_per_type"] == reference["n_per_type"]
    assert out["printed"] == reference["printed"]


def test_golden_every_reply_reads_as_the_reference():
    replies = load_mmhal_reviews(GOLDEN / "evaluation.json")
    assert replies == json.loads((GOLDEN / "judge_replies.json").read_text())
    reviews = score_mmhal_replies(replies)["reviews"]
    per_reply = golden_per_reply()
    assert len(reviews) == len(per_reply) == 56
    for ours, ref in zip(reviews, per_reply, strict=True):
        assert ours["review"] == ref["judge_reply"]
        assert ours["rating"] == ref["rating"], ref
        assert ours["warning"] == ref["warning_none_or_several"], ref
        assert ours["hallucination"] == ref["hallucination"], ref
        assert ours["question_type"] == ref["question_type"]        # position modulo 8


def test_golden_aggregates_through_the_loader():
    assert_golden(score_mmhal_replies(load_mmhal_reviews(GOLDEN / "evaluation.json")))
    assert_golden(score_mmhal_replies(load_mmhal_reviews(GOLDEN / "judge_replies.json")))


def test_golden_aggregates_through_a_judge():
    """The golden replies, handed out in order by a stand-in judge for the golden answered records
    (corner cases on purpose: 9 of 20 hold no single rating, so the unparsed-reply limit is lifted)."""
    replies = iter(load_mmhal_reviews(GOLDEN / "evaluation.json"))
    responses = load_mmhal_template(GOLDEN / "responses.json")
    out = score_mmhal(responses, lambda prompt: next(replies), max_unparsed=1.0)
    assert_golden(out)
    assert [r["record_question_type"] for r in out["reviews"]] == [r["question_type"] for r in out["reviews"]]


def test_golden_lenient_reading_differs_from_the_reference():
    """mmpo's older regex reads 'Rating:4' or '**Rating:** 2' as ratings the reference scores 0."""
    replies = load_mmhal_reviews(GOLDEN / "evaluation.json")
    lenient = score_mmhal_replies(replies, "lenient")
    assert lenient["parsing"] == "lenient"
    assert lenient["average_score"] != pytest.approx(golden_aggregates()["average_score"])
