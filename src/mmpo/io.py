"""mmpo's file I/O in one place: images in, whole files out, JSONL files that survive a kill.

* **Images in.** :func:`load_image` is the one reader of every image mmpo gives a model, a CLIP
  scorer or a construction pipeline: a path, a PIL image, encoded bytes or an array becomes 8-bit
  RGB as a viewer shows it (EXIF orientation, 16-bit and float scaled, transparency on white),
  downscaled when over the pixel budget (:func:`max_image_pixels`, 40 Mpx), the first frame of
  several (each said once per file). :func:`check_image` checks a file before that without decoding
  it; :func:`image_key` hashes an image's pixels; :func:`image_problem` tells whether an image file
  is whole.
* **Whole files out.** Every file is written through :func:`atomic_writer`: a temporary file in the
  same directory, fsynced, then ``os.replace``-d onto the target (and the directory fsynced), so the
  target is absent, the old content or the complete new content, whatever moment a kill comes at.
  :func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`atomic_write_json`,
  :func:`atomic_write_jsonl` and :func:`write_png_atomic` are its shorthands;
  :func:`save_png_by_hash` stores an in-memory image under its content hash, and
  :func:`image_reference` is how a written record refers to its image.
* **JSONL.** :func:`read_jsonl_lines` reads one line at a time (a bad line is a :class:`BadLine`
  naming the file and line, not a failed file: not UTF-8, not JSON, or over the limits of
  :func:`parse_json` on nesting and number length), :func:`read_json_array` reads a JSON array
  element by element the same way, :func:`read_jsonl` stops at the first bad line;
  :func:`append_lines` appends whole lines with fsync, :func:`repair_truncated` cuts the truncated
  last line a kill leaves.
* **Resuming.** :class:`ResumeJournal` is an output JSONL file plus its progress file, which the
  construction pipelines (noisy-image pairs, vision-rejected images) append to, and which a rerun
  of the same call continues: nothing lost, duplicated or half written.
* **The cache directory**: :func:`default_cache_dir` (``$MMPO_CACHE``, else ``~/.cache/mmpo``);
  :func:`ensure_directory` builds one entry of it (a trained model) so that a kill leaves none half-written.
* **Whole directories out**: :func:`building_directory` gives a hidden sibling folder to write a
  directory into and renames it into place (a second writer of the same target is refused, naming
  its pid), so a kill leaves the old directory or the complete new one.
* **Limits on what is read**: :func:`parse_json` refuses JSON nested deeper than
  :data:`MAX_JSON_DEPTH` or holding numbers longer than :data:`MAX_JSON_NUMBER_CHARS`;
  :func:`load_image` reads an image over the pixel budget (:func:`max_image_pixels`) downscaled,
  and :func:`check_image` says so, and names an image of several frames, once per file.

Only PIL, numpy and :mod:`mmpo.types` are imported, so every layer of mmpo can depend on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import tempfile
import warnings
import weakref
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

    Two things are logged once per image (:func:`check_image` logs them when a record is validated):

    * an image of several frames (an animated GIF, PNG or WebP, a multi-page TIFF) gives its
      current frame, the first of a file;
    * an image of more than :func:`max_image_pixels` pixels (40 Mpx, ``$MMPO_MAX_IMAGE_PIXELS``) is
      downscaled to fit, keeping its aspect ratio: the size is read from the header before any pixel
      is decoded, a JPEG is decoded at 1/2, 1/4 or 1/8 of its size (``Image.draft``) and other
      formats reduced by box averaging before resampling. A 144 Mpx PNG otherwise took 2.4 GB.

    Args:
        image: the image or where it is.
        what: who the image belongs to, for the error message (e.g. ``"item #3 (id 'cat-7')"``).

    Raises:
        ImageTooLargeError: the image has more pixels than PIL's decompression-bomb limit (about
            179 Mpx); the message names the file.
        ValueError: with ``what``, when the image is missing or does not decode; the message starts
            with ``what`` and names the path, instead of PIL's bare error. Without ``what``, PIL's
            own error (``FileNotFoundError``, ``UnidentifiedImageError``, ...) propagates.
    """
    try:
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        name = _name(image, what)
        if isinstance(image, Image.Image):
            return _to_rgb(_within_budget(image, name, image, own=False), _stored_bits(image))
        with open_image(image, what) as opened:
            bits = _stored_bits(opened)
            fitted = _within_budget(opened, name, image, own=True)
            if fitted is opened:
                return _to_rgb(opened, bits)
        return _to_rgb(fitted, bits)  # the full-size pixels went with the file
    except ImageTooLargeError:
        raise
    except _IMAGE_ERRORS as error:
        if what is None:
            raise
        source = repr(os.fspath(image)) if isinstance(image, (str, os.PathLike)) else f"({type(image).__name__})"
        raise ValueError(f"{what}: cannot read its image {source} ({type(error).__name__}: {error})") from error


