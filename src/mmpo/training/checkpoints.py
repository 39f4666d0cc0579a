"""Crash-consistent checkpoints: mmpo's own state written atomically, and resume from complete ones only.

``Trainer._save_checkpoint`` writes, in this order: the weights (``model.safetensors`` or
``adapter_model.safetensors``), the optimizer, scheduler and RNG states, then ``trainer_state.json``,
then deletes checkpoints beyond ``save_total_limit``. :class:`~mmpo.training.trainer.PreferenceTrainer`
writes ``mmpo_state.json`` (DAMA's running mean, its generator, the skipped-batch count) *before*
all of these, atomically (:func:`mmpo.io.atomic_write_json`). So a kill at any moment leaves either a complete checkpoint or one
without a readable ``trainer_state.json``, and :func:`checkpoint_problem` tells them apart;
``transformers.trainer_utils.get_last_checkpoint`` only looks at folder names, which would resume
from a half-written checkpoint.

Also here: the checks of the state files ``Trainer`` loads from a checkpoint it resumes from
(:func:`check_resume_files`, :func:`reading_checkpoint`: one error naming the damaged file), the
error of a save that filled the disk (:class:`DiskFullError`), and the lock that keeps a second run
out of an ``output_dir`` (:class:`OutputDirLock`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..hub import safetensors_problem
from ..io import process_gone

logger = logging.getLogger(__name__)

#: mmpo's state inside each ``checkpoint-N`` folder.
STATE_FILE = "mmpo_state.json"
#: ``Trainer``'s state, written last: its presence marks a finished checkpoint.
TRAINER_STATE_FILE = "trainer_state.json"
#: Full weights, LoRA adapters, or the index of sharded full weights.
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json")


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed from: a file is missing or damaged (the message names it)."""


def read_json(path: Path) -> Any:
    """The JSON in ``path``; ``CheckpointError`` naming the file when it is missing or unreadable."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"{path} is not readable JSON (truncated by a kill?): {error}") from None


def _weights_problem(folder: Path) -> str | None:
    present = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not present:
        return f"{folder} has no weights (none of {', '.join(WEIGHT_FILES)})"
    for path in present:
        if path.name.endswith(".index.json"):
            try:
                shards = sorted(set(read_json(path)["weight_map"].values()))
            except (CheckpointError, KeyError, TypeError, AttributeError) as error:
                return f"{path} is not a readable weight index ({error})"
            files = [folder / shard for shard in shards]
            missing = [str(p) for p in files if not p.is_file()]
            if missing:
                return f"{path} names shards that are missing: {missing[:3]}"
        else:
            files = [path]
        for file in files:
            problem = safetensors_problem(file)
            if problem:
                return problem
    return None


def checkpoint_problem(folder: str | os.PathLike, need_state: bool = True) -> str | None:
    """Why ``folder`` is not a complete checkpoint, or None when it is.

    Complete: ``trainer_state.json`` present and readable JSON, weights present and as long as
    their headers say, and (``need_state``) ``mmpo_state.json`` present and readable JSON. A
    ``mmpo_state.json`` that is present but unreadable is a problem even without ``need_state``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} is not a directory"
    try:
        read_json(folder / TRAINER_STATE_FILE)
    except CheckpointError as error:
        return str(error)
    problem = _weights_problem(folder)
    if problem:
        return problem
    if need_state or (folder / STATE_FILE).exists():
        try:
            read_json(folder / STATE_FILE)
        except CheckpointError as error:
            return str(error)
    return None


