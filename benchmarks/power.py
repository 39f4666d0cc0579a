"""How small a CHAIR_i difference against DPO can the efficacy grid resolve, for how many seeds and scenes?

    python benchmarks/power.py runs/efficacy                     # one efficacy run directory
    python benchmarks/power.py runs/eff/sft1 runs/eff/sft0.1     # several: their variances pooled

Reads the runs ``benchmarks/efficacy.py`` saved (``RUN_DIR/runs/METHOD-sSEED/result.json``, per-scene
counts included) and models the paired difference of a method and DPO trained with the same seed
(the same data order), evaluated on the same K held-out scenes:

    d_s = metric(method, seed s) - metric(DPO, seed s),      Var(d_s) = a + b / K

``a`` is what training noise adds whatever the number of scenes (two trainings from one seed and one
data order still end apart), ``b / K`` the model-by-scene noise a larger evaluation set averages out.
Both are fitted from the runs: ``Var(d_s)`` over seeds is measured on random subsets of K' of the
scenes (K' = 25 .. all) and ``a + b / K'`` fitted by least squares. Pooled over the methods of each
run directory (each method's variance has few degrees of freedom; the spread of the per-method
estimates is printed beside).

The mean of S seeds' differences then has standard error ``sqrt((a + b / K) / S)``, and

* the **resolvable difference** (the 95% interval's half-width: a true difference this large is
  resolved half of the time) is ``1.96 SE``;
* the **minimum detectable difference at 80% power** (two-sided, 5%) is ``(1.96 + 0.84) SE``.

This treats the evaluation scenes as the benchmark (the question "does the method beat DPO on these
scenes' distribution?" adds the spread of the true effect over scenes, which the efficacy grid's
bootstrap also resamples; ``scene_term`` reports its size at the measured design). It also uses the
normal quantile: with the few seeds of a pilot, Student's t would widen the first rows.

Writes ``--out`` (default ``benchmarks/results/power``): ``power.json``, ``power.md`` and
``power.png`` (resolvable difference vs seeds, one line per number of scenes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from efficacy import metric_values, saved_scene_counts  # noqa: E402

Z95, Z80 = 1.959964, 0.841621


def load_grid(run_dir: Path) -> dict[str, dict[int, dict[str, np.ndarray]]]:
    """Per method and seed, the per-scene counts (``{method: {seed: counts}}``); DPO's runs must be there."""
    grid = saved_scene_counts(run_dir)
    if "dpo" not in grid:
        raise SystemExit(f"{run_dir}: no DPO runs (runs/dpo-sSEED/result.json)")
    return grid


def value_on(counts: dict[str, np.ndarray], scenes: np.ndarray, metric: str) -> float:
    weights = np.zeros((1, len(counts["one"])))
    weights[0, scenes] = 1
    return float(metric_values(counts, weights)[metric][0])


def difference_variances(grid: dict[str, dict[int, Any]], metric: str, sizes: list[int], draws: int,
                         rng: np.random.Generator) -> dict[str, dict[str, Any]]:
    """Per method: the variance over seeds of its paired difference with DPO, on random scene
    subsets of each size (mean over ``draws`` subsets), and the number of paired seeds."""
    dpo = grid["dpo"]
    n_scenes = len(next(iter(dpo.values()))["one"])
    out = {}
    for method, runs in grid.items():
        seeds = sorted(set(runs) & set(dpo))
        if method == "dpo" or len(seeds) < 2:
            continue
        per_size = {}
        for size in sizes:
            variances = []
            for _ in range(draws if size < n_scenes else 1):
                scenes = rng.choice(n_scenes, size=size, replace=False) if size < n_scenes else np.arange(n_scenes)
                diffs = [value_on(runs[s], scenes, metric) - value_on(dpo[s], scenes, metric) for s in seeds]
                variances.append(np.var(diffs, ddof=1))
            per_size[size] = float(np.mean(variances))
        full = np.arange(n_scenes)
        diffs = [value_on(runs[s], full, metric) - value_on(dpo[s], full, metric) for s in seeds]
        out[method] = {"seeds": seeds, "variance": per_size, "mean_difference": float(np.mean(diffs)),
                       "differences": diffs}
    return out


