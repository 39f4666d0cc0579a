"""Do the methods work? Every method on the same self-generated pairs, several seeds, intervals,
paired differences against DPO, and checks of each method's mechanism.

    python benchmarks/efficacy.py                      # the full grid: 10 methods x 3 seeds (~25 min, 2 cores)
    python benchmarks/efficacy.py --quick              # 1 seed, a few steps (the integration test runs it)
    python benchmarks/efficacy.py --methods dpo aspo --seeds 2 --run-dir runs/efficacy-aspo
    python benchmarks/efficacy.py --sft-weight 0 --learning-rate 1e-4 --beta 0.5 --run-dir runs/eff-sft0
    python benchmarks/efficacy.py --prompts mixed --run-dir runs/eff-mixed     # half the pairs answer questions
    python benchmarks/power.py runs/efficacy           # how small a difference the grid resolves
    python benchmarks/efficacy_variants.py runs/efficacy runs/eff-sft0 ...     # every setting in one table

1. The base model (the demo's: tiny LLaVA, SFT on noisy captions; cached).
2. One record set for every method: RLAIF-V-style self-generated pairs (6 samples per scene from the
   base model, every sentence judged against the scene, best vs worst; ``--judge-flip`` makes the
   judge noisy), with the world's tiny CLIP's sentence scores and DAMA's alpha_D, and AdaViP's
   vision-rejected images: the demo's own pipeline (``mmpo.cli.pipeline.prepare_records``), cached.
   Methods that do not use a field ignore it, so every method trains on the same pairs.
3. For each method and seed (the seed of training; the data and the evaluation scenes are fixed):
   train with the method's config (``configs/toyworld/METHOD.yaml``), evaluate on the held-out scenes
   (CHAIR_i, CHAIR_s, coverage, POPE F1 and yes-ratio, per scene), and measure visual dependence.
   Each run is saved as it finishes (``runs/METHOD-sSEED/result.json``): a rerun continues the grid.
4. Mean and 95% interval of every metric (bootstrap: scenes resampled, and seeds resampled, each
   replicate), and the paired difference of each method against DPO (the same resampled scenes and
   seeds for both) with its interval.
5. Mechanism checks, independent of the end metrics:
   * ASPO: AUC of the sentence weight ``w_i`` and of its two components (the CLIP similarity ``S_i``
     and minus the perplexity under the base policy) at ranking the judge's correct sentences above
     its wrong ones, inside chosen responses that hold both;
   * DAMA: Spearman correlation of ``alpha_D`` with the pair's true quality gap (judged-wrong claims
     of the rejected minus of the chosen response), and the reward gap of easy vs hard pairs
     during DPO and DAMA training (DAMA's Fig. 1; easy/hard = top/bottom third by alpha_D);
   * AdaViP: visual dependence, the mean over held-out objects O of ``log p(O's sentence | image) -
     log p(O's sentence | image with O removed)``, per model (AdaViP should raise it), and its
     loss weights over training (AdaViP's Fig. 5).
6. Premise checks, per run (``result.json``; a run saved before them is measured from its saved model):
   * ASPO's: inside chosen responses holding judged-wrong sentences, how training moved those
     sentences' log-probs (vs the correct ones'), and how often the trained model's greedy
     description of the same training image names the chosen response's hallucinated objects again;
   * the world's co-occurrence prior (AdaViP's target): POPE's "yes" rate on present objects, on
     absent partners of a present object and on other absent objects, and the share of hallucinated
     mentions that are such partners.

Output, in ``--run-dir``: ``results.md`` (the tables), ``results.json`` (everything, per run and
aggregated), ``metrics.png`` (each metric with its interval per method), ``differences.png``
(paired differences vs DPO), ``dama_gaps.png``, ``adavip_weights.png``, ``visual_dependence.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

#: The grid, in table order: the control first, then DPO, then the methods.
GRID = ("sft-chosen", "dpo", "aspo", "d2po", "mdpo", "dama", "dama-paper", "adavip", "adavip-plus-vision",
        "aspo-dama-adavip")
#: Grid entries that are a method's config with another setting: name -> (config, DemoOptions overrides).
VARIANTS = {"dama-paper": ("dama", {"dama_recipe": "paper"})}
#: The end metrics, each computed from per-scene counts (so a bootstrap can resample scenes).
METRICS = ("chair_i", "chair_s", "coverage", "pope_f1", "pope_yes_ratio")
#: Lower is better for these (the sign that counts as "better than DPO").
LOWER_IS_BETTER = {"chair_i", "chair_s"}
QUICK = {"seeds": 1, "steps": 3, "n_pairs": 16, "n_eval_scenes": 6, "base_steps": 20, "base_scenes": 64,
         "clip_steps": 3, "batch_size": 4, "bootstrap": 50}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/efficacy", help="where the runs, tables and plots go")
    p.add_argument("--cache-dir", default=None, help="base model, CLIP and data cache (default: the demo's)")
    p.add_argument("--methods", nargs="+", default=list(GRID), help=f"subset of {' '.join(GRID)} (dpo is always run)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per method")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: each config's, 200)")
    p.add_argument("--batch-size", type=int, default=None, help="records per step (default: the config's, 16)")
    p.add_argument("--learning-rate", type=float, default=None, help="peak learning rate (default: the config's)")
    p.add_argument("--beta", type=float, default=None, help="DPO temperature (default: the config's)")
    p.add_argument("--sft-weight", type=float, default=None, help="NLL weight (default: the config's, 1)")
    p.add_argument("--data", choices=("self", "truth", "seva"), default="self", help="the pairs (default: self)")
    p.add_argument("--judge-flip", type=float, default=0.0, help="fraction of the scene judge's verdicts flipped")
    p.add_argument("--prompts", choices=("describe", "mixed"), default="describe",
                   help="self pairs' instructions: describe only, or half of them questions (implies --base-questions)")
    p.add_argument("--base-questions", action="store_true",
                   help="start from a base model supervised on colour, count and position questions too (built here)")
    p.add_argument("--dama-recipe", choices=("authors", "paper"), default=None, help="DAMA's recipe (default: the config's)")
    p.add_argument("--n-pairs", type=int, default=800, help="scenes to build pairs from")
    p.add_argument("--n-eval-scenes", type=int, default=200, help="held-out evaluation scenes")
    p.add_argument("--base-steps", type=int, default=1500, help="SFT steps of the base model")
    p.add_argument("--base-scenes", type=int, default=3000, help="SFT scenes of the base model")
    p.add_argument("--clip-steps", type=int, default=None, help="training steps of the tiny CLIP")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates")
    p.add_argument("--quick", action="store_true", help="a smoke run: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    ns = p.parse_args(argv)
    if ns.quick:
        for key, value in QUICK.items():
            setattr(ns, key, value)
    unknown = sorted(set(ns.methods) - set(GRID))
    if unknown:
        p.error(f"unknown methods {unknown}; the grid is {' '.join(GRID)}")
    ns.methods = [m for m in GRID if m in set(ns.methods) | {"dpo"}]
    return ns


# ------------------------------------------------------------------------------------------ statistics
def scene_counts(result: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per-scene numerators and denominators of every metric, from ``evaluate_synthetic(keep_items=True)``.

    ``chair_i = sum(hallucinated) / sum(mentioned)``, ``chair_s = sum(bad) / sum(one)``, ``coverage =
    sum(covered) / sum(true)``, ``pope_f1 = 2 TP / (2 TP + FP + FN)`` and ``pope_yes_ratio = sum(yes) /
    sum(questions)``, each sum over scenes: the definitions of ``chair_scores`` and ``pope_metrics``.
    """
    scenes = result["per_scene"]
    index = {row["scene_id"]: k for k, row in enumerate(scenes)}
    counts = {name: np.zeros(len(scenes)) for name in
              ("hallucinated", "mentioned", "bad", "one", "covered", "true", "tp", "fp", "fn", "yes", "questions")}
    for k, row in enumerate(scenes):
        mentioned, truth = set(row["mentioned"]), set(row["truth"])
        counts["hallucinated"][k] = len(mentioned - truth)
        counts["mentioned"][k] = len(mentioned)
        counts["bad"][k] = bool(mentioned - truth)
        counts["one"][k] = 1
        counts["covered"][k] = len(mentioned & truth)
        counts["true"][k] = len(truth)
    for q in result["per_question"]:
        k = index[q["scene_id"]]
        label, prediction = q["label"], q["prediction"]
        counts["tp"][k] += label == "yes" and prediction == "yes"
        counts["fp"][k] += label == "no" and prediction == "yes"
        counts["fn"][k] += label == "yes" and prediction != "yes"
        counts["yes"][k] += prediction == "yes"
        counts["questions"][k] += 1
    return counts


