"""Reading, validating and writing preference records.

``load_records`` reads records in any layout of ``formats.py`` and checks every record before
training sees it. It reads them from

* a file: ``.jsonl`` (JSON lines); ``.json`` (a JSON array of records when its first character is
  ``[``, else JSON lines, which is what ``datasets.Dataset.to_json`` writes); ``.parquet`` (as data
  sets are published on the Hub, e.g. RLAIF-V's shards); ``.arrow`` (Arrow IPC, the stream format
  ``datasets`` writes or the file format). Any other suffix is an error naming the file;
* a directory: one written by ``save_to_disk`` (it holds ``state.json`` or ``dataset_info.json``;
  of a ``DatasetDict``, ``dataset_dict.json`` and one folder per split), else its records files (the
  suffixes above, hidden files left out, no subdirectories) read as shards in name order, or those
  of one ``split`` when they are named by split (``train-00000-of-00002.parquet``), or the files of
  the folder ``split`` (``DIR/train/*.parquet``);
* a glob pattern (``data/train-*.parquet``; ``**`` spans directories): the files it matches, in
  name order;
* a ``datasets.Dataset`` or ``datasets.IterableDataset``, or a list of dicts.

Parquet and Arrow rows are read a batch at a time as stored: an image column stays the
``{"bytes", "path"}`` struct ``datasets`` writes, decoded when the record is validated; a struct
with a path and no bytes, like any relative image path, is resolved against the directory of the
file that holds it. A bad record's error names its index in the whole source and, for a file, the
file and the row in it (the line for JSON: the line of a JSON line, the line a JSON array's element
starts on) and the column as the file spells it.

``save_records`` writes JSONL atomically; ``records_to_dataset`` builds a ``datasets.Dataset`` that
``load_records`` reads back. JSONL files are read and written with :mod:`mmpo.io`.

Image placeholders: mmpo puts the record's image into the prompt itself, so a *leading* ``<image>``
(as LLaVA-style data writes ``"<image>\nWhat is ...?"``) is removed from the prompt, counted in
``LoadResult.stripped_placeholders`` and logged; an ``<image>`` or ``<video>`` anywhere else in a
prompt, or anywhere in a response, makes the record bad (the processor would expand it into image
tokens). The processor's own placeholder tokens (``<|image_pad|>``, ``<start_of_image>``, ...) are
checked before training by ``mmpo.data.preflight``, which knows the processor.

A bad record raises by default: a long run that quietly trained on part of its data would report
results for a data set nobody chose. ``on_error="skip"`` opts in to dropping bad records; each one
is kept in ``LoadResult.errors`` and the summary is logged as a warning; a source whose every
record is bad is ``NoValidRecordsError`` all the same.

What a records file cannot do: JSON nested too deeply or numbers too long to convert
(:func:`mmpo.io.parse_json`) make one bad record, not a traceback; a text longer than
``max_text_chars`` is cut before anything tokenises it (a 50 MB response took 6.5 GB); an image path
leading outside the image root is a bad record unless allowed (``allow_images_outside_root``;
absolute paths, which mmpo's own writers use, too when ``image_root`` is given, unless
``allow_absolute_image_paths``); an image over the
pixel budget or of several frames is logged once (:func:`mmpo.io.check_image`). A source of several
splits (a ``DatasetDict``, split folders, shards named by split) is read one ``split`` at a time.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import glob
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from numbers import Real
from pathlib import Path
from typing import Any, Literal

import datasets
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq

from mmpo.data.formats import FORMATS, FieldProblem, detect_format, native_fields, source_field
from mmpo.io import (
    BadLine,
    ImageTooLargeError,
    JsonLimitError,
    atomic_writer,
    check_image,
    image_reference,
    json_line,
    open_image,
    parse_json,
    read_json_array,
    read_jsonl_lines,
)
from mmpo.methods.dama.factors import DATA_ALPHA_RANGE
from mmpo.types import PreferenceRecord, image_list, prompt_messages

logger = logging.getLogger(__name__)

#: The folder, next to a saved JSONL file, that holds its in-memory images as PNG files.
IMAGES_DIR = "images"

#: The placeholder LLaVA-style data puts before the question; removed at the start of a prompt.
IMAGE_PLACEHOLDER = "<image>"
#: Placeholders no prompt (after its start) or response may hold.
PLACEHOLDERS = (IMAGE_PLACEHOLDER, "<video>")
_LEADING_PLACEHOLDER = re.compile(r"\s*<image>\s*")
_ONLY_PLACEHOLDER = f"empty prompt: it holds only the image placeholder {IMAGE_PLACEHOLDER!r} and no question"


@dataclasses.dataclass(frozen=True)
class RecordError:
    """What is wrong with one record: its position in the source, its id if known, the field, the problem.

    ``index`` counts records across the whole source, from 0. A record read from a file also has
    ``file`` (its path) and ``row``, its position in that file from 0 (as ``datasets`` and pandas
    count rows); for a JSON-lines file ``line`` is its line number, from 1, as an editor shows it.
    """

    index: int
    id: str | None
    field: str | None
    message: str
    file: str | None = None
    row: int | None = None
    line: int | None = None

    def __str__(self) -> str:
        """``#3 (id 'r3') field 'chosen': ...``; from a file ``#1503 (/data/b.parquet row 3, id '7') ...``."""
        details = [] if self.file is None else [_location(self.file, self.row, self.line)]
        details += [] if self.id is None else [f"id {self.id!r}"]
        where = f"#{self.index}" + (f" ({', '.join(details)})" if details else "")
        what = "" if self.field is None else f" field {self.field!r}"
        return f"{where}{what}: {self.message}"


def _location(file: str, row: int | None, line: int | None) -> str:
    return f"{file} line {line}" if line is not None else f"{file} row {row}"


class RecordValidationError(ValueError):
    """The first bad record of a source read with ``on_error="raise"``; the details are in ``error``."""

    def __init__(self, error: RecordError):
        super().__init__(f"invalid record {error} (to skip bad records instead: on_bad_record: skip in the config "
                         "or on the command line, on_error='skip' in load_records)")
        self.error = error


