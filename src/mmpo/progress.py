"""Progress bars: one switch for the whole library instead of a ``progress`` parameter in every signature.

Every long loop in mmpo shows a tqdm bar made by :func:`bar`. Bars are on by default. Turn them off
for a block with ``with mmpo.progress.bars(False): ...`` (the commands do this for ``--no-progress``),
or for the rest of the process with :func:`disable` (as ``datasets.disable_progress_bars()`` does).
The switch is a context variable: a block's setting ends with the block.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm

_ON: contextvars.ContextVar[bool] = contextvars.ContextVar("mmpo_progress_bars", default=True)


def enabled() -> bool:
    """Whether mmpo shows progress bars here."""
    return _ON.get()


def disable() -> None:
    """No progress bars from here on (in this context)."""
    _ON.set(False)


def enable() -> None:
    """Progress bars from here on (in this context)."""
    _ON.set(True)


@contextmanager
def bars(on: bool = True) -> Iterator[None]:
    """Progress bars on (``on=True``) or off inside the ``with`` block; the setting before it after."""
    token = _ON.set(bool(on))
    try:
        yield
    finally:
        _ON.reset(token)


def bar(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar (``kwargs`` as tqdm's), disabled while bars are off."""
    kwargs["disable"] = kwargs.get("disable", False) or not enabled()
    return tqdm(iterable, **kwargs)