def checkpoint_folders(output_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint-N`` folders in ``output_dir``, newest (largest N) first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        prefix, _, step = path.name.partition("-")
        if prefix == PREFIX_CHECKPOINT_DIR and step.isdigit() and path.is_dir():
            found.append((int(step), path))
    return [path for _, path in sorted(found, reverse=True)]


def newest_complete_checkpoint(output_dir: str | os.PathLike,
                               need_state: bool = True) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint in ``output_dir`` (or None), and the newer ones skipped with why."""
    skipped = []
    for folder in checkpoint_folders(output_dir):
        problem = checkpoint_problem(folder, need_state)
        if problem is None:
            return folder, skipped
        skipped.append((folder, problem))
    return None, skipped


# ---------------------------------------------------------------------------------------------- resuming
#: The files ``Trainer`` loads from a checkpoint it resumes from, besides the weights and ``trainer_state.json``.
RESUME_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth")
_ZIP_MAGIC = b"PK\x03\x04"


def torch_file_problem(path: str | os.PathLike) -> str | None:
    """Why a file ``torch.save`` wrote (a zip archive) cannot be read, or None; reads only its
    directory at the end of the file, so a truncated file is found without loading it."""
    import zipfile

    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as error:
        return f"{path} cannot be read ({error.strerror or error})"
    if size == 0:
        return f"{path} is empty"
    if head != _ZIP_MAGIC:
        if head[:1] == b"\x80":  # a pickle: torch's legacy format, which Trainer does not write
            return None
        return f"{path} is not a file torch.save writes"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        return f"{path} is truncated or damaged ({error})"
    if not any(name.endswith("data.pkl") for name in names):
        return f"{path} holds no torch data (data.pkl)"
    return None


def check_resume_files(checkpoint: str | os.PathLike) -> None:
    """Check the files ``Trainer`` will load from ``checkpoint`` before it does: ``trainer_state.json``
    as a ``TrainerState``, and the optimizer, scheduler, scaler and RNG states' archives.

    Raises:
        CheckpointError: naming the file, the checkpoint and what to do.
    """
    from transformers import TrainerState

    folder = Path(checkpoint)
    state_file = folder / TRAINER_STATE_FILE
    try:
        TrainerState.load_from_json(str(state_file))
    except Exception as error:
        raise CheckpointError(damaged_message(state_file, folder, error)) from None
    names = [*RESUME_FILES[:3], *sorted(p.name for p in folder.glob("rng_state*.pth"))]
    for name in dict.fromkeys(names):
        path = folder / name
        if path.is_file():
            problem = torch_file_problem(path)
            if problem:
                raise CheckpointError(damaged_message(path, folder, problem))


def damaged_message(path: Path, checkpoint: Path, problem: BaseException | str) -> str:
    """The message for a checkpoint file that cannot be resumed from: the file, the checkpoint, the cause."""
    if isinstance(problem, BaseException):
        text = " ".join(str(problem).split())
        if "weights only load failed" in text.lower():  # torch's safe loader refused it; nothing in it ran
            problem = (f"{path.name} holds objects that torch's safe loader (weights_only) refuses, so it was not "
                       "loaded: not a file Trainer wrote, or altered")
        else:
            text = text if len(text) <= 200 else text[:200] + "..."
            problem = f"{path.name} is damaged ({type(problem).__name__}{': ' + text if text else ''})"
    else:
        problem = problem.replace(str(path), path.name)
    return (f"cannot resume from {checkpoint}: {problem}. The checkpoint is damaged (an interrupted save or copy?): "
            f"delete {checkpoint} and resume from an older checkpoint (resume_from_checkpoint: true takes the newest "
            f"complete one), or start afresh")


@contextlib.contextmanager
def reading_checkpoint(checkpoint: str | os.PathLike | None, names: tuple[str, ...]) -> Iterator[None]:
    """Any error while ``Trainer`` loads the files ``names`` of ``checkpoint`` comes out as one
    :class:`CheckpointError` naming the damaged file (found by loading each again, safely:
    ``weights_only``), the checkpoint and the cause; one that all of them load without is named
    as not fitting this run."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as error:
        if checkpoint is None or isinstance(error, MemoryError) or "out of memory" in str(error).lower():
            raise
        folder = Path(checkpoint)
        present = [folder / name for name in names if (folder / name).is_file()]
        for path in present:
            if path.suffix == ".safetensors":
                problem = safetensors_problem(path)
            else:
                problem = torch_file_problem(path) or _load_problem(path)
            if problem is not None:
                raise CheckpointError(damaged_message(path, folder, problem)) from error
        text = " ".join(str(error).split())[:300]
        files = ", ".join(p.name for p in present) or ", ".join(names)
        raise CheckpointError(
            f"cannot resume from {folder}: {files} could not be applied to this run ({type(error).__name__}: {text}); "
            "the checkpoint was written by a run with other settings (model, LoRA, optimizer, number of processes?): "
            "resume with those, or start afresh") from error


def _load_problem(path: Path) -> BaseException | None:
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:
        return error
    return None


# ---------------------------------------------------------------------------------------------- disk full
class DiskFullError(OSError):
    """The disk ran out of space while a run wrote its output directory; the message names it."""

    def __str__(self) -> str:
        return str(self.strerror)


#: Fragments of the messages of failed writes that do not carry ``errno`` (safetensors' Rust I/O error).
_FULL_FRAGMENTS = ("no space left on device", "disk quota exceeded", "storagefull", "os error 28")
#: Fragments of failed writes that do not say why (``torch.save``): a full disk when little space is left.
_WRITE_FRAGMENTS = ("write failed", "failed writing", "failed to write")


def disk_full(error: BaseException, directory: str | os.PathLike | None = None) -> bool:
    """Whether ``error`` (or an error it was raised from) is a write that failed for want of space."""
    import errno as errnos
    import shutil

    seen, current = set(), error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errnos.ENOSPC, errnos.EDQUOT):
            return True
        text = str(current).lower()
        if any(fragment in text for fragment in _FULL_FRAGMENTS):
            return True
        if directory is not None and any(fragment in text for fragment in _WRITE_FRAGMENTS):
            try:
                if shutil.disk_usage(directory).free < 64 * 2**20:
                    return True
            except OSError:
                pass
        current = current.__cause__ or current.__context__
    return False


