"""The shipped accelerate configs (configs/accelerate/*.yaml) and DeepSpeed JSONs, read by the loaders
that read them in a real run: accelerate's config loader and launcher, the FSDP / DeepSpeed plugins
built from the launcher's environment, transformers' filling of the DeepSpeed "auto" values, and
DeepSpeed's own config parser. No GPU and no process group is needed."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils import launch as accelerate_launch

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "configs" / "accelerate"
ENGINES = {"ddp": DistributedType.MULTI_GPU, "fsdp": DistributedType.FSDP,
           "zero2": DistributedType.DEEPSPEED, "zero3": DistributedType.DEEPSPEED}
ZERO = {"zero2": 2, "zero3": 3}
HOST = "10.1.2.3"  # stands for the launch lines' HOST


@pytest.fixture(autouse=True)
def clean_launch_env(monkeypatch):
    """Run from the repository root (the configs' relative paths) with no accelerate/FSDP variables
    inherited from the shell, so that each plugin sees only what the launcher sets."""
    monkeypatch.chdir(ROOT)
    for key in list(os.environ):
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.delenv(key)


def header(path: Path) -> list[str]:
    """The comment lines at the top of ``path``, without their leading ``#``."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return lines


def launch_lines(path: Path) -> list[str]:
    return [line for line in header(path) if line.startswith("accelerate launch ")]


def launch(argv: list[str], monkeypatch) -> tuple[SimpleNamespace, list[str] | None, dict[str, str]]:
    """What ``accelerate launch ARGV`` would do, up to starting the processes: the parsed and
    validated arguments, the command (None: torchrun in-process) and the variables it sets."""
    monkeypatch.setattr(accelerate_launch, "is_port_in_use", lambda port: False)
    args = launch_command_parser().parse_args(argv)
    args, defaults, mixed_precision_from_config = _validate_launch_command(args)
    cmd = None
    if args.use_deepspeed:  # as accelerate.commands.launch.launch_command does before deepspeed_launcher
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mixed_precision_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        cmd, env = accelerate_launch.prepare_deepspeed_cmd_env(args)
    else:
        env = accelerate_launch.prepare_multi_gpu_env(args)
    added = {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}
    return args, cmd, added


def test_the_shipped_set():
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) == sorted(ENGINES)
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.json")) == sorted(ZERO)


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_loads_with_accelerates_loader(name):
    config = load_config_from_file(str(CONFIG_DIR / f"{name}.yaml"))
    assert config.distributed_type == ENGINES[name]
    assert (config.num_machines, config.machine_rank, config.num_processes) == (1, 0, 8)
    assert config.use_cpu is False and config.rdzv_backend == "static"
    # accelerate refuses a mixed_precision next to a deepspeed_config_file (see the test below)
    assert config.mixed_precision == (None if name in ZERO else "bf16")
    if name in ZERO:
        assert (ROOT / config.deepspeed_config["deepspeed_config_file"]) == CONFIG_DIR / f"{name}.json"


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_header_names_its_launch_lines(name):
    lines = launch_lines(CONFIG_DIR / f"{name}.yaml")
    own = f"accelerate launch --config_file configs/accelerate/{name}.yaml "
    assert lines and all(line.startswith(own) for line in lines), lines
    assert any("--num_machines" not in line for line in lines)  # one node
    for rank in (0, 1):  # two nodes
        assert any(f"--num_machines 2 --machine_rank {rank} " in line for line in lines)


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_launch_lines_go_through_the_launcher(name, monkeypatch):
    for line in launch_lines(CONFIG_DIR / f"{name}.yaml"):
        args, cmd, env = launch(shlex.split(line.replace("HOST", HOST))[2:], monkeypatch)
        assert (args.module, args.training_script) == (True, "mmpo.cli.main")
        assert args.training_script_args[0] == "train" and (ROOT / args.training_script_args[1]).is_file()
        assert cmd is None  # torchrun on each node (DeepSpeed: the "standard" launcher, not pdsh + hostfile)
        assert args.nproc_per_node == "8"
        if args.num_machines > 1:
            assert (args.nnodes, args.node_rank) == ("2", int(line.split("--machine_rank ")[1][0]))
            # same_network in the file is overridden by the --same_network flag's default (False), so
            # torchrun gets a static rendezvous endpoint rather than master_addr; either reaches HOST
            assert getattr(args, "rdzv_endpoint", None) == f"{HOST}:29500" or args.master_addr == HOST
        assert env.get("ACCELERATE_USE_FSDP") == ("true" if name == "fsdp" else None)
        assert env.get("ACCELERATE_USE_DEEPSPEED") == ("true" if name in ZERO else None)


