"""Configuration: one YAML file and command-line overrides, read into a :class:`RunConfig`.

Each field is documented once, in its ``metadata["help"]``: the model's in :class:`mmpo.models.ModelArguments`,
the data's and training's here, each method's in its package (:class:`mmpo.methods.aspo.AspoConfig`, ...).
``transformers.HfArgumentParser`` turns the same dataclasses into the command line, so ``mmpo train --help``
shows this text; a method's fields appear under their flat keys (``dama_keep`` for ``DamaConfig.keep``,
:func:`keyed`). A YAML file sets the values; ``--field value`` arguments after it override them.

Every value is checked before a model is loaded: YAML values against their field's type (``beta: true``
or ``max_steps: 2.5`` is an error naming the key and the file, not 1.0 or 2), and every number in its
documented range by the ``__post_init__`` of its dataclass (NaN and inf are never in range).
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser, TrainingArguments

from ..checks import check_choice, check_number
from ..methods.adavip.config import AdavipConfig
from ..methods.aspo.config import AspoConfig
from ..methods.dama.config import DamaConfig
from ..models import ModelArguments
from ..yamlfile import read_yaml


@dataclass
class DataArguments:
    """Where the preference records come from and what to do with bad ones."""

    train_file: str = field(default=None, metadata={
        "help": "Preference records (mmpo, TRL vision or RLAIF-V fields): a .jsonl, .json, .parquet or .arrow file; "
                "a directory of such shards or one written by save_to_disk; or a glob pattern such as "
                "'data/train-*.parquet' (quote it on the command line)."})
    eval_file: str | None = field(default=None, metadata={"help": "Optional held-out preference records, in any "
                                                          "form train_file takes."})
    image_root: str | None = field(default=None, metadata={"help": "Directory relative image paths are resolved "
                                                           "against (default: the directory of the records file "
                                                           "that holds them)."})
    on_bad_record: str = field(default="raise", metadata={
        "help": "'raise': stop at the first invalid record, naming its index, file, line and field (default: "
                "never train silently on less data); 'skip': skip invalid records, report each and the count (a "
                "file whose every record is invalid is still an error)."})
    train_split: str | None = field(default=None, metadata={
        "help": "The split of train_file to train on when it holds several: a DatasetDict saved with "
                "save_to_disk, a directory of split folders (DIR/train/*.parquet) or of shards named by split "
                "(train-00000-of-00002.parquet). A source of one split needs none."})
    eval_split: str | None = field(default=None, metadata={
        "help": "The split of eval_file to evaluate on, as train_split (eval_file may be the same directory "
                "as train_file, e.g. with train_split: train and eval_split: test)."})
    max_text_chars: int | None = field(default=200_000, metadata={
        "help": "The most characters of a prompt (all its text) or a response that are read; longer texts are "
                "cut before tokenising, each named in a warning. 200,000 characters are more than 32k tokens of "
                "almost any text, beyond max_length, so the cut changes nothing training sees; null: no limit "
                "(a 50 MB response then takes gigabytes to tokenise)."})
    allow_images_outside_root: bool = field(default=False, metadata={
        "help": "Read record images whose paths lead outside the image root (image_root, else the records "
                "file's directory) once '..' and symbolic links are resolved. false: such a path is an invalid "
                "record naming it, so that a records file cannot make mmpo open other files."})
    allow_absolute_image_paths: bool | None = field(default=None, metadata={
        "help": "Read absolute image paths wherever they point. Default: yes without image_root (mmpo's own "
                "writers refer to images outside the written file's directory by absolute path), no with it: "
                "an image_root is where the images are, and an absolute path must lie inside it too unless "
                "this is true (or allow_images_outside_root)."})

    def __post_init__(self):
        check_choice("on_bad_record", self.on_bad_record, ("raise", "skip"))
        check_number("max_text_chars", self.max_text_chars, integer=True, low=1, optional=True)


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
                "response). Models that cannot (Gemma 3; flash attention) use one row per response and the run "
                "logs why."})
    max_tokens_per_row: int | None = field(default=None, metadata={
        "help": "Pack several records into one row of up to this many tokens (each record still attends only to "
                "itself, its positions restarting), so that rows are not padded to the batch's longest record. The "
                "batch is still per_device_train_batch_size records; only their layout in rows changes. None: one "
                "row per record (or per response without prefix sharing). Models that cannot (Mllama; flash "
                "attention) keep one row per record and the run logs why."})
    lm_head_chunk_size: int = field(default=256, metadata={
        "help": "Compute the LM head and its log-softmax only at the positions that predict a response token, "
                "this many at a time, recomputing each chunk's logits in the backward: the head's memory is "
                "O(chunk x vocabulary) instead of O(positions x vocabulary). 0: the model's own full logits."})

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
        check_number("max_tokens_per_row", self.max_tokens_per_row, integer=True, low=0, low_open=True, optional=True)
        check_number("lm_head_chunk_size", self.lm_head_chunk_size, integer=True, low=0)
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

    # Secrets (hub_token, ...) stay in memory, for pushing, and out of every copy written down:
    # Trainer pickles its arguments into each checkpoint's training_args.bin.
    def __getstate__(self) -> dict[str, Any]:
        """The pickled state: every field, with each secret (:func:`is_secret`) set to None."""
        return {key: None if is_secret(key) and value is not None else value for key, value in vars(self).items()}

    def __copy__(self) -> PreferenceConfig:
        new = type(self).__new__(type(self))
        new.__dict__.update(vars(self))
        return new

    def __deepcopy__(self, memo: dict) -> PreferenceConfig:
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update({key: copy.deepcopy(value, memo) for key, value in vars(self).items()})
        return new

    def to_dict(self) -> dict[str, Any]:
        """``TrainingArguments.to_dict`` (what loggers and model cards serialise) with every secret None."""
        return {key: None if is_secret(key) else value for key, value in super().to_dict().items()}


#: Name endings of fields whose values are secrets: never pickled, serialised or shown.
SECRET_SUFFIXES = ("token", "api_key", "apikey", "password", "secret")


def is_secret(name: str) -> bool:
    """Whether the config field ``name`` holds a secret (``hub_token``, and any ``*_token``, ``*_api_key``,
    ``*_password`` or ``*_secret`` field)."""
    return name.lower().endswith(SECRET_SUFFIXES)


@dataclass
class Methods:
    """The method switches, each with its own options; all off is plain DPO.

    ``methods.aspo.enabled``, ``methods.dama.enabled`` (data- or model-aware) and
    ``methods.adavip.enabled`` say which are on. In YAML and on the command line the keys are flat
    and prefixed (``aspo: true``, ``dama_model: true``, ``adavip_loss: plus_vision``).
    """

    aspo: AspoConfig = field(default_factory=AspoConfig)
    dama: DamaConfig = field(default_factory=DamaConfig)
    adavip: AdavipConfig = field(default_factory=AdavipConfig)


@dataclass
class RunConfig:
    """Everything one training run is given, by name: what :func:`parse_config` returns.

    Attributes:
        model: which checkpoint and how it is tuned.
        data: the record files.
        training: ``TrainingArguments`` plus the preference fields.
        methods: the method switches and their options.
        extra: instances of the extra dataclasses a command adds (``mmpo iterate``'s), in order.
    """

    model: ModelArguments
    data: DataArguments
    training: PreferenceConfig
    methods: Methods = field(default_factory=Methods)
    extra: tuple = ()

    def values(self) -> dict[str, Any]:
        """Every field's value under its YAML key (``beta``, ``aspo_alpha``, ``dama_keep``, ...)."""
        parts = [self.model, self.data, self.training, self.methods.aspo, self.methods.dama, self.methods.adavip,
                 *self.extra]
        return {flat_key(type(part), f) if type(part) in METHOD_CONFIGS else f.name: getattr(part, f.name)
                for part in parts for f in dataclasses.fields(part)}


#: The config dataclasses of a run, in the order :class:`RunConfig` holds them.
CONFIG_CLASSES = (ModelArguments, DataArguments, PreferenceConfig, AspoConfig, DamaConfig, AdavipConfig)
METHOD_CONFIGS = (AspoConfig, DamaConfig, AdavipConfig)


def flat_key(cls: type, f: dataclasses.Field) -> str:
    """The YAML / command-line key of a method option: ``metadata["key"]`` or the class's prefix
    plus the field name (``DamaConfig.keep`` is ``dama_keep``)."""
    return f.metadata.get("key", f"{cls.PREFIX}{f.name}")


@functools.cache
def keyed(cls: type) -> type:
    """``cls`` as ``HfArgumentParser`` needs it: a dataclass with the same fields under their flat keys
    and no checks (a method config is checked when :func:`unkeyed` builds it). Other classes are
    returned as they are."""
    if cls not in METHOD_CONFIGS:
        return cls
    hints = typing.get_type_hints(cls)
    fields = [(flat_key(cls, f), hints[f.name], field(default=f.default, metadata={"help": f.metadata.get("help")}))
              for f in dataclasses.fields(cls)]
    return dataclasses.make_dataclass(f"{cls.__name__}Keys", fields)


def unkeyed(cls: type, parsed: Any) -> Any:
    """The ``cls`` instance of a :func:`keyed` instance (method configs are checked here)."""
    if cls not in METHOD_CONFIGS:
        return parsed
    return cls(**{f.name: getattr(parsed, flat_key(cls, f)) for f in dataclasses.fields(cls)})


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
                 extra: tuple[type, ...] = ()) -> RunConfig:
    """The run's config from a YAML file and ``--field value`` overrides.

    Unknown YAML keys are an error that names them (a typo must not be silently ignored); so is a
    YAML value of the wrong type (:func:`check_yaml_value`). An out-of-range value is a
    ``ValueError`` naming the field (and the YAML file, when there is one).

    Args:
        yaml_path: the config file, or None (overrides alone).
        overrides: ``["--beta", "0.2", ...]``, applied after the file.
        extra: more dataclasses whose fields the file and overrides may set (``mmpo iterate``'s);
            their instances are :attr:`RunConfig.extra`.
    """
    classes = (*CONFIG_CLASSES, *extra)
    flat = tuple(keyed(cls) for cls in classes)
    parser = HfArgumentParser(flat)
    values = {}
    if yaml_path is not None:
        values = read_yaml(yaml_path, "config") or {}
        if not isinstance(values, dict):
            raise ValueError(f"{yaml_path}: a config is a mapping of field: value, not a {type(values).__name__}")
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - known, key=str)
        if unknown:
            raise ValueError(f"{yaml_path}: unknown config keys {unknown}")
        fields = _field_types(flat)
        values = {key: check_yaml_value(str(yaml_path), key, value, *fields[key])
                  if key in fields and key not in _CHECKED_BY_POST_INIT else value for key, value in values.items()}
        parser.set_defaults(**values)
        # A required field given in YAML is no longer required on the command line.
        for action in parser._actions:
            if action.dest in values:
                action.required = False
    try:
        parsed = parser.parse_args_into_dataclasses(args=list(overrides or []), look_for_args_file=False)
        model, data, training, aspo, dama, adavip, *more = (unkeyed(cls, p) for cls, p in zip(classes, parsed,
                                                                                             strict=True))
    except ValueError as error:
        if yaml_path is None:
            raise
        raise ValueError(f"{yaml_path}: {error}") from error
    return RunConfig(model, data, training, Methods(aspo, dama, adavip), tuple(more))


def parse_command_line(argv: list[str], doc: str, extra: tuple[type, ...] = ()) -> RunConfig | None:
    """``CONFIG.yaml [--field value ...]`` (or overrides alone) parsed by :func:`parse_config`;
    ``None`` after printing ``doc`` and every field's help when ``argv`` is empty or asks for help."""
    if not argv or argv[0] in ("-h", "--help"):
        print(doc)
        HfArgumentParser(tuple(keyed(cls) for cls in (*CONFIG_CLASSES, *extra))).print_help()
        return None
    path, overrides = (argv[0], argv[1:]) if not argv[0].startswith("--") else (None, argv)
    return parse_config(path, overrides, extra=extra)
