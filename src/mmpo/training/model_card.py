"""The model card a training run writes next to its saved model: ``OUTPUT_DIR/README.md``.

The Hugging Face Hub's format: YAML front matter with keys the Hub reads (``library_name``, ``tags``,
``pipeline_tag``; ``base_model`` and ``datasets`` only for Hub ids: a local path means nothing on the
Hub, and its metadata check may refuse the card), then markdown: the base model and how it was tuned,
the records, the method, every config value that differs from its default, the last logged
metrics, the command line and the versions.

:func:`run_facts` gathers what the card says about a run before it trains (:class:`RunFacts`);
:func:`model_card` turns the facts and the trainer's log history into the text, with no I/O;
:func:`write_model_card` writes it. ``PreferenceTrainer.create_model_card`` calls the last two, so
``Trainer.push_to_hub``, which calls that hook just before it uploads ``output_dir``, publishes this
card rather than ``Trainer``'s own.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.metadata
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import __version__
from ..io import atomic_write_text
from ..models import count_parameters
from .config import CONFIG_CLASSES, METHOD_CONFIGS, RunConfig, flat_key, is_secret

#: Config keys whose values never appear in a card (nor in its command line): it may be published.
#: Every field :func:`~mmpo.training.config.is_secret` names (``hub_token``, ...).
SECRET_KEYS = frozenset(f.name for cls in CONFIG_CLASSES for f in dataclasses.fields(cls) if is_secret(f.name))
HIDDEN = "<hidden>"
#: An ``owner/name`` Hub repository id (a local path that exists is never taken for one).
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class DataFacts:
    """One record file as the run read it.

    Attributes:
        path: the file (or directory) as the config gave it.
        format: the layout the records were read in (``mmpo``, ``trl`` or ``rlaif-v``).
        rows: records in the file, valid or not.
        records: records the run used (after ``on_bad_record: skip`` and the preflight).
    """

    path: str
    format: str | None
    rows: int
    records: int

    @property
    def skipped(self) -> int:
        return self.rows - self.records


@dataclass(frozen=True)
class RunFacts:
    """What a model card says about a run, all of it known before training starts.

    Attributes:
        config: the run's config.
        changed: every value that differs from its default, by YAML key: ``{key: (value, default)}``
            (:func:`changed_values`; the default is ``dataclasses.MISSING`` for a required field).
        train, evaluation: the record files.
        model_type, architecture: ``config.model_type`` and ``config.architectures[0]`` of the policy.
        parameters: ``(trainable, total)`` parameter counts of the policy.
        reference: which reference model the run used (``copy``, ``adapter``, ``precomputed``).
        command: the command line, secrets hidden (:func:`command_line`); None when unknown.
        versions: package -> version.
        hub_model: ``model_name_or_path`` when it is a Hub id (for ``base_model``), else None.
        hub_datasets: the record files that are Hub ids (for ``datasets``).
    """

    config: RunConfig
    changed: dict[str, tuple[Any, Any]]
    train: DataFacts
    evaluation: DataFacts | None = None
    model_type: str | None = None
    architecture: str | None = None
    parameters: tuple[int, int] | None = None
    reference: str | None = None
    command: str | None = None
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    hub_model: str | None = None
    hub_datasets: tuple[str, ...] = ()


def run_facts(config: RunConfig, train: DataFacts, evaluation: DataFacts | None = None, *, model: Any = None,
              reference: str | None = None, command: str | None = None) -> RunFacts:
    """The :class:`RunFacts` of a run: ``config`` and its record files, plus what ``model`` (the
    prepared policy, LoRA-wrapped or not) says about itself and the installed versions."""
    model_config = getattr(model, "config", None)
    architectures = getattr(model_config, "architectures", None) or [None]
    versions = {"mmpo": __version__}
    for package in ("transformers", "torch") + (("peft",) if config.model.use_lora else ()):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    files = [train.path] + ([evaluation.path] if evaluation else [])
    return RunFacts(config=config, changed=changed_values(config), train=train, evaluation=evaluation,
                    model_type=getattr(model_config, "model_type", None), architecture=architectures[0],
                    parameters=count_parameters(model) if model is not None else None, reference=reference,
                    command=command, versions=versions, hub_model=hub_id(config.model.model_name_or_path),
                    hub_datasets=tuple(path for path in files if hub_id(path)))


def hub_id(name: str | None) -> str | None:
    """``name`` when it reads as a Hub repository id (``owner/name``) and is not a local path, else None."""
    if not name or not _HUB_ID.fullmatch(name) or ".." in name or Path(name).exists():
        return None
    return name


def changed_values(config: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Every value of ``config`` that differs from its field's declared default: ``{yaml key: (value, default)}``.

    Required fields (no default) are always listed; secret values are hidden. What
    ``TrainingArguments.__post_init__`` makes of an unset default is no choice and is not listed
    (:func:`is_default`). Nothing is built to find the defaults: building a ``TrainingArguments``
    resets accelerate's process state (and, under DeepSpeed, its global config).
    """
    parts = [config.model, config.data, config.training, config.methods.aspo, config.methods.dama,
             config.methods.adavip, *config.extra]
    defaults = {}
    for part in parts:
        for f in dataclasses.fields(part):
            default = f.default
            if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            defaults[flat_key(type(part), f) if type(part) in METHOD_CONFIGS else f.name] = default
    return {key: (HIDDEN if is_secret(key) else value, defaults[key]) for key, value in config.values().items()
            if defaults[key] is dataclasses.MISSING or not is_default(key, value, defaults[key])}


