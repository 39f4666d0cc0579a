"""GPU memory and step time of a LLaVA-1.5-7B-shaped DPO full fine-tune under each shipped engine.

    bash benchmarks/gpu_scale.sh        # ddp, fsdp and zero3 on every visible GPU, then the table
    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 8 benchmarks/gpu_scale.py \\
        --engine-label fsdp --steps 5 --warmup 2 --out benchmarks/results/gpu_scale-fsdp.json
    python benchmarks/gpu_scale.py --smoke --out /tmp/gpu_scale-smoke.json   # CPU, no launcher, < 1 minute
    python benchmarks/gpu_scale.py --table benchmarks/results/gpu_scale-*.json   # the table of earlier runs

One run is one engine: the script is started by ``accelerate launch`` with one of
``configs/accelerate/*.yaml``, and the engine is whatever that config sets up (DDP, FSDP2, DeepSpeed
ZeRO-2/3); ``--engine-label`` only names the run. The training is the same under every engine:

* the model is random-init with LLaVA-1.5-7B's exact architecture (``llava15_shape.build_llava15("7b",
  torch.bfloat16)``: CLIP ViT-L/14-336, 2-layer projector, Llama-2-7B; 7.06B parameters; nothing is
  downloaded), built on each process's GPU *after* the ``PreferenceConfig`` exists: under ZeRO-3 the
  config registers DeepSpeed's settings with transformers, whose ``_from_config`` then builds the model
  inside ``deepspeed.zero.Init``, already partitioned (the JSON says whether that happened);
* full fine-tuning with DPO (sigmoid, beta 0.1) against a frozen copy of the initial policy
  (``reference="copy"``). mmpo's ``PreferenceTrainer`` prepares that copy with the same engine as the
  policy (sharded under FSDP, a stage-3 inference engine under ZeRO-3, a plain copy on each GPU under
  DDP / ZeRO-2), so the reference's memory is part of what is compared;
* bf16, gradient checkpointing, AdamW (``adamw_torch``, lr 1e-6, constant), per-device batch 2
  (``--batch-size``) of records of LLaVA-1.5 preference-data lengths (``llava15_shape.records``: a
  336x336 image, about 50 prompt tokens, 100-200 tokens per response); ``--warmup`` steps, then
  ``--steps`` measured ones.

Measured on every process and gathered to the main one, which prints the table and writes the JSON:

* peak GPU memory (``torch.cuda.max_memory_allocated``) during the steps, counted from the start of
  training (policy and reference prepared by the engine, so optimizer states, gradients and activations
  are in it), and the peak from process start (which adds building the model, whole on every GPU except
  under ZeRO-3, and the engine's preparation); the table shows the maximum over processes of each;
* step time: wall time of each optimizer step on the main process (collation included; the processes
  synchronise every step), median over the measured steps;
* tokens/s: real (unpadded) tokens the policy processed in the measured steps, summed over processes,
  over the main process's time for those steps.

Engines differ in more than the sharding: under bf16, FSDP2 keeps fp32 master weights of the trainable
parameters (accelerate upcasts them) and DeepSpeed keeps fp32 master weights in its optimizer, while
DDP trains the bf16 weights with bf16 AdamW states. On one GPU that makes FSDP and ZeRO-3 hold about
112 GB of policy, gradients and optimizer states, plus 14 GB of reference, against about 70 GB in all
for DDP: on one GPU they are expected to need an H200 and to run out of memory on an 80 GB H100
(reported as such in the table); with several GPUs those 112 GB are divided among them.

Time (estimated, not yet measured: written without a GPU): per engine about 20-30 s of launch and
imports, 10-60 s to build the 7B model (longest under ZeRO-3's zero.Init), 10-30 s of engine
preparation, and 2 + 5 steps of 1-3 s; about 1.5-2.5 minutes an engine, 5-7 minutes for
``gpu_scale.sh``'s three on one H100/H200 (it stops an engine after ``ENGINE_TIMEOUT`` = 160 s, so
8 minutes at most). ``--smoke`` runs the same code on the CPU with ``build_llava15("cpu")`` in float32
for 2 steps, in one process with no launcher.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_throughput import CHECKPOINTING, CountingCollator, StepTimer, sync  # noqa: E402
from llava15_shape import build_llava15, records  # noqa: E402

GIB = 2**30
#: Per-process numbers gathered to the main process, in this order.
GATHERED = ("peak_steps_bytes", "peak_setup_bytes", "resident_bytes", "step_median_s", "tokens", "records")


class MemoryMarks(TrainerCallback):
    """At the start of training (the engine has prepared policy and reference): the peak so far
    (building and preparation) and what is resident; then the peak is reset, so that what is read
    at the end is the peak of the steps alone."""

    def __init__(self):
        self.setup_peak = self.resident = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            sync()
            self.setup_peak = torch.cuda.max_memory_allocated()
            self.resident = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def engine_of(accelerator) -> dict[str, Any]:
    """What the run is distributed with, as the accelerator sees it."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return {"distributed_type": str(accelerator.distributed_type.value),
            "zero_stage": None if plugin is None else int(plugin.zero_stage),
            "num_processes": accelerator.num_processes}


