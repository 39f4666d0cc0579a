"""Reading, validating and writing preference records.

``load_records`` reads a JSONL file, a ``datasets.Dataset`` (in memory, or a directory written by
``save_to_disk``) or a list of dicts, in any layout of ``formats.py``, and checks every record before
training sees it. ``save_records`` writes JSONL atomically; ``records_to_dataset`` builds a
``datasets.Dataset`` that ``load_records`` reads back. The files themselves are read and written
with :mod:`mmpo.io`.

Image placeholders: mmpo puts the record's image into the prompt itself, so a *leading* ``<image>``
(as LLaVA-style data writes ``"<image>\nWhat is ...?"``) is removed from the prompt, counted in
``LoadResult.stripped_placeholders`` and logged; an ``<image>`` or ``<video>`` anywhere else in a
prompt, or anywhere in a response, makes the record bad (the processor would expand it into image
tokens). The processor's own placeholder tokens (``<|image_pad|>``, ``<start_of_image>``, ...) are
checked before training by ``mmpo.data.preflight``, which knows the processor.

A bad record raises by default: a long run that quietly trained on part of its data would report
results for a data set nobody chose. ``on_error="skip"`` opts in to dropping bad records; each one
is kept in ``LoadResult.errors`` and the summary is logged as a warning.
"""

from __future__ import annotations

import copy
import dataclasses
import io
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

from mmpo.data.formats import FORMATS, FieldProblem, detect_format, native_fields, source_field
from mmpo.io import BadLine, atomic_writer, image_reference, json_line, read_jsonl_lines
from mmpo.methods.dama.factors import DATA_ALPHA_RANGE
from mmpo.types import PreferenceRecord, prompt_messages

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
    """What is wrong with one record: its position in the source, its id if known, the field, the problem."""

    index: int
    id: str | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"#{self.index}" if self.id is None else f"#{self.index} (id {self.id!r})"
        what = "" if self.field is None else f" field {self.field!r}"
        return f"{where}{what}: {self.message}"


class RecordValidationError(ValueError):
    """The first bad record of a source read with ``on_error="raise"``; the details are in ``error``."""

    def __init__(self, error: RecordError):
        super().__init__(f"invalid record {error} (to skip bad records instead: on_bad_record: skip in the config "
                         "or on the command line, on_error='skip' in load_records)")
        self.error = error


@dataclasses.dataclass
class LoadResult:
    """The records that passed validation and one ``RecordError`` per record that did not."""

    records: list[PreferenceRecord]
    errors: list[RecordError] = dataclasses.field(default_factory=list)
    #: how many prompts had a leading ``<image>`` placeholder removed (see the module docstring)
    stripped_placeholders: int = 0

    def summary(self, max_errors: int = 10) -> str:
        """``"loaded 98 of 100 records; skipped 2: #3 field 'chosen': empty response; ..."``"""
        text = f"loaded {len(self.records)} of {len(self.records) + len(self.errors)} records"
        if not self.errors:
            return text
        shown = "; ".join(str(error) for error in self.errors[:max_errors])
        more = f"; and {len(self.errors) - max_errors} more" if len(self.errors) > max_errors else ""
        return f"{text}; skipped {len(self.errors)}: {shown}{more}"


