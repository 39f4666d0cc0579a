"""Config loading: YAML + overrides, unknown keys (every shipped config: tests/integration/test_shipped_configs.py)."""


import pytest

from mmpo.training.config import parse_config


def test_yaml_values_and_command_line_overrides(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model_name_or_path: /m\ntrain_file: t.jsonl\noutput_dir: o\nbeta: 0.2\nuse_lora: true\n")
    config = parse_config(cfg, ["--beta", "0.5", "--sft_weight", "1.0"])
    model_args, data_args, args = config.model, config.data, config.training
    assert model_args.model_name_or_path == "/m" and model_args.use_lora is True
    assert data_args.train_file == "t.jsonl"
    assert args.beta == 0.5 and args.sft_weight == 1.0 and args.remove_unused_columns is False


def test_unknown_yaml_key_is_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model_name_or_path: /m\noutput_dir: o\nbetta: 0.2\n")
    with pytest.raises(ValueError, match=r"unknown config keys \['betta'\]"):
        parse_config(cfg)


def test_bad_reference_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="reference must be"):
        parse_config(None, ["--model_name_or_path", "/m", "--output_dir", "o", "--reference", "nope"])
