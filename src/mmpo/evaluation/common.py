"""What every benchmark module shares: one zero-safe ratio and one reader of JSON record files.

The reference scorers divide without a guard (an empty split or a model that never says "yes"
raises ``ZeroDivisionError`` there); :func:`ratio` returns ``0.0`` instead, so a result file
always holds finite numbers. On every input where the reference returns a number, the two agree.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from ..io import JsonLimitError, parse_json

#: How benchmark text is read: ``"reference"`` reproduces each benchmark's published scorer
#: exactly (the default everywhere); ``"lenient"`` is mmpo's more tolerant reading, a deviation.
Parsing = Literal["reference", "lenient"]
PARSINGS: tuple[str, ...] = ("reference", "lenient")


def check_parsing(parsing: str) -> str:
    if parsing not in PARSINGS:
        raise ValueError(f"parsing must be one of {PARSINGS}; got {parsing!r}")
    return parsing


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, or ``0.0`` when the denominator is zero."""
    return numerator / denominator if denominator else 0.0


def read_records(path: str | Path, what: str | None = None, *, located: bool = False) -> list[Any]:
    """The records of a JSON file: a JSON list, a single JSON object (one record), or JSON lines.

    A file that is neither valid JSON nor valid JSON lines raises ``ValueError`` naming the file
    and the first line that does not parse. Blank lines of a JSON-lines file are skipped. With
    ``located=True`` each record comes as ``(where, record)``, ``where`` naming it for error
    messages: ``"line 3"`` in JSON lines, ``"record 2"`` (0-based) in a JSON list, ``"the file"``
    for a single JSON object.
    """
    path = Path(path)
    label = f"{what} file {path}" if what else str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{label}: no such file") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{label}: not UTF-8 text ({error})") from None
    try:
        data = parse_json(text)
    except json.JSONDecodeError:
        pass
    except JsonLimitError as error:
        raise ValueError(f"{label}: {error}") from None
    else:
        if not isinstance(data, list):
            return [("the file", data)] if located else [data]
        return [(f"record {i}", row) for i, row in enumerate(data)] if located else data
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append((f"line {number}", parse_json(line)))
        except json.JSONDecodeError as error:
            raise ValueError(f"{label}, line {number}: neither a JSON document nor JSON lines ({error.msg})") from None
        except JsonLimitError as error:
            raise ValueError(f"{label}, line {number}: {error}") from None
    return records if located else [record for _, record in records]


def require_fields(rows: Sequence[Any], keys: Iterable[str], what: str) -> None:
    """Every row is a JSON object holding ``keys``; otherwise ``ValueError`` naming the row."""
    keys = tuple(keys)
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"{what}: record {index} is a {type(row).__name__}, not a JSON object")
        if missing := [k for k in keys if k not in row]:
            raise ValueError(f"{what}: record {index} lacks {missing}; it has {sorted(row)}")
