"""Records that used to fail mid-run (at collate time, after steps had trained) are found before step 1."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import AutoProcessor

from mmpo.data.collator import PreferenceCollator, PreferenceDataset, RowEncoder
from mmpo.data.preflight import bound_max_length, model_max_positions, placeholder_tokens, preflight
from mmpo.data.records import RecordValidationError
from mmpo.scoring.sentences import RuleSplitter
from mmpo.testing.families import build_family


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    return AutoProcessor.from_pretrained(tiny_checkpoint)


def test_a_prompt_too_long_for_max_length_is_a_bad_record_before_training(processor, tiny_records):
    records = list(tiny_records[:3])
    records[1] = dataclasses.replace(records[1], prompt="describe the image . " * 40)
    collator = PreferenceCollator(RowEncoder(processor, max_length=120))
    with pytest.raises(RecordValidationError) as caught:
        preflight(records, collator)
    assert (caught.value.error.index, caught.value.error.field) == (1, "prompt")
    assert "max_length=120" in str(caught.value)
    result = preflight(records, collator, on_error="skip")
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
    result = preflight(records, collator, on_error="skip")
    assert len(result.records) == 2
    (error,) = result.errors
    assert (error.index, error.field) == (2, "chosen_sentence_scores") and "9 scores" in error.message


def test_missing_data_alpha_is_found_at_preflight(processor, tiny_records):
    collator = PreferenceCollator(RowEncoder(processor), need_data_alpha=True)
    with pytest.raises(RecordValidationError, match="field 'data_alpha': missing"):
        preflight(list(tiny_records[:2]), collator)


def test_the_processors_own_placeholder_tokens_are_rejected(tiny_records):
    _, processor = build_family("qwen2_vl")
    tokens = placeholder_tokens(processor)
    assert "<|image_pad|>" in tokens and processor.tokenizer.eos_token not in tokens
    records = [dataclasses.replace(tiny_records[0], chosen="A red <|image_pad|> square."), tiny_records[1]]
    result = preflight(records, PreferenceCollator(RowEncoder(processor)), on_error="skip")
    assert [e.field for e in result.errors] == ["chosen"] and "<|image_pad|>" in result.errors[0].message


def test_an_image_that_verifies_but_does_not_decode_is_a_bad_record(processor, tiny_records, tmp_path):
    """A JPEG cut in half passes load_records' verify(); preflight used to die with a bare OSError."""
    import numpy as np
    import PIL.Image

    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    PIL.Image.fromarray(noise).save(tmp_path / "whole.jpg", quality=90)
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    records = [tiny_records[0], dataclasses.replace(tiny_records[1], image=str(tmp_path / "cut.jpg"))]
    collator = PreferenceCollator(RowEncoder(processor))
    with pytest.raises(RecordValidationError) as caught:
        preflight(records, collator)
    assert (caught.value.error.index, caught.value.error.field) == (1, "image")
    assert "truncated" in str(caught.value)
    result = preflight(records, collator, on_error="skip")
    assert [r.id for r in result.records] == [records[0].id]


def test_skipping_every_record_is_an_error_not_an_empty_run(processor, tiny_records):
    collator = PreferenceCollator(RowEncoder(processor), need_data_alpha=True)
    with pytest.raises(ValueError, match="none of the 2 training records can be trained"):
        preflight(list(tiny_records[:2]), collator, on_error="skip")


def test_truncated_responses_are_counted_and_reported(processor, tiny_records, caplog):
    records = [dataclasses.replace(tiny_records[0], chosen="a red square . " * 100), tiny_records[1]]
    collator = PreferenceCollator(RowEncoder(processor, max_length=120))
    with pytest.warns(UserWarning, match="truncated"):
        preflight(records, collator)
    assert "1 of 2 records have a response longer than the token budget of 120" in caplog.text


def test_a_record_found_bad_at_preflight_is_named_by_its_file_and_row(processor, tiny_records, tmp_path):
    """Records read from shards keep where they came from: a prompt too long for the token budget,
    found only when encoded, is named by its index in the whole source, its shard and its row there,
    also after a record skipped on load."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmpo.data.records import load_records

    def shard(records, name):
        pq.write_table(pa.table({"image": [r.image for r in records], "prompt": [r.prompt for r in records],
                                 "chosen": [r.chosen for r in records], "rejected": [r.rejected for r in records],
                                 "id": [r.id for r in records]}), tmp_path / name)

    first, second = list(tiny_records[:3]), list(tiny_records[3:6])
    first[0] = dataclasses.replace(first[0], chosen="")  # bad on load: skipped
    second[1] = dataclasses.replace(second[1], prompt="describe the image . " * 40)  # bad at preflight
    shard(first, "part-0.parquet")
    shard(second, "part-1.parquet")
    loaded = load_records(tmp_path, on_error="skip")
    assert len(loaded.records) == 5 and len(loaded.origins) == 5
    dataset = PreferenceDataset(loaded.records, loaded.origins)
    collator = PreferenceCollator(RowEncoder(processor, max_length=120))
    with pytest.raises(RecordValidationError) as caught:
        preflight(dataset.records, collator, origins=dataset.origins)
    error = caught.value.error
    assert (error.index, error.row, error.field) == (4, 1, "prompt") and error.file.endswith("part-1.parquet")
    assert f"#4 ({error.file} row 1, id '{second[1].id}') field 'prompt'" in str(caught.value)
    kept = preflight(dataset.records, collator, origins=dataset.origins, on_error="skip")
    assert [o["index"] for o in kept.origins] == [1, 2, 3, 5]
