"""NaN and inf never train silently: a non-finite loss or gradient stops the run naming the step,
the records and the value (``on_nonfinite='raise'``) or skips the batch without an update
(``'skip'``); NaN metrics are logged, not dropped; a run never ends with NaN weights.

NaN/inf is injected where it would come from in a real run: the reference log-probs of one record
(a reference table computed in a bad dtype), or a gradient hook on one parameter.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from transformers import TrainerCallback

from helpers import load_tiny, training_args
from mmpo.data.collator import PreferenceDataset
from mmpo.data.records import save_records
from mmpo.methods.dama import DamaController
from mmpo.training import trainer as trainer_module
from mmpo.training.config import DataArguments, ModelArguments, PreferenceConfig
from mmpo.training.run import run_training
from mmpo.training.trainer import (
    NonFiniteLossError,
    NonFiniteParameterError,
    PreferenceTrainer,
    check_finite_parameters,
)


def make_args(tmp_path, **kw) -> PreferenceConfig:
    return training_args(tmp_path / "out", **{"lr_scheduler_type": "constant", **kw})


def make_trainer(tmp_path, tiny_checkpoint, tiny_records, **kw) -> PreferenceTrainer:
    model, processor = load_tiny(tiny_checkpoint)
    return PreferenceTrainer(model, make_args(tmp_path, **kw), processor, PreferenceDataset(tiny_records))


def poison_reference(trainer: PreferenceTrainer, at_step: int, value: float = float("nan")) -> list[str]:
    """From optimizer step ``at_step`` (1-based) on, the reference log-probs of the first record of
    each training batch are ``value``. Returns the list the poisoned batches' record ids go to."""
    live, poisoned = trainer.reference, []

    def reference(inputs):
        ref = live(inputs)  # (R, L)
        if trainer.model.training and trainer.state.global_step + 1 >= at_step:
            ref = ref.clone()
            ref[0] = value
            poisoned.append([trainer.train_dataset.records[int(i)].id for i in inputs["record_index"]])
        return ref

    trainer.reference = reference
    return poisoned


class Snapshots(TrainerCallback):
    """The trainable parameters after every optimizer step: ``weights[step]``."""

    def __init__(self):
        self.weights = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.weights[state.global_step] = {n: p.detach().clone() for n, p in model.named_parameters()
                                           if p.requires_grad}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# ------------------------------------------------------------------ the loss


def test_a_nan_loss_stops_the_run_naming_step_records_and_value(tmp_path, tiny_checkpoint, tiny_records):
    """Before: Trainer's logging_nan_inf_filter hid the NaN loss, the update made every weight NaN,
    and the run exited 0."""
    trainer = make_trainer(tmp_path, tiny_checkpoint, tiny_records)
    poisoned = poison_reference(trainer, at_step=2)
    with pytest.raises(NonFiniteLossError) as caught:
        trainer.train()
    message = str(caught.value)
    ids = poisoned[0]
    assert message.startswith("step 2: loss is nan (records ")
    assert all(repr(i) in message for i in ids)
    assert f"preference loss of {ids[0]!r}: nan" in message  # the record whose reference is NaN
    assert trainer.state.global_step == 1
    check_finite_parameters(trainer.model)  # the NaN never reached the weights


