"""``mmpo train`` runs that would silently lose or leak something are refused, or fail in one line.

* two runs on one ``output_dir``: the second is refused, naming the first's pid (a lock file in
  ``output_dir``, held by the main process only, released at exit, taken over from a dead run);
* an ``output_dir`` that is the model's own directory (or a checkpoint folder inside it): refused before
  anything is loaded;
* a full disk while the model or a checkpoint is saved: one line naming ``output_dir``, the last
  checkpoint and the files already there intact;
* a damaged state file in the checkpoint resumed from: one line naming the file and the checkpoint
  (files are loaded with ``weights_only``: a pickled payload never runs);
* ``--hub_token``: never written into ``training_args.bin`` (nor any other file of the run).

One tiny CLI run (a checkpoint at step 1, a hub token) is shared by the tests of a module.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import logging
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mmpo.cli.main import main
from mmpo.data.records import save_records
from mmpo.training import checkpoints
from mmpo.training.checkpoints import LOCK_FILE, OutputDirInUseError, OutputDirLock
from mmpo.training.config import PreferenceConfig
from mmpo.training.run import FINAL_STAGING, check_output_dir

SECRET = "hf_mmpoTestSecretToken0123456789"


def train_argv(model: Path, records: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model_name_or_path", str(model), "--train_file", str(records), "--output_dir", str(out),
            "--max_steps", "1", "--per_device_train_batch_size", "2", "--use_cpu", "true", "--report_to", "none",
            "--disable_tqdm", "true", "--sft_weight", "1.0", "--logging_steps", "1", "--save_strategy", "no", *extra]


def error_lines(capsys) -> list[str]:
    """The command's error lines on stderr (transformers' progress bars left out)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("mmpo ")]


@pytest.fixture(scope="module")
def records(tmp_path_factory, tiny_records) -> Path:
    return save_records(tiny_records[:2], tmp_path_factory.mktemp("records") / "records.jsonl")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_checkpoint, records) -> Path:
    """The output_dir of a finished one-step run with ``--hub_token`` that saved ``checkpoint-1``."""
    out = tmp_path_factory.mktemp("finished") / "out"
    assert main(train_argv(tiny_checkpoint, records, out, "--save_strategy", "steps", "--save_steps", "1",
                           "--hub_token", SECRET)) == 0
    assert (out / "checkpoint-1" / "trainer_state.json").is_file() and (out / "model.safetensors").is_file()
    return out


def copy_run(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "out"))


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------- the lock (row 1)
HOLDER = textwrap.dedent("""
    import sys, time
    from mmpo.training.checkpoints import OutputDirLock
    OutputDirLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(120)
""")


@pytest.fixture
def holder(tmp_path):
    """Start a process that holds ``tmp_path/"out"``'s lock; returns ``(process, out)``. Killed at the end."""
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        yield process, out
    finally:
        process.kill()
        process.wait(timeout=30)


def test_a_second_run_on_the_same_output_dir_is_refused_naming_the_first(holder, tiny_checkpoint, records, capsys):
    process, out = holder
    assert main(train_argv(tiny_checkpoint, records, out)) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and f"pid {process.pid} " in err[0] and str(out) in err[0], err
    assert "in use by another mmpo run" in err[0] and "set another output_dir" in err[0]
    assert not list(out.glob("checkpoint-*")) and not (out / "model.safetensors").exists()
    assert (out / LOCK_FILE).exists()  # the first run's lock is left alone


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_warning(holder, caplog):
    process, out = holder
    process.kill()  # SIGKILL: no clean-up, the lock file stays
    process.wait(timeout=30)
    assert (out / LOCK_FILE).exists()
    with caplog.at_level(logging.WARNING, logger="mmpo.training.checkpoints"):
        with OutputDirLock(out):
            assert str(os.getpid()) in (out / LOCK_FILE).read_text()
    assert f"pid {process.pid}" in caplog.text and "taking over" in caplog.text
    assert not (out / LOCK_FILE).exists()


