"""mmpo.training.distributed: which branch prepares the frozen reference under each engine, the
ZeRO-3 inference config (parsed by DeepSpeed's own config class), the reference pass's shares.

The engines themselves run in tests/integration/test_distributed_parity.py (2 processes); here an
accelerator stand-in carries accelerate's real plugin objects, and the engine entry points
(``deepspeed.initialize``, ``fsdp2_prepare_model``) are recorded instead of run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin

from helpers import load_tiny
from mmpo.training import distributed
from mmpo.training.reference import record_shares

ZERO3 = Path(__file__).parents[2] / "configs" / "accelerate" / "zero3.json"


def filled(config: dict, micro: int = 2, accumulation: int = 4) -> dict:
    """``config`` with the values the HF Trainer fills before training (``trainer_config_process``)."""
    out = json.loads(json.dumps(config))
    out.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=accumulation,
               train_batch_size=micro * accumulation, gradient_clipping=1.0, bf16={"enabled": True},
               fp16={"enabled": False})
    return out


def stand_in(kind: str, plugin=None, processes: int = 2):
    """An accelerator as far as ``distributed`` reads one, holding accelerate's real plugin object."""
    types = {"fsdp": DistributedType.FSDP, "deepspeed": DistributedType.DEEPSPEED, "ddp": DistributedType.MULTI_GPU}
    state = SimpleNamespace(fsdp_plugin=plugin if kind == "fsdp" else None,
                            deepspeed_plugin=plugin if kind == "deepspeed" else None)
    return SimpleNamespace(distributed_type=types[kind], num_processes=processes, state=state,
                           device=torch.device("cpu"))


def test_record_shares_hand_worked():
    # 5 records, 2 processes, batches of 2: rank 0 takes 0, 2, 4; rank 1 takes 1, 3 and repeats 3
    # in a batch it drops, so that both run 2 forward passes.
    assert record_shares(5, 2, 0, 2) == [([0, 2], 2), ([4], 1)]
    assert record_shares(5, 2, 1, 2) == [([1, 3], 2), ([3], 0)]
    assert record_shares(5, 2, 0, 1) == [([0, 1], 2), ([2, 3], 2), ([4], 1)]
    # More processes than records: a process with none runs record 0 and drops it.
    assert record_shares(1, 4, 1, 2) == [([0], 0)]
    for n, b, w in [(7, 3, 3), (24, 2, 2), (10, 4, 3)]:
        shares = [record_shares(n, b, r, w) for r in range(w)]
        assert len({len(s) for s in shares}) == 1  # the same number of batches everywhere
        real = sorted(i for s in shares for ids, k in s for i in ids[:k])
        assert real == list(range(n))  # every record exactly once


def test_zero3_inference_config_keeps_partitioning_and_precision_and_drops_the_optimizer():
    train = filled(json.loads(ZERO3.read_text()))
    train["optimizer"] = {"type": "AdamW", "params": {"lr": 1e-5}}
    train["scheduler"] = {"type": "WarmupLR"}
    train["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
    train["zero_optimization"]["offload_param"] = {"device": "cpu"}
    config = distributed.deepspeed_inference_config(train, hidden=4096)
    assert "optimizer" not in config and "scheduler" not in config and "gradient_clipping" not in config
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"] == {"device": "cpu"} and "offload_optimizer" not in zero
    assert zero["stage3_param_persistence_threshold"] == 40960
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 4096 * 4096)
    assert config["bf16"] == {"enabled": True}
    assert config["train_micro_batch_size_per_gpu"] == 2 and config["train_batch_size"] == 8
    assert "auto" not in json.dumps(config)
    assert train["optimizer"]["type"] == "AdamW"  # the policy's config is left alone

    deepspeed_config = pytest.importorskip("deepspeed.runtime.config", reason="DeepSpeed is not installed")
    parsed = deepspeed_config.DeepSpeedConfig(config)
    assert parsed.zero_optimization_stage == 3
    assert parsed.zero_config.param_persistence_threshold == 40960
    assert parsed.bfloat16_config.enabled and parsed.optimizer_name is None


def test_zero3_inference_config_without_a_hidden_size_leaves_deepspeeds_defaults():
    config = distributed.deepspeed_inference_config(filled(json.loads(ZERO3.read_text())), hidden=None)
    assert "stage3_param_persistence_threshold" not in config["zero_optimization"]
    assert "auto" not in json.dumps(config)


def test_the_inference_engine_is_only_for_zero3():
    with pytest.raises(ValueError, match="not stage 2"):
        distributed.deepspeed_inference_config({"zero_optimization": {"stage": 2}}, hidden=8)


