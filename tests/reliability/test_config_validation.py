"""Config mistakes stop ``parse_config`` with a message naming the field (and the YAML file),
before a model is loaded; a model path that does not exist is named before anything loads.

Before, among others: ``beta: true`` trained with beta = 1.0, ``beta: .nan`` and ``--beta inf``
passed (``beta <= 0`` is False for NaN), ``sft_weight: -1`` was accepted, ``max_steps: 2.5``
became 2.5 steps, ``dtype: float8`` failed with a raw AttributeError after the records loaded,
and ``--resume_from_checkpoint True`` was read as a checkpoint path named "True".
"""

from __future__ import annotations

import pytest
import yaml
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmpo.hub import CheckpointLoadError
from mmpo.models import load_policy
from mmpo.training.config import DataArguments, ModelArguments, PreferenceConfig, check_number, parse_config
from mmpo.training.run import run_training


@pytest.fixture
def config(tmp_path):
    """Write a YAML config (valid base + ``values``) and parse it with ``overrides``."""

    def parse(values: dict | None = None, overrides: list[str] | None = None):
        path = tmp_path / "config.yaml"
        base = {"model_name_or_path": "/models/m", "train_file": "train.jsonl", "output_dir": str(tmp_path / "out"),
                "report_to": "none"}
        path.write_text(yaml.safe_dump({**base, **(values or {})}))
        return parse_config(path, overrides)

    return parse


NAN, INF = float("nan"), float("inf")

#: (YAML values, command-line overrides, a regex the error must match)
BAD = [
    ({"beta": True}, [], r"config\.yaml: beta must be a number, not the boolean true"),
    ({"beta": "a lot"}, [], r"config\.yaml: beta must be a number, not the string 'a lot'"),
    ({"beta": "nan"}, [], r"beta must be a number, not the string 'nan'"),
    ({"beta": NAN}, [], r"config\.yaml: beta must be a finite number > 0, not nan"),
    ({"beta": INF}, [], r"beta must be a finite number > 0, not inf"),
    ({}, ["--beta", "nan"], r"beta must be a finite number > 0, not nan"),
    ({}, ["--beta=-inf"], r"beta must be a finite number > 0"),
    ({}, ["--beta", "0"], r"beta must be a finite number > 0, not 0.0"),
    ({"sft_weight": -1}, [], r"sft_weight must be a finite number >= 0, not -1"),
    ({"sft_weight": NAN}, [], r"sft_weight must be a finite number >= 0, not nan"),
    ({"preference_weight": -1}, [], r"preference_weight must be a finite number >= 0, not -1"),
    ({"preference_weight": 0, "sft_weight": 0}, [], r"preference_weight and sft_weight are both 0"),
    ({"max_steps": 2.5}, [], r"config\.yaml: max_steps must be an integer, not 2.5"),
    ({"max_steps": "ten"}, [], r"max_steps must be an integer, not the string 'ten'"),
    ({"max_length": 0}, [], r"max_length must be an integer > 0, not 0"),
    ({"max_length": 12.5}, [], r"max_length must be an integer"),
    ({"learning_rate": NAN}, [], r"learning_rate must be a finite number >= 0, not nan"),
    ({"learning_rate": -1e-5}, [], r"learning_rate must be a finite number >= 0"),
    ({"max_grad_norm": INF}, [], r"max_grad_norm must be a finite number, not inf"),
    ({"dtype": "float8"}, [], r"dtype must be auto, float32, bfloat16 or float16, not 'float8'"),
    ({"lora_r": 0}, [], r"lora_r must be an integer > 0, not 0"),
    ({"lora_alpha": -4}, [], r"lora_alpha must be an integer > 0, not -4"),
    ({"lora_dropout": 1.0}, [], r"lora_dropout must be a finite number >= 0 and < 1, not 1.0"),
    ({"lora_dropout": 1.5}, [], r"lora_dropout must be a finite number >= 0 and < 1"),
    ({"aspo_alpha": NAN}, [], r"aspo_alpha must be a finite number >= 0 and <= 1, not nan"),
    ({"aspo_alpha": True}, [], r"aspo_alpha must be a number, not the boolean true"),
    ({"on_bad_record": "ignore"}, [], r"on_bad_record must be raise or skip, not 'ignore'"),
    ({"on_nonfinite": "ignore"}, [], r"on_nonfinite must be raise or skip, not 'ignore'"),
    ({"use_lora": "maybe"}, [], r"use_lora must be true or false, not the string 'maybe'"),
    ({"save_strategy": False}, [], r"save_strategy must be a string, not the boolean false \(YAML reads unquoted"),
    ({"resume_from_checkpoint": 3}, [], r"resume_from_checkpoint must be a checkpoint path, true or false"),
]


