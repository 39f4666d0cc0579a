"""``mmpo report`` on run files it did not write (issue #34): a scene id with ``../`` embedded a PNG
from outside the run directory, and 3 of 7 malformed ``eval/answers.json`` shapes gave a TypeError
traceback.

Now every file the report reads comes from inside its run directory (symlinks resolved); an image
named from outside is left out with a warning naming the run, the answer and the path; and every
malformed shape of every file it reads is one ValueError naming the file, or is left out with a
warning — never another exception. The last test mutates valid run files at random places into
arbitrary JSON (hypothesis) and checks exactly that.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mmpo.cli.main import main as mmpo_main
from mmpo.report import load_run, render_report, write_report
from mmpo.report.html import image_uri
from mmpo.report.runs import plottable

TEXT = "a red circle and a star."


def span(word: str, verdict: str, **extra) -> dict:
    start = TEXT.index(word)
    return {"start": start, "end": start + len(word), "text": word, "category": word, "verdict": verdict, **extra}


ROW = {"scene_id": "s1", "response": TEXT, "missed": ["square"],
       "spans": [span("circle", "wrong_attribute", attribute={"start": 2, "end": 5, "text": "red", "said": "red",
                                                                "true": ["blue"]}),
                 span("star", "hallucinated"),
                 {"start": None, "end": None, "text": "x", "category": "x", "verdict": "hallucinated"}]}
ROUND = {"round": 1, "items": 4, "pairs": {"written": 3, "chosen_with_wrong": 0.5},
         "train": {"steps": 2, "reward_margin": 0.1}, "metrics": {"chair_i": 0.4, "pope_f1": 0.6},
         "seconds": {"sample": 1.0}}
LOG = [{"step": 1, "loss": 0.7, "rewards/margins": 0.1}, {"step": 2, "loss": 0.6, "rewards/margins": 0.2}]
#: Valid run directories, one per kind the report reads: {relative path: JSON value}.
RUNS = {
    "demo": {
        "metrics.json": {"method": "dpo", "data": "truth", "before": {"chair_i": 0.5, "pope": {"f1": 0.7}},
                         "after": {"chair_i": 0.4}, "control": {"chair_i": 0.45},
                         "options": {"seed": 0, "steps": 3}, "self_pairs": {"chosen_with_wrong": 0.2},
                         "rounds": {"offline": {"pairs": 3, "steps": 2},
                                    "rounds": [{**ROUND, "round": 0}, ROUND]}},
        "train_log.json": LOG,
        "eval/answers.json": {"prompt": "Describe.", "truth": {"s1": "a blue circle."},
                              "models": {"before": [ROW], "after": [{**ROW, "spans": ROW["spans"][1:]}]}},
    },
    "evaluate": {
        "results.json": {"run": "eval", "model": "m", "settings": {"a": 1},
                         "benchmarks": {"synthetic": {"chair_i": 0.3}, "amber": {"chair": 0.2}}},
        "predictions/synthetic.json": {"per_scene": [{**ROW, "image": "images/s1.png", "question": "Describe.",
                                                      "description": "a blue circle."}]},
        "predictions/amber.json": {"per_response": [{"id": 1, "type": "generative", "response": TEXT,
                                                     "spans": [span("star", "correct")]}]},
    },
    "rounds": {
        "round-0/round.json": {**ROUND, "round": 0},
        "round-1/round.json": ROUND,
        "round-1/log_history.json": LOG,
        "rounds-settings.json": {"rounds": 1},
    },
    "train": {"checkpoint-2/trainer_state.json": {"log_history": LOG}},
}


def write_run(root: Path, files: dict, name: str = "run") -> Path:
    run = root / name
    for relative, value in files.items():
        (run / relative).parent.mkdir(parents=True, exist_ok=True)
        (run / relative).write_text(json.dumps(value))
    return run


def png(path: Path, colour: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


# ----------------------------------------------------------------------------- outside the run
def test_a_scene_id_with_dotdot_does_not_embed_a_png_from_outside_the_run(tmp_path, caplog):
    """The tester's case: scene id ``../../secret`` made the page inline ``tmp/secret.png``. Also an
    absolute id, a symlink inside eval/images pointing out, and an evaluation run's image paths."""
    secret = png(tmp_path / "secret.png", (1, 2, 3))
    answers = copy.deepcopy(RUNS["demo"]["eval/answers.json"])
    answers["models"]["before"] = [{**ROW, "scene_id": sid} for sid in
                                   ("../../../secret", str(tmp_path / "secret"), "linked", "s1")]
    answers["models"]["after"] = []
    run = write_run(tmp_path, {**RUNS["demo"], "eval/answers.json": answers})
    png(run / "eval" / "images" / "s1.png", (9, 9, 9))
    os.symlink(secret, run / "eval" / "images" / "linked.png")
    with caplog.at_level(logging.WARNING):
        written = write_report([run], tmp_path / "out" / "report.html")
    page = written.path.read_text()
    assert image_uri(secret) not in page and image_uri(run / "eval" / "images" / "s1.png") in page
    assert len(written.warnings) == 3
    for answer in ("../../../secret", str(tmp_path / "secret"), "linked"):
        message = next(w for w in written.warnings if f"answer {answer!r}" in w)
        assert f"run {run}" in message and f"{answer}.png" in message
        assert message in caplog.text
    assert "<section id='warnings'>" in page and "3 warning(s)" in written.summary()

    evaluation = write_run(tmp_path, RUNS["evaluate"], "eval")
    rows = [{**RUNS["evaluate"]["predictions/synthetic.json"]["per_scene"][0], "scene_id": f"s{i}", "image": image}
            for i, image in enumerate(("../secret.png", str(secret), "images/s1.png"))]
    (evaluation / "predictions" / "synthetic.json").write_text(json.dumps({"per_scene": rows}))
    png(evaluation / "images" / "s1.png", (8, 8, 8))
    written = write_report([evaluation], tmp_path / "eval.html")
    assert image_uri(secret) not in written.path.read_text() and len(written.warnings) == 2
    # a folder the user names on the command line is trusted; nothing in the run's files can name one
    assert mmpo_main(["report", str(evaluation), "--output", str(tmp_path / "e2.html"),
                      "--image-dir", str(tmp_path)]) == 0
    assert image_uri(secret) in (tmp_path / "e2.html").read_text()


