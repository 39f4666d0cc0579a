"""Where model checkpoints come from: local directories, and the Hub only when asked.

Every ``from_pretrained`` in mmpo goes through :func:`pretrained_kwargs`, so a mistyped relative
path is a clear "no such directory" instead of minutes of DNS look-ups against the Hugging Face
Hub. Downloading is opt-in: ``allow_download=True`` (or ``MMPO_ALLOW_DOWNLOAD=1`` in the
environment) lets a name that is not a local directory be fetched as a Hub id.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: Set to 1 to let names that are not local directories be downloaded from the Hub.
ALLOW_DOWNLOAD_ENV = "MMPO_ALLOW_DOWNLOAD"


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