def test_benchmark_launch_on_one_gpu(monkeypatch):
    """benchmarks/gpu_scale.sh's line with --num_processes 1 is accepted for every engine it runs."""
    for name in ("ddp", "fsdp", "zero3"):
        args, _, env = launch(["--config_file", f"configs/accelerate/{name}.yaml", "--num_processes", "1",
                               "benchmarks/gpu_scale.py", "--engine-label", name], monkeypatch)
        assert args.nproc_per_node == "1" and args.training_script_args == ["--engine-label", name]


def fsdp_plugin(monkeypatch) -> FullyShardedDataParallelPlugin:
    """The plugin that the Accelerator of a process started with fsdp.yaml builds from its environment."""
    _, _, env = launch(["--config_file", "configs/accelerate/fsdp.yaml", "train.py"], monkeypatch)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return FullyShardedDataParallelPlugin()


def test_fsdp_plugin_is_fsdp2(monkeypatch):
    from torch.distributed.fsdp import CPUOffloadPolicy, StateDictType
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin = fsdp_plugin(monkeypatch)
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True  # FSDP2 takes a bool (FSDP1 a sharding strategy name)
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy
    assert plugin.transformer_cls_names_to_wrap is None  # filled from the model's _no_split_modules
    assert plugin.cpu_ram_efficient_loading is True
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT
    assert not isinstance(plugin.cpu_offload, CPUOffloadPolicy)
    assert plugin.activation_checkpointing is False


def _tiny_llava():
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    text = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=2, vocab_size=128)
    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, image_size=28, patch_size=14)
    return LlavaForConditionalGeneration(LlavaConfig(text_config=text, vision_config=vision))


def _tiny_qwen25vl():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2, vocab_size=128, bos_token_id=0, eos_token_id=1)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32)
    return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision))


