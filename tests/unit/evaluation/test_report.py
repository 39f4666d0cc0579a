"""Run reports (results.json + results.md) and side-by-side comparison tables."""

from __future__ import annotations

import json

import pytest

from mmpo.evaluation.report import (
    compare_runs,
    compare_table,
    format_value,
    load_run,
    markdown_table,
    run_table,
    scalar_metrics,
    scoring_rules,
    write_run,
)

RUN = {
    "run": "base",
    "model": "ckpt/base",
    "settings": {"batch_size": 8},
    "benchmarks": {
        "pope": {"mean/f1": 0.8, "random/n": 6, "definitions": {"f1": "..."}, "flag": True, "parsing": "reference"},
        "amber": {"amber_score": 64.58333, "generative/chair": 0.375, "predictions": [1, 2]},
    },
}


def test_scalar_metrics_keep_numbers_only():
    """ints and floats stay (in order); bools, strings, lists and bookkeeping dicts do not."""
    assert scalar_metrics(RUN) == {("pope", "mean/f1"): 0.8, ("pope", "random/n"): 6,
                                   ("amber", "amber_score"): 64.58333, ("amber", "generative/chair"): 0.375}


def test_nested_metrics_are_flattened_and_rules_reported():
    run = {"benchmarks": {"pope": {"random": {"f1": 0.5, "TP": 3}, "counts": {"n": 9}, "parsing": "lenient"},
                          "amber": {"CHAIR": 7.1, "Existence": {"F1": 80.0}, "unrounded": {"CHAIR": 7.1234}}}}
    assert scalar_metrics(run) == {("pope", "random/f1"): 0.5, ("pope", "random/TP"): 3,
                                   ("amber", "CHAIR"): 7.1, ("amber", "Existence/F1"): 80.0}
    assert scoring_rules(run) == {"pope": "lenient", "amber": "-"}
    assert run_table(run).splitlines()[:3] == ["| benchmark | scoring | metric | value |",
                                                 "| --- | --- | --- | --- |",
                                                 "| pope | lenient | random/f1 | 0.5000 |"]


@pytest.mark.parametrize(("value", "text"), [(6, "6"), (0.375, "0.3750"), (None, "-"), (float("nan"), "nan")])
def test_format_value(value, text):
    assert format_value(value) == text


def test_markdown_table_escapes_pipes():
    assert markdown_table(("a", "b"), [("x|y", "1")]) == "| a | b |\n| --- | --- |\n| x\\|y | 1 |\n"


def test_write_and_load_run(tmp_path):
    json_path, md_path = write_run(RUN, tmp_path / "run")
    assert load_run(tmp_path / "run") == load_run(json_path) == json.loads(json.dumps(RUN))
    assert md_path.read_text() == (
        "# base\n\nmodel: `ckpt/base`\n\n"
        "| benchmark | scoring | metric | value |\n"
        "| --- | --- | --- | --- |\n"
        "| pope | reference | mean/f1 | 0.8000 |\n"
        "| pope | reference | random/n | 6 |\n"
        "| amber | - | amber_score | 64.5833 |\n"
        "| amber | - | generative/chair | 0.3750 |\n"
    )


def test_compare_side_by_side(tmp_path):
    """Rows are the union in first-seen order; a metric a run lacks shows '-'."""
    other = {"run": "dpo", "benchmarks": {"pope": {"mean/f1": 0.9, "parsing": "lenient"}, "chair": {"chair_i": 0.1}}}
    expected = (
        "| benchmark | metric | base | dpo |\n"
        "| --- | --- | --- | --- |\n"
        "| pope | scoring | reference | lenient |\n"
        "| pope | mean/f1 | 0.8000 | 0.9000 |\n"
        "| pope | random/n | 6 | - |\n"
        "| amber | scoring | - | - |\n"
        "| amber | amber_score | 64.5833 | - |\n"
        "| amber | generative/chair | 0.3750 | - |\n"
        "| chair | scoring | - | - |\n"
        "| chair | chair_i | - | 0.1000 |\n"
    )
    assert compare_table([RUN, other]) == expected
    write_run(RUN, tmp_path / "a")
    write_run(other, tmp_path / "b")
    assert compare_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "out" / "comparison.md") == expected
    assert (tmp_path / "out" / "comparison.md").read_text() == expected
    assert compare_table([{"benchmarks": {}}, {"benchmarks": {}}]).startswith("| benchmark | metric | run 1 | run 2 |")
    with pytest.raises(ValueError):
        compare_table([RUN], names=["a", "b"])