def write_json(path: Path, payload: dict[str, Any], unless_newer_than: float | None = None) -> None:
    """Written whole or not at all. With ``unless_newer_than`` (a ``time.time()``), a file written since
    then is kept: the first of several failing processes reports (the others often fail because of it)."""
    if unless_newer_than is not None and path.exists() and path.stat().st_mtime >= unless_newer_than:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def run(ns) -> int:
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    from mmpo.data.collator import PreferenceDataset
    from mmpo.training.config import PreferenceConfig
    from mmpo.training.trainer import PreferenceTrainer

    cuda = not ns.smoke
    if cuda and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --smoke to check the code path on the CPU")
    start, started_at = time.perf_counter(), time.time()
    label = ns.engine_label
    # The config first: it sets up the process group and, under ZeRO-3, registers the DeepSpeed config
    # with transformers, so that the model below is built inside deepspeed.zero.Init.
    args = PreferenceConfig(
        output_dir=os.path.join(tempfile.gettempdir(), f"mmpo-gpu-scale-{label}"), max_steps=ns.warmup + ns.steps,
        per_device_train_batch_size=ns.batch_size, learning_rate=1e-6, lr_scheduler_type="constant",
        weight_decay=0.0, optim="adamw_torch", seed=0, bf16=cuda, use_cpu=not cuda, reference="copy", beta=0.1,
        max_length=None, logging_steps=10**6, save_strategy="no", disable_tqdm=True, report_to=[],
        dataloader_num_workers=0, preflight=False, on_nonfinite="skip", ddp_timeout=600,
        **{CHECKPOINTING: True})
    rank, world = args.process_index, args.world_size
    size, dtype = ("7b", torch.bfloat16) if cuda else ("cpu", torch.float32)
    result: dict[str, Any] = {"engine": label, "num_processes": world, "size": size, "dtype": str(dtype),
                              "device": torch.cuda.get_device_name() if cuda else (platform.processor() or "cpu")}
    timer, marks = StepTimer(), MemoryMarks()
    try:  # out of memory above all (building, preparing or training): reported, and the next engine runs
        zero3 = is_deepspeed_zero3_enabled()
        model, processor = build_llava15(size, dtype, seed=0, device=args.device)
        built_partitioned = any(hasattr(p, "ds_id") for p in model.parameters())
        n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        result.update(parameters=n_params, built_partitioned=built_partitioned, build_s=time.perf_counter() - start)
        if rank == 0:
            print(f"{label}: {world} process(es), LLaVA-1.5 shape '{size}' ({n_params / 1e9:.3f}B parameters, "
                  f"{dtype}{', built partitioned by zero.Init' if built_partitioned else ''}) in "
                  f"{result['build_s']:.1f} s; batch {ns.batch_size} per process, {ns.warmup} warm-up + "
                  f"{ns.steps} measured steps", flush=True)
        if zero3 and not built_partitioned:
            print(f"[rank {rank}] warning: ZeRO-3 is enabled but the model was not built partitioned", flush=True)
        recs = records(ns.batch_size * (ns.warmup + ns.steps) * world, seed=0)
        trainer = PreferenceTrainer(model, args, processor, PreferenceDataset(recs), callbacks=[timer, marks])
        trainer.remove_callback(PrinterCallback)
        counter = CountingCollator(trainer.data_collator)
        trainer.data_collator = counter
        accelerator = trainer.accelerator
        result.update(engine_of(accelerator))
        t0 = time.perf_counter()
        trainer.train()
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        kind = "out of memory" if isinstance(error, torch.cuda.OutOfMemoryError) else type(error).__name__
        result["error"] = f"{kind} on process {rank}: {first}"[:300]
        print(f"[rank {rank}] {result['error']}", flush=True)
        write_json(ns.out, result, unless_newer_than=started_at)
        if world > 1:
            os._exit(1)  # the launcher then stops the other processes, which may wait in a collective
        raise
    train_s = time.perf_counter() - t0

    measured = slice(ns.warmup, ns.warmup + ns.steps)
    times, batches = timer.times[measured], counter.batches[measured]
    peak_steps = torch.cuda.max_memory_allocated() if cuda else 0
    mine = {"peak_steps_bytes": peak_steps, "peak_setup_bytes": max(marks.setup_peak, peak_steps),
            "resident_bytes": marks.resident, "step_median_s": statistics.median(times),
            "tokens": sum(b["tokens"] for b in batches), "records": sum(b["records"] for b in batches)}
    memory = (f"peak {peak_steps / GIB:.2f} GiB in the steps, {mine['peak_setup_bytes'] / GIB:.2f} GiB from "
              f"process start, {marks.resident / GIB:.2f} GiB resident after preparation; " if cuda else "")
    print(f"[rank {rank}] {memory}median step {mine['step_median_s']:.3f} s", flush=True)
    local = torch.tensor([float(mine[k]) for k in GATHERED], dtype=torch.float64, device=accelerator.device)
    table = accelerator.gather(local).reshape(world, len(GATHERED)).cpu().tolist()
    if not accelerator.is_main_process:
        return 0
    per_process = [dict(zip(GATHERED, row, strict=True)) for row in table]
    seconds = sum(times)
    result.update({
        "per_process": per_process,
        "peak_memory_gib": max(p["peak_steps_bytes"] for p in per_process) / GIB if cuda else None,
        "peak_memory_setup_gib": max(p["peak_setup_bytes"] for p in per_process) / GIB if cuda else None,
        "resident_gib": max(p["resident_bytes"] for p in per_process) / GIB if cuda else None,
        "step_median_s": statistics.median(times), "step_times": times,
        "tokens_per_s": sum(p["tokens"] for p in per_process) / seconds,
        "records_per_s": sum(p["records"] for p in per_process) / seconds,
        "train_s": train_s, "elapsed_s": time.perf_counter() - start,
        "nonfinite_skipped_batches": trainer.nonfinite_skipped,
        "settings": {"batch_size_per_process": ns.batch_size, "steps": ns.steps, "warmup": ns.warmup,
                     "reference": args.reference, "shard_reference": getattr(args, "shard_reference", None),
                     "prefix_sharing": args.prefix_sharing, "gradient_checkpointing": True, "bf16": args.bf16,
                     "optimizer": args.optim, "smoke": ns.smoke},
        "versions": {name: package_version(name) for name in
                     ("torch", "transformers", "accelerate", "deepspeed", "mmpo")} | {"cuda": torch.version.cuda},
    })
    write_json(ns.out, result)
    print_table([result])
    print(f"wrote {ns.out} ({result['elapsed_s']:.0f} s in all)")
    return 0


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_table(results: list[dict[str, Any]]) -> None:
    """One row per run: engine, processes, peak memory per GPU, median step time, tokens/s."""
    print(f"\n| {'engine':<8} | {'processes':>9} | {'peak GiB/GPU, steps':>19} | {'peak GiB/GPU, all':>17} | "
          f"{'median s/step':>13} | {'tokens/s':>9} |")
    print(f"| {'-' * 8} | {'-' * 8}: | {'-' * 18}: | {'-' * 16}: | {'-' * 12}: | {'-' * 8}: |")
    for r in results:
        processes = r.get("num_processes", "?")
        if "error" in r:
            print(f"| {r.get('engine', '?'):<8} | {processes:>9} | failed: {r['error']} |")
            continue
        print(f"| {r['engine']:<8} | {processes:>9} | {_gib(r.get('peak_memory_gib')):>19} | "
              f"{_gib(r.get('peak_memory_setup_gib')):>17} | {r['step_median_s']:13.3f} | {r['tokens_per_s']:9.0f} |")


