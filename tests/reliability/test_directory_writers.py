"""Whole-directory writers (issue #34): the base model, the tiny CLIP, the cache entries and the demo's
model are built in a temporary sibling folder and renamed into place (mmpo.io.building_directory).

Two writers of one directory never interleave their files: a second ``mmpo base-model`` is refused,
naming the first one's pid, and of two writers that both got going the second to finish is told
that another process wrote the directory. A failure or a kill at any moment leaves the target
absent, the old directory or the complete new one.
"""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from mmpo.cli import main as mmpo_main
from mmpo.io import building_directory, ensure_directory
from mmpo.toyworld import base_model, clip
from mmpo.toyworld.base_model import BaseModelRecipe, build_base_model

FILES = ("config.json", "model.safetensors", "tokenizer.json")


def fill(folder: Path, tag: str, pause: float = 0.0) -> None:
    """A checkpoint-like directory whose every file says who wrote it; ``recipe.json`` last."""
    folder.mkdir(exist_ok=True)
    for name in FILES:
        (folder / name).write_text(tag)
        time.sleep(pause)
    (folder / "recipe.json").write_text(tag)


def writers_of(target: Path) -> set[str]:
    """Who wrote the files of ``target`` (one name when it is whole)."""
    return {(target / name).read_text() for name in (*FILES, "recipe.json")}


def leftovers(parent: Path, target: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p != target)


