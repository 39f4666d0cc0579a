"""Files that survive a kill: whole-line appends with fsync, truncated-line repair, atomic files.

The construction pipelines (noisy-image pairs, vision-rejected images, the synthetic world's
rendered scenes) write their outputs with these, so an interrupted run leaves no half record and
no half image, and a restart continues where it stopped.

Every whole file goes through :func:`atomic_write_bytes`: a temporary file in the same directory,
fsynced, then ``os.replace``-d onto the target (and the directory fsynced), so the target is
either absent, the old content, or the complete new content, whatever moment a kill comes at.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from mmpo.types import ImageRef

logger = logging.getLogger(__name__)


def image_reference(image: ImageRef, rgb: Image.Image, image_dir: Path, out_dir: Path) -> str:
    """The record's ``image``: the file's path, or a PNG written for an in-memory image; relative to
    ``out_dir`` when inside it."""
    if isinstance(image, Image.Image):
        path = save_png(rgb, image_dir)
    else:
        path = Path(os.path.abspath(image))
    try:
        return path.relative_to(out_dir).as_posix()
    except ValueError:
        return str(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that a kill at any moment leaves the old file or the new one,
    never a part: a temporary file in the same directory, fsynced, ``os.replace``-d onto ``path``,
    then the directory fsynced. Creates the parent directories. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), 0o644)  # mkstemp makes 0600; the target is an ordinary output file
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def png_bytes(image: Image.Image) -> bytes:
    """``image`` encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def save_png_atomic(image: Image.Image, path: str | os.PathLike) -> Path:
    """``image`` written to ``path`` as PNG with :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, png_bytes(image))


#: The last 12 bytes of every complete PNG file: its IEND chunk (length 0, type, CRC).
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def image_problem(path: str | os.PathLike) -> str | None:
    """Why the image file at ``path`` cannot be used (missing, empty, truncated, undecodable), or
    ``None`` when it is whole: its checksums verify, its pixels decode (PIL ``verify()`` and
    ``load()``, not just the header) and, for a PNG, it ends with the IEND chunk."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "the file is empty (0 bytes)"
        with Image.open(path) as image:
            if image.format == "PNG":
                with path.open("rb") as file:
                    file.seek(max(0, path.stat().st_size - len(_PNG_END)))
                    if file.read() != _PNG_END:
                        return "truncated PNG (it does not end with the IEND chunk)"
            image.verify()
        with Image.open(path) as image:
            image.load()
    except FileNotFoundError:
        return "the file does not exist"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def ensure_png(path: str | os.PathLike, render: Callable[[], Image.Image]) -> Path:
    """``path``, rendering it with ``render()`` (written atomically) unless it already holds an
    image that decodes completely; a damaged file (e.g. the 0-byte or truncated PNG an earlier,
    killed run left by writing in place) is re-rendered with a warning."""
    path = Path(path)
    if path.exists():
        problem = image_problem(path)
        if problem is None:
            return path
        logger.warning("re-rendering %s: the existing file is damaged (%s), probably left by a killed run",
                       path, problem)
    return save_png_atomic(render(), path)


def read_image(image: ImageRef, what: str) -> Image.Image:
    """``image`` (a path or a PIL image) as a fully decoded RGB ``PIL.Image``.

    Raises:
        ValueError: the file is missing or cannot be decoded; the message starts with ``what``
            (e.g. ``"item #3 (id 'cat-7')"``) and names the path, instead of PIL's bare error.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        with Image.open(image) as opened:
            return opened.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{what}: cannot read its image {os.fspath(image)!r} "
                         f"({type(error).__name__}: {error})") from error


def save_png(image: Image.Image, image_dir: Path) -> Path:
    """``image_dir/<content hash>.png``, written atomically unless a complete image is already there
    (a damaged one is rewritten with a warning)."""
    data = png_bytes(image)
    target = image_dir / f"{hashlib.sha256(data).hexdigest()[:16]}.png"
    if target.exists():
        problem = image_problem(target)
        if problem is None:
            return target
        logger.warning("rewriting %s: the existing file is damaged (%s)", target, problem)
    return atomic_write_bytes(target, data)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: not every platform opens directories)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def open_append(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def append_lines(fd: int, lines: list[str]) -> None:
    """Append each line whole (one ``write`` per line; a short write is finished), then fsync."""
    for line in lines:
        data = (line + "\n").encode("utf-8")
        while data:
            data = data[os.write(fd, data):]
    if lines:
        os.fsync(fd)


def repair_truncated(path: Path) -> int:
    """Cut a truncated last line (no final newline: a write cut short by a kill); 1 if one was cut."""
    if not path.exists():
        return 0
    with path.open("rb+") as file:
        size = file.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        file.seek(size - 1)
        if file.read(1) == b"\n":
            return 0
        file.seek(0)
        keep = file.read().rfind(b"\n") + 1  # 0 when the only line is truncated
        file.truncate(keep)
        file.flush()
        os.fsync(file.fileno())
    logger.warning("removed a truncated last line (%d bytes) from %s", size - keep, path)
    return 1


def read_json_lines(path: Path) -> list[Any]:
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path} line {number} is not JSON ({exc}); the file is damaged") from exc
    return rows
