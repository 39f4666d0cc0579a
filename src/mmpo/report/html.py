"""One self-contained HTML page for one or more runs: metrics, training curves, method plots and a
gallery of answers with every object mention coloured by the scorer's verdict.

Self-contained means the page fetches nothing: images are inlined as ``data:`` URIs, curves as
inline SVG (matplotlib), the style sheet and the few lines of script (the gallery's filter) are in
the page. It opens from disk, offline, in any browser, and can be mailed as one file.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mmpo.report.runs import (
    Answer,
    GalleryItem,
    Run,
    change,
    contained,
    error_count,
    load_run,
    mean_interval,
    plottable,
)

logger = logging.getLogger(__name__)

#: Training-curve panels, one figure per group: ``{group: (title, logged keys)}``; a key no run
#: logged is left out, a group with none is not drawn.
CURVE_GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "rewards": ("Training", ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected")),
    "aspo": ("ASPO: sentence weights", ("aspo/weight_mean", "aspo/weight_std", "aspo/scale",
                                        "aspo/sentences_per_response")),
    "dama": ("DAMA: adaptive beta", ("dama/alpha_model", "dama/r_bar", "dama/gap_easy", "dama/gap_hard",
                                     "dama/beta_mean")),
    "adavip": ("AdaViP: loss weights", ("adavip/weight_vision", "adavip/weight_language", "rewards/vision_margins")),
}
#: The verdicts a span can carry (:mod:`mmpo.evaluation.spans`) and how the page names them.
VERDICT_NAMES = {"correct": "correct", "hallucinated": "hallucinated", "wrong_attribute": "wrong attribute"}
#: Metric-name words saying lower is better / higher is better (for the colour of a change).
LOWER_WORDS = ("chair", "hallucination", "hal", "cog", "attribute_error", "unparsed")
HIGHER_WORDS = ("coverage", "f1", "accuracy", "recall", "precision", "correct", "cover", "score")
#: Metrics shown first, in this order (the rest follow as the run lists them).
FIRST_METRICS = ("chair_i", "chair_s", "coverage", "mentions_per_response", "attribute_error", "pope_f1",
                 "pope_accuracy", "pope_yes_ratio")
#: Longest side of an inlined image; smaller images are inlined as they are.
THUMBNAIL = 224


@dataclass(frozen=True)
class ReportWritten:
    """What :func:`write_report` wrote: the page, its size and how long it took."""

    path: Path
    bytes: int
    seconds: float
    n_runs: int
    n_items: int
    #: what was left out (images outside a run directory, entries of the wrong shape), also logged
    warnings: tuple[str, ...] = ()

    def summary(self) -> str:
        warned = f", {len(self.warnings)} warning(s): see the page's Warnings" if self.warnings else ""
        return (f"report: {self.path} ({self.bytes / 1e6:.2f} MB, {self.n_runs} run(s), {self.n_items} gallery "
                f"item(s), written in {self.seconds:.1f} s{warned})")


def write_report(run_dirs: Sequence[str | Path], output: str | Path, *, max_items: int = 200,
                 title: str | None = None, image_dirs: Sequence[str | Path] = ()) -> ReportWritten:
    """Read ``run_dirs`` (:func:`~mmpo.report.runs.load_run`) and write their page to ``output``.

    Args:
        run_dirs: demo and/or evaluation run directories; the first one's base model (or, for
            evaluation runs, the first run) is the reference every other answer is compared with.
        output: the HTML file to write (its folder is created).
        max_items: the most gallery items per benchmark (the first ones, in id order).
        title: the page title (default: the run names).
        image_dirs: folders besides the run directories that images may be inlined from (an
            evaluation run names the benchmark's images where they are); every other image a run's
            files name outside its directory is left out, with a warning.

    Raises:
        ValueError: a run file that is not what the run writes (naming it), a bad argument.
        FileNotFoundError: a run directory that is missing or holds no run.
    """
    from mmpo.io import atomic_write_text

    if not run_dirs:
        raise ValueError("no run directory given")
    if max_items < 0:
        raise ValueError(f"max_items must be >= 0, got {max_items}")
    started = time.perf_counter()
    runs = [load_run(d, image_dirs) for d in run_dirs]
    page, n_items = render_report(runs, max_items=max_items, title=title)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, page)
    return ReportWritten(output, output.stat().st_size, time.perf_counter() - started, len(runs), n_items,
                         tuple(w for run in runs for w in run.warnings))


def render_report(runs: Sequence[Run], *, max_items: int = 200, title: str | None = None) -> tuple[str, int]:
    """The page for ``runs`` and the number of gallery items on it."""
    import mmpo

    title = title or "mmpo report: " + ", ".join(run.name for run in runs)
    gallery, n_items = gallery_section(runs, max_items)
    body = "\n".join([
        f"<header><h1>{_e(title)}</h1><p class='meta'>mmpo {_e(mmpo.__version__)} · written "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · runs: "
        + ", ".join(f"<code>{_e(str(run.path))}</code>" for run in runs) + "</p></header>",
        metrics_section(runs),
        curves_section(runs),
        method_section(runs),
        rounds_section(runs),
        gallery,
        settings_section(runs),
        warnings_section(runs),
    ])
    page = (f"<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>\n<title>{_e(title)}</title>\n"
            f"<script>{ERROR_TRAP}</script>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n"
            f"<script>{SCRIPT}</script>\n</body>\n</html>\n")
    return page, n_items


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


# ---------------------------------------------------------------------------------------- metrics
@dataclass
class _Column:
    group: str
    label: str
    cells: dict[tuple[str, str], tuple[float, float, float, int]]   # mean, lo, hi, n seeds
    base: _Column | None = None


def metric_columns(runs: Sequence[Run]) -> list[_Column]:
    """The metric table's columns: per run (or per group of runs that differ only in their seed:
    the mean over seeds and its 95% t-interval), its models' metrics; a base-model column equal to
    one already shown is not repeated."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    columns: list[_Column] = []
    seen: dict[str, _Column] = {}
    for members in groups.values():
        seeds = [r.seed for r in members]
        seeded = len(members) > 1 and len(set(seeds)) == len(seeds)
        if not seeded and len(members) > 1:   # same settings and seed: show them apart
            groups_of = [[r] for r in members]
        else:
            groups_of = [members]
        for part in groups_of:
            name = part[0].name if len(part) == 1 else f"{part[0].info.get('method', part[0].name)} ({len(part)} seeds)"
            base = None
            for label in part[0].columns:
                cells = {}
                for key in dict.fromkeys(k for r in part for k in r.columns.get(label, {})):
                    values = [r.columns[label][key] for r in part if key in r.columns.get(label, {})]
                    cells[key] = (*mean_interval(values), len(values))
                fingerprint = repr((label, sorted(cells.items())))
                if label == part[0].base_label and fingerprint in seen:
                    base = seen[fingerprint]
                    continue
                column = _Column(name, label, cells, base if label != part[0].base_label else None)
                if label == part[0].base_label:
                    seen[fingerprint] = base = column
                columns.append(column)
    return columns


