"""Read run directories into what the HTML report shows: metric columns, training logs, plots and
the answers to show in the gallery.

Four kinds of run directory are understood:

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

Run files are data, not instructions: every file is read from inside its run directory only
(symlinks resolved), an image a run's file names outside it is left out with a warning naming the
run, the answer and the path, and every file of the wrong shape is one ``ValueError`` naming the file
and what was expected (:func:`load_run`).

Nothing here scores an answer: verdicts are read as the evaluation wrote them; the only arithmetic
is counting them (:func:`error_count`) and the mean and interval of a metric over seeds.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmpo.evaluation.report import scalar_metrics

logger = logging.getLogger(__name__)

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
#: Deepest nesting of a run file's JSON that is read (mmpo writes a few levels; deeper is not a run file).
MAX_DEPTH = 64
#: Largest magnitude of a value drawn in a curve (beyond it, the plot's axes cannot be computed).
PLOT_LIMIT = 1e100
#: Skipped images named one by one per run; the rest are counted in one more warning.
IMAGE_WARNINGS = 10


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
    the same group and different seeds are one column group in the metric table. ``image_dirs``
    are folders besides the run directory that its images may come from (given by the user, never
    by the run's files); ``warnings`` what was skipped while reading it (each also logged).
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
    image_dirs: tuple[Path, ...] = ()
    warnings: list[str] = field(default_factory=list)


def contained(path: str | Path, roots: Sequence[str | Path]) -> Path | None:
    """``path`` with every symlink resolved, if that lies inside one of ``roots`` (resolved too);
    else None (also for a path the system cannot even look up)."""
    try:
        real = Path(os.path.realpath(path))
        for root in roots:
            root = Path(os.path.realpath(root))
            if real == root or real.is_relative_to(root):
                return real
    except (OSError, ValueError):           # a NUL byte, a name too long, a symlink loop
        pass
    return None


class _RunFiles:
    """The files of one run directory, read only from inside it: a run's file may name another
    file (an image, a benchmark's predictions), and none of those may take the report outside."""

    def __init__(self, path: Path, image_dirs: Sequence[str | Path] = ()):
        self.path = path
        self.image_dirs = tuple(Path(d) for d in image_dirs)
        self.warnings: list[str] = []
        self.images_skipped = 0

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        logger.warning("%s", message)

    def file(self, relative: str | Path) -> Path:
        """The run's file ``relative``, resolved; ValueError if it resolves outside the run directory."""
        where = self.path / relative
        real = contained(where, [self.path])
        if real is None:
            raise ValueError(f"{where}: resolves outside the run directory {self.path} (a symlink?); not read")
        return real

    def exists(self, relative: str | Path) -> bool:
        return (self.path / relative).exists()

    def json(self, relative: str | Path, expected: type | tuple[type, ...] = object, what: str = "") -> Any:
        """The JSON value of the run's file ``relative``, which must be an instance of ``expected``
        (described as ``what``); every problem is one ValueError naming the file."""
        where = self.path / relative
        try:
            value = json.loads(self.file(relative).read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON ({error})") from None
        except (UnicodeDecodeError, RecursionError) as error:
            raise ValueError(f"{where}: not valid JSON ({type(error).__name__}: {error})") from None
        except ValueError as error:           # outside the run, or a number too long to read
            raise ValueError(str(error) if str(where) in str(error) else f"{where}: {error}") from None
        _check_depth(value, where)
        if not isinstance(value, expected):
            raise ValueError(f"{where}: expected {what}, got {_kind(value)}")
        return value

    def image(self, path: str | Path, answer: str) -> Path | None:
        """The image ``path`` (relative to the run directory, or absolute) of the gallery item
        ``answer``, if it lies inside the run directory or a folder of ``image_dirs``; else None,
        with a warning naming the run, the answer and the path."""
        where = self.path / path
        if contained(where, [self.path, *self.image_dirs]) is not None:
            return where
        self.images_skipped += 1
        if self.images_skipped <= IMAGE_WARNINGS:
            self.warn(f"run {self.path}: answer {answer!r}: its image {where} is outside the run directory "
                      f"(resolved, symlinks followed); not shown")
        return None

    def done(self) -> list[str]:
        if self.images_skipped > IMAGE_WARNINGS:
            self.warn(f"run {self.path}: {self.images_skipped - IMAGE_WARNINGS} more images outside the run "
                      f"directory not shown")
        return self.warnings


def load_run(path: str | Path, image_dirs: Sequence[str | Path] = ()) -> Run:
    """A demo run (``metrics.json``) or an evaluation run (``results.json``) from its directory.

    Every file is read from inside the directory only (symlinks resolved): a file that resolves
    outside it is not read, and an image named by the run's files that lies outside it (and
    outside ``image_dirs``, folders the caller trusts) is left out with a warning.

    Raises:
        FileNotFoundError: the directory holds none of the files a run writes (naming them).
        ValueError: a file that is not the JSON the run writes, naming it and what was expected.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {path}: no such directory")
    files = _RunFiles(path, image_dirs)
    if files.exists("metrics.json"):
        run = _demo_run(files)
    elif files.exists("results.json"):
        run = _evaluation_run(files)
    elif files.exists(Path("round-1") / "round.json"):
        run = _rounds_run(files)
    elif (log := _training_log(files)) is not None:
        run = _training_run(files, log)
    else:
        raise FileNotFoundError(f"{path} is not a run directory: it holds neither metrics.json (mmpo demo), "
                                "results.json (mmpo evaluate), round-1/round.json (mmpo iterate), log_history.json "
                                "(mmpo train) nor a checkpoint-*/trainer_state.json")
    run.image_dirs = files.image_dirs
    run.warnings = files.done()
    return run


# ------------------------------------------------------------------------------------------ shapes
def _kind(value: Any) -> str:
    """How a JSON value is called in an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"[:60]
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    return {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)


def _check_depth(value: Any, where: Path) -> None:
    """ValueError naming ``where`` when ``value`` nests more than :data:`MAX_DEPTH` levels."""
    level, depth = [value], 0
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            raise ValueError(f"{where}: nested more than {MAX_DEPTH} levels deep; not a file mmpo writes")
        level = [v for item in level if isinstance(item, (dict, list))
                 for v in (item.values() if isinstance(item, dict) else item)]


def _expect(value: Any, expected: type | tuple[type, ...], what: str, where: str | Path) -> Any:
    if not isinstance(value, expected) or isinstance(value, bool) and bool not in (
            expected if isinstance(expected, tuple) else (expected,)):
        raise ValueError(f"{where}: expected {what}, got {_kind(value)}")
    return value


def _optional(value: Any, expected: type | tuple[type, ...], what: str, where: str | Path, default: Any) -> Any:
    return default if value is None else _expect(value, expected, what, where)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plottable(value: Any) -> bool:
    """A number a curve can take: finite and at most :data:`PLOT_LIMIT` in magnitude, or NaN/inf
    (drawn as a gap)."""
    if not _is_number(value):
        return False
    try:
        number = float(value)
    except OverflowError:
        return False
    return not math.isfinite(number) or abs(number) <= PLOT_LIMIT


def _metrics(result: Any, where: str | Path, bench: str = "synthetic") -> dict[tuple[str, str], float]:
    """``{(bench, metric): value}`` of a benchmark's result object (:func:`scalar_metrics`), every
    value a float (a number too large for one is infinite)."""
    _expect(result, Mapping, f"an object of {bench} metrics", where)
    metrics = {}
    for key, value in scalar_metrics({"benchmarks": {bench: result}}).items():
        try:
            metrics[key] = float(value)
        except OverflowError:
            metrics[key] = math.inf if value > 0 else -math.inf
    return metrics


def _log(entries: Any, where: Path, files: _RunFiles) -> list[dict[str, Any]]:
    """The entries of a training log (a list of objects with a ``step``), with only the numbers a
    curve can draw; entries without a usable step are left out with one warning."""
    if not isinstance(entries, list):
        raise ValueError(f"{where}: not a list of log entries (got {_kind(entries)})")
    log, skipped = [], 0
    for entry in entries:
        step = entry.get("step") if isinstance(entry, Mapping) else None
        if not plottable(step) or not math.isfinite(step):
            skipped += 1
            continue
        log.append({key: value for key, value in entry.items() if plottable(value)})
    if skipped:
        files.warn(f"{where}: {skipped} of {len(entries)} log entries are not objects with a finite number "
                   f"'step'; left out of the curves")
    return log


def _json_key(value: Any, what: str, where: str) -> str:
    """An id as the gallery keys it: a string or an integer, as text."""
    return str(_expect(value, (str, int), what, where))


# ------------------------------------------------------------------------------------------- demo
def _demo_run(files: _RunFiles) -> Run:
    path = files.path
    where = path / "metrics.json"
    metrics = files.json("metrics.json", Mapping, "an object (mmpo demo's metrics)")
    for key in ("method", "before", "after"):
        if key not in metrics:
            raise ValueError(f"{where}: lacks {key!r}; is it an mmpo demo run?")
    method = _expect(metrics["method"], str, "'method' to be a string", where)
    labels = {"before": "base", "control": "SFT control", "after": method}
    columns = {labels[stage]: _metrics(metrics[stage], f"{where}: {stage!r}")
               for stage in ("before", "control", "after") if stage != "control" or metrics.get(stage) is not None}
    options = _optional(metrics.get("options"), Mapping, "'options' to be an object", where, {})
    seed = _optional(options.get("seed"), (int, float, str), "'options.seed' to be a number", where, None)
    group = json.dumps({"kind": "demo", **{k: v for k, v in options.items() if k not in INCIDENTAL_OPTIONS}},
                       sort_keys=True)
    log = _log(files.json("train_log.json"), path / "train_log.json", files) if files.exists("train_log.json") else []
    images = [(title, path / name) for title, name in (("AdaViP vision-rejected images", "contact_sheet.png"),)
              if files.exists(name)]  # inlined only from inside the run (html._picture)
    rounds = _optional(metrics.get("rounds"), Mapping, "'rounds' to be an object", where, None)
    self_pairs = _optional(metrics.get("self_pairs"), Mapping, "'self_pairs' to be an object", where, None)
    if rounds is not None:
        columns.update(_round_columns(rounds.get("rounds"), where, f"{method} round "))
    run = Run(path=path, name=path.name, kind="demo", columns=columns, log=log, images=images,
              base_label="base", primary_label=method, seed=seed, group=group,
              info={"method": method, "data": metrics.get("data"), "records": metrics.get("n_records"),
                    "seconds": metrics.get("seconds"), "config": metrics.get("config"),
                    "options": options, "self_pairs": self_pairs,
                    **({"rounds": rounds} if rounds is not None else {})})
    if files.exists(ANSWERS_FILE):
        run.galleries["synthetic"] = _demo_gallery(files, labels)
    return run


def _round_columns(rounds: Any, where: Path, prefix: str) -> dict[str, dict[tuple[str, str], float]]:
    """``{prefix + K: metrics}`` of each evaluated round ``K >= 1`` of a list of ``round.json`` dicts."""
    if not isinstance(rounds, list) or not all(isinstance(r, Mapping) and _round_number(r) is not None
                                               for r in rounds):
        raise ValueError(f"{where}: 'rounds' must be a list of round results with a 'round' number")
    return {f"{prefix}{r['round']}": _metrics(r["metrics"], f"{where}: round {r['round']} 'metrics'")
            for r in rounds if r["round"] > 0 and r.get("metrics") is not None}


def _round_number(result: Mapping[str, Any]) -> int | None:
    number = result.get("round")
    return number if isinstance(number, int) and not isinstance(number, bool) and 0 <= number < 10**6 else None


# ------------------------------------------------------------------------------------------- rounds
def _rounds_run(files: _RunFiles) -> Run:
    path = files.path
    rounds = []
    k = 0
    while files.exists(file := Path(f"round-{k}") / "round.json") or k == 0:
        if files.exists(file):
            value = files.json(file, Mapping, f"an object (round {k}'s result)")
            if _round_number(value) != k:
                raise ValueError(f"{path / file}: not round {k}'s result")
            rounds.append(dict(value))
        k += 1
    columns = {}
    if rounds[0]["round"] == 0 and rounds[0].get("metrics") is not None:
        columns["start"] = _metrics(rounds[0]["metrics"], f"{path / 'round-0' / 'round.json'}: 'metrics'")
    columns.update(_round_columns(rounds, path, "round "))
    settings = (files.json("rounds-settings.json", Mapping, "an object (the rounds' settings)")
                if files.exists("rounds-settings.json") else {})
    log = []
    for r in rounds[1:] if rounds[0]["round"] == 0 else rounds:  # one curve: the rounds' steps end to end
        history = Path(f"round-{r['round']}") / "log_history.json"
        offset = log[-1]["step"] if log else 0
        if files.exists(history):
            log += [{**row, "step": row["step"] + offset} for row in _log(files.json(history), path / history, files)]
    return Run(path=path, name=path.name, kind="rounds", columns=columns, log=log,
               base_label="start" if "start" in columns else None, primary_label=next(reversed(columns), None),
               group=json.dumps({"kind": "rounds", **settings}, sort_keys=True, default=str),
               info={"rounds": {"rounds": rounds, "run_dir": str(path)}, "settings": settings})


def _demo_gallery(files: _RunFiles, labels: Mapping[str, str]) -> dict[str, GalleryItem]:
    """``eval/answers.json``: ``{"prompt", "truth": {scene_id: description}, "models": {stage:
    [per-scene rows]}}``."""
    file = files.path / ANSWERS_FILE
    answers = files.json(ANSWERS_FILE, Mapping, 'an object {"prompt", "truth", "models"}')
    prompt = _optional(answers.get("prompt"), str, "'prompt' to be a string", file, "")
    truths = _optional(answers.get("truth"), Mapping, "'truth' to be an object {scene id: description}", file, {})
    models = _optional(answers.get("models"), Mapping, "'models' to be an object {stage: list of rows}", file, {})
    items: dict[str, GalleryItem] = {}
    for stage in ("before", "control", "after"):
        rows = _optional(models.get(stage), list, f"'models.{stage}' to be a list of rows", file, [])
        for index, row in enumerate(rows):
            where = f"{file}: {stage} row {index}"
            key = _json_key(_field(row, "scene_id", where), "'scene_id' to be a string", where)
            if key not in items:
                truth = _optional(truths.get(key), str, f"'truth.{key}' to be a string", file, "")
                items[key] = GalleryItem(key, files.image(IMAGES_DIR / f"{key}.png", key), prompt, truth=truth)
            items[key].answers[labels[stage]] = _answer(row, "response", where)
    return items


def _field(row: Any, key: str, where: str) -> Any:
    if not isinstance(row, Mapping) or key not in row:
        have = sorted(map(str, row)) if isinstance(row, Mapping) else _kind(row)
        raise ValueError(f"{where}: lacks {key!r} (has {have})")
    return row[key]


def _answer(row: Mapping[str, Any], text_key: str, where: str) -> Answer:
    text = _expect(_field(row, text_key, where), str, f"{text_key!r} to be a string", where)
    spans = _optional(row.get("spans"), list, "'spans' to be a list", where, [])
    for span in spans:
        _check_span(span, text, where)
    missed = _optional(row.get("missed"), list, "'missed' to be a list of object names", where, [])
    for name in missed:
        _expect(name, str, "'missed' to be a list of object names", where)
    return Answer(text, list(spans), list(missed), judged="spans" in row)


def _check_span(span: Any, text: str, where: str) -> None:
    """ValueError naming ``where`` unless ``span`` is a span of ``text`` as the scorers write it
    (:mod:`mmpo.evaluation.spans`): located (``start``, ``end`` in the text, ``text`` what they
    cut) or not (``start`` null), a string ``verdict``, an optional ``attribute`` object likewise."""
    _expect(span, Mapping, "each span to be an object", where)
    _optional(span.get("verdict"), str, "a span's 'verdict' to be a string", where, "")
    if span.get("start") is not None:
        start, end = span.get("start"), span.get("end")
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in (start, end)) \
                or not 0 <= start <= end <= len(text):
            raise ValueError(f"{where}: span {span} needs whole numbers 'start' <= 'end' within the answer text "
                             f"({len(text)} characters)")
        if text[start:end] != span.get("text"):
            raise ValueError(f"{where}: span {span} does not match the answer text ({text[start:end]!r})")
    attribute = _optional(span.get("attribute"), Mapping, "a span's 'attribute' to be an object", where, {})
    if attribute:
        _optional(attribute.get("true"), list, "an attribute's 'true' to be a list", where, [])
        if attribute.get("start") is not None:
            start, end = attribute.get("start"), attribute.get("end")
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in (start, end)) \
                    or not 0 <= start <= end <= len(text):
                raise ValueError(f"{where}: the attribute of span {span} needs whole numbers 'start' <= 'end' "
                                 f"within the answer text")