# ------------------------------------------------------------------------------------ concurrency
def test_a_second_base_model_writer_is_refused_naming_the_first(tmp_path, monkeypatch, capsys):
    """Two `mmpo base-model --output-dir D` at once: both said "written", D was written in place by
    both. Now the second is refused (exit 2, one line naming the first one's pid) and D is the
    first one's model, whole."""
    target = tmp_path / "base"
    inside, release = threading.Event(), threading.Event()

    def slow_build(recipe, folder):
        (folder / "config.json").write_text("first")
        inside.set()
        assert release.wait(10)
        fill(folder, "first")

    monkeypatch.setattr(base_model, "_train_base_model", slow_build)
    status = {}
    first = threading.Thread(target=lambda: status.setdefault("first", mmpo_main.main(
        ["base-model", "--output-dir", str(target), "--steps", "1", "--no-progress"])))
    first.start()
    assert inside.wait(10)
    assert mmpo_main.main(["base-model", "--output-dir", str(target), "--steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"pid {os.getpid()}" in err and "being written by another process" in err and str(target) in err
    release.set()
    first.join(10)
    assert status["first"] == 0 and "base model written to" in capsys.readouterr().out
    assert writers_of(target) == {"first"} and leftovers(tmp_path, target) == []


def test_two_writers_that_both_built_the_second_is_told_and_keeps_nothing(tmp_path):
    """Writers that both got going (exclusive=False, as cache entries are built): the first to
    finish is renamed in, the second gets FileExistsError saying another process wrote the target,
    and the target holds the first one's files only."""
    target = tmp_path / "entry"
    barrier = threading.Barrier(2, timeout=10)
    outcome = {}

    def writer(tag: str, pause: float) -> None:
        try:
            with building_directory(target, exclusive=False) as folder:
                barrier.wait()          # both are building now
                fill(folder, tag, pause)
            outcome[tag] = "written"
        except FileExistsError as error:
            outcome[tag] = str(error)

    threads = [threading.Thread(target=writer, args=("fast", 0.0)), threading.Thread(target=writer, args=("slow", 0.1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert outcome["fast"] == "written"
    assert "written by another process" in outcome["slow"] and "discarded this one" in outcome["slow"]
    assert writers_of(target) == {"fast"} and leftovers(tmp_path, target) == []


def test_racing_cache_builds_both_return_the_one_kept(tmp_path):
    target = tmp_path / "cache" / "entry"
    barrier = threading.Barrier(2, timeout=10)
    results = {}

    def build(tag: str, pause: float):
        def fill_it(folder: Path) -> None:
            barrier.wait()
            fill(folder, tag, pause)
        results[tag] = ensure_directory(target, fill_it, "recipe.json")

    threads = [threading.Thread(target=build, args=("a", 0.0)), threading.Thread(target=build, args=("b", 0.1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == {"a": (target, False), "b": (target, False)}
    assert writers_of(target) == {"a"} and leftovers(target.parent, target) == []


# ------------------------------------------------------------------------------ failures and kills
def test_a_build_that_fails_midway_leaves_nothing_or_the_old_directory(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError, match="killed"):
        with building_directory(target) as folder:
            (folder / "config.json").write_text("half")
            raise RuntimeError("killed mid-build")
    assert list(tmp_path.iterdir()) == []
    fill(target, "old")
    with pytest.raises(RuntimeError, match="killed"):
        with building_directory(target, replace=True) as folder:
            (folder / "config.json").write_text("half")
            raise RuntimeError("killed mid-build")
    assert writers_of(target) == {"old"} and leftovers(tmp_path, target) == []
    with building_directory(target, replace=True) as folder:
        fill(folder, "new")
    assert writers_of(target) == {"new"} and leftovers(tmp_path, target) == []


def test_base_model_and_tiny_clip_builds_that_fail_leave_no_directory(tmp_path, monkeypatch):
    def failing(*args):
        folder = args[-1]
        (folder / "config.json").write_text("half")
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(base_model, "_train_base_model", failing)
    monkeypatch.setattr(clip, "_train_tiny_clip", failing)
    with pytest.raises(RuntimeError):
        build_base_model(BaseModelRecipe(steps=1), tmp_path / "base")
    with pytest.raises(RuntimeError):
        clip.train_tiny_clip(tmp_path / "clip", recipe=clip.TinyCLIPRecipe(steps=1))
    assert list(tmp_path.iterdir()) == []


def test_an_existing_checkpoint_is_replaced_only_with_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(base_model, "_train_base_model", lambda recipe, folder: fill(folder, "new"))
    target = tmp_path / "base"
    fill(target, "old")
    argv = ["base-model", "--output-dir", str(target), "--steps", "1", "--no-progress"]
    assert mmpo_main.main(argv) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err and writers_of(target) == {"old"}
    assert mmpo_main.main([*argv, "--overwrite"]) == 0
    assert writers_of(target) == {"new"} and leftovers(tmp_path, target) == []
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    assert mmpo_main.main(["base-model", "--output-dir", str(other), "--steps", "1", "--overwrite"]) == 2
    assert "not a checkpoint" in capsys.readouterr().err and (other / "todo.txt").read_text() == "mine"


KILLED_WRITER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from mmpo.io import building_directory

    target, mode = Path(sys.argv[1]), sys.argv[2]
    if mode == "between-renames":   # die right after the old directory was moved aside
        rename = Path.rename
        def dying(self, new):
            result = rename(self, new)
            if ".old-" in str(new):
                os._exit(9)
            return result
        Path.rename = dying
    with building_directory(target, replace=True) as folder:
        (folder / "config.json").write_text("new")
        if mode == "mid-build":
            print("building", flush=True)
            time.sleep(60)
        (folder / "recipe.json").write_text("new")
""")


def run_writer(target: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target), mode], stdout=subprocess.PIPE, text=True)


def test_a_sigkilled_writer_leaves_the_old_directory_and_the_next_one_cleans_up(tmp_path):
    target = tmp_path / "model"
    fill(target, "old")
    writer = run_writer(target, "mid-build")
    assert writer.stdout.readline() == "building\n"
    writer.send_signal(signal.SIGKILL)
    writer.wait(10)
    assert writers_of(target) == {"old"}
    assert [p.name.split("-")[0] for p in tmp_path.iterdir() if p != target] == [".model.building"]
    with building_directory(target, replace=True) as folder:
        fill(folder, "next")
    assert writers_of(target) == {"next"} and leftovers(tmp_path, target) == []


def test_a_writer_killed_between_its_two_renames_the_old_directory_comes_back(tmp_path):
    target = tmp_path / "model"
    fill(target, "old")
    assert run_writer(target, "between-renames").wait(30) == 9
    assert not target.exists()  # the old one aside, the new one not yet in: nothing half-written at the target
    with pytest.raises(FileExistsError, match="already exists"):
        with building_directory(target):  # the next writer restores the old directory first
            pass
    assert writers_of(target) == {"old"} and leftovers(tmp_path, target) == []


def test_a_cached_base_model_is_built_aside_and_leaves_only_its_entry(tmp_path, monkeypatch):
    """ensure_base_model builds through ensure_directory, and build_base_model builds aside too:
    the cache ends with the one entry, nothing else."""
    monkeypatch.setattr(base_model, "_train_base_model", lambda recipe, folder: fill(folder, "cached"))
    path, ready = base_model.ensure_base_model(BaseModelRecipe(steps=1), tmp_path, shipped=False)
    assert not ready and writers_of(path) == {"cached"} and [p.name for p in tmp_path.iterdir()] == [path.name]
    assert base_model.ensure_base_model(BaseModelRecipe(steps=1), tmp_path, shipped=False) == (path, True)
