"""Read run directories into what the HTML report shows: metric columns, training logs, plots and
the answers to show in the gallery.

Three kinds of run directory are understood:

* a **demo run** (``mmpo demo``): ``metrics.json`` (metrics of the base model, the trained model and
  the SFT control), ``train_log.json``, the AdaViP contact sheet, and ``eval/answers.json``: every
  evaluated scene's answer per model, with the spans and verdicts the scorer recorded
  (:mod:`mmpo.evaluation.spans`), its images under ``eval/images/``;
* an **evaluation run** (``mmpo evaluate``): ``results.json`` and ``predictions/<benchmark>.json``,
  whose ``per_response`` (CHAIR, Object HalBench, AMBER) or ``per_scene`` (synthetic) rows carry
  the spans, and an ``image`` path where the run knew the image;
* a **training run** (``mmpo train``'s ``output_dir``): ``log_history.json``, or while it runs the
  newest ``checkpoint-*/trainer_state.json``: its training curves only;
* a **rounds run** (``mmpo iterate``'s ``output_dir``): ``round-K/round.json`` per finished round
  (:mod:`mmpo.training.rounds`): each round's metrics as a column and its pair statistics. A demo
  run with ``--rounds`` holds one in ``rounds/`` and its ``metrics.json`` repeats it.

Nothing here scores an answer: verdicts are read as the evaluation wrote them; the only arithmetic
is counting them (:func:`error_count`) and the mean and interval of a metric over seeds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmpo.evaluation.report import scalar_metrics

#: The demo's evaluation answers, per model, and its images (relative to the run directory).
ANSWERS_FILE = Path("eval") / "answers.json"
IMAGES_DIR = Path("eval") / "images"
#: ``per_response`` / ``per_scene`` rows of an evaluation run, by benchmark: (rows key, id key, text key).
ROW_KEYS = {
    "synthetic": ("per_scene", "scene_id", "response"),
    "chair": ("per_response", "image_id", "caption"),
    "object_halbench": ("per_response", "image_id", "caption"),
    "amber": ("per_response", "id", "response"),
}
#: Options of a demo run that do not change what was trained (they do not split a seed group).
INCIDENTAL_OPTIONS = ("seed", "output_dir", "cache_dir", "progress")


@dataclass
class Answer:
    """One model's answer to one gallery item: its text, the scorer's spans and missed objects.
    ``judged`` is false for a row written before scorers recorded spans (nothing to compare)."""

    text: str
    spans: list[dict[str, Any]]
    missed: list[str]
    judged: bool = True


@dataclass
class GalleryItem:
    """One evaluated image: where its picture is, the request, and each model's answer."""

    key: str
    image: Path | None
    prompt: str
    answers: dict[str, Answer] = field(default_factory=dict)
    truth: str = ""


@dataclass
class Run:
    """One run directory as the report sees it.

    ``columns`` are its models' metrics in table order (``{label: {(benchmark, metric): value}}``,
    the base model first when the run has one); ``galleries`` hold, per benchmark, the items with
    each model's answer (keyed as the columns). ``group`` is what the run's seeds share: runs with
    the same group and different seeds are one column group in the metric table.
    """

    path: Path
    name: str
    kind: str                                   # "demo", "evaluate" or "train"
    columns: dict[str, dict[tuple[str, str], float]]
    log: list[dict[str, Any]] = field(default_factory=list)
    images: list[tuple[str, Path]] = field(default_factory=list)
    galleries: dict[str, dict[str, GalleryItem]] = field(default_factory=dict)
    base_label: str | None = None
    primary_label: str | None = None
    seed: int | None = None
    group: str = ""
    info: dict[str, Any] = field(default_factory=dict)