class NoValidRecordsError(ValueError):
    """Every record of a source is bad (read with ``on_error="skip"``, or dropped by the preflight):
    raised at once, instead of a training run that fails later on an empty data set."""

    def __init__(self, message: str, errors: list[RecordError]):
        super().__init__(message)
        self.errors = errors


def no_valid_records(lead: str, errors: list[RecordError], shown: int = 3) -> NoValidRecordsError:
    """The error for a source whose records are all bad: ``lead`` (which names the source), how many
    there are, the first few errors."""
    first = "; ".join(str(error) for error in errors[:shown])
    more = f" (and {len(errors) - shown} more)" if len(errors) > shown else ""
    return NoValidRecordsError(f"{lead}: all {len(errors)} are bad; the first: {first}{more}", errors)


@dataclasses.dataclass
class LoadResult:
    """The records that passed validation and one ``RecordError`` per record that did not."""

    records: list[PreferenceRecord]
    errors: list[RecordError] = dataclasses.field(default_factory=list)
    #: how many prompts had a leading ``<image>`` placeholder removed (see the module docstring)
    stripped_placeholders: int = 0
    #: the layout the records were read in (``mmpo``, ``trl`` or ``rlaif-v``; None: not from :func:`load_records`)
    format: str | None = None
    #: where each record came from, aligned with ``records``: ``{"index": ...}`` (its index in the
    #: whole source) plus ``file``, ``row`` and ``line`` for a file, as :class:`RecordError` takes them;
    #: so errors found later (:func:`mmpo.data.preflight.preflight`) name the same place
    origins: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: how many texts (prompts, responses) were cut to ``max_text_chars`` characters (each one logged)
    cut_texts: int = 0

    def summary(self, max_errors: int = 10) -> str:
        """``"loaded 98 of 100 records; skipped 2: #3 field 'chosen': empty response; ..."``"""
        text = f"loaded {len(self.records)} of {len(self.records) + len(self.errors)} records"
        if not self.errors:
            return text
        shown = "; ".join(str(error) for error in self.errors[:max_errors])
        more = f"; and {len(self.errors) - max_errors} more" if len(self.errors) > max_errors else ""
        return f"{text}; skipped {len(self.errors)}: {shown}{more}"


#: The default of ``max_text_chars``: a prompt's or a response's text beyond this many characters is
#: cut before it is tokenised. Training keeps at most ``max_length`` tokens of a response, and a
#: model's window is tens of thousands of tokens; at 2 to 6 characters a token (English is about 4,
#: Chinese 1 to 2) 200,000 characters are more than 32k tokens of almost any text, so the cut changes
#: nothing the model sees. Tokenising a 50 MB response whole took 6.5 GB and minutes.
MAX_TEXT_CHARS = 200_000
#: How many cut texts are logged one by one (the rest are counted in one line).
_CUT_TEXTS_LOGGED = 5


@dataclasses.dataclass
class _Options:
    """How the rows of one part are read (:func:`load_records`'s arguments)."""

    base_dir: Path
    check_images: bool
    max_text_chars: int | None
    allow_images_outside_root: bool
    allow_absolute_image_paths: bool

    @functools.cached_property
    def root(self) -> str:
        """``base_dir`` with its symbolic links resolved: where images must lie (:func:`_inside_root`)."""
        return os.path.realpath(self.base_dir)


