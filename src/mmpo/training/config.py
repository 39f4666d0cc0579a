"""Configuration: three dataclasses, one YAML file, command-line overrides.

Each field is documented once, here, in its ``metadata["help"]``; ``transformers.HfArgumentParser``
turns the same dataclasses into the command line, so ``mmpo train --help`` shows this text.
A YAML file sets the values; ``--field value`` arguments after it override them.

Every value is checked before a model is loaded: YAML values against their field's type (``beta: true``
or ``max_steps: 2.5`` is an error naming the key and the file, not 1.0 or 2), and every number in its
documented range by the ``__post_init__`` of its dataclass (NaN and inf are never in range).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainingArguments

#: Weight dtypes ``ModelArguments.dtype`` accepts, and the short names mapped onto them.
DTYPES = ("auto", "float32", "bfloat16", "float16")
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def check_number(name: str, value: Any, *, integer: bool = False, low: float | None = None,
                 high: float | None = None, low_open: bool = False, high_open: bool = False,
                 optional: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a finite number in the range.

    Args:
        name: the field, for the message.
        value: the value; ``bool`` is never a number here (``True`` is not 1.0).
        integer: the value must be an ``int``.
        low / high: bounds (``None``: unbounded); ``low_open`` / ``high_open`` exclude them.
        optional: ``None`` is allowed.
    """
    if value is None and optional:
        return
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    wanted = f"{'an integer' if integer else 'a finite number'}{' ' + ' and '.join(parts) if parts else ''}"
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ValueError(f"{name} must be {wanted}, not {value!r} ({type(value).__name__})")
    ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(f"{name} must be {wanted}, not {value!r}")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be {', '.join(choices[:-1])} or {choices[-1]}, not {value!r}")


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


@dataclass
class DataArguments:
    """Where the preference records come from and what to do with bad ones."""

    train_file: str = field(default=None, metadata={"help": "Preference records: a JSONL file (mmpo, TRL vision "
                                                     "or RLAIF-V fields) or a saved datasets directory."})
    eval_file: str | None = field(default=None, metadata={"help": "Optional held-out preference records."})
    image_root: str | None = field(default=None, metadata={"help": "Directory relative image paths are resolved "
                                                           "against (default: the records file's directory)."})
    on_bad_record: str = field(default="raise", metadata={
        "help": "'raise': stop at the first invalid record, naming its index and field (default: never "
                "train silently on less data); 'skip': skip invalid records, report each and the count."})

    def __post_init__(self):
        check_choice("on_bad_record", self.on_bad_record, ("raise", "skip"))