class ImageTooLargeError(ValueError):
    """An image with more pixels than PIL's decompression-bomb limit; the message names the file,
    ``problem`` is the message without the name (for errors that name the place themselves)."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name}: {problem}")
        self.problem = problem


#: Images with more pixels than this are downscaled as they are read (:func:`load_image`), with a
#: warning. 40 Mpx is more than any vision encoder takes in (Qwen2-VL's processor stops at 12.8 Mpx,
#: LLaVA-1.5 sees 336 x 336) and more than most cameras take (24-48 Mpx), while a 40 Mpx RGB image
#: is 120 MB decoded and about 0.5 GB once a processor holds it as floats.
MAX_IMAGE_PIXELS = 40_000_000
#: The environment variable that overrides :data:`MAX_IMAGE_PIXELS` (a whole number of pixels).
MAX_IMAGE_PIXELS_ENV = "MMPO_MAX_IMAGE_PIXELS"
#: The EXIF orientation tag (``PIL.ExifTags.Base.Orientation``).
_ORIENTATION = 0x0112
#: Formats whose later frames belong to the first (an MPO photo's preview and depth map): not logged.
_ONE_PICTURE_FORMATS = frozenset({"MPO"})
#: What has been logged about which image (:func:`_log_once`): ``(kind, absolute path or hash of
#: the bytes)``, and per in-memory image (weakly held, so a new image at an old address is new).
_logged: set[tuple[str, str]] = set()
_logged_images: dict[int, tuple[weakref.ref, set[str]]] = {}  # PIL images are unhashable: by id, while alive


def max_image_pixels() -> int:
    """The pixel budget: ``$MMPO_MAX_IMAGE_PIXELS`` when set (e.g. ``20000000``), else :data:`MAX_IMAGE_PIXELS`."""
    text = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip().replace("_", "")
    if not text:
        return MAX_IMAGE_PIXELS
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (math.isfinite(value) and value >= 1 and value == int(value)):
        raise ValueError(f"{MAX_IMAGE_PIXELS_ENV} must be a whole number of pixels >= 1 (e.g. 40000000), "
                         f"not {text!r}")
    return int(value)


def open_image(image: str | os.PathLike | bytes, what: str | None = None) -> Image.Image:
    """``PIL.Image.open`` of a path or of encoded bytes (use it in a ``with`` block): only the header is read.

    PIL's ``DecompressionBombWarning`` is silenced, since mmpo downscales such images itself and
    says so (:func:`load_image`); its ``DecompressionBombError`` becomes an :class:`ImageTooLargeError`
    naming the file.
    """
    source = io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else image
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(source)
        except Image.DecompressionBombError as error:
            limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
            raise ImageTooLargeError(_name(image, what), (
                f"{error} This limit ({limit:,} pixels, twice PIL.Image.MAX_IMAGE_PIXELS) keeps a small file from "
                f"taking gigabytes to decode: downscale the image (mmpo would read at most {max_image_pixels():,} "
                f"pixels of it anyway, ${MAX_IMAGE_PIXELS_ENV})")) from error


def check_image(image: str | os.PathLike | bytes | Image.Image, what: str | None = None) -> None:
    """Check an image before :func:`load_image` reads it, without decoding its pixels.

    A path or encoded bytes: the header parses and the data verifies (PIL ``verify``: structure and
    checksums). What :func:`load_image` will do to the image (take one of several frames, downscale
    it) is logged now, once per file (a PIL image: only that is done, nothing is read).

    Raises:
        ImageTooLargeError: over PIL's decompression-bomb limit.
        OSError, SyntaxError, ValueError: PIL's errors for a file that is missing or does not parse.
    """
    name = _name(image, what)
    if isinstance(image, Image.Image):
        _note(image, name, image)
        return
    with open_image(image, what) as opened:
        _note(opened, name, image)
        opened.verify()


def _name(image: Any, what: str | None) -> str:
    """How messages name an image: its path (after ``what``), else ``what``, else what it is."""
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image) if what is None else f"{what}: {os.fspath(image)}"
    if getattr(image, "filename", None):
        return str(image.filename)
    if what is not None:
        return what
    return f"image bytes ({len(image):,} bytes)" if isinstance(image, (bytes, bytearray)) else "an in-memory image"


def _log_once(key: Any, kind: str, message: str, *args: Any) -> None:
    """``logger.warning(message, *args)`` unless ``kind`` was logged for ``key`` before: a path, encoded
    bytes (by hash) or an in-memory image (a PIL image opened from a file counts as the file)."""
    if isinstance(key, Image.Image) and getattr(key, "filename", None):
        key = key.filename
    if isinstance(key, Image.Image):
        at = id(key)
        held = _logged_images.get(at)
        if held is None or held[0]() is not key:
            held = _logged_images[at] = (weakref.ref(key, lambda _: _logged_images.pop(at, None)), set())
        seen = held[1]
        if kind in seen:
            return
        seen.add(kind)
    else:
        name = ("sha256:" + hashlib.sha256(key).hexdigest() if isinstance(key, (bytes, bytearray))
                else os.path.abspath(key))
        if (kind, name) in _logged:
            return
        _logged.add((kind, name))
    logger.warning(message, *args)


def _note(image: Image.Image, name: str, key: Any) -> None:
    """Log (once per ``key``) that the image has several frames, and that it is over the pixel budget."""
    try:
        frames = int(getattr(image, "n_frames", 1) or 1)  # counted from the header, or by reading the file
    except Exception:  # a damaged file: found when it is decoded
        frames = 1
    if frames > 1 and image.format not in _ONE_PICTURE_FORMATS:
        _log_once(key, "frames", "%s: a %s image of %d frames; mmpo uses frame %d (counting from 0) and ignores "
                  "the others", name, image.format or "multi-frame", frames, image.tell())
    width, height = image.size
    budget = max_image_pixels()
    if width * height > budget:
        _log_once(key, "pixels", "%s: %dx%d image (%s pixels) is over the pixel budget of %s ($%s); it is "
                  "downscaled to %dx%d as it is read", name, width, height, f"{width * height:,}", f"{budget:,}",
                  MAX_IMAGE_PIXELS_ENV, *_fitted_size(width, height, budget))


def _reduction(width: int, height: int, budget: int) -> int:
    """The smallest whole factor that brings a ``width`` x ``height`` image within ``budget`` pixels
    (``Image.reduce`` rounds the sides up)."""
    factor = max(1, math.ceil(math.sqrt(width * height / budget)))
    while math.ceil(width / factor) * math.ceil(height / factor) > budget:
        factor += 1
    return factor


def _fitted_size(width: int, height: int, budget: int) -> tuple[int, int]:
    """The size an image over ``budget`` pixels is read at: each side divided by :func:`_reduction`."""
    factor = _reduction(width, height, budget)
    return math.ceil(width / factor), math.ceil(height / factor)


#: Modes ``Image.reduce`` cannot take, and what they are reduced as; alpha is averaged premultiplied
#: (so the colour of transparent pixels does not bleed into their neighbours) and restored after.
_REDUCED_AS = {"1": "L", "P": "RGB", "I;16": "I", "I;16L": "I", "I;16B": "I", "I;16N": "I",
               "RGBA": "RGBa", "LA": "La", "PA": "RGBA"}
_RESTORED_AS = {"RGBa": "RGBA", "La": "LA"}


def _within_budget(image: Image.Image, name: str, key: Any, own: bool) -> Image.Image:
    """``image``, or a copy downscaled to :func:`max_image_pixels` pixels by averaging whole blocks
    (``Image.reduce``; a JPEG is first decoded at 1/2, 1/4 or 1/8 scale by ``Image.draft``); what is
    done is logged once per ``key`` (:func:`_note`). ``own``: the image was opened here, so its loader
    may be told to decode a JPEG at a smaller scale."""
    _note(image, name, key)
    width, height = image.size
    budget = max_image_pixels()
    if width * height <= budget:
        return image
    factor, size = _reduction(width, height, budget), _fitted_size(width, height, budget)
    orientation = image.getexif().get(_ORIENTATION)
    if own and image.format == "JPEG":
        image.draft(image.mode, size)  # decoded at 1/2, 1/4 or 1/8 of its size, still at least `size`
    scale = round(width / image.width)  # what the draft did (1: nothing)
    source = image.convert("RGBA") if image.mode == "P" and "transparency" in image.info else image
    while source.mode in _REDUCED_AS:
        source = source.convert(_REDUCED_AS[source.mode])
    step = factor // scale
    fitted = source.reduce(step) if step > 1 else source
    if fitted.size != size:  # a draft to a scale that does not divide the factor: a small remainder
        fitted = fitted.resize(size, Image.Resampling.BICUBIC)
    if fitted.mode in _RESTORED_AS:
        fitted = fitted.convert(_RESTORED_AS[fitted.mode])
    if fitted is image:  # a JPEG drafted to exactly the size: decode it now, in its own format
        return image
    if orientation:  # the copy keeps a JPEG's EXIF bytes, not a TIFF's own orientation tag
        fitted.getexif()[_ORIENTATION] = orientation
    return fitted


def _stored_bits(image: Image.Image) -> int | None:
    """The bit depth the pixels were stored with: 16 for ``I;16*`` and for a PNG that PIL opens as
    ``I`` (PNG holds at most 16 bits a sample); unknown (None) for an in-memory ``I`` image."""
    return 16 if image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG") else None


def _to_rgb(image: Image.Image, bits: int | None = None) -> Image.Image:
    """``image`` as 8-bit RGB; see :func:`load_image` for what is done to which mode. ``bits``: the
    depth its greyscale values were stored with (:func:`_stored_bits` of the file), None: unknown."""
    bits = bits or _stored_bits(image)
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


def process_gone(pid: int) -> bool:
    """Whether no process ``pid`` runs on this host (one of another user still runs): how a writer
    tells a lock or a temporary folder left by a killed process from one in use."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists, under another user
    return False


