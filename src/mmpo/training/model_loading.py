"""Load a VLM and its processor from a local checkpoint (to train, evaluate or generate with); freeze parts; add LoRA."""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any

import torch

from ..hub import loading, pretrained_kwargs
from .config import ModelArguments, PreferenceConfig

logger = logging.getLogger(__name__)

#: ``config.model_type`` of every VLM family mmpo's tests train with exact log-probs
#: (``tests/integration/test_families.py``; the README's table of supported families).
TESTED_MODEL_TYPES = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3",
                      "paligemma", "idefics3", "smolvlm", "mllama")

#: Parameter-name fragments of the vision encoder and of the vision-language projector in the
#: VLM families transformers ships (LLaVA / LLaVA-NeXT, Qwen2-VL / Qwen2.5-VL, Idefics3 / SmolVLM).
VISION_TOWER_KEYS = ("vision_tower.", "visual.", "vision_model.")
PROJECTOR_KEYS = ("multi_modal_projector.", "visual.merger.", "connector.")


def load_policy(model_args: ModelArguments, *, device: str | None = None,
                what: str | None = None) -> tuple[Any, Any]:
    """``(model, processor)`` from ``model_args.model_name_or_path``: ``AutoModelForImageTextToText``
    in ``model_args.dtype`` and ``AutoProcessor``; the one loader of a VLM checkpoint for training
    (``mmpo train``, the demo), evaluation and generation (``mmpo evaluate``, ``mmpo noisy-pairs``).

    A local directory, loaded with ``local_files_only=True``; a Hub id only with
    ``model_args.allow_download`` (or ``MMPO_ALLOW_DOWNLOAD=1``). The model comes in eval mode
    (``from_pretrained``'s; ``Trainer`` switches to training itself).

    Args:
        model_args: the checkpoint, its dtype and whether it may be downloaded.
        device: move the model there (``"auto"``: CUDA when available, else the CPU); ``None``
            leaves it where ``from_pretrained`` put it (the CPU; ``Trainer`` places it).
        what: how the path was given, for the error message (e.g. ``"model"`` for the ``--model``
            flag); default the config's ``model_name_or_path`` (see :func:`model_source`).

    Raises:
        FileNotFoundError: the path is not a directory and downloads are not allowed, before
            anything is loaded (see :func:`model_source`).
        ValueError: ``AutoProcessor`` built no multimodal processor.
        mmpo.hub.CheckpointLoadError: ``from_pretrained`` failed; the message names the directory,
            the class its files declare and the likely cause (e.g. no torchvision for a video slot).
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, ProcessorMixin

    from .distributed import import_model_modules

    path = model_args.model_name_or_path
    source = model_source(model_args, what)
    dtype = model_args.dtype if model_args.dtype == "auto" else getattr(torch, model_args.dtype)
    with loading(path, "processor"):
        processor = AutoProcessor.from_pretrained(path, **source)
    if not isinstance(processor, ProcessorMixin):
        # AutoProcessor falls back to the bare tokenizer when a processor part cannot be built, e.g. the
        # video processor of Qwen-VL, SmolVLM and LLaVA-OneVision without torchvision installed.
        raise ValueError(f"{path}: AutoProcessor returned a {type(processor).__name__}, not a multimodal processor; "
                         "if the checkpoint's processor has a video slot (Qwen2/2.5/3-VL, SmolVLM, LLaVA-OneVision) "
                         "install torchvision next to torch")
    with loading(path, "model"):
        # before from_pretrained, so that under ZeRO-3 no model class is first created inside zero.Init
        config = AutoConfig.from_pretrained(path, **source)
        import_model_modules(config)
        model = AutoModelForImageTextToText.from_pretrained(path, config=config, dtype=dtype, **source)
    warn_if_untested(model)
    if device is not None:
        model.to(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    return model, processor


def model_source(model_args: ModelArguments, what: str | None = None) -> dict:
    """The ``from_pretrained`` keyword arguments for the policy, after checking its path exists.

    ``allow_download=False`` defers to ``MMPO_ALLOW_DOWNLOAD`` (unset: local directories only).
    A missing path is a ``FileNotFoundError`` naming it as ``what`` (default: the config field
    ``model_name_or_path``, and then the message also points to ``allow_download: true``).
    """
    try:
        return pretrained_kwargs(model_args.model_name_or_path, what or "model (model_name_or_path)",
                                 allow_download=True if model_args.allow_download else None)
    except FileNotFoundError as error:
        if what is not None:
            raise
        raise FileNotFoundError(f"{error}, or allow_download: true in the config") from None


def warn_if_untested(model: torch.nn.Module) -> None:
    """Warn when the model's family is not one mmpo's tests train (it may still work)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in TESTED_MODEL_TYPES:
        warnings.warn(f"model_type {model_type!r} is not among the VLM families mmpo is tested on "
                      f"({', '.join(TESTED_MODEL_TYPES)}); check that the log-probs are right before trusting a "
                      "run (e.g. rewards must be exactly 0 at step 0 with policy == reference)", stacklevel=2)


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


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (whole sizes also where ZeRO-3 partitioned them at load)."""
    def size(p: torch.nn.Parameter) -> int:
        return getattr(p, "ds_numel", p.numel())

    total = sum(size(p) for p in model.parameters())
    trainable = sum(size(p) for p in model.parameters() if p.requires_grad)
    return trainable, total
