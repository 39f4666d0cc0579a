"""mmpo training throughput at LLaVA-1.5-7B's exact shape on one GPU: LoRA and full tuning, unshared vs prefix-shared.

    python benchmarks/gpu_throughput.py [--batch-size 4] [--steps 4] [--warmup 2] [--configs all]
                                        [--peak-flops F] [--out benchmarks/results/gpu_throughput.json]
    python benchmarks/gpu_throughput.py --smoke --out /tmp/gpu_throughput-smoke.json   # CPU, seconds

The model is random-init with LLaVA-1.5-7B's exact config (``llava15_shape.build_llava15("7b",
torch.bfloat16, device="cuda")``: CLIP ViT-L/14-336, 2-layer GELU projector, Llama-2-7B, 7.06B
parameters), built on the GPU (nothing is downloaded). Records have LLaVA-1.5 preference-data
lengths: a random 336x336 image (576 image tokens), a prompt of about 50 tokens, chosen and
rejected responses of 100-200 tokens each. DPO (sigmoid, beta 0.1), bf16 weights and autocast,
AdamW; per-device batch ``--batch-size`` records (the papers' per-device batches are 2-8).

Configs (``--configs``, comma-separated, default all four):

* ``full-unshared`` / ``full-shared``: full fine-tuning, frozen-copy reference (``reference="copy"``),
  gradient checkpointing on; one row per response vs one prefix-shared row per record.
* ``lora-unshared`` / ``lora-shared``: LoRA as in LLaVA-1.5's LoRA fine-tuning (peft, r=128,
  alpha=256, dropout 0.05, on every linear layer of the language model; vision tower, projector
  and LM head frozen), adapter-off reference (``reference="adapter"``); gradient checkpointing off
  (``--lora-checkpointing`` turns it on).

Full tuning runs first, on the same weights the LoRA configs then wrap (the weights are random, so
what full tuning did to them does not matter for timing). A config that runs out of GPU memory is
reported as such and the run goes on (full tuning keeps policy, frozen reference, gradients and two
AdamW states, about 70 GB in bf16, before activations: it fits an H100/H200, it can be tight at 80 GB).

Printed per config: step time (mean over ``--steps`` steps after ``--warmup``; the median is in the
JSON), records/s,
tokens/s (real, unpadded tokens the policy processes per second: prompt and image tokens count once
per row, so prefix sharing processes fewer tokens for the same records), peak memory
(``torch.cuda.max_memory_allocated``) and MFU.

FLOPs model (model FLOPs, as in the PaLM MFU definition): per step
``F = 6 * N * T`` for the trained forward+backward plus ``2 * N * T`` for the reference forward,
summed over the three parts, each with the tokens it actually runs on:

* decoder: ``N`` = the Llama decoder's parameters without the embedding table (6.48B), ``T`` = the
  real (unpadded) tokens of the batch's rows;
* LM head: ``N`` = 32064 x 4096, ``T`` = the response tokens (mmpo runs the head only there);
* vision tower + projector: ``N`` = their parameters (0.32B), ``T`` = 577 patch positions per image
  row the vision tower runs (each row's image in the unshared layout, once per record shared).

Attention score/value FLOPs (``4 * layers * T^2 * hidden`` per row) are excluded, as are the
recomputation of gradient checkpointing and LoRA's own (small) adapter FLOPs. For LoRA the 6NT
convention is kept although the frozen weights need no weight gradients (the hardware does about
``4 N T``), so LoRA's MFU is in the same units as full tuning's, not a hardware utilisation.
The peak is the GPU's dense bf16 FLOP/s from a table by device name (H100/H200 SXM 989e12, A100
312e12, L40S 362e12, RTX 4090 165e12); ``--peak-flops`` overrides it (e.g. 756e12 for an H100 PCIe).

Time: the default run (4 configs, batch 4, 2 warm-up + 4 measured steps each) is estimated at 2-4
minutes on an H100-class GPU (about 1-2 s per step, plus building the 7B model; not yet measured: it
was written without a GPU), well inside 8 minutes; ``--smoke`` runs the
same code path on the CPU with ``build_llava15("cpu")`` in float32, batch 2, for 2 steps per config.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))

CONFIGS = ("full-unshared", "full-shared", "lora-unshared", "lora-shared")
#: Dense bf16 peak FLOP/s by a substring of torch.cuda.get_device_name() (checked in this order).
PEAK_FLOPS = (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12), ("4090", 165e12))
LORA = dict(r=128, lora_alpha=256, lora_dropout=0.05)
PATCH_POSITIONS = 577  # 24 x 24 patches + CLS
CHECKPOINTING = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                 else "gradient_checkpointing")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step, from the end of the previous one (collation included)."""

    def __init__(self):
        self.times: list[float] = []
        self._last = None

    def on_train_begin(self, args, state, control, **kwargs):
        sync()
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        sync()
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now