def test_a_run_file_that_resolves_outside_the_run_is_not_read(tmp_path):
    outside = write_run(tmp_path, RUNS["demo"], "elsewhere")
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(outside / "metrics.json", run / "metrics.json")
    with pytest.raises(ValueError, match=r"metrics.json: resolves outside the run directory"):
        load_run(run)
    train = tmp_path / "train"
    train.mkdir()
    os.symlink(write_run(tmp_path, RUNS["train"], "other") / "checkpoint-2", train / "checkpoint-2")
    with pytest.raises(ValueError, match=r"trainer_state.json: resolves outside the run directory"):
        load_run(train)


# ------------------------------------------------------------------------------ malformed shapes
ANSWER_SHAPES = {
    "a list instead of an object": [ROW],
    "a number": 3,
    "null": None,
    "a string": "answers",
    "models is a list": {"models": [ROW]},
    "models of objects": {"models": {"before": {"s1": ROW}}},
    "a row is a list": {"models": {"before": [[ROW]]}},
    "a row is a string": {"models": {"before": ["s1"]}},
    "no scene id": {"models": {"before": [{"response": TEXT}]}},
    "scene id an object": {"models": {"before": [{**ROW, "scene_id": {"id": 1}}]}},
    "scene id null": {"models": {"before": [{**ROW, "scene_id": None}]}},
    "answer text a number": {"models": {"before": [{**ROW, "response": 3}]}},
    "answer text a list": {"models": {"before": [{**ROW, "response": [TEXT]}]}},
    "answer text NaN": {"models": {"before": [{**ROW, "response": math.nan}]}},
    "spans an object": {"models": {"before": [{**ROW, "spans": {"start": 0}}]}},
    "a span a string": {"models": {"before": [{**ROW, "spans": ["circle"]}]}},
    "span start a string": {"models": {"before": [{**ROW, "spans": [{**ROW["spans"][1], "start": "0"}]}]}},
    "span start NaN": {"models": {"before": [{**ROW, "spans": [{**ROW["spans"][1], "start": math.nan}]}]}},
    "span end past the text": {"models": {"before": [{**ROW, "spans": [{**ROW["spans"][1], "end": 999}]}]}},
    "verdict a list": {"models": {"before": [{**ROW, "spans": [{**ROW["spans"][1], "verdict": ["x"]}]}]}},
    "attribute a list": {"models": {"before": [{**ROW, "spans": [{**ROW["spans"][1], "attribute": [1]}]}]}},
    "attribute true a number": {"models": {"before": [{**ROW, "spans": [
        {**ROW["spans"][1], "attribute": {"true": 3}}]}]}},
    "missed a string": {"models": {"before": [{**ROW, "missed": "square"}]}},
    "missed of numbers": {"models": {"before": [{**ROW, "missed": [1, 2]}]}},
    "truth a list": {"truth": ["a"], "models": {"before": [ROW]}},
    "truth of numbers": {"truth": {"s1": 3}, "models": {"before": [ROW]}},
    "prompt an object": {"prompt": {"a": 1}, "models": {"before": [ROW]}},
}