# --------------------------------------------------------------------------------------- training
def _training_log(files: _RunFiles) -> Path | None:
    """``log_history.json`` of a finished ``mmpo train`` run, else the newest checkpoint's
    ``trainer_state.json`` (a run still going, or stopped); relative to the run directory."""
    if files.exists("log_history.json"):
        return Path("log_history.json")
    states = [p.relative_to(files.path) for p in files.path.glob("checkpoint-*/trainer_state.json")
              if p.parent.name.split("-")[-1].isdigit()]
    return max(states, key=lambda p: int(p.parent.name.split("-")[-1])) if states else None


def _training_run(files: _RunFiles, log_file: Path) -> Run:
    """An ``mmpo train`` output directory: its training curves (no evaluation: run ``mmpo evaluate``
    on the checkpoint and give that run directory too)."""
    path = files.path
    data = files.json(log_file)
    log = _log(data.get("log_history") if isinstance(data, Mapping) else data, path / log_file, files)
    return Run(path=path, name=path.name, kind="train", columns={}, log=log, primary_label=path.name,
               group=json.dumps({"kind": "train", "run": path.name}),
               info={"log": str(log_file), "steps logged": len(log)})


# ------------------------------------------------------------------------------------- evaluation
def _evaluation_run(files: _RunFiles) -> Run:
    path = files.path
    where = path / "results.json"
    results = files.json("results.json", Mapping, "an object (mmpo evaluate's results)")
    if "benchmarks" not in results:
        raise ValueError(f"{where}: lacks 'benchmarks'; is it an mmpo evaluate run?")
    benchmarks = _expect(results["benchmarks"], Mapping, "'benchmarks' to be an object {benchmark: metrics}", where)
    name = _optional(results.get("run"), str, "'run' to be a string", where, "") or path.name
    columns = {}
    for bench, result in benchmarks.items():
        columns.update(_metrics(result, f"{where}: benchmark {bench!r}", bench))
    run = Run(path=path, name=name, kind="evaluate", columns={name: columns},
              primary_label=name, group=json.dumps({"kind": "evaluate", "run": path.name}),
              info={"model": results.get("model"), "settings": results.get("settings")})
    for bench in benchmarks:
        predictions = Path("predictions") / f"{bench}.json"
        if bench in ROW_KEYS and files.exists(predictions):
            rows_key, id_key, text_key = ROW_KEYS[bench]
            file = path / predictions
            rows = files.json(predictions, Mapping, f"an object with {rows_key!r}").get(rows_key)
            rows = _optional(rows, list, f"{rows_key!r} to be a list of rows", file, [])
            if bench == "amber":            # AMBER's yes/no items have no object mentions to show
                rows = [row for row in rows if isinstance(row, Mapping) and row.get("type") == "generative"]
            if rows:
                run.galleries[bench] = _evaluation_gallery(files, file, rows, id_key, text_key, name)
    return run


def _evaluation_gallery(files: _RunFiles, file: Path, rows: Sequence[Any], id_key: str, text_key: str,
                        label: str) -> dict[str, GalleryItem]:
    items: dict[str, GalleryItem] = {}
    for index, row in enumerate(rows):
        where = f"{file}: row {index}"
        key = _json_key(_field(row, id_key, where), f"{id_key!r} to be a string or a whole number", where)
        prompt = _optional(row.get("question"), str, "'question' to be a string", where, "")
        if key in items and items[key].prompt != prompt:     # Object HalBench: several questions per image
            key = f"{key} | {prompt}"
        if key not in items:
            image = _optional(row.get("image"), str, "'image' to be a path", where, "")
            truth = _optional(row.get("description"), str, "'description' to be a string", where, "")
            items[key] = GalleryItem(key, files.image(image, key) if image else None, prompt, truth=truth)
        items[key].answers[label] = _answer(row, text_key, where)
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
    sd = math.sqrt(sum((v - mean) * (v - mean) for v in values) / (n - 1))  # (not ** 2: no OverflowError)
    half = (T_975[n - 2] if n - 1 <= len(T_975) else 1.96) * sd / math.sqrt(n)
    return mean, mean - half, mean + half
