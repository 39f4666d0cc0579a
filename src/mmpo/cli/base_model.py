"""``mmpo base-model --output-dir DIR``: build the synthetic world's base model into DIR."""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmpo base-model", description=__doc__)
    p.add_argument("--output-dir", required=True, help="checkpoint directory to write")
    p.add_argument("--steps", type=int, default=1500, help="SFT optimizer steps")
    p.add_argument("--n-scenes", type=int, default=3000, help="training scenes")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str]) -> int:
    from ..toyworld.base_model import BaseModelRecipe, build_base_model
    from ..toyworld.scenes import WorldConfig

    ns = build_parser().parse_args(argv)
    recipe = BaseModelRecipe(world=WorldConfig(seed=ns.seed), n_scenes=ns.n_scenes, steps=ns.steps, seed=ns.seed)
    print(f"base model written to {build_base_model(recipe, ns.output_dir)}")
    return 0
