"""Offline sentence scores and DAMA's alpha_D, hand-worked with a stand-in scorer."""

import math

import pytest
import torch

from mmpo.data.construct.sentence_scores import score_sentences
from mmpo.methods.dama import dama_data_alpha
from mmpo.scoring.sentences import RuleSplitter
from mmpo.types import PreferenceRecord


class LengthScorer:
    """Test stand-in for a CLIP scorer: a sentence's score is its word count / 10; an image named
    'broken' cannot be scored."""

    def __init__(self):
        self.calls = 0

    def score(self, images, texts):
        self.calls += 1
        if any(i == "broken" for i in images):
            raise OSError("cannot identify image file 'broken'")
        return torch.tensor([len(t.split()) / 10 for t in texts])


def record(i, chosen, rejected, image="ok"):
    return PreferenceRecord(image=image, prompt="describe .", chosen=chosen, rejected=rejected, id=f"r{i}")


def test_scores_delta_bar_and_alpha_hand_worked():
    """Record 0: chosen 'a b c .' (4 words -> 0.4), rejected 'a b .' (0.3).
    softmax([0.4, 0.3]) = [0.52498, 0.47502] -> delta_0 = 0.049958.
    Record 1: chosen 'a b . c d e .' -> [0.3, 0.4]; rejected 'a .' -> [0.2];
    softmax([0.3, 0.4, 0.2]) = [0.32197, 0.35584, 0.29135] ... delta_1 = 0.67781 - 0.29135 = 0.38646 (approx).
    delta_bar = mean; alpha_D = sigmoid(delta) / sigmoid(delta_bar)."""
    records = [record(0, "a b c .", "a b ."), record(1, "a b . c d e .", "a .")]
    out, report = score_sentences(records, LengthScorer(), RuleSplitter(), dama_scores="cosine")
    assert report.scored == 2 and not report.skipped
    assert out[0].chosen_sentence_scores == pytest.approx([0.4]) and out[0].rejected_sentence_scores == pytest.approx([0.3])
    assert out[1].chosen_sentence_scores == pytest.approx([0.3, 0.4])
    e = [math.exp(v) for v in (0.3, 0.4, 0.2)]
    delta1 = (e[0] + e[1] - e[2]) / sum(e)
    delta0 = math.tanh(0.05)  # softmax of two scores 0.1 apart: p_w - p_l = tanh(0.1 / 2)
    assert out[0].meta["dama_delta"] == pytest.approx(delta0, rel=1e-6)
    assert out[1].meta["dama_delta"] == pytest.approx(delta1, rel=1e-6)
    bar = (delta0 + delta1) / 2
    assert report.delta_bar == pytest.approx(bar)

    def sig(x):
        return 1 / (1 + math.exp(-x))

    assert out[0].data_alpha == pytest.approx(sig(delta0) / sig(bar))
    assert out[1].data_alpha == pytest.approx(sig(delta1) / sig(bar))
    assert out[0].data_alpha < 1 < out[1].data_alpha  # record 1 is the easier pair


def test_ratio_mode_is_the_ratio_of_sums():
    out, _ = score_sentences([record(0, "a b c .", "a b .")], LengthScorer(), RuleSplitter(), dama_mode="ratio",
                             logit_scale=100.0)
    assert out[0].meta["dama_delta"] == pytest.approx(0.4 / 0.3)  # the scale cancels in the ratio


class ScaledLengthScorer(LengthScorer):
    """LengthScorer with a CLIP-like logit scale, as :class:`~mmpo.scoring.clip.CLIPScorer` has."""

    logit_scale = 20.0