def _direction(metric: str) -> int:
    words = re.split(r"[/_ ]", metric.lower())
    name = metric.lower()
    if any(w in words or w == name for w in LOWER_WORDS) or "attribute_error" in name:
        return -1
    if any(w in words for w in HIGHER_WORDS):
        return 1
    return 0


def _is_count(metric: str) -> bool:
    """Bookkeeping numbers (``n_scenes``, ``pope_n``, ...): tabled, but no change is shown."""
    name = metric.rsplit("/", 1)[-1]
    return name.startswith(("n_", "sentence_num", "coco_")) or name.endswith(("_n", "_num", "_count"))


def _is_tally(metric: str) -> bool:
    """Numbers of answers (``pope_unparsed``, MMHal's ``n_warnings``, ...): whole numbers whose
    change is shown, as a whole number."""
    name = metric.rsplit("/", 1)[-1]
    return name.endswith(("unparsed", "unclear", "n_warnings"))


def _metric_order(keys: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    benches = list(dict.fromkeys(b for b, _ in keys))

    def rank(item: tuple[int, tuple[str, str]]):
        index, (bench, metric) = item
        first = FIRST_METRICS.index(metric) if metric in FIRST_METRICS else len(FIRST_METRICS)
        return benches.index(bench), first, index

    return [key for _, key in sorted(enumerate(keys), key=rank)]


def _number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 100 or value == int(value) and abs(value) >= 10 else f"{value:.3f}"


def metrics_section(runs: Sequence[Run]) -> str:
    columns = metric_columns(runs)
    keys = _metric_order(list(dict.fromkeys(k for c in columns for k in c.cells)))
    if not keys:
        return "<section id='metrics'><h2>Metrics</h2><p>No metrics recorded.</p></section>"
    head = "<tr><th>benchmark</th><th>metric</th>" + "".join(
        f"<th><span class='group'>{_e(c.group)}</span><br>{_e(c.label)}</th>" for c in columns) + "</tr>"
    rows = []
    for bench, metric in keys:
        cells = []
        for column in columns:
            if (bench, metric) not in column.cells:
                cells.append("<td class='na'>–</td>")
                continue
            mean, lo, hi, n = column.cells[(bench, metric)]
            tally = _is_tally(metric) and math.isfinite(mean) and mean == int(mean)
            text = f"{mean:.0f}" if tally else _number(mean)
            if n > 1:
                text += f"<span class='ci'>[{_number(lo)}, {_number(hi)}]</span>"
            if column.base is not None and (bench, metric) in column.base.cells:
                delta = mean - column.base.cells[(bench, metric)][0]
                sign = _direction(metric) * (1 if delta > 0 else -1 if delta < 0 else 0)
                css = {1: "up", -1: "down"}.get(sign, "flat")
                if not _is_count(metric):
                    text += f"<span class='delta {css}'>{delta:+.0f}</span>" if tally and math.isfinite(delta) \
                        and delta == int(delta) \
                        else f"<span class='delta {css}'>{delta:+.3f}</span>"
            cells.append(f"<td>{text}</td>")
        rows.append(f"<tr><td>{_e(bench)}</td><td>{_e(metric)}</td>{''.join(cells)}</tr>")
    note = ("Each trained column shows its change from its base model (green: better, red: worse, by the "
            "metric's direction). Runs that differ only in their seed are one column: the mean over seeds "
            "and its 95% t-interval in brackets.")
    return (f"<section id='metrics'><h2>Metrics</h2><p class='note'>{note}</p>"
            f"<div class='scroll'><table class='metrics'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
            f"</div></section>")


# ----------------------------------------------------------------------------------------- curves
def curves_section(runs: Sequence[Run]) -> str:
    logs = {run.name: run.log for run in runs if run.log}
    if not logs:
        return ""
    figures = []
    for index, (group, (title, keys)) in enumerate(CURVE_GROUPS.items()):
        svg = _curves(runs, logs, keys, salt=f"{group}{index}")
        if svg is not None:
            figures.append(f"<figure class='curves' id='curves-{group}'><figcaption>{_e(title)}</figcaption>"
                           f"{svg}</figure>")
    return f"<section id='curves'><h2>Training curves</h2>{''.join(figures)}</section>" if figures else ""


def _curves(runs: Sequence[Run], logs: dict[str, list[dict]], keys, **kwargs) -> str | None:
    """:func:`~mmpo.plots.curves_svg`, or None with a warning on every run when the logged numbers
    cannot be drawn."""
    from mmpo.plots import curves_svg

    try:
        return curves_svg(logs, keys, **kwargs)
    except (ValueError, OverflowError, TypeError) as error:
        for run in runs:
            _warn(run, f"run {run.path}: its curves of {', '.join(keys)} cannot be drawn ({error}); left out")
        return None


def _warn(run: Run, message: str) -> None:
    run.warnings.append(message)
    logger.warning("%s", message)


def _picture(run: Run, path: Path | None, answer: str, max_side: int = 0) -> str | None:
    """``path`` as a ``data:`` URI if it is an image inside ``run``'s directory or its image folders
    (symlinks resolved); None if there is no such file, and None with a warning naming the run, the
    answer and the path if it lies outside. Raises ``OSError`` if it cannot be decoded."""
    from PIL import Image

    if path is None or not path.exists():
        return None
    if contained(path, [run.path, *run.image_dirs]) is None:
        _warn(run, f"run {run.path}: answer {answer!r}: its image {path} is outside the run directory; not shown")
        return None
    try:
        return image_uri(path, **({"max_side": max_side} if max_side else {}))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise OSError(str(error)) from None


def method_section(runs: Sequence[Run]) -> str:
    parts = []
    for run in runs:
        for title, path in run.images:
            try:
                uri = _picture(run, path, title, max_side=1600)
            except OSError as error:
                _warn(run, f"run {run.path}: {path} is not a readable image ({error}); left out")
                continue
            if uri is not None:
                parts.append(f"<figure class='plot'><figcaption>{_e(run.name)}: {_e(title)}</figcaption>"
                             f"<img alt='{_e(title)}' src='{uri}'></figure>")
        if isinstance(pairs := run.info.get("self_pairs"), Mapping):
            rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(_short(v))}</td></tr>" for k, v in pairs.items())
            parts.append(f"<details class='data'><summary>{_e(run.name)}: the self-generated pairs</summary>"
                         f"<table>{rows}</table></details>")
    return f"<section id='method'><h2>Method and data</h2>{''.join(parts)}</section>" if parts else ""