#: ``TrainingArguments`` flags whose unset default (None) ``__post_init__`` resolves to ``False``.
#: Elsewhere ``false`` for a None default is a choice (``tf32: false``, ``ddp_find_unused_parameters: false``).
RESOLVED_FLAGS = frozenset({"activation_checkpointing", "gradient_checkpointing", "disable_tqdm"})


def is_default(key: str, value: Any, default: Any) -> bool:
    """``value`` equals ``default``, or is what ``TrainingArguments.__post_init__`` makes of an unset one:
    an empty list for ``""`` or ``"none"`` (``report_to``, ``debug``), a config object with all its
    defaults for None (``accelerator_config``), ``False`` for None in :data:`RESOLVED_FLAGS`.
    (tests/unit/training/test_model_card.py checks that a default config lists nothing more.)"""
    if _same(value, default):
        return True
    if default in ("", "none") or default is None:
        if isinstance(value, (list, tuple, str)) and not value:
            return True
        if default is None and dataclasses.is_dataclass(value) and not isinstance(value, type):
            return _same(value, type(value)())
    return default is None and value is False and key in RESOLVED_FLAGS


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # a value whose == is not a bool (an array): compare what the card would show
        return show(a) == show(b)


def command_line(argv: Sequence[str]) -> str:
    """``argv`` as one shell line (``shlex.join``), with the value of every secret option hidden
    (``--hub_token X``, ``--hub_token=X``, and argparse's abbreviations of it)."""
    shown, hide_next = [], False
    for arg in argv:
        if hide_next:
            shown.append(HIDDEN)
            hide_next = False
            continue
        option, equals, _ = arg.partition("=")
        name = option[2:] if option.startswith("--") else ""
        if is_secret(name) or len(name) > 4 and any(key.startswith(name) for key in SECRET_KEYS):
            shown.append(f"{option}={HIDDEN}" if equals else arg)
            hide_next = not equals
            continue
        shown.append(arg)
    return shlex.join(shown)


# ---------------------------------------------------------------------------------------------- the text
def model_card(facts: RunFacts, log_history: Sequence[dict[str, Any]] = (), tags: Sequence[str] = ()) -> str:
    """The card's text (front matter and markdown) from ``facts`` and ``Trainer.state.log_history``;
    ``tags`` are added to the card's own."""
    config = facts.config
    lora = config.model.use_lora
    front = {"library_name": "peft" if lora else "transformers"}
    if facts.hub_model:
        front["base_model"] = facts.hub_model
    if facts.hub_datasets:
        front["datasets"] = list(facts.hub_datasets)
    card_tags = ["mmpo", *method_tags(config), "vision-language", *(["lora"] if lora else [])]
    front["tags"] = list(dict.fromkeys([*card_tags, *tags]))
    front["pipeline_tag"] = "image-text-to-text"
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip("\n"), "---", "",
             f"# {text(Path(config.training.output_dir).name or config.training.output_dir)}", "",
             f"{text(config.model.model_name_or_path, code=True)} tuned with mmpo: {headline(config)}.", ""]
    lines += _model_section(facts) + _data_section(facts) + _method_section(config) + _config_section(facts)
    lines += _results_section(log_history)
    if facts.command:
        lines += ["## Command", "", *fenced(facts.command, "bash"), ""]
    if facts.versions:
        lines += ["## Framework versions", ""]
        lines += [f"- {package} {text(version)}" for package, version in facts.versions.items()] + [""]
    return "\n".join(lines)


