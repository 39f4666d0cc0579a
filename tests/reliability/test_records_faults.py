"""Records files built to break the reader (issue 34, round 2): each is now one bad record naming its
file, line and field, or a clear error, instead of a traceback, a silent guess or gigabytes of memory."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmpo.data.records import (
    MAX_TEXT_CHARS,
    NoValidRecordsError,
    RecordValidationError,
    load_records,
    records_to_dataset,
)
from mmpo.io import MAX_JSON_DEPTH, read_items
from mmpo.training.config import DataArguments
from mmpo.training.run import load_dataset
from mmpo.types import PreferenceRecord


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A records folder holding ``red.png``."""
    Image.new("RGB", (8, 8), "red").save(tmp_path / "red.png")
    return tmp_path


def row(index: int, **fields) -> dict:
    return {"id": f"r{index}", "image": "red.png", "prompt": "What is it?", "chosen": "A red square.",
            "rejected": "A blue circle.", **fields}


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def rows_as_lines(n: int) -> list[str]:
    return [json.dumps(row(i)) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# 2. Nesting too deep for Python's parser


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_line_of_100k_brackets_is_one_bad_record_naming_file_and_line(folder, suffix):
    """It used to be a RecursionError traceback that on_bad_record: skip could not skip."""
    lines = rows_as_lines(3)
    lines[1] = '{"id": "deep", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path = folder / f"r{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, lines)
    else:
        path.write_text("[\n" + ",\n".join(lines) + "\n]\n")
    with pytest.raises(RecordValidationError) as caught:
        load_records(path)
    line = 2 if suffix == ".jsonl" else 3
    assert f"{path} line {line}" in str(caught.value) and "nested too deeply" in str(caught.value)
    result = load_records(path, on_error="skip")
    assert [r.id for r in result.records] == ["r0", "r2"] and result.errors[0].line == line


def test_nesting_deeper_than_the_limit_is_refused_with_its_field(folder):
    deep = {"a": 1}
    for _ in range(MAX_JSON_DEPTH):
        deep = {"a": deep}
    path = write_jsonl(folder / "r.jsonl", [json.dumps(row(0, meta=deep))])
    with pytest.raises(RecordValidationError) as caught:
        load_records(path)
    assert caught.value.error.field == "meta" and caught.value.error.line == 1


def test_a_deep_string_meta_and_a_deep_items_line_are_bad_too(folder):
    nested = "[" * 50_000 + "]" * 50_000
    with pytest.raises(RecordValidationError, match="field 'meta': a string meta over mmpo's JSON limits"):
        load_records([row(0, image=str(folder / "red.png"), meta=nested)])
    items = write_jsonl(folder / "items.jsonl", ['{"id": "a", "image": "red.png", "prompt": "Hi?"}', nested])
    with pytest.raises(ValueError, match=rf"{items} line 2 is over mmpo's JSON limits: nested too deeply"):
        read_items(items)


# ---------------------------------------------------------------------------------------------
# 3. Numbers too long to convert


@pytest.mark.parametrize(("field", "value"), [("data_alpha", "1" * 5000), ("weight", "0." + "5" * 5000),
                                              ("id", "7" * 5000)])
def test_a_5000_digit_number_is_one_bad_record_naming_file_line_and_field(folder, field, value):
    """It used to be Python's 'Exceeds the limit (4300 digits)' with no record named."""
    lines = rows_as_lines(3)
    lines[2] = json.dumps(row(2)).replace('"id": "r2"', f'"{field}": {value}, "id": "r2"', 1)
    if field == "id":
        lines[2] = json.dumps(row(2)).replace('"id": "r2"', f'"id": {value}', 1)
    path = write_jsonl(folder / "r.jsonl", lines)
    with pytest.raises(RecordValidationError) as caught:
        load_records(path)
    error = caught.value.error
    assert (error.index, error.line, error.field) == (2, 3, field) and "5,00" in error.message
    assert f"{path} line 3" in str(caught.value)
    assert [r.id for r in load_records(path, on_error="skip").records] == ["r0", "r1"]


# ---------------------------------------------------------------------------------------------
# 4. Errors name the file and line as well as the index


def test_a_json_array_error_names_the_line_the_record_starts_on(folder):
    rows = [row(i) for i in range(40)]
    rows[30]["chosen"] = ""
    path = folder / "r.json"
    path.write_text(json.dumps(rows, indent=2))  # 7 lines a record
    with pytest.raises(RecordValidationError) as caught:
        load_records(path)
    error = caught.value.error
    assert (error.index, error.row, error.line) == (30, 30, 2 + 30 * 7)
    assert f"#30 ({path} line 212, id 'r30') field 'chosen'" in str(caught.value)
    lines = path.read_text().splitlines()
    assert lines[211].strip() == "{" and '"r30"' in lines[212]


def test_a_jsonl_error_deep_in_a_file_names_its_line(folder):
    lines = rows_as_lines(60)
    lines.insert(10, "")  # a blank line: lines and records no longer count alike
    lines[51] = json.dumps(row(50, chosen=""))
    path = write_jsonl(folder / "r.jsonl", lines)
    with pytest.raises(RecordValidationError, match=rf"#50 \({path} line 52, id 'r50'\) field 'chosen'"):
        load_records(path)


# ---------------------------------------------------------------------------------------------
# 5. Sources of several splits


def saved_dataset_dict(folder: Path, splits: tuple[str, ...]) -> Path:
    records = [PreferenceRecord(image=str(folder / "red.png"), prompt="What?", chosen=f"Red {i}.",
                                rejected="Blue.", id=f"{split}{i}") for split in splits for i in range(2)]
    target = folder / "saved"
    datasets.DatasetDict({split: records_to_dataset([r for r in records if r.id.startswith(split)])
                          for split in splits}).save_to_disk(str(target))
    return target


def test_a_saved_dataset_dict_names_its_splits_and_reads_the_one_chosen(folder):
    target = saved_dataset_dict(folder, ("train", "test"))
    with pytest.raises(ValueError, match=rf"{target} is a DatasetDict of the splits \['train', 'test'\]: "
                                         r"choose one with train_split / eval_split"):
        load_records(target)
    assert [r.id for r in load_records(target, split="test").records] == ["test0", "test1"]
    with pytest.raises(ValueError, match=r"has no split 'dev'; its splits are \['train', 'test'\]"):
        load_records(target, split="dev")
    args = DataArguments(train_file=str(target), train_split="train")
    assert [r.id for r in load_dataset(str(target), args, args.train_split)[0].records] == ["train0", "train1"]


def test_a_dataset_dict_of_one_split_is_read_with_a_note(folder, caplog):
    target = saved_dataset_dict(folder, ("train",))
    with caplog.at_level(logging.INFO, logger="mmpo.data.records"):
        assert len(load_records(target).records) == 2
    assert "holds one split, 'train': reading it" in caplog.text


def test_parquet_split_folders_and_split_shards(folder):
    columns = {"image": [str(folder / "red.png")] * 2, "prompt": ["What?"] * 2, "chosen": ["Red.", "Rose."],
               "rejected": ["Blue."] * 2}
    for split in ("train", "test"):
        (folder / "folders" / split).mkdir(parents=True)
        pq.write_table(pa.table({**columns, "id": [f"{split}0", f"{split}1"]}),
                       folder / "folders" / split / "part.parquet")
        pq.write_table(pa.table({**columns, "id": [f"{split}0", f"{split}1"]}),
                       folder / f"{split}-00000-of-00001.parquet")
    with pytest.raises(FileNotFoundError, match=r"split folders \['test', 'train'\]"):
        load_records(folder / "folders")
    assert [r.id for r in load_records(folder / "folders", split="test").records] == ["test0", "test1"]
    with pytest.raises(ValueError, match=r"shards of the splits \['test', 'train'\]"):
        load_records(folder)
    assert [r.id for r in load_records(folder, split="train").records] == ["train0", "train1"]


# ---------------------------------------------------------------------------------------------
# 6. Every record bad


def test_every_record_bad_in_skip_mode_is_an_error_right_after_loading(folder):
    """It used to end later in 'num_samples should be a positive integer value, but got num_samples=0'."""
    path = write_jsonl(folder / "r.jsonl", [json.dumps(row(i, chosen="")) for i in range(5)])
    with pytest.raises(NoValidRecordsError) as caught:
        load_records(path, on_error="skip")
    message = str(caught.value)
    assert f"none of the 5 records of {path} is valid: all 5 are bad" in message
    assert f"#0 ({path} line 1, id 'r0') field 'chosen': empty response" in message and "(and 2 more)" in message
    assert isinstance(caught.value, ValueError) and len(caught.value.errors) == 5


def test_a_preflight_that_drops_every_record_names_the_file_count_and_first_errors(tmp_path, tiny_checkpoint,
                                                                                    tiny_records):
    from transformers import AutoProcessor

    from mmpo.data.collator import PreferenceCollator, RowEncoder
    from mmpo.data.preflight import preflight
    from mmpo.data.records import save_records

    path = save_records(tiny_records[:4], tmp_path / "r.jsonl")
    loaded = load_records(path)
    collator = PreferenceCollator(RowEncoder(AutoProcessor.from_pretrained(tiny_checkpoint)), need_data_alpha=True)
    with pytest.raises(NoValidRecordsError) as caught:
        preflight(loaded.records, collator, on_error="skip", origins=loaded.origins)
    message = str(caught.value)
    assert message.startswith(f"preflight: none of the 4 training records ({path}) can be trained: all 4 are bad")
    assert f"#0 ({path} line 1, id '{tiny_records[0].id}') field 'data_alpha'" in message and "(and 1 more)" in message


def test_an_empty_records_file_cannot_be_trained_on(folder):
    path = write_jsonl(folder / "r.jsonl", [])
    with pytest.raises(ValueError, match=rf"{path} holds no records"):
        load_dataset(str(path), DataArguments(train_file=str(path)))


# ---------------------------------------------------------------------------------------------
# 7. Texts longer than any model reads


def test_a_huge_response_is_cut_to_max_text_chars_with_a_warning_naming_record_and_field(folder, caplog):
    long = "a red square . " * 40  # 600 characters
    lines = [json.dumps(row(0, chosen=long)), json.dumps(row(1))]
    lines.append(json.dumps(row(2, prompt=[{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "x" * 80}, {"type": "text", "text": "y" * 80}]}])))
    path = write_jsonl(folder / "r.jsonl", lines)
    with caplog.at_level(logging.WARNING, logger="mmpo.data.records"):
        result = load_records(path, max_text_chars=100)
    assert result.records[0].chosen == long[:100] and result.records[1].chosen == "A red square."
    texts = [part["text"] for part in result.records[2].prompt[0]["content"] if part["type"] == "text"]
    assert texts == ["x" * 80, "y" * 20] and result.cut_texts == 2
    assert f"record #0 ({path} line 1, id 'r0') field 'chosen': 600 characters, cut to the first 100" in caplog.text
    assert f"#2 ({path} line 3, id 'r2') field 'prompt': 160 characters" in caplog.text


