"""A checkpoint that does not load as it is never trains or evaluates: each fault is one error naming the
file or the directory and the likely cause, raised while loading, before a record is encoded.

Faults come from copies of the tiny LLaVA checkpoint with one file changed: a ``config.json`` with a layer
more (or fewer) than the weights hold, or another family's; damaged JSON, weights or chat template; a
missing tokenizer file; a tokenizer without a pad token.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from transformers import AutoModelForImageTextToText

from mmpo import hub
from mmpo.cli.main import main
from mmpo.models import ModelArguments, load_policy
from mmpo.testing.families import FAMILIES, VARIANTS, build_family


@pytest.fixture
def checkpoint(tmp_path, tiny_checkpoint) -> Path:
    """A copy of the tiny LLaVA checkpoint, to damage."""
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))


def edit_config(path: Path, change) -> None:
    config = json.loads((path / "config.json").read_text())
    change(config)
    (path / "config.json").write_text(json.dumps(config))


def load(path: Path, **kw):
    return load_policy(ModelArguments(model_name_or_path=str(path), **kw))


def layers(n: int):
    def change(config):
        config["text_config"]["num_hidden_layers"] = n
    return change


# ---------------------------------------------------------------------------------------------- weights (row 3)
def test_a_config_with_a_layer_more_than_the_weights_is_an_error_naming_the_tensors(checkpoint):
    edit_config(checkpoint, layers(3))
    with pytest.raises(hub.CheckpointLoadError) as caught:
        load(checkpoint)
    message = str(caught.value)
    assert message.startswith(f"cannot load the model in {checkpoint} (LlavaForConditionalGeneration): 9 tensors ")
    assert "model.language_model.layers.2." in message and "(6 more)" in message
    assert "randomly initialised" in message and "config.json describes more" in message
    assert "allow_missing_weights: true" in message and "allow_unexpected_weights" not in message


def test_a_config_with_a_layer_fewer_than_the_weights_is_an_error_naming_the_tensors(checkpoint):
    edit_config(checkpoint, layers(1))
    with pytest.raises(hub.CheckpointLoadError, match=r"9 tensors in the weights have no place in the model "
                                                      r"\(model\.language_model\.layers\.1\.") as caught:
        load(checkpoint)
    assert "allow_unexpected_weights: true" in str(caught.value)


def test_missing_and_unexpected_weights_are_loaded_when_allowed(checkpoint, caplog):
    edit_config(checkpoint, layers(3))
    with caplog.at_level(logging.WARNING, logger="mmpo.hub"):
        model, _ = load(checkpoint, allow_missing_weights=True)
    assert model.config.text_config.num_hidden_layers == 3
    assert "9 tensors the model needs are missing" in caplog.text and "(allowed)" in caplog.text
    edit_config(checkpoint, layers(1))
    with pytest.raises(hub.CheckpointLoadError):
        load(checkpoint, allow_missing_weights=True)  # the other kind is still refused
    model, _ = load(checkpoint, allow_unexpected_weights=True)
    assert model.config.text_config.num_hidden_layers == 1


def test_the_allow_options_are_config_keys(tmp_path):
    from mmpo.training.config import parse_config

    config = parse_config(None, ["--model_name_or_path", "m", "--output_dir", str(tmp_path),
                                 "--allow_missing_weights", "true"])
    assert config.model.allow_missing_weights is True and config.model.allow_unexpected_weights is False


@pytest.mark.parametrize("name", FAMILIES + VARIANTS)
def test_every_tested_family_loads_without_a_weights_error(tmp_path, name):
    """Tied weights and buffers that are not saved are not missing weights."""
    model, _ = build_family(name)
    model.save_pretrained(tmp_path)
    loaded = hub.load_model(AutoModelForImageTextToText, tmp_path, "model", local_files_only=True)
    assert type(loaded) is type(model)


def test_weights_of_another_family_are_an_error_at_load_not_a_traceback_at_the_first_forward(checkpoint, capsys,
                                                                                            tiny_records):
    """config.json says qwen2_vl while weights and processor are LLaVA's: transformers builds a random
    Qwen2-VL (every tensor missing, every saved one unexpected), whose first forward fails on
    ``image_grid_thw`` (AttributeError: 'NoneType' object has no attribute 'device')."""
    edit_config(checkpoint, lambda c: c.update(model_type="qwen2_vl", architectures=["Qwen2VLForConditionalGeneration"]))
    records = save(tiny_records, checkpoint.parent)
    argv = ["train", "--model_name_or_path", str(checkpoint), "--train_file", str(records),
            "--output_dir", str(checkpoint.parent / "out"), "--max_steps", "1", "--use_cpu", "true"]
    assert main(argv) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and err[0].startswith(f"mmpo train: error: cannot load the model in {checkpoint} "
                                               "(Qwen2VLForConditionalGeneration): "), err
    assert "the weights are not the architecture config.json declares" in err[0]


def error_lines(capsys) -> list[str]:
    """The command's error lines on stderr (transformers' progress bars left out)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("mmpo ")]


