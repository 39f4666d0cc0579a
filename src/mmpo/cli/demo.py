"""``mmpo demo``: the whole method on the synthetic world, end to end, on a laptop CPU.

1. build (or reuse from the cache) the base model: tiny LLaVA, SFT on noisy captions;
2. build preference records from fresh scenes and write them as JSONL + PNG images;
3. evaluate the base model on the held-out split (CHAIR, coverage, POPE);
4. train the preference method with :class:`~mmpo.training.trainer.PreferenceTrainer`;
5. evaluate again; write ``metrics.json``, the training log and a plot; print a table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

METHODS = ("dpo",)
TABLE_KEYS = ("chair_i", "chair_s", "coverage", "mentions_per_response", "attribute_error", "pope_f1",
              "pope_accuracy", "pope_yes_ratio")


@dataclass
class DemoOptions:
    method: str = "dpo"
    output_dir: str = "runs/demo"
    cache_dir: str = os.environ.get("MMPO_CACHE", str(Path.home() / ".cache" / "mmpo"))
    n_pairs: int = 800
    n_eval_scenes: int = 200
    steps: int = 150
    batch_size: int = 16
    learning_rate: float = 1e-4
    beta: float = 0.1
    sft_weight: float = 1.0
    base_steps: int = 1200
    base_scenes: int = 3000
    seed: int = 0
    progress: bool = True


def build_parser() -> argparse.ArgumentParser:
    d = DemoOptions()
    p = argparse.ArgumentParser(prog="mmpo demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=METHODS, default=d.method, help="preference method to train")
    p.add_argument("--output-dir", default=d.output_dir, help="run directory (metrics.json, logs, plots)")
    p.add_argument("--cache-dir", default=d.cache_dir, help="where the base model is cached ($MMPO_CACHE)")
    p.add_argument("--n-pairs", type=int, default=d.n_pairs, help="preference records to build")
    p.add_argument("--n-eval-scenes", type=int, default=d.n_eval_scenes, help="held-out scenes to evaluate on")
    p.add_argument("--steps", type=int, default=d.steps, help="preference optimizer steps")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="records per step")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--beta", type=float, default=d.beta)
    p.add_argument("--sft-weight", type=float, default=d.sft_weight,
                   help="NLL term on the chosen response (0 = plain DPO, which collapses a tiny model)")
    p.add_argument("--base-steps", type=int, default=d.base_steps, help="SFT steps of the base model")
    p.add_argument("--base-scenes", type=int, default=d.base_scenes, help="SFT scenes of the base model")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    return p


def run_demo(opts: DemoOptions) -> dict:
    """Run the demo; returns the ``metrics.json`` content."""
    import torch

    from ..data.collator import PreferenceDataset
    from ..data.records import load_records, save_records
    from ..evaluation.synthetic import evaluate_synthetic
    from ..plots import plot_log_history
    from ..toyworld.base import BaseModelRecipe, ensure_base_model
    from ..toyworld.data import ground_truth_pairs
    from ..toyworld.scenes import WorldConfig, sample_scenes
    from ..training.config import ModelArguments, PreferenceConfig
    from ..training.model_loading import load_policy, prepare_policy
    from ..training.trainer import PreferenceTrainer

    started = time.time()
    out = Path(opts.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(opts.seed)
    world = WorldConfig(seed=opts.seed)

    say(f"[1/5] base model (tiny LLaVA, SFT on noisy captions; cache: {opts.cache_dir})")
    recipe = BaseModelRecipe(world=world, n_scenes=opts.base_scenes, steps=opts.base_steps, seed=opts.seed)
    base_dir, cached = ensure_base_model(recipe, opts.cache_dir, progress=opts.progress)
    say(f"      {'reused' if cached else 'built'} {base_dir}")

    say("[2/5] preference records: chosen = exact description, rejected = one hallucinated object")
    train_scenes = sample_scenes(WorldConfig(seed=opts.seed + 1), opts.n_pairs, prefix="pref")
    records = ground_truth_pairs(train_scenes, world, out / "data" / "images", seed=opts.seed, progress=opts.progress)
    records_path = save_records(records, out / "data" / "train.jsonl")
    loaded = load_records(records_path)
    say(f"      {loaded.summary()} -> {records_path}")
    eval_scenes = sample_scenes(world.held_out(), opts.n_eval_scenes, prefix="heldout")
    stats_scenes = sample_scenes(world, recipe.n_scenes, prefix="train")

    model_args = ModelArguments(model_name_or_path=str(base_dir))
    model, processor = load_policy(model_args)

    def evaluate(m) -> dict:
        return evaluate_synthetic(m, processor, eval_scenes, pope_split_scenes_for_stats=stats_scenes,
                                  seed=opts.seed, progress=opts.progress)

    say(f"[3/5] evaluate the base model on {len(eval_scenes)} held-out scenes (priors broken)")
    before = evaluate(model)

    say(f"[4/5] train {opts.method} for {opts.steps} steps")
    args = PreferenceConfig(
        output_dir=str(out / "train"), max_steps=opts.steps, per_device_train_batch_size=opts.batch_size,
        learning_rate=opts.learning_rate, lr_scheduler_type="cosine", warmup_steps=min(10, opts.steps // 10),
        weight_decay=0.0, logging_steps=5, save_strategy="no", beta=opts.beta, sft_weight=opts.sft_weight,
        seed=opts.seed, disable_tqdm=not opts.progress, use_cpu=not torch.cuda.is_available(),
    )
    model = prepare_policy(model, model_args, args)
    trainer = PreferenceTrainer(model, args, processor, PreferenceDataset(loaded.records))
    trainer.train()

    say("[5/5] evaluate the trained model")
    after = evaluate(trainer.model)

    log = trainer.state.log_history
    (out / "train_log.json").write_text(json.dumps(log, indent=2))
    plot = plot_log_history(log, ["loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"],
                            out / "rewards.png", title=f"mmpo demo: {opts.method}")
    metrics = {
        "method": opts.method,
        "before": {k: v for k, v in before.items() if k != "samples"},
        "after": {k: v for k, v in after.items() if k != "samples"},
        "samples": {"before": before.get("samples", []), "after": after.get("samples", [])},
        "options": asdict(opts),
        "base_model": str(base_dir),
        "seconds": round(time.time() - started, 1),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    say("\n" + metrics_table(metrics))
    say(f"\nrun directory: {out}  (metrics.json, train_log.json{', ' + plot.name if plot else ''})"
        f"  [{metrics['seconds']:.0f} s]")
    return metrics


def metrics_table(metrics: dict) -> str:
    """A Markdown table of the headline metrics before and after training."""
    rows = ["| metric | before | after | change |", "| --- | ---: | ---: | ---: |"]
    for key in TABLE_KEYS:
        if key in metrics["before"] and key in metrics["after"]:
            b, a = metrics["before"][key], metrics["after"][key]
            rows.append(f"| {key} | {b:.3f} | {a:.3f} | {a - b:+.3f} |")
    return "\n".join(rows)


def say(message: str) -> None:
    print(message, flush=True)


def main(argv: list[str]) -> int:
    ns = build_parser().parse_args(argv)
    run_demo(DemoOptions(**vars(ns)))
    return 0