#: The columns of a run's rounds table: (title, where in a round.json, format).
ROUND_COLUMNS = (
    ("prompts", ("items",), "{:.0f}"), ("pairs", ("pairs", "written"), "{:.0f}"),
    ("chosen with a wrong claim", ("pairs", "chosen_with_wrong"), "{:.3f}"),
    ("wrong claims: chosen", ("pairs", "chosen_wrong_rate"), "{:.3f}"),
    ("wrong claims: rejected", ("pairs", "rejected_wrong_rate"), "{:.3f}"),
    ("steps", ("train", "steps"), "{:.0f}"), ("reward margin", ("train", "reward_margin"), "{:.3f}"),
    ("reward accuracy", ("train", "reward_accuracy"), "{:.3f}"),
    *((metric, ("metrics", metric), "{:.3f}") for metric in ("chair_i", "chair_s", "coverage", "pope_f1")),
    *((f"{stage} s", ("seconds", stage), "{:.0f}") for stage in ("sample", "judge", "train", "evaluate")),
)
#: The per-round panels: the metrics and the pair statistics, one x value per round.
ROUND_PANELS = ("chair_i", "coverage", "pope_f1", "chosen_with_wrong", "reward_margin")


def _dig(value: Any, keys: Sequence[str]) -> Any:
    for key in keys:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def rounds_section(runs: Sequence[Run]) -> str:
    """Per run with on-policy rounds: a table of every round (its pairs, how often a chosen response
    still holds a judged-wrong claim, reward margins, metrics, seconds per stage), the offline pass
    beside them when the demo trained one, and one panel per metric over the rounds."""
    parts = []
    for index, run in enumerate(runs):
        info = run.info.get("rounds")
        if not isinstance(info, Mapping) or not isinstance(info.get("rounds"), list):
            continue
        rounds = [r for r in info["rounds"] if isinstance(r, Mapping) and isinstance(r.get("round"), int)
                  and not isinstance(r.get("round"), bool)]
        offline = info.get("offline") if isinstance(info.get("offline"), Mapping) else None
        head = "<tr><th>round</th>" + "".join(f"<th>{_e(title)}</th>" for title, _, _ in ROUND_COLUMNS) + "</tr>"
        rows = [_round_row("start" if r["round"] == 0 else str(r["round"]), r) for r in rounds]
        series = {"on-policy rounds": [_round_point(r["round"], r) for r in rounds]}
        if offline is not None and run.primary_label in run.columns:
            # the offline pass as a round's result: its pairs, steps and the trained model's metrics
            pairs = run.info.get("self_pairs") if isinstance(run.info.get("self_pairs"), Mapping) else {}
            result = {"pairs": {"written": offline.get("pairs"), **{k: pairs.get(k) for k in (
                "chosen_with_wrong", "chosen_wrong_rate", "rejected_wrong_rate")}},
                "train": {"steps": offline.get("steps")},
                "metrics": {metric: value for (_, metric), value in run.columns[run.primary_label].items()}}
            rows.insert(0, _round_row("offline pass", result))
            if rounds:
                series["offline pass (all steps)"] = [_round_point(rounds[-1]["round"], result)]
        svg = _curves([run], series, ROUND_PANELS, salt=f"rounds{index}", xlabel="round")
        note = ("Each round samples the model it starts from on its own prompts, judges every claim and pairs the "
                "best against the worst response; round 0 is the starting model. <i>chosen with a wrong claim</i>: "
                "share of chosen responses with at least one claim the judge called wrong.")
        if offline is not None:
            note += (f" The offline pass trains once on the starting model's pairs of all the rounds' prompts "
                     f"({_e(offline.get('pairs'))} pairs, {_e(offline.get('steps'))} steps).")
        parts.append(f"<h3>{_e(run.name)}</h3><p class='note'>{note}</p><div class='scroll'><table class='metrics'>"
                     f"<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table></div>"
                     + (f"<figure class='curves'><figcaption>per round</figcaption>{svg}</figure>" if svg else ""))
    return f"<section id='rounds'><h2>On-policy rounds</h2>{''.join(parts)}</section>" if parts else ""