def saved_scene_counts(run_dir: Path) -> dict[str, dict[int, dict[str, np.ndarray]]]:
    """The per-scene counts of every run a grid saved in ``run_dir`` (``runs/METHOD-sSEED/result.json``),
    as ``{method: {seed: scene_counts}}``."""
    out: dict[str, dict[int, Any]] = {}
    for path in sorted((Path(run_dir) / "runs").glob("*-s*/result.json")):
        result = json.loads(path.read_text())
        out.setdefault(result["method"], {})[int(result["seed"])] = scene_counts(result["metrics"])
    return out


def metric_values(counts: dict[str, np.ndarray], weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric for each row of ``weights`` ``(B, K)`` (how often each scene is drawn): ``(B,)`` each."""

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.zeros_like(num, dtype=float), where=den > 0)

    w = lambda name: weights @ counts[name]  # noqa: E731
    tp = w("tp")
    return {"chair_i": ratio(w("hallucinated"), w("mentioned")), "chair_s": ratio(w("bad"), w("one")),
            "coverage": ratio(w("covered"), w("true")), "pope_f1": ratio(2 * tp, 2 * tp + w("fp") + w("fn")),
            "pope_yes_ratio": ratio(w("yes"), w("questions"))}


def bootstrap(runs: dict[str, list[dict[str, np.ndarray]]], n: int, seed: int = 0,
              baseline: str = "dpo") -> dict[str, Any]:
    """Means, 95% intervals, and paired differences vs ``baseline`` (as ``diff_vs_dpo``).

    ``runs[method]`` holds one ``scene_counts`` per seed (the same scenes in the same order). Each
    replicate draws the scenes with replacement (one draw shared by every method and seed) and the
    seed indices with replacement (shared by every method, so DPO's seed s meets the method's seed s:
    the same data order); a method's value is the mean over the drawn seeds.
    """
    rng = np.random.default_rng(seed)
    n_scenes = len(next(iter(runs.values()))[0]["one"])
    n_seeds = min(len(v) for v in runs.values())
    scene_draws = rng.multinomial(n_scenes, np.full(n_scenes, 1 / n_scenes), size=n)  # (n, K)
    seed_draws = rng.integers(0, n_seeds, size=(n, n_seeds))  # (n, S)
    full = np.ones((1, n_scenes))
    replicates, points = {}, {}
    for method, per_seed in runs.items():
        values = [metric_values(counts, scene_draws) for counts in per_seed[:n_seeds]]  # S x {metric: (n,)}
        replicates[method] = {m: np.stack([v[m] for v in values], axis=1)[np.arange(n)[:, None], seed_draws].mean(1)
                              for m in METRICS}
        points[method] = {m: float(np.mean([metric_values(c, full)[m][0] for c in per_seed[:n_seeds]]))
                          for m in METRICS}
    out: dict[str, Any] = {"n_replicates": n, "n_seeds": n_seeds, "n_scenes": n_scenes, "methods": {}}
    for method in runs:
        row = {}
        for m in METRICS:
            lo, hi = np.percentile(replicates[method][m], [2.5, 97.5])
            row[m] = {"mean": points[method][m], "lo": float(lo), "hi": float(hi)}
            if method != baseline and baseline in runs:
                diff = replicates[method][m] - replicates[baseline][m]
                lo, hi = np.percentile(diff, [2.5, 97.5])
                row[m]["diff_vs_dpo"] = {"mean": points[method][m] - points[baseline][m], "lo": float(lo),
                                         "hi": float(hi)}
        out["methods"][method] = row
    return out


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting one half (Mann-Whitney); NaN
    without both classes."""
    scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if not n_pos or not n_neg:
        return float("nan")
    ranks = average_ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson on average ranks); NaN when either is constant."""
    rx, ry = average_ranks(np.asarray(x, float)), average_ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


# ------------------------------------------------------------------------------------------ model passes
def response_logps(model, processor, records: list, *, batch_size: int = 64, splitter=None):
    """Summed log-probs of each record's chosen and rejected response (and, with ``splitter``, the
    chosen response's per-sentence mean token log-prob), under ``model``, in eval mode."""
    import torch

    from mmpo.data.collator import PreferenceCollator, RowEncoder
    from mmpo.forward import policy_response_logps
    from mmpo.logprobs import span_sums

    collator = PreferenceCollator(RowEncoder(processor), sentence_splitter=splitter)
    chosen, rejected, sentences = [], [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(records), batch_size):
                part = records[start:start + batch_size]
                batch = collator([{"record": r, "index": start + i} for i, r in enumerate(part)])
                logps, mask = policy_response_logps(model, batch)  # (2B, L)
                sums = (logps * mask).sum(1)
                chosen += sums[:len(part)].tolist()
                rejected += sums[len(part):2 * len(part)].tolist()
                if splitter is not None:
                    spans, unit_mask = batch["unit_spans"], batch["unit_mask"]  # (B, S, 2), (B, S)
                    totals = span_sums(logps[:len(part)], spans)  # (B, S)
                    lengths = (spans[..., 1] - spans[..., 0]).clamp(min=1)
                    means = totals / lengths
                    sentences += [means[b][unit_mask[b]].tolist() for b in range(len(part))]
    finally:
        model.train(was_training)
    return np.array(chosen), np.array(rejected), sentences


