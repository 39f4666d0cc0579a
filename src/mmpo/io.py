"""mmpo's file I/O in one place: images in, whole files out, JSONL files that survive a kill.

* **Images in.** :func:`load_image` is the one reader of every image mmpo gives a model, a CLIP
  scorer or a construction pipeline: a path, a PIL image, encoded bytes or an array becomes 8-bit
  RGB as a viewer shows it (EXIF orientation, 16-bit and float scaled, transparency on white).
  :func:`image_key` hashes an image's pixels; :func:`image_problem` tells whether an image file is
  whole.
* **Whole files out.** Every file is written through :func:`atomic_writer`: a temporary file in the
  same directory, fsynced, then ``os.replace``-d onto the target (and the directory fsynced), so the
  target is absent, the old content or the complete new content, whatever moment a kill comes at.
  :func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`atomic_write_json`,
  :func:`atomic_write_jsonl` and :func:`write_png_atomic` are its shorthands;
  :func:`save_png_by_hash` stores an in-memory image under its content hash, and
  :func:`image_reference` is how a written record refers to its image.
* **JSONL.** :func:`read_jsonl_lines` reads one line at a time (a bad line is a :class:`BadLine`
  naming the file and line, not a failed file), :func:`read_jsonl` stops at the first bad line;
  :func:`append_lines` appends whole lines with fsync, :func:`repair_truncated` cuts the truncated
  last line a kill leaves.
* **Resuming.** :class:`ResumeJournal` is an output JSONL file plus its progress file, which the
  construction pipelines (noisy-image pairs, vision-rejected images) append to, and which a rerun
  of the same call continues: nothing lost, duplicated or half written.
* **The cache directory**: :func:`default_cache_dir` (``$MMPO_CACHE``, else ``~/.cache/mmpo``);
  :func:`ensure_directory` builds one entry of it (a trained model) so that a kill leaves none half-written.

Only PIL, numpy and :mod:`mmpo.types` are imported, so every layer of mmpo can depend on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps

from mmpo.types import ImageRef

logger = logging.getLogger(__name__)

#: The environment variable naming mmpo's cache directory (built models, embeddings, demo data).
CACHE_ENV = "MMPO_CACHE"
#: Suffix of the progress file next to a resumable output (:class:`ResumeJournal`).
PROGRESS_SUFFIX = ".progress.jsonl"
#: Image modes a PNG file stores as they are; any other mode is converted to RGB before saving.
PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})
#: The last 12 bytes of every complete PNG file: its IEND chunk (length 0, type, CRC).
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
#: What PIL raises for a missing, truncated or undecodable image.
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def default_cache_dir() -> Path:
    """Where mmpo caches what it builds (the synthetic world's models, CLIP embeddings, demo data):
    ``$MMPO_CACHE`` when set and non-empty, else ``~/.cache/mmpo``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mmpo")


# ---------------------------------------------------------------------------------------------
# Images in


def load_image(image: ImageRef | bytes | np.ndarray, what: str | None = None) -> Image.Image:
    """A fully decoded 8-bit RGB ``PIL.Image`` of ``image``, as a viewer would show it.

    ``image`` is a path, a PIL image, the encoded bytes of an image file, or an array (``(H, W)``
    greyscale, ``(H, W, 3)`` RGB, ``(H, W, 4)`` RGBA). The EXIF orientation is applied (phone photos
    are stored sideways); 16-bit and 32-bit greyscale (``I;16*``, ``I``) and float (``F``) images
    are *scaled* to 8 bits (PIL's own ``convert`` clips them, so a 16-bit PNG would come out nearly
    white); images with transparency (``RGBA``, ``LA``, ``La``, ``PA``, ``P`` with a transparent
    colour) are composited on white.

    Args:
        image: the image or where it is.
        what: who the image belongs to, for the error message (e.g. ``"item #3 (id 'cat-7')"``).

    Raises:
        ValueError: with ``what``, when the image is missing or does not decode; the message starts
            with ``what`` and names the path, instead of PIL's bare error. Without ``what``, PIL's
            own error (``FileNotFoundError``, ``UnidentifiedImageError``, ...) propagates.
    """
    try:
        if isinstance(image, Image.Image):
            return _to_rgb(image)
        if isinstance(image, np.ndarray):
            return _to_rgb(Image.fromarray(image))
        with Image.open(io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else image) as opened:
            return _to_rgb(opened)
    except _IMAGE_ERRORS as error:
        if what is None:
            raise
        source = repr(os.fspath(image)) if isinstance(image, (str, os.PathLike)) else f"({type(image).__name__})"
        raise ValueError(f"{what}: cannot read its image {source} ({type(error).__name__}: {error})") from error


def _to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB; see :func:`load_image` for what is done to which mode."""
    # The bit depth the pixels were stored with: 16 for ``I;16*`` and for a PNG that PIL opens as
    # ``I`` (PNG holds at most 16 bits a sample); unknown (None) for an in-memory ``I`` image.
    bits = 16 if image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG") else None
    image = ImageOps.exif_transpose(image) or image  # a decoded copy, which no longer knows its file format
    mode = image.mode
    if mode == "RGB":
        return image.copy() if image.readonly else image
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_as_8bit(np.asarray(image), is_float=mode == "F", bits=bits), mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode == "La":  # premultiplied: PIL converts it to LA only
        image, mode = image.convert("LA"), "LA"
    if mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _as_8bit(values: np.ndarray, is_float: bool, bits: int | None = None) -> np.ndarray:
    """Greyscale values of any integer or float range scaled to uint8.

    Integers stored with 16 bits (``bits=16``: ``I;16*`` modes, 16-bit PNGs) are divided by 257
    whatever their values, so a dark 16-bit image stays dark. Integers of unknown depth: 0..255
    kept, 0..65535 divided by 257. Floats: [0, 1] times 255. Anything wider is stretched from its
    minimum to its maximum.
    """
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if bits == 16 and not is_float and low >= 0 and high <= 65535:
        scaled = values / 257
    elif is_float and low >= 0 and high <= 1:
        scaled = values * 255
    elif low >= 0 and high <= 255:
        scaled = values
    elif low >= 0 and high <= 65535 and not is_float:
        scaled = values / 257
    else:
        scaled = (values - low) / (high - low or 1.0) * 255
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def image_key(image: Image.Image) -> str:
    """A content hash of an image's RGB pixels and size: equal pixels, equal key (PNG is lossless,
    so a rendered image and the file it was saved to share one)."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


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
    except _IMAGE_ERRORS as error:
        return f"{type(error).__name__}: {error}"
    return None


