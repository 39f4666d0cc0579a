"""load_records on data files as they are published: Parquet and Arrow shards, JSON arrays, shard
directories and glob patterns; a bad row names its file, its row there and its column."""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmpo.data.records import RecordValidationError, load_records, records_to_dataset
from mmpo.types import PreferenceRecord

#: The RLAIF-V dataset's columns, in its order, as its Parquet shards on the Hub hold them.
RLAIF_V_COLUMNS = ["ds_name", "image", "question", "chosen", "rejected", "origin_dataset", "origin_split", "idx",
                   "image_path"]
#: The Arrow type ``datasets`` stores an ``Image`` feature as.
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]


def tiny_image(colour: str) -> Image.Image:
    return Image.new("RGB", (4, 4), colour)


def png_bytes(colour: str) -> bytes:
    buffer = io.BytesIO()
    tiny_image(colour).save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(image: Image.Image | str) -> list:
    image = Image.open(image) if isinstance(image, str) else image
    return list(image.convert("RGB").getdata())


def rlaif_v_rows(start: int, n: int) -> dict[str, list]:
    """``n`` RLAIF-V rows, ids ``start`` on, images as ``{"bytes", "path"}`` structs holding PNG bytes."""
    colours = [COLOURS[(start + i) % len(COLOURS)] for i in range(n)]
    return {
        "ds_name": ["RLAIF-V"] * n,
        "image": [{"bytes": png_bytes(c), "path": f"{c}.jpg"} for c in colours],
        "question": [f"What colour is it? ({c})" for c in colours],
        "chosen": [f"It is {c}." for c in colours],
        "rejected": ["It is black."] * n,
        "origin_dataset": ["coco"] * n,
        "origin_split": ["train"] * n,
        "idx": [start + i for i in range(n)],
        "image_path": [f"coco/{c}.jpg" for c in colours],
    }


