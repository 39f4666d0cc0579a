"""The collator: row layout, prompt/image masking, truncation that never cuts image tokens."""

import pytest
from transformers import AutoProcessor

from mmpo.data.collator import PreferenceCollator, PreferenceDataset, RowEncoder, SequenceTooLongError
from mmpo.types import PreferenceRecord


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    return AutoProcessor.from_pretrained(tiny_checkpoint)


def test_rows_are_chosen_then_rejected_and_labels_cover_only_responses(processor, tiny_records):
    ds = PreferenceDataset(tiny_records[:3])
    batch = PreferenceCollator(RowEncoder(processor))([ds[i] for i in range(3)])
    tok = processor.tokenizer
    inputs = batch["model_inputs"]
    assert inputs["input_ids"].shape[0] == 6 and inputs["pixel_values"].shape[0] == 6
    assert batch["record_index"].tolist() == [0, 1, 2]
    for row, text in enumerate([r.chosen for r in tiny_records[:3]] + [r.rejected for r in tiny_records[:3]]):
        s, n = int(batch["response_start"][row]), int(batch["response_length"][row])
        labelled = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert labelled == inputs["input_ids"][row, s : s + n].tolist()
        assert tok.decode(labelled, skip_special_tokens=True) == text
        assert labelled[-1] == tok.eos_token_id
        image_id = tok.convert_tokens_to_ids("<image>")
        assert (inputs["input_ids"][row, :s] == image_id).sum() == 64  # every image token, none labelled


def test_too_long_response_is_truncated_not_the_prompt(processor, tiny_records):
    enc = RowEncoder(processor, max_length=80)
    with pytest.warns(UserWarning, match="truncated"):
        out = enc([tiny_records[0].image], [tiny_records[0].prompt], [tiny_records[0].chosen * 3])
    assert out["model_inputs"]["input_ids"].shape[1] == 80
    assert int(out["response_start"][0]) + int(out["response_length"][0]) == 80
    assert enc.truncated == 1


def test_prompt_that_cannot_fit_names_the_record(processor, tiny_records):
    ds = PreferenceDataset(tiny_records[:2])
    collate = PreferenceCollator(RowEncoder(processor, max_length=40))
    with pytest.raises(SequenceTooLongError, match=r"record #0 \(id 't-000000'\).*image tokens are never truncated"):
        collate([ds[0], ds[1]])


def test_vision_rejected_rows_come_third(processor, tiny_records):
    r0, r1 = tiny_records[:2]
    with_vision = PreferenceRecord(image=r0.image, prompt=r0.prompt, chosen=r0.chosen, rejected=r0.rejected,
                                   rejected_image=r1.image, id="v")
    ds = PreferenceDataset([with_vision, r1])
    batch = PreferenceCollator(RowEncoder(processor), vision_rows=True)([ds[0], ds[1]])
    inputs = batch["model_inputs"]
    assert inputs["input_ids"].shape[0] == 6
    assert batch["vision_mask"].tolist() == [True, False]
    # The vision row of record 0 is the chosen text on the other image.
    assert inputs["input_ids"][4].tolist() == inputs["input_ids"][0].tolist()
    assert not inputs["pixel_values"][4].equal(inputs["pixel_values"][0])