def load_records(
    source: str
    | os.PathLike
    | datasets.Dataset
    | datasets.IterableDataset
    | datasets.DatasetDict
    | Sequence[dict[str, Any] | PreferenceRecord],
    *,
    format: Literal["auto", "mmpo", "trl", "rlaif-v"] = "auto",
    on_error: Literal["raise", "skip"] = "raise",
    image_root: str | os.PathLike | None = None,
    check_images: bool = True,
    split: str | None = None,
    max_text_chars: int | None = MAX_TEXT_CHARS,
    allow_images_outside_root: bool = False,
    allow_absolute_image_paths: bool | None = None,
) -> LoadResult:
    """Read and validate preference records.

    Args:
        source: a records file (``.jsonl``; ``.json``; ``.parquet``; ``.arrow``, see the module
            docstring); a directory of such files (its shards, read in name order), of split folders
            or one written by ``save_to_disk`` (of a ``Dataset`` or a ``DatasetDict``); a glob pattern
            (``data/train-*.parquet``, matches read in name order); a ``datasets.Dataset``,
            ``IterableDataset`` or ``DatasetDict``; or a list of dicts (``PreferenceRecord`` objects
            are accepted too).
        format: ``"auto"`` tells the layout from the columns, or the first row's keys (see
            ``formats.detect_format``); every file of the source must hold the same one. Or force
            ``"mmpo"``, ``"trl"`` or ``"rlaif-v"``.
        on_error: ``"raise"`` raises ``RecordValidationError`` at the first bad record;
            ``"skip"`` leaves bad records out, lists them in ``errors`` and logs the summary.
        image_root: the directory relative image paths start from; by default the directory of the
            file each record comes from (the dataset directory for ``save_to_disk`` output, else the
            working directory).
        check_images: check that every image file exists and every image decodes; turn off to read
            the text alone (image paths are still resolved).
        split: the split to read from a source of several: a ``DatasetDict`` (or its ``save_to_disk``
            directory), a directory of split folders (``DIR/train/*.parquet``) or of shards named by
            split (``train-00000-of-00002.parquet``). A source of one split is read without it.
        max_text_chars: the longest prompt (all its text together) and response read, in characters;
            longer ones are cut, each named in a warning (None: no limit). See :data:`MAX_TEXT_CHARS`.
        allow_images_outside_root: read image paths that lead outside the image root (``image_root``,
            else the records file's directory; the working directory for an in-memory source), after
            ``..`` and symbolic links are resolved. Off, such a relative path is a bad record naming
            the path.
        allow_absolute_image_paths: read absolute image paths wherever they point. ``None`` (the
            default): read them unless ``image_root`` is given — mmpo's own writers refer to images
            outside the written file's directory by absolute path, and a given ``image_root`` is a
            promise that the images lie under it. Off, an absolute path must lie inside the image
            root too, unless ``allow_images_outside_root``.

    Returns:
        the valid records, in source order, and the errors (each naming the record's index in the
        source and, for a file, the file and its line or row there). Records without an id get their
        index in the source as id; ids must be unique across the source. Image paths become absolute;
        in-memory images (PIL, bytes, ``datasets`` image dicts) become PIL images opened lazily.

    Raises:
        FileNotFoundError: no such file or directory, a pattern that matches no file, a directory
            with no records file.
        ValueError: an unsupported file type (``.csv``, ...), a file that does not parse as a whole
            (a JSON array, Parquet, Arrow), files that hold different formats, a source of several
            splits without ``split`` (naming them), with ``on_error="raise"`` a bad record
            (``RecordValidationError``), with ``on_error="skip"`` a source whose every record is bad
            (``NoValidRecordsError``).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"format must be 'auto' or one of {FORMATS}, got {format!r}")
    if max_text_chars is not None and (isinstance(max_text_chars, bool) or not isinstance(max_text_chars, int)
                                       or max_text_chars < 1):
        raise ValueError(f"max_text_chars must be a whole number >= 1 or None, got {max_text_chars!r}")
    if allow_absolute_image_paths is None:
        allow_absolute_image_paths = image_root is None
    parts = _open_source(source, split)
    fmt = _detect_format(parts) if format == "auto" else format

    records: list[PreferenceRecord] = []
    errors: list[RecordError] = []
    origins: list[dict[str, Any]] = []
    first_use: dict[str, str] = {}  # id -> the record that used it first, as "#3" or "#3 (file row 3)"
    stripped = cut = 0
    index = 0  # across the whole source
    for part in parts:
        options = _Options(part.base_dir if image_root is None else Path(os.path.abspath(image_root)),
                           check_images, max_text_chars, allow_images_outside_root, allow_absolute_image_paths)
        for row_number, row in enumerate(part.rows):
            place: dict[str, Any] = {}
            if part.file is not None:
                line = None if part.lines is None else part.lines[row_number]
                place = {"file": part.file, "row": row_number, "line": line}
            try:
                where = f"record #{index}" + (f" ({_location(**place)})" if place else "")
                record, had_placeholder, cuts = _record(row, index, fmt, options, where)
                if record.id in first_use:
                    raise FieldProblem("id", f"duplicate id, first used by record {first_use[record.id]}")
            except FieldProblem as problem:
                error = RecordError(index, _row_id(row, fmt), source_field(fmt, problem.field), problem.message,
                                    **place)
                if on_error == "raise":
                    raise RecordValidationError(error) from problem
                errors.append(error)
            else:
                first_use[record.id] = f"#{index}" + (f" ({_location(**place)})" if place else "")
                records.append(record)
                origins.append({"index": index, **place})
                stripped += had_placeholder
                for field, length in cuts:
                    cut += 1
                    if cut <= _CUT_TEXTS_LOGGED:
                        logger.warning("record %s", RecordError(
                            index, record.id, source_field(fmt, field),
                            f"{length:,} characters, cut to the first {max_text_chars:,} (max_text_chars)", **place))
            index += 1

    result = LoadResult(records, errors, stripped, fmt, origins, cut)
    if cut > _CUT_TEXTS_LOGGED:
        logger.warning("cut %d texts in all to max_text_chars=%s characters (the first %d are named above)",
                       cut, f"{max_text_chars:,}", _CUT_TEXTS_LOGGED)
    if stripped:
        logger.info("removed the leading %s placeholder from %d prompts (mmpo places the image itself)",
                    IMAGE_PLACEHOLDER, stripped)
    if errors and not records:
        raise no_valid_records(f"none of the {len(errors)} records of {_describe(source, parts)} is valid", errors)
    if errors:
        logger.warning(result.summary())
    return result


def _describe(source: Any, parts: list[_Part]) -> str:
    """How an error names a whole source: its files, else what it is."""
    files = [part.file for part in parts if part.file is not None]
    if files:
        return files[0] if len(files) == 1 else f"{len(files)} files ({files[0]}, ...)"
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return f"the {type(source).__name__} given"


# ---------------------------------------------------------------------------------------------
# Reading: a source becomes one _Part per file (or one for an in-memory source).

#: The records files ``load_records`` reads, by suffix (see the module docstring).
RECORD_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow")
#: A directory holding one of these was written by ``save_to_disk`` and is read with ``load_from_disk``.
_SAVED_DATASET_FILES = ("state.json", "dataset_info.json", "dataset_dict.json")
#: The file a ``DatasetDict.save_to_disk`` directory holds (its splits are folders beside it).
_DATASET_DICT_FILE = "dataset_dict.json"
_GLOB_CHARACTERS = "*?["
#: Rows converted from Arrow to Python at a time (their images stay encoded bytes).
_BATCH_ROWS = 256


@dataclasses.dataclass
class _Part:
    """The rows of one file, or of a whole in-memory source."""

    rows: Iterable[Any]
    #: the column names or first row's keys, which tell the format (None: no readable row)
    keys: list[str] | None
    #: where the part's relative image paths start
    base_dir: Path
    #: the file's absolute path (None for an in-memory source or a ``save_to_disk`` directory)
    file: str | None = None
    #: a JSON file: each row's line number (where it starts, in a JSON array)
    lines: list[int] | None = None


def _open_source(source: Any, split: str | None = None) -> list[_Part]:
    """The parts of ``source`` (of its ``split``), each opened (so that a missing or unreadable file
    fails before any record is validated) but with its rows not yet read where the file format allows."""
    if isinstance(source, (str, os.PathLike)):
        return _open_path(os.path.expanduser(os.fspath(source)), split)
    if isinstance(source, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return [_dataset_part(source[_pick_split(list(source), split, "the DatasetDict given")], Path.cwd())]
    if isinstance(source, (datasets.Dataset, datasets.IterableDataset)):
        _check_one_split(source, split, f"the {type(source).__name__} given")
        return [_dataset_part(source, Path.cwd())]
    if split is not None:
        raise ValueError(f"split={split!r} picks one split of a source of several, but a {type(source).__name__} "
                         "holds one")
    if isinstance(source, (list, tuple)):
        rows = [_as_row(item) for item in source]
        return [_Part(rows, _first_keys(rows), Path.cwd())]
    raise TypeError(
        f"cannot read records from a {type(source).__name__}: expected a path (a records file, a directory "
        "of them or a saved dataset, a glob pattern), a datasets.Dataset or a list of dicts"
    )


def _open_path(text: str, split: str | None) -> list[_Part]:
    """A file, a directory of files (or of split folders) or a ``save_to_disk`` directory, else a glob pattern."""
    path = Path(os.path.abspath(text))
    if path.is_file():
        if split is not None:
            raise ValueError(f"{path} is one file, but a split ({split!r}) was asked for: a split is read from a "
                             "DatasetDict saved with save_to_disk or a directory of split folders or split shards")
        return [_open_file(path)]
    if path.is_dir():
        if (path / _DATASET_DICT_FILE).is_file():
            splits = datasets.load_from_disk(str(path))
            return [_dataset_part(splits[_pick_split(list(splits), split, str(path))], path)]
        if any((path / name).is_file() for name in _SAVED_DATASET_FILES):
            dataset = datasets.load_from_disk(str(path))
            _check_one_split(dataset, split, str(path))
            return [_dataset_part(dataset, path)]
        files = sorted(child for child in path.iterdir() if _is_records_file(child))
        if files:
            shards = _shards_by_split(files)
            if split is not None:
                if split not in shards:
                    named = f"shards of the splits {sorted(shards)}" if shards else "no shards named by split"
                    raise ValueError(f"{path} has no split {split!r}: it holds {named} ({_SHARD_NAMES})")
                files = shards[split]
            elif len(shards) > 1:
                raise ValueError(f"{path} holds shards of the splits {sorted(shards)} ({_SHARD_NAMES}): {_CHOOSE}")
            return [_open_file(file) for file in files]
        folders = sorted(child.name for child in path.iterdir() if child.is_dir() and not child.name.startswith(".")
                         and (any(_is_records_file(f) for f in child.iterdir())
                              or any((child / name).is_file() for name in _SAVED_DATASET_FILES)))
        if split is not None and split in folders:
            return _open_path(str(path / split), None)
        found = f"; it has the split folders {folders}: {_CHOOSE}" if folders else ""
        if split is not None:
            raise FileNotFoundError(f"no split {split!r} in the directory {path}: no such folder of records files"
                                    f"{f'; its split folders are {folders}' if folders else ''}")
        raise FileNotFoundError(
            f"no records files in the directory {path}: expected files ending in "
            f"{', '.join(RECORD_FILE_SUFFIXES)} (or a directory written by save_to_disk); for files in "
            f"subdirectories pass a glob pattern such as 'DIR/*/*.parquet'{found}"
        )
    if any(character in text for character in _GLOB_CHARACTERS):
        if split is not None:
            raise ValueError(f"a glob pattern ({text!r}) names its files itself; a split ({split!r}) is read from a "
                             "DatasetDict saved with save_to_disk or a directory of split folders or split shards")
        matches = sorted(Path(match) for match in glob.glob(str(path), recursive=True))
        files = [match for match in matches if match.is_file()]
        if not files:
            found = f" (only the directories {[str(m) for m in matches[:3]]})" if matches else ""
            raise FileNotFoundError(f"no records files match the pattern {text!r}{found}")
        return [_open_file(file) for file in files]
    raise FileNotFoundError(f"no such records file or directory: {path}")


#: How to choose a split, in errors that list them.
_CHOOSE = ("choose one with train_split / eval_split in the training config (--train_split NAME on the command "
           "line), --split NAME for score-sentences and vision-rejected, or split= in load_records")
#: The shard names ``datasets`` and the Hub use: ``train-00000-of-00003.parquet``.
_SHARD_NAME = re.compile(r"(?P<split>[\w.]+?)-\d{5}-of-\d{5}(\.\w+)+$")
_SHARD_NAMES = "shards named like train-00000-of-00002.parquet"


def _shards_by_split(files: list[Path]) -> dict[str, list[Path]]:
    """``{split: its files}`` when every file is named ``SPLIT-NNNNN-of-NNNNN.*``, else ``{}``."""
    matches = [_SHARD_NAME.match(file.name) for file in files]
    if not all(matches):
        return {}
    shards: dict[str, list[Path]] = {}
    for file, match in zip(files, matches, strict=True):
        shards.setdefault(match["split"], []).append(file)
    return shards


def _pick_split(splits: list[str], split: str | None, where: str) -> str:
    """The split to read of ``where``'s ``splits``: ``split``, or the only one (logged)."""
    if split is not None:
        if split not in splits:
            raise ValueError(f"{where} has no split {split!r}; its splits are {splits}")
        return split
    if len(splits) == 1:
        logger.info("%s holds one split, %r: reading it", where, splits[0])
        return splits[0]
    if not splits:
        raise ValueError(f"{where} is a DatasetDict without splits: it holds no records")
    raise ValueError(f"{where} is a DatasetDict of the splits {splits}: {_CHOOSE}")


