"""PreferenceTrainer on the tiny LLaVA: it trains, logs TRL's keys, and its references agree."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import load_tiny, training_args
from mmpo.data.collator import PreferenceCollator, PreferenceDataset, RowEncoder
from mmpo.training.config import ModelArguments
from mmpo.training.policy import prepare_policy
from mmpo.training.reference import FrozenCopyReference, load_or_compute_reference
from mmpo.training.trainer import PreferenceTrainer

EXPECTED_KEYS = {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                 "logps/chosen", "logps/rejected"}


@pytest.mark.parametrize("reference", ["copy", "precomputed"])
def test_training_changes_weights_and_logs_trl_keys(tmp_path, tiny_checkpoint, tiny_records, reference):
    model, processor = load_tiny(tiny_checkpoint)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = training_args(tmp_path / "out", max_steps=3, reference=reference, sft_weight=0.5)
    trainer = PreferenceTrainer(model, args, processor, PreferenceDataset(tiny_records))
    trainer.train()
    unchanged = {n for n, p in trainer.model.named_parameters() if torch.equal(p.detach(), before[n])}
    # LLaVA reads the vision tower's last hidden state, before CLIP's post-layernorm: only that is unused.
    assert unchanged == {"model.vision_tower.post_layernorm.weight", "model.vision_tower.post_layernorm.bias"}
    logs = [e for e in trainer.state.log_history if "rewards/margins" in e]
    assert len(logs) == 3
    for entry in logs:
        assert EXPECTED_KEYS <= set(entry) and "loss/sft" in entry
        assert all(math.isfinite(v) for v in entry.values() if isinstance(v, float))


def test_precomputed_reference_gives_the_live_reference_loss(tmp_path, tiny_checkpoint, tiny_records):
    """The same batch through the live frozen copy and through the cached table: same loss."""
    model, processor = load_tiny(tiny_checkpoint)
    with torch.no_grad():  # move the policy away from the reference so log-ratios are not all 0
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    reference_model, _ = load_tiny(tiny_checkpoint)
    ds = PreferenceDataset(tiny_records)
    collator = PreferenceCollator(RowEncoder(processor))
    live = FrozenCopyReference(reference_model)
    table, path = load_or_compute_reference(reference_model, ds, collator, batch_size=3, cache_dir=tmp_path)
    assert path.exists()
    batch = collator([ds[i] for i in (5, 2, 7)])
    torch.testing.assert_close(table(batch), live(batch), rtol=1e-5, atol=1e-5)

    args = training_args(tmp_path / "out", max_steps=3)
    trainer = PreferenceTrainer(model, args, processor, ds)
    trainer.model.eval()
    trainer.reference = live
    loss_live = trainer.compute_loss(trainer.model, batch)
    trainer.reference = table
    loss_table = trainer.compute_loss(trainer.model, batch)
    torch.testing.assert_close(loss_live, loss_table, rtol=1e-5, atol=1e-6)
    assert loss_live.item() != pytest.approx(math.log(2))  # log-ratios were really non-zero

    # A second run finds the cache instead of recomputing it.
    again, path2 = load_or_compute_reference(reference_model, ds, collator, batch_size=3, cache_dir=tmp_path)
    assert path2 == path and torch.equal(again.table[3]["chosen"], table.table[3]["chosen"])


def test_lora_uses_the_adapter_off_policy_as_reference(tmp_path, tiny_checkpoint, tiny_records):
    model, processor = load_tiny(tiny_checkpoint)
    model_args = ModelArguments(model_name_or_path=str(tiny_checkpoint), use_lora=True, lora_r=4, lora_alpha=8)
    args = training_args(tmp_path / "out", max_steps=3, freeze_vision_tower=True, freeze_projector=True)
    model = prepare_policy(model, model_args, args)
    trainer = PreferenceTrainer(model, args, processor, PreferenceDataset(tiny_records))
    assert trainer.reference_kind == "adapter"
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert lora_before and all("lora_" in n for n in lora_before)
    trainer.train()
    assert any(not torch.equal(p.detach(), lora_before[n]) for n, p in model.named_parameters() if p.requires_grad)
    assert "rewards/margins" in trainer.state.log_history[0]


def test_freezing_an_unknown_architecture_is_an_error():
    from mmpo.training.policy import freeze

    with pytest.raises(ValueError, match="not known to mmpo"):
        freeze(torch.nn.Linear(2, 2), vision_tower=True, projector=False)


HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


def mmpo_host_reads(run) -> list[str]:
    """Every read of a tensor's value on the host (a host-device sync on a GPU) made by mmpo's own
    code while ``run()`` runs, as ``file:line``; the model's own reads are not counted."""
    import sys
    from pathlib import Path

    import mmpo

    root, seen = str(Path(mmpo.__file__).parent), []
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counting(name):
        def read(self, *args, **kwargs):
            caller = sys._getframe(1)
            if caller.f_code.co_filename.startswith(root):
                seen.append(f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno} {name}")
            return originals[name](self, *args, **kwargs)
        return read

    try:
        for name in HOST_READS:
            setattr(torch.Tensor, name, counting(name))
        run()
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
    return seen


