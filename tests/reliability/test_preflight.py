"""Records that used to fail mid-run (at collate time, after steps had trained) are found before step 1."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import AutoProcessor

from mmpo.data.collator import PreferenceCollator, PreferenceDataset, RowEncoder
from mmpo.data.preflight import bound_max_length, model_max_positions, placeholder_tokens, preflight
from mmpo.data.records import RecordValidationError
from mmpo.scoring.sentences import RuleSplitter
from mmpo.toyworld.families import build_family


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    return AutoProcessor.from_pretrained(tiny_checkpoint)


def test_a_prompt_too_long_for_max_length_is_a_bad_record_before_training(processor, tiny_records):
    records = list(tiny_records[:3])
    records[1] = dataclasses.replace(records[1], prompt="describe the image . " * 40)
    collator = PreferenceCollator(RowEncoder(processor, max_length=120))
    with pytest.raises(RecordValidationError) as caught:
        preflight(records, collator, progress=False)
    assert (caught.value.error.index, caught.value.error.field) == (1, "prompt")
    assert "max_length=120" in str(caught.value)
    result = preflight(records, collator, on_error="skip", progress=False)
    assert [r.id for r in result.records] == [records[0].id, records[2].id] and len(result.errors) == 1


def test_a_huge_response_is_bounded_by_the_model_positions(processor, tiny_records, tiny_checkpoint):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint)
    record = dataclasses.replace(tiny_records[0], chosen="a red square . " * 10_000)  # ~150k characters
    collator = PreferenceCollator(RowEncoder(processor))  # no max_length: before, every token was encoded
    positions = model_max_positions(model)
    assert positions == 256
    bound_max_length(collator, positions)
    with pytest.warns(UserWarning, match="truncated"):
        batch = collator([PreferenceDataset([record])[0]])
    assert batch["model_inputs"]["input_ids"].shape[1] <= positions


def test_a_sentence_score_count_that_does_not_fit_is_found_at_preflight(processor, tiny_records):
    records = [dataclasses.replace(r, chosen_sentence_scores=[0.5] * len(RuleSplitter().split(r.chosen)))
               for r in tiny_records[:3]]
    records[2] = dataclasses.replace(records[2], chosen_sentence_scores=[0.5] * 9)
    collator = PreferenceCollator(RowEncoder(processor), sentence_splitter=RuleSplitter(), need_sentence_scores=True)
    result = preflight(records, collator, on_error="skip", progress=False)
    assert len(result.records) == 2
    (error,) = result.errors
    assert (error.index, error.field) == (2, "chosen_sentence_scores") and "9 scores" in error.message


def test_missing_data_alpha_is_found_at_preflight(processor, tiny_records):
    collator = PreferenceCollator(RowEncoder(processor), need_data_alpha=True)
    with pytest.raises(RecordValidationError, match="field 'data_alpha': missing"):
        preflight(list(tiny_records[:2]), collator, progress=False)


def test_the_processors_own_placeholder_tokens_are_rejected(tiny_records):
    _, processor = build_family("qwen2_vl")
    tokens = placeholder_tokens(processor)
    assert "<|image_pad|>" in tokens and processor.tokenizer.eos_token not in tokens
    records = [dataclasses.replace(tiny_records[0], chosen="A red <|image_pad|> square."), tiny_records[1]]
    result = preflight(records, PreferenceCollator(RowEncoder(processor)), on_error="skip", progress=False)
    assert [e.field for e in result.errors] == ["chosen"] and "<|image_pad|>" in result.errors[0].message