def load_run(path: str | Path) -> Run:
    """A demo run (``metrics.json``) or an evaluation run (``results.json``) from its directory.

    Raises:
        FileNotFoundError: the directory holds none of the files a run writes (naming them).
        ValueError: a file that is not the JSON the run writes, naming it.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {path}: no such directory")
    if (path / "metrics.json").exists():
        return _demo_run(path)
    if (path / "results.json").exists():
        return _evaluation_run(path)
    if (path / "round-1" / "round.json").exists():
        return _rounds_run(path)
    if (log := _training_log(path)) is not None:
        return _training_run(path, log)
    raise FileNotFoundError(f"{path} is not a run directory: it holds neither metrics.json (mmpo demo), "
                            "results.json (mmpo evaluate), round-1/round.json (mmpo iterate), log_history.json "
                            "(mmpo train) nor a checkpoint-*/trainer_state.json")


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


# ------------------------------------------------------------------------------------------- demo
def _demo_run(path: Path) -> Run:
    metrics = _json(path / "metrics.json")
    for key in ("method", "before", "after"):
        if key not in metrics:
            raise ValueError(f"{path / 'metrics.json'}: lacks {key!r}; is it an mmpo demo run?")
    method = str(metrics["method"])
    labels = {"before": "base", "control": "SFT control", "after": method}
    columns = {labels[stage]: scalar_metrics({"benchmarks": {"synthetic": metrics[stage]}})
               for stage in ("before", "control", "after") if isinstance(metrics.get(stage), Mapping)}
    options = metrics.get("options") or {}
    group = json.dumps({"kind": "demo", **{k: v for k, v in options.items() if k not in INCIDENTAL_OPTIONS}},
                       sort_keys=True)
    log = _json(path / "train_log.json") if (path / "train_log.json").exists() else []
    images = [(title, path / name) for title, name in (("AdaViP vision-rejected images", "contact_sheet.png"),)
              if (path / name).exists()]
    rounds = metrics.get("rounds")
    if isinstance(rounds, Mapping):
        columns.update(_round_columns(rounds.get("rounds"), path / "metrics.json", f"{method} round "))
    run = Run(path=path, name=path.name, kind="demo", columns=columns, log=log, images=images,
              base_label="base", primary_label=method, seed=options.get("seed"), group=group,
              info={"method": method, "data": metrics.get("data"), "records": metrics.get("n_records"),
                    "seconds": metrics.get("seconds"), "config": metrics.get("config"),
                    "options": options, "self_pairs": metrics.get("self_pairs"),
                    **({"rounds": rounds} if isinstance(rounds, Mapping) else {})})
    if (path / ANSWERS_FILE).exists():
        run.galleries["synthetic"] = _demo_gallery(path, _json(path / ANSWERS_FILE), labels)
    return run


def _round_columns(rounds: Any, where: Path, prefix: str) -> dict[str, dict[tuple[str, str], float]]:
    """``{prefix + K: metrics}`` of each evaluated round ``K >= 1`` of a list of ``round.json`` dicts."""
    if not isinstance(rounds, list) or not all(isinstance(r, Mapping) and isinstance(r.get("round"), int)
                                               for r in rounds):
        raise ValueError(f"{where}: 'rounds' must be a list of round results with a 'round' number")
    return {f"{prefix}{r['round']}": scalar_metrics({"benchmarks": {"synthetic": r["metrics"]}})
            for r in rounds if r["round"] > 0 and isinstance(r.get("metrics"), Mapping)}


# ------------------------------------------------------------------------------------------- rounds
def _rounds_run(path: Path) -> Run:
    rounds = []
    k = 0
    while (file := path / f"round-{k}" / "round.json").exists() or k == 0:
        if file.exists():
            value = _json(file)
            if not isinstance(value, Mapping) or value.get("round") != k:
                raise ValueError(f"{file}: not round {k}'s result")
            rounds.append(dict(value))
        k += 1
    columns = {}
    if rounds[0]["round"] == 0 and isinstance(rounds[0].get("metrics"), Mapping):
        columns["start"] = scalar_metrics({"benchmarks": {"synthetic": rounds[0]["metrics"]}})
    columns.update(_round_columns(rounds, path, "round "))
    settings = _json(path / "rounds-settings.json") if (path / "rounds-settings.json").exists() else {}
    log = []
    for r in rounds[1:] if rounds[0]["round"] == 0 else rounds:  # one curve: the rounds' steps end to end
        history = path / f"round-{r['round']}" / "log_history.json"
        offset = log[-1]["step"] if log else 0
        if history.exists():
            log += [{**row, "step": row["step"] + offset} for row in _json(history)
                    if isinstance(row, Mapping) and isinstance(row.get("step"), (int, float))]
    return Run(path=path, name=path.name, kind="rounds", columns=columns, log=log,
               base_label="start" if "start" in columns else None, primary_label=next(reversed(columns), None),
               group=json.dumps({"kind": "rounds", **settings}, sort_keys=True, default=str),
               info={"rounds": {"rounds": rounds, "run_dir": str(path)}, "settings": settings})


def _demo_gallery(path: Path, answers: Mapping[str, Any], labels: Mapping[str, str]) -> dict[str, GalleryItem]:
    """``eval/answers.json``: ``{"prompt", "truth": {scene_id: description}, "models": {stage:
    [per-scene rows]}}``."""
    prompt = str(answers.get("prompt", ""))
    truths = answers.get("truth") or {}
    items: dict[str, GalleryItem] = {}
    for stage in ("before", "control", "after"):
        for index, row in enumerate(answers.get("models", {}).get(stage, [])):
            where = f"{path / ANSWERS_FILE}: {stage} row {index}"
            key = str(_field(row, "scene_id", where))
            item = items.setdefault(key, GalleryItem(key, path / IMAGES_DIR / f"{key}.png", prompt,
                                                     truth=str(truths.get(key, ""))))
            item.answers[labels[stage]] = _answer(row, "response", where)
    return items


def _field(row: Any, key: str, where: str) -> Any:
    if not isinstance(row, Mapping) or key not in row:
        have = sorted(row) if isinstance(row, Mapping) else type(row).__name__
        raise ValueError(f"{where}: lacks {key!r} (has {have})")
    return row[key]


def _answer(row: Mapping[str, Any], text_key: str, where: str) -> Answer:
    text = str(_field(row, text_key, where))
    spans = row.get("spans") or []
    for span in spans:
        start, end = span.get("start"), span.get("end")
        if start is not None and text[start:end] != span.get("text"):
            raise ValueError(f"{where}: span {span} does not match the answer text ({text[start:end]!r})")
    return Answer(text, list(spans), list(row.get("missed") or []), judged="spans" in row)


# --------------------------------------------------------------------------------------- training
def _training_log(path: Path) -> Path | None:
    """``log_history.json`` of a finished ``mmpo train`` run, else the newest checkpoint's
    ``trainer_state.json`` (a run still going, or stopped)."""
    if (path / "log_history.json").exists():
        return path / "log_history.json"
    states = [p for p in path.glob("checkpoint-*/trainer_state.json") if p.parent.name.split("-")[-1].isdigit()]
    return max(states, key=lambda p: int(p.parent.name.split("-")[-1])) if states else None


def _training_run(path: Path, log_file: Path) -> Run:
    """An ``mmpo train`` output directory: its training curves (no evaluation: run ``mmpo evaluate``
    on the checkpoint and give that run directory too)."""
    data = _json(log_file)
    log = data.get("log_history") if isinstance(data, Mapping) else data
    if not isinstance(log, list) or not all(isinstance(entry, Mapping) for entry in log):
        raise ValueError(f"{log_file}: not a list of log entries")
    return Run(path=path, name=path.name, kind="train", columns={}, log=list(log), primary_label=path.name,
               group=json.dumps({"kind": "train", "run": path.name}),
               info={"log": str(log_file.relative_to(path)), "steps logged": len(log)})


# ------------------------------------------------------------------------------------- evaluation
def _evaluation_run(path: Path) -> Run:
    results = _json(path / "results.json")
    if not isinstance(results, Mapping) or "benchmarks" not in results:
        raise ValueError(f"{path / 'results.json'}: lacks 'benchmarks'; is it an mmpo evaluate run?")
    name = str(results.get("run") or path.name)
    run = Run(path=path, name=name, kind="evaluate", columns={name: scalar_metrics(results)},
              primary_label=name, group=json.dumps({"kind": "evaluate", "run": path.name}),
              info={"model": results.get("model"), "settings": results.get("settings")})
    for bench in results["benchmarks"]:
        predictions = path / "predictions" / f"{bench}.json"
        if bench in ROW_KEYS and predictions.exists():
            rows_key, id_key, text_key = ROW_KEYS[bench]
            rows = _json(predictions).get(rows_key) or []
            if bench == "amber":            # AMBER's yes/no items have no object mentions to show
                rows = [row for row in rows if isinstance(row, Mapping) and row.get("type") == "generative"]
            if rows:
                run.galleries[bench] = _evaluation_gallery(path, predictions, rows, id_key, text_key, name)
    return run


def _evaluation_gallery(path: Path, file: Path, rows: Sequence[Any], id_key: str, text_key: str,
                        label: str) -> dict[str, GalleryItem]:
    items: dict[str, GalleryItem] = {}
    for index, row in enumerate(rows):
        where = f"{file}: row {index}"
        key, prompt = str(_field(row, id_key, where)), str(row.get("question") or "")
        if key in items and items[key].prompt != prompt:     # Object HalBench: several questions per image
            key = f"{key} | {prompt}"
        image = row.get("image")
        image = (path / image if not Path(image).is_absolute() else Path(image)) if image else None
        item = items.setdefault(key, GalleryItem(key, image, prompt, truth=str(row.get("description") or "")))
        item.answers[label] = _answer(row, text_key, where)
    return items


# ----------------------------------------------------------------------------------------- counts
def error_count(answer: Answer) -> int:
    """The answer's spans the scorer judged wrong (hallucinated or wrong attribute)."""
    return sum(span.get("verdict") != "correct" for span in answer.spans)


def change(base: Answer, trained: Answer) -> str:
    """``better`` / ``worse`` / ``same`` for ``trained`` against ``base``: fewer judged-wrong spans is
    better; at equal errors, fewer missed objects is better. ``n/a`` when either was not judged."""
    if not (base.judged and trained.judged):
        return "n/a"
    a, b = (error_count(base), len(base.missed)), (error_count(trained), len(trained.missed))
    return "better" if b < a else "worse" if b > a else "same"


#: two-sided 95% Student-t quantiles for 1..30 degrees of freedom (beyond: the normal's 1.96)
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean of ``values`` (one per seed) and its 95% Student-t interval; ``(m, m, m)`` for one value."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n == 1:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = (T_975[n - 2] if n - 1 <= len(T_975) else 1.96) * sd / math.sqrt(n)
    return mean, mean - half, mean + half
