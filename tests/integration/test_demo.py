"""`mmpo demo` end to end at a tiny scale: the run directory and the metrics.json schema."""

import json

import pytest

from mmpo.cli.main import main


def test_demo_writes_metrics_log_and_plot(tmp_path):
    out = tmp_path / "run"
    code = main(["demo", "--method", "dpo", "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"),
                 "--base-steps", "20", "--base-scenes", "64", "--n-pairs", "24", "--n-eval-scenes", "8",
                 "--steps", "4", "--batch-size", "4", "--no-progress"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "dpo"
    for phase in ("before", "after"):
        for key in ("chair_i", "chair_s", "coverage", "pope_f1"):
            assert isinstance(metrics[phase][key], float) and 0.0 <= metrics[phase][key] <= 1.0
    log = json.loads((out / "train_log.json").read_text())
    assert any("rewards/margins" in e for e in log)
    assert (out / "rewards.png").stat().st_size > 1000
    assert (out / "data" / "train.jsonl").read_text().count("\n") == 24
    # The base model is cached: a second demo reuses it.
    assert len(list((tmp_path / "cache").glob("toyworld-base-*"))) == 1


@pytest.mark.parametrize("method", ["aspo", "dama", "adavip"])
def test_every_method_runs_end_to_end(tmp_path, method):
    """ASPO on SeVa pairs with CLIP sentence scores, DAMA with alpha_D from CLIP, AdaViP with
    vision-rejected images: each path at a tiny scale, sharing one cache."""
    out = tmp_path / method
    code = main(["demo", "--method", method, "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"),
                 "--base-steps", "20", "--base-scenes", "64", "--clip-steps", "3", "--n-pairs", "16",
                 "--n-eval-scenes", "6", "--steps", "3", "--batch-size", "4", "--no-progress"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["n_records"] > 0
    assert {"chair_i", "chair_s", "coverage", "pope_f1"} <= set(metrics["after"])
    log = json.loads((out / "train_log.json").read_text())
    namespace = {"aspo": "aspo/weight_mean", "dama": "dama/alpha_model", "adavip": "adavip/weight_vision"}[method]
    assert any(namespace in e for e in log)
    if method == "adavip":
        assert (out / "contact_sheet.png").exists() and (out / "adavip.png").exists()


def test_unknown_subcommand_is_an_error(capsys):
    assert main(["nope"]) == 2
    assert "unknown subcommand" in capsys.readouterr().err
