"""Which engine a run is distributed with, and the frozen reference prepared by that same engine.

Under FSDP and DeepSpeed ZeRO-3 every process holds only a slice of each parameter of the policy.
An unprepared frozen copy of the initial policy would be whole on every process: for a 7B model
in bf16, 14 GB more per GPU, which is what runs out of memory. So the copy is prepared the way
the policy is:

* **FSDP2** (accelerate's default): ``fully_shard`` through accelerate's own
  ``fsdp2_prepare_model``, with the run's plugin (wrap policy, mixed precision, reshard after
  forward, CPU offload, loading from rank 0 with ``cpu_ram_efficient_loading``).
* **FSDP1**: ``FullyShardedDataParallel`` with the plugin's settings.
* **ZeRO-3**: a DeepSpeed inference engine (:func:`deepspeed_inference_config`: stage-3
  partitioning and the run's precision; no optimizer, scheduler or gradient settings).
* **DDP, ZeRO-1/2, one process**: parameters are replicated anyway; the copy is moved to the device.

``shard_reference: false`` keeps a whole copy on every process (no gathers for the reference's
forward, at the memory cost named in the log). The precomputed reference needs no copy at all;
see :mod:`mmpo.training.reference` for how it is computed under each engine.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

logger = logging.getLogger(__name__)

def engine(accelerator) -> str:
    """``single``, ``ddp``, ``fsdp`` or ``deepspeed`` for this run's accelerator."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        return "fsdp"
    if kind == DistributedType.DEEPSPEED:
        return "deepspeed"
    return "ddp" if accelerator.num_processes > 1 else "single"


def zero_stage(accelerator) -> int | None:
    """The ZeRO stage under DeepSpeed, else None."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return None if plugin is None else int(plugin.zero_stage)


def shards_parameters(accelerator) -> bool:
    """True under FSDP and ZeRO-3: the policy's parameters are split across processes once prepared."""
    kind = engine(accelerator)
    return kind == "fsdp" or (kind == "deepspeed" and zero_stage(accelerator) == 3)


def local_shard(p: torch.Tensor) -> torch.Tensor:
    """The part of ``p`` this process holds: ZeRO-3's partition, FSDP2's local shard, or ``p``."""
    if hasattr(p, "ds_tensor"):
        return p.ds_tensor
    return p.to_local() if hasattr(p, "to_local") else p



def kernel_layers_without_setup(model: torch.nn.Module) -> list[str]:
    """Names of ``model``'s modules whose forward kernels' ``use_kernelized_func`` replaced but that
    were built without the decorator's ``__init__`` (no ``_kernel_funcs``): they fail on their first
    forward. See :func:`mmpo.models.import_model_modules` for how ZeRO-3 leaves them so."""
    broken = []
    for name, module in model.named_modules():
        code = getattr(type(module).forward, "__code__", None)
        if code is not None and "_kernel_funcs" in code.co_names and "_kernel_funcs" not in vars(module):
            broken.append(name)
    return broken


def is_partitioned(model: torch.nn.Module) -> bool:
    """True if DeepSpeed's ``zero.Init`` partitioned ``model``'s parameters at load (``ds_id`` set)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def wrap_only_present_layers(accelerator, model: torch.nn.Module) -> list[str] | None:
    """Under FSDP with the transformer-layer wrap policy and no layer classes named, name the
    model's ``_no_split_modules`` classes that it actually contains.

    accelerate otherwise wraps every class in ``_no_split_modules`` and stops at one the model
    lacks: a VLM's list is the union of its parts' lists (LLaVA's names ``CLIPTextEmbeddings``,
    which a vision tower does not have). Returns the names set, or None when nothing changed.
    """
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is None or plugin.auto_wrap_policy is not transformer_auto_wrap_policy or \
            plugin.transformer_cls_names_to_wrap is not None:
        return None
    present = {type(m).__name__ for m in model.modules()}
    names = sorted(set(getattr(model, "_no_split_modules", None) or ()) & present)
    plugin.transformer_cls_names_to_wrap = names
    logger.info("FSDP wraps these layer classes of the model: %s", ", ".join(names) or "none")
    return names


def whole_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` over ``model``'s state dict with every ZeRO-3-partitioned parameter whole,
    gathered one at a time. Collective: every process must run through all of it."""
    import deepspeed

    for name, tensor in model.state_dict(keep_vars=True).items():
        if hasattr(tensor, "ds_id"):
            with deepspeed.zero.GatheredParameters([tensor]):
                yield name, tensor
        else:
            yield name, tensor


