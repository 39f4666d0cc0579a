"""mmpo.io: atomic writes leave no partial file, JSONL round-trips and survives a cut last line,
images of every mode load as viewer RGB, and the resume journal continues a killed run."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from mmpo import io as mmpo_io
from mmpo.io import (
    BadLine,
    ResumeJournal,
    append_lines,
    atomic_write_json,
    atomic_writer,
    default_cache_dir,
    ensure_directory,
    image_reference,
    json_line,
    load_image,
    open_append,
    png_bytes,
    progress_path_for,
    read_jsonl,
    read_jsonl_lines,
    repair_truncated,
    save_png_by_hash,
)

# ---------------------------------------------------------------------------------------------
# Atomic writes


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    atomic_write_json(target, {"r_bar": 1.5})
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_writer(target, text=True) as file:
            file.write('{"r_bar": 2')  # half of the new content ...
            raise RuntimeError("disk full")  # ... then the failure
    assert json.loads(target.read_text()) == {"r_bar": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_first_write_leaves_nothing(tmp_path, monkeypatch):
    def no_fsync(fd):
        raise OSError("I/O error")

    monkeypatch.setattr(mmpo_io.os, "fsync", no_fsync)
    with pytest.raises(OSError, match="I/O error"):
        mmpo_io.atomic_write_text(tmp_path / "sub" / "new.txt", "text")
    assert list((tmp_path / "sub").iterdir()) == []  # the parent is made, the file is not


def test_json_that_cannot_be_encoded_leaves_the_old_file(tmp_path):
    target = tmp_path / "x.json"
    atomic_write_json(target, [1], indent=1)
    with pytest.raises(TypeError):
        atomic_write_json(target, {"x": object()})
    assert target.read_text() == "[\n 1\n]\n" and (target.stat().st_mode & 0o777) == 0o644
    atomic_write_json(target, {"x": object()}, default=lambda value: "?")
    assert json.loads(target.read_text()) == {"x": "?"}


# ---------------------------------------------------------------------------------------------
# JSONL


def test_appended_lines_read_back(tmp_path):
    path = tmp_path / "out.jsonl"
    rows = [{"id": "a", "text": "ümlaut ☃"}, {"id": "b", "n": [1, 2.5]}]
    fd = open_append(path)
    try:
        append_lines(fd, [json_line(rows[0])])
        append_lines(fd, [json_line(rows[1])])
        append_lines(fd, [])
    finally:
        os.close(fd)
    assert read_jsonl(path) == rows
    assert "ümlaut ☃" in path.read_text(encoding="utf-8")  # UTF-8 kept, not \u-escaped
    with pytest.raises(ValueError):
        json_line({"loss": math.nan})  # NaN is not JSON


def test_a_truncated_last_line_is_named_then_cut(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": 1}\n\n{"id": 2}\n{"id": 3, "te')  # a kill mid-write; line 2 is blank
    numbers = [(number, value) for number, value in read_jsonl_lines(path)]
    assert numbers[:2] == [(1, {"id": 1}), (3, {"id": 2})]
    bad = numbers[2][1]
    assert isinstance(bad, BadLine) and bad.number == 4 and f"{path} line 4 is not JSON" in bad.message
    with pytest.raises(ValueError, match=r"out\.jsonl line 4 is not JSON"):
        read_jsonl(path)
    assert repair_truncated(path) == 1
    assert read_jsonl(path) == [{"id": 1}, {"id": 2}]
    assert repair_truncated(path) == 0 and repair_truncated(tmp_path / "missing.jsonl") == 0


def test_a_line_that_is_not_utf8_is_one_bad_line(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"id": 1}\n{"id": "\xff"}\n{"id": 3}\n')
    values = [value for _, value in read_jsonl_lines(path)]
    assert values[0] == {"id": 1} and values[2] == {"id": 3}
    assert isinstance(values[1], BadLine) and "line 2 is not UTF-8" in values[1].message


# ---------------------------------------------------------------------------------------------
# Images


def test_every_kind_of_reference_loads_as_rgb(tmp_path):
    pixels = np.zeros((4, 6, 3), dtype=np.uint8)
    pixels[:, :3] = (255, 0, 0)
    path = tmp_path / "x.png"
    PIL.Image.fromarray(pixels).save(path)
    for image in (path, str(path), path.read_bytes(), PIL.Image.fromarray(pixels), pixels):
        loaded = load_image(image)
        assert loaded.mode == "RGB" and np.array_equal(np.asarray(loaded), pixels), type(image)
    grey = load_image(np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4))  # float in [0, 1] is scaled
    assert np.asarray(grey)[0, 0].tolist() == [0, 0, 0] and np.asarray(grey)[-1, -1].tolist() == [255] * 3


def test_palette_with_a_transparent_colour_is_composited_on_white(tmp_path):
    image = PIL.Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0
    path = tmp_path / "p.png"
    image.save(path, transparency=0)
    assert np.asarray(load_image(path)).tolist() == [[[255, 255, 255], [10, 200, 30]]]


def test_cmyk_and_float_images_are_saved_as_rgb_png():
    for image in (PIL.Image.new("CMYK", (2, 2), (0, 255, 255, 0)), PIL.Image.new("F", (2, 2), 0.5)):
        with PIL.Image.open(io.BytesIO(png_bytes(image))) as saved:
            assert saved.mode == "RGB", image.mode
    with PIL.Image.open(io.BytesIO(png_bytes(PIL.Image.new("I;16", (2, 2), 40000)))) as deep:
        assert deep.mode.startswith("I")  # 16 bits a sample fit in a PNG as they are


def test_an_unreadable_image_is_named_with_its_owner(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(ValueError, match=r"^record #2 \(id 'x'\): cannot read its image '.*bad\.png' "
                                         r"\(UnidentifiedImageError"):
        load_image(bad, "record #2 (id 'x')")
    with pytest.raises(ValueError, match=r"item #0: cannot read its image '.*gone\.png' \(FileNotFoundError"):
        load_image(tmp_path / "gone.png", "item #0")
    with pytest.raises(PIL.UnidentifiedImageError):  # without an owner: PIL's own error
        load_image(bad)


def test_in_memory_images_are_stored_once_by_content_and_referenced_relatively(tmp_path):
    image = PIL.Image.new("RGB", (3, 3), (1, 2, 3))
    written: list[Path] = []
    first = save_png_by_hash(image, tmp_path / "images", written)
    assert save_png_by_hash(image.copy(), tmp_path / "images", written) == first and written == [first]
    assert image_reference(image, tmp_path, tmp_path / "images") == f"images/{first.name}"
    outside = tmp_path.parent / "elsewhere.png"
    assert image_reference(str(outside), tmp_path, tmp_path / "images") == str(outside)


def test_the_cache_directory_follows_mmpo_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MMPO_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.setenv("MMPO_CACHE", "")
    assert default_cache_dir() == Path.home() / ".cache" / "mmpo"


# ---------------------------------------------------------------------------------------------
# The resume journal


def journal(out: Path, settings=None) -> ResumeJournal:
    return ResumeJournal.open(out, settings or {"k": 1}, writer="a test", outcome_of=lambda row: "written",
                              line_outcomes={"written"})


def test_a_run_killed_between_the_two_appends_resumes_without_loss_or_duplicate(tmp_path):
    out = tmp_path / "out.jsonl"
    first = journal(out)
    assert first.done == {} and progress_path_for(out).read_text() == '{"settings": {"k": 1}}\n'
    with first:
        first.append([{"id": "a"}], [("a", "written"), ("b", "dropped")])
        append_lines(first._fds[0], [json_line({"id": "c"})])  # a kill before c's progress line
    again = journal(out)
    assert again.done == {"a": "written", "b": "dropped", "c": "written"}
    progress = read_jsonl(progress_path_for(out))
    assert progress[-1] == {"id": "c", "outcome": "written"}  # listed now, once
    assert len(journal(out).done) == 3 and len(read_jsonl(progress_path_for(out))) == len(progress)


def test_a_line_listed_as_written_but_missing_is_redone(tmp_path, caplog):
    out = tmp_path / "out.jsonl"
    with journal(out) as first:
        first.append([{"id": "a"}, {"id": "b"}], [("a", "written"), ("b", "written")])
    out.write_text(json_line({"id": "a"}) + "\n")  # b's record lost
    assert journal(out).done == {"a": "written"}
    assert "1 items listed as done are missing" in caplog.text


def test_other_settings_or_a_foreign_output_are_refused(tmp_path):
    out = tmp_path / "out.jsonl"
    journal(out)
    with pytest.raises(ValueError, match=r"other settings \(\{'k': 1\}\) than now \(\{'k': 2\}\)"):
        journal(out, {"k": 2})
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"id": "x"}\n')
    with pytest.raises(FileExistsError, match="no progress file foreign.jsonl.progress.jsonl: it was not written by a test"):
        journal(foreign)
    with pytest.raises(RuntimeError, match="inside `with journal:`"):
        journal(out).append([], [])


def test_ensure_directory_builds_once_and_never_leaves_half_an_entry(tmp_path):
    """A build that fails leaves neither the entry nor its temporary folder; a stale entry without
    its completion file is replaced; a complete one is returned without building."""
    target = tmp_path / "cache" / "entry"
    calls = []

    def failing(folder: Path) -> None:
        (folder / "weights.bin").write_bytes(b"half")
        raise RuntimeError("killed mid-build")

    def build(folder: Path) -> None:
        calls.append(folder)
        (folder / "weights.bin").write_bytes(b"whole")
        (folder / "done.json").write_text("{}")

    with pytest.raises(RuntimeError, match="mid-build"):
        ensure_directory(target, failing, "done.json")
    assert list((tmp_path / "cache").iterdir()) == []
    target.mkdir()
    (target / "weights.bin").write_bytes(b"stale")  # an entry some older code left unfinished
    assert ensure_directory(target, build, "done.json") == (target, False)
    assert (target / "weights.bin").read_bytes() == b"whole"
    assert ensure_directory(target, build, "done.json") == (target, True) and len(calls) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["entry"]
