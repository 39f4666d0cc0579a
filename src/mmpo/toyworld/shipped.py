"""The synthetic world's base model and tiny CLIP, shipped inside the package.

Both are trained by the project's own recipes (:class:`~mmpo.toyworld.base_model.BaseModelRecipe`,
:class:`~mmpo.toyworld.clip.TinyCLIPRecipe`), but training them on the user's CPU gave a different
model on every kind of CPU (floating-point differences compound over 1,500 steps), so every number
the demo prints differed from machine to machine. The checkpoints built from the *default* recipes
are therefore shipped as package data (``mmpo/toyworld/pretrained/``, a few MB) and used whenever the
recipe asked for is the default one; any other recipe is built and cached as before.

``mmpo base-model --rebuild`` trains both again from their recipes and replaces the shipped
copies (in a checkout: the files to commit); ``mmpo demo --no-shipped`` ignores them and builds
on this machine instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Where the shipped checkpoints live: ``base-<fingerprint>/`` and ``clip-<fingerprint>/``, each an
#: ordinary checkpoint directory with the ``recipe.json`` it was built from.
SHIPPED_DIR = Path(__file__).resolve().parent / "pretrained"


def shipped_checkpoint(kind: str, recipe: Any) -> Path | None:
    """The shipped checkpoint of ``kind`` (``"base"`` or ``"clip"``) built from ``recipe`` (a
    :class:`~mmpo.toyworld.base_model.BaseModelRecipe` or :class:`~mmpo.toyworld.clip.TinyCLIPRecipe`),
    or None when none is shipped for it.

    The copy is looked up by the recipe's fingerprint, and the ``recipe.json`` inside must be the
    recipe itself, so a renamed or stale copy is never taken for the recipe's.
    """
    folder = SHIPPED_DIR / f"{kind}-{recipe.fingerprint()}"
    try:
        saved = json.loads((folder / "recipe.json").read_text())
    except (OSError, ValueError):
        return None
    return folder if saved == json.loads(json.dumps(recipe.to_dict())) else None


def rebuild_shipped(into: Path = SHIPPED_DIR) -> list[Path]:
    """Train the base model and the tiny CLIP from their default recipes into ``into`` (replacing
    what is there for those recipes, and removing shipped copies of older recipes). Returns the
    two directories."""
    import shutil

    from .base_model import BaseModelRecipe, build_base_model
    from .clip import TinyCLIPRecipe, train_tiny_clip

    into = Path(into)
    into.mkdir(parents=True, exist_ok=True)
    base, clip = BaseModelRecipe(), TinyCLIPRecipe()
    targets = {"base": (base.fingerprint(), lambda d: build_base_model(base, d, overwrite=True)),
               "clip": (clip.fingerprint(), lambda d: train_tiny_clip(d, recipe=clip, overwrite=True))}
    written = []
    for kind, (fingerprint, build) in targets.items():
        target = into / f"{kind}-{fingerprint}"
        build(target)  # built aside and renamed into place (mmpo.io.building_directory)
        for old in into.glob(f"{kind}-*"):
            if old != target:
                shutil.rmtree(old)
        written.append(target)
    return written