@dataclass
class PreferenceConfig(TrainingArguments):
    """``transformers.TrainingArguments`` plus the preference-optimisation fields.

    Defaults differ from ``TrainingArguments`` where a preference run needs it: the collator
    needs every column (``remove_unused_columns=False``) and metrics are logged every 10 steps.
    """

    beta: float = field(default=0.1, metadata={"help": "DPO temperature beta: reward = beta * (log pi - log pi_ref)."})
    sft_weight: float = field(default=0.0, metadata={
        "help": "Weight of an extra NLL term on the chosen response (TRL's loss_type=['sigmoid','sft']); "
                "keeps small models from collapsing under DPO. 0 disables it."})
    sft_reduction: str = field(default="token", metadata={
        "help": "How the SFT term reduces the chosen responses' token NLLs: 'token', their mean over every chosen "
                "token of the batch (TRL's sft loss); 'record', the mean over records of each response's mean "
                "token NLL; 'sum', the mean over records of each response's summed NLL (RLAIF-V's trainer, which "
                "subtracts the summed chosen log-prob)."})
    preference_weight: float = field(default=1.0, metadata={
        "help": "Weight of the preference loss (DPO or the method's). 0 with sft_weight > 0 trains on the chosen "
                "responses alone: the SFT-on-chosen control a preference method has to beat."})
    reference: str = field(default="auto", metadata={
        "help": "Reference model: 'copy' (frozen copy of the initial policy), 'adapter' (LoRA policy with "
                "adapters off), 'precomputed' (one pass before training, cached on disk), or 'auto' "
                "(adapter with LoRA, copy otherwise)."})
    reference_model: str | None = field(default=None, metadata={
        "help": "A local checkpoint to use as the reference instead of the initial policy (same architecture and "
                "tokenizer; e.g. the first model of on-policy rounds, `round_reference: initial`). With 'copy' the "
                "frozen reference is loaded from it, with 'precomputed' its log-probs are; not with 'adapter'."})
    shard_reference: bool = field(default=True, metadata={
        "help": "Under FSDP and DeepSpeed ZeRO-3, prepare the frozen-copy reference with the same engine as the "
                "policy (sharded / partitioned). false keeps a whole copy on every process: no parameter gathers "
                "for its forward pass, at the memory of a full model per GPU."})
    reference_cache_dir: str | None = field(default=None, metadata={
        "help": "Where precomputed reference log-probs are cached (default: OUTPUT_DIR/reference_cache)."})
    max_length: int | None = field(default=None, metadata={
        "help": "Token budget per sequence. Responses are truncated to fit; prompts and image tokens never are "
                "(a prompt that does not fit is an error naming the record)."})
    prompt_format: str = field(default="auto", metadata={
        "help": "How prompts are rendered: 'chat' (the processor's chat template), 'plain' (the image placeholder "
                "then the prompt text; the processor adds its own framing, e.g. PaliGemma's prefix), or 'auto' "
                "(chat when the processor has a template, plain otherwise)."})
    freeze_vision_tower: bool = field(default=False, metadata={"help": "Do not train the vision encoder."})
    freeze_projector: bool = field(default=False, metadata={"help": "Do not train the vision-language projector."})
    on_nonfinite: str = field(default="raise", metadata={
        "help": "A training batch whose loss or gradients are NaN/inf: 'raise' stops the run, naming the step, "
                "the records and the value (default); 'skip' drops the batch (no update from it), warns, and "
                "counts it in the logged nonfinite_skipped_batches."})
    preflight: bool = field(default=True, metadata={
        "help": "Before training, encode every record as training will (prompt length within max_length and the "
                "model's positions, method fields, the processor's placeholder tokens), with a progress bar; bad "
                "records are handled by on_bad_record. Off: such records fail mid-run."})

    prefix_sharing: bool = field(default=True, metadata={
        "help": "Run each record's image and prompt once, its chosen and rejected responses after them in one row "
                "(a block attention mask and restarted positions give the same log-probs as one row per "
                "response). Models that cannot (Gemma 3; flash or flex attention) use one row per response "
                "and the run logs why."})

    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep False: the collator needs the records."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})

    def __post_init__(self):
        # Checked before TrainingArguments reads them (it compares, divides and rounds them).
        check_number("beta", self.beta, low=0, low_open=True)
        check_number("sft_weight", self.sft_weight, low=0)
        check_choice("sft_reduction", self.sft_reduction, ("token", "record", "sum"))
        check_number("preference_weight", self.preference_weight, low=0)
        if self.preference_weight == 0 and self.sft_weight == 0:
            raise ValueError("preference_weight and sft_weight are both 0: the loss would be 0 (nothing to train); "
                             "set sft_weight > 0 for the SFT-on-chosen control")
        check_number("max_length", self.max_length, integer=True, low=0, low_open=True, optional=True)
        check_choice("reference", self.reference, ("auto", "copy", "adapter", "precomputed"))
        if self.reference_model is not None and (not isinstance(self.reference_model, str)
                                                 or not self.reference_model.strip()):
            raise ValueError(f"reference_model must be a checkpoint directory, not {self.reference_model!r}")
        check_choice("prompt_format", self.prompt_format, ("auto", "chat", "plain"))
        check_choice("on_nonfinite", self.on_nonfinite, ("raise", "skip"))
        check_number("learning_rate", self.learning_rate, low=0)
        check_number("max_grad_norm", self.max_grad_norm)
        check_number("weight_decay", self.weight_decay, low=0)
        check_number("adam_beta1", self.adam_beta1, low=0, high=1, high_open=True)
        check_number("adam_beta2", self.adam_beta2, low=0, high=1, high_open=True)
        check_number("adam_epsilon", self.adam_epsilon, low=0)
        check_number("warmup_steps", self.warmup_steps, low=0)
        check_number("num_train_epochs", self.num_train_epochs, low=0)
        check_number("max_steps", self.max_steps, integer=True)
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            check_number(name, getattr(self, name), integer=True, low=1)
        check_number("logging_steps", self.logging_steps, low=0, low_open=True)
        check_number("save_steps", self.save_steps, low=0, low_open=True)
        check_number("eval_steps", self.eval_steps, low=0, low_open=True, optional=True)
        check_number("seed", self.seed, integer=True)
        self.resume_from_checkpoint = resume_value(self.resume_from_checkpoint)
        super().__post_init__()