def _round_point(x: int, result: Mapping[str, Any]) -> dict[str, Any]:
    """A round's result as one point of the per-round panels (missing values left out)."""
    metrics = result.get("metrics") if isinstance(result.get("metrics"), Mapping) else {}
    point = {**metrics, "chosen_with_wrong": _dig(result, ("pairs", "chosen_with_wrong")),
             "reward_margin": _dig(result, ("train", "reward_margin"))}
    return {"step": x, **{k: v for k, v in point.items() if plottable(v)}}


def _round_row(label: str, result: Mapping[str, Any]) -> str:
    cells = []
    for _, keys, form in ROUND_COLUMNS:
        value = _dig(result, keys)
        cells.append(f"<td>{_e(form.format(float(value)))}</td>" if plottable(value) else "<td class='na'>–</td>")
    return f"<tr><td>{_e(label)}</td>{''.join(cells)}</tr>"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 200 else text[:200] + "…"


def settings_section(runs: Sequence[Run]) -> str:
    parts = []
    for run in runs:
        rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(_short(v))}</td></tr>"
                       for k, v in _flat(run.info) if k != "self_pairs" and not k.startswith("self_pairs/"))
        parts.append(f"<details><summary>{_e(run.name)} ({_e(run.kind)} run)</summary><table>{rows}</table></details>")
    return f"<section id='settings'><h2>Settings</h2>{''.join(parts)}</section>"


