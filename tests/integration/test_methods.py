"""The method switches inside the trainer: ASPO, DAMA, AdaViP, their degenerate cases and state."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from transformers import TrainerCallback

from helpers import load_tiny, training_args
from mmpo.data.collator import PreferenceDataset
from mmpo.training.checkpoints import CheckpointError
from mmpo.training.config import AdavipConfig, AspoConfig, DamaConfig, Methods
from mmpo.training.reference import FrozenCopyReference
from mmpo.training.trainer import STATE_FILE, PreferenceTrainer


def scored(records):
    """Records with one made-up CLIP score per chosen sentence (the sentences are ' .'-terminated)."""
    return [dataclasses.replace(r, chosen_sentence_scores=[0.1 * (i + 1) for i in range(r.chosen.count(" ."))])
            for r in records]


def batch_loss(tmp_path, tiny_checkpoint, records, methods: Methods, **args) -> torch.Tensor:
    """compute_loss on the first four records, with the policy moved away from the reference;
    ``args`` override the training arguments (e.g. ``beta``)."""
    model, processor = load_tiny(tiny_checkpoint, perturb=True)
    trainer = PreferenceTrainer(model, training_args(tmp_path / "out", **args), processor, PreferenceDataset(records),
                                methods=methods)
    trainer.reference = FrozenCopyReference(load_tiny(tiny_checkpoint)[0])
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    trainer.model.eval()
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, batch)


def logged_keys(trainer) -> set[str]:
    return {k for e in trainer.state.log_history for k in e}


def assert_finite_logs(trainer):
    for entry in trainer.state.log_history:
        assert all(math.isfinite(v) for v in entry.values() if isinstance(v, float)), entry


# ---------------------------------------------------------------------------------------------- ASPO
def test_aspo_with_one_sentence_is_exactly_dpo(tmp_path, tiny_checkpoint, tiny_records):
    one = [dataclasses.replace(r, chosen=r.chosen.split(" . ")[0] + " .", chosen_sentence_scores=[0.3])
           for r in tiny_records]
    dpo = batch_loss(tmp_path, tiny_checkpoint, one, Methods())
    aspo = batch_loss(tmp_path, tiny_checkpoint, one, Methods(aspo=AspoConfig(enabled=True)))
    assert dpo.item() != pytest.approx(math.log(2))
    torch.testing.assert_close(aspo, dpo)


def test_aspo_response_granularity_is_exactly_dpo(tmp_path, tiny_checkpoint, tiny_records):
    records = scored(tiny_records)
    dpo = batch_loss(tmp_path, tiny_checkpoint, records, Methods())
    aspo = batch_loss(tmp_path, tiny_checkpoint, records,
                      Methods(aspo=AspoConfig(enabled=True, granularity="response")))
    torch.testing.assert_close(aspo, dpo)


def test_aspo_reward_normalizer_keeps_dpo_value_count_normalizer_does_not(tmp_path, tiny_checkpoint, tiny_records):
    """With the 'reward' scale the chosen log-ratio's *value* is DPO's (only gradients change);
    the 'count' scale changes the value whenever sentence ratios differ."""
    records = [r for r in scored(tiny_records) if r.chosen.count(" .") > 1] * 2
    dpo = batch_loss(tmp_path, tiny_checkpoint, records, Methods())
    reward = batch_loss(tmp_path, tiny_checkpoint, records, Methods(aspo=AspoConfig(enabled=True)))
    count = batch_loss(tmp_path, tiny_checkpoint, records,
                       Methods(aspo=AspoConfig(enabled=True, normalizer="count")))
    torch.testing.assert_close(reward, dpo, rtol=1e-4, atol=1e-5)
    assert abs(count.item() - dpo.item()) > 1e-5


@pytest.mark.parametrize("granularity", ["sentence", "token"])
def test_aspo_trains_and_logs(tmp_path, tiny_checkpoint, tiny_records, granularity):
    model, processor = load_tiny(tiny_checkpoint)
    methods = Methods(aspo=AspoConfig(enabled=True, granularity=granularity))
    trainer = PreferenceTrainer(model, training_args(tmp_path / "out"), processor,
                                PreferenceDataset(scored(tiny_records)),
                                methods=methods)
    trainer.train()
    assert {"aspo/weight_mean", "aspo/weight_std", "aspo/sentences_per_response", "rewards/margins"} \
        <= logged_keys(trainer)
    assert_finite_logs(trainer)


def test_aspo_without_scores_names_the_record(tmp_path, tiny_checkpoint, tiny_records):
    """Found by the preflight, before training starts."""
    model, processor = load_tiny(tiny_checkpoint)
    with pytest.raises(ValueError, match=r"#0 \(id 't-000000'\) field 'chosen_sentence_scores': missing; ASPO"):
        PreferenceTrainer(model, training_args(tmp_path / "out"), processor, PreferenceDataset(tiny_records),
                          methods=Methods(aspo=AspoConfig(enabled=True)))


# ---------------------------------------------------------------------------------------------- DAMA
def test_dama_with_alpha_one_is_exactly_dpo(tmp_path, tiny_checkpoint, tiny_records):
    ones = [dataclasses.replace(r, data_alpha=1.0) for r in tiny_records]
    dpo = batch_loss(tmp_path, tiny_checkpoint, ones, Methods())
    d2po = batch_loss(tmp_path, tiny_checkpoint, ones, Methods(dama=DamaConfig(data=True)))
    torch.testing.assert_close(d2po, dpo)


def test_dama_data_alpha_scales_beta_per_record(tmp_path, tiny_checkpoint, tiny_records):
    """beta_C = beta * alpha_D: records with alpha_D = 2 give the DPO loss at beta 0.2."""
    twos = [dataclasses.replace(r, data_alpha=2.0) for r in tiny_records]
    d2po = batch_loss(tmp_path, tiny_checkpoint, twos, Methods(dama=DamaConfig(data=True)))
    dpo_at_double_beta = batch_loss(tmp_path, tiny_checkpoint, twos, Methods(), beta=0.2)
    torch.testing.assert_close(d2po, dpo_at_double_beta)


def hardness(records):
    return [dataclasses.replace(r, data_alpha=0.5 + 0.25 * (i % 4)) for i, r in enumerate(records)]


class StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_dama_state_survives_a_checkpoint_resume(tmp_path, tiny_checkpoint, tiny_records):
    """Train 6 steps straight; train to step 3, stop, resume from checkpoint-3: same R_bar, same
    losses and the same final weights."""
    records = PreferenceDataset(hardness(tiny_records) * 3)
    methods = Methods(dama=DamaConfig(data=True, model=True))
    common = dict(max_steps=6, per_device_train_batch_size=4, save_strategy="steps", save_steps=3,
                  learning_rate=5e-3)

    model, processor = load_tiny(tiny_checkpoint)
    straight = PreferenceTrainer(model, training_args(tmp_path / "a" / "out", **common), processor,
                                 records, methods=methods)
    straight.train()

    model, processor = load_tiny(tiny_checkpoint)
    first = PreferenceTrainer(model, training_args(tmp_path / "b" / "out", **common), processor,
                              records, methods=methods,
                              callbacks=[StopAt(3)])
    first.train()
    assert first.state.global_step == 3
    checkpoint = tmp_path / "b" / "out" / "checkpoint-3"
    saved = json.loads((checkpoint / STATE_FILE).read_text())
    assert saved["dama"]["step"] == 3 and saved["dama"]["r_bar"] == first.dama.r_bar

    model, processor = load_tiny(tiny_checkpoint)
    resumed = PreferenceTrainer(model, training_args(tmp_path / "b" / "out", **common), processor,
                                records, methods=methods)
    resumed.train(resume_from_checkpoint=str(checkpoint))

    assert straight.dama.r_bar != 0.0
    assert resumed.dama.r_bar == pytest.approx(straight.dama.r_bar, rel=1e-5, abs=1e-7)
    assert resumed.dama.state.step == straight.dama.state.step == 6

    def losses(trainer):
        return {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e and "step" in e}

    later = {s: v for s, v in losses(straight).items() if s > 3}
    assert later and all(losses(resumed)[s] == pytest.approx(v, rel=1e-4) for s, v in later.items())
    for (name, a), b in zip(straight.model.named_parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)

    # The same checkpoint under the other recipe: its running mean has another scale, so it is refused,
    # naming the checkpoint and the option (the state file itself is valid).
    model, processor = load_tiny(tiny_checkpoint)
    paper = Methods(dama=DamaConfig(data=True, model=True, recipe="paper"))
    other = PreferenceTrainer(model, training_args(tmp_path / "b" / "out", **common), processor, records,
                              methods=paper)
    with pytest.raises(CheckpointError, match=r"cannot resume from .*checkpoint-3: .*kind 'all_gaps'.*"
                                              r"dama_running_mean: all_gaps") as caught:
        other.train(resume_from_checkpoint=str(checkpoint))
    assert "not a valid mmpo state" not in str(caught.value)


def test_dama_trains_and_logs(tmp_path, tiny_checkpoint, tiny_records):
    model, processor = load_tiny(tiny_checkpoint)
    methods = Methods(dama=DamaConfig(data=True, model=True))
    trainer = PreferenceTrainer(model, training_args(tmp_path / "out", max_steps=3), processor,
                                PreferenceDataset(hardness(tiny_records)), methods=methods)
    trainer.train()
    assert {"dama/alpha_data_mean", "dama/alpha_model", "dama/r_bar", "dama/kept_fraction",
            "dama/gap_easy", "dama/gap_hard"} <= logged_keys(trainer)
    kept = [e["dama/kept_fraction"] for e in trainer.state.log_history if "dama/kept_fraction" in e]
    assert all(k == pytest.approx(0.75) for k in kept)  # K = 3 of N = 4
    assert_finite_logs(trainer)


def test_missing_data_alpha_names_the_record(tmp_path, tiny_checkpoint, tiny_records):
    """Found by the preflight, before training starts."""
    model, processor = load_tiny(tiny_checkpoint)
    records = [dataclasses.replace(r, data_alpha=None if i == 1 else 1.0) for i, r in enumerate(tiny_records)]
    with pytest.raises(ValueError, match=r"#1 \(id 't-000001'\) field 'data_alpha': missing; DAMA"):
        PreferenceTrainer(model, training_args(tmp_path / "out"), processor, PreferenceDataset(records),
                          methods=Methods(dama=DamaConfig(data=True)))


# ---------------------------------------------------------------------------------------------- AdaViP
def vision_rejected(records):
    """Each record's vision-rejected image: the next record's image (a different scene)."""
    return [dataclasses.replace(r, rejected_image=records[(i + 1) % len(records)].image)
            for i, r in enumerate(records)]


def test_adavip_without_vision_images_is_exactly_dpo(tmp_path, tiny_checkpoint, tiny_records):
    dpo = batch_loss(tmp_path, tiny_checkpoint, tiny_records, Methods())
    adavip = batch_loss(tmp_path, tiny_checkpoint, tiny_records, Methods(adavip=AdavipConfig(enabled=True)))
    torch.testing.assert_close(adavip, dpo)


def test_adavip_loss_exceeds_dpo_with_a_vision_sample(tmp_path, tiny_checkpoint, tiny_records):
    """log(1 + e^a + e^b) > log(1 + e^a): a third sample can only add to the loss."""
    records = vision_rejected(tiny_records)
    dpo = batch_loss(tmp_path, tiny_checkpoint, records, Methods())
    adavip = batch_loss(tmp_path, tiny_checkpoint, records, Methods(adavip=AdavipConfig(enabled=True)))
    plus = batch_loss(tmp_path, tiny_checkpoint, records,
                      Methods(adavip=AdavipConfig(enabled=True, loss="plus_vision")))
    assert dpo.item() < adavip.item() < plus.item()


def test_adavip_trains_and_logs_the_eq13_weights(tmp_path, tiny_checkpoint, tiny_records):
    model, processor = load_tiny(tiny_checkpoint)
    trainer = PreferenceTrainer(model, training_args(tmp_path / "out"), processor,
                                PreferenceDataset(vision_rejected(tiny_records)),
                                methods=Methods(adavip=AdavipConfig(enabled=True)))
    trainer.train()
    assert {"adavip/weight_vision", "adavip/weight_language", "rewards/vision_rejected"} <= logged_keys(trainer)
    for e in trainer.state.log_history:
        if "adavip/weight_vision" in e:
            assert e["adavip/weight_vision"] + e["adavip/weight_language"] == pytest.approx(1.0)
    assert_finite_logs(trainer)


# ---------------------------------------------------------------------------------------------- all three
def test_all_methods_compose(tmp_path, tiny_checkpoint, tiny_records):
    records = vision_rejected(hardness(scored(tiny_records)))
    methods = Methods(aspo=AspoConfig(enabled=True), dama=DamaConfig(data=True, model=True),
                      adavip=AdavipConfig(enabled=True))
    model, processor = load_tiny(tiny_checkpoint)
    trainer = PreferenceTrainer(model, training_args(tmp_path / "out", sft_weight=0.5), processor,
                                PreferenceDataset(records),
                                methods=methods)
    trainer.train()
    keys = logged_keys(trainer)
    assert {"aspo/weight_mean", "dama/alpha_model", "adavip/weight_vision", "loss/sft"} <= keys
    assert_finite_logs(trainer)


# ---------------------------------------------------------------------------------------------- the control
def test_sft_control_trains_on_the_chosen_nll_alone(tmp_path, tiny_checkpoint, tiny_records):
    """preference_weight 0: the logged loss is the chosen responses' NLL, whatever the rewards do."""
    model, processor = load_tiny(tiny_checkpoint)
    trainer = PreferenceTrainer(model, training_args(tmp_path / "out", sft_weight=1.0, preference_weight=0.0,
                                                     max_steps=2, logging_steps=1), processor,
                                PreferenceDataset(tiny_records))
    trainer.train()
    steps = [e for e in trainer.state.log_history if "loss/sft" in e]
    assert len(steps) == 2
    for e in steps:
        assert e["loss"] == pytest.approx(e["loss/sft"], rel=1e-4)
        assert math.isfinite(e["rewards/margins"])  # still logged, only not trained on