def write_parquet(path: Path, columns: dict[str, list]) -> Path:
    """A Parquet file as the Hub's are: the image column an Arrow struct of bytes and path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({name: pa.array(values, type=IMAGE_STRUCT if name == "image" else None)
                      for name, values in columns.items()})
    pq.write_table(table, path)
    return path


def write_shards(directory: Path, sizes=(2, 3, 2)) -> list[Path]:
    """RLAIF-V shards ``RLAIF-V-Dataset_000.parquet``, ... holding ids 0, 1, ... in order."""
    paths, start = [], 0
    for number, size in enumerate(sizes):
        paths.append(write_parquet(directory / f"RLAIF-V-Dataset_{number:03d}.parquet", rlaif_v_rows(start, size)))
        start += size
    return paths


def mmpo_row(image: str, **changes) -> dict:
    return {"image": image, "prompt": "What is shown?", "chosen": "A red square.", "rejected": "A blue circle.",
            **changes}


# ---------------------------------------------------------------------------------------------
# Parquet, Arrow, JSON


def test_an_rlaif_v_parquet_shard_as_published_loads_with_its_extra_columns_in_meta(tmp_path):
    """Written by ``datasets`` itself (an ``Image`` feature, so the struct holds the PNG bytes)."""
    columns = {**rlaif_v_rows(0, 3), "image": [tiny_image(c) for c in COLOURS[:3]], "idx": ["10", "11", "12"]}
    features = datasets.Features({name: datasets.Image() if name == "image" else datasets.Value("string")
                                  for name in RLAIF_V_COLUMNS})
    path = tmp_path / "RLAIF-V-Dataset_000.parquet"
    datasets.Dataset.from_dict(columns, features=features).to_parquet(str(path))
    assert pq.ParquetFile(path).schema_arrow.names == RLAIF_V_COLUMNS

    result = load_records(path)
    assert [r.id for r in result.records] == ["10", "11", "12"] and result.errors == []
    second = result.records[1]
    assert (second.prompt, second.chosen, second.rejected) == ("What colour is it? (green)", "It is green.",
                                                               "It is black.")
    assert second.meta == {"ds_name": "RLAIF-V", "origin_dataset": "coco", "origin_split": "train",
                           "image_path": "coco/green.jpg"}
    assert pixels(second.image) == pixels(tiny_image("green"))


def test_parquet_images_given_by_path_alone_resolve_against_the_files_directory(tmp_path, monkeypatch):
    shard = tmp_path / "data" / "train.parquet"
    (tmp_path / "data" / "img").mkdir(parents=True)
    tiny_image("blue").save(tmp_path / "data" / "img" / "blue.png")
    columns = rlaif_v_rows(0, 2)
    columns["image"] = [{"bytes": png_bytes("red"), "path": "red.jpg"}, {"bytes": None, "path": "img/blue.png"}]
    write_parquet(shard, columns)
    monkeypatch.chdir(tmp_path)  # not the file's directory

    embedded, referenced = load_records("data/train.parquet").records
    assert pixels(embedded.image) == pixels(tiny_image("red"))
    assert referenced.image == str(tmp_path / "data" / "img" / "blue.png")
    (image_root := tmp_path / "elsewhere" / "img").mkdir(parents=True)
    tiny_image("blue").save(image_root / "blue.png")
    _, referenced = load_records(shard, image_root=tmp_path / "elsewhere").records
    assert referenced.image == str(image_root / "blue.png")


def test_arrow_files_in_the_stream_format_datasets_writes_and_in_the_file_format(tmp_path):
    records = [PreferenceRecord(image=tiny_image(c), prompt=f"{c}?", chosen=f"It is {c}.", rejected="No.", id=c)
               for c in ("red", "green")]
    records_to_dataset(records).save_to_disk(str(tmp_path / "saved"))
    (stream,) = (tmp_path / "saved").glob("*.arrow")
    table = pq.read_table(write_parquet(tmp_path / "as.parquet", rlaif_v_rows(0, 2)))
    with pa.OSFile(str(tmp_path / "file-format.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)

    from_stream = load_records(shutil.copy(stream, tmp_path / "train.arrow")).records
    assert [(r.id, r.chosen) for r in from_stream] == [("red", "It is red."), ("green", "It is green.")]
    assert pixels(from_stream[1].image) == pixels(tiny_image("green"))
    from_file = load_records(tmp_path / "file-format.arrow").records
    assert [r.id for r in from_file] == ["0", "1"] and pixels(from_file[0].image) == pixels(tiny_image("red"))


def test_a_json_array_and_json_lines_in_a_json_file(tmp_path):
    tiny_image("red").save(tmp_path / "red.png")
    rows = [mmpo_row("red.png", id="a"), mmpo_row("red.png", id="b", chosen="A small red square.")]
    (tmp_path / "array.json").write_text(json.dumps(rows, indent=2))
    (tmp_path / "lines.json").write_text("".join(json.dumps(row) + "\n" for row in rows))
    for name in ("array.json", "lines.json"):
        loaded = load_records(tmp_path / name).records
        assert [r.id for r in loaded] == ["a", "b"] and loaded[0].image == str(tmp_path / "red.png"), name


def test_a_json_array_that_does_not_parse_is_one_error_naming_the_file(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('[{"image": "a.png", "prompt": "p",')
    with pytest.raises(ValueError, match=r"train\.json: it starts as a JSON array but does not parse"):
        load_records(path)


def test_a_dataset_and_an_iterable_dataset_load_as_stored(tmp_path):
    columns = rlaif_v_rows(0, 3)
    columns["image"] = [tiny_image(c) for c in ("red", "green", "blue")]
    dataset = datasets.Dataset.from_dict(columns).cast_column("image", datasets.Image())
    for source in (dataset, dataset.to_iterable_dataset()):
        records = load_records(source).records
        assert [r.id for r in records] == ["0", "1", "2"]
        assert pixels(records[2].image) == pixels(tiny_image("blue"))


# ---------------------------------------------------------------------------------------------
# Directories of shards and glob patterns


def test_a_directory_of_shards_and_a_glob_of_them_load_in_name_order(tmp_path, monkeypatch):
    write_shards(tmp_path / "rlaif-v")
    (tmp_path / "rlaif-v" / "README.md").write_text("# RLAIF-V")  # not a records file: left out
    (tmp_path / "rlaif-v" / ".part.parquet").write_bytes(b"half a download")  # hidden: left out
    monkeypatch.chdir(tmp_path)
    for source in ("rlaif-v", tmp_path / "rlaif-v", "rlaif-v/RLAIF-V-Dataset_*.parquet", "**/*_00[0-2].parquet"):
        records = load_records(source).records
        assert [r.id for r in records] == [str(i) for i in range(7)], source
        assert [pixels(r.image)[0] for r in records] == [pixels(tiny_image(COLOURS[i % 6]))[0] for i in range(7)]


def test_a_directory_may_mix_file_types_and_ids_default_to_the_index_in_the_whole_source(tmp_path):
    shards = tmp_path / "mixed"
    (shards / "img").mkdir(parents=True)
    tiny_image("red").save(shards / "img" / "red.png")
    (shards / "a.jsonl").write_text(json.dumps(mmpo_row("img/red.png")) + "\n")
    (shards / "b.json").write_text(json.dumps([mmpo_row("img/red.png", chosen="Red."),
                                               mmpo_row("img/red.png", chosen="Square.")]))
    write_parquet(shards / "c.parquet", {"image": [{"bytes": None, "path": "img/red.png"}], "prompt": ["p?"],
                                         "chosen": ["Red!"], "rejected": ["Blue!"]})
    records = load_records(shards).records
    assert [(r.id, r.chosen) for r in records] == [("0", "A red square."), ("1", "Red."), ("2", "Square."),
                                                   ("3", "Red!")]
    assert {r.image for r in records} == {str(shards / "img" / "red.png")}


def test_a_save_to_disk_directory_is_still_read_as_one_dataset(tmp_path):
    records = [PreferenceRecord(image=tiny_image("red"), prompt="p?", chosen="Red.", rejected="Blue.", id="x")]
    records_to_dataset(records).save_to_disk(str(tmp_path / "saved"))
    assert sorted(p.name for p in (tmp_path / "saved").iterdir())[-1] == "state.json"  # beside its .arrow shard
    assert [r.id for r in load_records(tmp_path / "saved").records] == ["x"]


# ---------------------------------------------------------------------------------------------
# A bad row names its file, its row in that file, and the column the file spells


def test_a_bad_row_in_the_second_shard_names_the_shard_its_row_and_the_column(tmp_path, caplog):
    first, second, _ = write_shards(tmp_path / "rlaif-v")
    columns = rlaif_v_rows(2, 3)
    columns["question"][1] = "  "  # the second shard's row 1: record #3 of the source
    write_parquet(second, columns)

    for source in (tmp_path / "rlaif-v", str(tmp_path / "rlaif-v" / "*.parquet")):
        with pytest.raises(RecordValidationError) as caught:
            load_records(source)
        error = caught.value.error
        assert (error.index, error.id, error.field) == (3, "3", "question")
        assert (error.file, error.row, error.line) == (str(second), 1, None)
        assert str(caught.value).startswith(f"invalid record #3 ({second} row 1, id '3') field 'question': "
                                            "empty prompt")

    with caplog.at_level(logging.WARNING, logger="mmpo.data.records"):
        result = load_records(tmp_path / "rlaif-v", on_error="skip")
    assert [r.id for r in result.records] == ["0", "1", "2", "4", "5", "6"]
    (error,) = result.errors
    assert (error.file, error.row, error.field) == (str(second), 1, "question")
    assert f"skipped 1: #3 ({second} row 1, id '3') field 'question': empty prompt" in caplog.text
    assert first.name != second.name


def test_a_jsonl_error_names_the_file_and_line(tmp_path):
    tiny_image("red").save(tmp_path / "red.png")
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(mmpo_row("red.png")) + "\n\n" + json.dumps(mmpo_row("red.png", chosen="")) + "\n")
    with pytest.raises(RecordValidationError) as caught:
        load_records(path)
    error = caught.value.error
    assert (error.index, error.row, error.line, error.field) == (1, 1, 3, "chosen")
    assert f"#1 ({path} line 3) field 'chosen': empty response" in str(caught.value)


def test_a_duplicate_id_across_shards_names_where_it_was_first_used(tmp_path):
    write_parquet(tmp_path / "a.parquet", rlaif_v_rows(0, 2))
    write_parquet(tmp_path / "b.parquet", rlaif_v_rows(1, 1))
    with pytest.raises(RecordValidationError) as caught:
        load_records(tmp_path)
    assert caught.value.error.field == "idx" and caught.value.error.row == 0
    assert f"duplicate id, first used by record #1 ({tmp_path / 'a.parquet'} row 1)" in str(caught.value)


def test_shards_of_different_formats_are_an_error_naming_both(tmp_path):
    write_parquet(tmp_path / "a.parquet", rlaif_v_rows(0, 1))
    (tmp_path / "b.jsonl").write_text(json.dumps(mmpo_row("red.png")) + "\n")
    with pytest.raises(ValueError, match=r"b\.jsonl holds mmpo records but .*a\.parquet holds rlaif-v records"):
        load_records(tmp_path)


# ---------------------------------------------------------------------------------------------
# Sources that hold no records


def test_a_pattern_that_matches_nothing_names_the_pattern(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no records files match the pattern '.*train-\*\.parquet'"):
        load_records(str(tmp_path / "data" / "train-*.parquet"))


@pytest.mark.parametrize("name", ["train.csv", "train.tsv", "train"])
def test_an_unsupported_file_type_is_an_error_naming_the_file(tmp_path, name):
    (tmp_path / name).write_text("image,prompt,chosen,rejected\n")
    with pytest.raises(ValueError, match=rf"cannot read records from {tmp_path / name}: .* is not a records file"):
        load_records(tmp_path / name)


def test_a_directory_without_records_files_names_the_directory(tmp_path):
    (tmp_path / "data" / "train").mkdir(parents=True)
    write_parquet(tmp_path / "data" / "train" / "shard.parquet", rlaif_v_rows(0, 1))
    (tmp_path / "data" / "README.md").write_text("see train/")
    with pytest.raises(FileNotFoundError, match=rf"no records files in the directory {tmp_path / 'data'}: "):
        load_records(tmp_path / "data")


def test_a_missing_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"no such records file or directory: {tmp_path / 'nope.parquet'}"):
        load_records(tmp_path / "nope.parquet")


def test_a_file_that_is_not_parquet_names_it(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=r"cannot read .*broken\.parquet as Parquet"):
        load_records(tmp_path / "broken.parquet")