def warnings_section(runs: Sequence[Run]) -> str:
    """What reading the runs left out (images outside a run directory, log entries of the wrong
    shape), as logged; nothing when nothing was."""
    items = "".join(f"<li>{_e(message)}</li>" for run in runs for message in run.warnings)
    return f"<section id='warnings'><h2>Warnings</h2><ul>{items}</ul></section>" if items else ""


def _flat(info: Mapping[str, Any], prefix: str = ""):
    for key, value in info.items():
        if isinstance(value, Mapping):
            yield from _flat(value, f"{prefix}{key}/")
        elif value is not None:
            yield f"{prefix}{key}", value


# ---------------------------------------------------------------------------------------- gallery
def gallery_columns(runs: Sequence[Run], bench: str) -> tuple[list[tuple[str, Run, str]], int | None, int | None]:
    """The answer columns of one benchmark's gallery, ``(title, run, label)``, and the indices of the
    reference column (the first run's base model, else the first run) and of the compared one (the
    last column holding a run's primary model: the demo's trained model, the last evaluation run).
    A column whose answers equal an earlier same-named one's is dropped."""
    columns: list[tuple[str, Run, str]] = []
    seen: set[str] = set()
    for run in runs:
        items = run.galleries.get(bench)
        if not items:
            continue
        labels = list(dict.fromkeys(label for item in items.values() for label in item.answers))
        for label in labels:
            fingerprint = repr((label, sorted((k, i.answers[label].text) for k, i in items.items() if label in i.answers)))
            if fingerprint in seen:
                continue
            seen.add(fingerprint)
            title = label if len(runs) == 1 or run.kind == "evaluate" else f"{run.name}: {label}"
            columns.append((title, run, label))
    if not columns:
        return columns, None, None
    first_run = columns[0][1]
    reference = next((i for i, (_, r, label) in enumerate(columns) if r is first_run and label == r.base_label), 0)
    compared = next((i for i in reversed(range(len(columns)))
                     if i != reference and columns[i][2] == columns[i][1].primary_label), None)
    return columns, reference, compared