@dataclass
class AspoArguments:
    """ASPO: sentence-level adaptive rewards on the chosen response ("ASPO: Adaptive Sentence-Level
    Preference Optimization for Fine-Grained Multimodal Reasoning", arXiv:2505.19100, section 3.2)."""

    aspo: bool = field(default=False, metadata={"help": "Weight each chosen sentence's reward by CLIP similarity "
                                                "and the policy's own perplexity."})
    aspo_alpha: float = field(default=0.5, metadata={
        "help": "w_i = alpha * S'_i + (1 - alpha) * PPL'_i. 1 = similarity only, 0 = perplexity only (Table 5). "
                "alpha > 0 needs chosen_sentence_scores in the records (mmpo score-sentences)."})
    aspo_normalizer: str = field(default="reward", metadata={
        "help": "Stop-gradient scale of the re-weighted sum: 'reward' = sg(R_c / R*_c) (paper, Eq. 12), "
                "'count' = sg(n / sum(1 + w_i)) (ablation)."})
    aspo_granularity: str = field(default="sentence", metadata={
        "help": "Unit that gets a weight: 'sentence' (paper), 'token' (each token, with its sentence's "
                "similarity), or 'response' (one unit: the weight is 0, so this is exactly DPO). Table 6."})

    def __post_init__(self):
        check_choice("aspo_normalizer", self.aspo_normalizer, ("reward", "count"))
        check_choice("aspo_granularity", self.aspo_granularity, ("sentence", "token", "response"))
        check_number("aspo_alpha", self.aspo_alpha, low=0, high=1)

    @property
    def enabled(self) -> bool:
        return self.aspo