def prepare_reference_model(model: torch.nn.Module, accelerator, *, shard: bool = True,
                            copy: bool = True) -> torch.nn.Module:
    """A frozen copy of ``model`` (the initial policy), prepared by the run's engine; with
    ``copy=False`` ``model`` itself (a model loaded for the reference alone), frozen.

    Returns the module to call for the reference's forward pass: the copy itself (moved to the
    device, or ``fully_shard``-ed in place), an FSDP1 wrapper or a DeepSpeed engine.
    """
    kind, stage = engine(accelerator), zero_stage(accelerator)
    reference = frozen_copy(model) if copy else model.eval().requires_grad_(False)
    if shard and kind == "fsdp":
        prepared = _fsdp_prepare(reference, accelerator)
    elif kind == "deepspeed" and stage == 3 and (shard or is_partitioned(reference)):
        if not shard:  # zero.Init partitioned it at load: only an engine can run it
            logger.warning("shard_reference: false does not apply: ZeRO-3 partitioned the model at load")
        prepared = _deepspeed_prepare(reference, accelerator)
    else:
        prepared = reference.to(accelerator.device)
        if not shard and shards_parameters(accelerator):
            size = sum(p.numel() * p.element_size() for p in reference.parameters()) / 2**30
            logger.warning(
                "shard_reference is off: the frozen reference is a whole copy on every process (%.2f GiB each), "
                "while the policy is sharded by %s. shard_reference: true shards it the same way; "
                "reference: precomputed (one pass before training, no copy) or LoRA's adapter reference "
                "need no copy at all.", size, kind)
    logger.info("frozen reference: %s", describe(kind, stage, shard))
    return prepared


