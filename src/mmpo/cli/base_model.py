"""``mmpo base-model``: build the synthetic world's base model.

    mmpo base-model --output-dir DIR [--steps N --n-scenes N --seed S]   # one recipe, into DIR
    mmpo base-model --output-dir DIR --overwrite ...                     # replace the checkpoint in DIR
    mmpo base-model --rebuild                                            # the shipped checkpoints

``--rebuild`` trains the base model and the tiny CLIP from their default recipes and replaces the
copies shipped inside the package (``mmpo/toyworld/pretrained/``; in a checkout, the files to commit).
The demo uses the shipped copies so that its numbers do not depend on the CPU that trained them.

DIR is written whole or not at all: the model is built in a temporary folder next to it and renamed
into place when complete. A DIR that already holds a checkpoint is refused unless --overwrite; a
DIR holding anything else is never replaced; a second ``mmpo base-model`` writing the same DIR while
one is running is refused, naming the first one's pid.
"""

from __future__ import annotations

import argparse
import time


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmpo base-model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--output-dir", help="checkpoint directory to write")
    target.add_argument("--rebuild", action="store_true",
                        help="train the shipped base model and tiny CLIP again from their default recipes, "
                             "replacing the package's copies")
    p.add_argument("--steps", type=int, default=1500, help="SFT optimizer steps (--output-dir)")
    p.add_argument("--n-scenes", type=int, default=3000, help="training scenes (--output-dir)")
    p.add_argument("--seed", type=int, default=0, help="seed (--output-dir)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the checkpoint already in --output-dir (only a checkpoint is ever replaced)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    return p


def main(argv: list[str]) -> int:
    from .. import progress

    ns = build_parser().parse_args(argv)
    with progress.bars(ns.progress):
        return build(ns)


def build(ns: argparse.Namespace) -> int:
    if ns.rebuild:
        from ..toyworld.shipped import rebuild_shipped

        started = time.time()
        for path in rebuild_shipped():
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            print(f"written {path} ({size / 1e6:.1f} MB)")
        print(f"[{time.time() - started:.0f} s]")
        return 0
    from ..toyworld.base_model import BaseModelRecipe, build_base_model
    from ..toyworld.scenes import WorldConfig

    recipe = BaseModelRecipe(world=WorldConfig(seed=ns.seed), n_scenes=ns.n_scenes, steps=ns.steps, seed=ns.seed)
    print(f"base model written to {build_base_model(recipe, ns.output_dir, overwrite=ns.overwrite)}")
    return 0
