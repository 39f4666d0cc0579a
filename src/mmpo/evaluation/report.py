"""Write an evaluation run's results (JSON + Markdown) and compare runs side by side.

A run's results are ``{"run": name, "model": path, "benchmarks": {bench: result}}`` where each
``result`` is a ``score_<bench>`` / ``run_<bench>`` dict. Tables show the *scalar* entries (ints
and floats) of each result, those of nested dicts as ``outer/inner`` (POPE's
``random/accuracy``); bookkeeping dicts (:data:`UNTABLED`) and lists stay in the JSON only. Each
benchmark's scoring rule (its ``parsing`` entry: ``reference`` or ``lenient``) is a column of
the run table and a row of the comparison table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmpo.io import atomic_write_json, atomic_write_text, parse_json

RESULTS_JSON = "results.json"
RESULTS_MARKDOWN = "results.md"


#: nested entries of a result that are bookkeeping, not metrics: kept in results.json, not tabled
UNTABLED = ("counts", "counters", "unrounded", "definitions", "nlp", "settings")


def _numbers(result: Mapping[str, Any], prefix: str = ""):
    for key, value in result.items():
        if isinstance(value, Mapping):
            if key not in UNTABLED:
                yield from _numbers(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{key}", value


def scalar_metrics(results: Mapping[str, Any]) -> dict[tuple[str, str], float]:
    """``{(benchmark, metric): value}`` for every int/float (not bool) of every benchmark, in order;
    numbers inside nested dicts are ``"outer/inner"`` metrics (except :data:`UNTABLED` dicts)."""
    return {(bench, metric): value for bench, result in results.get("benchmarks", {}).items()
            for metric, value in _numbers(result)}


def scoring_rules(results: Mapping[str, Any]) -> dict[str, str]:
    """``{benchmark: rule}``: how each benchmark read the model's text (``reference`` /
    ``lenient``; ``exact`` for the synthetic world, whose truth is known; ``-`` if unstated)."""
    return {bench: str(result.get("parsing", "-")) for bench, result in results.get("benchmarks", {}).items()}


def format_value(value: float | None) -> str:
    """Ints as they are, floats to 4 decimals, missing as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return "nan" if math.isnan(value) else f"{value:.4f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[str] = ()) -> str:
    """A GitHub-flavoured Markdown table (``|`` inside cells escaped); the columns named in ``right``
    are right-aligned (numbers)."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    rule = ["---:" if name in right else "---" for name in header]
    return "\n".join([line(header), line(rule), *map(line, rows)]) + "\n"


def run_table(results: Mapping[str, Any]) -> str:
    """One run as ``| benchmark | scoring | metric | value |``."""
    rules = scoring_rules(results)
    rows = [(bench, rules[bench], metric, format_value(v)) for (bench, metric), v in scalar_metrics(results).items()]
    return markdown_table(("benchmark", "scoring", "metric", "value"), rows)


def write_run(results: Mapping[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` into ``out_dir``; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / RESULTS_JSON, out_dir / RESULTS_MARKDOWN
    atomic_write_json(json_path, results, indent=2, default=str)
    title = f"# {results.get('run', out_dir.name)}\n\n"
    model = f"model: `{results['model']}`\n\n" if results.get("model") else ""
    atomic_write_text(md_path, title + model + run_table(results))
    return json_path, md_path


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """A run's results from its directory (or directly from a ``results.json`` path).

    Raises:
        ValueError: naming the file, when it is not JSON (within :func:`mmpo.io.parse_json`'s
            limits) or not ``{"benchmarks": {name: {metric: value, ...}}, "run": name, ...}``.
    """
    path = Path(run_dir)
    path = path / RESULTS_JSON if path.is_dir() else path
    try:
        results = parse_json(path.read_bytes())
    except ValueError as error:  # JSONDecodeError, JsonLimitError, bad UTF-8
        raise ValueError(f"results file {path}: not a results file mmpo can read ({error})") from None
    problem = None
    if not isinstance(results, dict):
        problem = f"a JSON {type(results).__name__}, not an object"
    elif not isinstance(results.get("benchmarks", {}), dict):
        problem = "'benchmarks' is not an object of benchmark: results"
    elif bad := [name for name, result in results.get("benchmarks", {}).items() if not isinstance(result, dict)]:
        problem = f"the results of benchmark {bad[0]!r} are not an object of metric: value"
    elif results.get("run") is not None and not isinstance(results["run"], str):
        problem = "'run' (the run's name) is not a string"
    if problem:
        raise ValueError(f"results file {path}: {problem} (written by mmpo evaluate?)")
    return results


def compare_table(runs: Sequence[Mapping[str, Any]], names: Sequence[str] | None = None) -> str:
    """Several runs side by side: ``| benchmark | metric | run 1 | run 2 | ... |``.

    Rows are the union of the runs' scalar metrics in first-seen order; a metric a run lacks is ``-``.
    Column names are ``names``, else each run's ``run`` field, else ``run <i>``.
    """
    names = list(names) if names is not None else [r.get("run") or f"run {i + 1}" for i, r in enumerate(runs)]
    if len(names) != len(runs):
        raise ValueError(f"{len(runs)} runs but {len(names)} names")
    tables = [scalar_metrics(r) for r in runs]
    rules = [scoring_rules(r) for r in runs]
    keys = list(dict.fromkeys(k for table in tables for k in table))
    rows, seen = [], set()
    for bench, metric in keys:
        if bench not in seen:
            seen.add(bench)
            rows.append((bench, "scoring", *(r.get(bench, "-") for r in rules)))
        rows.append((bench, metric, *(format_value(t.get((bench, metric))) for t in tables)))
    return markdown_table(("benchmark", "metric", *names), rows)


def compare_runs(run_dirs: Sequence[str | Path], out_path: str | Path | None = None) -> str:
    """Load runs from their directories, build :func:`compare_table` (columns named after each
    run's ``run`` field, else its directory) and optionally write it to ``out_path``."""
    runs = [load_run(d) for d in run_dirs]
    names = [r.get("run") or Path(d).name for r, d in zip(runs, run_dirs, strict=True)]
    table = compare_table(runs, names)
    if out_path is not None:
        atomic_write_text(Path(out_path), table)
    return table