# ---------------------------------------------------------------------------------------------
# Whole files out


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, text: bool = False) -> Iterator[IO[Any]]:
    """A file object whose content replaces ``path`` only once the ``with`` block ends without error.

    What is written goes to a temporary file in ``path``'s directory (created with its parents);
    on leaving the block it is fsynced, made ``0644`` and ``os.replace``-d onto ``path``, then the
    directory is fsynced. An exception (or a kill) before that leaves ``path`` as it was and no
    temporary file behind. ``text=True`` opens it for UTF-8 text, else for bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w" if text else "wb", **({"encoding": "utf-8"} if text else {})) as file:
            os.fchmod(file.fileno(), 0o644)  # mkstemp makes 0600; the target is an ordinary output file
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` with :func:`atomic_writer`; returns ``path``."""
    with atomic_writer(path) as file:
        file.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value: Any, indent: int | None = None,
                      default: Callable[[Any], Any] | None = None) -> Path:
    """``value`` as JSON (one line, or indented by ``indent``) and a newline, written atomically;
    ``default`` turns what JSON cannot hold into something it can (``json.dumps``'s argument)."""
    return atomic_write_text(path, json.dumps(value, indent=indent, default=default) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Sequence[Any]) -> Path:
    """One JSON value per line, written atomically."""
    return atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def png_bytes(image: Image.Image) -> bytes:
    """``image`` encoded as PNG; a mode PNG cannot store (``F``, ``CMYK``, ...) is converted to RGB
    first, as :func:`load_image` would show it."""
    buffer = io.BytesIO()
    (image if image.mode in PNG_MODES else _to_rgb(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png_atomic(image: Image.Image, path: str | os.PathLike) -> Path:
    """``image`` written to ``path`` as PNG with :func:`atomic_writer`."""
    return atomic_write_bytes(path, png_bytes(image))


def save_png_by_hash(image: Image.Image, image_dir: str | os.PathLike, written: list[Path] | None = None) -> Path:
    """``image_dir/<content hash>.png``, written atomically unless a whole image is already there (a
    damaged one, left by a killed older version, is rewritten with a warning). Each file this call
    writes is appended to ``written`` (so a caller can remove them again when its own write fails)."""
    data = png_bytes(image)
    target = Path(image_dir) / f"{hashlib.sha256(data).hexdigest()[:16]}.png"
    if target.exists():
        problem = image_problem(target)
        if problem is None:
            return target
        logger.warning("rewriting %s: the existing file is damaged (%s)", target, problem)
    atomic_write_bytes(target, data)
    if written is not None:
        written.append(target)
    return target


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
    return write_png_atomic(render(), path)


def image_reference(image: ImageRef, out_dir: Path, image_dir: Path, written: list[Path] | None = None) -> str:
    """How a file written to ``out_dir`` refers to ``image``: an in-memory PIL image is saved with
    :func:`save_png_by_hash` into ``image_dir`` (its new files listed in ``written``), a path is made
    absolute; either is then given relative to ``out_dir`` when inside it (readers resolve it against
    the file's directory, so the directory can move as a whole), else absolute."""
    if isinstance(image, Image.Image):
        path = save_png_by_hash(image, image_dir, written)
    else:
        path = Path(os.path.abspath(image))
    try:
        return path.relative_to(out_dir).as_posix()
    except ValueError:
        return str(path)


def ensure_directory(target: str | os.PathLike, build: Callable[[Path], None], complete: str) -> tuple[Path, bool]:
    """The directory ``target``, built by ``build(folder)`` unless it already holds the file
    ``complete`` (which ``build`` writes last); returns ``(target, was_there)``.

    ``build`` fills a fresh temporary folder next to ``target``, which is then renamed into place,
    so an interrupted build never leaves a half-written entry (the temporary folder is removed). A
    stale ``target`` without ``complete`` is replaced; if another process finished the same entry
    first, its copy is kept and this one discarded.
    """
    target = Path(target)
    if (target / complete).exists():
        return target, True
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".partial-", dir=target.parent))
    try:
        build(tmp)
        if target.exists() and not (target / complete).exists():
            shutil.rmtree(target, ignore_errors=True)  # a stale, incomplete entry
        try:
            tmp.rename(target)
        except OSError:
            if not (target / complete).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after the rename, unless another copy won
    return target, False


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: not every platform opens directories)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------------
# JSONL


