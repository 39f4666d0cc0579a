"""`mmpo demo` end to end at a tiny scale: the run directory and the metrics.json schema."""

import json

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
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_unknown_subcommand_is_an_error(capsys):
    assert main(["nope"]) == 2
    assert "unknown subcommand" in capsys.readouterr().err