@pytest.mark.parametrize("shape", ANSWER_SHAPES)
def test_each_malformed_answers_shape_is_one_value_error_naming_the_file(tmp_path, shape):
    run = write_run(tmp_path, {**RUNS["demo"], "eval/answers.json": ANSWER_SHAPES[shape]})
    with pytest.raises(ValueError, match=r"eval/answers.json.*expected|eval/answers.json.*lacks|"
                                         r"eval/answers.json.*span") as caught:
        write_report([run], tmp_path / "report.html")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("file", "value", "message"), [
    ("metrics.json", [1, 2], "expected an object"),
    ("metrics.json", {**RUNS["demo"]["metrics.json"], "before": [0.5]}, "'before': expected an object"),
    ("metrics.json", {**RUNS["demo"]["metrics.json"], "method": 7}, "expected 'method' to be a string"),
    ("metrics.json", {**RUNS["demo"]["metrics.json"], "options": [0]}, "'options' to be an object"),
    ("metrics.json", {**RUNS["demo"]["metrics.json"], "options": {"seed": [0]}}, "seed"),
    ("metrics.json", {**RUNS["demo"]["metrics.json"], "self_pairs": [1]}, "'self_pairs' to be an object"),
    ("metrics.json", {**RUNS["demo"]["metrics.json"], "rounds": {"rounds": [{"round": 1, "metrics": 3}]}},
     "round 1 'metrics': expected an object"),
    ("train_log.json", {"step": 1}, "not a list of log entries"),
    ("metrics.json", json.loads("[" * 80 + "]" * 80), "nested more than"),
])
def test_malformed_metrics_and_logs_are_one_value_error_naming_the_file(tmp_path, file, value, message):
    run = write_run(tmp_path, {**RUNS["demo"], file: value})
    with pytest.raises(ValueError, match=message) as caught:
        write_report([run], tmp_path / "report.html")
    assert str(run / file) in str(caught.value)


def test_odd_numbers_are_shown_or_left_out_never_a_traceback(tmp_path):
    """NaN, infinite and huge metric values and log entries without a step: drawn as they are
    (nan, inf) or left out of the curves with a warning naming the file."""
    metrics = {**RUNS["demo"]["metrics.json"], "before": {"chair_i": math.nan, "pope_unparsed": math.inf},
               "after": {"chair_i": 10**400, "pope_unparsed": -math.inf, "n": 1e308}}
    log = [*LOG, {"loss": 1.0}, "step", {"step": math.nan, "loss": 1}, {"step": 3, "loss": 1e308, "x": "y"},
           {"step": 10**30, "loss": math.inf}]
    run = write_run(tmp_path, {**RUNS["demo"], "metrics.json": metrics, "train_log.json": log})
    written = write_report([run], tmp_path / "report.html")
    page = written.path.read_text()
    assert ">nan<" in page and ">inf<" in page and "id='curves-rewards'" in page
    assert [w for w in written.warnings if "train_log.json: 3 of 7 log entries" in w]