def _check_one_split(dataset: Any, split: str | None, where: str) -> None:
    """A single dataset can be asked for its own split only."""
    own = getattr(dataset, "split", None)
    if split is not None and (own is None or str(own) != split):
        held = f"the split {str(own)!r}" if own is not None else "no named split"
        raise ValueError(f"{where} is one dataset ({held}), not a DatasetDict: it has no split {split!r}")


def _is_records_file(path: Path) -> bool:
    """A shard of a directory: a records suffix, and not hidden (editors' and downloads' temporaries)."""
    return path.is_file() and path.suffix.lower() in RECORD_FILE_SUFFIXES and not path.name.startswith(".")


def _open_file(path: Path) -> _Part:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _json_lines_part(path)
    if suffix == ".json":
        return _json_part(path)
    if suffix in (".parquet", ".arrow"):
        return _arrow_part(path)
    kind = f"a {suffix!r} file" if suffix else "a file without a suffix"
    raise ValueError(
        f"cannot read records from {path}: {kind} is not a records file; mmpo reads "
        f"{', '.join(RECORD_FILE_SUFFIXES)} files, a directory of them, a glob pattern, or a directory "
        "written by datasets' save_to_disk"
    )


def _json_lines_part(path: Path) -> _Part:
    """One row per non-blank line; a line that is not UTF-8 JSON is a ``BadLine``, one bad record."""
    numbered = read_jsonl_lines(path)
    rows = [row for _, row in numbered]
    return _Part(rows, _first_keys(rows), path.parent, str(path), [number for number, _ in numbered])


