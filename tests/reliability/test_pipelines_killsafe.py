"""Kill-safe pipelines: a run killed at any moment leaves no partial file, and a rerun repairs and
finishes.

A kill is simulated in process by :func:`kill_on_save` (the n-th PIL ``save`` writes half its bytes
to its target, then raises :class:`Killed`, which nothing catches), and for real by SIGKILL-ing an
``mmpo noisy-pairs --synthetic`` subprocess mid-write and at a random moment.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from mmpo import io as mmpo_io
from mmpo.cli import noisy_pairs as noisy_pairs_cli
from mmpo.cli.main import main
from mmpo.data.construct import noisy_pairs
from mmpo.data.construct.noisy_pairs import build_noisy_pairs
from mmpo.data.records import load_records
from mmpo.io import progress_path_for
from mmpo.methods.adavip.inpainting import MeanFillInpainter
from mmpo.methods.adavip.vision_rejected import VisionRejectedPipeline, build_vision_rejected
from mmpo.methods.adavip.vision_steps import NounTagger
from mmpo.toyworld import pipeline
from mmpo.toyworld.annotations import AnnotationDetector, AnnotationSegmenter, SceneIndex
from mmpo.toyworld.benchmark_files import write_toy_benchmarks
from mmpo.toyworld.data import ground_truth_pairs
from mmpo.toyworld.scenes import SHAPES, WorldConfig, sample_scenes
from mmpo.types import PreferenceRecord

# ---------------------------------------------------------------------------------------------
# Helpers


class Killed(BaseException):
    """A kill, as the code under test sees it: an exception no ``except Exception`` stops."""


def kill_on_save(monkeypatch, n: int) -> None:
    """Make the ``n``-th ``PIL.Image.Image.save`` write the first half of its bytes to its target
    (a path or a file object), as a process killed mid-write would, and then raise ``Killed``."""
    original = Image.Image.save
    calls = itertools.count(1)

    def save(self, fp, format=None, **params):
        if next(calls) != n:
            return original(self, fp, format, **params)
        buffer = io.BytesIO()
        original(self, buffer, format or "PNG", **params)
        half = buffer.getvalue()[: len(buffer.getvalue()) // 2]
        if isinstance(fp, (str, os.PathLike)):
            Path(fp).write_bytes(half)
        else:
            fp.write(half)
        raise Killed

    monkeypatch.setattr(Image.Image, "save", save)


def decodes(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError):
        return False
    return True


def assert_every_png_decodes(directory: Path) -> list[Path]:
    pngs = sorted(directory.glob("*.png"))
    assert [p.name for p in pngs if not decodes(p)] == []
    return pngs


def damage(paths: list[Path]) -> None:
    """What a kill mid-``save`` left behind: a 0-byte file, a truncated PNG, a few bytes of header."""
    paths[0].write_bytes(b"")
    paths[1].write_bytes(paths[1].read_bytes()[:40])
    if len(paths) > 2:
        paths[2].write_bytes(b"\x89PNG\r\n")


def no_temporary_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------
# Atomic writes (mmpo.io)


def test_a_kill_before_the_rename_keeps_the_old_file(monkeypatch, tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")

    def killed(src, dst):
        raise Killed

    monkeypatch.setattr(mmpo_io.os, "replace", killed)
    with pytest.raises(Killed):
        mmpo_io.atomic_write_text(target, "new")
    assert target.read_text() == "old" and no_temporary_files(tmp_path)
    monkeypatch.undo()
    mmpo_io.atomic_write_text(target, "new")
    assert target.read_text() == "new" and no_temporary_files(tmp_path)
    assert (target.stat().st_mode & 0o777) == 0o644


def test_content_addressed_pngs_are_fsynced_before_the_rename(monkeypatch, tmp_path):
    """save_png_by_hash (the pipelines' in-memory images) once renamed an unsynced file."""
    events: list[str] = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), replace(a, b))[1])
    path = mmpo_io.save_png_by_hash(Image.new("RGB", (4, 4), (1, 2, 3)), tmp_path)
    assert decodes(path) and "replace" in events
    assert "fsync" in events[: events.index("replace")]