def write_model_card(directory: str | Path, facts: RunFacts, log_history: Sequence[dict[str, Any]] = (),
                     tags: Sequence[str] = ()) -> Path:
    """Write :func:`model_card` to ``directory/README.md`` (atomically); returns the path."""
    return atomic_write_text(Path(directory, "README.md"), model_card(facts, log_history, tags))


def method_names(config: RunConfig) -> list[str]:
    """The methods switched on, by the names their papers use (DAMA's halves: D2PO, MDPO)."""
    methods = config.methods
    names = ["ASPO"] if methods.aspo.enabled else []
    if methods.dama.enabled:
        names.append("DAMA" if methods.dama.data and methods.dama.model else "D2PO" if methods.dama.data else "MDPO")
    return names + (["AdaViP"] if methods.adavip.enabled else [])


def method_tags(config: RunConfig) -> list[str]:
    training = config.training
    tags = ["dpo"] if training.preference_weight > 0 else []
    tags += ["dama" if name in ("D2PO", "MDPO") else name.lower() for name in method_names(config)]
    return tags + (["sft"] if training.sft_weight > 0 else [])


def headline(config: RunConfig) -> str:
    """``"DPO + ASPO + MDPO"``, or the SFT control."""
    if config.training.preference_weight == 0:
        return "SFT on the chosen responses alone"
    return " + ".join(["DPO", *method_names(config)])


def describe_loss(config: RunConfig) -> str:
    """``"DPO + ASPO + AdaViP, beta 0.1"``, with the SFT term when there is one."""
    training = config.training
    if training.preference_weight == 0:
        return f"SFT on the chosen responses alone, reduction {training.sft_reduction}"
    loss = f"{headline(config)}, beta {show(training.beta)}"
    if training.preference_weight != 1:
        loss += f" x {show(training.preference_weight)}"
    if training.sft_weight > 0:
        loss += f", plus SFT on the chosen responses x {show(training.sft_weight)} ({training.sft_reduction})"
    return loss


def _model_section(facts: RunFacts) -> list[str]:
    model = facts.config.model
    kind = ", ".join(text(part, code=True) for part in (facts.model_type, facts.architecture) if part)
    lines = ["## Base model", "", f"- Model: {text(model.model_name_or_path, code=True)}"
             + (f" ({kind})" if kind else ""), f"- Weights dtype: {text(model.dtype, code=True)}"]
    if model.use_lora:
        lines.append(f"- Tuning: LoRA adapters (peft), r {model.lora_r}, alpha {model.lora_alpha}, dropout "
                     f"{show(model.lora_dropout)}, target modules {text(model.lora_target_modules, code=True)}; "
                     "this directory holds the adapter only")
    else:
        lines.append("- Tuning: full fine-tuning")
    frozen = [name for name, off in (("vision tower", facts.config.training.freeze_vision_tower),
                                     ("projector", facts.config.training.freeze_projector)) if off]
    if frozen:
        lines.append(f"- Frozen: {' and '.join(frozen)}")
    if facts.parameters:
        trainable, total = facts.parameters
        lines.append(f"- Trainable parameters: {trainable:,} of {total:,}")
    if facts.reference:
        lines.append(f"- Reference model: {text(facts.reference, code=True)}")
    return lines + [""]


def _data_section(facts: RunFacts) -> list[str]:
    rows = [(name, data) for name, data in (("train", facts.train), ("eval", facts.evaluation)) if data]
    lines = ["## Data", "", "| split | records file | format | records | skipped |", "| --- | --- | --- | ---: | ---: |"]
    lines += [row([name, text(data.path, code=True, cell=True), text(data.format or "?", cell=True),
                   str(data.records), str(data.skipped)]) for name, data in rows]
    if any(data.skipped for _, data in rows):
        lines += ["", f"Skipped: invalid records left out (`on_bad_record: {facts.config.data.on_bad_record}`)."]
    return lines + [""]