@pytest.mark.parametrize(("values", "overrides", "message"), BAD, ids=[m.split(" must")[0][-30:] for *_, m in BAD])
def test_a_bad_value_is_an_error_naming_the_field(config, values, overrides, message):
    with pytest.raises(ValueError, match=message):
        config(values, overrides)


def test_good_values_and_what_they_are_read_as(config):
    parsed = config({"max_steps": 10.0, "learning_rate": "1e-5", "dtype": "bf16", "beta": 1, "aspo_alpha": 0})
    model_args, args, aspo = parsed.model, parsed.training, parsed.methods.aspo
    assert args.max_steps == 10 and isinstance(args.max_steps, int)
    assert args.learning_rate == 1e-5  # PyYAML reads 1e-5 as a string: a number literal is still a number
    assert model_args.dtype == "bfloat16" and args.beta == 1 and aspo.alpha == 0
    assert args.on_nonfinite == "raise" and model_args.allow_download is False


@pytest.mark.parametrize(("values", "overrides", "expected"), [
    ({}, ["--resume_from_checkpoint", "True"], True),
    ({}, ["--resume_from_checkpoint", "true"], True),
    ({}, ["--resume_from_checkpoint", "False"], None),
    ({}, ["--resume_from_checkpoint", ""], None),
    ({"resume_from_checkpoint": True}, [], True),
    ({"resume_from_checkpoint": False}, [], None),
    ({}, ["--resume_from_checkpoint", "runs/x/checkpoint-5"], "runs/x/checkpoint-5"),
])
def test_resume_from_checkpoint_true_is_not_a_path(config, values, overrides, expected):
    assert config(values, overrides).training.resume_from_checkpoint == expected


def test_check_number_never_accepts_nan_or_inf():
    for value in (NAN, INF, -INF):
        with pytest.raises(ValueError, match="x must be a finite number"):
            check_number("x", value)
    check_number("x", 0.5, low=0, high=1)


# ------------------------------------------------------------------ model paths


def test_a_model_path_that_does_not_exist_is_named_before_anything_loads(tmp_path, monkeypatch):
    """Before: transformers took the missing directory for a Hub id and tried the network."""
    def must_not_load(*args, **kwargs):
        raise AssertionError("from_pretrained was called")

    monkeypatch.setattr(AutoProcessor, "from_pretrained", must_not_load)
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match=rf"{missing}.*does not exist.*allow_download"):
        load_policy(ModelArguments(model_name_or_path=str(missing)))


def test_run_training_checks_the_model_path_before_the_records(tmp_path):
    args = PreferenceConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none")
    with pytest.raises(FileNotFoundError, match="no-such-model"):  # not the missing records
        run_training(ModelArguments(model_name_or_path=str(tmp_path / "no-such-model")),
                     DataArguments(train_file=str(tmp_path / "no-such-records.jsonl")), args)


def spy_on_loads(monkeypatch) -> list[dict]:
    calls = []

    def load(name, **kwargs):
        calls.append(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(AutoProcessor, "from_pretrained", load)
    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", load)
    return calls


def test_a_local_model_is_loaded_with_local_files_only(tiny_checkpoint, monkeypatch):
    monkeypatch.delenv("MMPO_ALLOW_DOWNLOAD", raising=False)
    calls = spy_on_loads(monkeypatch)
    with pytest.raises(CheckpointLoadError, match="stop here"):  # the loader's error, named as mmpo's
        load_policy(ModelArguments(model_name_or_path=str(tiny_checkpoint)))
    assert calls == [{"local_files_only": True}]


def test_allow_download_lets_a_hub_id_through(monkeypatch):
    monkeypatch.delenv("MMPO_ALLOW_DOWNLOAD", raising=False)
    calls = spy_on_loads(monkeypatch)
    with pytest.raises(CheckpointLoadError, match="stop here"):
        load_policy(ModelArguments(model_name_or_path="llava-hf/llava-1.5-7b-hf", allow_download=True))
    assert calls == [{}]
