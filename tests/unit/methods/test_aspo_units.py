"""ASPO's units where the response's token offsets are unknown (a slow tokenizer, or a chat template
that rewrote the response): sentence and token units refuse, naming the record; one response unit
still works."""

from __future__ import annotations

import pytest

from mmpo.methods.aspo.units import chosen_units
from mmpo.scoring.sentences import RuleSplitter
from mmpo.types import PreferenceRecord

RECORD = PreferenceRecord(image="x.png", prompt="describe .", chosen="a red circle . a blue star .", rejected="no .",
                          chosen_sentence_scores=[0.2, 0.6])
UNKNOWN = [(-1, -1)] * 7


@pytest.mark.parametrize("granularity", ["sentence", "token"])
def test_unknown_offsets_refuse_sentence_and_token_units(granularity):
    with pytest.raises(ValueError, match=r"record #3: .*token offsets.*aspo_granularity: response"):
        chosen_units(RECORD, UNKNOWN, "record #3", RuleSplitter(), granularity, need_scores=True)


def test_unknown_offsets_give_one_response_unit_with_the_mean_score():
    assert chosen_units(RECORD, UNKNOWN, "record #3", RuleSplitter(), "response", need_scores=True) == [(0, 7, 0.4)]


def test_known_offsets_give_the_same_response_unit():
    offsets = [(0, 1), (1, 5), (5, 12), (12, 14), (14, 19), (19, 24), (24, 26)]
    assert chosen_units(RECORD, offsets, "r", RuleSplitter(), "response", need_scores=True) == [(0, 7, 0.4)]
