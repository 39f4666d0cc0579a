"""Self-generated pairs: the pairing rule worked by hand, and sample + judge + journal on the tiny LLaVA."""

import json

import pytest

from mmpo.data.construct.self_pairs import (
    ClaimQuery,
    PairingRule,
    SamplingSettings,
    Verdict,
    build_self_pairs,
    pair_samples,
    rank_responses,
    sample_and_judge,
    samples_path_for,
)
from mmpo.data.items import check_items
from mmpo.data.records import load_records
from mmpo.io import read_jsonl
from mmpo.toyworld.judge import SceneJudge
from mmpo.toyworld.scenes import DESCRIBE_PROMPT, WorldConfig, sample_scenes


def response(text, verdicts):
    """A journal response whose claims are judged ``verdicts`` (True = correct)."""
    return {"text": text, "claims": [{"text": f"c{i}", "correct": v} for i, v in enumerate(verdicts)]}


def write_journal(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def row(item_id, responses, image="img.png"):
    return {"id": item_id, "image": image, "prompt": "describe", "meta": {"k": item_id}, "responses": responses}


# ------------------------------------------------------------------------------------------ ranking
def test_rank_by_wrong_count_then_more_correct():
    responses = [response("a", [True, False]),          # -1, 1 correct
                 response("b", [True, True, False]),    # -1, 2 correct: wins the tie
                 response("c", [True]),                 # 0
                 response("d", [False, False])]         # -2
    assert rank_responses(responses, PairingRule()) == [(2, 0.0), (1, -1.0), (0, -1.0), (3, -2.0)]
    assert rank_responses(responses, PairingRule(tie_break="fewer_claims")) == [(2, 0.0), (0, -1.0), (1, -1.0),
                                                                              (3, -2.0)]
    assert rank_responses(responses, PairingRule(tie_break="first")) == [(2, 0.0), (0, -1.0), (1, -1.0), (3, -2.0)]


def test_wrong_rate_does_not_favour_short_answers():
    responses = [response("short", [False]), response("long", [True, True, True, False])]
    # the count score ties them at -1 (more_correct orders the tie: 'long' first); the rate separates them
    assert rank_responses(responses, PairingRule()) == [(1, -1.0), (0, -1.0)]
    assert rank_responses(responses, PairingRule(score="wrong_rate")) == [(1, -0.25), (0, -1.0)]


def test_rank_drops_repeats_and_empty_responses():
    responses = [response("a  b", [True]), response("a b", [False]), response("x", [])]
    assert rank_responses(responses, PairingRule()) == [(0, 0.0)]


def test_best_vs_worst_pairs_and_the_report(tmp_path):
    journal = write_journal(tmp_path / "p.samples.jsonl", [
        row("i1", [response("good", [True, True]), response("mid", [True, False]), response("bad", [False, False])]),
        row("i2", [response("same1", [True]), response("same2", [True])]),   # all tie
        row("i3", [response("only", [True]), response("only", [False])]),   # repeat dropped -> too few
    ])
    records, report = pair_samples(journal, PairingRule(), meta={"judge": {"judge": "x"}})
    assert [(r.id, r.chosen, r.rejected) for r in records] == [("i1", "good", "bad")]
    assert report.items == 3 and report.written == 1
    assert report.dropped == {"tie": 1, "too_few": 1, "length": 0}
    assert report.chosen_wrong_rate == 0.0 and report.rejected_wrong_rate == 1.0 and report.chosen_with_wrong == 0.0
    assert report.all_wrong_rate == pytest.approx(4 / 10)  # 4 wrong of the 10 claims of every sample
    info = records[0].meta["self_pairs"]
    assert (info["chosen_sample"], info["rejected_sample"], info["chosen_score"], info["rejected_score"]) == (0, 2, 0.0, -2.0)
    assert info["chosen_claims"] == [{"text": "c0", "correct": True}, {"text": "c1", "correct": True}]
    assert records[0].meta["source"] == "self-generated" and records[0].meta["k"] == "i1"
    assert records[0].meta["judge"] == {"judge": "x"}
    assert str(records[0].image) == str(tmp_path / "img.png")  # relative to the journal's folder


def test_all_pairs_widest_gap_first_and_capped(tmp_path):
    journal = write_journal(tmp_path / "p.samples.jsonl", [
        row("i", [response("a", [True]), response("b", [False]), response("c", [False, False])])])
    records, _ = pair_samples(journal, PairingRule(pairs="all"))
    assert [(r.id, r.chosen, r.rejected) for r in records] == [("i#0", "a", "c"), ("i#1", "a", "b"), ("i#2", "b", "c")]
    records, _ = pair_samples(journal, PairingRule(pairs="all", max_pairs_per_item=1))
    assert [(r.chosen, r.rejected) for r in records] == [("a", "c")]


def test_length_rule(tmp_path):
    journal = write_journal(tmp_path / "p.samples.jsonl", [
        row("i", [response("one", [True]), response("one two three four", [False])])])
    assert pair_samples(journal, PairingRule(max_length_ratio=3))[1].dropped["length"] == 1
    assert pair_samples(journal, PairingRule(max_length_ratio=4))[1].written == 1


@pytest.mark.parametrize("kwargs", [{"pairs": "best"}, {"score": "x"}, {"tie_break": "longer"},
                                    {"max_length_ratio": 0.5}, {"max_pairs_per_item": 0}])
def test_bad_rules_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        PairingRule(**kwargs)


@pytest.mark.parametrize("kwargs", [{"n": 1}, {"temperature": 0}, {"temperature": float("nan")}, {"top_p": 0},
                                    {"max_new_tokens": 0}])
def test_bad_sampling_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        SamplingSettings(**kwargs)


def test_bad_items_name_the_item(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"item #1 \(id 'b'\)"):
        check_items([("a", __file__, "p"), ("b", tmp_path / "missing.png", "p")])
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        check_items([("a", __file__, "p"), ("a", __file__, "p")])
    with pytest.raises(ValueError, match="item #0 .*empty prompt"):
        check_items([("a", __file__, " ")])


def test_a_missing_journal_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="sample_and_judge"):
        pair_samples(tmp_path / "none.samples.jsonl")