def save(records, folder: Path) -> Path:
    from mmpo.data.records import save_records

    return save_records(records[:2], folder / "records.jsonl")


# ---------------------------------------------------------------------------------------------- files (row 4)
def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json", "tokenizer.json", "processor_config.json",
                                  "generation_config.json"])
@pytest.mark.parametrize("damage", ["truncated", "empty", "binary"])
def test_a_damaged_json_file_is_named(checkpoint, name, damage):
    path = checkpoint / name
    if damage == "truncated":
        truncate(path)
    else:
        path.write_bytes(b"" if damage == "empty" else b"\x00\xff" * 40)
    with pytest.raises(hub.CheckpointLoadError) as caught:
        load(checkpoint)
    message = str(caught.value)
    declared = "" if name == "config.json" else " (LlavaForConditionalGeneration)"
    assert message.startswith(f"cannot load the model in {checkpoint}{declared}: {path} "), message
    assert "Likely cause: the file is truncated or damaged" in message, message


def test_a_config_that_is_not_an_object_is_named(checkpoint):
    (checkpoint / "config.json").write_text("[1, 2]")
    with pytest.raises(hub.CheckpointLoadError, match=r"config\.json is not a JSON object"):
        load(checkpoint)


@pytest.mark.parametrize("cut", [5, 1000, 0.5])
def test_truncated_weights_are_named(checkpoint, cut):
    weights = checkpoint / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * cut) if isinstance(cut, float) else cut])
    with pytest.raises(hub.CheckpointLoadError, match=rf": {re.escape(str(weights))} is truncated .*copy the "
                                                      "checkpoint again$"):
        load(checkpoint)


def test_a_broken_chat_template_is_named(checkpoint):
    template = checkpoint / "chat_template.jinja"
    template.write_text("{% for message in messages %}{{ message['content'] }")
    with pytest.raises(hub.CheckpointLoadError, match=rf": {re.escape(str(template))} is not a valid Jinja chat "
                                                      "template"):
        load(checkpoint)


@pytest.mark.parametrize("name, cause", [
    ("tokenizer.json", "has no tokenizer file"),
    ("config.json", "has no config.json"),
    ("model.safetensors", "has no weights file"),
])
def test_a_missing_file_is_named_as_the_cause(checkpoint, name, cause):
    (checkpoint / name).unlink()
    with pytest.raises(hub.CheckpointLoadError) as caught:
        load(checkpoint)
    assert f"Likely cause: {checkpoint} {cause}" in str(caught.value)


def test_a_tokenizer_without_a_pad_token_is_an_error_naming_the_directory(checkpoint, tiny_records, capsys):
    """Before: the first record failed the preflight, blamed on the record ("invalid record #0 ...:
    Asking to pad but the tokenizer does not have a padding token")."""
    settings = checkpoint / "tokenizer_config.json"
    config = json.loads(settings.read_text())
    del config["pad_token"]
    settings.write_text(json.dumps(config))
    records = save(tiny_records, checkpoint.parent)
    argv = ["train", "--model_name_or_path", str(checkpoint), "--train_file", str(records),
            "--output_dir", str(checkpoint.parent / "out"), "--max_steps", "1", "--use_cpu", "true"]
    assert main(argv) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and f"the tokenizer of the model in {checkpoint} has no pad token" in err[0], err
    assert str(settings) in err[0] and "record" not in err[0]


def test_a_processor_missing_its_video_slot_is_one_error_naming_directory_and_cause(checkpoint, monkeypatch):
    """A TypeError from a processor's constructor (SmolVLM without torchvision in transformers 5.25) comes
    out as the directory's load error, with torchvision as its cause when torchvision is not installed."""
    import transformers

    def refuse(*args, **kwargs):
        raise TypeError("SmolVLMProcessor.__init__() missing 1 required positional argument: 'video_processor'")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", refuse)
    with pytest.raises(hub.CheckpointLoadError) as caught:
        load(checkpoint)
    message = str(caught.value)
    assert message.startswith(f"cannot load the processor in {checkpoint} (LlavaProcessor): TypeError: ")
    assert "Likely cause: " in message and ("torchvision" in message or "video" in message)


def test_an_intact_checkpoint_is_checked_once_per_process(checkpoint, monkeypatch):
    calls = []
    monkeypatch.setattr(hub, "_read_json", lambda path: calls.append(path) or json.loads(path.read_text()))
    hub.check_checkpoint_files(checkpoint)
    first = len(calls)
    hub.check_checkpoint_files(checkpoint)
    assert first > 0 and len(calls) == first
    (checkpoint / "config.json").write_text((checkpoint / "config.json").read_text() + " ")  # changed: read again
    hub.check_checkpoint_files(checkpoint)
    assert len(calls) == 2 * first