def test_under_zero3_the_reference_is_a_frozen_copy_given_to_a_deepspeed_inference_engine(tiny_checkpoint, monkeypatch):
    deepspeed = pytest.importorskip("deepspeed", reason="DeepSpeed is not installed")
    model, _ = load_tiny(tiny_checkpoint)
    plugin = DeepSpeedPlugin(hf_ds_config=filled(json.loads(ZERO3.read_text())), zero3_init_flag=True)
    calls = []
    engine = SimpleNamespace(eval=lambda: calls.append("eval"))
    monkeypatch.setattr(deepspeed, "initialize", lambda model, config: calls.append((model, config)) or (engine,))
    prepared = distributed.prepare_reference_model(model, stand_in("deepspeed", plugin))
    assert prepared is engine and calls[-1] == "eval"
    copy, config = calls[0]
    assert copy is not model and not any(p.requires_grad for p in copy.parameters()) and not copy.training
    assert all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(), model.state_dict().values(), strict=True))
    assert config["zero_optimization"]["stage"] == 3
    assert config["zero_optimization"]["stage3_param_persistence_threshold"] == 10 * model.config.text_config.hidden_size
    assert distributed.shards_parameters(stand_in("deepspeed", plugin))


def test_under_zero2_the_reference_is_a_whole_copy_on_the_device(tiny_checkpoint, monkeypatch):
    deepspeed = pytest.importorskip("deepspeed", reason="DeepSpeed is not installed")
    model, _ = load_tiny(tiny_checkpoint)
    config = filled(json.loads(ZERO3.read_text()))
    config["zero_optimization"] = {"stage": 2}
    monkeypatch.setattr(deepspeed, "initialize", lambda **k: pytest.fail("ZeRO-2 must not build an engine"))
    accelerator = stand_in("deepspeed", DeepSpeedPlugin(hf_ds_config=config))
    prepared = distributed.prepare_reference_model(model, accelerator)
    assert isinstance(prepared, type(model)) and prepared is not model
    assert not distributed.shards_parameters(accelerator)


def test_under_fsdp2_the_reference_goes_through_accelerates_fsdp2_preparation(tiny_checkpoint, monkeypatch, caplog):
    from accelerate.utils import fsdp_utils

    model, _ = load_tiny(tiny_checkpoint)
    prepared_models = []
    monkeypatch.setattr(fsdp_utils, "fsdp2_prepare_model", lambda acc, m: prepared_models.append(m) or m)
    accelerator = stand_in("fsdp", FullyShardedDataParallelPlugin(fsdp_version=2))
    assert distributed.prepare_reference_model(model, accelerator) is prepared_models[0]
    assert prepared_models[0] is not model and not any(p.requires_grad for p in prepared_models[0].parameters())

    with caplog.at_level(logging.WARNING, logger="mmpo.training.distributed"):
        whole = distributed.prepare_reference_model(model, accelerator, shard=False)
    assert len(prepared_models) == 1 and whole is not model
    assert "whole copy on every process" in caplog.text and "GiB" in caplog.text and "precomputed" in caplog.text


def test_fsdp_wraps_only_layer_classes_the_model_has(tiny_checkpoint):
    model, _ = load_tiny(tiny_checkpoint)
    assert "CLIPTextEmbeddings" in model._no_split_modules  # a VLM's list names parts it lacks
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
    names = distributed.wrap_only_present_layers(stand_in("fsdp", plugin), model)
    assert names == ["CLIPEncoderLayer", "CLIPVisionEmbeddings", "LlamaDecoderLayer"]
    plugin.set_auto_wrap_policy(model)  # accelerate's own step, which raised before

    named = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                           transformer_cls_names_to_wrap=["LlamaDecoderLayer"])
    assert distributed.wrap_only_present_layers(stand_in("fsdp", named), model) is None  # the user's choice stays
    assert named.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert distributed.wrap_only_present_layers(stand_in("ddp"), model) is None


def test_a_model_partitioned_at_load_is_loaded_again_from_its_checkpoint(tiny_checkpoint, tmp_path, monkeypatch):
    deepspeed = pytest.importorskip("deepspeed", reason="DeepSpeed is not installed")

    class Gathered:  # the parameters here are whole already: gathering them is a no-op
        def __init__(self, params):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(deepspeed.zero, "GatheredParameters", Gathered)
    model, _ = load_tiny(tiny_checkpoint)
    for p in model.parameters():
        p.ds_id = 0  # what zero.Init leaves on each partitioned parameter
    assert distributed.is_partitioned(model)
    model.config._name_or_path = str(tiny_checkpoint)
    again = distributed.frozen_copy(model)
    assert not distributed.is_partitioned(again) and not any(p.requires_grad for p in again.parameters())
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values(), strict=True))

    with torch.no_grad():  # the policy changed after loading: its checkpoint is not its reference
        next(model.parameters()).add_(0.1)
    with pytest.raises(ValueError, match="differ from that checkpoint"):
        distributed.frozen_copy(model)

    model.config._name_or_path = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="reference: precomputed"):
        distributed.frozen_copy(model)


def test_each_engine_says_where_the_reference_lives():
    assert "sharded with FSDP" in distributed.describe("fsdp", None, True)
    assert "partitioned like the policy" in distributed.describe("deepspeed", 3, True)
    assert "ZeRO-2 partitions optimizer state and gradients, not parameters" in distributed.describe("deepspeed", 2, True)
    assert "DDP" in distributed.describe("ddp", None, True)