@dataclass
class DamaArguments:
    """DAMA: data- and model-aware per-record beta ("DAMA: Data- and Model-aware Alignment of Multi-modal
    LLMs", arXiv:2502.01943). D2PO = data only, MDPO = model only.

    ``dama_recipe`` sets every choice of the model-aware step at once: ``authors`` (the released code,
    which produced the paper's tables) or ``paper`` (Eqs. 9-17 as printed). Each ``dama_*`` choice
    left unset (null) takes the recipe's value; set one to change only that (ablations).
    :meth:`recipe` gives the resolved choices."""

    dama_data: bool = field(default=False, metadata={
        "help": "Scale beta per record by the offline alpha_D stored in the records (mmpo score-sentences)."})
    dama_model: bool = field(default=False, metadata={
        "help": "Scale beta per batch by alpha_M from the filtered reward gaps and their running mean."})
    dama_recipe: str = field(default="authors", metadata={
        "help": "'authors': the authors' released algorithm (raw gaps, weighted random draw of int(0.8 N) centred "
                "at an EMA of the mean gap of all records, alpha_M = mean kept sigmoid(gap) / sigmoid(EMA), EMA "
                "updated after each batch's loss, loss averaged per process, beta >= 1e-3). 'paper': Eqs. 9-17 as "
                "printed (beta * gap / R_bar, the K = round(0.75 N) gaps closest to the batch mean, "
                "alpha_M = sigmoid(R_B) / sigmoid(R_bar), R_bar an EMA of R_B per optimizer step, one global mean)."})
    dama_keep: float | None = field(default=None, metadata={
        "help": "Fraction K/N of the global batch the filter keeps (authors 0.8, paper 12/16 = 0.75)."})
    dama_keep_rounding: str | None = field(default=None, metadata={
        "help": "K = int(keep * N) ('floor', authors) or round(keep * N) ('round', paper); at least 1."})
    dama_filter: str | None = field(default=None, metadata={
        "help": "'sample': the authors' weighted random draw centred at the running mean; 'topk': the K gaps "
                "closest to the batch mean (paper); 'bottom'/'top' drop the lowest/highest; 'none' keeps all."})
    dama_gap_uses_beta: bool | None = field(default=None, metadata={
        "help": "Reward gap = beta * (ratio_w - ratio_l) (paper, Eq. 9); false: the raw log-ratio margin (authors)."})
    dama_alpha_model: str | None = field(default=None, metadata={
        "help": "'authors': alpha_M = mean over kept of sigmoid(gap) / sigmoid(running mean); 'paper': "
                "sigmoid(mean over kept of gap / R_bar) / sigmoid(R_bar) (Eqs. 10-13)."})
    dama_running_mean: str | None = field(default=None, metadata={
        "help": "What the running mean averages: 'all_gaps', the mean gap of all N records (authors), or "
                "'kept_normalised', the paper's R_B (Eq. 15)."})
    dama_update: str | None = field(default=None, metadata={
        "help": "When the running mean moves: after each batch's loss ('loss', authors) or after each optimizer "
                "step with the mean of its micro-batches ('step')."})
    dama_loss_mean: str | None = field(default=None, metadata={
        "help": "'process': the kept losses averaged on each process, then over processes (authors); 'global': "
                "one mean over the kept records of the global batch."})
    dama_beta_min: float | None = field(default=None, metadata={
        "help": "Lower clamp of the per-record beta (authors 1e-3; paper 0 = none)."})
    dama_gamma: float = field(default=0.9, metadata={"help": "Momentum of the running mean (both sources: 0.9)."})
    dama_combine: str = field(default="product", metadata={
        "help": "'product': alpha = alpha_D * alpha_M (paper); 'sum': (1 - rho) alpha_M + rho alpha_D (ablation)."})
    dama_rho: float = field(default=0.5, metadata={"help": "Weight of alpha_D when dama_combine = sum."})
    dama_normalizer: str | None = field(default=None, metadata={
        "help": "dama_alpha_model paper only: how the gaps are normalised by R_bar (docs/methods.md, 'DAMA "
                "numerics'). 'paper' (the recipe's): the unguarded R_i / R_bar, alpha_M up to e^88 (diverges on "
                "falling gaps). 'bounded': divide by R_bar held at least dama_scale_floor x the batch's mean |R_i| "
                "away from 0, alpha_M clamped to [1 / dama_alpha_model_max, dama_alpha_model_max]."})
    dama_scale_floor: float = field(default=0.1, metadata={
        "help": "'bounded' only: the divisor's floor tau relative to the batch's mean |R_i|; bounds "
                "|R_B| and |R_bar| by (N / K) / tau."})
    dama_alpha_model_max: float = field(default=10.0, metadata={
        "help": "'bounded' only: alpha_M is clamped to [1 / this, this]; >= 1 (1 = alpha_M always 1)."})

    def __post_init__(self):
        from ..losses import dama

        check_choice("dama_recipe", self.dama_recipe, tuple(dama.RECIPES))
        optional_choices = {  # field -> the Literal of its DamaRecipe attribute
            "dama_keep_rounding": dama.KeepRounding, "dama_filter": dama.FilterMode,
            "dama_alpha_model": dama.AlphaModelForm, "dama_running_mean": dama.RunningMean,
            "dama_update": dama.UpdateTime, "dama_loss_mean": dama.LossMean, "dama_normalizer": dama.Normalizer}
        for name, kind in optional_choices.items():
            if getattr(self, name) is not None:
                check_choice(name, getattr(self, name), typing.get_args(kind))
        if self.dama_gap_uses_beta is not None and not isinstance(self.dama_gap_uses_beta, bool):
            raise ValueError(f"dama_gap_uses_beta must be true or false, not {self.dama_gap_uses_beta!r}")
        check_choice("dama_combine", self.dama_combine, typing.get_args(dama.CombineMode))
        check_number("dama_keep", self.dama_keep, low=0, high=1, low_open=True, optional=True)
        check_number("dama_beta_min", self.dama_beta_min, low=0, optional=True)
        check_number("dama_gamma", self.dama_gamma, low=0, high=1, high_open=True)
        check_number("dama_rho", self.dama_rho, low=0, high=1)
        check_number("dama_scale_floor", self.dama_scale_floor, low=0, low_open=True)
        check_number("dama_alpha_model_max", self.dama_alpha_model_max, low=1)

    def recipe(self):
        """The resolved :class:`~mmpo.losses.dama.DamaRecipe`: ``dama_recipe`` with every set field applied."""
        from ..losses.dama import dama_recipe

        return dama_recipe(self.dama_recipe, keep=self.dama_keep, keep_rounding=self.dama_keep_rounding,
                           filter=self.dama_filter, gap_uses_beta=self.dama_gap_uses_beta,
                           alpha_model=self.dama_alpha_model, running_mean=self.dama_running_mean,
                           update=self.dama_update, loss_mean=self.dama_loss_mean, beta_min=self.dama_beta_min,
                           normalizer=self.dama_normalizer, floor=self.dama_scale_floor,
                           alpha_max=self.dama_alpha_model_max, gamma=self.dama_gamma, combine=self.dama_combine,
                           rho=self.dama_rho)

    @property
    def enabled(self) -> bool:
        return self.dama_data or self.dama_model


