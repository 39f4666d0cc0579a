"""Crash-consistent checkpoints: mmpo's own state written atomically, and resume from complete ones only.

``Trainer._save_checkpoint`` writes, in this order: the weights (``model.safetensors`` or
``adapter_model.safetensors``), the optimizer, scheduler and RNG states, then ``trainer_state.json``,
then deletes checkpoints beyond ``save_total_limit``. :class:`~mmpo.training.trainer.PreferenceTrainer`
writes ``mmpo_state.json`` (DAMA's running mean, its generator, the skipped-batch count) *before*
all of these, atomically (:func:`mmpo.io.atomic_write_json`). So a kill at any moment leaves either a complete checkpoint or one
without a readable ``trainer_state.json``, and :func:`checkpoint_problem` tells them apart;
``transformers.trainer_utils.get_last_checkpoint`` only looks at folder names, which would resume
from a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

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


def _safetensors_problem(path: Path) -> str | None:
    """Why a ``.safetensors`` file is incomplete (shorter than its header says), or None."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 0 or 8 + length > size:
            return f"{path} is truncated ({size} bytes, shorter than its header)"
        try:
            header = json.loads(f.read(length))
        except ValueError:
            return f"{path} has an unreadable header"
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if 8 + length + end > size:
        return f"{path} is truncated ({size} bytes of {8 + length + end})"
    return None


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
            problem = _safetensors_problem(file)
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