def test_skip_drops_the_batch_counts_it_and_warns(tmp_path, tiny_checkpoint, tiny_records, caplog):
    """on_nonfinite='skip': step 2's only batch has a NaN loss; the step changes no weight (not even
    through Adam's momentum), the run goes on, and the count is logged."""
    trainer = make_trainer(tmp_path, tiny_checkpoint, tiny_records, on_nonfinite="skip", max_steps=3)
    snapshots = Snapshots()
    trainer.add_callback(snapshots)
    live, calls = trainer.reference, []

    def reference(inputs):  # only step 2's batch is poisoned
        ref = live(inputs)
        if trainer.model.training and trainer.state.global_step == 1:
            calls.append([trainer.train_dataset.records[int(i)].id for i in inputs["record_index"]])
            ref = ref.clone()
            ref[0] = float("nan")
        return ref

    trainer.reference = reference
    with caplog.at_level(logging.WARNING, logger="mmpo.training.trainer"):
        trainer.train()
    assert trainer.state.global_step == 3 and trainer.nonfinite_skipped == 1
    assert_same(snapshots.weights[2], snapshots.weights[1])  # no update from the skipped batch
    assert any(not torch.equal(snapshots.weights[3][n], snapshots.weights[2][n]) for n in snapshots.weights[3])
    warnings = [r.getMessage() for r in caplog.records if "batch skipped" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("step 2: loss is ")
    assert all(repr(i) in warnings[0] for i in calls[0])
    logged = [e["nonfinite_skipped_batches"] for e in trainer.state.log_history if "loss" in e]
    assert logged == [0, 1, 1] and trainer.state.log_history[-1]["nonfinite_skipped_batches"] == 1  # + the summary
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    check_finite_parameters(trainer.model)


# ------------------------------------------------------------------ the gradients


def nan_gradient_at(trainer: PreferenceTrainer, step: int) -> str:
    """A hook turning one parameter's gradient to NaN during optimizer step ``step``; the loss stays finite."""
    name, weight = next((n, p) for n, p in trainer.model.named_parameters() if n.endswith("lm_head.weight"))

    def hook(grad):
        return grad * float("nan") if trainer.state.global_step + 1 == step else grad

    weight.register_hook(hook)
    return name


def test_a_nan_gradient_stops_the_run(tmp_path, tiny_checkpoint, tiny_records):
    """Before: clipping spread the NaN to every gradient, the optimizer wrote it into every weight."""
    trainer = make_trainer(tmp_path, tiny_checkpoint, tiny_records)
    nan_gradient_at(trainer, step=2)
    with pytest.raises(NonFiniteLossError, match=r"^step 2: grad_norm is nan after clipping \(records '"):
        trainer.train()
    check_finite_parameters(trainer.model)


def test_skip_drops_a_step_with_nan_gradients(tmp_path, tiny_checkpoint, tiny_records):
    trainer = make_trainer(tmp_path, tiny_checkpoint, tiny_records, on_nonfinite="skip", max_steps=3,
                           gradient_accumulation_steps=2, per_device_train_batch_size=2)
    snapshots = Snapshots()
    trainer.add_callback(snapshots)
    nan_gradient_at(trainer, step=2)
    trainer.train()
    assert_same(snapshots.weights[2], snapshots.weights[1])
    assert trainer.nonfinite_skipped == 2  # both micro-batches of step 2
    logged = [e["nonfinite_skipped_batches"] for e in trainer.state.log_history if "loss" in e]
    assert logged == [0, 2, 2]
    check_finite_parameters(trainer.model)


# ------------------------------------------------------------------ metrics and the end of the run


def test_nan_metrics_are_logged_not_dropped(tmp_path, tiny_checkpoint, tiny_records):
    """Before: ``log`` left out every averaged metric that was not finite."""
    trainer = make_trainer(tmp_path, tiny_checkpoint, tiny_records)
    trainer._record("train", {"rewards/margins": torch.tensor([float("nan"), 1.0]),
                              "logps/chosen": torch.tensor([-float("inf")]), "rewards/chosen": torch.tensor([2.0])})
    trainer.log({"loss": 0.5})
    entry = trainer.state.log_history[-1]
    assert math.isnan(entry["rewards/margins"]) and entry["logps/chosen"] == -math.inf
    assert entry["rewards/chosen"] == 2.0


def test_a_filtered_record_with_an_inf_loss_does_not_make_the_loss_nan(tmp_path, tiny_checkpoint, tiny_records,
                                                                       monkeypatch):
    """DAMA's model-aware filter drops record 0; its loss is inf. Before: ``(losses * keep).sum()``
    gave inf * 0 = NaN; the mean over the three kept records is finite."""
    trainer = make_trainer(tmp_path, tiny_checkpoint, tiny_records)
    trainer.dama = DamaController(0.1, model_aware=True)
    keep = torch.tensor([False, True, True, True])
    monkeypatch.setattr(trainer.dama, "beta", lambda *args, **kwargs: (torch.full((4,), 0.1), keep, {}))
    real, seen = trainer_module.preference_loss, {}

    def preference_loss(*args, **kwargs):
        losses, diag = real(*args, **kwargs)
        seen["kept_mean"] = losses[1:].mean()
        return torch.cat([torch.tensor([math.inf]), losses[1:]]), diag

    monkeypatch.setattr(trainer_module, "preference_loss", preference_loss)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    torch.testing.assert_close(loss, seen["kept_mean"])


class PoisonAtEnd(TrainerCallback):
    """Turns one weight to NaN when training ends (an optimizer bug, a bad hook)."""

    def on_train_end(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))


def test_run_training_never_ends_with_nan_weights(tmp_path, tiny_checkpoint, tiny_records):
    """Before: the NaN model was saved as the result and the run returned normally."""
    train_file = save_records(tiny_records, tmp_path / "train.jsonl")
    args = make_args(tmp_path, max_steps=1)
    with pytest.raises(NonFiniteParameterError, match="trainable parameters hold NaN/inf"):
        run_training(ModelArguments(model_name_or_path=str(tiny_checkpoint)), DataArguments(train_file=str(train_file)),
                     args, callbacks=[PoisonAtEnd()])
    assert not (tmp_path / "out" / "model.safetensors").exists()
