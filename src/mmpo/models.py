"""Load a VLM and its processor from a local checkpoint, to train, evaluate, judge or generate with.

The one loader every layer shares (training, data construction, evaluation, the commands), so it sits
below them all: :class:`ModelArguments` says which checkpoint and how, :func:`load_policy` loads it.
Preparing a loaded model for training (freezing, LoRA) is :mod:`mmpo.training.policy`.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from .checks import check_choice, check_number
from .hub import check_pad_token, load_model, loading, pretrained_kwargs

logger = logging.getLogger(__name__)

#: Weight dtypes ``ModelArguments.dtype`` accepts, and the short names mapped onto them.
DTYPES = ("auto", "float32", "bfloat16", "float16")
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}

#: ``config.model_type`` of every VLM family mmpo's tests train with exact log-probs
#: (``tests/integration/test_families.py``; the README's table of supported families).
TESTED_MODEL_TYPES = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3",
                      "paligemma", "idefics3", "smolvlm", "mllama")


@dataclass
class ModelArguments:
    """Which model to train and how (full tuning or LoRA)."""

    model_name_or_path: str = field(metadata={"help": "Local directory of a transformers VLM checkpoint "
                                              "(e.g. a downloaded llava-hf/llava-1.5-7b-hf) and its processor."})
    dtype: str = field(default="auto", metadata={"help": "Weights dtype: auto, float32, bfloat16 or float16 "
                                                 "(fp32, bf16 and fp16 are read as those)."})
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of all weights; "
                                                    "the reference model is then the policy with adapters off."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (ASPO's paper: 1024 for LLaVA-1.5)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha (ASPO's paper: 2048)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: str = field(
        default="auto",
        metadata={"help": "peft target_modules: 'auto' (every linear layer of the model's language model, found "
                          "through get_decoder(): works for every tested family), a regex over module names, or "
                          "'all-linear'."})
    allow_download: bool = field(default=False, metadata={
        "help": "Let model_name_or_path be a Hugging Face Hub id that is downloaded (default: a local checkpoint "
                "directory only, and a path that does not exist is an error naming it; MMPO_ALLOW_DOWNLOAD=1 "
                "does the same)."})
    allow_missing_weights: bool = field(default=False, metadata={
        "help": "Accept a checkpoint whose weights lack tensors the model of its config.json has (they are "
                "randomly initialised, and named in a warning), e.g. a new head on purpose. Default: such a "
                "checkpoint is an error naming the tensors (a config.json with a layer more than the weights "
                "would otherwise train a random layer)."})
    allow_unexpected_weights: bool = field(default=False, metadata={
        "help": "Accept a checkpoint whose weights hold tensors the model of its config.json has no place for "
                "(they are dropped, and named in a warning), e.g. a head removed on purpose. Default: an error "
                "naming the tensors."})

    def __post_init__(self):
        if not isinstance(self.model_name_or_path, str) or not self.model_name_or_path.strip():
            raise ValueError(f"model_name_or_path must be a checkpoint directory, not {self.model_name_or_path!r}")
        self.dtype = DTYPE_ALIASES.get(self.dtype, self.dtype)
        check_choice("dtype", self.dtype, DTYPES)
        check_number("lora_r", self.lora_r, integer=True, low=0, low_open=True)
        check_number("lora_alpha", self.lora_alpha, integer=True, low=0, low_open=True)
        check_number("lora_dropout", self.lora_dropout, low=0, high=1, high_open=True)
        if not isinstance(self.lora_target_modules, str) or not self.lora_target_modules.strip():
            raise ValueError(f"lora_target_modules must be 'auto', 'all-linear' or a regex, "
                             f"not {self.lora_target_modules!r}")


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
        mmpo.hub.CheckpointLoadError: ``from_pretrained`` failed, or a file of the checkpoint is
            damaged, or its weights lack tensors of the model or hold others
            (``model_args.allow_missing_weights`` / ``allow_unexpected_weights`` allow them), or its
            tokenizer has no pad token; the message names the directory (or file), the class its
            files declare and the likely cause (e.g. no torchvision for a video slot).
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, ProcessorMixin

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
    check_pad_token(path, processor, "model" if what is None else what)
    with loading(path, "model"):
        # before from_pretrained, so that under ZeRO-3 no model class is first created inside zero.Init
        config = AutoConfig.from_pretrained(path, **source)
        import_model_modules(config)
    model = load_model(AutoModelForImageTextToText, path, "model", config=config, dtype=dtype, **source,
                       allow_missing=model_args.allow_missing_weights,
                       allow_unexpected=model_args.allow_unexpected_weights,
                       options=("allow_missing_weights", "allow_unexpected_weights"))
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


def import_model_modules(config: Any) -> list[str]:
    """Import the ``transformers`` modeling module of ``config`` and of every config nested in it
    (text model, vision tower, ...), before anything is built from it. Returns the modules' names.

    Why, under ZeRO-3: transformers imports a family's modeling module lazily, when the first model
    of that family is built, which under ZeRO-3 is inside DeepSpeed's ``zero.Init``. While it is
    active, ``zero.Init`` wraps the ``__init__`` of every ``nn.Module`` subclass defined, and on exit
    puts back the ``__init__`` it saw when the class was created. A class decorated by kernels'
    ``use_kernelized_func`` (the attention classes, since transformers depends on ``kernels``) gets
    its instance set-up ``__init__`` from the decorator only *after* creation, so the exit throws
    that away: every later instance lacks ``_kernel_funcs``, which the decorated forward reads
    (``AttributeError: 'LlamaAttention' object has no attribute '_kernel_funcs'``). The first later
    instance is the frozen reference ZeRO-3 loads again. Imported first, outside ``zero.Init``,
    the classes are complete before DeepSpeed ever wraps them.
    """
    from transformers import PretrainedConfig

    names, seen, stack = [], set(), [config]
    while stack:
        cfg = stack.pop()
        if id(cfg) in seen:
            continue
        seen.add(id(cfg))
        stack.extend(v for v in vars(cfg).values() if isinstance(v, PretrainedConfig))
        module = type(cfg).__module__
        if module.startswith("transformers.models.") and ".configuration_" in module:
            name = module.replace(".configuration_", ".modeling_", 1)
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as error:
                if error.name != name:  # a missing dependency of an existing module: from_pretrained says it
                    raise
                continue
            names.append(name)
    return sorted(set(names))


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (whole sizes also where ZeRO-3 partitioned them at load)."""
    def size(p: torch.nn.Parameter) -> int:
        return getattr(p, "ds_numel", p.numel())

    total = sum(size(p) for p in model.parameters())
    trainable = sum(size(p) for p in model.parameters() if p.requires_grad)
    return trainable, total