def test_many_cut_texts_are_summarised(folder, caplog):
    rows = [row(i, image=str(folder / "red.png"), rejected="b" * 50) for i in range(9)]
    with caplog.at_level(logging.WARNING, logger="mmpo.data.records"):
        assert load_records(rows, max_text_chars=20).cut_texts == 9
    assert caplog.text.count("cut to the first 20") == 5 and "cut 9 texts in all" in caplog.text


def test_the_training_config_caps_texts_like_load_records():
    assert DataArguments().max_text_chars == MAX_TEXT_CHARS == 200_000
    with pytest.raises(ValueError, match="max_text_chars"):
        DataArguments(max_text_chars=0)


# ---------------------------------------------------------------------------------------------
# 9. Image paths that leave the image root


def test_a_relative_path_out_of_the_image_root_is_refused_naming_record_field_and_path(tmp_path):
    """``../../etc/hostname`` relative to image_root used to be opened (refused only as not an image)."""
    root = tmp_path / "data" / "images"
    root.mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(tmp_path / "secret.png")
    path = write_jsonl(tmp_path / "data" / "r.jsonl", [json.dumps(row(0, image="../../secret.png"))])
    with pytest.raises(RecordValidationError) as caught:
        load_records(path, image_root=root)
    error = caught.value.error
    assert (error.field, error.line) == ("image", 1)
    assert "'../../secret.png'" in error.message and f"outside the image root {root}" in error.message
    assert "allow_images_outside_root" in error.message
    allowed = load_records(path, image_root=root, allow_images_outside_root=True).records[0]
    assert allowed.image == str(tmp_path / "secret.png")