def _json_part(path: Path) -> _Part:
    """A ``.json`` file: a JSON array of records if its first character is ``[`` (each record named by
    the line it starts on), else JSON lines (what ``datasets.Dataset.to_json`` writes)."""
    with path.open("rb") as file:
        head = b""
        while not head and (chunk := file.read(1 << 16)):
            head = chunk.lstrip()
    if not head.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"["):  # after a UTF-8 byte-order mark
        return _json_lines_part(path)
    numbered = read_json_array(path)  # each element's line; one too deep or with too long a number is one bad record
    rows = [row for _, row in numbered]
    return _Part(rows, _first_keys(rows), path.parent, str(path), [number for number, _ in numbered])


def _arrow_part(path: Path) -> _Part:
    """A Parquet file, or an Arrow IPC file in the file or the stream format (``save_to_disk``
    writes streams): rows read a batch at a time, image columns left as ``{"bytes", "path"}``."""
    kind = "Parquet" if path.suffix.lower() == ".parquet" else "Arrow"
    try:
        if kind == "Parquet":
            parquet = pq.ParquetFile(path)
            schema, batches = parquet.schema_arrow, parquet.iter_batches(batch_size=_BATCH_ROWS)
        else:
            stream = pa.memory_map(str(path))
            try:
                reader = pa.ipc.open_file(stream)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            except pa.ArrowInvalid:
                stream.seek(0)
                reader = batches = pa.ipc.open_stream(stream)
            schema = reader.schema
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"cannot read {path} as {kind}: {exc}") from exc
    return _Part(_batch_rows(batches, path, kind), list(schema.names), path.parent, str(path))


def _batch_rows(batches: Iterable[Any], path: Path, kind: str) -> Iterable[dict[str, Any]]:
    try:
        for batch in batches:
            yield from batch.to_pylist()
    except (OSError, pa.ArrowException) as exc:  # a damaged row group or batch
        raise ValueError(f"cannot read {path} as {kind}: {exc}") from exc


def _dataset_part(dataset: Any, base_dir: Path) -> _Part:
    """A dataset's rows as stored, from ``base_dir``."""
    if dataset.column_names is not None:
        return _Part(_dataset_rows(dataset), dataset.column_names, base_dir)
    rows = list(_dataset_rows(dataset))  # an IterableDataset whose columns are known once read
    return _Part(rows, _first_keys(rows), base_dir)


def _dataset_rows(dataset: datasets.Dataset | datasets.IterableDataset) -> Iterable[dict[str, Any]]:
    """The rows as stored: image columns stay ``{"bytes", "path"}`` dicts, decoded only when validated."""
    for batch in dataset.with_format("arrow").iter(batch_size=_BATCH_ROWS):
        yield from batch.to_pylist()


def _detect_format(parts: list[_Part]) -> str:
    """The format the parts' keys tell (``formats.detect_format``); files that tell different ones
    are an error. With no readable row to tell it from, every row reports its own problem."""
    found: tuple[str, _Part] | None = None
    for part in parts:
        if part.keys is None:
            continue
        try:
            fmt = detect_format(part.keys)
        except ValueError as exc:
            if part.file is None:
                raise
            raise ValueError(f"{part.file}: {exc}") from exc
        if found is None:
            found = (fmt, part)
        elif fmt != found[0]:
            raise ValueError(f"{part.file} holds {fmt} records but {found[1].file} holds {found[0]} records; "
                             "the files of one source must share one format")
    return "mmpo" if found is None else found[0]


def _as_row(item: Any) -> Any:
    if isinstance(item, PreferenceRecord):
        return {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}
    return item


def _first_keys(rows: list[Any]) -> list[str] | None:
    return next((list(row) for row in rows if isinstance(row, dict)), None)


def _row_id(row: Any, fmt: str) -> str | None:
    """The id a row declares, as far as it can be read, for error messages."""
    value = row.get(source_field(fmt, "id")) if isinstance(row, dict) else None
    return None if value is None else str(value)


# ---------------------------------------------------------------------------------------------
# Validation: each helper returns the clean value of one field or raises FieldProblem.


def _record(row: Any, index: int, fmt: str, options: _Options,
            where: str = "") -> tuple[PreferenceRecord, bool, list[tuple[str, int]]]:
    """The validated record of one row, whether a leading placeholder was removed from its prompt,
    and ``(field, length)`` of each text cut to ``options.max_text_chars``. Cheap text checks run
    before images are opened; ``where`` names the record in what is logged about its images."""
    if isinstance(row, BadLine):  # the error names the file and line itself
        raise FieldProblem(row.field, f"the line is {row.problem}" if row.problem else row.message)
    if not isinstance(row, dict):
        raise FieldProblem(None, f"expected a mapping of field names to values, got {type(row).__name__}")
    fields = native_fields(row, fmt)
    limit = options.max_text_chars
    n_given = len(image_list(fields.get("image"))) or 1  # the images are checked below, after the cheap checks
    prompt, prompt_length = _cut_prompt(_prompt(fields.get("prompt")), limit)
    prompt, had_placeholder = _strip_leading_placeholder(prompt, n_given)
    chosen, chosen_length = _response(fields.get("chosen"), "chosen", limit)
    rejected, rejected_length = _response(fields.get("rejected"), "rejected", limit)
    if chosen.strip() == rejected.strip():
        raise FieldProblem("rejected", "identical to 'chosen'" + (" in the characters read (max_text_chars)"
                                                                   if chosen_length or rejected_length else ""))
    cuts = [(field, length) for field, length in
            (("prompt", prompt_length), ("chosen", chosen_length), ("rejected", rejected_length)) if length]
    record_id = _id(fields.get("id"), index)
    chosen_scores = _scores(fields.get("chosen_sentence_scores"), "chosen_sentence_scores")
    rejected_scores = _scores(fields.get("rejected_sentence_scores"), "rejected_sentence_scores")
    data_alpha = _data_alpha(fields.get("data_alpha"))
    weight = _weight(fields.get("weight"))
    beta_scale = _beta_scale(fields.get("beta_scale"))
    meta = _meta(fields.get("meta"))
    image = _images(_required(fields.get("image"), "image"), "image", options, where)
    n_images = len(image_list(image))
    if not isinstance(prompt, str):
        parts = _image_parts(prompt)
        if parts != n_images:
            raise FieldProblem("prompt", f"the conversation has {parts} image parts but the record has {n_images} "
                                         f"image{'s' if n_images > 1 else ''}; each image part takes one image, in order")
    rejected_image = fields.get("rejected_image")
    if rejected_image is not None:
        rejected_image = _images(rejected_image, "rejected_image", options, where)
        if len(image_list(rejected_image)) != n_images:
            raise FieldProblem("rejected_image", f"{len(image_list(rejected_image))} images for a record with "
                                                 f"{n_images}: the rejected image set has one image per image")
    record = PreferenceRecord(
        image=image,
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        id=record_id,
        rejected_image=rejected_image,
        chosen_sentence_scores=chosen_scores,
        rejected_sentence_scores=rejected_scores,
        data_alpha=data_alpha,
        weight=weight,
        beta_scale=beta_scale,
        meta=meta,
    )
    return record, had_placeholder, cuts


