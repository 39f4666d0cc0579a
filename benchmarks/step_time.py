"""Step times of the tiny synthetic-world VLM, all measured in one run (ratios are what to compare).

    python benchmarks/step_time.py [--steps 30] [--batch-size 16]

Rows: SFT (one sequence per record); DPO with a live frozen-copy reference, first with one row
per response (two policy rows and two reference rows per record), then prefix-shared (the
default: the image and prompt once, both responses after them in one row); DPO with precomputed
reference log-probs (the reference pass is done once before training; its one-off cost is
printed separately); then ASPO, DAMA (data + model aware) and AdaViP (a third, vision-rejected
row per record, with its own image), each prefix-shared with a live reference, AdaViP also with
one row per response. Targets: ASPO and DAMA within 5% of DPO, AdaViP at most 1.6x. Sentence scores and data_alpha are filled with
fixed made-up values (timing does not depend on them); AdaViP's rejected image is the scene
rendered without its first object. Not a test: machines are noisy, so nothing asserts a time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback, TrainingArguments

from mmpo.data.collator import PreferenceDataset
from mmpo.toyworld.data import ground_truth_pairs, sft_rows
from mmpo.toyworld.model import build_processor, build_tiny_vlm, train_tokenizer
from mmpo.toyworld.scenes import WorldConfig, sample_scenes
from mmpo.training.config import AdavipConfig, AspoConfig, DamaConfig, Methods, PreferenceConfig
from mmpo.training.sft import train_sft
from mmpo.training.trainer import PreferenceTrainer


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step. transformers 5 collates the batch before `on_step_begin`, so
    collation is not included."""

    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kw):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._start)


def median_step(times: list[float], warmup: int = 3) -> float:
    return statistics.median(times[warmup:] if len(times) > warmup + 2 else times)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    ns = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tmp = Path(tempfile.mkdtemp(prefix="mmpo-bench-"))
    world = WorldConfig(seed=0)
    scenes = sample_scenes(world, ns.batch_size * ns.steps, prefix="bench")
    records = ground_truth_pairs(scenes, world, tmp / "images")
    tokenizer = train_tokenizer()
    processor = build_processor(tokenizer)
    common = dict(max_steps=ns.steps, per_device_train_batch_size=ns.batch_size, per_device_eval_batch_size=32,
                  learning_rate=1e-4, logging_steps=10_000, save_strategy="no", disable_tqdm=True,
                  use_cpu=not torch.cuda.is_available(), seed=0, report_to="none")
    results: dict[str, float] = {}

    timer = StepTimer()
    sft_args = TrainingArguments(output_dir=str(tmp / "sft"), remove_unused_columns=False, **common)
    train_sft(build_tiny_vlm(tokenizer), processor, sft_rows(scenes, world)[: ns.batch_size * ns.steps], sft_args,
              callbacks=[timer])
    results["SFT"] = median_step(timer.times)

    (tmp / "vision").mkdir()
    for scene, record in zip(scenes, records, strict=True):
        scene.render(without=0).save(tmp / "vision" / f"{scene.id}.png")
        record.chosen_sentence_scores = [0.1 * (i % 3) for i in range(len(scene.objects))]
        record.data_alpha = 0.5 + 0.5 * (len(scene.objects) % 3)
        record.rejected_image = str(tmp / "vision" / f"{scene.id}.png")
    dataset = PreferenceDataset(records)
    runs = (  # (row, reference, methods, prefix sharing)
        ("DPO, one row per response", "copy", Methods(), False),
        ("DPO, live reference", "copy", Methods(), True),
        ("DPO, precomputed reference", "precomputed", Methods(), True),
        ("ASPO", "copy", Methods(aspo=AspoConfig(enabled=True)), True),
        ("DAMA", "copy", Methods(dama=DamaConfig(data=True, model=True)), True),
        ("AdaViP, one row per response", "copy", Methods(adavip=AdavipConfig(enabled=True)), False),
        ("AdaViP", "copy", Methods(adavip=AdavipConfig(enabled=True)), True),
    )
    for name, reference, methods, sharing in runs:
        timer = StepTimer()
        args = PreferenceConfig(output_dir=str(tmp / name.replace(" ", "_").replace(",", "")), reference=reference,
                                sft_weight=1.0, prefix_sharing=sharing, **common)
        t0 = time.perf_counter()
        trainer = PreferenceTrainer(build_tiny_vlm(tokenizer), args, processor, dataset, methods=methods,
                                    callbacks=[timer])
        setup = time.perf_counter() - t0
        trainer.train()
        results[name] = median_step(timer.times)
        if reference == "precomputed":
            print(f"one-off reference pass over {len(dataset)} records: {setup:.2f} s")

    base = results["DPO, live reference"]
    print(f"\ntiny LLaVA ({sum(p.numel() for p in build_tiny_vlm(tokenizer).parameters()) / 1e6:.2f}M params), "
          f"batch {ns.batch_size} records, median of {ns.steps} steps, {torch.get_num_threads()} threads")
    print(f"| {'row':<28} | {'s/step':>7} | {'vs DPO live ref':>15} |")
    print(f"| {'-' * 28} | {'-' * 7}:| {'-' * 15}:|")
    for name, seconds in results.items():
        print(f"| {name:<28} | {seconds:7.3f} | {seconds / base:14.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