# ------------------------------------------------------------------- any shape, anywhere (hypothesis)
#: Where the hypothesis test puts a PNG that must never reach a page, and names that point at it
#: from a scene id (``eval/images/ID.png``) or an evaluation row's image path (relative to the run).
SECRET_ROOT = Path(tempfile.gettempdir()) / f"mmpo-report-faults-{os.getpid()}"
SECRET_NAMES = ("../../../../../secret", "../../../secret.png", str(SECRET_ROOT / "secret"),
                str(SECRET_ROOT / "secret.png"), "s1", "images/s1.png")
json_scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**400), max_value=10**400)
                | st.floats() | st.text(max_size=8) | st.sampled_from(SECRET_NAMES))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.sampled_from(["step", "round", "start", "end", "scene_id", "response",
                                                              "spans", "metrics", "models", "before", "after", "x"]),
                                             inner, max_size=3), max_leaves=8)


@pytest.fixture(scope="module", autouse=True)
def _remove_secret_root():
    yield
    shutil.rmtree(SECRET_ROOT, ignore_errors=True)


def paths_of(value, prefix=()):
    """Every place inside a JSON value: the value itself, then each item of each list and object."""
    yield prefix
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        yield from paths_of(item, (*prefix, key))


def mutated(value, path, new, delete: bool):
    if not path:
        return new
    value = copy.deepcopy(value)
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return value


def checked_curves(logs, keys, **kwargs):
    """A stand-in for matplotlib (slow) that checks what the report gives it: for every drawn key,
    points whose step and value are numbers a plot can take (finite, or NaN / inf as a gap)."""
    for log in logs.values():
        for entry in log:
            for key in ("step", *keys):
                if key in entry:
                    assert plottable(entry[key]), (key, entry[key])
            assert math.isfinite(entry["step"])
    return "<svg></svg>"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_any_json_anywhere_in_any_run_file_is_read_or_one_value_error(data):
    """Valid run files of every kind, one place in one of them replaced by any JSON value (or
    deleted): the report reads them or raises one ValueError naming the file, never draws a value
    a plot cannot take, and never inlines the PNG outside the run that the strategy's names aim at."""
    kind = data.draw(st.sampled_from(sorted(RUNS)), label="run kind")
    files = dict(RUNS[kind])
    name = data.draw(st.sampled_from(sorted(files)), label="file")
    path = data.draw(st.sampled_from(list(paths_of(files[name]))), label="where")
    delete = bool(path) and data.draw(st.booleans(), label="delete")
    files[name] = mutated(files[name], path, None if delete else data.draw(json_values, label="value"), delete)
    SECRET_ROOT.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(dir=SECRET_ROOT))
    try:
        secret = png(SECRET_ROOT / "secret.png", (1, 2, 3))
        run = write_run(root / "a", files)
        png(run / "eval" / "images" / "s1.png", (9, 9, 9))
        png(run / "images" / "s1.png", (9, 9, 9))
        try:
            with mock.patch("mmpo.plots.curves_svg", checked_curves):
                page, _ = render_report([load_run(run)], max_items=5)
        except ValueError as error:
            assert str(run) in str(error), error        # it names the file
        else:
            assert image_uri(secret) not in page
    finally:
        shutil.rmtree(root)


@pytest.mark.parametrize("content", [
    "[1, 2]", '"results"', '{"benchmarks": [1]}', '{"benchmarks": {"chair": 3}}', '{"run": 5, "benchmarks": {}}',
    "{not json", "[" * 50_000, '{"benchmarks": {"chair": {"chair_i": 1' + "0" * 5000 + "}}}",
], ids=["list", "string", "benchmarks list", "benchmark number", "run number", "not json", "deep", "long number"])
def test_evaluate_compare_reads_a_malformed_results_file_as_one_value_error(tmp_path, content):
    """``mmpo evaluate --compare`` reads other runs' results.json: a malformed one is one ValueError naming it."""
    from mmpo.evaluation.report import compare_runs

    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    (good / "results.json").write_text('{"run": "good", "benchmarks": {"chair": {"chair_i": 0.1}}}')
    (bad / "results.json").write_text(content)
    with pytest.raises(ValueError, match=rf"results file {bad / 'results.json'}: "):
        compare_runs([good, bad])
    assert "chair_i" in compare_runs([good])
