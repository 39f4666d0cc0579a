"""load_records / save_records / records_to_dataset on tiny images made in tmp_path."""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import datasets
import pytest
from PIL import Image

from mmpo.data.records import (
    LoadResult,
    RecordValidationError,
    load_records,
    records_to_dataset,
    save_records,
)
from mmpo.types import PreferenceRecord


def tiny_image(colour: str = "red") -> Image.Image:
    return Image.new("RGB", (4, 4), colour)


def png_bytes(colour: str = "red") -> bytes:
    buffer = io.BytesIO()
    tiny_image(colour).save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(image: Image.Image) -> list:
    return list(image.convert("RGB").getdata())


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "pics" / "red.png"
    path.parent.mkdir()
    tiny_image("red").save(path)
    return path


def native_row(image: str, **changes) -> dict:
    row = {
        "image": image,
        "prompt": "What is shown?",
        "chosen": "A red square.",
        "rejected": "A blue circle.",
    }
    return {**row, **changes}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# ---------------------------------------------------------------------------------------------
# Formats


def test_native_jsonl_round_trip_through_save_and_load(tmp_path: Path, image_file: Path):
    records = [
        PreferenceRecord(
            image=str(image_file),
            prompt="What is shown?",
            chosen="A red square. It is small.",
            rejected="A blue circle.",
            id="a",
            rejected_image=tiny_image("green"),
            chosen_sentence_scores=[0.5, 0.25],
            rejected_sentence_scores=[-1.0],
            data_alpha=1.5,
            meta={"scene": 7},
        ),
        PreferenceRecord(image=tiny_image("blue"), prompt="Colour?", chosen="Blue.", rejected="Red.", id="b"),
    ]
    out = save_records(records, tmp_path / "set" / "records.jsonl")

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["image"] == str(image_file)  # outside the output directory: absolute
    assert lines[0]["rejected_image"].startswith("images/") and lines[1]["image"].startswith("images/")
    assert (out.parent / lines[1]["image"]).is_file()

    # The saved directory moves as a whole: relative paths resolve against the file.
    moved = shutil.copytree(out.parent, tmp_path / "moved")
    loaded = load_records(moved / "records.jsonl").records
    assert [r.id for r in loaded] == ["a", "b"]
    first, second = loaded
    assert first.image == str(image_file)
    assert first.rejected_image == str(moved / lines[0]["rejected_image"])
    assert (first.chosen_sentence_scores, first.rejected_sentence_scores) == ([0.5, 0.25], [-1.0])
    assert (first.data_alpha, first.meta) == (1.5, {"scene": 7})
    assert pixels(Image.open(second.image)) == pixels(tiny_image("blue"))


def test_trl_plain_strings_with_image_root(tmp_path: Path, image_file: Path):
    rows = [
        {"images": ["red.png"], "prompt": "Describe.", "chosen": "Red.", "rejected": "Blue.", "source": "x"}
    ]
    (record,) = load_records(rows, image_root=image_file.parent).records
    assert record.image == str(image_file)
    assert (record.prompt, record.chosen, record.rejected, record.id) == ("Describe.", "Red.", "Blue.", "0")
    assert record.meta == {"source": "x"}


def test_trl_conversational_keeps_prompt_messages_and_reduces_responses_to_text():
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    row = {
        "images": [{"bytes": png_bytes("red"), "path": None}],
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "Red."}]}],
        "rejected": [{"role": "assistant", "content": "Blue."}],
    }
    (record,) = load_records([row]).records
    assert record.prompt == prompt
    assert (record.chosen, record.rejected) == ("Red.", "Blue.")
    assert isinstance(record.image, Image.Image) and pixels(record.image) == pixels(tiny_image("red"))


def test_trl_dataset_with_a_list_of_images_column():
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    dataset = datasets.Dataset.from_dict(
        {"images": [[tiny_image()]], "prompt": [prompt], "chosen": ["Red."], "rejected": ["Blue."]},
        features=datasets.Features(
            {
                "images": datasets.List(datasets.Image()),
                "prompt": datasets.Dataset.from_dict({"p": [prompt]}).features["p"],
                "chosen": datasets.Value("string"),
                "rejected": datasets.Value("string"),
            }
        ),
    )
    (record,) = load_records(dataset).records
    assert record.prompt == prompt  # the null "text" Arrow gives the image part is dropped
    assert pixels(record.image) == pixels(tiny_image())


def test_trl_two_images_with_a_plain_prompt_load_as_a_list(image_file: Path):
    row = {"images": [str(image_file)] * 2, "prompt": "p", "chosen": "a", "rejected": "b"}
    assert load_records([row]).records[0].image == [str(image_file)] * 2


