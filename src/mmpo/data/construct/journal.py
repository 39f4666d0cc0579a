"""Files that survive a kill: whole-line appends with fsync, truncated-line repair, atomic PNGs.

The construction pipelines (noisy-image pairs, vision-rejected images) write their outputs with
these, so an interrupted run leaves no half record and a restart continues where it stopped.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
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


def save_png(image: Image.Image, image_dir: Path) -> Path:
    """``image_dir/<content hash>.png``, written atomically unless already there."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    target = image_dir / f"{hashlib.sha256(data).hexdigest()[:16]}.png"
    if not target.exists():
        image_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=image_dir, prefix=f".{target.name}.", delete=False) as tmp:
            tmp.write(data)
        os.replace(tmp.name, target)
    return target


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
