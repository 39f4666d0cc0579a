"""The reliability matrix of issue #10: how mmpo fails on bad input, bad config, kills and extremes.

    python benchmarks/reliability_matrix.py [--only records,config,checkpoints,renders,dama] [--kills 12]

Each section builds its cases, runs them, and prints one line per case that is *not* handled well,
then the count ``handled / total``:

* ``records``: bad-record classes in the four layouts (mmpo / TRL / RLAIF-V JSONL and a list of
  dicts). A case is handled when ``load_records`` raises ``RecordValidationError`` for the bad row
  (index 1 of three, naming a field unless the whole line is unreadable) and ``on_error="skip"``
  keeps the two good rows. Classes that need the model's processor (too long for the budget,
  method fields, the processor's own placeholder tokens) go through ``mmpo.data.preflight``.
* ``preflight``: bad records only the processor can tell, caught before training by
  ``mmpo.data.preflight`` (the same code the collator runs).
* ``config``: config mistakes in YAML or on the command line; handled when ``parse_config`` stops
  with an error whose message names the field (before any model is loaded).
* ``checkpoints``: damaged checkpoints of a DAMA run (kills inside the write); handled when resume
  picks the newest complete checkpoint and ends bit-identical to an uninterrupted run, or stops
  with an error naming the damaged file.
* ``renders``: ``mmpo noisy-pairs --synthetic`` killed (SIGKILL) at random moments; handled when
  the rerun finishes and every image decodes.
* ``dama``: float32 sweeps of the DAMA loss over extreme running means, gap scales and betas;
  handled when no loss is NaN/inf.

Not a test (the sections take minutes and spawn processes); ``tests/reliability/`` holds one
fast test per defect. Numbers from this script go in the issue's closing note.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import PIL.Image

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Bad records


def _png(path: Path, color=(200, 30, 30)) -> str:
    PIL.Image.new("RGB", (32, 32), color).save(path)
    return str(path)


def _good(index: int, image: str) -> dict[str, Any]:
    return {"id": f"r{index}", "image": image, "prompt": "What is in the picture?",
            "chosen": "A red square. It is small.", "rejected": "A blue circle. It is big."}


def _record_classes(tmp: Path) -> dict[str, Callable[[dict], Any]]:
    """Name -> a function that spoils a good mmpo row (returns the new row, or raw bytes for a line)."""
    corrupt = tmp / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    empty = tmp / "empty.png"
    empty.write_bytes(b"")
    truncated = tmp / "truncated.png"
    _png(truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    text_file = tmp / "notes.txt"
    text_file.write_text("not an image")
    (tmp / "a_directory").mkdir(exist_ok=True)

    def setting(field: str, value: Any) -> Callable[[dict], dict]:
        return lambda row: {**row, field: value}

    def dropping(field: str) -> Callable[[dict], dict]:
        return lambda row: {k: v for k, v in row.items() if k != field}

    return {
        "line not JSON": lambda row: b'{"id": "x", "image": ',
        "line not UTF-8": lambda row: json.dumps(row).encode().replace(b"small", b"sm\xffall"),
        "row is a list": lambda row: [row],
        "row is a number": lambda row: 7,
        "unknown field": setting("colour", "red"),
        "image missing": dropping("image"),
        "image null": setting("image", None),
        "image a number": setting("image", 3),
        "image empty path": setting("image", ""),
        "image file absent": setting("image", "no/such/image.png"),
        "image a directory": setting("image", str(tmp / "a_directory")),
        "image corrupt": setting("image", str(corrupt)),
        "image 0 bytes": setting("image", str(empty)),
        "image truncated": setting("image", str(truncated)),
        "image a text file": setting("image", str(text_file)),
        "prompt missing": dropping("prompt"),
        "prompt empty": setting("prompt", ""),
        "prompt whitespace": setting("prompt", "  \n "),
        "prompt a number": setting("prompt", 5),
        "prompt list of strings": setting("prompt", ["hello"]),
        "prompt message without role": setting("prompt", [{"content": "hi"}]),
        "prompt messages without image": setting("prompt", [{"role": "user", "content": "What is it?"}]),
        "prompt messages with two images": setting("prompt", [{"role": "user", "content": [
            {"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare."}]}]),
        "prompt content a number": setting("prompt", [{"role": "user", "content": 3}]),
        "prompt text part not text": setting("prompt", [{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": 4}]}]),
        "prompt placeholder inside": setting("prompt", "Look at <image> and say what it shows."),
        "chosen missing": dropping("chosen"),
        "chosen empty": setting("chosen", ""),
        "chosen whitespace": setting("chosen", " \t"),
        "chosen a number": setting("chosen", 1),
        "chosen a dict": setting("chosen", {"text": "A red square."}),
        "chosen placeholder": setting("chosen", "A red <image> square."),
        "rejected missing": dropping("rejected"),
        "rejected empty": setting("rejected", ""),
        "rejected a list": setting("rejected", ["A", "B"]),
        "rejected placeholder": setting("rejected", "<image> A blue circle."),
        "rejected equals chosen": lambda row: {**row, "rejected": row["chosen"] + " "},
        "id duplicate": setting("id", "r0"),
        "id a bool": setting("id", True),
        "id a float": setting("id", 1.5),
        "id empty": setting("id", ""),
        "data_alpha NaN": setting("data_alpha", float("nan")),
        "data_alpha inf": setting("data_alpha", float("inf")),
        "data_alpha negative": setting("data_alpha", -1.0),
        "data_alpha zero": setting("data_alpha", 0.0),
        "data_alpha 1e300": setting("data_alpha", 1e300),
        "data_alpha 1e-300": setting("data_alpha", 1e-300),
        "data_alpha a string": setting("data_alpha", "1.0"),
        "data_alpha a bool": setting("data_alpha", True),
        "scores not a list": setting("chosen_sentence_scores", 0.5),
        "scores empty": setting("chosen_sentence_scores", []),
        "scores with a string": setting("chosen_sentence_scores", [0.5, "x"]),
        "scores with NaN": setting("rejected_sentence_scores", [0.5, float("nan")]),
        "scores with a bool": setting("rejected_sentence_scores", [True, 0.5]),
        "meta a number": setting("meta", 3),
        "meta bad JSON text": setting("meta", "{not json"),
        "rejected_image absent": setting("rejected_image", "no/such.png"),
        "rejected_image corrupt": setting("rejected_image", str(corrupt)),
    }


#: Record fields each layout names differently; a class touching a field a layout lacks is mmpo-only.
_LAYOUTS = {
    "trl": {"image": "images", "prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "id": "id"},
    "rlaif-v": {"image": "image", "prompt": "question", "chosen": "chosen", "rejected": "rejected", "id": "idx"},
}


def _in_layout(row: Any, layout: str) -> Any | None:
    """``row`` (an mmpo row) in another layout, or None when the class has no meaning there."""
    if layout in ("mmpo", "list") or not isinstance(row, dict):
        return row
    names = _LAYOUTS[layout]
    if set(row) - set(names):
        return None
    out = {}
    for field, value in row.items():
        out[names[field]] = [value] if field == "image" and layout == "trl" and value is not None else value
    if "image" not in row and layout == "trl":
        pass
    return out


def records_section(tmp: Path) -> tuple[int, int, list[str]]:
    from mmpo.data.records import RecordValidationError, load_records

    image = _png(tmp / "good.png")
    classes = _record_classes(tmp)
    handled, total, problems = 0, 0, []
    for layout in ("mmpo", "trl", "rlaif-v", "list"):
        for name, spoil in classes.items():
            good = [_good(0, image), _good(2, image)]
            bad = spoil(copy.deepcopy(_good(1, image)))
            if isinstance(bad, bytes) and layout == "list":
                continue
            rows = [_in_layout(row, layout) for row in (good[0], bad, good[1])]
            if any(row is None for row in rows) and not isinstance(bad, bytes):
                continue
            total += 1
            if layout == "list":
                source: Any = rows
            else:
                source = tmp / f"{layout}-{total}.jsonl"
                with open(source, "wb") as out:
                    for row in rows:
                        out.write(row if isinstance(row, bytes) else json.dumps(row).encode())
                        out.write(b"\n")
            verdict = _judge_load(load_records, RecordValidationError, source, layout)
            if verdict == "ok":
                handled += 1
            else:
                problems.append(f"{layout:8s} {name}: {verdict}")
    return handled, total, problems


def _judge_load(load_records, error_type, source, layout: str) -> str:
    fmt = "auto" if layout == "list" else layout
    try:
        load_records(source, format=fmt)
    except error_type as exc:
        if exc.error.index != 1:
            return f"error names record #{exc.error.index}, not #1: {exc}"
    except Exception as exc:  # the point of the matrix: anything else is a raw crash
        return f"raw {type(exc).__name__}: {exc}"
    else:
        return "accepted"
    try:
        result = load_records(source, format=fmt, on_error="skip")
    except Exception as exc:
        return f"skip mode crashed: {type(exc).__name__}: {exc}"
    if len(result.records) != 2 or len(result.errors) != 1:
        return f"skip mode kept {len(result.records)} records and {len(result.errors)} errors"
    return "ok"


# ---------------------------------------------------------------------------------------------
# Config errors

#: (YAML values, command-line overrides, the field the error must name)
CONFIG_CASES: list[tuple[dict[str, Any], list[str], str]] = [
    ({"beta": "nan"}, [], "beta"),
    ({"beta": ".inf"}, [], "beta"),
    ({}, ["--beta", "nan"], "beta"),
    ({}, ["--beta", "inf"], "beta"),
    ({}, ["--beta", "-0.1"], "beta"),
    ({}, ["--beta", "0"], "beta"),
    ({"beta": True}, [], "beta"),
    ({"beta": "a lot"}, [], "beta"),
    ({"beta": [0.1]}, [], "beta"),
    ({"sft_weight": -1}, [], "sft_weight"),
    ({"sft_weight": float("nan")}, [], "sft_weight"),
    ({"max_steps": 2.5}, [], "max_steps"),
    ({"max_steps": "ten"}, [], "max_steps"),
    ({"learning_rate": float("nan")}, [], "learning_rate"),
    ({"learning_rate": -1e-5}, [], "learning_rate"),
    ({"dtype": "float8"}, [], "dtype"),
    ({"reference": "mirror"}, [], "reference"),
    ({"prompt_format": "fancy"}, [], "prompt_format"),
    ({"lora_r": 0}, [], "lora_r"),
    ({"lora_dropout": 1.5}, [], "lora_dropout"),
    ({"lora_alpha": -4}, [], "lora_alpha"),
    ({"on_bad_record": "ignore"}, [], "on_bad_record"),
    ({"max_length": 0}, [], "max_length"),
    ({"max_length": 12.5}, [], "max_length"),
    ({"aspo_alpha": 1.5}, [], "aspo_alpha"),
    ({"aspo_alpha": float("nan")}, [], "aspo_alpha"),
    ({"aspo_normalizer": "mean"}, [], "aspo_normalizer"),
    ({"aspo_granularity": "word"}, [], "aspo_granularity"),
    ({"dama_gamma": 1.5}, [], "dama_gamma"),
    ({"dama_gamma": -0.1}, [], "dama_gamma"),
    ({"dama_rho": -3}, [], "dama_rho"),
    ({"dama_keep": 0}, [], "dama_keep"),
    ({"dama_keep": float("nan")}, [], "dama_keep"),
    ({"dama_filter": "middle"}, [], "dama_filter"),
    ({"adavip_loss": "triplet"}, [], "adavip_loss"),
    ({"use_lora": "maybe"}, [], "use_lora"),
    ({"betta": 0.1}, [], "betta"),
    ({}, ["--resume_from_checkpoint", "True"], "resume_from_checkpoint"),
]


def config_section(tmp: Path) -> tuple[int, int, list[str]]:
    import yaml

    from mmpo.training.config import parse_config

    handled, problems = 0, []
    base = {"model_name_or_path": str(tmp / "model"), "train_file": str(tmp / "train.jsonl"),
            "output_dir": str(tmp / "out"), "report_to": "none"}
    for values, overrides, field in CONFIG_CASES:
        path = tmp / "config.yaml"
        path.write_text(yaml.safe_dump({**base, **values}))
        label = f"{values or ''} {' '.join(overrides)}".strip()
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # argparse prints its usage there
                parsed = parse_config(path, overrides)
        except SystemExit as exc:  # argparse's own error: one line naming the option on stderr
            handled += 1 if exc.code == 2 else 0
            continue
        except Exception as exc:
            if field in str(exc):
                handled += 1
            else:
                problems.append(f"{label}: {type(exc).__name__} not naming {field!r}: {exc}")
            continue
        if field == "resume_from_checkpoint" and parsed[2].resume_from_checkpoint is True:
            handled += 1  # read as "resume from the last checkpoint", not as a path named True
            continue
        problems.append(f"{label}: accepted")
    return handled, len(CONFIG_CASES), problems


# ---------------------------------------------------------------------------------------------
# Kills inside checkpoint writes (DAMA model-aware run, so mmpo's own state matters)


def _dama_run(out: Path, steps: int, resume: bool | str | None = None):
    import torch
    from transformers.trainer_callback import PrinterCallback

    from mmpo.data.collator import PreferenceDataset
    from mmpo.toyworld.data import ground_truth_pairs
    from mmpo.toyworld.model import build_processor, build_tiny_vlm, train_tokenizer
    from mmpo.toyworld.scenes import WorldConfig, sample_scenes
    from mmpo.training.config import DamaConfig, Methods, PreferenceConfig
    from mmpo.training.trainer import PreferenceTrainer

    world = WorldConfig(seed=1)
    records = ground_truth_pairs(sample_scenes(world, 16, prefix="k"), world, out.parent / "images")
    tokenizer = train_tokenizer()
    torch.manual_seed(0)
    args = PreferenceConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=4, learning_rate=1e-3,
                            save_steps=1, logging_steps=1, disable_tqdm=True, use_cpu=True, seed=0, report_to="none",
                            sft_weight=1.0)
    methods = Methods(dama=DamaConfig(model=True, keep=0.75))
    trainer = PreferenceTrainer(build_tiny_vlm(tokenizer, seed=0), args, build_processor(tokenizer),
                                PreferenceDataset(records), methods=methods)
    trainer.remove_callback(PrinterCallback)  # the per-step log dicts
    trainer.train(resume_from_checkpoint=resume)
    weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    return weights, trainer.dama.r_bar


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


#: name -> (how the newest checkpoint is damaged, resume argument: True or "newest")
CHECKPOINT_CASES: dict[str, tuple[Callable[[Path], None], Any]] = {
    "killed after trainer_state.json, before mmpo_state.json": (
        lambda ckpt: (ckpt / "mmpo_state.json").unlink(missing_ok=True), True),
    "killed early: only the weights written": (
        lambda ckpt: [p.unlink() for p in ckpt.iterdir() if p.name != "model.safetensors"], True),
    "killed while writing mmpo_state.json": (lambda ckpt: _truncate(ckpt / "mmpo_state.json"), True),
    "killed while writing trainer_state.json": (lambda ckpt: _truncate(ckpt / "trainer_state.json"), True),
    "resume named explicitly, mmpo_state.json missing": (
        lambda ckpt: (ckpt / "mmpo_state.json").unlink(missing_ok=True), "newest"),
}


def checkpoints_section(tmp: Path) -> tuple[int, int, list[str]]:
    import shutil

    import torch

    steps = 4
    reference, r_bar = _dama_run(tmp / "uninterrupted", steps)
    handled, problems = 0, []
    for name, (damage, resume) in CHECKPOINT_CASES.items():
        out = tmp / f"case-{handled}-{len(problems)}"
        out.mkdir()
        for n in (1, 2, 3):  # the run was killed while checkpoint-3 was written
            shutil.copytree(tmp / "uninterrupted" / f"checkpoint-{n}", out / f"checkpoint-{n}")
        newest = out / "checkpoint-3"
        damage(newest)
        try:
            weights, resumed_r_bar = _dama_run(out, steps, resume=str(newest) if resume == "newest" else resume)
        except Exception as exc:
            if "checkpoint-3" in str(exc) and resume == "newest":
                handled += 1  # stopped, naming the damaged checkpoint's file
            else:
                problems.append(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        same = all(torch.equal(weights[k], reference[k]) for k in reference) and resumed_r_bar == r_bar
        if same and resume is True:
            handled += 1
        else:
            problems.append(f"{name}: resumed (R_bar {resumed_r_bar:.6g} vs {r_bar:.6g}, weights "
                            f"{'equal' if same else 'differ'})")
    return handled, len(CHECKPOINT_CASES), problems


# ---------------------------------------------------------------------------------------------
# Kills while ``mmpo noisy-pairs --synthetic`` renders and generates


def renders_section(tmp: Path, kills: int) -> tuple[int, int, list[str]]:
    from mmpo.toyworld.model import build_processor, build_tiny_vlm, train_tokenizer

    tokenizer = train_tokenizer()
    model_dir = tmp / "model"
    build_tiny_vlm(tokenizer, seed=0).save_pretrained(model_dir)
    build_processor(tokenizer).save_pretrained(model_dir)
    mmpo = str(Path(sys.executable).with_name("mmpo"))
    handled, problems = 0, []
    rng = random.Random(0)
    for kill in range(kills):
        out = tmp / f"run-{kill}"
        command = [mmpo, "noisy-pairs", "--model", str(model_dir), "--synthetic", "600", "--output",
                   str(out / "pairs.jsonl"), "--max-new-tokens", "8", "--batch-size", "64", "--no-progress"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 4.0))  # imports take about a second, then the scenes are rendered
        process.send_signal(signal.SIGKILL)
        process.wait()
        rerun = subprocess.run(command, capture_output=True, text=True)
        images = sorted((out / "images").glob("*.png")) if (out / "images").exists() else []
        bad = []
        for path in images:
            try:
                with PIL.Image.open(path) as image:
                    image.load()
            except Exception:
                bad.append(path.name)
        if rerun.returncode == 0 and not bad:
            handled += 1
        else:
            last = (rerun.stderr.strip().splitlines() or [""])[-1]
            problems.append(f"kill {kill}: rerun exit {rerun.returncode}, {len(bad)} unreadable images; {last[:200]}")
    return handled, kills, problems


# ---------------------------------------------------------------------------------------------
# Bad records only the processor can tell (mmpo.data.preflight, run by PreferenceTrainer)


def preflight_section(tmp: Path) -> tuple[int, int, list[str]]:
    import dataclasses

    from mmpo.data.collator import PreferenceCollator, RowEncoder
    from mmpo.data.preflight import model_max_positions, preflight
    from mmpo.data.records import RecordValidationError
    from mmpo.scoring.sentences import RuleSplitter
    from mmpo.testing.families import build_family
    from mmpo.toyworld.data import ground_truth_pairs
    from mmpo.toyworld.scenes import WorldConfig, sample_scenes

    world = WorldConfig(seed=2)
    good = ground_truth_pairs(sample_scenes(world, 3, prefix="p"), world, tmp / "images")
    llava, llava_processor = build_family("llava")
    qwen, qwen_processor = build_family("qwen2_vl")
    splitter = RuleSplitter()

    def scored(record):
        return dataclasses.replace(record, chosen_sentence_scores=[0.5] * len(splitter.split(record.chosen)))

    # name -> (spoil record #1, collator settings, family, the field the error must name)
    cases = {
        "prompt too long for max_length": (
            lambda r: dataclasses.replace(r, prompt="describe the image . " * 60), {"max_length": 150}, "llava",
            "prompt"),
        "prompt too long for the model's positions": (
            lambda r: dataclasses.replace(r, prompt="describe the image . " * 400), {}, "llava", "prompt"),
        "data_alpha missing with dama_data": (
            lambda r: dataclasses.replace(r, data_alpha=None), {"need_data_alpha": True}, "llava", "data_alpha"),
        "sentence scores missing with ASPO": (
            lambda r: dataclasses.replace(r, chosen_sentence_scores=None), {"aspo": True}, "llava",
            "chosen_sentence_scores"),
        "sentence score count wrong": (
            lambda r: dataclasses.replace(r, chosen_sentence_scores=[0.1] * 17), {"aspo": True}, "llava",
            "chosen_sentence_scores"),
        "processor placeholder in a response": (
            lambda r: dataclasses.replace(r, rejected="A <|image_pad|> square."), {}, "qwen2_vl", "rejected"),
        "processor placeholder in a prompt": (
            lambda r: dataclasses.replace(r, prompt="<|vision_start|> What is it?"), {}, "qwen2_vl", "prompt"),
    }
    handled, problems = 0, []
    for name, (spoil, settings, family, field) in cases.items():
        model, processor = (llava, llava_processor) if family == "llava" else (qwen, qwen_processor)
        records = [dataclasses.replace(scored(r), data_alpha=1.0) for r in good]
        records[1] = spoil(records[1])
        aspo = settings.pop("aspo", False)
        collator = PreferenceCollator(RowEncoder(processor, max_length=settings.pop("max_length", None)),
                                      sentence_splitter=splitter if aspo else None, need_sentence_scores=aspo,
                                      **settings)
        try:
            preflight(records, collator, max_positions=model_max_positions(model))
        except RecordValidationError as exc:
            if (exc.error.index, exc.error.field) == (1, field):
                handled += 1
            else:
                problems.append(f"{name}: names #{exc.error.index} field {exc.error.field!r}: {exc}")
        except Exception as exc:
            problems.append(f"{name}: raw {type(exc).__name__}: {str(exc)[:200]}")
        else:
            problems.append(f"{name}: accepted")
    return handled, len(cases), problems


# ---------------------------------------------------------------------------------------------
# DAMA in float32 at extreme running means (the sweep of benchmarks/dama_stability.py)


def dama_section(tmp: Path) -> tuple[int, int, list[str]]:
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("dama_stability", ROOT / "benchmarks" / "dama_stability.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    gen = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(16, generator=gen), torch.randn(16, generator=gen)  # (B,) float32
    grid = [(r, s, b) for r in bench.SWEEP_R_BARS for s in bench.SWEEP_SCALES for b in bench.SWEEP_BETAS]
    handled, problems = 0, []
    for r_bar, scale, beta in grid:
        loss = bench.masked_batch_loss(chosen * scale, rejected * scale, beta, r_bar, "bounded", "where")
        if torch.isfinite(loss):
            handled += 1
        else:
            problems.append(f"R_bar {r_bar:g}, log-ratio scale {scale:g}, beta {beta:g}: loss {loss.item()}")
    return handled, len(grid), problems


SECTIONS = {"records": records_section, "preflight": preflight_section, "config": config_section,
            "checkpoints": checkpoints_section, "renders": renders_section, "dama": dama_section}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections to run")
    parser.add_argument("--kills", type=int, default=12, help="render kills in the 'renders' section")
    args = parser.parse_args(argv)
    random.seed(0)
    logging.disable(logging.WARNING)  # the skip-mode summaries; the verdicts are what is printed
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    summary = []
    for name in args.only.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            section = SECTIONS[name]
            handled, total, problems = (section(Path(tmp), args.kills) if name == "renders" else section(Path(tmp)))
            seconds = time.perf_counter() - start
        print(f"\n== {name}: {handled} / {total} handled ({seconds:.0f} s)")
        for line in problems:
            print("  " + line)
        summary.append(f"{name} {handled}/{total}")
    print("\nsummary: " + ", ".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
