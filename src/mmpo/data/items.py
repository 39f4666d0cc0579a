"""The items data construction starts from: ``(id, image, prompt[, meta])``, checked once.

:func:`mmpo.data.construct.self_pairs.build_self_pairs`, :func:`mmpo.data.construct.noisy_pairs.build_noisy_pairs`
and the on-policy rounds all take such tuples (``mmpo.io.read_items`` reads them from a file) and
check them with :func:`check_items` before any work is done.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from typing import Any

from PIL import Image

from ..io import load_image
from ..types import ImageRef, Prompt


@dataclasses.dataclass(frozen=True)
class Item:
    """One ``(image, prompt)`` to sample responses for; ``index`` is its position in the input."""

    index: int
    id: str
    image: ImageRef
    prompt: Prompt
    meta: dict[str, Any]

    def load_image(self) -> Image.Image:
        """The item's RGB image; a missing or undecodable file raises ValueError naming the item."""
        return load_image(self.image, f"item #{self.index} (id {self.id!r})")


def check_items(items: Iterable[Sequence[Any]]) -> list[Item]:
    """``(id, image, prompt)`` or ``(id, image, prompt, meta)`` tuples as :class:`Item`\\ s.

    Raises:
        ValueError: a malformed item, an empty id or prompt, a duplicate id, a non-dict meta
            (naming the item's index and id).
        FileNotFoundError: an image path that does not exist (before any work is done).
    """
    checked: list[Item] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) not in (3, 4):
            raise ValueError(f"item #{index}: expected (id, image, prompt[, meta]), got {item!r:.200}")
        item_id, image, prompt = item[:3]
        extra = item[3] if len(item) == 4 else {}
        if item_id is None or isinstance(item_id, bool) or str(item_id) == "":
            raise ValueError(f"item #{index}: needs a non-empty id, got {item_id!r}")
        item_id = str(item_id)
        if item_id in seen:
            raise ValueError(f"item #{index}: duplicate id {item_id!r}")
        if not isinstance(image, (str, os.PathLike, Image.Image)):
            raise ValueError(f"item #{index} (id {item_id!r}): image must be a path or a PIL image, "
                             f"got {type(image).__name__}")
        if not isinstance(image, Image.Image) and not os.path.isfile(image):
            raise FileNotFoundError(f"item #{index} (id {item_id!r}): image file {os.fspath(image)!r} does not exist")
        if not (isinstance(prompt, list) and prompt) and not (isinstance(prompt, str) and prompt.strip()):
            raise ValueError(f"item #{index} (id {item_id!r}): empty prompt")
        if not isinstance(extra, dict):
            raise ValueError(f"item #{index} (id {item_id!r}): meta must be a dict, got {type(extra).__name__}")
        seen.add(item_id)
        checked.append(Item(index, item_id, image, prompt, dict(extra)))
    return checked
