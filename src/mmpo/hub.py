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
