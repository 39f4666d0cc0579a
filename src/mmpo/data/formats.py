"""The record layouts ``load_records`` reads, each mapped onto the fields of ``PreferenceRecord``.

* ``mmpo``: ``PreferenceRecord``'s own fields, as ``save_records`` and ``records_to_dataset`` write them.
* ``trl``: TRL's vision preference layout: ``images`` (a list of one or more images, in the order of
  the prompt's image parts), ``prompt``,
  ``chosen``, ``rejected`` (and ``id`` if present); plain strings, or conversational (the prompt a list of messages whose
  content parts are ``{"type": "image"}`` / ``{"type": "text", "text": ...}``, each response a list
  holding one assistant message).
* ``rlaif-v``: the RLAIF-V dataset's columns: ``image``, ``question``, ``chosen``, ``rejected``, and
  ``idx`` (the id); ``ds_name``, ``origin_dataset``, ``origin_split``, ``image_path`` go to ``meta``.

The optional per-record ``weight`` and ``beta_scale`` have the same name in every layout.

The mapping only renames and unwraps; ``records.py`` judges the values. Problems that stop the
mapping itself (no images, a response that is not one assistant message) raise ``FieldProblem``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from mmpo.types import PreferenceRecord

FORMATS: tuple[str, ...] = ("mmpo", "trl", "rlaif-v")

RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(PreferenceRecord))

#: Optional columns every format takes as record fields, not as ``meta``.
_SCALE_FIELDS = ("weight", "beta_scale")
_TRL_FIELDS = ("images", "prompt", "chosen", "rejected", "id", *_SCALE_FIELDS)
_RLAIF_V_FIELDS = ("image", "question", "chosen", "rejected", "idx", *_SCALE_FIELDS)

#: Where a format's column name differs from the record field, so errors name the column the user wrote.
_SOURCE_NAMES: dict[str, dict[str, str]] = {
    "trl": {"image": "images"},
    "rlaif-v": {"prompt": "question", "id": "idx"},
}


class FieldProblem(ValueError):
    """One field of one record is wrong; ``field`` is None when the whole row is unreadable."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def detect_format(keys: Iterable[str]) -> str:
    """The format whose tell-tale keys a row has: ``images`` -> trl, ``question`` -> rlaif-v,
    ``image`` and ``prompt`` -> mmpo."""
    keys = set(keys)
    if "images" in keys:
        return "trl"
    if "question" in keys:
        return "rlaif-v"
    if {"image", "prompt"} <= keys:
        return "mmpo"
    raise ValueError(
        f"cannot tell the record format from the keys {sorted(keys)}: expected 'images' (trl), "
        "'question' (rlaif-v) or 'image' and 'prompt' (mmpo); pass format= to choose"
    )


def source_field(fmt: str, field: str | None) -> str | None:
    """The name ``fmt`` gives the record field ``field``."""
    return _SOURCE_NAMES.get(fmt, {}).get(field, field)


def native_fields(row: dict[str, Any], fmt: str) -> dict[str, Any]:
    """The ``PreferenceRecord`` field values held by ``row`` in format ``fmt``, not yet validated."""
    if fmt == "mmpo":
        unknown = sorted(set(row) - set(RECORD_FIELDS))
        if unknown:
            raise FieldProblem(
                unknown[0], f"unknown field; mmpo records hold {list(RECORD_FIELDS)}, put extras in 'meta'"
            )
        return dict(row)
    if fmt == "trl":
        return {
            "image": _trl_images(row.get("images")),
            "prompt": row.get("prompt"),
            "chosen": _response_text(row.get("chosen"), "chosen"),
            "rejected": _response_text(row.get("rejected"), "rejected"),
            "id": row.get("id"),
            **{key: row.get(key) for key in _SCALE_FIELDS},
            "meta": {key: value for key, value in row.items() if key not in _TRL_FIELDS},
        }
    if fmt == "rlaif-v":
        return {
            "image": row.get("image"),
            "prompt": row.get("question"),
            "chosen": row.get("chosen"),
            "rejected": row.get("rejected"),
            "id": row.get("idx"),
            **{key: row.get(key) for key in _SCALE_FIELDS},
            "meta": {key: value for key, value in row.items() if key not in _RLAIF_V_FIELDS},
        }
    raise ValueError(f"unknown record format {fmt!r}; expected one of {FORMATS}")


def _trl_images(images: Any) -> Any:
    """The image of a TRL ``images`` list holding one, or the list of several."""
    if images is None:
        raise FieldProblem("image", "missing required field")
    if not isinstance(images, (list, tuple)):
        raise FieldProblem("image", f"expected a list of images, got {type(images).__name__}")
    if not images:
        raise FieldProblem("image", "an empty list of images: mmpo trains on records with at least one image")
    return images[0] if len(images) == 1 else list(images)


def _response_text(response: Any, field: str) -> Any:
    """The text of a conversational response (a list holding one assistant message); anything else as is."""
    if not isinstance(response, list):
        return response
    message = response[0] if len(response) == 1 else None
    if not isinstance(message, dict) or message.get("role") != "assistant":
        raise FieldProblem(field, "a conversational response must be a list holding one assistant message")
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return "".join(part["text"] for part in content)
    raise FieldProblem(field, "an assistant message's content must be a string or a list of text parts")
