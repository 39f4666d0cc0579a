"""Prepare a loaded policy for training: freeze parts, add LoRA (loading itself is :mod:`mmpo.models`)."""

from __future__ import annotations

import logging
import re

import torch

from ..models import ModelArguments
from .config import PreferenceConfig

logger = logging.getLogger(__name__)


#: Parameter-name fragments of the vision encoder and of the vision-language projector in the
#: VLM families transformers ships (LLaVA / LLaVA-NeXT, Qwen2-VL / Qwen2.5-VL, Idefics3 / SmolVLM).
VISION_TOWER_KEYS = ("vision_tower.", "visual.", "vision_model.")
PROJECTOR_KEYS = ("multi_modal_projector.", "visual.merger.", "connector.")



def language_model_lora_targets(model: torch.nn.Module) -> str:
    """A peft ``target_modules`` regex for every linear layer of the model's language model.

    The text decoder is the module ``model.get_decoder()`` returns (``model.language_model`` in
    LLaVA, Qwen-VL, Gemma 3, PaliGemma and Mllama, ``model.text_model`` in Idefics3 / SmolVLM); the
    regex names its qualified path and the names of its ``nn.Linear`` leaves, so the vision tower,
    the projector and the LM head are left alone.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    prefix = next((name for name, module in model.named_modules() if module is decoder), None) if decoder else None
    if not prefix:
        raise ValueError(f"{type(model).__name__}: cannot find the language model (get_decoder() names no "
                         "sub-module); set lora_target_modules to a regex or 'all-linear'")
    leaves = sorted({name.rsplit(".", 1)[-1] for name, module in decoder.named_modules()
                     if isinstance(module, torch.nn.Linear)})
    if not leaves:
        raise ValueError(f"{type(model).__name__}: the language model {prefix!r} has no linear layers for LoRA; "
                         "set lora_target_modules")
    return rf"{re.escape(prefix)}\..*\.({'|'.join(map(re.escape, leaves))})"


def freeze(model: torch.nn.Module, *, vision_tower: bool, projector: bool) -> int:
    """Turn off gradients of the vision tower and/or projector; returns how many tensors were frozen.

    Raises ValueError when a part was asked for and no parameter matched (an unknown architecture
    must not silently train what the user meant to freeze).
    """
    frozen = 0
    for wanted, keys, exclude, what in (
        (vision_tower, VISION_TOWER_KEYS, PROJECTOR_KEYS, "vision tower"),
        (projector, PROJECTOR_KEYS, (), "projector"),
    ):
        if not wanted:
            continue
        hits = [p for n, p in model.named_parameters()
                if any(k in n for k in keys) and not any(k in n for k in exclude)]
        if not hits:
            raise ValueError(f"freeze_{what.replace(' ', '_')}: no parameter name contains any of {keys}; "
                             "this architecture is not known to mmpo")
        for p in hits:
            p.requires_grad_(False)
        frozen += len(hits)
    return frozen


def prepare_policy(model: torch.nn.Module, model_args: ModelArguments, args: PreferenceConfig) -> torch.nn.Module:
    """Apply freezing and (optionally) LoRA as the config says."""
    freeze(model, vision_tower=args.freeze_vision_tower, projector=args.freeze_projector)
    if model_args.use_lora:
        from peft import LoraConfig, get_peft_model

        targets = model_args.lora_target_modules
        if targets == "auto":
            targets = language_model_lora_targets(model)
            logger.info("LoRA target_modules: %s", targets)
        lora = LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                          lora_dropout=model_args.lora_dropout, target_modules=targets)
        model = get_peft_model(model, lora)
    return model


