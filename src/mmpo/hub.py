"""Where model checkpoints come from: local directories, and the Hub only when asked.

Every ``from_pretrained`` in mmpo goes through :func:`pretrained_kwargs`, so a mistyped relative
path is a clear "no such directory" instead of minutes of DNS look-ups against the Hugging Face
Hub. Downloading is opt-in: ``allow_download=True`` (or ``MMPO_ALLOW_DOWNLOAD=1`` in the
environment) lets a name that is not a local directory be fetched as a Hub id; the subcommands'
``--allow-download`` flag (:data:`ALLOW_DOWNLOAD_HELP`) sets it with :func:`allowing_downloads`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    """
    if downloads_allowed(allow_download):
        return {}
    directory = Path(os.path.expanduser(os.fspath(path)))
    if not directory.is_dir():
        kind = "is a file, not a checkpoint directory" if directory.exists() else "does not exist"
        raise FileNotFoundError(
            f"{what} path {os.fspath(path)!r} ({directory.absolute()}) {kind}; mmpo loads local checkpoint "
            f"directories only (set {ALLOW_DOWNLOAD_ENV}=1 to let Hub ids be downloaded)")
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
    ("safetensor", "a weights file is truncated or damaged: copy the checkpoint again"),
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
    text = " ".join(str(error).split()) or type(error).__name__
    cls = declared_class(path, what)
    cause = likely_cause(text)
    return CheckpointLoadError(
        f"cannot load the {what} in {os.fspath(path)}" + (f" ({cls})" if cls else "")
        + f": {type(error).__name__}: {text}" + (f". Likely cause: {cause}" if cause else ""))


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