def _method_section(config: RunConfig) -> list[str]:
    methods = config.methods
    lines = ["## Method", "", f"- Loss: {describe_loss(config)}"]
    if methods.aspo.enabled:
        aspo = methods.aspo
        lines.append(f"- ASPO: alpha {show(aspo.alpha)}, normalizer {text(aspo.normalizer, code=True)}, "
                     f"granularity {text(aspo.granularity, code=True)}")
    if methods.dama.enabled:
        dama = methods.dama
        halves = [half for half, on in (("data-aware (alpha_D from the records)", dama.data),
                                        ("model-aware (alpha_M from the batch's reward gaps)", dama.model)) if on]
        lines.append(f"- DAMA: {' and '.join(halves)}")
        if dama.model:
            recipe = dataclasses.asdict(dama.resolved())
            lines.append(f"  - recipe {text(dama.recipe, code=True)}, resolved: "
                         + ", ".join(f"{name} {text(show(value), code=True)}" for name, value in recipe.items()))
    if methods.adavip.enabled:
        lines.append(f"- AdaViP: loss {text(methods.adavip.loss, code=True)}")
    return lines + [""]


def _config_section(facts: RunFacts) -> list[str]:
    lines = ["## Configuration", "", "Every value that differs from its default (`mmpo train --help` documents each).",
             ""]
    if not facts.changed:
        return lines + ["None.", ""]
    lines += ["| key | value | default |", "| --- | --- | --- |"]
    for key, (value, default) in facts.changed.items():
        shown_default = "(required)" if default is dataclasses.MISSING else text(show(default), code=True, cell=True)
        lines.append(row([text(key, code=True, cell=True), text(show(value), code=True, cell=True), shown_default]))
    return lines + [""]


def _results_section(log_history: Sequence[dict[str, Any]]) -> list[str]:
    metrics = last_metrics(log_history)
    if not metrics:
        return []
    final = next((entry for entry in reversed(log_history) if "step" in entry), {})
    where = f" after {final['step']} steps" if "step" in final else ""
    if isinstance(final.get("epoch"), (int, float)):
        where += f" (epoch {final['epoch']:.3g})"
    lines = ["## Results", "", f"The last logged value of each metric{where}.", "",
             "| metric | value | step |", "| --- | ---: | ---: |"]
    lines += [row([text(key, code=True, cell=True), f"{value:.4g}", "" if step is None else str(step)])
              for key, (value, step) in metrics.items()]
    return lines + [""]


def last_metrics(log_history: Sequence[dict[str, Any]]) -> dict[str, tuple[float, int | None]]:
    """``{key: (last value, step it was logged at)}`` over every numeric key of the log history
    (``step`` and ``epoch`` themselves left out), in the order the keys first appear."""
    found: dict[str, tuple[float, int | None]] = {}
    for entry in log_history:
        for key, value in entry.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                found[key] = (value, entry.get("step"))
    return found


# ---------------------------------------------------------------------------------------------- markdown
def show(value: Any) -> str:
    """A config value as YAML would write it: ``true``, ``null``, ``1e-05``."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, enum.Enum):
        return show(value.value)
    return str(value)


#: Characters that start inline markdown (emphasis, code, links, HTML, entities, strikethrough) or end
#: a table cell; escaped with a backslash where a value is shown as text.
_MARKDOWN = re.compile(r"([\\`*_\[\]<>&~|])")


def text(value: Any, code: bool = False, cell: bool = False) -> str:
    """``value`` shown literally in markdown, on one line: as a code span (``code``) or as escaped
    text. In a table ``cell`` every ``|`` is escaped; a code span cannot protect a ``\\|`` there
    (the backslash would escape nothing), so such a value is escaped text instead."""
    value = " ".join(str(value).splitlines())
    if not code or (cell and "\\|" in value) or not value.strip():
        return _MARKDOWN.sub(r"\\\1", value) if value.strip() else '""'
    ticks = max((len(run) for run in re.findall(r"`+", value)), default=0) + 1
    # One space each side is stripped from a span: pad when the value itself starts or ends with
    # a backtick, or with a space at both ends.
    pad = " " if value[0] == "`" or value[-1] == "`" or (value[0] == " " and value[-1] == " ") else ""
    span = f"{'`' * ticks}{pad}{value}{pad}{'`' * ticks}"
    return span.replace("|", "\\|") if cell else span


def row(cells: Sequence[str]) -> str:
    """One table row of already-escaped cells."""
    return "| " + " | ".join(cells) + " |"


def fenced(block: str, info: str = "") -> list[str]:
    """``block`` as a fenced code block, the fence longer than any run of backticks in it."""
    fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", block)), default=0) + 1)
    return [f"{fence}{info}", block, fence]