def test_a_damaged_content_addressed_png_is_rewritten(tmp_path):
    image = Image.new("RGB", (4, 4), (9, 9, 9))
    path = mmpo_io.save_png_by_hash(image, tmp_path)
    path.write_bytes(b"")  # a kill mid-write by an older version
    assert mmpo_io.save_png_by_hash(image, tmp_path) == path and decodes(path)


def test_ensure_png_keeps_good_files_and_rerenders_damaged_ones(tmp_path, caplog):
    good, empty, cut = tmp_path / "good.png", tmp_path / "empty.png", tmp_path / "cut.png"
    image = Image.new("RGB", (16, 16), (200, 0, 0))
    for path in (good, empty, cut):
        image.save(path)
    empty.write_bytes(b"")
    cut.write_bytes(cut.read_bytes()[:-20])
    before = good.stat().st_mtime_ns
    renders = []

    def render():
        renders.append(1)
        return image

    with caplog.at_level(logging.WARNING, logger="mmpo.io"):
        for path in (good, empty, cut):
            mmpo_io.ensure_png(path, render)
    assert len(renders) == 2 and good.stat().st_mtime_ns == before
    assert all(decodes(p) for p in (good, empty, cut))
    assert sum("re-rendering" in r.getMessage() for r in caplog.records) == 2
    assert "empty" in caplog.text and str(cut) in caplog.text
    assert mmpo_io.image_problem(tmp_path / "missing.png") == "the file does not exist"


# ---------------------------------------------------------------------------------------------
# Every scene renderer


def scene_paths(directory: Path, seed: int, n: int) -> list[Path]:
    return [directory / f"{scene.id}.png" for scene in sample_scenes(WorldConfig(seed=seed), n)]


def test_noisy_pairs_synthetic_scenes_are_repaired_on_rerun(tmp_path, caplog):
    noisy_pairs_cli.synthetic_items(4, 0, tmp_path)
    paths = scene_paths(tmp_path, 0, 4)
    damage(paths)
    with caplog.at_level(logging.WARNING):
        items = noisy_pairs_cli.synthetic_items(4, 0, tmp_path)
    assert [item[1] for item in items] == [str(p) for p in paths]
    assert len(assert_every_png_decodes(tmp_path)) == 4
    assert caplog.text.count("re-rendering") == 3


def test_noisy_pairs_synthetic_scene_killed_mid_save_leaves_no_partial_png(monkeypatch, tmp_path):
    kill_on_save(monkeypatch, 3)
    with pytest.raises(Killed):
        noisy_pairs_cli.synthetic_items(5, 0, tmp_path)
    assert len(assert_every_png_decodes(tmp_path)) == 2
    monkeypatch.undo()
    noisy_pairs_cli.synthetic_items(5, 0, tmp_path)
    assert len(assert_every_png_decodes(tmp_path)) == 5


def test_noisy_pairs_cli_resumes_over_damaged_scenes(tmp_path, tiny_checkpoint, capsys):
    """The reported bug: a 0-byte scene from a killed run made every rerun crash in PIL."""
    out = tmp_path / "pairs.jsonl"
    paths = scene_paths(tmp_path / "images", 0, 3)
    paths[0].parent.mkdir()
    for path in paths:
        path.write_bytes(b"")
    argv = ["noisy-pairs", "--model", str(tiny_checkpoint), "--synthetic", "3", "--output", str(out),
            "--max-new-tokens", "2", "--batch-size", "3", "--no-progress"]
    assert main(argv) == 0
    assert "of 3 items written" in capsys.readouterr().out
    assert len(assert_every_png_decodes(tmp_path / "images")) == 3
    assert len(progress_path_for(out).read_text().splitlines()) == 4


def test_ground_truth_pairs_scenes_are_repaired_and_never_partial(monkeypatch, tmp_path):
    world = WorldConfig(seed=2)
    scenes = sample_scenes(world, 4, prefix="g")
    kill_on_save(monkeypatch, 2)
    with pytest.raises(Killed):
        ground_truth_pairs(scenes, world, tmp_path)
    assert len(assert_every_png_decodes(tmp_path)) == 1
    monkeypatch.undo()
    records = ground_truth_pairs(scenes, world, tmp_path)
    damage([Path(r.image) for r in records])
    records = ground_truth_pairs(scenes, world, tmp_path)
    assert len(assert_every_png_decodes(tmp_path)) == 4
    assert len(load_records(records).records) == 4  # load_records decodes every image


