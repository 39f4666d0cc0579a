"""benchmarks/efficacy.py: its statistics worked by hand, and its --quick grid end to end (so the
script cannot rot)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "efficacy.py"


@pytest.fixture(scope="module")
def efficacy():
    spec = importlib.util.spec_from_file_location("efficacy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_auc_and_spearman_by_hand(efficacy):
    assert efficacy.auc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert efficacy.auc([0.1, 0.9], [True, False]) == 0.0
    assert efficacy.auc([0.5, 0.5, 0.2, 0.7], [True, False, False, True]) == pytest.approx(0.875)  # one tie: 3.5 / 4
    assert np.isnan(efficacy.auc([1.0, 2.0], [True, True]))
    assert efficacy.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert efficacy.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(efficacy.spearman([1, 1, 1], [1, 2, 3]))
    np.testing.assert_allclose(efficacy.average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1, 3.5, 2])


def per_scene(mentioned, truth, questions=()):
    return {"per_scene": [{"scene_id": f"s{k}", "mentioned": m, "truth": t} for k, (m, t) in
                          enumerate(zip(mentioned, truth, strict=True))],
            "per_question": [{"scene_id": s, "label": label, "prediction": p} for s, label, p in questions]}


def test_scene_counts_give_the_evaluators_aggregates(efficacy):
    from mmpo.evaluation.mentions import chair_scores
    from mmpo.evaluation.pope import pope_metrics

    mentioned = [["circle", "star"], ["square"], []]
    truth = [["circle"], ["square", "cross"], ["star"]]
    questions = [("s0", "yes", "yes"), ("s0", "no", "yes"), ("s1", "yes", None), ("s2", "no", "no"), ("s2", "yes", "yes")]
    counts = efficacy.scene_counts(per_scene(mentioned, truth, questions))
    values = efficacy.metric_values(counts, np.ones((1, 3)))
    chair = chair_scores(mentioned, truth)
    pope = pope_metrics([q[1] for q in questions], [q[2] for q in questions])
    for ours, theirs in (("chair_i", chair["chair_i"]), ("chair_s", chair["chair_s"]), ("coverage", chair["coverage"]),
                         ("pope_f1", pope["f1"]), ("pope_yes_ratio", pope["yes_ratio"])):
        assert values[ours][0] == pytest.approx(theirs)
    # weights count scenes: drawing scene 0 twice is the same as listing it twice
    twice = efficacy.metric_values(counts, np.array([[2.0, 1.0, 0.0]]))
    assert twice["chair_i"][0] == pytest.approx(chair_scores(mentioned[:1] * 2 + mentioned[1:2],
                                                             truth[:1] * 2 + truth[1:2])["chair_i"])


def test_bootstrap_of_identical_methods_has_a_zero_difference(efficacy):
    counts = efficacy.scene_counts(per_scene([["circle"], ["star"], ["circle", "star"]], [["circle"], ["circle"], ["star"]]))
    stats = efficacy.bootstrap({"dpo": [counts, counts], "same": [counts, counts]}, n=200)
    diff = stats["methods"]["same"]["chair_i"]["diff_vs_dpo"]
    assert diff == {"mean": 0.0, "lo": 0.0, "hi": 0.0}
    cell = stats["methods"]["dpo"]["chair_i"]
    assert cell["mean"] == pytest.approx(0.5)  # 2 of 4 mentions hallucinated
    assert cell["lo"] <= cell["mean"] <= cell["hi"]


def test_quick_grid_runs_end_to_end(efficacy, tmp_path):
    run_dir = tmp_path / "run"
    summary = efficacy.main(["--quick", "--run-dir", str(run_dir), "--cache-dir", str(tmp_path / "cache"),
                             "--no-progress"])
    assert set(summary["statistics"]["methods"]) == set(efficacy.GRID)
    assert summary["records"] > 0 and summary["self_pairs"]["written"] == summary["records"]
    for name in ("results.md", "results.json", "metrics.png", "differences.png", "visual_dependence.png",
                 "dama_gaps.png", "adavip_weights.png"):
        assert (run_dir / name).stat().st_size > 0, name
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["mechanisms"]["dama"]["reward_gaps"]["dpo"][0]["step"] == 0
    assert set(saved["mechanisms"]["adavip"]["visual_dependence"]) == {"base", *efficacy.GRID}
    assert "Paired difference vs DPO" in (run_dir / "results.md").read_text()
    # a rerun reuses every finished run
    again = efficacy.main(["--quick", "--run-dir", str(run_dir), "--cache-dir", str(tmp_path / "cache"),
                           "--no-progress", "--methods", "dpo", "aspo"])
    assert again["runs"]["dpo"] == summary["runs"]["dpo"]
    # every run carries ASPO's premise check and the prior breakdown reads its POPE answers
    premise = saved["mechanisms"]["aspo_premise"]
    assert premise["base"]["ghosts"] >= 0
    assert {"base", *efficacy.GRID} <= set(saved["mechanisms"]["prior"])
    assert set(saved["mechanisms"]["dama"]) >= {"spearman", "spearman_rate", "spearman_equal_length"}
    # the variants table reads the run directory; a setting compared with itself differs by 0
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("efficacy_variants", SCRIPT.parent / "efficacy_variants.py")
    variants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(variants)
    shutil.copytree(run_dir, tmp_path / "again")
    table = variants.main([str(run_dir), str(tmp_path / "again"), "--out", str(tmp_path / "variants"),
                           "--bootstrap", "50"])
    same = table["settings"]["again"]["methods"]["dpo"]["vs_reference"]
    assert same["chair_i"] == {"mean": 0.0, "lo": 0.0, "hi": 0.0}
    assert "| run | aspo |" in (tmp_path / "variants" / "variants.md").read_text()
