"""Make the synthetic world's *base model*: tokenizer + tiny LLaVA, supervised on noisy captions.

The result is an ordinary checkpoint directory (``config.json``, safetensors weights, processor
and tokenizer files), loadable with ``AutoModelForImageTextToText.from_pretrained`` — the same
code path a user's local LLaVA-1.5 takes. Because the captions carry the world's co-occurrence
prior, the base model hallucinates partner objects on the held-out split, which is what the
preference methods are meant to fix.

Building one takes a few minutes on 2 CPU cores, so :func:`ensure_base_model` caches it under a
hash of its recipe and reuses it; the default recipe's model is shipped with mmpo
(:mod:`mmpo.toyworld.shipped`), so that every machine starts from the same one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..io import building_directory, ensure_directory
from .model import TinyVLMConfig
from .scenes import WorldConfig, sample_scenes


@dataclass(frozen=True)
class BaseModelRecipe:
    """Everything that determines the base model; its hash names the cache entry.

    ``version`` is bumped whenever the code that builds the model changes what it builds
    (tokenizer corpus, architecture, SFT rows), so stale cache entries are not reused.
    """

    world: WorldConfig = field(default_factory=WorldConfig)
    vlm: TinyVLMConfig = field(default_factory=lambda: TinyVLMConfig(vision_layers=3))
    n_scenes: int = 3000
    steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    seed: int = 0
    version: int = 2
    #: Question kinds beyond yes/no existence added to the SFT rows (:func:`~mmpo.toyworld.data.sft_rows`);
    #: empty (the default, the shipped model's recipe) leaves it out of the recipe's dict and hash.
    question_kinds: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """The recipe as ``recipe.json`` holds it (``question_kinds`` only when set, so recipes from
        before the field existed keep their hash)."""
        d = asdict(self)
        if not self.question_kinds:
            del d["question_kinds"]
        else:
            d["question_kinds"] = list(self.question_kinds)
        return d

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


#: Files and folders that say a directory holds a checkpoint (or a half-written one from before
#: writes were atomic): only such a directory is ever replaced, and only when asked to.
CHECKPOINT_MARKERS = ("recipe.json", "config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json",
                      "preprocessor_config.json", "sft_run")


def check_output_dir(out_dir: str | Path, overwrite: bool) -> Path:
    """``out_dir`` if a checkpoint may be written there: it is absent or empty, or it holds a
    checkpoint and ``overwrite`` is set.

    Raises:
        FileExistsError: it holds a checkpoint and not ``overwrite`` (naming ``--overwrite``); or it
            holds other files, or is a file: those are never replaced.
    """
    out_dir = Path(out_dir)
    if out_dir.is_symlink() or out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory: choose a new or empty output directory")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return out_dir
    markers = [name for name in CHECKPOINT_MARKERS if (out_dir / name).exists()]
    if not markers:
        raise FileExistsError(f"{out_dir} holds files that are not a checkpoint ({', '.join(sorted(p.name for p in out_dir.iterdir())[:5])}"
                              "...): not replaced, with or without --overwrite; choose a new or empty output directory")
    if not overwrite:
        raise FileExistsError(f"{out_dir} already holds a checkpoint ({', '.join(markers)}): pass --overwrite to "
                              "replace it, or choose another output directory")
    return out_dir


def build_base_model(recipe: BaseModelRecipe, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Train the base model from scratch into ``out_dir``; returns ``out_dir``.

    The model is written into a temporary folder next to ``out_dir`` and renamed into place when
    complete (:func:`mmpo.io.building_directory`), so ``out_dir`` never holds half a model: a kill
    leaves nothing, the old directory or the new one. An existing checkpoint in ``out_dir`` is
    replaced only with ``overwrite`` (:func:`check_output_dir`); a second process writing the same
    ``out_dir`` meanwhile is refused, naming the first one's pid.
    """

    out_dir = check_output_dir(out_dir, overwrite)
    with building_directory(out_dir, replace=overwrite) as folder:
        _train_base_model(recipe, folder)
    return out_dir


def _train_base_model(recipe: BaseModelRecipe, out_dir: Path) -> None:
    """Train the base model into the fresh folder ``out_dir`` (``recipe.json`` written last)."""
    import torch
    from transformers import TrainingArguments

    from .. import progress
    from ..training.sft import train_sft
    from .data import sft_rows
    from .model import build_processor, build_tiny_vlm, train_tokenizer

    torch.manual_seed(recipe.seed)
    scenes = sample_scenes(recipe.world, recipe.n_scenes, prefix="train")
    rows = sft_rows(scenes, recipe.world, seed=recipe.seed, question_kinds=recipe.question_kinds)
    tokenizer = train_tokenizer()
    processor = build_processor(tokenizer, recipe.vlm)
    model = build_tiny_vlm(tokenizer, recipe.vlm, seed=recipe.seed)
    args = TrainingArguments(
        output_dir=str(out_dir / "sft_run"), max_steps=recipe.steps, per_device_train_batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate, lr_scheduler_type="cosine", warmup_steps=recipe.warmup_steps,
        weight_decay=0.0, logging_steps=50, save_strategy="no", report_to="none", remove_unused_columns=False,
        disable_tqdm=not progress.enabled(), seed=recipe.seed, use_cpu=not torch.cuda.is_available(),
    )
    trainer = train_sft(model, processor, rows, args)
    model.save_pretrained(out_dir)
    processor.tokenizer.padding_side = "right"
    processor.save_pretrained(out_dir)
    (out_dir / "sft_log.json").write_text(json.dumps(trainer.state.log_history, indent=2))
    shutil.rmtree(out_dir / "sft_run", ignore_errors=True)
    (out_dir / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2))  # written last: marks completion


def ensure_base_model(recipe: BaseModelRecipe, cache_root: str | Path,
                      shipped: bool = True) -> tuple[Path, bool]:
    """The base model for ``recipe``: the one shipped with mmpo when ``recipe`` is the default
    recipe and ``shipped`` (:mod:`mmpo.toyworld.shipped`), else the cached one, built first if
    missing. Returns ``(path, was_ready)``: False when it was built now.

    The model is built in a temporary directory and renamed into place (:func:`mmpo.io.ensure_directory`),
    so an interrupted build never leaves a half-written cache entry.
    """
    from .shipped import shipped_checkpoint

    if shipped and (path := shipped_checkpoint("base", recipe)) is not None:
        return path, True
    target = Path(cache_root) / f"toyworld-base-{recipe.fingerprint()}"
    return ensure_directory(target, lambda folder: build_base_model(recipe, folder),
                            "recipe.json")
