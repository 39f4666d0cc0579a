"""On-policy rounds vs one offline pass, at equal numbers of pairs and optimizer steps.

    python benchmarks/rounds.py                          # DPO and DAMA, 3 seeds, 3 rounds (~20 min, 2 cores)
    python benchmarks/rounds.py --quick                  # a smoke run
    python benchmarks/rounds.py --methods dpo aspo --seeds 2 --rounds 2

For each method and seed (the seed of sampling and of training; the base model, the prompt pool
and the evaluation scenes are fixed):

1. **offline pass**: 6 responses per scene sampled from the shipped base model on all ``--n-pairs``
   preference scenes, judged against the scenes, best vs worst (the demo's self pairs); the
   method's data added (CLIP sentence scores / DAMA's alpha_D); trimmed to ``rounds * (P // rounds)``
   pairs; trained for the config's ``max_steps`` (200); evaluated on the held-out scenes;
2. **rounds**: :func:`mmpo.training.rounds.run_rounds` on the same scenes split in ``--rounds``
   slices, each round sampled from the model it starts from, at most ``P // rounds`` pairs and
   ``max_steps / rounds`` steps per round, reference = the round's start (RLAIF-V); every round
   evaluated on the same held-out scenes.

Then, per method, each round and the offline pass: CHAIR_i, CHAIR_s, coverage and POPE F1 (the mean
over seeds) with bootstrap 95% intervals (scenes and seeds resampled, one draw shared by all, as
``benchmarks/efficacy.py``), the paired difference of each round from the offline pass, the
judged-wrong share of chosen responses per round, and seconds per stage.

Output in ``--run-dir``: ``results.md``, ``results.json``, ``rounds.png``; the runs themselves
(``METHOD-sSEED/offline``, ``METHOD-sSEED/rounds/round-K``) are kept, and a rerun reuses them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from efficacy import bootstrap, scene_counts  # noqa: E402

METRICS = ("chair_i", "chair_s", "coverage", "pope_f1")
QUICK = {"seeds": 1, "n_pairs": 24, "n_eval_scenes": 6, "steps": 6, "bootstrap": 50}
CONFIGS = Path(__file__).resolve().parents[1] / "src" / "mmpo" / "configs" / "toyworld"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/rounds-bench")
    p.add_argument("--methods", nargs="+", default=["dpo", "dama"], help="configs/toyworld/METHOD.yaml names")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n-pairs", type=int, default=600, help="preference scenes (the pool)")
    p.add_argument("--n-eval-scenes", type=int, default=200)
    p.add_argument("--steps", type=int, default=None, help="total optimizer steps (default: the config's)")
    p.add_argument("--pair-score", choices=("wrong_count", "wrong_rate"), default="wrong_count",
                   help="a response's score: minus its judged-wrong claims (RLAIF-V) or minus their fraction")
    p.add_argument("--round-reference", choices=("previous", "initial"), default="previous",
                   help="each round's reference: its starting model (RLAIF-V) or the base model")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--quick", action="store_true")
    ns = p.parse_args(argv)
    if ns.quick:
        for key, value in QUICK.items():
            setattr(ns, key, value)
    return ns


def main(argv: list[str] | None = None) -> int:
    import torch

    from mmpo.data.construct.self_pairs import PairingRule, SamplingSettings, build_self_pairs
    from mmpo.data.records import load_records, save_records
    from mmpo.models import load_policy
    from mmpo.scoring.clip import CLIPScorer
    from mmpo.toyworld.judge import SceneJudge
    from mmpo.toyworld.rounds import preference_scenes, scene_items, world_evaluator
    from mmpo.toyworld.scenes import WorldConfig
    from mmpo.toyworld.shipped import SHIPPED_DIR
    from mmpo.training.config import DataArguments, parse_config
    from mmpo.training.rounds import RoundsPlan, method_enricher, read_rounds, run_rounds
    from mmpo.training.run import run_training

    ns = parse_args(argv)
    torch.set_num_threads(2)
    run_dir = Path(ns.run_dir)
    (base,) = sorted(SHIPPED_DIR.glob("base-*"))
    (clip,) = sorted(SHIPPED_DIR.glob("clip-*"))
    world = WorldConfig(seed=0)
    items = scene_items(preference_scenes(world, ns.n_pairs, 0), run_dir / "images")
    scorer = CLIPScorer(clip, cache_dir=run_dir / "clip-cache")
    full_evaluate = world_evaluator(world, ns.n_eval_scenes, seed=0, keep_items=True)

    def evaluate_into(folder: Path, model, processor) -> dict[str, Any]:
        """The scalars; the per-scene rows go to ``folder/eval_items.json`` (for the bootstrap)."""
        result = full_evaluate(model, processor)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "eval_items.json").write_text(json.dumps({k: result[k] for k in ("per_scene", "per_question")}))
        return {k: v for k, v in result.items() if k not in ("per_scene", "per_question", "samples")}

    def round_evaluator(rounds_dir: Path):
        def evaluate(model, processor) -> dict[str, Any]:  # a round's model is ROUND/model; the start is round 0
            folder = Path(model.name_or_path).parent
            return evaluate_into(folder if folder.parent == rounds_dir else rounds_dir / "round-0", model, processor)
        return evaluate

    results: dict[str, Any] = {"settings": vars(ns), "base": str(base), "runs": {}}
    for method in ns.methods:
        for seed in range(ns.seeds):
            name = f"{method}-s{seed}"
            folder = run_dir / name
            overrides = ["--model_name_or_path", str(base), "--seed", str(seed), "--disable_tqdm", "true",
                         "--output_dir", str(folder / "offline" / "model")]
            if ns.steps is not None:
                overrides += ["--max_steps", str(ns.steps), "--warmup_steps", str(max(ns.steps // 10, 0))]
            config = parse_config(CONFIGS / f"{method.replace('-', '_')}.yaml", overrides)
            model_args, args, methods = config.model, config.training, config.methods
            enrich = method_enricher(methods, scorer=scorer)
            sampling = SamplingSettings(n=6, temperature=1.0, seed=seed)
            rule = PairingRule(score=ns.pair_score)
            judge = SceneJudge(seed=seed)

            # 1. the offline pass
            offline = folder / "offline" / "result.json"
            if not offline.exists():
                data = run_dir / "data" / f"s{seed}"  # the base model's samples: shared by the methods
                began = time.perf_counter()
                model, processor = load_policy(model_args)
                sampled, paired = build_self_pairs(model, processor, items, judge, data / "pairs.jsonl",
                                                   sampling=sampling, rule=rule, batch_size=32)
                del model
                sample_seconds = time.perf_counter() - began
                records = load_records(data / "pairs.jsonl").records
                records = enrich(records, folder / "offline") if enrich else records
                records = records[:len(records) - len(records) % ns.rounds]
                save_records(records, folder / "offline" / "train.jsonl")
                began = time.perf_counter()
                trainer = run_training(model_args, DataArguments(train_file=str(folder / "offline" / "train.jsonl")),
                                       args, methods)
                train_seconds = time.perf_counter() - began
                began = time.perf_counter()
                metrics = evaluate_into(folder / "offline", trainer.model.eval(), processor)
                offline.write_text(json.dumps({
                    "pairs": len(records), "steps": trainer.state.global_step, "metrics": metrics,
                    "chosen_with_wrong": paired.chosen_with_wrong, "seconds": {
                        "sample+judge": round(sample_seconds, 1), "train": round(train_seconds, 1),
                        "evaluate": round(time.perf_counter() - began, 1)}}, indent=2))
                del trainer
            done = json.loads(offline.read_text())
            print(f"{name} offline: {done['pairs']} pairs, {done['steps']} steps, "
                  + ", ".join(f"{m} {done['metrics'][m]:.3f}" for m in METRICS), flush=True)

            # 2. the rounds
            n, total = ns.rounds, args.max_steps
            plan = RoundsPlan(rounds=n, items_per_round=ns.n_pairs // n, sampling=sampling, rule=rule,
                              pairs_per_round=done["pairs"] // n, sample_batch_size=32,
                              round_reference=ns.round_reference,
                              steps=tuple(total // n + (1 if k < total % n else 0) for k in range(n)))
            rounds = run_rounds(model_args, dataclasses.replace(args, output_dir=str(folder / "rounds")), methods, plan,
                                items, judge, enrich=enrich, evaluate=round_evaluator((folder / "rounds").resolve()), say=print)
            results["runs"][name] = {"offline": done, "rounds": [r.to_dict() for r in rounds]}
            assert [r.round for r in read_rounds(folder / "rounds")] == list(range(n + 1))

    summary = aggregate(run_dir, results, ns)
    (run_dir / "results.json").write_text(json.dumps({**results, "summary": summary}, indent=2))
    (run_dir / "results.md").write_text(markdown(summary, ns))
    plot(summary, run_dir / "rounds.png")
    print(markdown(summary, ns))
    return 0


def aggregate(run_dir: Path, results: dict[str, Any], ns: argparse.Namespace) -> dict[str, Any]:
    """Per method: bootstrap means and intervals of the offline pass, the start and each round, each
    round's paired difference from the offline pass; the pair statistics and seconds per round."""
    summary: dict[str, Any] = {}
    for method in ns.methods:
        names = [f"{method}-s{seed}" for seed in range(ns.seeds)]
        counts: dict[str, list] = {"offline": [], "start": [], **{f"round {k}": [] for k in range(1, ns.rounds + 1)}}
        for name in names:
            counts["offline"].append(scene_counts(json.loads((run_dir / name / "offline" / "eval_items.json").read_text())))
            for k in range(ns.rounds + 1):
                label = "start" if k == 0 else f"round {k}"
                rows = json.loads((run_dir / name / "rounds" / f"round-{k}" / "eval_items.json").read_text())
                counts[label].append(scene_counts(rows))
        stats = bootstrap(counts, ns.bootstrap, baseline="offline")
        per_round = {}
        for k in range(1, ns.rounds + 1):
            rows = [r for name in names for r in results["runs"][name]["rounds"] if r["round"] == k]
            per_round[k] = {
                "pairs": float(np.mean([r["pairs"]["written"] for r in rows])),
                "chosen_with_wrong": float(np.mean([r["pairs"]["chosen_with_wrong"] for r in rows])),
                "chosen_wrong_rate": float(np.mean([r["pairs"]["chosen_wrong_rate"] for r in rows])),
                "reward_margin": float(np.mean([r["train"]["reward_margin"] for r in rows])),
                "seconds": {stage: float(np.mean([r["seconds"].get(stage, 0) for r in rows]))
                            for stage in ("sample", "judge", "pair", "enrich", "train", "evaluate")}}
        offline = [results["runs"][name]["offline"] for name in names]
        summary[method] = {"metrics": stats["methods"], "n_seeds": stats["n_seeds"], "n_scenes": stats["n_scenes"],
                           "rounds": per_round,
                           "offline": {"pairs": float(np.mean([o["pairs"] for o in offline])),
                                       "chosen_with_wrong": float(np.mean([o["chosen_with_wrong"] for o in offline])),
                                       "seconds": {k: float(np.mean([o["seconds"][k] for o in offline]))
                                                   for k in offline[0]["seconds"]}}}
    return summary


