"""Records that used to pass load, or crash it, and now are bad records with index and field."""

from __future__ import annotations

import json
from pathlib import Path

import PIL.Image
import pytest

from mmpo.data.records import RecordValidationError, load_records


@pytest.fixture
def image(tmp_path: Path) -> str:
    path = tmp_path / "scene.png"
    PIL.Image.new("RGB", (16, 16), (10, 200, 10)).save(path)
    return str(path)


def row(image: str, index: int, **fields) -> dict:
    return {"id": f"r{index}", "image": image, "prompt": "What is it?", "chosen": "A green square.",
            "rejected": "A red circle.", **fields}


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_a_line_that_is_not_utf8_is_one_bad_record_with_its_line_number(tmp_path, image):
    bad = json.dumps(row(image, 1)).encode().replace(b"green", b"gr\xffeen")
    source = write_lines(tmp_path / "r.jsonl", [json.dumps(row(image, 0)).encode(), bad,
                                                json.dumps(row(image, 2)).encode()])
    with pytest.raises(RecordValidationError) as caught:
        load_records(source)
    assert caught.value.error.index == 1 and "r.jsonl line 2): the line is not UTF-8" in str(caught.value)
    result = load_records(source, on_error="skip")
    assert [r.id for r in result.records] == ["r0", "r2"] and len(result.errors) == 1


@pytest.mark.parametrize("alpha", [1e300, 1e-300, 1e4, 5e-4])
def test_data_alpha_outside_its_documented_range_is_rejected(image, alpha):
    with pytest.raises(RecordValidationError) as caught:
        load_records([row(image, 0), row(image, 1, data_alpha=alpha)])
    assert caught.value.error.field == "data_alpha" and "[0.001, 1000]" in str(caught.value)


@pytest.mark.parametrize("alpha", [1e-3, 0.37, 2.7, 1e3])
def test_data_alpha_inside_the_range_loads(image, alpha):
    assert load_records([row(image, 0, data_alpha=alpha)]).records[0].data_alpha == alpha


def test_a_leading_image_placeholder_is_removed_and_counted(image):
    rows = [row(image, 0, prompt="<image>\nWhat is it?"), row(image, 1, prompt="  <image> What is it?"),
            row(image, 2),
            row(image, 3, prompt=[{"role": "user", "content": [{"type": "image"},
                                                              {"type": "text", "text": "<image>\nWhat?"}]}])]
    result = load_records(rows)
    assert [r.prompt for r in result.records[:3]] == ["What is it?", "What is it?", "What is it?"]
    assert result.records[3].prompt[0]["content"][1]["text"] == "What?"
    assert result.stripped_placeholders == 3


@pytest.mark.parametrize(("field", "value"), [
    ("prompt", "Look at <image> and answer."),
    ("prompt", "<image>\n<image>\nTwo?"),
    ("chosen", "A green <image> square."),
    ("rejected", "<image> A red circle."),
    ("chosen", "A <video> clip."),
])
def test_a_placeholder_anywhere_else_is_a_bad_record_naming_the_field(image, field, value):
    with pytest.raises(RecordValidationError) as caught:
        load_records([row(image, 0), row(image, 1, **{field: value})])
    assert (caught.value.error.index, caught.value.error.field) == (1, field)
    assert "placeholder" in str(caught.value)


def test_a_directory_given_as_an_image_says_so(tmp_path, image):
    (tmp_path / "photos").mkdir()
    with pytest.raises(RecordValidationError, match="is a directory, not an image file"):
        load_records([row(str(tmp_path / "photos"), 0)])


def test_the_skip_hint_names_the_config_key_users_set(image):
    with pytest.raises(RecordValidationError) as caught:
        load_records([row(image, 0, chosen="")])
    assert "on_bad_record: skip" in str(caught.value) and "on_error='skip'" in str(caught.value)


@pytest.mark.parametrize("prompt", [
    "<image>\n",
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "<image>\n"}]}],
])
def test_a_prompt_that_is_only_the_placeholder_is_an_empty_prompt(image, prompt):
    """The conversational form used to load with an empty question."""
    with pytest.raises(RecordValidationError) as caught:
        load_records([row(image, 0, prompt=prompt)])
    assert caught.value.error.field == "prompt" and "empty prompt" in str(caught.value)