def table(paths: list[str]) -> int:
    results = []
    for path in paths:
        try:
            results.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as error:
            results.append({"engine": Path(path).stem.removeprefix("gpu_scale-"), "error": f"no result ({error})"})
    print_table(results)
    return 0 if all("error" not in r for r in results) else 1


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine-label", default=None, help="the run's name in the table (e.g. ddp, fsdp, zero3)")
    p.add_argument("--batch-size", type=int, default=2, help="records per process and step (default 2)")
    p.add_argument("--steps", type=int, default=None, help="measured steps (default 5; smoke 2)")
    p.add_argument("--warmup", type=int, default=None, help="discarded steps first (default 2; smoke 0)")
    p.add_argument("--smoke", action="store_true", help="the same code on the CPU, small model, float32")
    p.add_argument("--out", type=Path, default=None,
                   help="results JSON (default benchmarks/results/gpu_scale-LABEL.json)")
    p.add_argument("--table", nargs="+", metavar="JSON", help="only print the table of these results")
    ns = p.parse_args(argv)
    if ns.table:
        return table(ns.table)
    ns.steps = ns.steps or (2 if ns.smoke else 5)
    ns.warmup = (0 if ns.smoke else 2) if ns.warmup is None else ns.warmup
    ns.engine_label = ns.engine_label or ("smoke" if ns.smoke else "single")
    ns.out = ns.out or Path(__file__).resolve().parent / "results" / f"gpu_scale-{ns.engine_label}.json"
    return run(ns)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
