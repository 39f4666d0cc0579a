"""Range and choice checks for config values: an error that names the field, never a silent default.

Every config dataclass (training, the model, each method's) validates its fields with these in its
``__post_init__``; NaN and inf are never in range, and ``True`` is never the number 1.
"""

from __future__ import annotations

import math
from typing import Any


def check_number(name: str, value: Any, *, integer: bool = False, low: float | None = None,
                 high: float | None = None, low_open: bool = False, high_open: bool = False,
                 optional: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a finite number in the range.

    Args:
        name: the field, for the message.
        value: the value; ``bool`` is never a number here (``True`` is not 1.0).
        integer: the value must be an ``int``.
        low / high: bounds (``None``: unbounded); ``low_open`` / ``high_open`` exclude them.
        optional: ``None`` is allowed.
    """
    if value is None and optional:
        return
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    wanted = f"{'an integer' if integer else 'a finite number'}{' ' + ' and '.join(parts) if parts else ''}"
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ValueError(f"{name} must be {wanted}, not {value!r} ({type(value).__name__})")
    ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(f"{name} must be {wanted}, not {value!r}")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be {', '.join(choices[:-1])} or {choices[-1]}, not {value!r}")