@dataclasses.dataclass(frozen=True)
class BadLine:
    """A JSONL line that is not UTF-8 text or not JSON; ``message`` names the file and the line,
    ``problem`` is the message without them (for errors that name the place themselves)."""

    number: int
    message: str
    problem: str = ""


def read_jsonl_lines(path: str | os.PathLike) -> list[tuple[int, Any]]:
    """``(line number, value)`` per non-blank line of a JSONL file, numbers counting from 1; a line
    that is not UTF-8 text or not JSON gives a :class:`BadLine` as its value.

    Lines are decoded one at a time, so one bad byte costs one line, not the file.
    """
    path = Path(path)
    rows: list[tuple[int, Any]] = []
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problem = f"not UTF-8 text: {exc}"
                rows.append((number, BadLine(number, f"{path} line {number} is {problem}", problem)))
                continue
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                problem = f"not JSON: {exc}"
                rows.append((number, BadLine(number, f"{path} line {number} is {problem}", problem)))
    return rows


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """The values of a JSONL file's non-blank lines; ``ValueError`` naming the file and line at the
    first line that is not UTF-8 JSON (:func:`read_jsonl_lines` keeps reading instead)."""
    values = []
    for _, value in read_jsonl_lines(path):
        if isinstance(value, BadLine):
            raise ValueError(value.message)
        values.append(value)
    return values


def json_line(value: Any) -> str:
    """``value`` as one line of JSON: UTF-8 text kept as is, NaN and infinity refused (not JSON)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def open_append(path: str | os.PathLike) -> int:
    """A file descriptor appending to ``path`` (created ``0644`` when missing), for :func:`append_lines`."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def append_lines(fd: int, lines: Sequence[str]) -> None:
    """Append each line whole (one ``write`` per line; a short write is finished), then fsync."""
    for line in lines:
        data = (line + "\n").encode("utf-8")
        while data:
            data = data[os.write(fd, data):]
    if lines:
        os.fsync(fd)


def repair_truncated(path: str | os.PathLike) -> int:
    """Cut a truncated last line (no final newline: a write cut short by a kill); 1 if one was cut."""
    path = Path(path)
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


# ---------------------------------------------------------------------------------------------
# Resuming


def progress_path_for(out_path: str | os.PathLike) -> Path:
    """The progress file of a resumable output: ``out_path + ".progress.jsonl"``."""
    return Path(str(out_path) + PROGRESS_SUFFIX)