@dataclass
class AdavipArguments:
    """AdaViP: vision-rejected images and the adaptive Plackett-Luce loss ("AdaViP: Aligning Multi-modal
    LLMs via Adaptive Vision-enhanced Preference Optimization", arXiv:2504.15619, section 3.3, Eq. 11)."""

    adavip: bool = field(default=False, metadata={
        "help": "Add a third sample per record, the chosen text on its rejected_image; records without one "
                "are trained with plain DPO."})
    adavip_loss: str = field(default="plackett_luce", metadata={
        "help": "'plackett_luce' (paper, Eq. 11) or 'plus_vision' (ablation: sum of two equal-weight DPO losses)."})

    def __post_init__(self):
        check_choice("adavip_loss", self.adavip_loss, ("plackett_luce", "plus_vision"))

    @property
    def enabled(self) -> bool:
        return self.adavip


@dataclass
class Methods:
    """The method switches, each with its own sub-config; all off is plain DPO.

    ``methods.aspo.enabled``, ``methods.dama.enabled`` (data- or model-aware) and
    ``methods.adavip.enabled`` say which are on; the YAML keys stay the flat field names
    (``aspo: true``, ``dama_model: true``, ``adavip_loss: plus_vision``).
    """

    aspo: AspoArguments = field(default_factory=AspoArguments)
    dama: DamaArguments = field(default_factory=DamaArguments)
    adavip: AdavipArguments = field(default_factory=AdavipArguments)


CONFIG_CLASSES = (ModelArguments, DataArguments, PreferenceConfig, AspoArguments, DamaArguments, AdavipArguments)


def resume_value(value: Any) -> str | bool | None:
    """``resume_from_checkpoint`` as ``Trainer.train`` reads it: ``True`` (the newest complete
    checkpoint in ``output_dir``), a checkpoint path, or ``None``.

    On the command line every value is a string, so ``--resume_from_checkpoint True`` would be a
    path named "True": ``true``/``True`` mean ``True``, ``false``/``False``/``""`` mean ``None``.
    """
    if isinstance(value, str) and value.strip().lower() in ("true", "false", ""):
        value = value.strip().lower() == "true"
    if value is False:
        return None
    if value is not None and value is not True and not isinstance(value, str):
        raise ValueError(f"resume_from_checkpoint must be a checkpoint path, true or false, not {value!r}")
    return value


#: A number PyYAML reads as a string: YAML 1.1 floats need a dot and a signed exponent, so
#: ``1e-5`` and ``1.0e5`` arrive as text. Only such literals are read as numbers; "nan", "inf",
#: "a lot" and quoted plain numbers stay errors.
_EXPONENT_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")
_SCALAR_TYPES = (bool, int, float, str)
#: Fields whose YAML value may differ from their type hint (``resume_from_checkpoint: true``).
_CHECKED_BY_POST_INIT = frozenset({"resume_from_checkpoint"})


