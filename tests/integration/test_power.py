"""benchmarks/power.py and benchmarks/efficacy_variants.py: the variance model worked by hand, on run
directories written the way benchmarks/efficacy.py writes them."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name):
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def power():
    return load("power")


def write_run(run_dir: Path, method: str, seed: int, hallucinated: list[int]):
    """A result.json whose scene k mentions 4 objects, ``hallucinated[k]`` of them absent."""
    shapes = ["circle", "square", "star", "cross", "diamond", "triangle", "heart", "moon"]
    per_scene = [{"scene_id": f"s{k}", "mentioned": shapes[:4], "truth": shapes[h:4 + h] if h else shapes[:4]}
                 for k, h in enumerate(hallucinated)]
    per_question = [{"scene_id": f"s{k}", "label": "yes", "prediction": "yes"} for k in range(len(hallucinated))]
    path = run_dir / "runs" / f"{method}-s{seed}" / "result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"method": method, "seed": seed,
                                "metrics": {"per_scene": per_scene, "per_question": per_question}}))


def test_fit_recovers_the_two_components(power):
    a, b = 3e-4, 0.02
    assert power.fit_components({k: a + b / k for k in (25, 50, 100, 200)}) == pytest.approx((a, b))
    # a negative intercept is clipped to zero (all of the variance is model x scene noise)
    a0, b0 = power.fit_components({25: 0.004, 50: 0.0015, 100: 0.0005})
    assert a0 == 0 and b0 > 0


def test_paired_differences_of_a_method_equal_to_dpo_resolve_any_difference(power, tmp_path):
    rng = np.random.default_rng(0)
    for seed in range(3):
        scenes = list(rng.integers(0, 3, size=40))
        write_run(tmp_path, "dpo", seed, scenes)
        write_run(tmp_path, "same", seed, scenes)
    summary = power.main([str(tmp_path), "--out", str(tmp_path / "out"), "--draws", "5"])
    assert summary["a"] == 0 and summary["b"] == 0
    assert all(v == 0 for row in summary["resolvable"].values() for v in row.values())
    assert (tmp_path / "out" / "power.png").exists()


def test_a_constant_shift_per_seed_is_training_noise(power, tmp_path):
    # the method hallucinates one more object of four on every scene for seed 1 only: per-seed CHAIR_i
    # differences 0, 0.25, 0 on every subset of scenes, so all of the variance is a (b = 0)
    base = [0] * 40
    for seed in range(3):
        write_run(tmp_path, "dpo", seed, base)
        write_run(tmp_path, "shifted", seed, [1] * 40 if seed == 1 else base)
    summary = power.main([str(tmp_path), "--out", str(tmp_path / "out"), "--draws", "5", "--seeds", "3", "12",
                          "--scenes", "40"])
    variance = np.var([0, 0.25, 0], ddof=1)
    assert summary["a"] == pytest.approx(variance)
    assert summary["b"] == pytest.approx(0, abs=1e-12)
    assert summary["resolvable"]["3"]["40"] == pytest.approx(1.959964 * np.sqrt(variance / 3))
    assert summary["resolvable"]["12"]["40"] == pytest.approx(summary["resolvable"]["3"]["40"] / 2)
    assert summary["seeds_needed"]["40"] == int(np.ceil((1.959964 / 0.01) ** 2 * variance))
