"""``mmpo demo``: a preference method end to end on the synthetic world, on a laptop CPU.

1. the base model: tiny LLaVA, SFT on noisy captions (shipped with mmpo; built and cached for other recipes);
2. build preference records from fresh scenes, in the form the method needs: by default ``self``
   pairs, RLAIF-V's recipe (6 responses sampled from the base model per image, every sentence
   judged against the scene's annotations, the best-judged vs the worst-judged response;
   :mod:`mmpo.data.construct.self_pairs`), or ``truth`` pairs (chosen = exact description,
   rejected = one hallucinated object) or ``seva`` pairs (the base model's answers on the clean vs
   the diffusion-noised image); ASPO and DAMA add per-sentence CLIP scores from the world's tiny
   CLIP; AdaViP adds vision-rejected images;
3. evaluate the base model on the held-out split (CHAIR, coverage, POPE);
4. train the method with :class:`~mmpo.training.trainer.PreferenceTrainer`, and the SFT-on-chosen
   control on the same records (``configs/toyworld/sft_chosen.yaml``: the chosen responses' NLL
   alone), the baseline a preference method has to beat (``--no-control`` skips it);
5. evaluate again; write ``metrics.json``, the training log and plots; print a table.

Each method is a config file, the one ``mmpo train`` runs: ``configs/toyworld/METHOD.yaml`` in a
checkout (``mmpo/configs/toyworld/`` in an installed package). The demo reads the method's switches
and training settings from it and overrides the paths, the seed and the device, and the settings
given on its command line (--steps, --batch-size, --learning-rate, --beta, --sft-weight).

The base model and the tiny CLIP built from the default recipes are shipped with mmpo
(:mod:`mmpo.toyworld.shipped`; ``--no-shipped`` builds them here instead). Built models, the
prepared records and the base model's metrics are cached (``--cache-dir``), so running several
methods one after another pays for them once.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from ..toyworld.pipeline import DemoOptions, run_demo


def build_parser() -> argparse.ArgumentParser:
    """The command line, one flag per :class:`DemoOptions` field, so the two cannot drift apart."""
    p = argparse.ArgumentParser(prog="mmpo demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(DemoOptions)
    for option in dataclasses.fields(DemoOptions):
        flag = "--" + option.name.replace("_", "-")
        text = option.metadata["help"]
        kind = hints[option.name]
        if kind is bool:
            if option.default:
                p.add_argument(f"--no-{flag[2:]}", dest=option.name, action="store_false", help=text)
            else:
                p.add_argument(flag, dest=option.name, action="store_true", help=text)
            continue
        (value_type,) = [t for t in typing.get_args(kind) if t is not type(None)] or [kind]
        choices = option.metadata["choices"]
        if callable(choices):
            choices = list(choices())
        p.add_argument(flag, dest=option.name, type=value_type, default=option.default, choices=choices, help=text)
    return p


def main(argv: list[str]) -> int:
    ns = build_parser().parse_args(argv)
    run_demo(DemoOptions(**vars(ns)))
    return 0