def test_toy_benchmarks_killed_mid_save_leave_no_partial_png(monkeypatch, tmp_path):
    kill_on_save(monkeypatch, 3)
    with pytest.raises(Killed):
        write_toy_benchmarks(tmp_path, n_scenes=4)
    assert len(assert_every_png_decodes(tmp_path / "images")) == 2
    monkeypatch.undo()
    files = write_toy_benchmarks(tmp_path, n_scenes=4)
    assert len(assert_every_png_decodes(files.images)) == 4
    assert json.loads(files.instances.read_text())["images"]


class StopAfterItems(Exception):
    """Raised by the stand-in build_noisy_pairs: the test needs only the items it was given."""


def test_demo_seva_scenes_are_repaired_on_rerun(monkeypatch, tmp_path):
    from mmpo.training.config import Methods

    given: list[list] = []

    def stand_in(model, processor, items, out_path, **kwargs):
        given.append(list(items))
        raise StopAfterItems

    monkeypatch.setattr(noisy_pairs, "build_noisy_pairs", stand_in)
    opts = pipeline.DemoOptions(cache_dir=str(tmp_path), n_pairs=3, progress=False)
    prepare = (opts, "seva", Methods(), tmp_path / "base", None, None, WorldConfig(seed=0))
    with pytest.raises(StopAfterItems):
        pipeline.prepare_records(*prepare)
    paths = [Path(item[1]) for item in given[0]]
    damage(paths)
    with pytest.raises(StopAfterItems):
        pipeline.prepare_records(*prepare)
    assert [Path(item[1]) for item in given[1]] == paths and all(decodes(p) for p in paths)


# ---------------------------------------------------------------------------------------------
# Unreadable input images name their record


class NoGenerate:
    def __init__(self):
        self.calls = 0

    def __call__(self, model, processor, images, prompts, **kwargs):
        self.calls += 1
        return [f"answer {i}" for i in range(len(images))]


