"""Records with several images: TRL's ``images`` list, mmpo's ``image`` list, a rejected image set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mmpo.data.records import RecordValidationError, load_records, records_to_dataset, save_records
from mmpo.types import PreferenceRecord, prompt_messages, refuse_several_images


@pytest.fixture
def pictures(tmp_path: Path) -> list[str]:
    paths = []
    for i, colour in enumerate(["red", "blue", "green", "white"]):
        Image.new("RGB", (4, 4), colour).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    return paths


def two_image_prompt(text: str = "compare the two images .") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "first"}, {"type": "image"},
                                         {"type": "text", "text": text}]}]


def test_a_trl_record_with_two_images_loads_them_in_order(pictures):
    row = {"images": pictures[:2], "prompt": two_image_prompt(), "chosen": "a red and a blue one .",
           "rejected": "two green ones ."}
    (record,) = load_records([row]).records
    assert record.image == pictures[:2]
    assert record.prompt == two_image_prompt()


def test_one_image_in_a_list_is_that_image(pictures):
    (record,) = load_records([{"images": pictures[:1], "prompt": "q ?", "chosen": "a", "rejected": "b"}]).records
    assert record.image == pictures[0]


def test_a_plain_prompt_takes_every_image_before_its_text():
    assert prompt_messages("q ?", 2) == [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                                      {"type": "text", "text": "q ?"}]}]


@pytest.mark.parametrize(("images", "message"), [
    (1, "the conversation has 2 image parts but the record has 1 image;"),
    (3, "the conversation has 2 image parts but the record has 3 images;"),
])
def test_image_parts_must_match_the_images(pictures, images, message):
    row = {"images": pictures[:images], "prompt": two_image_prompt(), "chosen": "a", "rejected": "b", "id": "r7"}
    with pytest.raises(RecordValidationError, match=r"#0 \(id 'r7'\) field 'prompt': " + message):
        load_records([row])


def test_an_empty_image_list_and_a_missing_second_image_name_the_field(pictures, tmp_path):
    with pytest.raises(RecordValidationError, match=r"field 'images': an empty list of images"):
        load_records([{"images": [], "prompt": "q", "chosen": "a", "rejected": "b"}])
    missing = str(tmp_path / "gone.png")
    with pytest.raises(RecordValidationError, match=r"field 'images': image 2 of 2: image file not found: .*gone.png"):
        load_records([{"images": [pictures[0], missing], "prompt": two_image_prompt(), "chosen": "a",
                       "rejected": "b"}])


def test_the_rejected_image_set_has_one_image_per_image(pictures):
    base = {"image": pictures[:2], "prompt": "compare .", "chosen": "a", "rejected": "b"}
    (record,) = load_records([{**base, "rejected_image": pictures[2:]}]).records
    assert record.rejected_image == pictures[2:]
    with pytest.raises(RecordValidationError, match=r"field 'rejected_image': 1 images for a record with 2"):
        load_records([{**base, "rejected_image": pictures[2]}])


def test_leading_placeholders_one_per_image_are_removed(pictures):
    (record,) = load_records([{"image": pictures[:2], "prompt": "<image>\n<image>\ncompare .", "chosen": "a",
                               "rejected": "b"}]).records
    assert record.prompt == "compare ."
    with pytest.raises(RecordValidationError, match="contains the placeholder '<image>'"):
        load_records([{"image": pictures[0], "prompt": "<image>\n<image>\ncompare .", "chosen": "a",
                       "rejected": "b"}])


def test_several_images_survive_jsonl_and_datasets_round_trips(pictures, tmp_path):
    records = [PreferenceRecord(image=pictures[:2], prompt="compare .", chosen="a", rejected="b", id="two",
                                rejected_image=pictures[2:]),
               PreferenceRecord(image=Image.new("RGB", (4, 4), "black"), prompt="one .", chosen="c", rejected="d",
                                id="one")]
    path = save_records(records, tmp_path / "out" / "records.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert isinstance(lines[0]["image"], list) and len(lines[0]["image"]) == 2
    again = load_records(path).records
    assert again[0].image == pictures[:2] and again[0].rejected_image == pictures[2:]
    assert isinstance(again[1].image, str)

    from_dataset = load_records(records_to_dataset(again)).records
    assert [len(r.image) if isinstance(r.image, list) else 1 for r in from_dataset] == [2, 1]
    assert from_dataset[0].image == pictures[:2] and from_dataset[0].rejected_image == pictures[2:]
    assert from_dataset[1].image == again[1].image


def test_pipelines_that_take_one_image_name_the_record(pictures):
    records = [PreferenceRecord(image=pictures[0], prompt="p", chosen="a", rejected="b", id="a"),
               PreferenceRecord(image=pictures[:2], prompt="p", chosen="a", rejected="b", id="b")]
    with pytest.raises(ValueError, match=r"record #1 \(id 'b'\) field 'image': 2 images; scoring"):
        refuse_several_images(records, "scoring sentences against the image")