class CountingCollator:
    """The trainer's collator, recording what each batch holds: real tokens, response tokens, image rows."""

    def __init__(self, collator):
        self.collator = collator
        self.batches: list[dict[str, int]] = []

    def __getattr__(self, name):
        return getattr(self.collator, name)

    def __call__(self, items):
        batch = self.collator(items)
        inputs = batch["model_inputs"]
        if "segment_ids" in batch:
            real = int((batch["segment_ids"] >= 0).sum())
        else:
            real = int(inputs["attention_mask"].sum())
        self.batches.append({"records": len(items), "tokens": real,
                             "response_tokens": int(batch["response_length"].sum()),
                             "image_rows": int(inputs["pixel_values"].shape[0]) if "pixel_values" in inputs else 0,
                             "rows": int(inputs["input_ids"].shape[0]), "width": int(inputs["input_ids"].shape[1])})
        return batch


def part_parameters(model) -> dict[str, int]:
    """Parameters of the decoder (without embeddings), the LM head and the vision tower + projector."""
    decoder = model.get_decoder()
    embed = model.get_input_embeddings()
    head = model.get_output_embeddings()
    n_decoder = sum(p.numel() for p in decoder.parameters()) - sum(p.numel() for p in embed.parameters())
    n_head = sum(p.numel() for p in head.parameters())
    n_total = sum(p.numel() for p in model.parameters())
    n_embed = sum(p.numel() for p in embed.parameters())
    return {"decoder": n_decoder, "lm_head": n_head, "vision_projector": n_total - n_decoder - n_head - n_embed,
            "embedding": n_embed, "total": n_total}


def step_flops(params: dict[str, int], batch: dict[str, int]) -> float:
    """Model FLOPs of one DPO step: 6NT trained forward+backward + 2NT reference forward, per part."""
    forward = 2 * (params["decoder"] * batch["tokens"] + params["lm_head"] * batch["response_tokens"]
                   + params["vision_projector"] * PATCH_POSITIONS * batch["image_rows"])
    return 3 * forward + forward