def load_records(
    source: str | os.PathLike | datasets.Dataset | Sequence[dict[str, Any] | PreferenceRecord],
    *,
    format: Literal["auto", "mmpo", "trl", "rlaif-v"] = "auto",
    on_error: Literal["raise", "skip"] = "raise",
    image_root: str | os.PathLike | None = None,
    check_images: bool = True,
) -> LoadResult:
    """Read and validate preference records.

    Args:
        source: a JSONL file; a directory written by ``datasets.Dataset.save_to_disk``; a
            ``datasets.Dataset``; or a list of dicts (``PreferenceRecord`` objects are accepted too).
        format: ``"auto"`` tells the layout from the first row's keys (see ``formats.detect_format``);
            or force ``"mmpo"``, ``"trl"`` or ``"rlaif-v"``.
        on_error: ``"raise"`` raises ``RecordValidationError`` at the first bad record;
            ``"skip"`` leaves bad records out, lists them in ``errors`` and logs the summary.
        image_root: the directory relative image paths start from; by default the JSONL file's
            directory (the dataset directory for ``save_to_disk`` output, else the working directory).
        check_images: check that every image file exists and every image decodes; turn off to read
            the text alone (image paths are still resolved).

    Returns:
        the valid records, in source order, and the errors. Records without an id get their index
        in the source as id; ids must be unique. Image paths become absolute; in-memory images
        (PIL, bytes, ``datasets`` image dicts) become PIL images opened lazily.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"format must be 'auto' or one of {FORMATS}, got {format!r}")
    rows, keys, base_dir = _open_source(source)
    if image_root is not None:
        base_dir = Path(os.path.abspath(image_root))
    fmt = format
    if fmt == "auto":
        # With no readable row to tell the format from, every row reports its own problem.
        fmt = detect_format(keys) if keys is not None else "mmpo"

    records: list[PreferenceRecord] = []
    errors: list[RecordError] = []
    index_of_id: dict[str, int] = {}
    stripped = 0
    for index, row in enumerate(rows):
        try:
            record, had_placeholder = _record(row, index, fmt, base_dir, check_images)
            if record.id in index_of_id:
                raise FieldProblem("id", f"duplicate id, first used by record #{index_of_id[record.id]}")
        except FieldProblem as problem:
            error = RecordError(index, _row_id(row, fmt), source_field(fmt, problem.field), problem.message)
            if on_error == "raise":
                raise RecordValidationError(error) from problem
            errors.append(error)
            continue
        index_of_id[record.id] = index
        records.append(record)
        stripped += had_placeholder

    result = LoadResult(records, errors, stripped)
    if stripped:
        logger.info("removed the leading %s placeholder from %d prompts (mmpo places the image itself)",
                    IMAGE_PLACEHOLDER, stripped)
    if errors:
        logger.warning(result.summary())
    return result


def _open_source(source: Any) -> tuple[Iterable[Any], list[str] | None, Path]:
    """The rows of ``source``, the keys that tell its format (None: no readable row), and the
    directory relative image paths start from."""
    base_dir = Path.cwd()
    if isinstance(source, (str, os.PathLike)):
        path = Path(os.path.abspath(source))
        if path.is_file():
            # one row per non-blank line; a line that is not UTF-8 JSON is a BadLine, one bad record
            rows = [row for _, row in read_jsonl_lines(path)]
            return rows, _first_keys(rows), path.parent
        if not path.is_dir():
            raise FileNotFoundError(f"no such records file or dataset directory: {path}")
        source, base_dir = datasets.load_from_disk(str(path)), path
    if isinstance(source, datasets.DatasetDict):
        raise ValueError(f"the dataset has splits {list(source)}; pass one of them, e.g. dataset['train']")
    if isinstance(source, datasets.Dataset):
        return _dataset_rows(source), source.column_names, base_dir
    if isinstance(source, (list, tuple)):
        rows = [_as_row(item) for item in source]
        return rows, _first_keys(rows), base_dir
    raise TypeError(
        f"cannot read records from a {type(source).__name__}: expected a JSONL path, a dataset directory, "
        "a datasets.Dataset or a list of dicts"
    )


def _dataset_rows(dataset: datasets.Dataset) -> Iterable[dict[str, Any]]:
    """The rows as stored: image columns stay ``{"bytes", "path"}`` dicts, decoded only when validated."""
    for batch in dataset.with_format("arrow").iter(batch_size=256):
        yield from batch.to_pylist()


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


def _record(row: Any, index: int, fmt: str, base_dir: Path, check_images: bool) -> tuple[PreferenceRecord, bool]:
    """The validated record of one row, and whether a leading placeholder was removed from its
    prompt. Cheap text checks run before images are opened."""
    if isinstance(row, BadLine):
        raise FieldProblem(None, row.message)
    if not isinstance(row, dict):
        raise FieldProblem(None, f"expected a mapping of field names to values, got {type(row).__name__}")
    fields = native_fields(row, fmt)
    prompt, had_placeholder = _strip_leading_placeholder(_prompt(fields.get("prompt")))
    chosen = _response(fields.get("chosen"), "chosen")
    rejected = _response(fields.get("rejected"), "rejected")
    if chosen.strip() == rejected.strip():
        raise FieldProblem("rejected", "identical to 'chosen'")
    record_id = _id(fields.get("id"), index)
    chosen_scores = _scores(fields.get("chosen_sentence_scores"), "chosen_sentence_scores")
    rejected_scores = _scores(fields.get("rejected_sentence_scores"), "rejected_sentence_scores")
    data_alpha = _data_alpha(fields.get("data_alpha"))
    meta = _meta(fields.get("meta"))
    image = _image(_required(fields.get("image"), "image"), "image", base_dir, check_images)
    rejected_image = fields.get("rejected_image")
    if rejected_image is not None:
        rejected_image = _image(rejected_image, "rejected_image", base_dir, check_images)
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
        meta=meta,
    )
    return record, had_placeholder


def _required(value: Any, field: str) -> Any:
    if value is None:
        raise FieldProblem(field, "missing required field")
    return value


def _response(value: Any, field: str) -> str:
    _required(value, field)
    if not isinstance(value, str):
        raise FieldProblem(field, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise FieldProblem(field, "empty response")
    _no_placeholder(value, field)
    return value


def _no_placeholder(text: str, field: str) -> None:
    for placeholder in PLACEHOLDERS:
        if placeholder in text:
            where = "a response" if field in ("chosen", "rejected") else "a prompt, except at its start"
            raise FieldProblem(field, f"contains the placeholder {placeholder!r}, which is not allowed in {where}: "
                                      "mmpo places the image itself, and the processor would expand it into "
                                      "image tokens")


def _strip_leading_placeholder(prompt: str | list[dict[str, Any]]) -> tuple[str | list[dict[str, Any]], bool]:
    """The prompt without a leading ``<image>`` (LLaVA-style data), whether one was removed; any other
    placeholder in its text is a ``FieldProblem``."""
    stripped = False
    if isinstance(prompt, str):
        match = _LEADING_PLACEHOLDER.match(prompt)
        if match:
            prompt, stripped = prompt[match.end():], True
        _no_placeholder(prompt, "prompt")
        if not prompt.strip():
            raise FieldProblem("prompt", _ONLY_PLACEHOLDER)
        return prompt, stripped
    messages = copy.deepcopy(prompt)
    # Every text slot in order: (container, key) with container[key] a string.
    slots = []
    for message in messages:
        if isinstance(message["content"], str):
            slots.append((message, "content"))
        else:
            slots += [(part, "text") for part in message["content"] if part.get("type") == "text"]
    if slots:
        container, key = slots[0]
        match = _LEADING_PLACEHOLDER.match(container[key])
        if match:
            container[key], stripped = container[key][match.end():], True
    for container, key in slots:
        _no_placeholder(container[key], "prompt")
    if stripped and not any(container[key].strip() for container, key in slots):
        raise FieldProblem("prompt", _ONLY_PLACEHOLDER)
    return messages, stripped


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
    if n_images != 1:
        raise FieldProblem(
            "prompt", f"a conversational prompt needs exactly one {{'type': 'image'}} part, found {n_images}"
        )
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


def _meta(value: Any) -> dict[str, Any]:
    """A dict; ``records_to_dataset`` stores it as JSON text (an Arrow column has one schema)."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise FieldProblem("meta", f"a string meta must be a JSON object: {exc}") from exc
    if not isinstance(value, dict):
        raise FieldProblem("meta", f"expected a dict, got {type(value).__name__}")
    return dict(value)


