"""Per-record ``weight`` and ``beta_scale`` through ``PreferenceTrainer`` on the tiny LLaVA: the loss
the trainer computes, and what a short run and an evaluation log."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from helpers import load_tiny, training_args
from mmpo.data.collator import PreferenceDataset
from mmpo.training.trainer import PreferenceTrainer

#: Weights of the eight tiny records: any four average at least 1.5, so a batch's loss is never DPO's.
WEIGHTS = [0.0, 2.0, 2.0, 3.0, 3.0, 2.0, 2.0, 3.0]
SCALES = [1.0, 3.0, 0.5, 1.0, 2.0, 1.0, 4.0, 1.0]


def scaled(records, weights=WEIGHTS, scales=SCALES):
    return [dataclasses.replace(r, weight=w, beta_scale=s) for r, w, s in zip(records, weights, scales, strict=True)]


def batch_loss(trainer, records):
    """The training loss and per-record losses of one batch of ``records`` under the trainer's moved policy."""
    batch = trainer._prepare_inputs(trainer.data_collator([{"record": r, "index": i} for i, r in enumerate(records)]))
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, batch, return_outputs=True)


def test_the_trainers_loss_weighs_records_and_scales_their_beta(tmp_path, tiny_checkpoint, tiny_records):
    """With the policy moved away from its reference: weight and scale 1 is today's loss exactly; a
    uniform beta scale s is a run with beta * s; weights multiply each record's loss and the batch
    loss is sum(w * l) / B."""
    records = tiny_records[:4]
    model, processor = load_tiny(tiny_checkpoint)
    trainer = PreferenceTrainer(model, training_args(tmp_path / "a", beta=0.1), processor, PreferenceDataset(records))
    with torch.no_grad():  # the frozen reference copy was taken: only the policy moves
        for p in trainer.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    trainer.model.eval()
    today, out = batch_loss(trainer, records)
    assert today.item() != pytest.approx(math.log(2))  # the log-ratios are really non-zero
    ones, ones_out = batch_loss(trainer, scaled(records, [1.0] * 4, [1.0] * 4))
    assert torch.equal(ones, today) and torch.equal(ones_out["losses"], out["losses"])

    weights = torch.tensor(WEIGHTS[:4])
    weighted, weighted_out = batch_loss(trainer, scaled(records, WEIGHTS[:4], [1.0] * 4))
    torch.testing.assert_close(weighted_out["losses"], weights * out["losses"])
    torch.testing.assert_close(weighted, (weights * out["losses"]).sum() / 4)

    trainer.dama.beta_base = 0.3  # the same trainer with beta 0.3 ...
    beta_times_3, _ = batch_loss(trainer, records)
    trainer.dama.beta_base = 0.1  # ... is beta 0.1 with every record's beta_scale 3
    torch.testing.assert_close(batch_loss(trainer, scaled(records, [1.0] * 4, [3.0] * 4))[0], beta_times_3)
    assert beta_times_3.item() != pytest.approx(today.item())


def test_a_short_run_logs_the_batch_means_and_the_weighted_loss(tmp_path, tiny_checkpoint, tiny_records):
    """Two steps of four records are one epoch of the eight: the logged records/weight of the two steps
    average to the mean weight. At step 1 the policy is its reference, every record's loss is log 2,
    so the loss is the batch's mean weight times log 2 (an unweighted run logs log 2). An evaluation of
    the untrained policy on four weighted records gives mean(w) log 2 the same way."""
    model, processor = load_tiny(tiny_checkpoint)
    records = scaled(tiny_records)
    trainer = PreferenceTrainer(model, training_args(tmp_path / "w", max_steps=2), processor,
                                PreferenceDataset(records), eval_dataset=PreferenceDataset(records[4:]))
    trainer.evaluate()
    evaluated = trainer.state.log_history[-1]  # evaluate() returns the metrics without the logged window means
    assert evaluated["eval_records/weight"] == pytest.approx(2.5)
    assert evaluated["eval_records/beta_scale"] == pytest.approx(2.0)
    assert evaluated["eval_loss"] == pytest.approx(2.5 * math.log(2), rel=1e-5)
    trainer.train()
    logs = [e for e in trainer.state.log_history if "records/weight" in e and "eval_loss" not in e]
    assert len(logs) == 2 and all("records/beta_scale" in e for e in logs)
    assert (logs[0]["records/weight"] + logs[1]["records/weight"]) / 2 == pytest.approx(sum(WEIGHTS) / 8)
    assert (logs[0]["records/beta_scale"] + logs[1]["records/beta_scale"]) / 2 == pytest.approx(sum(SCALES) / 8)
    assert logs[0]["records/weight"] >= 1.5
    assert logs[0]["loss"] == pytest.approx(logs[0]["records/weight"] * math.log(2), abs=1e-4)
    assert all(math.isfinite(v) for e in logs for v in e.values() if isinstance(v, float))

    plain = PreferenceTrainer(load_tiny(tiny_checkpoint)[0], training_args(tmp_path / "p", max_steps=1), processor,
                              PreferenceDataset(tiny_records))
    plain.train()
    first = plain.state.log_history[0]
    assert "records/weight" not in first and first["loss"] == pytest.approx(math.log(2), abs=1e-4)


def test_beta_scale_multiplies_damas_per_record_beta(tmp_path, tiny_checkpoint, tiny_records):
    """Data-aware DAMA: a record's beta is beta * alpha_D * beta_scale, so records with alpha_D
    (2, 0.5, 1, 1.5) and beta scales (1, 3, 0.5, 2) have the loss of alpha_D (2, 1.5, 0.5, 3) unscaled."""
    from mmpo.methods.dama import DamaConfig
    from mmpo.training.config import Methods

    records = [dataclasses.replace(r, data_alpha=1.0) for r in tiny_records[:4]]
    model, processor = load_tiny(tiny_checkpoint)
    trainer = PreferenceTrainer(model, training_args(tmp_path / "d", beta=0.1), processor, PreferenceDataset(records),
                                methods=Methods(dama=DamaConfig(data=True)))
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    trainer.model.eval()
    alphas = [2.0, 0.5, 1.0, 1.5]
    with_scale = [dataclasses.replace(r, data_alpha=a, beta_scale=s)
                  for r, a, s in zip(records, alphas, [1.0, 3.0, 0.5, 2.0], strict=True)]
    folded = [dataclasses.replace(r, data_alpha=a) for r, a in zip(records, [2.0, 1.5, 0.5, 3.0], strict=True)]
    loss, out = batch_loss(trainer, with_scale)
    expected, expected_out = batch_loss(trainer, folded)
    torch.testing.assert_close(out["losses"], expected_out["losses"])
    torch.testing.assert_close(loss, expected)
    unscaled, _ = batch_loss(trainer, [dataclasses.replace(r, data_alpha=a) for r, a in zip(records, alphas, strict=True)])
    assert unscaled.item() != pytest.approx(loss.item())
