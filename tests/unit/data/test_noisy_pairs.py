"""SeVa noisy-image pairs: the diffusion noise maths, and a pipeline that is resumable and atomic."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmpo.cli import noisy_pairs as cli
from mmpo.data.construct import noisy_pairs
from mmpo.data.construct.noisy_pairs import (
    DiffusionNoise,
    alphas_cumprod,
    build_noisy_pairs,
    diffuse,
)
from mmpo.data.records import load_records
from mmpo.io import image_key, progress_path_for
from mmpo.toyworld.scenes import DESCRIBE_PROMPT, WorldConfig, sample_scenes

# ---------------------------------------------------------------------------------------------
# The noise.


def random_image(seed: int, size: int = 8) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_step_zero_is_the_identity():
    """abar_0 = 1, so x_0 = p / 127.5 - 1 comes back as round((x_0 + 1) * 127.5) = p."""
    image = random_image(0)
    for schedule in ("linear", "cosine", "sigmoid"):
        noisy = DiffusionNoise(step=0, schedule=schedule)(image)
        assert np.array_equal(np.asarray(noisy), np.asarray(image))


def test_diffuse_by_hand():
    """abar = 0.64: sqrt(abar) = 0.8, sqrt(1 - abar) = 0.6.
    x0 = [1, -1, 0.5], eps = [0.5, 1, -2] -> [0.8 + 0.3, -0.8 + 0.6, 0.4 - 1.2] = [1.1, -0.2, -0.8]."""
    out = diffuse(np.array([1.0, -1.0, 0.5]), 0.64, np.array([0.5, 1.0, -2.0]))
    np.testing.assert_allclose(out, [1.1, -0.2, -0.8])


def test_noisy_image_matches_the_closed_form():
    """Linear schedule, T = 2: beta = linspace(1e-4, 0.02, 2) = [1e-4, 0.02], so
    abar_1 = 0.9999 and abar_2 = 0.9999 * 0.98 = 0.979902. On a 1x2 image with pixels 0 and 255
    (x0 = -1 and 1) the output is round((sqrt(abar) x0 + sqrt(1 - abar) eps + 1) * 127.5), clipped."""
    noise = DiffusionNoise(step=2, num_steps=2, seed=7)
    np.testing.assert_allclose(noise.alphas_cumprod(), [1.0, 0.9999, 0.979902])
    assert noise.abar == pytest.approx(0.979902)

    pixels = np.array([[[0, 0, 0], [255, 255, 255]]], dtype=np.uint8)  # (1, 2, 3)
    image = Image.fromarray(pixels)
    eps = noise.rng(image_key(image)).standard_normal((1, 2, 3))
    x0 = np.array([[[-1.0] * 3, [1.0] * 3]])
    x2 = math.sqrt(0.979902) * x0 + math.sqrt(1 - 0.979902) * eps
    expected = np.clip(np.rint((x2 + 1) * 127.5), 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(noise(image)), expected)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid"])
def test_abar_decreases_from_one(schedule):
    abar = alphas_cumprod(schedule, num_steps=1000)
    assert abar.shape == (1001,) and abar[0] == 1.0
    assert np.all(np.diff(abar) < 0) and abar[-1] > 0


def test_schedule_strengths():
    """DDPM's linear schedule at k = 500 keeps ~8% of the signal variance; VCD/SeVa's sigmoid ~74%."""
    assert alphas_cumprod("linear")[500] == pytest.approx(0.0786, abs=1e-3)
    assert alphas_cumprod("sigmoid")[501] == pytest.approx(0.7448, abs=1e-3)
    assert alphas_cumprod("cosine")[1000] < 1e-6


def test_same_image_same_noise():
    image, other = random_image(1), random_image(2)
    noise = DiffusionNoise(seed=3)
    first = np.asarray(noise(image))
    assert np.array_equal(first, np.asarray(DiffusionNoise(seed=3)(image.copy())))
    assert not np.array_equal(first, np.asarray(image))
    assert not np.array_equal(first, np.asarray(DiffusionNoise(seed=4)(image)))
    assert not np.array_equal(first, np.asarray(noise(image, key="a")))
    # the noise depends on the image's content only, not on what else was noised before
    noise(other)
    assert np.array_equal(first, np.asarray(noise(image)))


def test_bad_settings():
    with pytest.raises(ValueError):
        DiffusionNoise(step=1001)
    with pytest.raises(ValueError):
        DiffusionNoise(schedule="quadratic")


# ---------------------------------------------------------------------------------------------
# The pipeline with a real (untrained) tiny LLaVA.


@pytest.fixture(scope="module")
def tiny(varied_tiny_vlm):
    return varied_tiny_vlm


def test_pipeline_with_tiny_llava(tiny, tmp_path):
    model, processor = tiny
    scenes = sample_scenes(WorldConfig(seed=5), 6)
    (tmp_path / "scenes").mkdir()
    items = []
    for i, scene in enumerate(scenes):  # half on disk, half in memory
        image = scene.render()
        if i % 2:
            image.save(tmp_path / "scenes" / f"{scene.id}.png")
            image = tmp_path / "scenes" / f"{scene.id}.png"
        items.append((scene.id, image, DESCRIBE_PROMPT))
    out = tmp_path / "pairs.jsonl"
    report = build_noisy_pairs(model, processor, items, out, noise=DiffusionNoise(step=500), batch_size=4,
                               max_new_tokens=6)
    assert report.written + sum(report.dropped.values()) == 6 and report.skipped_done == 0
    assert report.written >= 1 and "written" in report.summary()

    records = load_records(out).records
    assert len(records) == report.written
    for record in records:
        assert record.prompt == DESCRIBE_PROMPT and record.chosen != record.rejected
        assert record.meta["source"] == "seva-noisy-image"
        assert (record.meta["noise_step"], record.meta["noise_steps_total"]) == (500, 1000)
        assert record.meta["noise_schedule"] == "linear"
        assert Path(record.image).is_file()
    # the answers are the model's greedy answers on the clean and on the noisy image
    first = next(i for i in items if i[0] == records[0].id)
    clean = first[1] if isinstance(first[1], Image.Image) else Image.open(first[1]).convert("RGB")
    again = noisy_pairs.generate_responses(model, processor, [clean, DiffusionNoise()(clean)],
                                           DESCRIBE_PROMPT, max_new_tokens=6)
    assert again == [records[0].chosen, records[0].rejected]

    outcomes = [json.loads(line) for line in progress_path_for(out).read_text().splitlines()]
    assert "settings" in outcomes[0] and sorted(o["id"] for o in outcomes[1:]) == sorted(s.id for s in scenes)


# ---------------------------------------------------------------------------------------------
# The pipeline with a stand-in generator: dropping, kill and resume, repair.


class StandIn:
    """Replaces ``generate_responses``: the first half of a call's requests are clean, the second
    noisy; each answer names its prompt. Prompts in ``identical``/``empty`` get equal/empty answers.
    Raises on call number ``fail_on`` (1-based), as a kill would stop the run."""

    def __init__(self, identical=(), empty=(), fail_on=None):
        self.identical, self.empty, self.fail_on = set(identical), set(empty), fail_on
        self.calls: list[list[str]] = []

    def __call__(self, model, processor, images, prompts, *, batch_size, max_new_tokens):
        assert len(images) == len(prompts) == batch_size and batch_size % 2 == 0
        assert all(isinstance(image, Image.Image) for image in images)
        self.calls.append(list(prompts[:len(prompts) // 2]))
        if len(self.calls) == self.fail_on:
            raise RuntimeError("killed")
        half = len(prompts) // 2
        answers = []
        for i, prompt in enumerate(prompts):
            if prompt in self.empty and i >= half:
                answers.append("  ")
            elif prompt in self.identical:
                answers.append(f"the same  answer about {prompt}" if i < half else f"the same answer about {prompt} ")
            else:
                answers.append(f"{'clean' if i < half else 'noisy'} answer about {prompt}")
        return answers


def make_items(n: int) -> list[tuple[str, Image.Image, str]]:
    return [(f"item-{i}", Image.new("RGB", (8, 8), (30 * i, 10, 200)), f"prompt {i}") for i in range(n)]


def lines_of(path: Path) -> list[dict]:
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_identical_and_empty_answers_are_dropped(monkeypatch, tmp_path):
    stand_in = StandIn(identical={"prompt 1", "prompt 4"}, empty={"prompt 2"})
    monkeypatch.setattr(noisy_pairs, "generate_responses", stand_in)
    out = tmp_path / "pairs.jsonl"
    report = build_noisy_pairs(None, None, make_items(6), out, batch_size=4,
                               meta={"model": "stand-in"})
    assert (report.written, report.dropped, report.skipped_done) == (3, {"identical": 2, "empty": 1}, 0)
    assert "dropped 3 (identical 2, empty 1)" in report.summary()
    records = load_records(out).records
    assert [r.id for r in records] == ["item-0", "item-3", "item-5"]
    assert records[0].chosen == "clean answer about prompt 0" and records[0].rejected == "noisy answer about prompt 0"
    assert records[0].meta["model"] == "stand-in" and records[0].image.endswith(".png")
    assert Path(records[0].image).parent == tmp_path / "images"
    outcomes = {row["id"]: row["outcome"] for row in lines_of(progress_path_for(out))[1:]}
    assert outcomes == {"item-0": "written", "item-1": "dropped:identical", "item-2": "dropped:empty",
                        "item-3": "written", "item-4": "dropped:identical", "item-5": "written"}


def test_kill_and_resume(monkeypatch, tmp_path):
    out = tmp_path / "out" / "pairs.jsonl"
    items = make_items(7)
    killed = StandIn(identical={"prompt 3"}, fail_on=3)
    monkeypatch.setattr(noisy_pairs, "generate_responses", killed)
    with pytest.raises(RuntimeError, match="killed"):
        build_noisy_pairs(None, None, items, out, batch_size=2)
    assert [row["id"] for row in lines_of(out)] == ["item-0", "item-1", "item-2"]  # batches 1 and 2

    resumed = StandIn(identical={"prompt 3"})
    monkeypatch.setattr(noisy_pairs, "generate_responses", resumed)
    report = build_noisy_pairs(None, None, items, out, batch_size=2)
    assert resumed.calls == [["prompt 4", "prompt 5"], ["prompt 6"]]  # the dropped item-3 is not redone
    assert (report.skipped_done, report.written, report.dropped["identical"]) == (4, 3, 0)

    ids = [row["id"] for row in lines_of(out)]
    assert ids == ["item-0", "item-1", "item-2", "item-4", "item-5", "item-6"]
    assert [r.id for r in load_records(out).records] == ids

    # a third call finds nothing to do
    again = build_noisy_pairs(None, None, items, out, batch_size=2)
    assert (again.skipped_done, again.written) == (7, 0) and len(resumed.calls) == 2


def test_truncated_last_line_is_repaired(monkeypatch, tmp_path):
    """A kill mid-write leaves part of a record line (no newline) and no progress line for it."""
    out = tmp_path / "pairs.jsonl"
    items = make_items(4)
    monkeypatch.setattr(noisy_pairs, "generate_responses", StandIn())
    build_noisy_pairs(None, None, items[:3], out, batch_size=2)
    lines = out.read_text().splitlines(keepends=True)
    progress = progress_path_for(out).read_text().splitlines(keepends=True)
    # undo item-2 as if the kill came while its line was half written
    out.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    progress_path_for(out).write_text("".join(progress[:3]))

    stand_in = StandIn()
    monkeypatch.setattr(noisy_pairs, "generate_responses", stand_in)
    report = build_noisy_pairs(None, None, items, out, batch_size=2)
    assert report.repaired_lines == 1 and "truncated" in report.summary()
    assert stand_in.calls == [["prompt 2", "prompt 3"]]
    assert [row["id"] for row in lines_of(out)] == ["item-0", "item-1", "item-2", "item-3"]
    assert len(load_records(out).records) == 4


def test_records_without_progress_lines_are_not_redone(monkeypatch, tmp_path):
    """A kill between the records' fsync and the progress lines: the output itself says what is done."""
    out = tmp_path / "pairs.jsonl"
    monkeypatch.setattr(noisy_pairs, "generate_responses", StandIn())
    build_noisy_pairs(None, None, make_items(3), out, batch_size=3)
    header = progress_path_for(out).read_text().splitlines(keepends=True)[0]
    progress_path_for(out).write_text(header + '{"id": "item-0", "outcome": "wri')  # truncated too

    stand_in = StandIn()
    monkeypatch.setattr(noisy_pairs, "generate_responses", stand_in)
    report = build_noisy_pairs(None, None, make_items(3), out, batch_size=3)
    assert stand_in.calls == [] and report.skipped_done == 3 and report.repaired_lines == 1
    assert [row["id"] for row in lines_of(out)] == ["item-0", "item-1", "item-2"]
    assert {row["id"] for row in lines_of(progress_path_for(out))[1:]} == {"item-0", "item-1", "item-2"}