def _image(value: Any, field: str, base_dir: Path, check_images: bool) -> str | PIL.Image.Image:
    """An absolute path for an image file; a PIL image for an in-memory one."""
    if isinstance(value, dict):  # a datasets Image value: the bytes if stored, else the file
        value = value.get("bytes") if value.get("bytes") is not None else value.get("path")
    # Broken images raise anything from OSError to SyntaxError inside PIL, hence ``except Exception``.
    if isinstance(value, PIL.Image.Image):
        if check_images:
            try:
                value.load()
            except Exception as exc:
                raise FieldProblem(field, f"cannot decode image: {exc}") from exc
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            if check_images:
                with PIL.Image.open(io.BytesIO(value)) as image:
                    image.verify()
            return PIL.Image.open(io.BytesIO(value))  # lazy: pixels decode on first use
        except Exception as exc:
            raise FieldProblem(field, f"cannot decode image bytes: {exc}") from exc
    if isinstance(value, (str, os.PathLike)) and str(value):
        path = Path(os.path.normpath(base_dir / Path(value).expanduser()))
        if check_images:
            if path.is_dir():
                raise FieldProblem(field, f"{path} is a directory, not an image file")
            if not path.is_file():
                raise FieldProblem(field, f"image file not found: {path}")
            try:
                with PIL.Image.open(path) as image:
                    image.verify()
            except Exception as exc:
                raise FieldProblem(field, f"cannot read image file {path}: {exc}") from exc
        return str(path)
    raise FieldProblem(
        field,
        f"expected an image path, a PIL image or a {{'bytes', 'path'}} dict, got {type(value).__name__}",
    )


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
                        key: image_reference(getattr(record, key), out_dir, out_dir / IMAGES_DIR, new_images)
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
    record has them, ``rejected_image``, the sentence scores, ``data_alpha`` and ``meta`` (as JSON
    text, since an Arrow column holds one schema and ``meta`` dicts differ).
    """
    records = list(records)
    prompts: list[Any] = [record.prompt for record in records]
    prompt_feature: Any = datasets.Value("string")
    if not all(isinstance(prompt, str) for prompt in prompts):
        prompts = [prompt_messages(prompt) for prompt in prompts]
        prompt_feature = datasets.Dataset.from_dict({"prompt": prompts}).features["prompt"]

    columns: dict[str, list[Any]] = {
        "image": [_dataset_image(record.image) for record in records],
        "prompt": prompts,
        "chosen": [record.chosen for record in records],
        "rejected": [record.rejected for record in records],
        "id": [record.id for record in records],
    }
    features: dict[str, Any] = {
        "image": datasets.Image(),
        "prompt": prompt_feature,
        "chosen": datasets.Value("string"),
        "rejected": datasets.Value("string"),
        "id": datasets.Value("string"),
    }
    optional_features = {
        "rejected_image": datasets.Image(),
        "chosen_sentence_scores": datasets.List(datasets.Value("float64")),
        "rejected_sentence_scores": datasets.List(datasets.Value("float64")),
        "data_alpha": datasets.Value("float64"),
    }
    for name, feature in optional_features.items():
        values = [getattr(record, name) for record in records]
        if any(value is not None for value in values):
            columns[name] = (
                [_dataset_image(value) for value in values] if name == "rejected_image" else values
            )
            features[name] = feature
    if any(record.meta for record in records):
        columns["meta"] = [json.dumps(record.meta, ensure_ascii=False) for record in records]
        features["meta"] = datasets.Value("string")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def _dataset_image(image: Any) -> Any:
    """What an ``Image`` feature is given: a PIL image as is, a path made absolute."""
    if image is None or isinstance(image, PIL.Image.Image):
        return image
    return os.path.abspath(image)