def test_delta_is_a_softmax_over_clip_logits():
    """CLIP as a classifier: the softmax runs over cosine x logit scale. Record 0 as above at scale 20:
    logits [8, 6], delta = tanh(2 / 2) = 0.761594 (the raw cosines gave tanh(0.05) = 0.049958). The
    stored scores stay cosines; meta keeps the scale, so alpha_D can be recomputed without CLIP."""
    out, report = score_sentences([record(0, "a b c .", "a b ."), record(1, "a .", "a b c d e f .")],
                                  ScaledLengthScorer(), RuleSplitter())
    assert out[0].chosen_sentence_scores == pytest.approx([0.4])
    assert out[0].meta["dama_delta"] == pytest.approx(math.tanh(1.0), rel=1e-6)
    assert out[1].meta["dama_delta"] == pytest.approx(math.tanh(-5.0), rel=1e-6)  # logits [2, 12]
    assert (out[0].meta["dama_scores"], out[0].meta["dama_logit_scale"], report.logit_scale) == ("logits", 20.0, 20.0)
    assert "cosine x 20" in report.summary()
    # An explicit scale wins over the scorer's; a given delta_bar is used as it is.
    out, report = score_sentences([record(0, "a b c .", "a b .")], ScaledLengthScorer(), RuleSplitter(),
                                  logit_scale=10.0, delta_bar=0.0482190464911681)
    assert out[0].meta["dama_delta"] == pytest.approx(math.tanh(0.5), rel=1e-6)
    assert report.delta_bar == out[0].meta["dama_delta_bar"] == 0.0482190464911681
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert out[0].data_alpha == pytest.approx(sig(math.tanh(0.5)) / sig(0.0482190464911681))


def test_logits_need_a_scale_and_bad_settings_are_refused():
    with pytest.raises(ValueError, match="logit_scale"):
        score_sentences([record(0, "a .", "b .")], LengthScorer(), RuleSplitter())
    for kwargs, match in (({"logit_scale": 0.0}, "logit_scale"), ({"logit_scale": math.nan}, "logit_scale"),
                          ({"dama_scores": "probs"}, "dama_scores"), ({"delta_bar": math.inf}, "delta_bar")):
        with pytest.raises(ValueError, match=match):
            score_sentences([record(0, "a .", "b .")], ScaledLengthScorer(), RuleSplitter(), **kwargs)


def test_unscorable_records_are_reported_by_index_and_reason_and_the_rest_kept():
    records = [record(0, "a b c .", "a b ."), record(1, "x y .", "z .", image="broken"), record(2, "a .", "   "),
               record(3, "p q r s .", "p .")]
    out, report = score_sentences(records, ScaledLengthScorer(), RuleSplitter())
    assert [r.id for r in out] == ["r0", "r3"]
    reasons = {i: why for i, _, why in report.skipped}
    assert set(reasons) == {1, 2}
    assert "cannot be scored" in reasons[1] and "broken" in reasons[1]
    assert "field 'rejected': no sentence" in reasons[2]
    assert "scored 2 of 4 records" in report.summary() and "#1 (id 'r1')" in report.summary()


def test_cli_reads_clips_logit_scale_and_takes_a_delta_bar(tmp_path, tiny_records, capsys):
    """``mmpo score-sentences --clip toyworld`` (the shipped tiny CLIP): alpha_D from the softmax over
    cosine x the checkpoint's logit scale, a given delta_bar used as it is; ``--dama-scores cosine``
    is the raw reading (scale 1)."""
    from mmpo.cli.main import main
    from mmpo.data.records import load_records, save_records

    records = save_records(tiny_records, tmp_path / "in.jsonl")
    common = ["score-sentences", "--input", str(records), "--clip", "toyworld", "--cache-dir", str(tmp_path / "cache"),
              "--no-progress"]
    assert main([*common, "--output", str(tmp_path / "logits.jsonl"), "--delta-bar", "0.0482190464911681"]) == 0
    assert main([*common, "--output", str(tmp_path / "cosine.jsonl"), "--dama-scores", "cosine"]) == 0
    logits = load_records(tmp_path / "logits.jsonl").records
    cosine = load_records(tmp_path / "cosine.jsonl").records
    assert len(logits) == len(cosine) == len(tiny_records)
    scale = logits[0].meta["dama_logit_scale"]
    assert 1 < scale <= 100 and cosine[0].meta["dama_logit_scale"] == 1.0
    assert {r.meta["dama_delta_bar"] for r in logits} == {0.0482190464911681}
    for a, b in zip(logits, cosine, strict=True):
        assert a.chosen_sentence_scores == b.chosen_sentence_scores  # cosines either way
        recomputed = dama_data_alpha(a.chosen_sentence_scores, a.rejected_sentence_scores, 0.0482190464911681,
                                     scale=scale)
        assert a.data_alpha == pytest.approx(recomputed, rel=1e-9)  # alpha_D from the record alone
    assert "cosine x" in capsys.readouterr().out