def ensure_directory(target: str | os.PathLike, build: Callable[[Path], None], complete: str) -> tuple[Path, bool]:
    """The directory ``target``, built by ``build(folder)`` unless it already holds the file
    ``complete`` (which ``build`` writes last); returns ``(target, was_there)``.

    ``build`` fills a fresh temporary folder next to ``target``, which is then renamed into place
    (:func:`building_directory`), so an interrupted build never leaves a half-written entry (the
    temporary folder is removed). A stale ``target`` without ``complete`` is replaced. Two processes
    building the same entry at once each build their own copy; the first to finish is kept, the
    other discarded (logged), and both return the kept one.
    """
    target = Path(target)
    if (target / complete).exists():
        return target, True
    try:
        with building_directory(target, replace=True, exclusive=False) as folder:
            build(folder)
    except FileExistsError:
        if not (target / complete).exists():
            raise
        logger.info("%s was finished first by another process: keeping its copy, discarding this one", target)
    return target, False


#: The temporary siblings of a directory being written (:func:`building_directory`):
#: ``.NAME.building-TIME-PID@HOST-XXXX`` (the new content) and ``.NAME.old-TIME-PID@HOST-XXXX`` (the
#: directory it replaces, between the two renames). The pid names a concurrent writer, and lets the
#: next writer clean up after a killed one.
_ASIDE = r"\.+{name}\.(?P<kind>building|old)-(?P<time>\d+)-(?P<pid>\d+)@(?P<host>\w*)-"


