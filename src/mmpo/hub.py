"""Where model checkpoints come from: local directories, and the Hub only when asked.

Every ``from_pretrained`` in mmpo goes through :func:`pretrained_kwargs`, so a mistyped relative
path is a clear "no such directory" instead of minutes of DNS look-ups against the Hugging Face
Hub. Downloading is opt-in: ``allow_download=True`` (or ``MMPO_ALLOW_DOWNLOAD=1`` in the
environment) lets a name that is not a local directory be fetched as a Hub id; the subcommands'
``--allow-download`` flag (:data:`ALLOW_DOWNLOAD_HELP`) sets it with :func:`allowing_downloads`.

A checkpoint that does not load as it is fails in one :class:`CheckpointLoadError` naming the
directory (or the file) and the likely cause: its JSON files, chat template and weights headers are
checked before anything is loaded (:func:`check_checkpoint_files`, from :func:`pretrained_kwargs`),
``from_pretrained`` errors are converted by :func:`loading`, and a model whose weights lack tensors
of its ``config.json`` or hold others, which transformers initialises at random or drops with only a
log line, is refused by :func:`load_model` (:func:`check_loaded_weights`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)
#: Set to 1 to let names that are not local directories be downloaded from the Hub.
ALLOW_DOWNLOAD_ENV = "MMPO_ALLOW_DOWNLOAD"
#: The ``--allow-download`` flag's help, shared by the subcommands that load checkpoints.
ALLOW_DOWNLOAD_HELP = (f"let a model path that is not a local directory be downloaded from the Hugging Face Hub "
                       f"(default: local checkpoint directories only, so a mistyped path is an error naming it "
                       f"and nothing touches the network; {ALLOW_DOWNLOAD_ENV}=1 does the same)")


def downloads_allowed(allow_download: bool | None = None) -> bool:
    """``allow_download`` if given, else whether ``MMPO_ALLOW_DOWNLOAD`` is set to 1/true/yes."""
    if allow_download is not None:
        return bool(allow_download)
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes")


def pretrained_kwargs(path: str | os.PathLike, what: str = "model",
                      allow_download: bool | None = None) -> dict[str, Any]:
    """The keyword arguments for ``from_pretrained(path, ...)``, after checking ``path``.

    Args:
        path: a local checkpoint directory (or, with downloads allowed, a Hub id).
        what: what the checkpoint is, for the error message (``"model"``, ``"CLIP model"``, ...).
        allow_download: allow a Hub download when ``path`` is not a local directory; ``None``
            reads ``MMPO_ALLOW_DOWNLOAD``.

    Returns:
        ``{"local_files_only": True}`` for local loads (no network at all), ``{}`` when a download
        is allowed.

    Raises:
        FileNotFoundError: ``path`` is not a directory and downloads are not allowed; the message
            names the absolute path that was tried.
        CheckpointLoadError: a local directory holds a damaged file (:func:`check_checkpoint_files`).
    """
    directory = Path(os.path.expanduser(os.fspath(path)))
    loaded = what.split(" (")[0]  # "model (model_name_or_path)": the model
    if downloads_allowed(allow_download):
        if directory.is_dir():
            check_checkpoint_files(directory, loaded)
        return {}
    if not directory.is_dir():
        kind = "is a file, not a checkpoint directory" if directory.exists() else "does not exist"
        raise FileNotFoundError(
            f"{what} path {os.fspath(path)!r} ({directory.absolute()}) {kind}; mmpo loads local checkpoint "
            f"directories only (set {ALLOW_DOWNLOAD_ENV}=1 to let Hub ids be downloaded)")
    check_checkpoint_files(directory, loaded)
    return {"local_files_only": True}


@contextlib.contextmanager
def allowing_downloads(allowed: bool) -> Iterator[None]:
    """While inside, with ``allowed``, let Hub ids be downloaded (sets ``MMPO_ALLOW_DOWNLOAD=1``,
    which :func:`pretrained_kwargs` reads); without it, nothing changes."""
    if not allowed:
        yield
        return
    before = os.environ.get(ALLOW_DOWNLOAD_ENV)
    os.environ[ALLOW_DOWNLOAD_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ALLOW_DOWNLOAD_ENV, None)
        else:
            os.environ[ALLOW_DOWNLOAD_ENV] = before


class CheckpointLoadError(OSError, ValueError):
    """A checkpoint directory that ``transformers`` could not load. The message names the directory,
    the class its files declare and the likely cause; the original exception is its ``__cause__``.
    Both an ``OSError`` and a ``ValueError``, the two kinds of error loading raised before."""


#: (fragment of the original error, lower-cased; likely cause): the first whose fragment occurs is named.
LOAD_FAILURE_CAUSES = (
    ("model_type", "config.json names a model type this transformers release does not know: a newer "
                   "transformers, or trust_remote_code for a custom model"),
    ("couldn't instantiate the backend tokenizer", "the directory has no usable tokenizer file (tokenizer.json, or a "
                                                   "slow tokenizer's tokenizer.model / vocab files): copy the "
                                                   "tokenizer files of the base model into it"),
    ("untagged enum", "tokenizer.json is damaged or was written by a newer tokenizers release"),
    ("deserializ", "a weights file is truncated or damaged: copy the checkpoint again"),
    ("can't load image processor", "the directory has no image-processor settings (processor_config.json or "
                                   "preprocessor_config.json): save the processor into it again"),
    ("header", "a weights file is truncated or damaged: copy the checkpoint again"),
    ("size mismatch", "the weights do not fit the shapes config.json describes (another model's config?)"),
)


def likely_cause(text: str) -> str | None:
    """The likely cause of a load failure whose message is ``text``, or None."""
    lowered = text.lower()
    if "video" in lowered or "torchvision" in lowered:
        try:
            import torchvision  # noqa: F401
        except Exception as error:  # not installed, or a build that does not match torch
            missing = "not installed" if isinstance(error, ModuleNotFoundError) else f"unusable ({error})"
            return (f"torchvision is {missing}, and transformers needs it to build this processor's video-processor "
                    "slot (Qwen2/2.5/3-VL, SmolVLM, LLaVA-OneVision); install the torchvision build that matches "
                    "torch (the README's GPU set-up)")
        if "video" in lowered:
            return ("the processor has a video-processor slot but the directory has no video processor files "
                    "(video_preprocessor_config.json): save the processor again with this transformers release")
    return next((cause for fragment, cause in LOAD_FAILURE_CAUSES if fragment in lowered), None)


def declared_class(path: str | os.PathLike, what: str) -> str | None:
    """The class a checkpoint directory's files say it holds: ``processor_class`` for a processor,
    ``architectures[0]`` (or ``model_type``) for a model; None when no file says."""
    import json

    processor = "processor" in what
    names = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json") if processor \
        else ("config.json",)
    for name in names:
        try:
            config = json.loads((Path(os.fspath(path)) / name).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(config, dict):
            continue
        declared = config.get("processor_class") if processor \
            else (config.get("architectures") or [None])[0] or config.get("model_type")
        if declared:
            return str(declared)
    return None


def load_failure(path: str | os.PathLike, what: str, error: BaseException) -> CheckpointLoadError:
    """The :class:`CheckpointLoadError` for ``error``, raised while loading the ``what`` in ``path``."""
    text = " ".join(str(error).split()).rstrip(".") or type(error).__name__
    cls = declared_class(path, what)
    cause = missing_file(path, what, text) or likely_cause(text)
    return CheckpointLoadError(
        f"cannot load the {what} in {os.fspath(path)}" + (f" ({cls})" if cls else "")
        + f": {type(error).__name__}: {text}" + (f". Likely cause: {cause}" if cause else ""))


#: Files one of which holds a model's weights.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
                "adapter_model.safetensors", "adapter_model.bin")


def missing_file(path: str | os.PathLike, what: str, text: str) -> str | None:
    """The file a local checkpoint directory lacks for loading its ``what``, as a likely cause of the
    error whose message is ``text``, or None: a tokenizer file for a processor or tokenizer, else
    ``config.json`` or a weights file."""
    directory = Path(os.path.expanduser(os.fspath(path)))
    text = text.lower()
    if not directory.is_dir():
        return None
    if "processor" in what or "tokenizer" in what:
        if "tokenizer" in text and not any((directory / name).is_file() for name in TOKENIZER_FILES):
            return (f"{directory} has no tokenizer file (one of {', '.join(TOKENIZER_FILES[:4])}, ...): copy the "
                    "tokenizer files of the base model into it")
        return None
    if "config" in text and not (directory / "config.json").is_file():
        return f"{directory} has no config.json: copy the checkpoint again (or save the model into it again)"
    if "file" in text and not any((directory / name).is_file() for name in WEIGHT_FILES):
        return (f"{directory} has no weights file (one of {', '.join(WEIGHT_FILES[:3])}, ...): copy the checkpoint "
                "again (or save the model into it again)")
    return None


@contextlib.contextmanager
def loading(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Any exception raised inside (a checkpoint's ``from_pretrained``) comes out as one
    :class:`CheckpointLoadError` naming ``path``, the class it declares and the likely cause."""
    try:
        yield
    except CheckpointLoadError:
        raise
    except Exception as error:
        raise load_failure(path, what, error) from error