def visual_dependence(model, processor, scenes: list) -> list[float]:
    """Per object of ``scenes``: ``log p(its sentence | image) - log p(its sentence | image without it)``,
    the sentence answering the describe prompt."""
    from mmpo.toyworld.scenes import DESCRIBE_PROMPT
    from mmpo.types import PreferenceRecord

    full, removed = [], []
    for scene in scenes:
        image = scene.render()
        for i, obj in enumerate(scene.objects):
            sentence = obj.sentence()
            full.append(PreferenceRecord(image=image, prompt=DESCRIBE_PROMPT, chosen=sentence, rejected=sentence))
            removed.append(PreferenceRecord(image=scene.render(without=i), prompt=DESCRIBE_PROMPT, chosen=sentence,
                                            rejected=sentence))
    with_object, _, _ = response_logps(model, processor, full)
    without_object, _, _ = response_logps(model, processor, removed)
    return (with_object - without_object).tolist()


def reward_gap_callback(records: list, processor, beta: float, every: int):
    """A ``TrainerCallback`` recording the mean implicit reward gap ``beta * ((log pi_w - log ref_w) -
    (log pi_l - log ref_l))`` of the easy and the hard records (by ``meta["efficacy_group"]``) every
    ``every`` steps; the reference log-probs are the policy's before its first step."""
    from transformers import TrainerCallback

    groups = np.array([r.meta["efficacy_group"] for r in records])

    class RewardGaps(TrainerCallback):
        def __init__(self):
            self.reference = None
            self.curve: list[dict[str, float]] = []

        def _measure(self, model, step: int) -> None:
            chosen, rejected, _ = response_logps(model, processor, records)
            if self.reference is None:
                self.reference = (chosen, rejected)
            gaps = beta * ((chosen - self.reference[0]) - (rejected - self.reference[1]))
            self.curve.append({"step": step, **{g: float(gaps[groups == g].mean()) for g in ("easy", "hard")}})

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self._measure(model, 0)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every == 0 or state.global_step == state.max_steps:
                self._measure(model, state.global_step)

    return RewardGaps()


# ------------------------------------------------------------------------------------------ the grid
def main(argv: list[str] | None = None) -> dict[str, Any]:
    from mmpo import progress

    ns = parse_args(argv)
    with progress.bars(not ns.no_progress):
        return grid(ns)


