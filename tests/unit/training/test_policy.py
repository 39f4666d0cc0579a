"""Loading a local checkpoint: families round-trip, untested families warn, a missing processor is named."""

from __future__ import annotations

import warnings

import pytest

from mmpo.models import TESTED_MODEL_TYPES, load_policy
from mmpo.testing.families import build_family
from mmpo.training.config import ModelArguments
from mmpo.training.policy import language_model_lora_targets


def saved(name, tmp_path):
    model, processor = build_family(name)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    return ModelArguments(model_name_or_path=str(tmp_path))


@pytest.mark.parametrize("name", ["gemma3", "idefics3"])
def test_a_tested_family_loads_without_warning(name, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model, processor = load_policy(saved(name, tmp_path))
    assert model.config.model_type in TESTED_MODEL_TYPES
    assert type(processor).__name__.endswith("Processor")


def test_an_untested_family_warns(tmp_path):
    args = saved("llava", tmp_path)
    config = (tmp_path / "config.json").read_text().replace('"model_type": "llava"', '"model_type": "vipllava"')
    (tmp_path / "config.json").write_text(config)
    args.allow_missing_weights = True  # vipllava's projector has layer norms llava's lacks
    with pytest.warns(UserWarning, match="'vipllava' is not among the VLM families"):
        load_policy(args)


def test_a_processor_that_falls_back_to_its_tokenizer_is_an_error(tmp_path):
    """transformers' AutoProcessor returns the bare tokenizer when it cannot build the processor
    (here: the tiny Qwen2-VL's processor class has no video slot, as without torchvision)."""
    with pytest.raises(ValueError, match="not a multimodal processor.*torchvision"):
        load_policy(saved("qwen2_vl", tmp_path))


def test_lora_targets_are_the_language_model_linears():
    model, _ = build_family("smolvlm")
    assert language_model_lora_targets(model).startswith(r"model\.text_model\.")