# ---------------------------------------------------------------------------------------------- files
#: The JSON files ``from_pretrained`` of a model, processor or tokenizer reads from a checkpoint directory.
#: A damaged one is named before anything is loaded: transformers either fails with a message that names no
#: file (a ``JSONDecodeError`` while building "the processor") or, for some, warns and goes on without it.
CHECKPOINT_JSON_FILES = ("config.json", "generation_config.json", "processor_config.json", "preprocessor_config.json",
                         "video_preprocessor_config.json", "tokenizer_config.json", "tokenizer.json",
                         "special_tokens_map.json", "added_tokens.json", "chat_template.json", "vocab.json",
                         "adapter_config.json", "model.safetensors.index.json", "adapter_model.safetensors.index.json")
#: Weights files read directly (a sharded model's shards are named by its index).
SAFETENSORS_FILES = ("model.safetensors", "adapter_model.safetensors")
#: Files any tokenizer needs one of: the fast tokenizer's serialisation or a slow tokenizer's vocabulary.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json",
                   "vocab.txt", "tekken.json", "tokenizer.tiktoken")
#: The likely cause named for a damaged file.
DAMAGED = "the file is truncated or damaged (an interrupted copy or download?): copy the checkpoint again"

#: (resolved directory, its files' (name, size, mtime)) already checked: each checkpoint is read once per process.
_checked: set[tuple[str, tuple]] = set()


