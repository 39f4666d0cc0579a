"""DAMA's model-aware factor under its two recipes, on the same synthetic reward gaps.

    python benchmarks/dama_recipes.py            # prints the table, writes results/dama_recipes.{json,png}

Three scenarios of 50 steps x 16 records, raw log-ratio margins ``A_i = mu(t) + 2 z`` (``z`` standard
normal, the same draws for every recipe): gaps that rise (``mu = 0.2 t``, a model that keeps
separating the pairs), fall (``mu = -0.2 t``) and stay (``mu = 2``). Each recipe runs
:class:`mmpo.methods.dama.DamaController` (model-aware only, beta 0.1) over them, as training would:

* ``authors``: the released algorithm (the default);
* ``paper``: Eqs. 9-17 as printed (unguarded ``R_i / R_bar``);
* ``paper, bounded``: the paper recipe with mmpo's bounded normaliser.

Printed per scenario and recipe: alpha_M's range and final value, and the running mean at the end
(the authors' is on the raw-gap scale, the paper's ``R_bar`` on its own). No model is trained: this
isolates the formulas.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mmpo.methods.dama import DamaController

RESULTS = Path(__file__).resolve().parent / "results"
RECIPES = {"authors": {"recipe": "authors"}, "paper": {"recipe": "paper"},
           "paper, bounded": {"recipe": "paper", "normalizer": "bounded"}}
SCENARIOS = {"rising": lambda t: 0.2 * t, "falling": lambda t: -0.2 * t, "steady": lambda t: 2.0}


def run(recipe: dict, mean_at, steps: int = 50, n: int = 16, seed: int = 0) -> dict:
    noise = torch.Generator().manual_seed(seed)
    controller = DamaController(0.1, model_aware=True, seed=seed, **recipe)
    alphas, means = [], []
    for t in range(steps):
        margins = mean_at(t) + 2.0 * torch.randn(n, generator=noise)
        _, _, diag = controller.beta(margins, torch.zeros(n))
        controller.step_end()
        alphas.append(diag["dama/alpha_model"].item())
        means.append(controller.r_bar)
    return {"alpha_model": alphas, "running_mean": means}


def main() -> int:
    results = {s: {name: run(recipe, mean_at) for name, recipe in RECIPES.items()} for s, mean_at in SCENARIOS.items()}
    lines = ["| scenario | recipe | alpha_M min | alpha_M max | alpha_M last 10 (mean) | running mean at the end |",
             "| --- | --- | --- | --- | --- | --- |"]
    for scenario, by_recipe in results.items():
        for name, r in by_recipe.items():
            a = r["alpha_model"]
            lines.append(f"| {scenario} | {name} | {min(a):.3g} | {max(a):.3g} | {sum(a[-10:]) / 10:.3f} "
                         f"| {r['running_mean'][-1]:.3f} |")
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dama_recipes.json").write_text(json.dumps(results, indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 0
    fig, axes = plt.subplots(1, len(SCENARIOS), figsize=(12, 3.4), sharey=True)
    for ax, (scenario, by_recipe) in zip(axes, results.items(), strict=True):
        for name, r in by_recipe.items():
            ax.plot(r["alpha_model"], label=name)
        ax.set_yscale("log")
        ax.set_title(f"{scenario} gaps")
        ax.set_xlabel("step")
        ax.axhline(1.0, color="grey", lw=0.5)
    axes[0].set_ylabel("alpha_M")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "dama_recipes.png", dpi=110)
    print(f"\nwritten: {RESULTS / 'dama_recipes.json'}, {RESULTS / 'dama_recipes.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
