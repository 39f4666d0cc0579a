"""Load a policy and its processor from a local checkpoint; freeze parts; add LoRA adapters."""

from __future__ import annotations

import torch

from .config import ModelArguments, PreferenceConfig

#: Parameter-name fragments of the vision encoder and of the vision-language projector in the
#: VLM families transformers ships (LLaVA / LLaVA-NeXT, Qwen2-VL / Qwen2.5-VL, Idefics3 / SmolVLM).
VISION_TOWER_KEYS = ("vision_tower.", "visual.", "vision_model.")
PROJECTOR_KEYS = ("multi_modal_projector.", "visual.merger.", "connector.")


def load_policy(model_args: ModelArguments):
    """``(model, processor)`` from ``model_args.model_name_or_path`` (a local directory)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    dtype = model_args.dtype if model_args.dtype == "auto" else getattr(torch, model_args.dtype)
    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path)
    model = AutoModelForImageTextToText.from_pretrained(model_args.model_name_or_path, dtype=dtype)
    return model, processor


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

        lora = LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                          lora_dropout=model_args.lora_dropout, target_modules=model_args.lora_target_modules)
        model = get_peft_model(model, lora)
    return model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