class _Damaged(Exception):
    """A file of a checkpoint directory that loading would fail on (or silently skip): ``(problem, cause)``."""


def check_checkpoint_files(path: str | os.PathLike, what: str = "checkpoint") -> None:
    """Check the files of the local checkpoint directory ``path`` that loading reads, before it does.

    Every :data:`CHECKPOINT_JSON_FILES` present must be readable JSON (``config.json`` an object), a
    ``chat_template.jinja`` a template Jinja compiles, every ``.safetensors`` weights file (and every
    shard an index names) present and as long as its header says. Checked once per process while
    the directory's files are unchanged.

    Raises:
        CheckpointLoadError: ``cannot load the <what> in <path> (<class>): <file> ...``, naming the
            file, what is wrong with it and the likely cause.
    """
    directory = Path(os.path.expanduser(os.fspath(path)))
    try:
        entries = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(directory)
                         if e.is_file())
    except OSError:
        return  # not a readable directory: from_pretrained says so
    key = (os.path.realpath(directory), tuple(entries))
    if key in _checked:
        return
    try:
        _check_files(directory, {name for name, _, _ in entries})
    except _Damaged as damaged:
        problem, cause = damaged.args
        cls = declared_class(directory, what)
        raise CheckpointLoadError(f"cannot load the {what} in {os.fspath(path)}" + (f" ({cls})" if cls else "")
                                  + f": {problem}. Likely cause: {cause}") from damaged.__cause__ or damaged
    _checked.add(key)


