"""Peak memory per process of 2-process FSDP2 training with the frozen-copy reference sharded
(``shard_reference: true``, the default) vs whole on every process, on CPU.

    python benchmarks/fsdp_memory.py [--steps 3] [--out benchmarks/results/fsdp_memory.json]

The model is the toy world's LLaVA with a 205M-parameter Llama text model (hidden 1024, 16 layers;
the vision tower stays tiny), float32, so that the reference copy is 0.8 GB: sharded over 2
processes it should cost about 0.4 GB per process, whole 0.8 GB. Each setting runs under
``torchrun --nproc_per_node 2`` (gloo; FSDP2 on CPU through ``mmpo.training.distributed.fsdp_on_cpu``),
DPO with AdamW, 4 records per process per step, for ``--steps`` steps.

Measured per process:

* **peak RSS in the steps**: the kernel's high-water mark (``VmHWM``) reset when the first step
  begins (``/proc/self/clear_refs``), read after the last. The policy, its gradients and AdamW
  states are sharded in both settings, so the difference between the two is the reference.
  glibc is told to serve large blocks with ``mmap`` (``MALLOC_MMAP_THRESHOLD_``) so that freed
  tensors leave the resident set instead of staying in its heap.
* **reference held**: the bytes of the reference's parameters this process holds (its local
  shards), counted exactly: the figure the RSS difference should match.
* **median step time**.

About 3-4 minutes on 2 cores. Prints a table and writes the JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_trl import proc_status_mb  # noqa: E402

GIB = 2**30


class PeakMemory(TrainerCallback):
    """Resets the peak RSS when the first step begins; keeps it and the step times."""

    def __init__(self):
        self.peak_mib, self.steps, self._start = None, [], None

    def on_step_begin(self, args, state, control, **kwargs):
        if self._start is None:
            gc.collect()
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(time.perf_counter() - self._start)
        self.peak_mib = proc_status_mb("VmHWM")


def worker(ns) -> None:
    from mmpo.data.collator import PreferenceDataset
    from mmpo.data.records import load_records
    from mmpo.toyworld.model import TinyVLMConfig, build_processor, train_tokenizer
    from mmpo.training import distributed
    from mmpo.training.config import PreferenceConfig
    from mmpo.training.trainer import PreferenceTrainer

    torch.set_num_threads(1)
    work = Path(ns.work)
    records = load_records(work / "train.jsonl").records
    tokenizer = train_tokenizer()
    args = PreferenceConfig(
        output_dir=str(work / f"trainer-{ns.shard_reference}"), max_steps=ns.steps, per_device_train_batch_size=4,
        learning_rate=1e-5, logging_steps=1, save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
        report_to="none", reference="copy", shard_reference=ns.shard_reference == "true",
        fsdp=True, fsdp_config={"version": 2, "reshard_after_forward": True})
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(work / "checkpoint")
    peak = PeakMemory()
    with distributed.fsdp_on_cpu():
        trainer = PreferenceTrainer(model, args, build_processor(tokenizer, TinyVLMConfig()),
                                    PreferenceDataset(records), callbacks=[peak])
        del model
        trainer.train()
    reference_bytes = sum(distributed.local_shard(p).numel() * p.element_size()
                          for p in trainer.reference.model.parameters())
    mine = {"rank": trainer.accelerator.process_index, "peak_gib": peak.peak_mib / 1024,
            "reference_gib": reference_bytes / GIB, "median_step_s": statistics.median(peak.steps[1:] or peak.steps)}
    from accelerate.utils import gather_object

    everyone = gather_object([mine])
    if trainer.is_world_process_zero():
        Path(ns.result).write_text(json.dumps(everyone))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/fsdp_memory.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--shard-reference", dest="shard_reference", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.worker:
        worker(ns)
        return 0

    from mmpo.data.records import save_records
    from mmpo.toyworld.data import ground_truth_pairs
    from mmpo.toyworld.model import TinyVLMConfig, build_tiny_vlm, train_tokenizer
    from mmpo.toyworld.scenes import WorldConfig, sample_scenes

    config = TinyVLMConfig(text_hidden=1024, text_layers=16, text_heads=16, text_intermediate=2816)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        world = WorldConfig(seed=3)
        save_records(ground_truth_pairs(sample_scenes(world, 8 * ns.steps, prefix="mem"), world, work / "images"), work / "train.jsonl")
        model = build_tiny_vlm(train_tokenizer(), config, seed=0)
        n_params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(work / "checkpoint")
        del model
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "1048576"}
        results = {}
        for shard in ("true", "false"):
            result = work / f"result-{shard}.json"
            command = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc_per_node", "2",
                       "--master_port", str(free_port()), __file__, "--worker", "--work", str(work),
                       "--shard-reference", shard, "--result", str(result), "--steps", str(ns.steps)]
            started = time.perf_counter()
            subprocess.run(command, check=True, env=env)
            results[shard] = {"processes": json.loads(result.read_text()), "wall_s": time.perf_counter() - started}

    print(f"\n2-process FSDP2 on CPU, {n_params / 1e6:.0f}M parameters in float32 "
          f"({n_params * 4 / GIB:.2f} GiB per whole copy), DPO, {ns.steps} steps\n")
    print("| frozen reference | process | peak RSS in the steps, GiB | reference held, GiB | median s/step |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for shard, label in (("true", "sharded (default)"), ("false", "whole on every process")):
        for p in sorted(results[shard]["processes"], key=lambda p: p["rank"]):
            print(f"| {label} | {p['rank']} | {p['peak_gib']:.2f} | {p['reference_gib']:.2f} | {p['median_step_s']:.2f} |")
    saved = [max(a["peak_gib"] for a in results["false"]["processes"]) - max(a["peak_gib"] for a in results["true"]["processes"])]
    print(f"\nsharding the reference lowers the per-process peak by {saved[0]:.2f} GiB "
          f"(the reference's half: {n_params * 4 / GIB / 2:.2f} GiB)")
    out = {"parameters": n_params, "steps": ns.steps, "results": results, "peak_saved_gib": saved[0]}
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {ns.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