class ResumeJournal:
    """A resumable JSONL output and its progress file; use :meth:`open`, then append in a ``with``.

    The output holds one line per finished item that produced one (e.g. a preference record); the
    progress file (:func:`progress_path_for`) holds the run's settings on its first line, then one
    ``{"id", "outcome"}`` line per finished item, also for items that wrote no output line (e.g. a
    dropped pair). :meth:`append` writes the output lines first, then the progress lines, each whole
    and fsynced, so a kill between the two leaves output lines the progress file lacks, which the
    next :meth:`open` lists: never a duplicate, never a loss.

    Attributes:
        out_path: the output JSONL file.
        progress_path: its progress file.
        done: ``{id: outcome}`` of every item an earlier run finished (a rerun skips them).
        repaired_lines: truncated last lines (from a killed run) cut off the two files by :meth:`open`.
    """

    def __init__(self, out_path: Path, done: dict[str, str], repaired_lines: int):
        self.out_path = out_path
        self.progress_path = progress_path_for(out_path)
        self.done = done
        self.repaired_lines = repaired_lines
        self._fds: tuple[int, int] | None = None

    @classmethod
    def open(cls, out_path: str | os.PathLike, settings: dict[str, Any], *, writer: str,
             outcome_of: Callable[[dict[str, Any]], str], line_outcomes: Collection[str] | None = None,
             what: str = "items") -> ResumeJournal:
        """Read back what an earlier run with the same ``settings`` finished, repairing a kill's damage.

        1. A truncated last line of either file is cut.
        2. Without a progress file, an output holding lines is ``FileExistsError`` (``writer``, e.g.
           ``"build_noisy_pairs"``, did not write it); otherwise a fresh progress file is started
           with ``settings`` on its first line.
        3. A progress file made with other settings is ``ValueError``.
        4. Output lines the progress file lacks are listed in it now, as ``outcome_of(line)``; items
           listed with an outcome in ``line_outcomes`` (default: every outcome writes a line) whose
           line is missing from the output are redone, with a warning naming ``what`` they are.

        Returns:
            the journal; ``done`` holds the progress file's outcomes and ``outcome_of`` of every output line.
        """
        out_path = Path(out_path)
        progress_path = progress_path_for(out_path)
        repaired = repair_truncated(progress_path) + repair_truncated(out_path)
        progress_rows = read_jsonl(progress_path) if progress_path.exists() else []
        out_rows = read_jsonl(out_path) if out_path.exists() else []
        if not progress_rows:
            if out_rows:
                raise FileExistsError(f"{out_path} holds records but has no progress file {progress_path.name}: "
                                      f"it was not written by {writer}; remove it or choose another output")
            atomic_write_text(progress_path, json.dumps({"settings": settings}) + "\n")
            return cls(out_path, {}, repaired)

        header, *entries = progress_rows
        before = header.get("settings") if isinstance(header, dict) else None
        if before != settings:
            raise ValueError(f"{out_path} was built with other settings ({before}) than now ({settings}); "
                             "resume with the same ones, or write to another output")
        written = {str(row.get("id")): outcome_of(row) for row in out_rows if isinstance(row, dict)}
        listed = {str(row["id"]): row.get("outcome") for row in entries if isinstance(row, dict) and "id" in row}
        with_line = {item for item, outcome in listed.items()
                     if line_outcomes is None or outcome in line_outcomes}
        if lost := with_line - set(written):
            logger.warning("%d %s listed as done are missing from %s; they will be redone", len(lost), what, out_path)
        fd = open_append(progress_path)
        try:
            append_lines(fd, [json_line({"id": item, "outcome": outcome})
                              for item, outcome in written.items() if item not in listed])
        finally:
            os.close(fd)
        done = {item: outcome for item, outcome in listed.items() if item not in lost}
        done.update(written)
        return cls(out_path, done, repaired)

    def __enter__(self) -> ResumeJournal:
        self._fds = (open_append(self.out_path), open_append(self.progress_path))
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fds is not None:
            for fd in self._fds:
                os.close(fd)
            self._fds = None

    def append(self, rows: Sequence[dict[str, Any]], outcomes: Sequence[tuple[str, str]]) -> None:
        """Append ``rows`` to the output (one JSON line each), then ``(id, outcome)`` per finished item
        to the progress file; inside ``with journal:``."""
        if self._fds is None:
            raise RuntimeError("ResumeJournal.append needs an open journal: use it inside `with journal:`")
        records_fd, progress_fd = self._fds
        append_lines(records_fd, [json_line(row) for row in rows])
        append_lines(progress_fd, [json_line({"id": item, "outcome": outcome}) for item, outcome in outcomes])


def read_items(path: str | os.PathLike) -> list[tuple[str, str, Any]]:
    """``(id, image path, prompt)`` per non-blank line of an items JSONL file (``{"id", "image", "prompt"
    (or "instruction")}``; relative image paths start from the file's folder, a missing id is the
    item's index), as ``mmpo noisy-pairs`` and ``mmpo self-pairs`` read it; raises ValueError naming the
    file and line of a bad line."""
    path = Path(path)
    items = []
    for number, row in read_jsonl_lines(path):
        if isinstance(row, BadLine):
            raise ValueError(row.message)
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {number}: expected an object")
        prompt = row.get("prompt", row.get("instruction"))
        if not row.get("image") or not prompt:
            raise ValueError(f"{path} line {number}: needs 'image' and 'prompt' (or 'instruction')")
        item_id = row.get("id", len(items))
        items.append((str(item_id), str(path.parent / Path(row["image"]).expanduser()), prompt))
    return items