def peak_flops(device_name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((value for key, value in PEAK_FLOPS if key.lower() in device_name.lower()), None)


def run_config(name: str, model, processor, records, ns, tmp: Path, device: str,
               params: dict[str, int]) -> dict[str, Any]:
    """One config's steps; ``params`` are the plain model's (LoRA's adapter parameters are not counted)."""
    from mmpo.data.collator import PreferenceDataset
    from mmpo.training.config import PreferenceConfig
    from mmpo.training.policy import language_model_lora_targets
    from mmpo.training.trainer import PreferenceTrainer

    mode, layout = name.split("-")
    lora = mode == "lora"
    checkpointing = (not lora) or ns.lora_checkpointing
    policy = model
    if lora:
        from peft import LoraConfig, get_peft_model

        policy = get_peft_model(model, LoraConfig(target_modules=language_model_lora_targets(model), **LORA))
        if checkpointing:
            policy.enable_input_require_grads()
    else:
        model.requires_grad_(True)
    if not checkpointing and hasattr(model, "gradient_checkpointing_disable"):
        model.gradient_checkpointing_disable()
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    cuda = device == "cuda"
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else 0
    args = PreferenceConfig(
        output_dir=str(tmp / name), max_steps=ns.warmup + ns.steps, per_device_train_batch_size=ns.batch_size,
        learning_rate=1e-6, lr_scheduler_type="constant", weight_decay=0.0, optim="adamw_torch", seed=0,
        bf16=cuda, use_cpu=not cuda, reference="adapter" if lora else "copy", prefix_sharing=layout == "shared",
        beta=0.1, max_length=None, logging_steps=10**6, save_strategy="no", disable_tqdm=True, report_to=[],
        dataloader_num_workers=0, preflight=False, on_nonfinite="skip",
        **{CHECKPOINTING: checkpointing})
    timer = StepTimer()
    trainer = PreferenceTrainer(policy, args, processor, PreferenceDataset(records), callbacks=[timer])
    trainer.remove_callback(PrinterCallback)
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    result: dict[str, Any] = {"config": name, "trainable_parameters": trainable, "gradient_checkpointing":
                              checkpointing, "reference": args.reference}
    try:
        trainer.train()
    except torch.cuda.OutOfMemoryError as error:
        result["error"] = f"out of memory: {str(error).splitlines()[0]}"
    else:
        measured = slice(ns.warmup, ns.warmup + ns.steps)
        times, batches = timer.times[measured], counter.batches[measured]
        seconds = sum(times)
        flops = sum(step_flops(params, b) for b in batches)
        result.update({
            # the mean, so that step time, records/s, tokens/s and TFLOP/s all come from the same seconds
            "step_s": seconds / len(times), "step_median_s": statistics.median(times), "step_times": times,
            "records_per_s": sum(b["records"] for b in batches) / seconds,
            "tokens_per_s": sum(b["tokens"] for b in batches) / seconds,
            "tokens_per_step": statistics.mean(b["tokens"] for b in batches),
            "response_tokens_per_step": statistics.mean(b["response_tokens"] for b in batches),
            "rows_x_width": [(b["rows"], b["width"]) for b in batches],
            "model_tflops_per_step": flops / len(batches) / 1e12, "achieved_tflops": flops / seconds / 1e12,
            "nonfinite_skipped_batches": trainer.nonfinite_skipped,
        })
        if cuda:
            result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            result["memory_before_gib"] = before / 2**30
    finally:
        del trainer, counter
        if lora:
            policy.unload()  # the LoRA layers out again: the next config starts from the plain model
        del policy
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return result


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=None, help="records per device batch (default 4; smoke 2)")
    p.add_argument("--steps", type=int, default=None, help="measured steps per config (default 4; smoke 2)")
    p.add_argument("--warmup", type=int, default=None, help="discarded steps per config (default 2; smoke 0)")
    p.add_argument("--configs", default="all", help=f"comma-separated subset of {', '.join(CONFIGS)}")
    p.add_argument("--peak-flops", type=float, default=None, help="the GPU's dense bf16 peak FLOP/s")
    p.add_argument("--lora-checkpointing", action="store_true", help="gradient checkpointing for LoRA too")
    p.add_argument("--smoke", action="store_true", help="the same code path on CPU, small model, float32")
    p.add_argument("--out", default=None, help="results JSON (default benchmarks/results/gpu_throughput.json; "
                                                "smoke: gpu_throughput-smoke.json there)")
    ns = p.parse_args(argv)
    ns.batch_size = ns.batch_size or (2 if ns.smoke else 4)
    ns.steps = ns.steps or (2 if ns.smoke else 4)
    ns.warmup = (0 if ns.smoke else 2) if ns.warmup is None else ns.warmup
    names = list(CONFIGS) if ns.configs == "all" else [c.strip() for c in ns.configs.split(",")]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        p.error(f"unknown configs {unknown}; configs are {', '.join(CONFIGS)}")
    names = [c for c in CONFIGS if c in names]  # full tuning before LoRA (LoRA unloads to the same weights)
    results_dir = Path(__file__).resolve().parent / "results"
    out = Path(ns.out or results_dir / ("gpu_throughput-smoke.json" if ns.smoke else "gpu_throughput.json"))

    from llava15_shape import build_llava15, records, token_counts

    if ns.smoke:
        device, dtype, size = "cpu", torch.float32, "cpu"
    else:
        if not torch.cuda.is_available():
            p.error("no CUDA device: run with --smoke to check the code path on the CPU")
        device, dtype, size = "cuda", torch.bfloat16, "7b"
    device_name = torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or "cpu")
    peak = peak_flops(device_name, ns.peak_flops) if device == "cuda" else ns.peak_flops
    start = time.perf_counter()
    model, processor = build_llava15(size, dtype, seed=0, device=device)
    built_s = time.perf_counter() - start
    params = part_parameters(model)
    recs = records(ns.batch_size * (ns.warmup + ns.steps), seed=0)
    counts = token_counts(processor, recs)
    print(f"{device_name}: LLaVA-1.5 shape '{size}', {params['total'] / 1e9:.3f}B parameters (decoder "
          f"{params['decoder'] / 1e9:.3f}B, LM head {params['lm_head'] / 1e6:.0f}M, vision + projector "
          f"{params['vision_projector'] / 1e6:.0f}M), {dtype}, built in {built_s:.1f} s; batch {ns.batch_size}, "
          f"{ns.warmup} warm-up + {ns.steps} measured steps; peak {peak or float('nan'):.3g} FLOP/s")
    print("token counts (min / max / mean): " + "; ".join(f"{k} {v[0]} / {v[1]} / {v[2]:.1f}"
                                                         for k, v in counts.items()))
    tmp = Path(tempfile.mkdtemp(prefix="mmpo-gpu-throughput-"))
    results = []
    for name in names:
        t0 = time.perf_counter()
        result = run_config(name, model, processor, recs, ns, tmp, device, params)
        result["wall_s"] = time.perf_counter() - t0
        if peak and "achieved_tflops" in result:
            result["mfu"] = result["achieved_tflops"] * 1e12 / peak
        results.append(result)
        print(f"  {name}: {result.get('error') or 'done'} ({result['wall_s']:.0f} s)", flush=True)

    print(f"\n| {'config':<14} | {'s/step':>7} | {'records/s':>9} | {'tokens/s':>9} | {'tokens/step':>11} | "
          f"{'peak GiB':>8} | {'TFLOP/s':>7} | {'MFU':>6} |")
    print(f"| {'-' * 14} | {'-' * 6}: | {'-' * 8}: | {'-' * 8}: | {'-' * 10}: | {'-' * 7}: | {'-' * 6}: | {'-' * 5}: |")
    for r in results:
        if "error" in r:
            print(f"| {r['config']:<14} | {r['error']} |")
            continue
        mem = f"{r['peak_memory_gib']:.1f}" if "peak_memory_gib" in r else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
        print(f"| {r['config']:<14} | {r['step_s']:7.3f} | {r['records_per_s']:9.2f} | {r['tokens_per_s']:9.0f} | "
              f"{r['tokens_per_step']:11.0f} | {mem:>8} | {r['achieved_tflops']:7.3g} | {mfu:>6} |")
    by = {r["config"]: r for r in results if "error" not in r}
    for mode in ("full", "lora"):
        a, b = by.get(f"{mode}-shared"), by.get(f"{mode}-unshared")
        if a and b:
            print(f"{mode}: prefix-shared / unshared step time {a['step_s'] / b['step_s']:.2f}x, "
                  f"records/s {a['records_per_s'] / b['records_per_s']:.2f}x")
    payload = {
        "device": device_name, "peak_flops": peak, "size": size, "dtype": str(dtype), "parameters": params,
        "token_counts": counts, "build_s": built_s, "results": results,
        "settings": {"batch_size": ns.batch_size, "steps": ns.steps, "warmup": ns.warmup, "lora": LORA,
                     "lora_checkpointing": ns.lora_checkpointing, "smoke": ns.smoke, "beta": 0.1,
                     "optimizer": "adamw_torch", "learning_rate": 1e-6},
        "machine": {"torch": torch.__version__, "cuda": torch.version.cuda, "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version()},
        "flops_model": "6*N*T trained + 2*N*T reference per part (decoder: real tokens; LM head: response "
                       "tokens; vision tower + projector: 577 positions per image row); attention excluded",
        "elapsed_s": time.perf_counter() - start,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {out} ({payload['elapsed_s']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
