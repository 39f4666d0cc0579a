"""Crash-consistent checkpoints: a kill at any moment of a checkpoint write never resumes wrongly.

A kill is simulated the way it leaves the disk: a copy of a complete checkpoint of a tiny DAMA
model-aware run (``save_steps=1``) with files removed or truncated. ``resume_from_checkpoint=True``
must pick the newest *complete* checkpoint and end bit-identical to the uninterrupted run (weights
and DAMA's ``R_bar``); a damaged checkpoint named explicitly is an error naming the file.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from transformers import TrainerState

from helpers import load_tiny, training_args
from mmpo.data.collator import PreferenceDataset
from mmpo.training.checkpoints import (
    STATE_FILE,
    TRAINER_STATE_FILE,
    CheckpointError,
    newest_complete_checkpoint,
)
from mmpo.training.config import DamaConfig, Methods, PreferenceConfig
from mmpo.training.trainer import PreferenceTrainer

STEPS = 3
DAMA = Methods(dama=DamaConfig(model=True))


def make_args(out: Path, **kw) -> PreferenceConfig:
    return training_args(out, **{"max_steps": STEPS, "save_strategy": "steps", "save_steps": 1, "sft_weight": 1.0, **kw})


def run(tiny_checkpoint, records, out: Path, methods: Methods = DAMA, resume=None, **kw) -> PreferenceTrainer:
    model, processor = load_tiny(tiny_checkpoint)
    trainer = PreferenceTrainer(model, make_args(out, **kw), processor, PreferenceDataset(records), methods=methods)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_checkpoint, tiny_records):
    """A 3-step DAMA run saving every step; records whether ``mmpo_state.json`` was already in the
    folder each time ``trainer_state.json`` was written. Returns ``(out, weights, r_bar, seen)``."""
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    seen = []
    original = TrainerState.save_to_json

    def save_to_json(self, json_path):
        seen.append((Path(json_path).parent.name, (Path(json_path).parent / STATE_FILE).exists()))
        return original(self, json_path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TrainerState, "save_to_json", save_to_json)
        trainer = run(tiny_checkpoint, tiny_records, out)
    weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    assert trainer.dama.r_bar != 0.0
    return out, weights, trainer.dama.r_bar, seen


def killed_copy(uninterrupted, tmp_path, damage) -> Path:
    """The output folder as a kill while checkpoint-3 was written left it: copies of checkpoint-1..3,
    checkpoint-3 damaged by ``damage(folder)``."""
    source = uninterrupted[0]
    out = tmp_path / "out"
    for n in range(1, STEPS + 1):
        shutil.copytree(source / f"checkpoint-{n}", out / f"checkpoint-{n}")
    damage(out / f"checkpoint-{STEPS}")
    return out


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGES = {
    "mmpo_state.json missing": lambda c: (c / STATE_FILE).unlink(),
    "mmpo_state.json truncated": lambda c: truncate(c / STATE_FILE),
    "trainer_state.json missing (killed before Trainer finished)": lambda c: (c / TRAINER_STATE_FILE).unlink(),
    "trainer_state.json truncated": lambda c: truncate(c / TRAINER_STATE_FILE),
    "only the weights written": lambda c: [p.unlink() for p in c.iterdir() if p.name != "model.safetensors"],
    "weights truncated": lambda c: truncate(c / "model.safetensors"),
    "weights missing": lambda c: (c / "model.safetensors").unlink(),
}


def test_mmpo_state_is_written_before_trainer_state(uninterrupted):
    """Before: ``on_save`` wrote mmpo_state.json after trainer_state.json, so a kill between the two
    left a checkpoint that looked complete and resumed with R_bar = 0 and exit 0."""
    *_, seen = uninterrupted
    assert seen == [(f"checkpoint-{n}", True) for n in range(1, STEPS + 1)]
    state = json.loads((uninterrupted[0] / f"checkpoint-{STEPS}" / STATE_FILE).read_text())
    assert state["dama"]["r_bar"] == uninterrupted[2] and state["nonfinite_skipped_batches"] == 0
    assert not list(uninterrupted[0].glob("checkpoint-*/.*.tmp"))  # no temporary file left behind


@pytest.mark.parametrize("name", list(DAMAGES))
def test_the_newest_complete_checkpoint_is_found(uninterrupted, tmp_path, name):
    out = killed_copy(uninterrupted, tmp_path, DAMAGES[name])
    path, skipped = newest_complete_checkpoint(out)
    assert path == out / "checkpoint-2"
    assert [folder.name for folder, _ in skipped] == ["checkpoint-3"]
    assert "checkpoint-3" in skipped[0][1]


def test_resume_true_skips_the_incomplete_checkpoint_and_matches_the_uninterrupted_run(
        uninterrupted, tmp_path, tiny_checkpoint, tiny_records, caplog):
    """Before: checkpoint-3 (without mmpo_state.json) was picked, R_bar restarted at 0 and
    the run ended differently, with exit 0."""
    _, weights, r_bar, _ = uninterrupted
    out = killed_copy(uninterrupted, tmp_path, DAMAGES["mmpo_state.json missing"])
    with caplog.at_level(logging.INFO, logger="mmpo.training.trainer"):
        resumed = run(tiny_checkpoint, tiny_records, out, resume=True)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("resume: skipping checkpoint-3, incomplete") and STATE_FILE in m for m in messages)
    assert any(m.startswith(f"resume: from {out / 'checkpoint-2'}") for m in messages)
    assert resumed.dama.r_bar == r_bar and resumed.state.global_step == STEPS
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert json.loads((out / "checkpoint-3" / STATE_FILE).read_text())["dama"]["r_bar"] == r_bar  # rewritten


def test_resume_true_with_the_string_true(uninterrupted, tmp_path, tiny_checkpoint, tiny_records):
    """``resume_from_checkpoint="True"`` (as the command line gives it) is not a path named True."""
    out = killed_copy(uninterrupted, tmp_path, DAMAGES["weights truncated"])
    resumed = run(tiny_checkpoint, tiny_records, out, resume="True")
    assert resumed.dama.r_bar == uninterrupted[2]


@pytest.mark.parametrize("name", ["mmpo_state.json missing", "mmpo_state.json truncated"])
def test_a_named_dama_checkpoint_without_its_state_is_an_error(uninterrupted, tmp_path, tiny_checkpoint,
                                                               tiny_records, name):
    """Before: a missing file silently reset R_bar to 0; a truncated one raised a bare JSONDecodeError."""
    out = killed_copy(uninterrupted, tmp_path, DAMAGES[name])
    newest = out / "checkpoint-3"
    with pytest.raises(CheckpointError, match=f"{newest / STATE_FILE}.*R_bar"):
        run(tiny_checkpoint, tiny_records, out, resume=str(newest))


def test_a_named_checkpoint_that_trainer_did_not_finish_is_an_error(uninterrupted, tmp_path, tiny_checkpoint,
                                                                   tiny_records):
    """Before: Trainer resumed from step 0 without trainer_state.json (with the step-3 weights)."""
    out = killed_copy(uninterrupted, tmp_path, DAMAGES["trainer_state.json missing (killed before Trainer finished)"])
    newest = out / "checkpoint-3"
    with pytest.raises(CheckpointError, match=f"{newest / TRAINER_STATE_FILE} is missing"):
        run(tiny_checkpoint, tiny_records, out, methods=Methods(), resume=str(newest))


def test_a_named_checkpoint_without_mmpo_state_resumes_a_run_without_dama(uninterrupted, tmp_path, tiny_checkpoint,
                                                                          tiny_records):
    out = killed_copy(uninterrupted, tmp_path, DAMAGES["mmpo_state.json missing"])
    resumed = run(tiny_checkpoint, tiny_records, out, methods=Methods(), resume=str(out / "checkpoint-3"),
                  max_steps=STEPS + 1, save_strategy="no")
    assert resumed.state.global_step == STEPS + 1


def test_no_complete_checkpoint_is_an_error_naming_why(uninterrupted, tmp_path, tiny_checkpoint, tiny_records):
    out = tmp_path / "out"
    shutil.copytree(uninterrupted[0] / "checkpoint-1", out / "checkpoint-1")
    (out / "checkpoint-1" / TRAINER_STATE_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* is complete: .*checkpoint-1.*trainer_state"):
        run(tiny_checkpoint, tiny_records, out, resume=True)