def rlaif_v_dataset() -> datasets.Dataset:
    colours = ["red", "green", "blue"]
    return datasets.Dataset.from_dict(
        {
            "ds_name": ["RLAIF-V"] * 3,
            "image": [tiny_image(c) for c in colours],
            "question": [f"What colour is it? ({c})" for c in colours],
            "chosen": [f"It is {c}." for c in colours],
            "rejected": ["It is black."] * 3,
            "origin_dataset": ["coco"] * 3,
            "origin_split": ["train"] * 3,
            "idx": ["10", "11", "12"],
            "image_path": [f"coco/{c}.jpg" for c in colours],
        },
        features=datasets.Features(
            {
                "ds_name": datasets.Value("string"),
                "image": datasets.Image(),
                "question": datasets.Value("string"),
                "chosen": datasets.Value("string"),
                "rejected": datasets.Value("string"),
                "origin_dataset": datasets.Value("string"),
                "origin_split": datasets.Value("string"),
                "idx": datasets.Value("string"),
                "image_path": datasets.Value("string"),
            }
        ),
    )


def test_rlaif_v_dataset_in_memory_and_saved_to_disk(tmp_path: Path):
    dataset = rlaif_v_dataset()
    dataset.save_to_disk(str(tmp_path / "rlaif"))
    for source in (dataset, tmp_path / "rlaif"):
        records = load_records(source).records
        assert [r.id for r in records] == ["10", "11", "12"]
        assert records[1].prompt == "What colour is it? (green)"
        assert records[1].meta == {
            "ds_name": "RLAIF-V",
            "origin_dataset": "coco",
            "origin_split": "train",
            "image_path": "coco/green.jpg",
        }
        assert pixels(records[2].image) == pixels(tiny_image("blue"))


def test_records_to_dataset_and_back(tmp_path: Path, image_file: Path):
    conversational = [{"role": "user", "content": [{"type": "text", "text": "Describe."}, {"type": "image"}]}]
    records = [
        PreferenceRecord(image=str(image_file), prompt="Colour?", chosen="Red.", rejected="Blue.", id="a"),
        PreferenceRecord(
            image=tiny_image("green"),
            prompt=conversational,
            chosen="Green.",
            rejected="Red.",
            id="b",
            rejected_image=tiny_image("red"),
            chosen_sentence_scores=[0.1],
            meta={"k": [1, 2]},
        ),
    ]
    dataset = records_to_dataset(records)
    assert isinstance(dataset.features["image"], datasets.Image)
    dataset.save_to_disk(str(tmp_path / "ds"))
    for source in (dataset, tmp_path / "ds"):
        a, b = load_records(source).records
        assert a.prompt == [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}
        ]
        assert b.prompt == conversational
        assert (a.rejected_image, a.chosen_sentence_scores, a.meta) == (None, None, {})
        assert (b.chosen_sentence_scores, b.meta) == ([0.1], {"k": [1, 2]})
        assert pixels(b.image) == pixels(tiny_image("green"))
        assert pixels(b.rejected_image) == pixels(tiny_image("red"))
        # In memory the dataset references the file; save_to_disk embeds its bytes.
        a_image = a.image if isinstance(a.image, Image.Image) else Image.open(a.image)
        assert pixels(a_image) == pixels(tiny_image("red"))


# ---------------------------------------------------------------------------------------------
# Validation: every error names the record's index and the field.


#: name -> (the bad row, given a good image path and tmp_path; the field named; words of the message)
BAD_ROWS = {
    "missing image file": (lambda good, tmp: native_row("nowhere.png"), "image", "image file not found"),
    "unreadable image bytes": (
        lambda good, tmp: native_row({"bytes": png_bytes()[:30], "path": None}),
        "image",
        "cannot decode image bytes",
    ),
    "garbage image file": (
        lambda good, tmp: native_row(str(tmp / "garbage.png")),
        "image",
        "cannot read image file",
    ),
    "missing field": (
        lambda good, tmp: native_row(good, rejected=None),
        "rejected",
        "missing required field",
    ),
    "empty chosen": (lambda good, tmp: native_row(good, chosen="  \n"), "chosen", "empty response"),
    "identical": (lambda good, tmp: native_row(good, rejected=" A red square."), "rejected", "identical"),
    "wrong type": (lambda good, tmp: native_row(good, chosen=3), "chosen", "expected a string, got int"),
    "non-finite score": (
        lambda good, tmp: native_row(good, chosen_sentence_scores=[0.1, float("nan")]),
        "chosen_sentence_scores",
        "score 1 is nan",
    ),
    "non-positive alpha": (lambda good, tmp: native_row(good, data_alpha=0.0), "data_alpha", "finite number in [0.001, 1000]"),
    "prompt without image part": (
        lambda good, tmp: native_row(
            good, prompt=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
        ),
        "prompt",
        "a conversational prompt needs an {'type': 'image'} part where each image goes",
    ),
    "misspelt field": (
        lambda good, tmp: native_row(good, rejected_imgae=good),
        "rejected_imgae",
        "unknown field",
    ),
    "duplicate id": (
        lambda good, tmp: native_row(good, id="0"),
        "id",
        "duplicate id, first used by record #0",
    ),
}