def test_a_symbolic_link_out_of_the_root_is_refused_and_one_inside_is_not(folder, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    Image.new("RGB", (8, 8), "blue").save(elsewhere / "blue.png")
    os.symlink(elsewhere, folder / "linked")
    os.symlink(folder / "red.png", folder / "alias.png")
    path = write_jsonl(folder / "r.jsonl", [json.dumps(row(0, image="linked/blue.png")),
                                            json.dumps(row(1, image="alias.png"))])
    result = load_records(path, on_error="skip")
    assert [r.id for r in result.records] == ["r1"]
    assert "symbolic link" in result.errors[0].message and str(elsewhere) in result.errors[0].message


def test_absolute_paths_are_read_unless_refused_and_then_only_inside_the_root(folder, tmp_path_factory):
    """mmpo's own writers refer to images outside the written file's folder by absolute path, so
    absolute paths are read by default, without an image_root; allow_absolute_image_paths=False (the
    default with an image_root) is for records from elsewhere."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    Image.new("RGB", (8, 8), "blue").save(elsewhere / "blue.png")
    path = write_jsonl(folder / "r.jsonl", [json.dumps(row(0, image=str(elsewhere / "blue.png"))),
                                            json.dumps(row(1, image=str(folder / "red.png")))])
    assert len(load_records(path).records) == 2
    result = load_records(path, on_error="skip", allow_absolute_image_paths=False)
    assert [r.id for r in result.records] == ["r1"]
    assert "an absolute path" in result.errors[0].message and result.errors[0].field == "image"
    # a given image_root is where the images are: absolute paths outside it are refused by default
    rooted = load_records(path, on_error="skip", image_root=folder)
    assert [r.id for r in rooted.records] == ["r1"] and "an absolute path" in rooted.errors[0].message
    assert len(load_records(path, image_root=folder, allow_absolute_image_paths=True).records) == 2


def test_what_save_records_writes_is_read_back_by_default(folder, tmp_path_factory):
    """Inside the output's folder by relative path, outside it by absolute path: both read back."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    Image.new("RGB", (8, 8), "blue").save(elsewhere / "blue.png")
    from mmpo.data.records import save_records

    records = [PreferenceRecord(image=str(elsewhere / "blue.png"), prompt="What?", chosen="Blue.", rejected="Red.",
                                id="a"),
               PreferenceRecord(image=Image.new("RGB", (4, 4), "green"), prompt="What?", chosen="Green.",
                                rejected="Red.", id="b")]
    path = save_records(records, folder / "out" / "records.jsonl")
    assert [r.id for r in load_records(path).records] == ["a", "b"]


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"image_id": 1' + "0" * 5000 + ', "caption": "x"}'],
                         ids=["deep", "long number"])