@pytest.mark.parametrize(("build", "wrapped"), [
    (_tiny_llava, ["CLIPEncoderLayer", "CLIPVisionEmbeddings", "LlamaDecoderLayer"]),
    (_tiny_qwen25vl, ["Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock"]),
])
def test_fsdp_wrap_policy_without_class_names(build, wrapped, monkeypatch):
    """With no layer classes in fsdp.yaml, the wrapped units are the decoder and vision layers of
    each VLM family, once mmpo's trainer has kept the ``_no_split_modules`` the model contains."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    from mmpo.training.distributed import wrap_only_present_layers

    with torch.device("meta"):
        model = build()
    plugin = fsdp_plugin(monkeypatch)
    wrap_only_present_layers(SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin)), model)
    plugin.set_auto_wrap_policy(model)  # what accelerate's fsdp2_prepare_model does first
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    assert sorted({type(m).__name__ for m in model.modules() if policy(m)}) == wrapped


@pytest.mark.parametrize("name", sorted(ZERO))
def test_deepspeed_plugin_reads_the_json(name, monkeypatch):
    accelerate_config = load_config_from_file(str(CONFIG_DIR / f"{name}.yaml")).deepspeed_config
    init_flag = accelerate_config["zero3_init_flag"]
    assert init_flag is (name == "zero3")
    direct = DeepSpeedPlugin(hf_ds_config=str(CONFIG_DIR / f"{name}.json"), zero3_init_flag=init_flag)
    _, _, env = launch(["--config_file", f"configs/accelerate/{name}.yaml", "train.py"], monkeypatch)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    launched = DeepSpeedPlugin()  # as the Trainer's arguments build it under `accelerate launch`
    for plugin in (direct, launched):
        assert plugin.zero_stage == ZERO[name]
        assert plugin.zero3_init_flag is init_flag
        assert plugin.zero3_save_16bit_model is (name == "zero3")
        assert plugin.hf_ds_config.is_zero3() is (name == "zero3")
        assert "optimizer" not in plugin.deepspeed_config and "scheduler" not in plugin.deepspeed_config


def test_mixed_precision_next_to_a_deepspeed_file_is_refused(tmp_path, monkeypatch):
    """Why zero2.yaml / zero3.yaml have no mixed_precision key: accelerate rejects one there."""
    config = yaml.safe_load((CONFIG_DIR / "zero3.yaml").read_text())
    config["mixed_precision"] = "bf16"
    path = tmp_path / "zero3-bf16.yaml"
    path.write_text(yaml.safe_dump(config))
    _, _, env = launch(["--config_file", str(path), "train.py"], monkeypatch)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match="deepspeed_config_file"):
        DeepSpeedPlugin()


class _OnEightProcesses:
    """``TrainingArguments`` as seen on 8 processes (the YAMLs' num_processes): only world_size differs."""

    world_size = 8

    def __init__(self, args):
        self._args = args

    def __getattr__(self, name):
        return getattr(self._args, name)


def _as_eight_processes(monkeypatch):
    """DeepSpeedConfig asks deepspeed.comm for rank and world size, and takes 0 and 1 when no process
    group exists; answer as process 0 of 8 instead, so the batch-size arithmetic is checked at 8."""
    import deepspeed.runtime.config as ds_config

    monkeypatch.setattr(ds_config.dist, "get_rank", lambda group=None: 0)
    monkeypatch.setattr(ds_config.dist, "get_world_size", lambda group=None: 8)


@pytest.mark.parametrize("name", sorted(ZERO))
def test_deepspeed_accepts_the_json_as_the_trainer_fills_it(name, tmp_path, monkeypatch):
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install deepspeed)")
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import LlavaConfig, TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    path = CONFIG_DIR / f"{name}.json"
    raw = json.loads(path.read_text())
    assert "optimizer" not in raw and "scheduler" not in raw  # the Trainer's AdamW and schedule are used
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=4,
                             max_grad_norm=1.0, bf16=True, use_cpu=True, report_to=[])
    hf_config = HfTrainerDeepSpeedConfig(str(path))  # also registers itself for is_deepspeed_zero3_enabled()
    try:
        # What the Trainer does: at TrainingArguments creation, then once the model and step count are known
        hf_config.trainer_config_process(_OnEightProcesses(args))
        hf_config.trainer_config_finalize(_OnEightProcesses(args), SimpleNamespace(config=LlavaConfig()), 10)
        filled = hf_config.config
    finally:
        del hf_config
        unset_hf_deepspeed_config()
    assert "auto" not in json.dumps(filled)  # every "auto" in the file is one the Trainer fills
    _as_eight_processes(monkeypatch)
    ds = DeepSpeedConfig(filled)
    hidden = LlavaConfig().text_config.hidden_size  # the text model's: LlavaConfig has no hidden_size
    assert ds.world_size == 8
    assert (ds.train_batch_size, ds.train_micro_batch_size_per_gpu, ds.gradient_accumulation_steps) == (64, 2, 4)
    assert ds.zero_optimization_stage == ZERO[name]
    assert ds.bfloat16_config.enabled and not ds.float16_config.enabled
    assert ds.gradient_clipping == 1.0
    zero = ds.zero_config
    assert zero.overlap_comm and zero.contiguous_gradients
    assert zero.reduce_bucket_size == hidden * hidden
    if name == "zero3":
        assert zero.gather_16bit_weights_on_model_save
        assert zero.prefetch_bucket_size == int(0.9 * hidden * hidden)
        assert zero.param_persistence_threshold == 10 * hidden