@pytest.mark.parametrize("name", list(BAD_ROWS))
def test_each_validation_error_names_the_index_and_field(tmp_path: Path, image_file: Path, name: str):
    (tmp_path / "garbage.png").write_bytes(b"not an image")
    make_bad_row, field, words = BAD_ROWS[name]
    rows = [native_row(str(image_file)), make_bad_row(str(image_file), tmp_path), native_row(str(image_file))]
    with pytest.raises(RecordValidationError) as caught:
        load_records(rows, image_root=tmp_path)
    assert (caught.value.error.index, caught.value.error.field) == (1, field)
    message = str(caught.value)
    assert message.startswith("invalid record #1") and f"field {field!r}: " in message and words in message


def test_raise_mode_raises_at_the_first_bad_record_and_names_its_id(image_file: Path):
    rows = [native_row(str(image_file), id=f"r{i}") for i in range(5)]
    rows[2]["chosen"] = ""
    rows[4]["chosen"] = ""
    with pytest.raises(RecordValidationError, match=r"#2 \(id 'r2'\) field 'chosen': empty response"):
        load_records(rows)


def test_skip_mode_counts_reports_and_logs(image_file: Path, caplog: pytest.LogCaptureFixture):
    rows = [native_row(str(image_file), id=f"r{i}") for i in range(5)]
    rows[1]["chosen"] = ""
    rows[3]["image"] = "missing.png"
    with caplog.at_level(logging.WARNING, logger="mmpo.data.records"):
        result = load_records(rows, on_error="skip")
    assert isinstance(result, LoadResult)
    assert [r.id for r in result.records] == ["r0", "r2", "r4"]
    assert [(e.index, e.id, e.field) for e in result.errors] == [(1, "r1", "chosen"), (3, "r3", "image")]
    summary = result.summary()
    assert summary.startswith(
        "loaded 3 of 5 records; skipped 2: #1 (id 'r1') field 'chosen': empty response; #3"
    )
    assert summary in caplog.text


def test_rlaif_v_errors_name_the_source_columns(image_file: Path):
    row = {"image": str(image_file), "question": " ", "chosen": "a", "rejected": "b", "idx": 9}
    with pytest.raises(RecordValidationError, match=r"#0 \(id '9'\) field 'question': empty prompt"):
        load_records([row])


def test_invalid_json_line_is_a_record_error_with_its_line(tmp_path: Path, image_file: Path):
    path = write_jsonl(tmp_path / "r.jsonl", [native_row(str(image_file))])
    path.write_text(path.read_text() + "\n{not json\n")
    result = load_records(path, on_error="skip")
    assert len(result.records) == 1
    (error,) = result.errors
    assert error.index == 1 and error.line == 3 and error.message.startswith("the line is not JSON")
    assert str(error).startswith(f"#1 ({error.file} line 3): the line is not JSON") and error.file.endswith("r.jsonl")


def test_check_images_off_skips_the_file_checks(tmp_path: Path):
    path = write_jsonl(tmp_path / "r.jsonl", [native_row("later/img.png")])
    (record,) = load_records(path, check_images=False).records
    assert record.image == str(tmp_path / "later" / "img.png")


def test_format_can_be_forced_and_undetectable_keys_say_so(image_file: Path):
    with pytest.raises(ValueError, match="pass format="):
        load_records([{"picture": "x"}])
    with pytest.raises(RecordValidationError, match="field 'images': missing"):
        load_records([native_row(str(image_file))], format="trl")


# ---------------------------------------------------------------------------------------------
# Atomic save


def test_failed_save_leaves_no_partial_file_and_keeps_the_old_one(tmp_path: Path, image_file: Path):
    path = tmp_path / "records.jsonl"
    good = PreferenceRecord(image=str(image_file), prompt="p", chosen="a", rejected="b", id="0")
    save_records([good], path)
    before = path.read_bytes()
    bad = PreferenceRecord(
        image=tiny_image(), prompt="p", chosen="a", rejected="b", id="1", meta={"x": object()}
    )
    unsaved = PreferenceRecord(image=tiny_image("blue"), prompt="p", chosen="a", rejected="b", id="2")
    with pytest.raises(ValueError, match=r"record #1 \(id '1'\)"):
        save_records([good, bad, unsaved], path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["records.jsonl"]  # no temp file
    assert not list((tmp_path / "images").iterdir())  # the PNG written for record #1 is removed