def _check_files(directory: Path, present: set[str]) -> None:
    documents = {name: _read_json(directory / name) for name in CHECKPOINT_JSON_FILES if name in present}
    if not isinstance(documents.get("config.json", {}), dict):
        raise _Damaged(f"{directory / 'config.json'} is not a JSON object of settings", DAMAGED)
    if "chat_template.jinja" in present:
        _check_chat_template(directory / "chat_template.jinja")
    weights = [directory / name for name in SAFETENSORS_FILES if name in present]
    for index in ("model.safetensors.index.json", "adapter_model.safetensors.index.json"):
        if index in documents:
            weight_map = documents[index].get("weight_map") if isinstance(documents[index], dict) else None
            if not isinstance(weight_map, dict):
                raise _Damaged(f"{directory / index} has no weight_map", DAMAGED)
            shards = sorted({str(shard) for shard in weight_map.values()})
            missing = [shard for shard in shards if not (directory / shard).is_file()]
            if missing:
                raise _Damaged(f"{directory / index} names {len(missing)} weights shard(s) that are not there "
                               f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})",
                               "an interrupted copy or download: copy the checkpoint again")
            weights += [directory / shard for shard in shards if shard.endswith(".safetensors")]
    for file in weights:
        problem = safetensors_problem(file)
        if problem:
            raise _Damaged(problem, DAMAGED)


def _read_json(path: Path) -> Any:
    import json

    try:
        return json.loads(path.read_bytes())
    except UnicodeDecodeError as error:
        raise _Damaged(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})", DAMAGED) from error
    except ValueError as error:
        where = f"line {error.lineno} column {error.colno}: {error.msg}" if hasattr(error, "lineno") else str(error)
        raise _Damaged(f"{path} is not readable JSON ({where})", DAMAGED) from error
    except RecursionError as error:
        raise _Damaged(f"{path} is nested too deeply to read", DAMAGED) from error
    except OSError as error:
        raise _Damaged(f"{path} cannot be read ({error.strerror or error})", "file permissions, or a failing disk") \
            from error