def grid(ns: argparse.Namespace) -> dict[str, Any]:
    """The grid of :func:`main`, on parsed options."""
    import torch

    from mmpo.io import atomic_write_json, atomic_write_text, default_cache_dir
    from mmpo.models import load_policy
    from mmpo.toyworld import pipeline
    from mmpo.toyworld.base_model import BaseModelRecipe, ensure_base_model
    from mmpo.toyworld.scenes import WorldConfig, sample_scenes

    started = time.time()
    run_dir = Path(ns.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    opts = pipeline.DemoOptions(
        method="aspo-dama-adavip", data=ns.data, output_dir=str(run_dir), judge_flip=ns.judge_flip,
        cache_dir=ns.cache_dir or str(default_cache_dir()), n_pairs=ns.n_pairs, n_eval_scenes=ns.n_eval_scenes,
        steps=ns.steps, batch_size=ns.batch_size, learning_rate=ns.learning_rate, beta=ns.beta,
        sft_weight=ns.sft_weight, base_steps=ns.base_steps, base_scenes=ns.base_scenes, clip_steps=ns.clip_steps,
        seed=0, progress=not ns.no_progress, control=False, prompts=ns.prompts, dama_recipe=ns.dama_recipe)
    world = WorldConfig(seed=0)
    say = pipeline.say

    say(f"[1/5] base model (cache {opts.cache_dir})")
    from mmpo.toyworld.questions import EXTRA_KINDS

    kinds = EXTRA_KINDS if ns.base_questions or ns.prompts == "mixed" else ()
    recipe = BaseModelRecipe(world=world, n_scenes=opts.base_scenes, steps=opts.base_steps, seed=0, question_kinds=kinds)
    base_dir, _ = ensure_base_model(recipe, opts.cache_dir)
    _, config = pipeline.demo_config(opts, run_dir / "all")
    model_args, all_methods = config.model, config.methods
    model_args = dataclasses.replace(model_args, model_name_or_path=str(base_dir))
    base_model, processor = load_policy(model_args)

    say(f"[2/5] records: {ns.data} pairs + CLIP sentence scores + alpha_D + vision-rejected images")
    records, folder = pipeline.prepare_records(opts, ns.data, all_methods, base_dir, base_model, processor, world)
    say(f"      {len(records)} records in {folder}")
    pairs_report = json.loads((folder / "self_pairs_report.json").read_text()) if ns.data == "self" else None
    alphas = np.array([r.data_alpha for r in records], float)
    lo, hi = np.quantile(alphas, [1 / 3, 2 / 3])
    probe = [dataclasses.replace(r, meta={**r.meta, "efficacy_group": "hard" if a <= lo else "easy"})
             for r, a in zip(records, alphas, strict=True) if a <= lo or a >= hi]
    rng = np.random.default_rng(0)
    probe = [probe[i] for i in sorted(rng.choice(len(probe), size=min(96, len(probe)), replace=False))]

    eval_scenes = sample_scenes(world.held_out(), opts.n_eval_scenes, prefix="heldout")
    stats_scenes = sample_scenes(world, opts.base_scenes, prefix="train")

    def evaluate(model) -> dict[str, Any]:
        from mmpo.toyworld.evaluate import evaluate_world

        return evaluate_world(model, processor, eval_scenes, pope_split_scenes_for_stats=stats_scenes, seed=0, keep_items=True)

    say(f"[3/5] the base model on {len(eval_scenes)} held-out scenes")
    base_path = run_dir / "runs" / "base.json"
    if base_path.exists():
        base = json.loads(base_path.read_text())
    else:
        base = {"metrics": evaluate(base_model), "visual_dependence": visual_dependence(base_model, processor, eval_scenes)}
        atomic_write_json(base_path, base)
    mechanisms = {"aspo": aspo_check(base_model, processor, records), "dama": dama_check(records)}
    premise_records = aspo_premise_records(records)
    premise = PremiseProbe(processor, premise_records, aspo_premise(base_model, processor, premise_records))
    mechanisms["aspo_premise"] = {"base": premise.base}
    del base_model

    say(f"[4/5] the grid: {len(ns.methods)} methods x {ns.seeds} seeds")
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in ns.methods}
    for method in ns.methods:
        for seed in range(ns.seeds):
            path = run_dir / "runs" / f"{method}-s{seed}" / "result.json"
            if path.exists():
                result = json.loads(path.read_text())
                if "truths_repeated" not in result.get("aspo_premise", {}) and (path.parent / "model").is_dir():
                    # a run from before the check (or before its last part): measured on the saved model
                    from transformers import AutoModelForImageTextToText

                    result["aspo_premise"] = premise(AutoModelForImageTextToText.from_pretrained(path.parent / "model"))
                    atomic_write_json(path, result)
                results[method].append(result)
                say(f"      {method} seed {seed}: reused {path}")
                continue
            began = time.time()
            config, overrides = VARIANTS.get(method, (method, {}))
            run_opts = dataclasses.replace(opts, method=config, seed=seed, **overrides)
            _, run_config = pipeline.demo_config(run_opts, path.parent)
            m_args, args, run_methods = run_config.model, run_config.training, run_config.methods
            m_args = dataclasses.replace(m_args, model_name_or_path=str(base_dir))
            model, _ = load_policy(m_args)
            from mmpo.data.collator import PreferenceDataset
            from mmpo.training.policy import prepare_policy
            from mmpo.training.trainer import PreferenceTrainer

            torch.manual_seed(seed)
            model = prepare_policy(model, m_args, args)
            trainer = PreferenceTrainer(model, args, processor, PreferenceDataset(records),
                                        methods=run_methods)
            gaps = None
            if seed == 0 and method in ("dpo", "dama"):
                gaps = reward_gap_callback(probe, processor, args.beta, every=max(1, args.max_steps // 10))
                trainer.add_callback(gaps)
            trainer.train()
            metrics = evaluate(trainer.model)
            result = {"method": method, "seed": seed, "metrics": metrics,
                      "visual_dependence": visual_dependence(trainer.model, processor, eval_scenes),
                      "aspo_premise": premise(trainer.model),
                      "log": trainer.state.log_history, "reward_gaps": gaps.curve if gaps else None,
                      "seconds": round(time.time() - began, 1)}
            trainer.model.save_pretrained(path.parent / "model")  # 3 MB: later checks need no retraining
            atomic_write_json(path, result)
            results[method].append(result)
            say(f"      {method} seed {seed}: CHAIR_i {metrics['chair_i']:.3f}, coverage {metrics['coverage']:.3f}, "
                f"POPE F1 {metrics['pope_f1']:.3f} [{result['seconds']:.0f} s]")
            del trainer, model

    say("[5/5] statistics, mechanism checks, plots")
    stats = bootstrap({m: [scene_counts(r["metrics"]) for r in rs] for m, rs in results.items()}, ns.bootstrap)
    stats["base"] = {m: float(metric_values(scene_counts(base["metrics"]), np.ones((1, len(eval_scenes))))[m][0])
                     for m in METRICS}
    mechanisms["adavip"] = adavip_check(base, results)
    mechanisms["aspo_premise"]["runs"] = {m: summarize_premise([r.get("aspo_premise") for r in rs])
                                          for m, rs in results.items()}
    questions = world_pope_questions(eval_scenes, stats_scenes)
    mechanisms["prior"] = {"base": prior_breakdown(base["metrics"], questions, world),
                           **{m: mean_dicts([prior_breakdown(r["metrics"], questions, world) for r in rs])
                              for m, rs in results.items()}}
    mechanisms["dama"]["reward_gaps"] = {m: results[m][0]["reward_gaps"] for m in ("dpo", "dama") if m in results}
    summary = {"settings": vars(ns), "records": len(records), "data_folder": str(folder), "self_pairs": pairs_report,
               "statistics": stats, "mechanisms": mechanisms,
               "runs": {m: [{k: r[k] for k in ("seed", "seconds")} | {x: r["metrics"][x] for x in METRICS}
                            for r in rs] for m, rs in results.items()},
               "seconds": round(time.time() - started, 1)}
    atomic_write_json(run_dir / "results.json", summary, indent=2)
    table = results_markdown(summary)
    atomic_write_text(run_dir / "results.md", table)
    plot_results(summary, results, run_dir)
    say("\n" + table)
    say(f"run directory: {run_dir}  [{summary['seconds']:.0f} s]")
    return summary


# ------------------------------------------------------------------------------------------ mechanisms
def aspo_check(model, processor, records: list) -> dict[str, Any]:
    """AUCs of ASPO's weight and its components at ranking the judge's correct chosen sentences above
    its wrong ones (pooled over the sentences of chosen responses holding both; and the mean of the
    per-response AUCs)."""
    import torch

    from mmpo.methods.aspo import aspo_sentence_weights_batched
    from mmpo.scoring.sentences import RuleSplitter

    usable = [r for r in records if r.chosen_sentence_scores and "self_pairs" in r.meta
              and len({c["correct"] for c in r.meta["self_pairs"]["chosen_claims"]}) == 2]
    if not usable:
        return {"n_responses": 0}
    _, _, sentence_logps = response_logps(model, processor, usable, splitter=RuleSplitter())
    pooled: dict[str, list] = {"weight": [], "similarity": [], "neg_perplexity": [], "correct": []}
    per_response: dict[str, list] = {"weight": [], "similarity": [], "neg_perplexity": []}
    skipped = 0
    for record, means in zip(usable, sentence_logps, strict=True):
        claims = record.meta["self_pairs"]["chosen_claims"]
        scores = record.chosen_sentence_scores
        if not (len(claims) == len(scores) == len(means)):
            skipped += 1
            continue
        perplexity = torch.tensor(np.exp(-np.array(means)))[None]
        similarity = torch.tensor(scores, dtype=torch.float64)[None]
        weights = aspo_sentence_weights_batched(similarity, perplexity, None, alpha=0.5)[0].numpy()
        correct = np.array([c["correct"] for c in claims])
        values = {"weight": weights, "similarity": np.array(scores), "neg_perplexity": -perplexity[0].numpy()}
        for key, value in values.items():
            pooled[key] += list(value)
            per_response[key].append(auc(value, correct))
        pooled["correct"] += list(correct)
    correct = np.array(pooled["correct"], bool)
    return {"n_responses": len(usable) - skipped, "n_sentences": int(len(correct)), "skipped": skipped,
            "auc_pooled": {k: auc(np.array(pooled[k]), correct) for k in per_response},
            "auc_per_response_mean": {k: float(np.nanmean(v)) for k, v in per_response.items()}}


def dama_check(records: list) -> dict[str, Any]:
    """Spearman correlation of alpha_D with the pair's judged quality gap: as a count (judged-wrong
    claims of rejected - of chosen; ``spearman``), as a rate (their fractions of wrong claims;
    ``spearman_rate``), and the count gap among pairs whose responses have equal numbers of claims
    (``spearman_equal_length``)."""
    rows = []
    for r in records:
        if r.data_alpha is None or "self_pairs" not in r.meta:
            continue
        chosen, rejected = r.meta["self_pairs"]["chosen_claims"], r.meta["self_pairs"]["rejected_claims"]
        wrong_c, wrong_r = sum(not c["correct"] for c in chosen), sum(not c["correct"] for c in rejected)
        rows.append((r.data_alpha, wrong_r - wrong_c, wrong_r / max(len(rejected), 1) - wrong_c / max(len(chosen), 1),
                     len(chosen) == len(rejected)))
    if len(rows) < 3:
        return {"spearman": None}
    alpha, count_gap, rate_gap, equal = (np.array(c) for c in zip(*rows, strict=True))
    equal = equal.astype(bool)
    return {"spearman": spearman(alpha, count_gap), "spearman_rate": spearman(alpha, rate_gap),
            "spearman_equal_length": spearman(alpha[equal], count_gap[equal]) if equal.sum() >= 3 else None,
            "n_pairs": len(rows), "n_equal_length": int(equal.sum())}


# ------------------------------------------------------------------------------------------ premises
def aspo_premise_records(records: list, limit: int = 300) -> list:
    """Describe-prompt records whose chosen response holds both judged-correct and judged-wrong
    sentences (ASPO's case), the first ``limit``."""
    from mmpo.toyworld.scenes import DESCRIBE_PROMPT

    return [r for r in records if r.prompt == DESCRIBE_PROMPT and "self_pairs" in r.meta
            and len({c["correct"] for c in r.meta["self_pairs"]["chosen_claims"]}) == 2][:limit]


def aspo_premise(model, processor, records: list) -> dict[str, Any]:
    """What training did to the chosen responses' own judged-wrong sentences (ASPO's premise: down-
    weighting them should stop the policy from learning them).

    * ``sentence_logps``: per chosen sentence, its mean token log-prob under ``model`` and its verdict
      (a check subtracts the base model's to get the change);
    * ``ghosts_repeated``: of the objects the chosen responses hallucinate (judged "absent object"),
      the fraction ``model``'s greedy description of the same image mentions again.
    """
    from mmpo.evaluation.mentions import singular_forms, tokenize
    from mmpo.generation import generate_responses
    from mmpo.scoring.sentences import RuleSplitter
    from mmpo.toyworld.judge import ABSENT, claim_facts
    from mmpo.toyworld.scenes import DESCRIBE_PROMPT

    if not records:
        return {}
    _, _, means = response_logps(model, processor, records, splitter=RuleSplitter())
    logps, correct = [], []
    for record, sentence_means in zip(records, means, strict=True):
        claims = record.meta["self_pairs"]["chosen_claims"]
        if len(claims) == len(sentence_means):
            logps += sentence_means
            correct += [bool(c["correct"]) for c in claims]
    descriptions = generate_responses(model, processor, [r.image for r in records], DESCRIBE_PROMPT)
    ghosts = repeated = truths = truths_repeated = 0
    for record, description in zip(records, descriptions, strict=True):
        said = {form for word in tokenize(description) for form in singular_forms(word)}
        for claim in record.meta["self_pairs"]["chosen_claims"]:
            shape = claim_facts(claim["text"]).shape
            if not claim["correct"] and claim.get("reason") == ABSENT:
                ghosts += 1
                repeated += shape in said
            elif claim["correct"] and shape is not None:
                truths += 1
                truths_repeated += shape in said
    return {"sentence_logps": logps, "correct": correct, "ghosts": ghosts,
            "ghosts_repeated": repeated / ghosts if ghosts else float("nan"),
            "truths_repeated": truths_repeated / truths if truths else float("nan")}


class PremiseProbe:
    """:func:`aspo_premise` of a trained model, as changes from the base model's."""

    def __init__(self, processor, records: list, base: dict[str, Any]):
        self.processor, self.records, self.base_full = processor, records, base
        self.base = {k: base.get(k) for k in ("ghosts", "ghosts_repeated", "truths_repeated")}

    def __call__(self, model) -> dict[str, Any]:
        if not self.records:
            return {}
        after = aspo_premise(model, self.processor, self.records)
        if len(after["sentence_logps"]) != len(self.base_full["sentence_logps"]):
            return {"error": "sentence counts differ from the base model's"}
        change = np.array(after["sentence_logps"]) - np.array(self.base_full["sentence_logps"])
        correct = np.array(self.base_full["correct"], bool)
        return {"logp_change_wrong": float(change[~correct].mean()), "logp_change_correct": float(change[correct].mean()),
                "n_wrong": int((~correct).sum()), "n_correct": int(correct.sum()),
                "ghosts": after["ghosts"], "ghosts_repeated": after["ghosts_repeated"],
                "truths_repeated": after["truths_repeated"]}


def summarize_premise(per_seed: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Mean over seeds of each number of :class:`PremiseProbe`'s results (and the per-seed values)."""
    rows = [r for r in per_seed if r and "logp_change_wrong" in r]
    if not rows:
        return {}
    keys = ("logp_change_wrong", "logp_change_correct", "ghosts_repeated", "truths_repeated")
    out: dict[str, Any] = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    out["wrong_minus_correct"] = out["logp_change_wrong"] - out["logp_change_correct"]
    out["per_seed"] = {k: [r[k] for r in rows] for k in keys}
    return out


def world_pope_questions(eval_scenes: list, stats_scenes: list) -> list:
    """The POPE questions :func:`mmpo.toyworld.evaluate.evaluate_world` asked (same arguments, same order)."""
    from mmpo.toyworld.evaluate import world_questions

    return world_questions(eval_scenes, "adversarial", stats_scenes=stats_scenes, n_negatives_per_scene=None, seed=0)


def prior_breakdown(metrics: dict[str, Any], questions: list, world) -> dict[str, float]:
    """Where a model's errors come from the world's co-occurrence prior.

    * POPE "yes" rate on present objects (recall), on absent *partners* of a present object (the
      prior's false yes) and on other absent objects;
    * the share of hallucinated description mentions that are an absent partner of a present object.
    """
    rows = metrics["per_question"]
    if len(rows) != len(questions):
        raise ValueError(f"{len(rows)} POPE answers but {len(questions)} questions: the evaluation changed")
    truth = {row["scene_id"]: set(row["truth"]) for row in metrics["per_scene"]}
    groups: dict[str, list[bool]] = {"present": [], "absent_partner": [], "absent_other": []}
    for row, q in zip(rows, questions, strict=True):
        if row["scene_id"] != q.scene_id:
            raise ValueError("POPE answers and questions are in different orders")
        present = truth[q.scene_id]
        partners = {world.partners[s] for s in present if s in world.partners}
        group = "present" if q.label == "yes" else ("absent_partner" if q.category in partners else "absent_other")
        groups[group].append(row["prediction"] == "yes")
    partner_ghosts = ghosts = 0
    for row in metrics["per_scene"]:
        present = set(row["truth"])
        partners = {world.partners[s] for s in present if s in world.partners}
        for shape in set(row["mentioned"]) - present:
            ghosts += 1
            partner_ghosts += shape in partners
    out = {f"yes_{k}": float(np.mean(v)) if v else float("nan") for k, v in groups.items()}
    out |= {f"n_{k}": len(v) for k, v in groups.items()}
    out["hallucinations_partner_share"] = partner_ghosts / ghosts if ghosts else float("nan")
    return out


def mean_dicts(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}


def adavip_check(base: dict[str, Any], results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Mean visual dependence per model (base, then each method's seeds: mean and per seed)."""
    out: dict[str, Any] = {"visual_dependence": {"base": {"mean": float(np.mean(base["visual_dependence"]))}}}
    for method, runs in results.items():
        per_seed = [float(np.mean(r["visual_dependence"])) for r in runs]
        out["visual_dependence"][method] = {"mean": float(np.mean(per_seed)), "per_seed": per_seed}
    weights = {}
    for method in ("adavip", "aspo-dama-adavip"):
        if method in results:
            log = results[method][0]["log"]
            weights[method] = [{"step": e["step"], "vision": e["adavip/weight_vision"],
                                "language": e["adavip/weight_language"]} for e in log if "adavip/weight_vision" in e]
    out["weights"] = weights
    return out


# ------------------------------------------------------------------------------------------ reporting
def _interval(cell: dict[str, float]) -> str:
    return f"{cell['mean']:.3f} [{cell['lo']:.3f}, {cell['hi']:.3f}]"


def results_markdown(summary: dict[str, Any]) -> str:
    stats, mech = summary["statistics"], summary["mechanisms"]
    lines = [f"# Efficacy: {summary['records']} {summary['settings']['data']} pairs, {stats['n_seeds']} seed(s), "
             f"{stats['n_scenes']} held-out scenes, {stats['n_replicates']} bootstrap replicates", ""]
    header = ["method", *METRICS]
    lines += ["Mean [95% interval] (bootstrap over scenes and seeds).", "",
              "| " + " | ".join(header) + " |", "| --- |" + " ---: |" * len(METRICS)]
    lines.append("| base model | " + " | ".join(f"{stats['base'][m]:.3f}" for m in METRICS) + " |")
    for method, row in stats["methods"].items():
        lines.append(f"| {method} | " + " | ".join(_interval(row[m]) for m in METRICS) + " |")
    lines += ["", "Paired difference vs DPO, mean [95% interval]; **bold**: the interval excludes 0 on the better "
              "side (lower CHAIR, higher coverage / F1).", "",
              "| method | " + " | ".join(METRICS) + " |", "| --- |" + " ---: |" * len(METRICS)]
    for method, row in stats["methods"].items():
        if method == "dpo":
            continue
        cells = []
        for m in METRICS:
            d = row[m]["diff_vs_dpo"]
            better = (d["hi"] < 0) if m in LOWER_IS_BETTER else (d["lo"] > 0)
            text = f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
            cells.append(f"**{text}**" if better and m != "pope_yes_ratio" else text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    aspo = mech["aspo"]
    lines += ["", "## Mechanism checks", ""]
    if aspo.get("n_responses"):
        lines += [f"ASPO, {aspo['n_sentences']} sentences of {aspo['n_responses']} chosen responses holding both "
                  "correct and wrong sentences (judge's labels; perplexity under the base policy):", "",
                  "| score | AUC pooled | mean per-response AUC |", "| --- | ---: | ---: |"]
        for key in ("weight", "similarity", "neg_perplexity"):
            lines.append(f"| {key} | {aspo['auc_pooled'][key]:.3f} | {aspo['auc_per_response_mean'][key]:.3f} |")
    dama = mech["dama"]
    if dama.get("spearman") is not None:
        equal = dama.get("spearman_equal_length")
        lines += ["", f"DAMA: Spearman(alpha_D, judged quality gap) = {dama['spearman']:.3f} as a count of wrong "
                  f"claims, {dama.get('spearman_rate', float('nan')):.3f} as a rate"
                  + (f", {equal:.3f} among the {dama['n_equal_length']} pairs of equal length" if equal is not None else "")
                  + f" ({dama.get('n_pairs')} pairs)."]
    premise = mech.get("aspo_premise", {})
    if premise.get("runs"):
        base = premise["base"]
        lines += ["", "ASPO's premise: the chosen responses' own judged-wrong sentences, after training (mean over seeds). "
                  "Change of their mean token log-prob from the base model's, beside the correct sentences' change; "
                  f"and the share of the {base['ghosts']} objects the chosen responses hallucinate that the model's "
                  f"greedy description of the same image names again (base model: {base['ghosts_repeated']:.3f}), beside the "
                  f"share of their true objects named again (base: {base.get('truths_repeated', float('nan')):.3f}):", "",
                  "| method | d logp wrong | d logp correct | wrong - correct | ghosts repeated | true objects repeated |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for method, row in premise["runs"].items():
            if row:
                lines.append(f"| {method} | {row['logp_change_wrong']:+.3f} | {row['logp_change_correct']:+.3f} | "
                             f"{row['wrong_minus_correct']:+.3f} | {row['ghosts_repeated']:.3f} | "
                             f"{row.get('truths_repeated', float('nan')):.3f} |")
    prior = mech.get("prior")
    if prior:
        lines += ["", "The co-occurrence prior (mean over seeds): POPE \"yes\" rate on present objects, on absent partners "
                  "of a present object and on other absent objects; share of hallucinated mentions that are an absent "
                  "partner:", "", "| model | yes: present | yes: absent partner | yes: absent other | partner share |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for model, row in prior.items():
            lines.append(f"| {model} | {row['yes_present']:.3f} | {row['yes_absent_partner']:.3f} | "
                         f"{row['yes_absent_other']:.3f} | {row['hallucinations_partner_share']:.3f} |")
    lines += ["", "Visual dependence (mean log p(sentence | image) - log p(sentence | image without the object)):", "",
              "| model | mean | per seed |", "| --- | ---: | --- |"]
    for model, cell in mech["adavip"]["visual_dependence"].items():
        per_seed = ", ".join(f"{v:.3f}" for v in cell.get("per_seed", []))
        lines.append(f"| {model} | {cell['mean']:.3f} | {per_seed} |")
    return "\n".join(lines) + "\n"


def plot_results(summary: dict[str, Any], results: dict[str, list[dict[str, Any]]], run_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = summary["statistics"]
    methods = list(stats["methods"])
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 4.5))
    for ax, m in zip(axes, METRICS, strict=True):
        means = [stats["methods"][k][m]["mean"] for k in methods]
        errs = [[means[i] - stats["methods"][k][m]["lo"] for i, k in enumerate(methods)],
                [stats["methods"][k][m]["hi"] - means[i] for i, k in enumerate(methods)]]
        ax.barh(methods, means, xerr=errs, color="#7a9cc6")
        ax.axvline(stats["base"][m], color="grey", linestyle="--", label="base")
        ax.set_title(m)
        ax.invert_yaxis()
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(run_dir / "metrics.png", dpi=110)
    plt.close(fig)

    others = [k for k in methods if k != "dpo"]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 4.5))
    for ax, m in zip(axes, METRICS, strict=True):
        d = [stats["methods"][k][m]["diff_vs_dpo"] for k in others]
        means = [x["mean"] for x in d]
        ax.barh(others, means, xerr=[[x["mean"] - x["lo"] for x in d], [x["hi"] - x["mean"] for x in d]], color="#c69a7a")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(f"{m}: method - DPO")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(run_dir / "differences.png", dpi=110)
    plt.close(fig)

    gaps = summary["mechanisms"]["dama"]["reward_gaps"]
    if any(gaps.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, curve in gaps.items():
            if curve:
                steps = [p["step"] for p in curve]
                for group, style in (("easy", "-"), ("hard", "--")):
                    ax.plot(steps, [p[group] for p in curve], style, label=f"{method}: {group}")
        ax.set_xlabel("step")
        ax.set_ylabel("reward gap r_w - r_l")
        ax.set_title("easy vs hard pairs (by alpha_D)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(run_dir / "dama_gaps.png", dpi=110)
        plt.close(fig)

    weights = summary["mechanisms"]["adavip"]["weights"]
    if any(weights.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, curve in weights.items():
            steps = [p["step"] for p in curve]
            ax.plot(steps, [p["vision"] for p in curve], label=f"{method}: vision")
            ax.plot(steps, [p["language"] for p in curve], "--", label=f"{method}: language")
        ax.set_xlabel("step")
        ax.set_ylabel("weight")
        ax.set_title("AdaViP's adaptive weights")
        ax.legend()
        fig.tight_layout()
        fig.savefig(run_dir / "adavip_weights.png", dpi=110)
        plt.close(fig)

    vd = summary["mechanisms"]["adavip"]["visual_dependence"]
    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(vd)
    ax.barh(names, [vd[k]["mean"] for k in names], color="#8fbf8f")
    for i, k in enumerate(names):
        for v in vd[k].get("per_seed", []):
            ax.plot(v, i, "k.", markersize=4)
    ax.invert_yaxis()
    ax.set_xlabel("mean log p(sentence | image) - log p(sentence | object removed)")
    ax.set_title("visual dependence")
    fig.tight_layout()
    fig.savefig(run_dir / "visual_dependence.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    summary = main(sys.argv[1:])
    sys.exit(0 if summary and not any(math.isnan(summary["statistics"]["base"][m]) for m in METRICS) else 1)