def gallery_section(runs: Sequence[Run], max_items: int) -> tuple[str, int]:
    benches = list(dict.fromkeys(bench for run in runs for bench in run.galleries))
    if not benches:
        return ("<section id='gallery'><h2>Answers</h2><p>No run here recorded its answers (a demo writes "
                "eval/answers.json, mmpo evaluate predictions/BENCHMARK.json).</p></section>"), 0
    parts, total = [], 0
    for bench in benches:
        html_part, shown = _gallery(runs, bench, max_items)
        parts.append(html_part)
        total += shown
    legend = "".join(f"<mark class='v-{v}'>{_e(name)}</mark> " for v, name in VERDICT_NAMES.items())
    return (f"<section id='gallery'><h2>Answers</h2><p class='note'>Object mentions as the benchmark's scorer "
            f"judged them: {legend}<span class='attr'>the wrong attribute word</span>. Each item's objects "
            f"present but never mentioned are listed as missed. <em>Better</em> / <em>worse</em> compare the "
            f"trained answer with the base answer: fewer judged-wrong mentions, then fewer missed objects.</p>"
            f"{''.join(parts)}</section>"), total


def _gallery(runs: Sequence[Run], bench: str, max_items: int) -> tuple[str, int]:
    columns, reference, compared = gallery_columns(runs, bench)
    keys = list(dict.fromkeys(k for _, run, _ in columns for k in run.galleries[bench]))
    shown = keys[:max_items]
    counts = {"better": 0, "worse": 0, "same": 0, "n/a": 0}
    articles = []
    for key in shown:
        owner = next(run for _, run, _ in columns if key in run.galleries[bench])
        item = owner.galleries[bench][key]
        answers = [run.galleries[bench].get(key, GalleryItem(key, None, "")).answers.get(label)
                   for _, run, label in columns]
        status = "n/a"
        if reference is not None and compared is not None and answers[reference] and answers[compared]:
            status = change(answers[reference], answers[compared])
        counts[status] += 1
        articles.append(_item_html(owner, item, columns, answers, reference, status))
    buttons = "".join(f"<button type='button' data-filter='{f}'{' class=on' if f == 'all' else ''}>{name} "
                      f"<span class='n'>{n}</span></button>" for f, name, n in (
                          ("all", "all", len(shown)), ("better", "got better", counts["better"]),
                          ("worse", "got worse", counts["worse"]), ("same", "unchanged", counts["same"])))
    compared_text = (f"{_e(columns[compared][0])} vs {_e(columns[reference][0])}" if compared is not None
                     else "one model only")
    more = f" (the first {len(shown)} of {len(keys)})" if len(shown) < len(keys) else ""
    return (f"<div class='bench' id='gallery-{_e(bench)}'><h3>{_e(bench)}: {len(shown)} items{more} · "
            f"{compared_text}</h3><div class='filters' data-gallery='items-{_e(bench)}'>{buttons}</div>"
            f"<div class='items' id='items-{_e(bench)}'>{''.join(articles)}</div></div>"), len(shown)


def _item_html(run: Run, item: GalleryItem, columns, answers: list[Answer | None], reference: int | None,
               status: str) -> str:
    picture = f"<div class='noimage'>no image{': ' + _e(item.image.name) if item.image else ''}</div>"
    try:
        if (uri := _picture(run, item.image, item.key)) is not None:
            picture = f"<img alt='{_e(item.key)}' src='{uri}'>"
    except OSError as error:         # a damaged picture costs its thumbnail, not the page
        picture = f"<div class='noimage'>unreadable image {_e(item.image.name)}: {_e(error)}</div>"
    blocks = []
    for index, ((title, _, _), answer) in enumerate(zip(columns, answers, strict=True)):
        if answer is None:
            blocks.append(f"<div class='answer missing'><h4>{_e(title)}</h4><p>no answer</p></div>")
            continue
        badge = ""
        if reference is not None and index != reference and answers[reference] is not None:
            verdict = change(answers[reference], answer)
            badge = f" <span class='badge {verdict.replace('/', '')}'>{verdict}</span>"
        blocks.append(f"<div class='answer'><h4>{_e(title)}{badge}</h4>{answer_html(answer)}</div>")
    prompt = f"<p class='prompt'>{_e(item.prompt)}</p>" if item.prompt else ""
    if item.truth:
        prompt += f"<p class='truth'><b>truth:</b> {_e(item.truth)}</p>"
    return (f"<article class='item' data-status='{status.replace('/', '')}'><div class='pic'>{picture}"
            f"<code>{_e(item.key)}</code></div><div class='answers'>{prompt}{''.join(blocks)}</div></article>")