def test_noisy_pairs_undecodable_image_names_the_item(monkeypatch, tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.new("RGB", (8, 8)).save(good)
    bad.write_bytes(b"")
    monkeypatch.setattr(noisy_pairs, "generate_responses", NoGenerate())
    items = [("a", str(good), "describe"), ("b", str(bad), "describe")]
    with pytest.raises(ValueError, match=r"item #1 \(id 'b'\): cannot read its image .*bad\.png") as caught:
        build_noisy_pairs(None, None, items, tmp_path / "out.jsonl", batch_size=1)
    assert "UnidentifiedImageError" in str(caught.value)
    assert [r.id for r in load_records(tmp_path / "out.jsonl").records] == ["a"]  # resumable from here


def test_noisy_pairs_missing_image_fails_before_any_generation(monkeypatch, tmp_path):
    generate = NoGenerate()
    monkeypatch.setattr(noisy_pairs, "generate_responses", generate)
    items = [("a", Image.new("RGB", (8, 8)), "describe"), ("b", str(tmp_path / "gone.png"), "describe")]
    with pytest.raises(FileNotFoundError, match=r"item #1 \(id 'b'\): image file .*gone\.png"):
        build_noisy_pairs(None, None, items, tmp_path / "out.jsonl")
    assert generate.calls == 0


class ZeroScorer:
    def score_matrix(self, images, texts):
        return torch.zeros(len(images), len(texts))  # (C, S)


def vision_pipeline(records) -> VisionRejectedPipeline:
    scenes = SceneIndex.from_records(records)
    return VisionRejectedPipeline(tagger=NounTagger(SHAPES), detector=AnnotationDetector(scenes),
                                  segmenter=AnnotationSegmenter(scenes), inpainter=MeanFillInpainter(),
                                  scorer=ZeroScorer())


def test_vision_rejected_undecodable_image_names_the_record(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n")
    record = PreferenceRecord(image=str(bad), prompt="p", chosen="a circle .", rejected="a square .", id="r-7")
    stages = SimpleNamespace(settings=lambda: {"stand-in": True})
    with pytest.raises(ValueError, match=r"record #0 \(id 'r-7'\): cannot read its image .*bad\.png"):
        build_vision_rejected([record], stages, tmp_path / "out.jsonl", tmp_path / "rejected")


def test_vision_rejected_killed_mid_save_resumes_with_whole_images(monkeypatch, tmp_path):
    world = WorldConfig(seed=4)
    records = ground_truth_pairs(sample_scenes(world, 4, prefix="v"), world, tmp_path / "in")
    out, image_dir = tmp_path / "out.jsonl", tmp_path / "rejected"
    kill_on_save(monkeypatch, 2)
    with pytest.raises(Killed):
        build_vision_rejected(records, vision_pipeline(records), out, image_dir)
    monkeypatch.undo()
    assert_every_png_decodes(image_dir)
    report = build_vision_rejected(records, vision_pipeline(records), out, image_dir)
    assert report.done_before + report.built + sum(report.skipped.values()) == 4
    loaded = load_records(out).records
    assert [r.id for r in loaded] == [r.id for r in records]
    assert all(decodes(Path(r.rejected_image)) for r in loaded if r.rejected_image)
    assert_every_png_decodes(image_dir)


# ---------------------------------------------------------------------------------------------
# Real kills of `mmpo noisy-pairs --synthetic`

#: Runs ``mmpo`` in a process that SIGKILLs itself at the KILL_AT_SAVE-th PIL save: a save straight
#: to a path gets half its bytes written first; a save into memory (an atomic write's encoding)
#: arms a kill at the next fsync, i.e. after the temporary file is written, before its rename.
KILLING_MMPO = r"""
import io, os, signal, sys
import PIL.Image

kill_at, calls, armed = int(os.environ["KILL_AT_SAVE"]), [0], [False]
save, fsync = PIL.Image.Image.save, os.fsync

def killing_save(self, fp, format=None, **params):
    calls[0] += 1
    if calls[0] == kill_at:
        if isinstance(fp, (str, os.PathLike)):
            buffer = io.BytesIO()
            save(self, buffer, format or "PNG", **params)
            with open(fp, "wb") as file:
                file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        armed[0] = True
    return save(self, fp, format, **params)

def killing_fsync(fd):
    if armed[0]:
        os.kill(os.getpid(), signal.SIGKILL)
    return fsync(fd)

PIL.Image.Image.save, os.fsync = killing_save, killing_fsync
from mmpo.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigkilled_noisy_pairs_runs_resume(tmp_path, tiny_checkpoint):
    out = tmp_path / "run" / "pairs.jsonl"
    images = tmp_path / "run" / "images"
    argv = ["noisy-pairs", "--model", str(tiny_checkpoint), "--synthetic", "12", "--output", str(out),
            "--max-new-tokens", "2", "--batch-size", "4", "--no-progress"]
    env = {**os.environ, "KILL_AT_SAVE": "3"}

    # 1. killed while writing the third scene
    killed = subprocess.run([sys.executable, "-c", KILLING_MMPO, *argv], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len(assert_every_png_decodes(images)) == 2  # the third is absent, not half written

    # 2. killed at a real moment: as soon as the pipeline has started (its progress file exists)
    process = subprocess.Popen([sys.executable, "-m", "mmpo.cli.main", *argv], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while process.poll() is None and not progress_path_for(out).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)

    # 3. the rerun finishes: every scene whole, every item once
    rerun = subprocess.run([sys.executable, "-m", "mmpo.cli.main", *argv], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(assert_every_png_decodes(images)) == 12
    progress = [json.loads(line) for line in progress_path_for(out).read_text().splitlines()[1:]]
    assert sorted(row["id"] for row in progress) == sorted(s.id for s in sample_scenes(WorldConfig(seed=0), 12))
    ids = [r.id for r in load_records(out).records] if out.exists() and out.stat().st_size else []
    assert len(ids) == len(set(ids)) == sum(row["outcome"] == "written" for row in progress)