@contextlib.contextmanager
def building_directory(target: str | os.PathLike, *, replace: bool = False,
                       exclusive: bool = True) -> Iterator[Path]:
    """A fresh temporary folder next to ``target`` to write a whole directory into; when the block
    ends without error its files are fsynced and it is renamed to ``target``.

    So ``target`` is, whatever moment a kill comes at, absent, the old directory or the complete
    new one — never half written. An exception in the block removes the folder and leaves
    ``target`` as it was.

    Args:
        target: the directory to write. An empty directory there is replaced; a non-empty one only
            with ``replace`` (it is renamed aside, the new one renamed in, then the old one
            deleted), else :class:`FileExistsError` before the block runs. A file there is refused.
        replace: replace a non-empty ``target``.
        exclusive: refuse (:class:`FileExistsError` naming its pid, before the block runs) when
            another live process is already writing ``target``; with ``exclusive=False`` both
            write, and the one that finishes second gets the error below.

    Raises:
        FileExistsError: as above; or, when the block ends, ``target`` changed since the block
            began (another process wrote it meanwhile): that copy is kept and this one discarded.
    """
    import re
    import socket
    import time

    target = Path(target)
    parent, name = target.parent, target.name
    parent.mkdir(parents=True, exist_ok=True)
    host = re.sub(r"\W", "", socket.gethostname())[:32]
    pattern = re.compile(_ASIDE.format(name=re.escape(name)))

    def stamp(kind: str) -> str:
        return f".{name}.{kind}-{time.time_ns()}-{os.getpid()}@{host}-"

    def identity() -> tuple[int, int] | None:
        try:
            info = target.stat(follow_symlinks=False)
        except FileNotFoundError:
            return None
        return info.st_dev, info.st_ino

    def alive(match: re.Match) -> bool:
        if match["host"] != host or os.name == "nt":
            return True  # not ours to judge
        return not process_gone(int(match["pid"]))

    with _locked(parent):
        # a killed writer's leftovers: its old directory goes back if the new one never came in
        for entry in sorted(parent.iterdir(), key=lambda p: p.name):
            match = pattern.match(entry.name)
            if match is None or alive(match):
                continue
            if match["kind"] == "old" and identity() is None:
                entry.rename(target)
                logger.warning("restored %s: a writer (pid %s) was killed while it replaced it", target, match["pid"])
            else:
                shutil.rmtree(entry, ignore_errors=True)
        before = identity()
        if before is not None:
            if not target.is_dir() or target.is_symlink():
                raise FileExistsError(f"{target} exists and is not a directory: not replaced")
            if not replace and any(target.iterdir()):
                raise FileExistsError(f"{target} already exists and holds files: not replaced")
        folder = Path(tempfile.mkdtemp(prefix=stamp("building"), dir=parent))
    try:
        others = sorted((int(m["time"]), entry.name, m["pid"]) for entry in parent.iterdir()
                        if entry != folder and (m := pattern.match(entry.name)) and m["kind"] == "building"
                        and alive(m))
        mine = (int(pattern.match(folder.name)["time"]), folder.name)
        if exclusive and others and others[0][:2] < mine:
            raise FileExistsError(f"{target} is being written by another process (pid {others[0][2]}, into "
                                  f"{parent / others[0][1]}): wait for it to finish, or write somewhere else")
        if others:
            logger.info("%s is also being written by process %s; the first to finish is kept", target, others[0][2])
        yield folder
        for path in sorted(folder.rglob("*"), reverse=True):  # the files, then their folders
            if path.is_file() and not path.is_symlink():
                with open(path, "rb") as file:
                    os.fsync(file.fileno())
            elif path.is_dir():
                _fsync_directory(path)
        _fsync_directory(folder)
        old = None
        with _locked(parent):
            if identity() != before:
                raise FileExistsError(f"{target} was written by another process while this one was writing it: "
                                      "kept that copy, discarded this one")
            if before is not None:
                old = parent / (stamp("old") + os.urandom(4).hex())
                target.rename(old)
            folder.rename(target)  # a kill between the two renames: the next writer puts the old one back
            _fsync_directory(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # gone after the rename, unless the write failed or lost


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``directory`` (released by the kernel if the process dies);
    where directories cannot be locked, nothing."""
    try:
        import fcntl

        fd = os.open(directory, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        with contextlib.suppress(OSError):  # a file system without locks: unlocked
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


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


#: JSON nested deeper than this (arrays and objects) is refused. A record nests 4 levels (a
#: conversation, a message, its content parts, a part), ``meta`` a few more; Python's own parser
#: stops near 1,000 with a ``RecursionError``, and so would every later deep copy or dump.
MAX_JSON_DEPTH = 64
#: The longest number (in characters) JSON values may hold. A float needs at most 25 characters and
#: an id of 100 digits would be odd already; Python refuses to convert integers of more than 4,300 digits.
MAX_JSON_NUMBER_CHARS = 100


class JsonLimitError(ValueError):
    """JSON that parses but is over :data:`MAX_JSON_DEPTH` or :data:`MAX_JSON_NUMBER_CHARS`.

    ``field`` is the top-level key the problem is under (None: the whole value); the message says
    where inside it."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def parse_json(text: str | bytes) -> Any:
    """``json.loads(text)`` within mmpo's limits: numbers of at most :data:`MAX_JSON_NUMBER_CHARS`
    characters, nesting of at most :data:`MAX_JSON_DEPTH` levels.

    Raises:
        json.JSONDecodeError: not JSON.
        JsonLimitError: over a limit (also for nesting so deep that Python's parser gives up).
    """
    try:
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float)
    except RecursionError:
        raise JsonLimitError(_TOO_DEEP) from None
    _check_json_limits(value)
    return value