def disk_full_error(what: str, output_dir: str | os.PathLike, kept: str) -> DiskFullError:
    """The :class:`DiskFullError` for a save of ``what`` into ``output_dir`` that ran out of space;
    ``kept`` says what was left intact."""
    import errno as errnos

    return DiskFullError(errnos.ENOSPC, f"no space left on device while saving {what} in {output_dir}: the disk is "
                                        f"full: free space, or write to another directory (output_dir); {kept}")


# ---------------------------------------------------------------------------------------------- the lock
#: The lock file a run holds in its ``output_dir`` while it writes there (:class:`OutputDirLock`); named
#: ``_*`` so that ``Trainer.push_to_hub``, which uploads ``output_dir`` while the run holds it, leaves it out.
LOCK_FILE = "_mmpo_train.lock"


class OutputDirInUseError(RuntimeError):
    """Another run is writing the same ``output_dir``; the message names its pid, host and start time."""


class OutputDirLock:
    """An exclusive lock on an ``output_dir``: the file :data:`LOCK_FILE` in it, created atomically and
    held with ``fcntl.flock`` (which the kernel drops when the process dies), holding the holder's
    pid, host and start time as JSON.

    A second run is refused with :class:`OutputDirInUseError` naming the first. A lock file left by a
    process that is gone (a run killed with SIGKILL, a crashed machine's on a shared disk) is taken
    over with a warning when the kernel holds no lock on it and its pid is not running on this host;
    one naming a live process on this host, or a process on another host, is respected (delete the
    file when that run is over). Where the file system has no ``flock``, the pid alone decides.
    """

    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir) / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> OutputDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, or raise :class:`OutputDirInUseError`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            try:
                fd, created = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
            except FileExistsError:
                try:
                    fd, created = os.open(self.path, os.O_RDWR), False
                except FileNotFoundError:
                    continue  # released meanwhile
            try:
                if self._take(fd, created):
                    self._fd = fd
                    return
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        raise OutputDirInUseError(f"{self.path.parent} is being taken and released by other runs; cannot lock it "
                                  f"({self.path})")

    def _take(self, fd: int, created: bool) -> bool:
        """Lock the open file ``fd``: True when it is ours now, False to try again."""
        locked = _flock(fd)
        if locked is False:
            raise OutputDirInUseError(self._busy(_read_holder(fd)))
        try:
            if not os.path.samestat(os.fstat(fd), os.stat(self.path)):
                return False  # the file was released (deleted) and maybe created again meanwhile
        except FileNotFoundError:
            return False
        holder = None if created else _read_holder(fd)
        if holder is not None:
            state = _holder_state(holder)
            if state in ("alive", "elsewhere"):
                raise OutputDirInUseError(self._busy(holder, state))
            if locked is None:  # no flock here: the pid decided; remove the file and race for it again
                logger.warning("%s: taking over the lock of a run that is gone (%s)", self.path.parent,
                               _describe(holder))
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                return False
            if state == "dead":
                logger.warning("%s: taking over the lock left by a run that is gone (%s)", self.path.parent,
                               _describe(holder))
        elif not created:
            logger.warning("%s: taking over a lock file without a readable holder (%s)", self.path.parent, self.path)
        _write_holder(fd)
        return True

    def _busy(self, holder: dict | None, state: str = "alive") -> str:
        if holder is None:
            return (f"{self.path.parent} is in use by another mmpo run (lock file {self.path}): wait for it to "
                    "finish, or set another output_dir")
        over = (f"; if that run is over, delete {self.path}" if state == "elsewhere" else "")
        return (f"{self.path.parent} is in use by another mmpo run ({_describe(holder)}; lock file {self.path}): "
                f"wait for it to finish, or set another output_dir{over}")

    def release(self) -> None:
        """Delete the lock file and drop the lock (nothing when not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(fd)  # drops the flock


def _flock(fd: int) -> bool | None:
    """``flock(LOCK_EX | LOCK_NB)``: True when taken, False when another process holds it, None when
    the platform or file system has no such lock."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19] if ")" in stat else None


def _write_holder(fd: int) -> None:
    import time

    holder = {"pid": os.getpid(), "host": _hostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "process_start": _process_start(os.getpid())}
    data = json.dumps(holder).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    with contextlib.suppress(OSError):
        os.fsync(fd)


def _read_holder(fd: int) -> dict | None:
    try:
        data = os.pread(fd, 4096, 0)
        holder = json.loads(data)
    except (OSError, ValueError):
        return None
    if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int):
        return None
    return holder


def _holder_state(holder: dict) -> str:
    """``alive`` (a running process on this host), ``dead`` (gone from this host) or ``elsewhere``
    (another host: its liveness cannot be told from here)."""
    if holder.get("host") != _hostname():
        return "elsewhere"
    pid = holder["pid"]
    if pid == os.getpid():
        return "dead"  # this process: a lock it left behind, not another run
    if process_gone(pid):
        return "dead"
    start = holder.get("process_start")
    if start is not None and _process_start(pid) not in (None, start):
        return "dead"  # the pid was reused by another process
    return "alive"


def _describe(holder: dict) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
