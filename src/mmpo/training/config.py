"""Configuration: three dataclasses, one YAML file, command-line overrides.

Each field is documented once, here, in its ``metadata["help"]``; ``transformers.HfArgumentParser``
turns the same dataclasses into the command line, so ``mmpo train --help`` shows this text.
A YAML file sets the values; ``--field value`` arguments after it override them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser, TrainingArguments


@dataclass
class ModelArguments:
    """Which model to train and how (full tuning or LoRA)."""

    model_name_or_path: str = field(metadata={"help": "Local directory of a transformers VLM checkpoint "
                                              "(e.g. a downloaded llava-hf/llava-1.5-7b-hf) and its processor."})
    dtype: str = field(default="auto", metadata={"help": "Weights dtype: auto, float32, bfloat16 or float16."})
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
    reference: str = field(default="auto", metadata={
        "help": "Reference model: 'copy' (frozen copy of the initial policy), 'adapter' (LoRA policy with "
                "adapters off), 'precomputed' (one pass before training, cached on disk), or 'auto' "
                "(adapter with LoRA, copy otherwise)."})
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

    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep False: the collator needs the records."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})

    def __post_init__(self):
        super().__post_init__()
        if self.reference not in ("auto", "copy", "adapter", "precomputed"):
            raise ValueError(f"reference must be auto, copy, adapter or precomputed, not {self.reference!r}")
        if self.prompt_format not in ("auto", "chat", "plain"):
            raise ValueError(f"prompt_format must be auto, chat or plain, not {self.prompt_format!r}")
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, not {self.beta}")


@dataclass
class AspoArguments:
    """ASPO: sentence-level adaptive rewards on the chosen response (arXiv 2505.19100, section 3.2)."""

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
        if self.aspo_normalizer not in ("reward", "count"):
            raise ValueError(f"aspo_normalizer must be reward or count, not {self.aspo_normalizer!r}")
        if self.aspo_granularity not in ("sentence", "token", "response"):
            raise ValueError(f"aspo_granularity must be sentence, token or response, not {self.aspo_granularity!r}")
        if not 0.0 <= self.aspo_alpha <= 1.0:
            raise ValueError(f"aspo_alpha must be in [0, 1], not {self.aspo_alpha}")


@dataclass
class DamaArguments:
    """DAMA: data- and model-aware per-record beta (arXiv 2502.01943). D2PO = data only, MDPO = model only."""

    dama_data: bool = field(default=False, metadata={
        "help": "Scale beta per record by the offline alpha_D stored in the records (mmpo score-sentences --dama)."})
    dama_model: bool = field(default=False, metadata={
        "help": "Scale beta per batch by alpha_M from the filtered reward gaps and their running mean R_bar."})
    dama_keep: float = field(default=0.75, metadata={
        "help": "Fraction K/N of the global batch the model-aware filter keeps (paper: 12 of 16)."})
    dama_filter: str = field(default="topk", metadata={
        "help": "'topk' keeps the K gaps closest to the batch mean (paper); 'bottom'/'top' drop the lowest/highest; "
                "'none' keeps all; 'sample' is the authors' code's weighted random draw."})
    dama_gamma: float = field(default=0.9, metadata={"help": "Momentum of the running mean R_bar."})
    dama_gap_uses_beta: bool = field(default=True, metadata={
        "help": "Reward gap R_i = beta * (ratio_w - ratio_l) (paper); False uses the raw log-ratio margin "
                "(the authors' code)."})
    dama_combine: str = field(default="product", metadata={
        "help": "'product': alpha = alpha_D * alpha_M (paper); 'sum': (1 - rho) alpha_M + rho alpha_D (ablation)."})
    dama_rho: float = field(default=0.5, metadata={"help": "Weight of alpha_D when dama_combine = sum."})

    def __post_init__(self):
        if self.dama_filter not in ("topk", "bottom", "top", "none", "sample"):
            raise ValueError(f"dama_filter must be topk, bottom, top, none or sample, not {self.dama_filter!r}")
        if self.dama_combine not in ("product", "sum"):
            raise ValueError(f"dama_combine must be product or sum, not {self.dama_combine!r}")
        if not 0.0 < self.dama_keep <= 1.0:
            raise ValueError(f"dama_keep must be in (0, 1], not {self.dama_keep}")


@dataclass
class AdavipArguments:
    """AdaViP: vision-rejected images and the adaptive Plackett-Luce loss (section 3.3, Eq. 11)."""

    adavip: bool = field(default=False, metadata={
        "help": "Add a third sample per record, the chosen text on its rejected_image; records without one "
                "are trained with plain DPO."})
    adavip_loss: str = field(default="plackett_luce", metadata={
        "help": "'plackett_luce' (paper, Eq. 11) or 'plus_vision' (ablation: sum of two equal-weight DPO losses)."})

    def __post_init__(self):
        if self.adavip_loss not in ("plackett_luce", "plus_vision"):
            raise ValueError(f"adavip_loss must be plackett_luce or plus_vision, not {self.adavip_loss!r}")


@dataclass
class Methods:
    """The method switches, each with its own sub-config; all off is plain DPO."""

    aspo: AspoArguments = field(default_factory=AspoArguments)
    dama: DamaArguments = field(default_factory=DamaArguments)
    adavip: AdavipArguments = field(default_factory=AdavipArguments)


CONFIG_CLASSES = (ModelArguments, DataArguments, PreferenceConfig, AspoArguments, DamaArguments, AdavipArguments)


def parse_config(yaml_path: str | Path | None = None, overrides: list[str] | None = None,
                 classes: tuple = CONFIG_CLASSES) -> tuple:
    """Build the config dataclasses from a YAML file and ``--field value`` overrides.

    Unknown YAML keys are an error that names them (a typo must not be silently ignored).
    """
    parser = HfArgumentParser(classes)
    values = {}
    if yaml_path is not None:
        values = yaml.safe_load(Path(yaml_path).read_text()) or {}
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{yaml_path}: unknown config keys {unknown}")
        parser.set_defaults(**values)
        # A required field given in YAML is no longer required on the command line.
        for action in parser._actions:
            if action.dest in values:
                action.required = False
    return parser.parse_args_into_dataclasses(args=list(overrides or []), look_for_args_file=False)