_TOO_DEEP = f"nested too deeply: more than {MAX_JSON_DEPTH} levels of arrays and objects"


@dataclasses.dataclass(frozen=True)
class _LongNumber:
    """A number literal over :data:`MAX_JSON_NUMBER_CHARS`, kept unconverted until it is reported."""

    length: int


def _parse_int(literal: str) -> int | _LongNumber:
    return _LongNumber(len(literal)) if len(literal) > MAX_JSON_NUMBER_CHARS else int(literal)


def _parse_float(literal: str) -> float | _LongNumber:
    return _LongNumber(len(literal)) if len(literal) > MAX_JSON_NUMBER_CHARS else float(literal)


def _check_json_limits(value: Any) -> None:
    """Raise :class:`JsonLimitError` at a number over the limit or a level over the depth, naming
    where it is (``meta.scores[3]``); walked without recursion."""
    if isinstance(value, _LongNumber):
        raise _json_limit_error(value)
    stack = [(value, 0)] if isinstance(value, (dict, list)) else []
    while stack:
        item, depth = stack.pop()
        if depth >= MAX_JSON_DEPTH:
            raise _json_limit_error(value)
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
            elif isinstance(child, _LongNumber):
                raise _json_limit_error(value)


def _json_limit_error(value: Any) -> JsonLimitError:
    """The error for the first problem :func:`_check_json_limits` finds in ``value``, with its place
    (walked again, keeping the path this time: only for a value that has a problem)."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    while stack:
        item, keys = stack.pop()
        field = keys[0] if keys and isinstance(keys[0], str) else None
        where = "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in keys).lstrip(".")
        if isinstance(item, _LongNumber):
            return JsonLimitError(f"the number at {where or 'the top'!r} has {item.length:,} characters, more "
                                  f"than the {MAX_JSON_NUMBER_CHARS} mmpo reads", field)
        if isinstance(item, (dict, list)):
            if len(keys) >= MAX_JSON_DEPTH:
                return JsonLimitError(_TOO_DEEP + (f" (under {field!r})" if field else ""), field)
            children = item.items() if isinstance(item, dict) else enumerate(item)
            stack.extend((child, (*keys, key)) for key, child in reversed(list(children)))
    return JsonLimitError(_TOO_DEEP)


@dataclasses.dataclass(frozen=True)
class BadLine:
    """A JSONL line (or an element of a JSON array) that is not UTF-8 text, not JSON or over mmpo's
    JSON limits (:func:`parse_json`); ``message`` names the file and the line, ``problem`` is the
    message without them (for errors that name the place themselves), ``field`` the top-level key
    the problem is under, when known."""

    number: int
    message: str
    problem: str = ""
    field: str | None = None


def read_jsonl_lines(path: str | os.PathLike) -> list[tuple[int, Any]]:
    """``(line number, value)`` per non-blank line of a JSONL file, numbers counting from 1; a line
    that is not UTF-8 text, not JSON or over the limits of :func:`parse_json` (too deeply nested, a
    number too long) gives a :class:`BadLine` as its value.

    Lines are decoded one at a time, so one bad byte costs one line, not the file. A UTF-8 byte-order
    mark before the first line (as Windows tools write) is ignored.
    """
    path = Path(path)
    rows: list[tuple[int, Any]] = []
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                rows.append((number, _bad_line(path, number, f"not UTF-8 text: {exc}")))
                continue
            if not line.strip():
                continue
            try:
                rows.append((number, parse_json(line)))
            except json.JSONDecodeError as exc:
                rows.append((number, _bad_line(path, number, f"not JSON: {exc}")))
            except JsonLimitError as exc:
                rows.append((number, _bad_line(path, number, f"over mmpo's JSON limits: {exc}", exc.field)))
    return rows


def read_json_array(path: str | os.PathLike) -> list[tuple[int, Any]]:
    """``(line number, value)`` per element of a file holding one JSON array (the line each element
    starts on); an element over the limits of :func:`parse_json` gives a :class:`BadLine`, and the
    rest of the array is still read.

    Raises:
        ValueError: the file is not UTF-8 text or not one JSON array (naming the file and line).
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"cannot read {path}: it is not UTF-8 text ({exc})") from exc
    decoder = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float)
    rows: list[tuple[int, Any]] = []
    line, counted, newline = 1, 0, "\n"  # the line number at the offset `counted`

    def fail(at: int, problem: str) -> ValueError:
        return ValueError(f"cannot read {path}: it starts as a JSON array but does not parse as one: {problem} "
                          f"(line {text.count(newline, 0, at) + 1})")

    at = _JSON_SPACE.match(text).end()
    if not text.startswith("[", at):
        raise fail(at, "expected '['")
    at = _JSON_SPACE.match(text, at + 1).end()
    while not text.startswith("]", at):
        line, counted = line + text.count(newline, counted, at), at
        try:
            value, end = decoder.raw_decode(text, at)
            _check_json_limits(value)
        except json.JSONDecodeError as exc:
            raise fail(exc.pos, exc.msg) from exc
        except RecursionError:
            end, value = _json_value_end(text, at), _bad_line(path, line, f"over mmpo's JSON limits: {_TOO_DEEP}")
            if end is None:
                raise fail(at, "an unclosed array or object") from None
        except JsonLimitError as exc:
            value = _bad_line(path, line, f"over mmpo's JSON limits: {exc}", exc.field)
        rows.append((line, value))
        at = _JSON_SPACE.match(text, end).end()
        if text.startswith(",", at):
            at = _JSON_SPACE.match(text, at + 1).end()
            if text.startswith("]", at):
                raise fail(at, "a ',' before the closing ']'")
        elif not text.startswith("]", at):
            raise fail(at, "expected ',' or ']' after an element")
    if text[at + 1:].strip():
        raise fail(at + 1, "more after the array's closing ']'")
    return rows


_JSON_SPACE = re.compile(r"[ \t\n\r]*")
#: The tokens that matter for finding where a JSON value ends: whole strings, and brackets.
_JSON_BRACKETS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _json_value_end(text: str, at: int) -> int | None:
    """Where the array or object starting at ``at`` ends, by counting brackets outside strings (for a
    value nested too deeply for Python's parser); None if it never closes."""
    depth = 0
    for token in _JSON_BRACKETS.finditer(text, at):
        if token[0] in "[{":
            depth += 1
        elif token[0] in "]}":
            depth -= 1
            if depth == 0:
                return token.end()
    return None


def _bad_line(path: Path, number: int, problem: str, field: str | None = None) -> BadLine:
    return BadLine(number, f"{path} line {number} is {problem}", problem, field)


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