@pytest.mark.parametrize("reference", ["copy", "precomputed"])
def test_a_dpo_step_reads_one_value_on_the_host(tmp_path, tiny_checkpoint, tiny_records, reference):
    """The training loss of a DPO step (+ SFT term) reads one tensor value on the host: the NaN/inf
    guard's. The metrics stay on the device until the logging step reads them all at once."""
    model, processor = load_tiny(tiny_checkpoint)
    trainer = PreferenceTrainer(model, training_args(tmp_path / "out", reference=reference, sft_weight=0.5),
                                processor, PreferenceDataset(tiny_records))
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    trainer.model.train()
    reads = mmpo_host_reads(lambda: trainer.compute_loss(trainer.model, batch))
    assert len(reads) == 1 and "trainer.py" in reads[0], reads
    logged = mmpo_host_reads(lambda: trainer.log({"loss": 0.5}))
    assert len(logged) == 1, logged  # every metric of the window in one read
    assert "rewards/margins" in trainer.state.log_history[-1]


def test_tables_waiting_for_the_prepared_policy_are_computed_together_before_the_first_step(
        tmp_path, tiny_checkpoint, tiny_records):
    """Under FSDP/DeepSpeed the precomputed tables wait for the sharded policy: the first use computes
    the train *and* the eval table (at a later evaluation the policy has moved); after a step, a
    missing table is an error naming the cache, never a table of the trained policy."""
    from mmpo.training.reference import PrecomputedReference

    model, processor = load_tiny(tiny_checkpoint)
    dataset = PreferenceDataset(tiny_records[:4])
    trainer = PreferenceTrainer(model, training_args(tmp_path / "out", reference="precomputed"), processor, dataset,
                                eval_dataset=PreferenceDataset(tiny_records[4:6]))
    computed = {"train": trainer.reference.table, "eval": trainer._eval_reference.table}
    calls = []
    for name, attribute in (("train", "reference"), ("eval", "_eval_reference")):
        setattr(trainer, attribute, PrecomputedReference(
            None, pending=lambda m, name=name: calls.append((name, m)) or computed[name]))
    assert trainer._reference(True, trainer.model) is trainer.reference
    assert calls == [("train", trainer.model), ("eval", trainer.model)]  # both, by the model given
    assert trainer.reference.table is computed["train"] and trainer._eval_reference.table is computed["eval"]

    trainer._eval_reference = PrecomputedReference(None, pending=lambda m: pytest.fail("must not compute"))
    trainer.state.global_step = 7
    with pytest.raises(RuntimeError, match="missing at step 7.*reference-"):
        trainer._reference(False, trainer.model)


@pytest.mark.parametrize("reference", ["copy", "precomputed"])
def test_reference_model_is_the_reference_instead_of_the_initial_policy(tmp_path, tiny_checkpoint, tiny_records,
                                                                        reference):
    """With ``reference_model`` the reference's log-probs are that checkpoint's, not the policy's."""
    other = tmp_path / "other"
    model, processor = load_tiny(tiny_checkpoint, perturb=True)
    model.save_pretrained(other)
    processor.save_pretrained(other)
    policy, processor = load_tiny(tiny_checkpoint)
    ds = PreferenceDataset(tiny_records)
    args = training_args(tmp_path / "out", max_steps=1, reference=reference, reference_model=str(other))
    trainer = PreferenceTrainer(policy, args, processor, ds)
    collator = PreferenceCollator(RowEncoder(processor))
    batch = collator([ds[i] for i in (0, 3)])
    expected = FrozenCopyReference(load_tiny(other)[0])(batch)
    torch.testing.assert_close(trainer.reference(batch), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(FrozenCopyReference(load_tiny(tiny_checkpoint)[0])(batch), expected)


def test_reference_model_of_another_architecture_or_with_the_adapter_reference_is_refused(
        tmp_path, tiny_checkpoint, tiny_records):
    from mmpo.toyworld.model import TinyVLMConfig, build_processor, build_tiny_vlm, train_tokenizer

    tokenizer = train_tokenizer()
    bigger = tmp_path / "bigger"
    build_tiny_vlm(tokenizer, TinyVLMConfig(text_intermediate=320), seed=0).save_pretrained(bigger)
    build_processor(tokenizer).save_pretrained(bigger)
    policy, processor = load_tiny(tiny_checkpoint)
    with pytest.raises(ValueError, match="reference_model .*bigger does not match the policy's tensors"):
        PreferenceTrainer(policy, training_args(tmp_path / "a", reference_model=str(bigger)), processor,
                          PreferenceDataset(tiny_records))
    model_args = ModelArguments(model_name_or_path=str(tiny_checkpoint), use_lora=True)
    lora = prepare_policy(load_tiny(tiny_checkpoint)[0], model_args, training_args(tmp_path / "b"))
    with pytest.raises(ValueError, match="reference_model .* needs reference: copy or precomputed"):
        PreferenceTrainer(lora, training_args(tmp_path / "b", reference="adapter", reference_model=str(tiny_checkpoint)),
                          processor, PreferenceDataset(tiny_records))