def answer_html(answer: Answer) -> str:
    """The answer's text with each located span wrapped in ``<mark class="v-VERDICT">`` (and a wrong
    attribute's word in ``<span class="attr">``), then the tallies, the missed objects and any span
    the scorer could not locate in the text."""
    marks = []   # (start, end, open tag)
    unlocated = []
    for span in answer.spans:
        verdict = span.get("verdict", "correct")
        if span.get("start") is None:
            unlocated.append(span)
            continue
        tip = f"{span.get('category')}: {VERDICT_NAMES.get(str(verdict), verdict)}"
        attribute = span.get("attribute") or {}
        if attribute:
            tip += f" (said {attribute.get('said')}; it is {', '.join(map(str, attribute.get('true') or [])) or '?'})"
            if attribute.get("start") is not None:
                marks.append((attribute["start"], attribute["end"], f"<span class='attr' title='{_e(tip)}'>", "</span>"))
        marks.append((span["start"], span["end"], f"<mark class='v-{_e(verdict)}' title='{_e(tip)}'>", "</mark>"))
    text, out, at = answer.text, [], 0
    for start, end, opening, closing in sorted(marks):
        if start < at:           # overlapping marks: keep the first
            continue
        out += [_e(text[at:start]), opening, _e(text[start:end]), closing]
        at = end
    out.append(_e(text[at:]))
    tally = {v: sum(s.get("verdict") == v for s in answer.spans) for v in VERDICT_NAMES}
    tallies = " · ".join(f"{n} {VERDICT_NAMES[v]}" for v, n in tally.items() if n)
    missed = ", ".join(answer.missed) if answer.missed else "none"
    extra = ""
    if unlocated:
        extra = "<p class='unlocated'>not located in the text: " + ", ".join(
            f"<mark class='v-{_e(s.get('verdict'))}'>{_e(s.get('text'))}</mark>" for s in unlocated) + "</p>"
    if not answer.judged:
        return (f"<p class='text'>{''.join(out)}</p><p class='tally'>not marked: this run's file holds no spans "
                f"(it was written before mmpo recorded them; score the answers again to see them)</p>")
    return (f"<p class='text'>{''.join(out)}</p>{extra}<p class='tally'>{tallies or 'no object mentioned'} · "
            f"<span class='missed{'' if answer.missed else ' none'}'>missed: {_e(missed)}</span> · "
            f"errors {error_count(answer)}</p>")


# ----------------------------------------------------------------------------------------- images
_URIS: dict[tuple[str, float, int], str] = {}


def image_uri(path: Path, max_side: int = THUMBNAIL) -> str:
    """``path`` as a ``data:`` URI: PNG, shrunk to ``max_side`` pixels on its longer side (JPEG when
    the shrunk image is large and photographic). Cached per file and modification time."""
    from PIL import Image

    key = (str(path), path.stat().st_mtime, max_side)
    if key not in _URIS:
        with Image.open(path) as image:
            image = image.convert("RGB") if image.mode not in ("RGB", "L") else image.copy()
        image.thumbnail((max_side, max_side))
        buffer = io.BytesIO()
        photographic = image.width * image.height > 128 * 128 and len(image.getcolors(4096) or range(5000)) >= 4096
        if photographic:
            image.save(buffer, format="JPEG", quality=82)
            mime = "image/jpeg"
        else:
            image.save(buffer, format="PNG", optimize=True)
            mime = "image/png"
        _URIS[key] = f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"
    return _URIS[key]


# ------------------------------------------------------------------------------------ style, script
ERROR_TRAP = ("window.addEventListener('error', function (e) { var d = document.documentElement; "
              "d.setAttribute('data-errors', (d.getAttribute('data-errors') || '') + e.message + ';'); });")