def _required(value: Any, field: str) -> Any:
    if value is None:
        raise FieldProblem(field, "missing required field")
    return value


def _response(value: Any, field: str, limit: int | None = None) -> tuple[str, int | None]:
    """The response's text, cut to ``limit`` characters, and its length when it was cut."""
    _required(value, field)
    if not isinstance(value, str):
        raise FieldProblem(field, f"expected a string, got {type(value).__name__}")
    length = len(value) if limit is not None and len(value) > limit else None
    if length:
        value = value[:limit]
    if not value.strip():
        raise FieldProblem(field, "empty response")
    _no_placeholder(value, field)
    return value, length


def _text_slots(messages: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
    """Every text of a conversation in order, as ``(container, key)`` with ``container[key]`` the string."""
    slots = []
    for message in messages:
        if isinstance(message["content"], str):
            slots.append((message, "content"))
        else:
            slots += [(part, "text") for part in message["content"] if part.get("type") == "text"]
    return slots


def _cut_prompt(prompt: str | list[dict[str, Any]], limit: int | None) -> tuple[Any, int | None]:
    """The prompt with at most ``limit`` characters of text (a conversation's texts together, cut
    where they reach it; later ones emptied), and its length when it was cut. A conversation from
    :func:`_messages` is a copy, so it is cut in place."""
    if limit is None:
        return prompt, None
    if isinstance(prompt, str):
        return (prompt[:limit], len(prompt)) if len(prompt) > limit else (prompt, None)
    slots = _text_slots(prompt)
    length = sum(len(container[key]) for container, key in slots)
    if length <= limit:
        return prompt, None
    room = limit
    for container, key in slots:
        container[key] = container[key][:room]
        room -= len(container[key])
    return prompt, length


def _no_placeholder(text: str, field: str) -> None:
    for placeholder in PLACEHOLDERS:
        if placeholder in text:
            where = "a response" if field in ("chosen", "rejected") else "a prompt, except at its start"
            raise FieldProblem(field, f"contains the placeholder {placeholder!r}, which is not allowed in {where}: "
                                      "mmpo places the image itself, and the processor would expand it into "
                                      "image tokens")


def _strip_leading(text: str, n_images: int) -> tuple[str, bool]:
    """``text`` without up to ``n_images`` leading ``<image>`` placeholders, and whether any was removed."""
    stripped = False
    for _ in range(n_images):
        match = _LEADING_PLACEHOLDER.match(text)
        if not match:
            break
        text, stripped = text[match.end():], True
    return text, stripped


def _strip_leading_placeholder(prompt: str | list[dict[str, Any]],
                               n_images: int = 1) -> tuple[str | list[dict[str, Any]], bool]:
    """The prompt without its leading ``<image>`` placeholders (LLaVA-style data; one per image),
    whether any was removed; any other placeholder in its text is a ``FieldProblem``."""
    stripped = False
    if isinstance(prompt, str):
        prompt, stripped = _strip_leading(prompt, n_images)
        _no_placeholder(prompt, "prompt")
        if not prompt.strip():
            raise FieldProblem("prompt", _ONLY_PLACEHOLDER)
        return prompt, stripped
    messages = copy.deepcopy(prompt)
    slots = _text_slots(messages)
    if slots:
        container, key = slots[0]
        container[key], stripped = _strip_leading(container[key], n_images)
    for container, key in slots:
        _no_placeholder(container[key], "prompt")
    if stripped and not any(container[key].strip() for container, key in slots):
        raise FieldProblem("prompt", _ONLY_PLACEHOLDER)
    return messages, stripped


def _image_parts(messages: list[dict[str, Any]]) -> int:
    return sum(isinstance(m["content"], list) and sum(part.get("type") == "image" for part in m["content"])
               for m in messages)


def _prompt(value: Any) -> str | list[dict[str, Any]]:
    _required(value, "prompt")
    if isinstance(value, str):
        if not value.strip():
            raise FieldProblem("prompt", "empty prompt")
        return value
    if isinstance(value, list):
        return _messages(value)
    raise FieldProblem("prompt", f"expected a string or a list of messages, got {type(value).__name__}")


def _messages(messages: list[Any]) -> list[dict[str, Any]]:
    """A conversational prompt with the null keys Arrow adds to content parts dropped; it must hold
    some text and exactly one image part (where the record's image goes)."""
    clean: list[dict[str, Any]] = []
    text, n_images = "", 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise FieldProblem("prompt", f"message {i} is not a dict with a 'role' and a 'content'")
        content = message.get("content")
        if isinstance(content, list):
            parts = [_without_nulls(part) if isinstance(part, dict) else part for part in content]
            for part in parts:
                if isinstance(part, dict) and part.get("type") == "image":
                    n_images += 1
                elif (
                    isinstance(part, dict)
                    and part.get("type") == "text"
                    and isinstance(part.get("text"), str)
                ):
                    text += part["text"]
                else:
                    raise FieldProblem(
                        "prompt",
                        f"message {i}: parts must be {{'type': 'image'}} or {{'type': 'text', 'text': str}}",
                    )
            content = parts
        elif isinstance(content, str):
            text += content
        else:
            raise FieldProblem("prompt", f"message {i}: content must be a string or a list of parts")
        clean.append({**_without_nulls(message), "content": content})
    if not text.strip():
        raise FieldProblem("prompt", "empty prompt")
    if n_images < 1:
        raise FieldProblem("prompt", "a conversational prompt needs an {'type': 'image'} part where each image goes")
    return clean


def _without_nulls(mapping: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in mapping.items() if value is not None}


def _id(value: Any, index: int) -> str:
    if value is None:
        return str(index)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise FieldProblem("id", f"expected a string or an integer, got {type(value).__name__}")
    if value == "":
        raise FieldProblem("id", "empty id")
    return str(value)


def _scores(value: Any, field: str) -> list[float] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise FieldProblem(field, f"expected a list of numbers, got {type(value).__name__}")
    if not value:
        raise FieldProblem(field, "empty list: a non-empty response has at least one sentence")
    for i, score in enumerate(value):
        if isinstance(score, bool) or not isinstance(score, Real):
            raise FieldProblem(field, f"score {i} is a {type(score).__name__}, expected a number")
        if not math.isfinite(score):
            raise FieldProblem(field, f"score {i} is {score}; scores must be finite")
    return [float(score) for score in value]


def _data_alpha(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise FieldProblem("data_alpha", f"expected a number, got {type(value).__name__}")
    low, high = DATA_ALPHA_RANGE
    if not (math.isfinite(value) and low <= value <= high):
        raise FieldProblem("data_alpha", f"must be a finite number in [{low:g}, {high:g}], got {value}")
    return float(value)


#: The largest ``weight`` and ``beta_scale`` a record may hold (docs/methods.md, "Per-record weight and
#: beta scale"): ``data_alpha``'s upper bound, so a record's beta and loss stay far inside float32's range.
WEIGHT_MAX = 1e3
BETA_SCALE_MAX = 1e3


def _weight(value: Any) -> float | None:
    """A record's loss weight: a finite number in ``[0, WEIGHT_MAX]`` (0: the record adds nothing)."""
    return _scale(value, "weight", WEIGHT_MAX, zero_allowed=True)


def _beta_scale(value: Any) -> float | None:
    """A record's beta factor: a finite number in ``(0, BETA_SCALE_MAX]``."""
    return _scale(value, "beta_scale", BETA_SCALE_MAX, zero_allowed=False)


def _scale(value: Any, field: str, high: float, zero_allowed: bool) -> float | None:
    if value is None:
        return None
    interval = f"{'[' if zero_allowed else '('}0, {high:g}]"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise FieldProblem(field, f"must be a finite number in {interval}, got {value!r} ({type(value).__name__})")
    if not (math.isfinite(value) and (0 <= value if zero_allowed else 0 < value) and value <= high):
        raise FieldProblem(field, f"must be a finite number in {interval}, got {value}")
    return float(value)


def _meta(value: Any) -> dict[str, Any]:
    """A dict; ``records_to_dataset`` stores it as JSON text (an Arrow column has one schema)."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = parse_json(value)
        except json.JSONDecodeError as exc:
            raise FieldProblem("meta", f"a string meta must be a JSON object: {exc}") from exc
        except JsonLimitError as exc:
            raise FieldProblem("meta", f"a string meta over mmpo's JSON limits: {exc}") from exc
    if not isinstance(value, dict):
        raise FieldProblem("meta", f"expected a dict, got {type(value).__name__}")
    return dict(value)


def _images(value: Any, field: str, options: _Options, where: str = "") -> Any:
    """One image (:func:`_image`), or a list of several; a list of one is that image."""
    if not isinstance(value, (list, tuple)):
        return _image(value, field, options, where)
    if not value:
        raise FieldProblem(field, "an empty list of images")
    images = []
    for i, item in enumerate(value):
        try:
            images.append(_image(item, field, options, where))
        except FieldProblem as problem:
            raise FieldProblem(field, f"image {i + 1} of {len(value)}: {problem.message}") from problem
    return images[0] if len(images) == 1 else images


def _image(value: Any, field: str, options: _Options, where: str = "") -> str | PIL.Image.Image:
    """An absolute path for an image file; a PIL image for an in-memory one. What ``load_image``
    will do to the image (one frame of several, downscaled) is logged now, once per image."""
    if isinstance(value, dict):  # a datasets Image value: the bytes if stored, else the file
        value = value.get("bytes") if value.get("bytes") is not None else value.get("path")
    what = f"{where} field {field!r}".strip()
    # Broken images raise anything from OSError to SyntaxError inside PIL, hence ``except Exception``.
    if isinstance(value, PIL.Image.Image):
        if options.check_images:
            try:
                check_image(value, what)
                value.load()
            except Exception as exc:
                raise FieldProblem(field, f"cannot decode image: {exc}") from exc
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            if options.check_images:
                with open_image(value) as image:
                    image.verify()
            image = open_image(value)  # lazy: pixels decode on first use
            if options.check_images:
                check_image(image, what)
            return image
        except ImageTooLargeError as exc:
            raise FieldProblem(field, exc.problem) from exc
        except Exception as exc:
            raise FieldProblem(field, f"cannot decode image bytes: {exc}") from exc
    if isinstance(value, (str, os.PathLike)) and str(value):
        written = Path(value).expanduser()
        path = Path(os.path.normpath(options.base_dir / written))
        _inside_root(path, written, field, options)
        if options.check_images:
            if path.is_dir():
                raise FieldProblem(field, f"{path} is a directory, not an image file")
            if not path.is_file():
                raise FieldProblem(field, f"image file not found: {path}")
            try:
                check_image(path)
            except ImageTooLargeError as exc:
                raise FieldProblem(field, f"{path}: {exc.problem}") from exc
            except Exception as exc:
                raise FieldProblem(field, f"cannot read image file {path}: {exc}") from exc
        return str(path)
    raise FieldProblem(
        field,
        f"expected an image path, a PIL image or a {{'bytes', 'path'}} dict, got {type(value).__name__}",
    )


def _inside_root(path: Path, written: Path, field: str, options: _Options) -> None:
    """Refuse an image path that leads outside the image root (``options.base_dir``) once ``..`` and
    symbolic links are resolved, unless the options allow it (see :func:`load_records`)."""
    absolute = written.is_absolute()
    if options.allow_images_outside_root or (absolute and options.allow_absolute_image_paths):
        return
    root, real = options.root, os.path.realpath(path)
    if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
        return
    how = ("an absolute path" if absolute else "a relative path with '..'" if ".." in written.parts
           else "a relative path through a symbolic link")
    allow = "allow_images_outside_root: true" + ("" if not absolute else " (or allow_absolute_image_paths: true)")
    raise FieldProblem(field, f"the image path {os.fspath(written)!r} ({how}) leads to {real}, outside the image root "
                              f"{root}; mmpo reads record images only inside it, so that a records file cannot make "
                              f"it open other files. Set image_root to a directory holding the images, or {allow} "
                              "(allow_images_outside_root=True in load_records) for records you trust")


# ---------------------------------------------------------------------------------------------
# Writing.


def save_records(records: Iterable[PreferenceRecord], path: str | os.PathLike) -> Path:
    """Write records to a JSONL file, one per line, atomically.

    The lines go to a temporary file that replaces ``path`` only once all are written, so a failure
    leaves any earlier file at ``path`` untouched and no partial file behind. In-memory images are
    written as PNG files to ``images/`` next to ``path``, named by a hash of their content (so equal
    images are stored once), and referenced by relative path; image files inside ``path``'s directory
    are referenced relative to it, others by absolute path. ``load_records`` resolves relative paths
    against the file's directory, so the directory can be moved as a whole.

    Returns:
        the path written.
    """
    path = Path(path)
    out_dir = Path(os.path.abspath(path.parent))
    new_images: list[Path] = []
    try:
        with atomic_writer(path, text=True) as file:
            for index, record in enumerate(records):
                try:
                    references = {
                        key: _each_image(getattr(record, key), lambda image: image_reference(
                            image, out_dir, out_dir / IMAGES_DIR, new_images))
                        for key in ("image", "rejected_image")
                        if getattr(record, key) is not None
                    }
                    file.write(json_line(dataclasses.replace(record, **references).to_dict()) + "\n")
                except Exception as exc:
                    raise ValueError(f"cannot save record #{index} (id {record.id!r}): {exc}") from exc
    except BaseException:
        for image_path in new_images:
            image_path.unlink(missing_ok=True)
        raise
    return path


def records_to_dataset(records: Iterable[PreferenceRecord]) -> datasets.Dataset:
    """A ``datasets.Dataset`` of records in the mmpo layout, which ``load_records`` reads back.

    Columns: ``image`` (an ``Image`` feature: files are referenced, and embedded by
    ``save_to_disk``), ``prompt`` (strings, or message lists if any prompt is conversational, plain
    ones then converted with ``prompt_messages``), ``chosen``, ``rejected``, ``id``; and, where any
    record has them, ``rejected_image``, the sentence scores, ``data_alpha``, ``weight``, ``beta_scale``
    and ``meta`` (as JSON text, since an Arrow column holds one schema and ``meta`` dicts differ).
    """
    records = list(records)
    prompts: list[Any] = [record.prompt for record in records]
    prompt_feature: Any = datasets.Value("string")
    if not all(isinstance(prompt, str) for prompt in prompts):
        prompts = [prompt_messages(r.prompt, len(image_list(r.image))) for r in records]
        prompt_feature = datasets.Dataset.from_dict({"prompt": prompts}).features["prompt"]
    # One Arrow schema per column: with any record of several images, every record's images are a list.
    several = any(isinstance(record.image, (list, tuple)) for record in records)
    image_feature: Any = datasets.List(datasets.Image()) if several else datasets.Image()

    def column_value(image: Any) -> Any:
        if image is None:
            return None
        return [_dataset_image(i) for i in image_list(image)] if several else _dataset_image(image)

    columns: dict[str, list[Any]] = {
        "image": [column_value(record.image) for record in records],
        "prompt": prompts,
        "chosen": [record.chosen for record in records],
        "rejected": [record.rejected for record in records],
        "id": [record.id for record in records],
    }
    features: dict[str, Any] = {
        "image": image_feature,
        "prompt": prompt_feature,
        "chosen": datasets.Value("string"),
        "rejected": datasets.Value("string"),
        "id": datasets.Value("string"),
    }
    optional_features = {
        "rejected_image": image_feature,
        "chosen_sentence_scores": datasets.List(datasets.Value("float64")),
        "rejected_sentence_scores": datasets.List(datasets.Value("float64")),
        "data_alpha": datasets.Value("float64"),
        "weight": datasets.Value("float64"),
        "beta_scale": datasets.Value("float64"),
    }
    for name, feature in optional_features.items():
        values = [getattr(record, name) for record in records]
        if any(value is not None for value in values):
            columns[name] = (
                [column_value(value) for value in values] if name == "rejected_image" else values
            )
            features[name] = feature
    if any(record.meta for record in records):
        columns["meta"] = [json.dumps(record.meta, ensure_ascii=False) for record in records]
        features["meta"] = datasets.Value("string")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def _each_image(images: Any, change: Any) -> Any:
    """``change`` applied to one image, or to each of several (a list stays a list)."""
    return [change(i) for i in images] if isinstance(images, (list, tuple)) else change(images)


def _dataset_image(image: Any) -> Any:
    """What an ``Image`` feature is given: a PIL image as is, a path made absolute."""
    if image is None or isinstance(image, PIL.Image.Image):
        return image
    return os.path.abspath(image)