def fit_components(variances: dict[int, float]) -> tuple[float, float]:
    """Least-squares ``a, b >= 0`` of ``variance(K) = a + b / K``."""
    sizes = np.array(sorted(variances), float)
    y = np.array([variances[int(k)] for k in sizes])
    design = np.stack([np.ones_like(sizes), 1 / sizes], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    if a < 0:
        a, b = 0.0, float(np.sum(y / sizes) / np.sum(1 / sizes**2))
    if b < 0:
        a, b = float(y.mean()), 0.0
    return float(a), float(b)


def scene_term(grid: dict[str, dict[int, Any]], metric: str, replicates: int, rng: np.random.Generator) -> float:
    """Bootstrap variance over scenes of the seed-averaged difference (pooled over methods): the
    scenes' part of the efficacy grid's interval at the measured design."""
    dpo = grid["dpo"]
    n_scenes = len(next(iter(dpo.values()))["one"])
    draws = rng.multinomial(n_scenes, np.full(n_scenes, 1 / n_scenes), size=replicates)
    variances = []
    for method, runs in grid.items():
        seeds = sorted(set(runs) & set(dpo))
        if method == "dpo" or not seeds:
            continue
        diff = np.mean([metric_values(runs[s], draws)[metric] - metric_values(dpo[s], draws)[metric] for s in seeds], 0)
        variances.append(float(np.var(diff)))
    return float(np.mean(variances)) if variances else float("nan")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", type=Path, help="efficacy run directories")
    p.add_argument("--metric", default="chair_i")
    p.add_argument("--target", type=float, default=0.01, help="the difference to resolve")
    p.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 5, 6, 10, 20, 40, 80])
    p.add_argument("--scenes", type=int, nargs="+", default=[200, 500, 1000, 5000])
    p.add_argument("--draws", type=int, default=200, help="random scene subsets per size")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/power"))
    ns = p.parse_args(argv)
    rng = np.random.default_rng(0)

    per_dir, pooled_num, pooled_df = {}, {}, 0
    for run_dir in ns.run_dirs:
        grid = load_grid(run_dir)
        n_scenes = len(next(iter(grid["dpo"].values()))["one"])
        sizes = sorted({k for k in (25, 50, 100, 200, 400, 800) if k < n_scenes} | {n_scenes})
        methods = difference_variances(grid, ns.metric, sizes, ns.draws, rng)
        dpo_values = [value_on(c, np.arange(n_scenes), ns.metric) for c in grid["dpo"].values()]
        per_dir[str(run_dir)] = {"n_scenes": n_scenes, "dpo_seeds": len(grid["dpo"]),
                                 "dpo_seed_sd": float(np.std(dpo_values, ddof=1)) if len(dpo_values) > 1 else None,
                                 "scene_term": scene_term(grid, ns.metric, 500, rng), "methods": methods}
        for row in methods.values():
            df = len(row["seeds"]) - 1
            pooled_df += df
            for size, variance in row["variance"].items():
                key = size if size < n_scenes else "all"
                pooled_num.setdefault(key, [0.0, 0])
                pooled_num[key][0] += df * variance
                pooled_num[key][1] += df
    if not pooled_df:
        raise SystemExit("no method with two or more seeds paired with DPO's")
    # The pooled variance at each subset size (sizes shared by every directory; "all" is each one's full set).
    n_full = min(d["n_scenes"] for d in per_dir.values())
    pooled = {(n_full if k == "all" else k): num / df for k, (num, df) in pooled_num.items()}
    a, b = fit_components(pooled)
    table = {S: {K: Z95 * np.sqrt((a + b / K) / S) for K in ns.scenes} for S in ns.seeds}
    needed = {K: int(np.ceil((Z95 / ns.target) ** 2 * (a + b / K))) for K in ns.scenes}
    floor = {S: Z95 * np.sqrt(a / S) for S in ns.seeds}
    summary = {"metric": ns.metric, "target": ns.target, "pooled_variance": pooled, "a": a, "b": b,
               "pooled_degrees_of_freedom": pooled_df,
               "resolvable": {str(S): {str(K): v for K, v in row.items()} for S, row in table.items()},
               "detectable_80": {str(S): {str(K): v * (Z95 + Z80) / Z95 for K, v in row.items()} for S, row in table.items()},
               "seeds_needed": {str(K): v for K, v in needed.items()}, "floor_infinite_scenes": floor, "runs": per_dir}

    lines = [f"# Power of the efficacy grid: paired {ns.metric} difference vs DPO", "",
             f"Pooled over {pooled_df} degrees of freedom ({', '.join(per_dir)}). Variance of one seed's paired "
             f"difference: a + b / K with a = {a:.2e} (training), b = {b:.3f} (model x scene) — "
             f"sd {np.sqrt(a + b / n_full):.4f} at K = {n_full}.", "",
             "Variance of one seed's difference on K random scenes (pooled):", "", "| K | variance | sd |",
             "| ---: | ---: | ---: |"]
    lines += [f"| {K} | {v:.2e} | {np.sqrt(v):.4f} |" for K, v in sorted(pooled.items())]
    lines += ["", "Resolvable difference (95% interval half-width, 1.96 SE) for S seeds x K scenes; the minimum "
              "detectable difference at 80% power is 1.43x these:", "",
              "| seeds | " + " | ".join(f"K = {K}" for K in ns.scenes) + " | K -> inf |",
              "| ---: |" + " ---: |" * (len(ns.scenes) + 1)]
    for S, row in table.items():
        lines.append(f"| {S} | " + " | ".join(f"{v:.4f}" for v in row.values()) + f" | {floor[S]:.4f} |")
    lines += ["", f"Seeds per method to resolve {ns.target}: "
              + ", ".join(f"{needed[K]} at K = {K}" for K in ns.scenes) + ".", "",
              "Per run directory: DPO's seed-to-seed sd, and each method's paired differences (per seed):", ""]
    for name, d in per_dir.items():
        lines.append(f"* `{name}` ({d['n_scenes']} scenes, {d['dpo_seeds']} DPO seeds, DPO sd "
                     f"{d['dpo_seed_sd'] if d['dpo_seed_sd'] is None else round(d['dpo_seed_sd'], 4)}, scene bootstrap "
                     f"variance of the seed-mean difference {d['scene_term']:.2e}):")
        for method, row in d["methods"].items():
            full_var = row["variance"][max(row["variance"])]
            lines.append(f"  {method}: mean {row['mean_difference']:+.4f}, sd {np.sqrt(full_var):.4f}, per seed "
                         + ", ".join(f"{x:+.3f}" for x in row["differences"]))
    text = "\n".join(lines) + "\n"
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "power.json").write_text(json.dumps(summary, indent=2))
    (ns.out / "power.md").write_text(text)
    plot(table, floor, ns, ns.out / "power.png")
    print(text)
    return summary


def plot(table: dict[int, dict[int, float]], floor: dict[int, float], ns: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    seeds = list(table)
    for K in ns.scenes:
        ax.plot(seeds, [table[S][K] for S in seeds], marker="o", label=f"{K} scenes")
    ax.plot(seeds, [floor[S] for S in seeds], "k--", label="infinite scenes")
    ax.axhline(ns.target, color="red", linewidth=0.8, label=f"target {ns.target}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training seeds per method")
    ax.set_ylabel(f"resolvable paired {ns.metric} difference (95%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