SCRIPT = """
function mmpoFilter(bar, wanted) {
  var items = document.getElementById(bar.getAttribute('data-gallery'));
  bar.querySelectorAll('button').forEach(function (b) {
    b.classList.toggle('on', b.getAttribute('data-filter') === wanted);
  });
  items.querySelectorAll('.item').forEach(function (item) {
    item.hidden = wanted !== 'all' && item.getAttribute('data-status') !== wanted;
  });
}
document.querySelectorAll('.filters').forEach(function (bar) {
  bar.addEventListener('click', function (event) {
    var button = event.target.closest('button');
    if (button) { mmpoFilter(bar, button.getAttribute('data-filter')); }
  });
  var wanted = (location.hash.match(/filter=(all|better|worse|same)/) || [])[1];
  if (wanted) { mmpoFilter(bar, wanted); }
});
if (/filter=/.test(location.hash) && document.getElementById('gallery')) {
  document.getElementById('gallery').scrollIntoView();
}
document.documentElement.setAttribute('data-ready', '1');
"""

CSS = """
:root { --ok: #1a7f37; --bad: #cf222e; --attr: #9a6700; --muted: #57606a; --line: #d0d7de; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1400px;
       padding: 0 24px 48px; color: #1f2328; }
h1 { font-size: 22px; margin: 20px 0 4px; } h2 { font-size: 18px; border-bottom: 1px solid var(--line);
  padding-bottom: 4px; margin-top: 32px; } h3 { font-size: 15px; } h4 { margin: 0 0 2px; font-size: 13px; }
.meta, .note { color: var(--muted); } code { font-size: 12px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; } td, th { border: 1px solid var(--line); padding: 3px 8px; vertical-align: top; }
table.metrics td:nth-child(n+3) { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
table.metrics th .group { color: var(--muted); font-weight: normal; font-size: 12px; }
.ci, .delta { display: block; font-size: 11px; color: var(--muted); }
.delta.up { color: var(--ok); } .delta.down { color: var(--bad); }
figure { margin: 12px 0; } figcaption { font-weight: 600; margin-bottom: 4px; }
figure svg { max-width: 100%; height: auto; } figure.plot img { max-width: 100%; }
mark { border-radius: 3px; padding: 0 2px; }
mark.v-correct { background: #dafbe1; color: #116329; }
mark.v-hallucinated { background: #ffd8d3; color: #a40e26; font-weight: 600; text-decoration: line-through; }
mark.v-wrong_attribute { background: #fff1c2; color: #7d4e00; font-weight: 600; }
.attr { text-decoration: underline wavy var(--attr); }
.filters button { font: inherit; padding: 3px 10px; margin-right: 6px; border: 1px solid var(--line);
  border-radius: 14px; background: #f6f8fa; cursor: pointer; }
.filters button.on { background: #0969da; color: white; border-color: #0969da; }
.filters .n { opacity: 0.75; font-size: 12px; }
.items { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 12px; margin-top: 10px; }
.item { display: flex; gap: 12px; border: 1px solid var(--line); border-radius: 6px; padding: 10px; }
.item[hidden] { display: none; }
.pic { flex: 0 0 160px; text-align: center; } .pic img { width: 160px; image-rendering: pixelated; border-radius: 4px; }
.pic code { display: block; color: var(--muted); word-break: break-all; }
.noimage { width: 160px; height: 120px; background: #f6f8fa; color: var(--muted); display: flex;
  align-items: center; justify-content: center; }
.answers { flex: 1; min-width: 0; } .answer { margin-bottom: 8px; } .answer p { margin: 0; }
.prompt { color: var(--muted); font-style: italic; margin: 0 0 6px; }
.truth { font-size: 12px; color: var(--muted); margin: 0 0 6px; }
.tally { font-size: 12px; color: var(--muted); } .missed { color: var(--bad); } .missed.none { color: var(--muted); }
.badge { font-size: 11px; font-weight: normal; padding: 0 6px; border-radius: 8px; background: #eaeef2; }
.badge.better { background: #dafbe1; color: #116329; } .badge.worse { background: #ffd8d3; color: #a40e26; }
details { margin: 6px 0; } details table { margin-top: 4px; font-size: 12px; }
"""
