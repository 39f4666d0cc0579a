"""One table of every efficacy grid run under a different setting: each method's paired difference
against the DPO of its own setting, and each setting's DPO against the reference setting's.

    python benchmarks/efficacy_variants.py runs/eff/sft1 runs/eff/sft0.1 ... --out benchmarks/results/efficacy-variants

Each argument is a ``benchmarks/efficacy.py`` run directory (its ``results.json``; the per-run
``runs/*/result.json`` for the cross-setting comparison). The first one is the reference setting.
Setting names are the directory names. A method's difference against DPO is the grid's own paired
bootstrap (same scenes, same seeds). DPO (and every method) of a setting is also compared with the
same method in the reference setting, paired by seed and scene, when both settings evaluate the
same held-out scenes.

Writes ``variants.md`` and ``variants.json`` under ``--out``, and copies each setting's
``results.md`` beside them (``SETTING.md``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from efficacy import METRICS, bootstrap, saved_scene_counts  # noqa: E402

SHOWN = ("chair_i", "coverage", "pope_f1", "pope_yes_ratio")


def cross_setting(reference: dict, other: dict, method: str, replicates: int) -> dict[str, Any] | None:
    """``other``'s ``method`` minus the reference setting's, paired by seed and scene."""
    if method not in reference or method not in other:
        return None
    seeds = sorted(set(reference[method]) & set(other[method]))
    if not seeds or len(reference[method][seeds[0]]["one"]) != len(other[method][seeds[0]]["one"]):
        return None
    stats = bootstrap({"dpo": [reference[method][s] for s in seeds], "other": [other[method][s] for s in seeds]},
                      replicates)
    return {m: stats["methods"]["other"][m]["diff_vs_dpo"] for m in METRICS} | {"seeds": len(seeds)}


def cell(d: dict[str, float], metric: str) -> str:
    text = f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
    better = d["hi"] < 0 if metric.startswith("chair") else d["lo"] > 0
    return f"**{text}**" if better and metric != "pope_yes_ratio" else text


def sd(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def premise_lines(summary: dict[str, Any], run_dirs: list[Path]) -> list[str]:
    """The premise checks of every setting: ASPO's (hallucinated objects of the chosen responses named
    again; log-prob change of their wrong minus their correct sentences), the prior's POPE "yes"
    rates, and visual dependence; mean and seed-to-seed sd (paired difference vs DPO for ASPO's)."""
    lines = ["", "Premise checks per setting (mean over seeds; +- the sd over seeds, or of the per-seed difference "
             "vs DPO where marked):", "",
             "| setting | method | ghosts named again | vs DPO | true objects named again | vs DPO | "
             "wrong - correct d logp | yes: present | "
             "yes: absent partner | yes: absent other | visual dependence |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for run_dir in run_dirs:
        results = json.loads((run_dir / "results.json").read_text())
        mech = results["mechanisms"]
        premise = mech.get("aspo_premise", {}).get("runs", {})
        prior, dependence = mech.get("prior", {}), mech["adavip"]["visual_dependence"]
        for method in results["statistics"]["methods"]:
            row = premise.get(method) or {}
            cells = []
            for key in ("ghosts_repeated", "truths_repeated"):
                values = np.array(row.get("per_seed", {}).get(key, []), float)
                dpo = np.array(premise.get("dpo", {}).get("per_seed", {}).get(key, []), float)
                cells.append(f"{values.mean():.3f} +- {sd(values):.3f}" if len(values) else "")
                paired = values - dpo if method != "dpo" and len(values) and len(values) == len(dpo) else None
                cells.append(f"{paired.mean():+.3f} +- {sd(paired):.3f}" if paired is not None else "")
            p = prior.get(method, {})
            lines.append(f"| {run_dir.name} | {method} | {' | '.join(cells)} | "
                         f"{row.get('wrong_minus_correct', float('nan')):+.3f} | {p.get('yes_present', float('nan')):.3f} | "
                         f"{p.get('yes_absent_partner', float('nan')):.3f} | {p.get('yes_absent_other', float('nan')):.3f} | "
                         f"{dependence.get(method, {}).get('mean', float('nan')):.2f} |")
        base = mech.get("aspo_premise", {}).get("base", {})
        p = prior.get("base", {})
        lines.append(f"| {run_dir.name} | base model | {base.get('ghosts_repeated', float('nan')):.3f} | | "
                     f"{base.get('truths_repeated', float('nan')):.3f} | | | "
                     f"{p.get('yes_present', float('nan')):.3f} | {p.get('yes_absent_partner', float('nan')):.3f} | "
                     f"{p.get('yes_absent_other', float('nan')):.3f} | {dependence['base']['mean']:.2f} |")
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/efficacy-variants"))
    p.add_argument("--bootstrap", type=int, default=2000)
    ns = p.parse_args(argv)
    ns.out.mkdir(parents=True, exist_ok=True)
    reference_counts = saved_scene_counts(ns.run_dirs[0])
    rows, summary = [], {"reference": ns.run_dirs[0].name, "settings": {}}
    for index, run_dir in enumerate(ns.run_dirs):
        results = json.loads((run_dir / "results.json").read_text())
        stats = results["statistics"]
        counts = saved_scene_counts(run_dir)
        setting = {"settings": {k: results["settings"][k] for k in results["settings"]
                                if k not in ("run_dir", "no_progress", "methods", "quick", "bootstrap")},
                   "records": results["records"], "base": stats["base"], "methods": {}}
        for method, row in stats["methods"].items():
            entry = {"seeds": len(counts.get(method, {})), "mean": {m: row[m]["mean"] for m in METRICS},
                     "vs_dpo": {m: row[m].get("diff_vs_dpo") for m in METRICS}}
            if index:
                entry["vs_reference"] = cross_setting(reference_counts, counts, method, ns.bootstrap)
            setting["methods"][method] = entry
            rows.append((run_dir.name, method, entry))
        summary["settings"][run_dir.name] = setting
        shutil.copyfile(run_dir / "results.md", ns.out / f"{run_dir.name}.md")

    lines = ["# Every setting tried: paired differences (95% bootstrap intervals over scenes and seeds)", "",
             "Within a setting, each method minus that setting's DPO (same seeds, same scenes).", "",
             "| setting | method | seeds | CHAIR_i | vs DPO | coverage | vs DPO | POPE F1 | vs DPO | yes-ratio |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, method, entry in rows:
        mean, vs = entry["mean"], entry["vs_dpo"]
        diffs = {m: (cell(vs[m], m) if vs[m] else "") for m in ("chair_i", "coverage", "pope_f1")}
        lines.append(f"| {name} | {method} | {entry['seeds']} | {mean['chair_i']:.3f} | {diffs['chair_i']} | "
                     f"{mean['coverage']:.3f} | {diffs['coverage']} | {mean['pope_f1']:.3f} | {diffs['pope_f1']} | "
                     f"{mean['pope_yes_ratio']:.3f} |")
    lines += ["", f"Across settings: each method minus the same method in `{ns.run_dirs[0].name}` (paired by seed and "
              "scene; settings with other held-out scenes are left out).", "",
              "| setting | method | seeds | CHAIR_i | coverage | POPE F1 | yes-ratio |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, method, entry in rows:
        vs = entry.get("vs_reference")
        if vs:
            lines.append(f"| {name} | {method} | {vs['seeds']} | " + " | ".join(cell(vs[m], m) for m in SHOWN) + " |")
    lines += premise_lines(summary, ns.run_dirs)
    text = "\n".join(lines) + "\n"
    (ns.out / "variants.md").write_text(text)
    (ns.out / "variants.json").write_text(json.dumps(summary, indent=2))
    print(text)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