def describe(kind: str, stage: int | None, shard: bool) -> str:
    """One line on where the frozen reference lives under this engine."""
    if kind == "fsdp":
        return "sharded with FSDP like the policy" if shard else "a whole copy on every process (not sharded)"
    if kind == "deepspeed":
        if stage == 3:
            return ("a ZeRO-3 inference engine, parameters partitioned like the policy's" if shard
                    else "a whole copy on every process (not partitioned)")
        return f"a whole copy on every GPU (ZeRO-{stage} partitions optimizer state and gradients, not parameters)"
    return "a whole copy on the device" + (" of every process (DDP)" if kind == "ddp" else "")


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` in eval mode without gradients.

    A model that ZeRO-3's ``zero.Init`` partitioned at load has no whole weights to copy; it is
    loaded again from its checkpoint directory (under the same ``zero.Init``, so partitioned too).
    """
    if not is_partitioned(model):
        return copy.deepcopy(model).eval().requires_grad_(False)
    path = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    if not os.path.isdir(path):
        raise ValueError(
            "under DeepSpeed ZeRO-3 the policy's parameters were partitioned at load, so the frozen reference "
            f"cannot be a copy of it, and its config names no checkpoint directory to load it again from "
            f"({path!r}). Use reference: precomputed (one pass before training) or LoRA with the adapter-off "
            "reference, or load the policy from a local checkpoint directory.")
    dtype = next(model.parameters()).dtype
    logger.info("ZeRO-3: loading the frozen reference again from %s (partitioned at load)", path)
    from ..hub import loading

    with loading(path, "frozen reference"):  # (the policy's classes exist: nothing left to import first)
        reference = type(model).from_pretrained(path, dtype=dtype).eval().requires_grad_(False)
    if broken := kernel_layers_without_setup(reference):
        raise RuntimeError(
            f"under DeepSpeed ZeRO-3 the frozen reference loaded again from {path} has {len(broken)} layers "
            f"(e.g. {broken[0]}: {type(reference.get_submodule(broken[0])).__name__}) that kernels' "
            "use_kernelized_func decorated but zero.Init built without their set-up: the model's classes were "
            "first imported inside zero.Init. Load the policy with mmpo.models.load_policy, or "
            "call mmpo.models.import_model_modules(config) before from_pretrained.")
    if weights_digest(reference) != weights_digest(model):
        raise ValueError(
            f"under DeepSpeed ZeRO-3 the frozen reference is loaded again from {path}, but the policy's weights "
            "differ from that checkpoint's (changed after loading?). Save the policy and train from that "
            "directory, or use reference: precomputed or LoRA with the adapter-off reference.")
    return reference


def weights_digest(model: torch.nn.Module) -> list[tuple[str, str]]:
    """Per state-dict tensor: its name and :func:`tensor_summary` (whole, gathered under ZeRO-3)."""
    return [(name, tensor_summary(tensor)) for name, tensor in whole_tensors(model)]


def tensor_summary(tensor: torch.Tensor) -> str:
    """Cheap but weight-sensitive: the tensor's sum and sum of squares, to 9 digits."""
    t = tensor.detach().float()
    return f"{t.sum().item():.8e},{t.square().sum().item():.8e}"


def _fsdp_prepare(model: torch.nn.Module, accelerator) -> torch.nn.Module:
    plugin = accelerator.state.fsdp_plugin
    if plugin.fsdp_version == 2:
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        return fsdp2_prepare_model(accelerator, model)
    from torch.distributed.fsdp import FullyShardedDataParallel

    plugin.set_auto_wrap_policy(model)
    return FullyShardedDataParallel(
        model, sharding_strategy=plugin.sharding_strategy, cpu_offload=plugin.cpu_offload,
        auto_wrap_policy=plugin.auto_wrap_policy, mixed_precision=plugin.mixed_precision_policy,
        sync_module_states=plugin.sync_module_states, forward_prefetch=plugin.forward_prefetch,
        use_orig_params=plugin.use_orig_params, param_init_fn=plugin.param_init_fn,
        ignored_modules=plugin.ignored_modules, limit_all_gathers=plugin.limit_all_gathers,
        device_id=accelerator.device,
    )


def _deepspeed_prepare(model: torch.nn.Module, accelerator) -> torch.nn.Module:
    import deepspeed

    config = deepspeed_inference_config(accelerator.state.deepspeed_plugin.deepspeed_config,
                                        hidden_size(model))
    reference, *_ = deepspeed.initialize(model=model, config=config)
    reference.eval()
    return reference


def hidden_size(model: torch.nn.Module) -> int | None:
    """The language model's hidden size (ZeRO-3's bucket sizes scale with it), if the config has one."""
    config = getattr(model, "config", None)
    for part in (config, getattr(config, "text_config", None)):
        size = getattr(part, "hidden_size", None)
        if isinstance(size, int):
            return size
    return None


def deepspeed_inference_config(train_config: dict[str, Any], hidden: int | None) -> dict[str, Any]:
    """DeepSpeed settings for the frozen reference, from the policy's (already-filled) training config.

    Kept: the batch sizes (DeepSpeed checks them against the world size), the precision, and
    ZeRO-3 with its parameter partitioning and parameter offload. Dropped: the optimizer, the
    scheduler, gradient clipping and the optimizer-state offload, which a model that never steps
    does not have. The bucket and persistence sizes the HF Trainer leaves as ``"auto"`` (they
    depend on the model) are filled from ``hidden`` as the Trainer does for the policy.
    """
    train_config = copy.deepcopy(train_config)
    zero = train_config.get("zero_optimization", {})
    if int(zero.get("stage", 0)) != 3:
        raise ValueError(f"the reference is prepared as a ZeRO-3 inference engine only under ZeRO-3, "
                         f"not stage {zero.get('stage', 0)}")
    sizes = {} if hidden is None else {
        "reduce_bucket_size": hidden * hidden,
        "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
        "stage3_param_persistence_threshold": 10 * hidden,
    }
    kept_zero = {"stage": 3}
    for key, value in zero.items():
        if key in ("stage", "offload_optimizer") or key.startswith("sub_group"):
            continue
        if value == "auto":
            if key not in sizes:
                continue  # DeepSpeed's own default
            value = sizes[key]
        kept_zero[key] = value
    config: dict[str, Any] = {"zero_optimization": kept_zero}
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
                "bf16", "fp16", "steps_per_print", "wall_clock_breakdown"):
        value = train_config.get(key)
        if value is not None and value != "auto":
            config[key] = value
    for precision in ("bf16", "fp16"):
        if isinstance(config.get(precision), dict):
            config[precision] = {k: v for k, v in config[precision].items() if v != "auto"}
    return config


@contextmanager
def fsdp_on_cpu():
    """Let accelerate run FSDP on CPU processes (gloo), for tests and CPU benchmarks only.

    accelerate enables FSDP only on accelerator devices: on CPU its ``AcceleratorState`` ignores
    the FSDP plugin and sets up plain multi-CPU DDP. Inside this context a state built with an
    FSDP plugin on CPU gets the FSDP type, so that accelerate's own FSDP2 preparation (which
    torch supports on CPU over gloo) runs unchanged. Not for real runs: use a GPU.
    """
    import accelerate.state as state
    from accelerate.utils import DistributedType

    original = state.AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        # Every later AcceleratorState() copies the process state's MULTI_CPU back in: set it again.
        plugin = fsdp_plugin if fsdp_plugin is not None else self.__dict__.get("fsdp_plugin")
        if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = plugin

    state.AcceleratorState.__init__ = init
    try:
        yield
    finally:
        state.AcceleratorState.__init__ = original