def markdown(summary: dict[str, Any], ns: argparse.Namespace) -> str:
    lines = [f"# On-policy rounds vs one offline pass ({ns.seeds} seed(s), {ns.rounds} rounds, {ns.n_pairs} scenes, "
             f"{ns.n_eval_scenes} held-out scenes, pair score {ns.pair_score}, round reference {ns.round_reference})", ""]
    for method, s in summary.items():
        lines += [f"## {method}", "", "| model | " + " | ".join(METRICS) + " | pairs | chosen with a wrong claim |",
                  "| --- |" + " ---: |" * (len(METRICS) + 2)]
        for label, row in s["metrics"].items():
            cells = []
            for m in METRICS:
                v = row[m]
                cell = f"{v['mean']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]"
                if "diff_vs_dpo" in v and label != "start":
                    d = v["diff_vs_dpo"]
                    cell += f"<br>vs offline {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
                cells.append(cell)
            if label == "offline":
                extra = [f"{s['offline']['pairs']:.0f}", f"{s['offline']['chosen_with_wrong']:.3f}"]
            elif label.startswith("round"):
                r = s["rounds"][int(label.split()[1])]
                extra = [f"{r['pairs']:.0f}", f"{r['chosen_with_wrong']:.3f}"]
            else:
                extra = ["", ""]
            lines.append(f"| {label} | " + " | ".join(cells + extra) + " |")
        lines += ["", "seconds per round (mean over seeds): "
                  + "; ".join(f"round {k}: " + ", ".join(f"{stage} {v:.1f}" for stage, v in r["seconds"].items())
                              for k, r in s["rounds"].items())
                  + "; offline pass: " + ", ".join(f"{k} {v:.1f}" for k, v in s["offline"]["seconds"].items()), ""]
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(METRICS) + 1, figsize=(3.2 * (len(METRICS) + 1), 2.8))
    for method, s in summary.items():
        labels = [label for label in s["metrics"] if label not in ("offline",)]
        xs = [0 if label == "start" else int(label.split()[1]) for label in labels]
        for ax, m in zip(axes, METRICS, strict=False):
            mean = [s["metrics"][label][m]["mean"] for label in labels]
            err = np.array([[s["metrics"][label][m]["mean"] - s["metrics"][label][m]["lo"],
                             s["metrics"][label][m]["hi"] - s["metrics"][label][m]["mean"]] for label in labels]).T
            line = ax.errorbar(xs, mean, yerr=err, marker="o", capsize=2, label=f"{method} rounds")
            off = s["metrics"]["offline"][m]
            ax.errorbar([max(xs) + 0.15], [off["mean"]], yerr=[[off["mean"] - off["lo"]], [off["hi"] - off["mean"]]],
                        marker="s", color=line[0].get_color(), capsize=2, linestyle="none", label=f"{method} offline")
            ax.set_title(m, fontsize=9)
            ax.set_xlabel("round", fontsize=8)
        ks = sorted(s["rounds"])
        axes[-1].plot(ks, [s["rounds"][k]["chosen_with_wrong"] for k in ks], marker="o", label=method)
        axes[-1].set_title("chosen with a judged-wrong claim", fontsize=9)
        axes[-1].set_xlabel("round", fontsize=8)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
