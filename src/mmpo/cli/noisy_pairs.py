"""``mmpo noisy-pairs``: build SeVa noisy-image preference pairs (the data ASPO trains on).

The model answers each instruction on the clean image (chosen) and on a copy corrupted by
``--noise-step`` of ``--noise-steps-total`` forward-diffusion steps (rejected); pairs with identical
or empty answers are dropped. The output is a JSONL file of preference records that ``mmpo train``
reads. Run the same command again to resume a killed run: finished items are skipped.

Input: ``--input items.jsonl``, one ``{"id": ..., "image": PATH, "prompt" (or "instruction"): ...}``
per line (relative image paths start from the file's directory; a missing id becomes the line's
index), or ``--synthetic N``: N scenes of the built-in synthetic world, rendered to PNG under the
output's directory, each with the prompt ``describe the image .``.

examples:
  mmpo noisy-pairs --model ckpt/ --input items.jsonl --output data/seva.jsonl
  mmpo noisy-pairs --model runs/base/model --synthetic 200 --output runs/seva/pairs.jsonl --batch-size 16
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..io import read_items  # noqa: F401  (re-exported: the items format of this command)


def build_parser() -> argparse.ArgumentParser:
    from ..data.construct.noisy_pairs import SCHEDULES
    from ..hub import ALLOW_DOWNLOAD_HELP

    p = argparse.ArgumentParser(prog="mmpo noisy-pairs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="local checkpoint directory (AutoModelForImageTextToText + AutoProcessor)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="JSONL of items: id, image, prompt (or instruction)")
    source.add_argument("--synthetic", type=int, metavar="N", help="use N scenes of the synthetic world")
    p.add_argument("--output", required=True, help="JSONL file of preference records (appended to on resume)")
    p.add_argument("--image-dir", help="where in-memory images go as PNG (default: images/ next to --output)")
    p.add_argument("--noise-step", type=int, default=500, help="forward diffusion steps k (SeVa: 500)")
    p.add_argument("--noise-steps-total", type=int, default=1000, help="schedule length T (SeVa: 1000)")
    p.add_argument("--schedule", choices=SCHEDULES, default="linear",
                   help="beta schedule: linear (DDPM, 1e-4..0.02), cosine (improved DDPM), "
                        "sigmoid (the VCD/SeVa reference code; much milder at the same k)")
    p.add_argument("--batch-size", type=int, default=8, help="items per batch (one generate call of 2x this)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="answer length limit")
    p.add_argument("--seed", type=int, default=0, help="noise seed (and the synthetic world's seed)")
    p.add_argument("--device", default="auto", help="'auto' (cuda if available, else cpu), 'cpu', 'cuda', ...")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="weights dtype ('auto': as saved)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--allow-download", action="store_true", help=ALLOW_DOWNLOAD_HELP)
    return p


def synthetic_items(n: int, seed: int, image_dir: Path) -> list[tuple[str, str, str, dict[str, Any]]]:
    """``n`` scenes of the synthetic world (``WorldConfig(seed=seed)``) rendered to ``image_dir``,
    with the describe prompt; each item's meta keeps its scene (as ``ground_truth_pairs`` does).
    A damaged or missing PNG is rendered again (:func:`mmpo.toyworld.rounds.scene_items`)."""
    from ..toyworld.rounds import scene_items
    from ..toyworld.scenes import WorldConfig, sample_scenes

    return scene_items(sample_scenes(WorldConfig(seed=seed), n), image_dir)


def main(argv: list[str]) -> int:
    from .. import progress
    from ..data.construct.noisy_pairs import DiffusionNoise, build_noisy_pairs
    from ..hub import allowing_downloads
    from ..models import load_policy
    from ..training.config import ModelArguments

    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.batch_size < 1 or ns.max_new_tokens < 1:
        parser.error("--batch-size and --max-new-tokens must be >= 1")
    if ns.synthetic is not None and ns.synthetic < 1:
        parser.error("--synthetic needs N >= 1")
    try:
        noise = DiffusionNoise(step=ns.noise_step, num_steps=ns.noise_steps_total, schedule=ns.schedule,
                               seed=ns.seed)
    except ValueError as error:
        parser.error(str(error))
    with allowing_downloads(ns.allow_download):  # first: a mistyped --model fails before any work
        model, processor = load_policy(ModelArguments(model_name_or_path=ns.model, dtype=ns.dtype),
                                       device=ns.device, what="model")
    output = Path(ns.output)
    image_dir = Path(ns.image_dir) if ns.image_dir else output.parent / "images"
    if ns.input:
        try:
            items: list = read_items(ns.input)
        except (OSError, ValueError) as error:
            parser.error(str(error))
        source = str(ns.input)
    else:
        items = synthetic_items(ns.synthetic, ns.seed, image_dir)
        source = f"synthetic(seed={ns.seed})"

    with progress.bars(not ns.no_progress):
        report = build_noisy_pairs(model, processor, items, output, noise=noise, batch_size=ns.batch_size,
                                   max_new_tokens=ns.max_new_tokens, image_dir=image_dir,
                                   meta={"model": str(ns.model), "items": source})
    print(report.summary())
    return 0