@pytest.mark.parametrize("layout", ["json", "jsonl"])
def test_benchmark_prediction_files_hold_the_same_json_limits(tmp_path, text, layout):
    """Answers given to ``mmpo evaluate --predictions`` are read within the same limits: one
    ValueError naming the file (and the line), not a RecursionError or Python's int-conversion error."""
    from mmpo.evaluation.common import read_records

    path = tmp_path / f"answers.{layout}"
    path.write_text(text if layout == "json" else '{"image_id": 1, "caption": "ok"}\n' + text + "\n")
    expected = ("line 2: " if layout == "jsonl" else "") + r"(nested too deeply|the number at .image_id.)"
    with pytest.raises(ValueError, match=expected) as caught:
        read_records(path, "CHAIR predictions")
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("argv", [
    ["score-sentences", "--output", "o.jsonl", "--clip", "toyworld"],
    ["vision-rejected", "--output", "o.jsonl", "--clip", "toyworld"],
], ids=["score-sentences", "vision-rejected"])
def test_the_record_pipelines_read_a_chosen_split_under_an_image_root(monkeypatch, capsys, tmp_path, argv):
    """``--split`` and ``--image-root`` reach ``load_records`` (a source of several splits could not be read before)."""
    import mmpo.data.records as records_module
    from mmpo.cli.main import main

    seen = {}

    def reading(source, **options):
        seen.update(options, source=source)
        raise ValueError("read")

    monkeypatch.setattr(records_module, "load_records", reading)
    code = main([argv[0], "--input", str(tmp_path / "dd"), "--split", "test", "--image-root", str(tmp_path), *argv[1:]])
    assert code == 2 and "error: read" in capsys.readouterr().err
    assert seen["split"] == "test" and seen["image_root"] == str(tmp_path)
