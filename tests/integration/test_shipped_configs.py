"""The shipped configs: every YAML under ``configs/`` parses, the paper configs hold the papers'
hyper-parameters, and every synthetic-world config trains for real through ``mmpo train``.

``configs/toyworld`` is a link to the package's ``mmpo/configs/toyworld`` (the files ``mmpo demo``
reads, shipped as package data), so it is walked following links.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from mmpo.data.records import save_records
from mmpo.toyworld.pipeline import CONFIG_DIR, method_configs
from mmpo.training.config import parse_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"


def shipped_configs() -> list[Path]:
    """Every mmpo ``*.yaml`` under ``configs/``, links followed, sorted (``configs/accelerate`` holds
    accelerate's launch configs: tests/unit/test_accelerate_configs.py reads those)."""
    found = []
    for root, _, files in os.walk(CONFIGS, followlinks=True):
        if Path(root) != CONFIGS / "accelerate":
            found += [Path(root, name) for name in files if name.endswith((".yaml", ".yml"))]
    return sorted(found)


SHIPPED = shipped_configs()
TOYWORLD = [path for path in SHIPPED if path.parent.name == "toyworld"]
#: Parsing checks the hardware: a bf16 config is an error on a machine without a GPU unless use_cpu.
ON_ANY_MACHINE = ["--use_cpu", "true"]


def name(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


def test_the_shipped_configs_are_all_found():
    assert {path.parent.name for path in SHIPPED} >= {"llava15", "qwen25vl", "toyworld"}
    assert sorted(path.stem for path in TOYWORLD) == ["adavip", "adavip_plus_vision", "aspo", "aspo_dama_adavip", "d2po",
                                                      "dama", "dpo", "mdpo", "sft_chosen"]


def test_configs_toyworld_is_what_the_demo_reads():
    """One set of files: ``mmpo train configs/toyworld/X.yaml`` runs what ``mmpo demo --method X`` runs."""
    assert (CONFIGS / "toyworld").resolve() == CONFIG_DIR
    assert sorted(method_configs().values()) == sorted(path.resolve() for path in TOYWORLD)
    assert "adavip-plus-vision" in method_configs()


@pytest.mark.parametrize("path", SHIPPED, ids=name)
def test_every_shipped_config_parses(path):
    """``parse_config`` reads no model or data file, so the placeholder paths need not exist."""
    config = parse_config(path, ON_ANY_MACHINE)
    model_args, data_args, args = config.model, config.data, config.training
    assert model_args.model_name_or_path and data_args.train_file and args.output_dir


#: config -> the values the paper states (section 4.1 of each; the YAML comments quote them)
PAPER_VALUES = {
    "aspo_lora.yaml": {"use_lora": True, "lora_r": 1024, "lora_alpha": 2048, "learning_rate": 2e-6,
                       "weight_decay": 0.0, "lr_scheduler_type": "cosine", "num_train_epochs": 1, "beta": 0.1,
                       "aspo": True, "aspo_alpha": 0.5, "batch": 10},
    "dama_full.yaml": {"use_lora": False, "num_train_epochs": 4, "beta": 0.1, "dama_data": True, "dama_model": True,
                       "dama_recipe": "authors", "K of 16": 12, "dama_gamma": 0.9, "gradient_accumulation_steps": 1},
    "adavip_full.yaml": {"use_lora": False, "max_steps": 5000, "beta": 0.1, "adavip": True,
                         "adavip_loss": "plackett_luce", "batch_on_4_gpus": 32},
}


@pytest.mark.parametrize("family", ["llava15", "qwen25vl"])
@pytest.mark.parametrize("config", sorted(PAPER_VALUES))
def test_paper_configs_hold_the_papers_values(family, config):
    parsed = parse_config(CONFIGS / family / config, ON_ANY_MACHINE)
    values = parsed.values()
    per_step = values["per_device_train_batch_size"] * values["gradient_accumulation_steps"]
    values["batch"], values["batch_on_4_gpus"] = per_step, per_step * 4
    if config.startswith("dama"):
        assert values["per_device_train_batch_size"] * 4 == 16  # N over the paper's four GPUs
        values["K of 16"] = parsed.methods.dama.resolved().keep_count(16)
    for key, expected in PAPER_VALUES[config].items():
        wanted = pytest.approx(expected) if isinstance(expected, float) else expected
        assert values[key] == wanted, f"{family}/{config}: {key}"


@pytest.mark.parametrize("config", sorted(PAPER_VALUES))
def test_qwen25vl_configs_carry_the_llava15_values_over(config):
    """The papers train LLaVA-1.5 only: the Qwen2.5-VL files differ in paths and max_length alone."""
    llava, qwen = (parse_config(CONFIGS / family / config, ON_ANY_MACHINE).values() for family in ("llava15", "qwen25vl"))
    differ = {key for key in llava if llava[key] != qwen[key]}
    paths = {"model_name_or_path", "output_dir", "logging_dir", "reference_cache_dir", "train_file", "run_name"}
    assert differ - paths == {"max_length"}
    assert "Qwen2.5-VL" in qwen["model_name_or_path"]


# ---------------------------------------------------------------------------------------------- training
#: config -> a logged key only its method writes (None: plain DPO, no method namespace at all)
METHOD_KEY = {"dpo": None, "aspo": "aspo/weight_mean", "d2po": "dama/alpha_data_mean", "mdpo": "dama/alpha_model",
              "dama": "dama/alpha_model", "adavip": "adavip/weight_vision", "adavip_plus_vision": "adavip/",
              "aspo_dama_adavip": ("aspo/", "dama/", "adavip/"), "sft_chosen": None}


@pytest.fixture(scope="module")
def every_field_records(tiny_records, tmp_path_factory):
    """The tiny records with every method's field: a CLIP score per chosen sentence (ASPO; the
    sentences end in ' .'), alpha_D (DAMA), a vision-rejected image (AdaViP: the next record's)."""
    records = [dataclasses.replace(r, chosen_sentence_scores=[0.1 * (i + 1) for i in range(r.chosen.count(" ."))],
                                   data_alpha=0.5 + 0.25 * (n % 4),
                                   rejected_image=tiny_records[(n + 1) % len(tiny_records)].image)
               for n, r in enumerate(tiny_records)]
    return save_records(records, tmp_path_factory.mktemp("records") / "train.jsonl")


@pytest.mark.parametrize("path", TOYWORLD, ids=lambda p: p.stem)
def test_every_toyworld_config_trains_two_steps(path, tiny_checkpoint, every_field_records, tmp_path):
    """``mmpo train configs/toyworld/X.yaml`` with the tiny model and records: two steps, the
    method's metrics logged, the model saved."""
    from mmpo.cli.train import main as train

    out = tmp_path / "out"
    code = train([str(path), "--model_name_or_path", str(tiny_checkpoint), "--train_file", str(every_field_records),
                  "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "4",
                  "--logging_steps", "1", "--disable_tqdm", "true"])
    assert code == 0
    log = json.loads((out / "log_history.json").read_text())
    keys = {key for entry in log for key in entry}
    assert max(entry.get("step", 0) for entry in log) == 2 and "rewards/margins" in keys
    expected = METHOD_KEY[path.stem]
    if expected is None:
        assert not any(key.startswith(("aspo/", "dama/", "adavip/")) for key in keys), sorted(keys)
    else:
        for prefix in (expected,) if isinstance(expected, str) else expected:
            assert any(key.startswith(prefix) for key in keys), sorted(keys)
    if path.stem == "sft_chosen":  # the control's loss is the NLL alone
        steps = [entry for entry in log if "loss/sft" in entry]
        assert steps and all(entry["loss"] == pytest.approx(entry["loss/sft"], rel=1e-4) for entry in steps)
    assert (out / "config.json").exists()