def _field_types(classes: tuple) -> dict[str, tuple[Any, Any]]:
    """Field name -> (type hint, default) over the config dataclasses."""
    found = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init:
                found[f.name] = (hints[f.name], f.default)
    return found


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{value!r} ({type(value).__name__})"


def check_yaml_value(source: str, key: str, value: Any, hint: Any, default: Any) -> Any:
    """``value`` from YAML checked against its field's type ``hint``, returned (maybe converted).

    ``HfArgumentParser`` hands YAML values to the dataclass as they are, so without this check
    ``beta: true`` trains with beta = 1.0 and ``max_steps: 2.5`` runs 2.5 steps. Fields whose type
    mixes kinds (``dict | str``, ``str | bool``, lists) are left to their own ``__post_init__``.

    Raises:
        ValueError: naming ``source`` (the YAML file) and ``key``.
    """
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    members = typing.get_args(hint) if is_union else (hint,)
    allow_none = type(None) in members or default is None
    members = {str if isinstance(m, type) and issubclass(m, enum.Enum) else m  # Enum | str: a name
               for m in members if m is not type(None)}
    if len(members) != 1 or not members <= set(_SCALAR_TYPES):
        return value
    (expected,) = members
    if value is None:
        if allow_none:
            return value
        raise ValueError(f"{source}: {key} must be set (it is null)")

    def error(wanted: str, hint_text: str = "") -> ValueError:
        return ValueError(f"{source}: {key} must be {wanted}, not {_describe(value)}{hint_text}")

    if expected is bool:
        if isinstance(value, bool):
            return value
        raise error("true or false")
    if expected is str:
        if isinstance(value, str):
            return value
        raise error("a string", " (YAML reads unquoted yes/no/on/off as booleans and digits as numbers: "
                                "quote the value)" if isinstance(value, (bool, int, float)) else "")
    if expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise error("an integer")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
        return float(value)
    raise error("a number")


def parse_config(yaml_path: str | Path | None = None, overrides: list[str] | None = None,
                 classes: tuple = CONFIG_CLASSES) -> tuple:
    """Build the config dataclasses from a YAML file and ``--field value`` overrides.

    Unknown YAML keys are an error that names them (a typo must not be silently ignored); so is a
    YAML value of the wrong type (:func:`check_yaml_value`). An out-of-range value is a
    ``ValueError`` naming the field (and the YAML file, when there is one).
    """
    parser = HfArgumentParser(classes)
    values = {}
    if yaml_path is not None:
        values = yaml.safe_load(Path(yaml_path).read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{yaml_path}: a config is a mapping of field: value, not a {type(values).__name__}")
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - known, key=str)
        if unknown:
            raise ValueError(f"{yaml_path}: unknown config keys {unknown}")
        fields = _field_types(classes)
        values = {key: check_yaml_value(str(yaml_path), key, value, *fields[key])
                  if key in fields and key not in _CHECKED_BY_POST_INIT else value for key, value in values.items()}
        parser.set_defaults(**values)
        # A required field given in YAML is no longer required on the command line.
        for action in parser._actions:
            if action.dest in values:
                action.required = False
    try:
        return parser.parse_args_into_dataclasses(args=list(overrides or []), look_for_args_file=False)
    except ValueError as error:
        if yaml_path is None:
            raise
        raise ValueError(f"{yaml_path}: {error}") from error


def parse_command_line(argv: list[str], doc: str, classes: tuple = CONFIG_CLASSES) -> tuple | None:
    """``CONFIG.yaml [--field value ...]`` (or overrides alone) parsed by :func:`parse_config`;
    ``None`` after printing ``doc`` and every field's help when ``argv`` is empty or asks for help."""
    if not argv or argv[0] in ("-h", "--help"):
        print(doc)
        HfArgumentParser(classes).print_help()
        return None
    path, overrides = (argv[0], argv[1:]) if not argv[0].startswith("--") else (None, argv)
    return parse_config(path, overrides, classes=classes)
