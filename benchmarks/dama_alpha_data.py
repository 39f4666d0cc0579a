"""Does DAMA's data-aware factor measure quality or sentence counts? alpha_D on the demo's pairs,
with the softmax over raw CLIP cosines (before) and over CLIP's logits (after: cosine x logit scale).

    python benchmarks/dama_alpha_data.py                       # the demo's 800 scenes (cached pairs)
    python benchmarks/dama_alpha_data.py --n-pairs 100         # fewer scenes

The records are the demo's default ones (``mmpo demo``'s self-generated pairs: the shipped base
model's samples, every claim judged against the scene, best vs worst), built or read from the demo's
cache. Each record is scored once with the shipped tiny CLIP, then ``alpha_D`` is computed both ways
(:func:`mmpo.data.construct.sentence_scores.score_sentences`, ``dama_scores="cosine" | "logits"``).

Printed, and written to ``benchmarks/results/dama_alpha_data.json`` (``--out``): Spearman's rank
correlation of ``alpha_D`` with

* the judged quality gap: judged-wrong claims of the rejected response minus those of the chosen one
  (higher: the chosen response is clearly better, an easy pair, where DAMA wants a larger beta);
* the sentence-count difference ``p - q`` (chosen minus rejected sentences), which the raw-cosine
  softmax measures instead (``delta ~ (p - q) / (p + q)``);

over all pairs, and over the pairs whose two responses have equal sentence counts (where the count
cannot explain anything).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from efficacy import spearman  # noqa: E402  (the same rank correlation as the efficacy grid)

RESULTS = Path(__file__).resolve().parent / "results" / "dama_alpha_data.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from mmpo.io import default_cache_dir

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-pairs", type=int, default=800, help="scenes to build pairs from (the demo's default)")
    p.add_argument("--cache-dir", default=str(default_cache_dir()), help="the demo's cache ($MMPO_CACHE)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def judged_gap(record) -> int:
    """Judged-wrong claims of the rejected response minus those of the chosen one."""
    claims = record.meta["self_pairs"]
    return (sum(not c["correct"] for c in claims["rejected_claims"])
            - sum(not c["correct"] for c in claims["chosen_claims"]))


def correlations(records) -> dict:
    """Spearman of alpha_D with the judged gap and with the count difference, all and equal-count pairs."""
    alpha = np.array([r.data_alpha for r in records])
    gap = np.array([judged_gap(r) for r in records], float)
    count = np.array([len(r.chosen_sentence_scores) - len(r.rejected_sentence_scores) for r in records], float)
    equal = count == 0
    return {"n": len(records), "n_equal_counts": int(equal.sum()),
            "alpha_min": float(alpha.min()), "alpha_max": float(alpha.max()),
            "quality_all": spearman(alpha, gap), "count_all": spearman(alpha, count),
            "quality_equal_counts": spearman(alpha[equal], gap[equal]) if equal.sum() > 2 else None}


def main(argv: list[str] | None = None) -> int:
    from mmpo import progress

    ns = parse_args(argv)
    with progress.bars(not ns.no_progress):
        return measure(ns)


def measure(ns: argparse.Namespace) -> int:
    """What :func:`main` measures, on parsed options."""
    from mmpo.data.construct.sentence_scores import score_sentences
    from mmpo.models import load_policy
    from mmpo.scoring.sentences import RuleSplitter
    from mmpo.toyworld import pipeline
    from mmpo.toyworld.base_model import BaseModelRecipe, ensure_base_model
    from mmpo.toyworld.scenes import WorldConfig
    from mmpo.training.config import Methods

    opts = pipeline.DemoOptions(method="dpo", cache_dir=ns.cache_dir, n_pairs=ns.n_pairs, progress=not ns.no_progress,
                            output_dir=str(Path(ns.cache_dir) / "dama-alpha-data"))
    world = WorldConfig(seed=opts.seed)
    recipe = BaseModelRecipe(world=world, n_scenes=opts.base_scenes, steps=opts.base_steps, seed=opts.seed)
    base_dir, _ = ensure_base_model(recipe, opts.cache_dir)
    model_args = pipeline.demo_config(opts, Path(opts.output_dir))[1].model
    model_args.model_name_or_path = str(base_dir)
    model, processor = load_policy(model_args)
    records, _ = pipeline.prepare_records(opts, "self", Methods(), base_dir, model, processor, world)
    scorer = pipeline.clip_scorer(opts)
    results = {"records": len(records), "logit_scale": scorer.logit_scale}
    for reading in ("cosine", "logits"):
        scored, report = score_sentences(records, scorer, RuleSplitter(), dama_scores=reading)
        results[reading] = {**correlations(scored), "delta_bar": report.delta_bar}

    lines = [f"alpha_D on {results['records']} self-generated pairs (tiny CLIP, logit scale "
             f"{results['logit_scale']:.1f}); Spearman correlation of alpha_D with:", "",
             "| softmax over | judged quality gap | sentence-count difference | quality gap, equal counts (n) "
             "| alpha_D range |", "| --- | --- | --- | --- | --- |"]
    for reading, label in (("cosine", "raw cosines (before)"), ("logits", "CLIP logits (after)")):
        r = results[reading]
        equal = "n/a" if r["quality_equal_counts"] is None else f"{r['quality_equal_counts']:+.3f}"
        lines.append(f"| {label} | {r['quality_all']:+.3f} | {r['count_all']:+.3f} | {equal} ({r['n_equal_counts']}) "
                     f"| {r['alpha_min']:.3f}-{r['alpha_max']:.3f} |")
    print("\n".join(lines))
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