def test_resume_refuses_other_settings_and_foreign_files(monkeypatch, tmp_path):
    monkeypatch.setattr(noisy_pairs, "generate_responses", StandIn())
    out = tmp_path / "pairs.jsonl"
    build_noisy_pairs(None, None, make_items(2), out, batch_size=2)
    with pytest.raises(ValueError, match="other settings"):
        build_noisy_pairs(None, None, make_items(2), out, noise=DiffusionNoise(step=300))
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text(out.read_text())
    with pytest.raises(FileExistsError):
        build_noisy_pairs(None, None, make_items(2), foreign)
    with pytest.raises(ValueError, match="duplicate id"):
        build_noisy_pairs(None, None, make_items(2) * 2, tmp_path / "new.jsonl")


# ---------------------------------------------------------------------------------------------
# The CLI.


def test_cli_with_input_file(monkeypatch, tmp_path, tiny_checkpoint, capsys):
    image_dir = tmp_path / "in"
    image_dir.mkdir()
    rows = []
    for i in range(3):
        Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(image_dir / f"{i}.png")
        key = "prompt" if i else "instruction"
        rows.append(json.dumps({"id": f"q{i}", "image": f"in/{i}.png", key: f"prompt {i}"}))
    (tmp_path / "items.jsonl").write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(noisy_pairs, "generate_responses", StandIn(identical={"prompt 1"}))
    out = tmp_path / "run" / "pairs.jsonl"
    code = cli.main(["--model", str(tiny_checkpoint), "--input", str(tmp_path / "items.jsonl"),
                     "--output", str(out), "--noise-step", "250", "--schedule", "cosine", "--no-progress"])
    assert code == 0 and "2 of 3 items written" in capsys.readouterr().out
    records = load_records(out).records
    assert [r.id for r in records] == ["q0", "q2"]
    assert records[0].image == str(image_dir / "0.png")
    assert (records[0].meta["noise_step"], records[0].meta["noise_schedule"]) == (250, "cosine")


def test_cli_synthetic_with_the_tiny_checkpoint(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "pairs.jsonl"
    code = cli.main(["--model", str(tiny_checkpoint), "--synthetic", "3", "--output", str(out),
                     "--max-new-tokens", "4", "--batch-size", "3", "--no-progress"])
    assert code == 0 and "of 3 items written" in capsys.readouterr().out
    assert len(list((tmp_path / "images").glob("*.png"))) == 3
    assert len(lines_of(progress_path_for(out))) == 4  # settings + one line per scene


def test_cli_needs_an_input():
    with pytest.raises(SystemExit):
        cli.main(["--model", "m", "--output", "o.jsonl"])