def _check_chat_template(path: Path) -> None:
    """A ``chat_template.jinja`` must be UTF-8 text that Jinja compiles (as ``apply_chat_template`` will)."""
    try:
        template = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise _Damaged(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})", DAMAGED) from error
    except OSError as error:
        raise _Damaged(f"{path} cannot be read ({error.strerror or error})", "file permissions, or a failing disk") \
            from error
    try:  # transformers' own compiler, with its extensions ({% generation %}); a private helper, so optional
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:
        return
    try:
        _compile_jinja_template(template)
    except ImportError:  # no jinja2: apply_chat_template says so
        return
    except Exception as error:
        line = getattr(error, "lineno", None)
        message = " ".join(str(getattr(error, "message", None) or error).split()).rstrip(".")
        raise _Damaged(f"{path} is not a valid Jinja chat template ({f'line {line}: ' if line else ''}{message})",
                       DAMAGED) from error


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """Why the ``.safetensors`` file ``path`` is incomplete (shorter than its header says, or an
    unreadable header), or None; reads only the header."""
    import json

    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if length < 0 or 8 + length > size:
                return f"{path} is truncated ({size} bytes, shorter than its header)"
            try:
                header = json.loads(f.read(length))
            except (ValueError, RecursionError):
                return f"{path} has an unreadable header"
    except OSError as error:
        return f"{path} cannot be read ({error.strerror or error})"
    if not isinstance(header, dict):
        return f"{path} has an unreadable header"
    try:
        end = max((int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"),
                  default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        return f"{path} has an unreadable header"
    if 8 + length + end > size:
        return f"{path} is truncated ({size} bytes of {8 + length + end})"
    return None


# ---------------------------------------------------------------------------------------------- weights
#: How many tensor names a weights error lists before "... and N more".
NAMES_SHOWN = 3


def _names(keys: Any) -> str:
    keys = sorted(str(k[0] if isinstance(k, tuple) else k) for k in keys)
    more = f", ... ({len(keys) - NAMES_SHOWN} more)" if len(keys) > NAMES_SHOWN else ""
    return ", ".join(keys[:NAMES_SHOWN]) + more


def check_loaded_weights(path: str | os.PathLike, what: str, info: dict[str, Any], *,
                         allow_missing: bool = False, allow_unexpected: bool = False,
                         options: tuple[str, str] | None = None) -> None:
    """Refuse a model whose weights did not all load: ``info`` is what ``from_pretrained(...,
    output_loading_info=True)`` returns beside the model (``missing_keys``, ``unexpected_keys``,
    ``mismatched_keys``, ``error_msgs``).

    transformers initialises a missing tensor at random and drops an unexpected one, and only logs a
    report: a ``config.json`` with one layer more than the weights trains a random layer, one of
    another family a random model. Keys legitimately absent (tied weights, buffers that are not
    saved, a class's ``_keys_to_ignore_on_load_*``) are already out of ``info``.

    Args:
        path, what: the checkpoint directory and what it is, for the message.
        info: the loading report.
        allow_missing / allow_unexpected: accept missing / unexpected tensors (an intended new head);
            they are then logged as a warning.
        options: the names of the settings that allow missing and unexpected tensors (e.g.
            ``("allow_missing_weights", "allow_unexpected_weights")``), named in the message.

    Raises:
        CheckpointLoadError: naming the directory, the first tensors and their count, and the likely cause.
    """
    missing = set(info.get("missing_keys") or ())
    unexpected = set(info.get("unexpected_keys") or ())
    mismatched = list(info.get("mismatched_keys") or ())
    errors = [str(e) for e in info.get("error_msgs") or ()]
    cls = declared_class(path, what)
    where = f"the {what} in {os.fspath(path)}" + (f" ({cls})" if cls else "")
    problems = []
    if missing:
        text = f"{len(missing)} tensors the model needs are missing from the weights ({_names(missing)})"
        if allow_missing:
            logger.warning("%s: %s; randomly initialised (allowed)", where, text)
        else:
            problems.append(text + " and would be randomly initialised")
    if unexpected:
        text = f"{len(unexpected)} tensors in the weights have no place in the model ({_names(unexpected)})"
        if allow_unexpected:
            logger.warning("%s: %s; ignored (allowed)", where, text)
        else:
            problems.append(text + " and would be ignored")
    if mismatched:
        problems.append(f"{len(mismatched)} tensors have other shapes than config.json says ({_names(mismatched)})")
    if errors:
        problems.append("; ".join(errors[:3]))
    if not problems:
        return
    if missing and unexpected and not (allow_missing or allow_unexpected):
        cause = ("the weights are not the architecture config.json declares: a config.json of another model or "
                 "family, or weights saved under other names")
    elif missing:
        cause = ("config.json describes more than the weights hold (more layers? another model size?), or a weights "
                 "shard is missing")
    else:
        cause = "config.json describes less than the weights hold (fewer layers? another model size?)"
    wanted = [name for name, refused in zip(options or (), (missing and not allow_missing,
                                                            unexpected and not allow_unexpected), strict=True)
              if refused]
    allow = f"; if this is intended (e.g. a new head), set {' and '.join(f'{n}: true' for n in wanted)}" \
        if wanted else ""
    raise CheckpointLoadError(f"cannot load {where}: {'; '.join(problems)}. Likely cause: {cause}{allow}")


def load_model(model_class: Any, path: str | os.PathLike, what: str, *, allow_missing: bool = False,
               allow_unexpected: bool = False, options: tuple[str, str] | None = None, **kwargs: Any) -> Any:
    """``model_class.from_pretrained(path, **kwargs)`` inside :func:`loading`, with its weights
    checked by :func:`check_loaded_weights` (``allow_*`` as there)."""
    with loading(path, what):
        model, info = model_class.from_pretrained(path, output_loading_info=True, **kwargs)
    check_loaded_weights(path, what, info, allow_missing=allow_missing, allow_unexpected=allow_unexpected,
                         options=options)
    return model


# ---------------------------------------------------------------------------------------------- tokenizers
def check_pad_token(path: str | os.PathLike, processor: Any, what: str = "processor") -> None:
    """Refuse a tokenizer without a pad token: every batch of mmpo (training, evaluation, generation)
    is padded, and the tokenizer's own error names neither the file nor the directory.

    Raises:
        CheckpointLoadError: naming the directory and ``tokenizer_config.json``.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    if tokenizer is None or getattr(tokenizer, "pad_token", "") is not None:
        return
    eos = getattr(tokenizer, "eos_token", None)
    raise CheckpointLoadError(
        f"the tokenizer of the {what} in {os.fspath(path)} has no pad token, and batches are padded: set "
        f"\"pad_token\" in {Path(os.fspath(path)) / 'tokenizer_config.json'} to an unused special token of the "
        f"vocabulary" + (f" or to the EOS token {eos!r}" if eos else ""))