def test_a_lock_file_naming_a_live_process_of_this_host_is_respected(tmp_path):
    """Even without the kernel lock held (another file system, a copied file): the pid decides."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_FILE).write_text(f'{{"pid": {sleeper.pid}, "host": "{checkpoints._hostname()}", '
                                          '"started": "then"}')
        with pytest.raises(OutputDirInUseError, match=f"pid {sleeper.pid} "):
            OutputDirLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait(timeout=30)
    with OutputDirLock(tmp_path):  # now gone: taken over
        pass


def test_a_lock_file_of_another_host_is_respected_and_names_the_file(tmp_path):
    (tmp_path / LOCK_FILE).write_text('{"pid": 4242, "host": "another-node", "started": "then"}')
    with pytest.raises(OutputDirInUseError, match=f"pid 4242 on another-node.*delete {tmp_path / LOCK_FILE}"):
        OutputDirLock(tmp_path).acquire()


def test_one_process_cannot_take_the_lock_twice(tmp_path):
    with OutputDirLock(tmp_path):
        with pytest.raises(OutputDirInUseError, match=f"pid {os.getpid()} "):
            OutputDirLock(tmp_path).acquire()
    with OutputDirLock(tmp_path):
        pass


def test_the_lock_is_released_when_the_run_fails(tmp_path, records, capsys):
    out = tmp_path / "out"
    assert main(train_argv(tmp_path / "no-such-model", records, out)) == 2
    assert "no-such-model" in error_lines(capsys)[0]
    assert not (out / LOCK_FILE).exists()


def test_processes_other_than_the_main_one_do_not_take_the_lock(holder, monkeypatch, records):
    """Under torchrun/accelerate only the main process writes output_dir; the others must not refuse."""
    from mmpo.training.config import DataArguments, ModelArguments
    from mmpo.training.run import run_training

    _, out = holder
    monkeypatch.setattr(PreferenceConfig, "process_index", property(lambda self: 1))
    args = PreferenceConfig(output_dir=str(out), use_cpu=True, report_to="none")
    with pytest.raises(FileNotFoundError, match="no-such-model"):  # past the lock, at the model path
        run_training(ModelArguments(model_name_or_path=str(out.parent / "no-such-model")),
                     DataArguments(train_file=str(records)), args)


# ---------------------------------------------------------------------------------------------- output_dir (row 2)
def test_an_output_dir_that_is_the_model_directory_is_refused_before_loading(tmp_path, tiny_checkpoint, records,
                                                                             capsys):
    model = Path(shutil.copytree(tiny_checkpoint, tmp_path / "model"))
    before = digest(model)
    alias = tmp_path / "alias"
    alias.symlink_to(model)
    for out in (model, alias, Path(str(model) + "/")):
        assert main(train_argv(model, records, out)) == 2
        err = error_lines(capsys)
        assert len(err) == 1 and "is the model_name_or_path directory" in err[0] and "overwrite" in err[0], err
    assert digest(model) == before  # nothing written, not even the lock file


def test_a_model_in_a_checkpoint_folder_of_the_output_dir_is_refused(tmp_path):
    (tmp_path / "checkpoint-5").mkdir()
    with pytest.raises(ValueError, match="inside output_dir .*checkpoint-5.*resume_from_checkpoint"):
        check_output_dir(str(tmp_path), str(tmp_path / "checkpoint-5"))


def test_an_output_dir_that_is_the_reference_model_is_refused(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "reference").mkdir()
    with pytest.raises(ValueError, match="is the reference_model directory"):
        check_output_dir(str(tmp_path / "reference"), str(tmp_path / "model"), str(tmp_path / "reference"))


def test_output_dirs_that_overwrite_nothing_of_the_model_are_allowed(tmp_path):
    (tmp_path / "model").mkdir()
    check_output_dir(str(tmp_path / "model" / "tuned"), str(tmp_path / "model"))  # inside the model's directory
    check_output_dir(str(tmp_path), str(tmp_path / "model"))  # the model in a folder of output_dir it never writes
    check_output_dir(str(tmp_path / "other"), "org/hub-model")  # a Hub id


# ---------------------------------------------------------------------------------------------- disk full (row 5)
def no_space(kind: str) -> BaseException:
    if kind == "safetensors":
        from safetensors import SafetensorError

        return SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                               '"No space left on device" })')
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("kind", ["safetensors", "oserror"])
def test_a_full_disk_at_the_final_save_is_one_line_and_keeps_the_previous_files(
        finished, tmp_path, tiny_checkpoint, records, monkeypatch, capsys, kind):
    import transformers.modeling_utils

    out = copy_run(finished, tmp_path)
    before = digest(out)

    def full(*args, **kwargs):
        raise no_space(kind)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)
    assert main(train_argv(tiny_checkpoint, records, out)) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and err[0].startswith(f"mmpo train: error: no space left on device while saving the "
                                               f"trained model in {out}: the disk is full"), err
    assert f"{out / 'checkpoint-1'}, is intact" in err[0]
    assert digest(out) == before  # the earlier run's model and checkpoint as they were
    assert not (out / FINAL_STAGING).exists() and not (out / LOCK_FILE).exists()


def test_a_full_disk_at_a_checkpoint_save_names_the_intact_one_and_removes_the_partial_one(
        tmp_path, tiny_checkpoint, records, monkeypatch, capsys):
    import transformers.modeling_utils

    out = tmp_path / "out"
    original = transformers.modeling_utils.safe_save_file

    def full_at_step_2(tensors, filename, *args, **kwargs):
        if "checkpoint-2" in str(filename):
            raise no_space("safetensors")
        return original(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full_at_step_2)
    assert main(train_argv(tiny_checkpoint, records, out, "--max_steps", "2", "--save_strategy", "steps",
                           "--save_steps", "1")) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and f"while saving checkpoint checkpoint-2 in {out}: the disk is full" in err[0], err
    assert f"{out / 'checkpoint-1'}, is intact" in err[0]
    assert (out / "checkpoint-1" / "trainer_state.json").exists() and not (out / "checkpoint-2").exists()


def test_a_write_that_fails_without_saying_why_is_a_full_disk_when_no_space_is_left(tmp_path, monkeypatch):
    error = RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/3: "
                         "file write failed")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1024))
    assert checkpoints.disk_full(error, tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=10 * 2**30))
    assert not checkpoints.disk_full(error, tmp_path)
    assert checkpoints.disk_full(RuntimeError("wrapped"), None) is False
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert checkpoints.disk_full(wrapped)


# ---------------------------------------------------------------------------------------------- resuming (row 6)
def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def payload(path: Path) -> None:
    """A pickle whose loading with weights_only=False would create ``PWNED`` next to it."""
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {path.parent / 'PWNED'}",))

    torch.save({"python": Payload()}, path)


DAMAGES = {
    "rng_state.pth truncated": ("rng_state.pth", truncate),
    "optimizer.pt garbage": ("optimizer.pt", lambda p: p.write_bytes(os.urandom(4096))),
    "scheduler.pt empty": ("scheduler.pt", lambda p: p.write_bytes(b"")),
    "scaler.pt truncated": ("scaler.pt", lambda p: (shutil.copy(p.parent / "scheduler.pt", p), truncate(p))),
    "trainer_state.json not a state": ("trainer_state.json", lambda p: p.write_text("[]")),
    "rng_state.pth with a payload": ("rng_state.pth", payload),
}


@pytest.mark.parametrize("name", list(DAMAGES))
def test_a_damaged_state_file_of_the_resumed_checkpoint_is_one_line_naming_it(
        finished, tmp_path, tiny_checkpoint, records, capsys, name):
    file, damage = DAMAGES[name]
    out = copy_run(finished, tmp_path)
    checkpoint = out / "checkpoint-1"
    damage(checkpoint / file)
    assert main(train_argv(tiny_checkpoint, records, out, "--max_steps", "2",
                           "--resume_from_checkpoint", str(checkpoint))) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and err[0].startswith(f"mmpo train: error: cannot resume from {checkpoint}: {file} "), err
    assert f"delete {checkpoint}" in err[0] and "older checkpoint" in err[0]
    assert not (checkpoint / "PWNED").exists()


def test_a_state_file_of_another_run_is_named_as_not_fitting(finished, tmp_path, tiny_checkpoint, records, capsys):
    out = copy_run(finished, tmp_path)
    checkpoint = out / "checkpoint-1"
    torch.save({"state": {}, "param_groups": []}, checkpoint / "optimizer.pt")  # readable, of no such optimizer
    assert main(train_argv(tiny_checkpoint, records, out, "--max_steps", "2",
                           "--resume_from_checkpoint", "true")) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and f"cannot resume from {checkpoint}: optimizer.pt" in err[0], err
    assert "could not be applied to this run" in err[0]


# ---------------------------------------------------------------------------------------------- tokens (row 7)
def test_the_hub_token_is_in_no_file_of_the_run(finished):
    for path in (finished / "training_args.bin", finished / "checkpoint-1" / "training_args.bin"):
        args = torch.load(path, weights_only=False)  # the run's own file
        assert isinstance(args, PreferenceConfig) and args.hub_token is None
    leaks = [str(p) for p in finished.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaks == []


def test_copies_in_memory_keep_the_token_and_written_ones_do_not(tmp_path):
    args = PreferenceConfig(output_dir=str(tmp_path), hub_token=SECRET, use_cpu=True, report_to="none")
    assert copy.copy(args).hub_token == SECRET and copy.deepcopy(args).hub_token == SECRET
    assert pickle.loads(pickle.dumps(args)).hub_token is None and args.hub_token == SECRET
    assert SECRET not in args.to_json_string() and SECRET not in str(args.to_sanitized_dict())
    assert args.to_dict()["hub_token"] is None