# ------------------------------------------------------------------------------------------ sample + judge
class RecordingJudge:
    """A test double: judges a claim correct when it has an even number of words, and records every query."""

    def __init__(self):
        self.queries: list[ClaimQuery] = []

    def judge(self, queries):
        self.queries += queries
        return [Verdict(correct=len(q.claim.split()) % 2 == 0, p_correct=0.5) for q in queries]

    def describe(self):
        return {"judge": "RecordingJudge"}


@pytest.fixture
def scene_items():
    scenes = sample_scenes(WorldConfig(seed=5).held_out(seed=6), 5, prefix="s")
    return [(s.id, s.render(), DESCRIBE_PROMPT, {"scene": json.dumps(s.to_dict())}) for s in scenes]


def test_sample_and_judge_journals_every_claim(varied_tiny_vlm, scene_items, tmp_path):
    model, processor = varied_tiny_vlm
    judge = RecordingJudge()
    sampling = SamplingSettings(n=3, max_new_tokens=12, seed=1)
    report = sample_and_judge(model, processor, scene_items, judge, tmp_path / "s.samples.jsonl", sampling=sampling,
                              batch_size=2)
    rows = read_jsonl(tmp_path / "s.samples.jsonl")
    assert [r["id"] for r in rows] == [item[0] for item in scene_items]
    assert report.sampled_items == 5 and report.responses == 15 and report.claims == len(judge.queries)
    for r in rows:
        assert len(r["responses"]) == 3
        for resp in r["responses"]:
            for claim in resp["claims"]:
                assert resp["text"][claim["start"]:claim["end"]] == claim["text"]
                assert claim["correct"] == (len(claim["text"].split()) % 2 == 0)
    assert {q.key.split("/")[0] for q in judge.queries} <= {item[0] for item in scene_items}
    assert all(q.meta["scene"] for q in judge.queries)
    # the same settings give the same samples
    again = sample_and_judge(model, processor, scene_items, RecordingJudge(), tmp_path / "t.samples.jsonl",
                             sampling=sampling, batch_size=2)
    assert again.responses == 15
    assert read_jsonl(tmp_path / "t.samples.jsonl") == rows


def test_resume_after_a_kill_redoes_only_the_lost_items(varied_tiny_vlm, scene_items, tmp_path):
    model, processor = varied_tiny_vlm
    path = tmp_path / "s.samples.jsonl"
    sampling = SamplingSettings(n=2, max_new_tokens=8)
    sample_and_judge(model, processor, scene_items[:3], RecordingJudge(), path, sampling=sampling)
    text = path.read_text()
    path.write_text(text[: len(text) - 40])  # a kill mid-way through the last line
    judge = RecordingJudge()
    report = sample_and_judge(model, processor, scene_items, judge, path, sampling=sampling)
    assert report.repaired_lines == 1 and report.skipped_done == 2 and report.sampled_items == 3
    assert sorted(r["id"] for r in read_jsonl(path)) == sorted(item[0] for item in scene_items)
    with pytest.raises(ValueError, match="other settings"):
        sample_and_judge(model, processor, scene_items, judge, path, sampling=SamplingSettings(n=3))


def test_a_judge_that_loses_verdicts_is_an_error(varied_tiny_vlm, scene_items, tmp_path):
    class Lossy(RecordingJudge):
        def judge(self, queries):
            return super().judge(queries)[1:]

    model, processor = varied_tiny_vlm
    with pytest.raises(RuntimeError, match="Lossy.judge returned"):
        sample_and_judge(model, processor, scene_items, Lossy(), tmp_path / "s.samples.jsonl",
                         sampling=SamplingSettings(n=2, max_new_tokens=8))


def test_build_self_pairs_writes_loadable_records(varied_tiny_vlm, scene_items, tmp_path):
    model, processor = varied_tiny_vlm
    sampled, paired = build_self_pairs(model, processor, scene_items, SceneJudge(), tmp_path / "out" / "pairs.jsonl",
                                       sampling=SamplingSettings(n=4, max_new_tokens=16))
    assert samples_path_for(tmp_path / "out" / "pairs.jsonl").exists()
    loaded = load_records(tmp_path / "out" / "pairs.jsonl").records
    assert len(loaded) == paired.written
    for record in loaded:
        info = record.meta["self_pairs"]
        assert info["chosen_score"] > info["rejected_score"]
        assert record.meta["judge"]["judge"] == "SceneJudge"
        assert (tmp_path / "out" / "images").is_dir() and str(record.image).startswith(str(tmp_path / "out"))
