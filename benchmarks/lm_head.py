"""The LM head's peak memory and time at vocabularies 32,064 and 151,936: today (full logits) vs chunked.

    python benchmarks/lm_head.py [--vocab 32064 151936] [--parts step head] [--steps 2] [--batch-size 8]
                                 [--response-tokens 300] [--head-reps 3] [--json PATH]

The model is ``llava15_shape.build_llava15("cpu", vocab_size=V)``: LLaVA-1.5's image geometry (576
image tokens), a small Llama (hidden 128), float32, on the CPU, with a vocabulary of V (LLaVA-1.5's
32,064, or Qwen2-VL's 151,936; the tokenizer's ids are valid in both). Records: ``--batch-size``
records per batch with chosen and rejected responses of about ``--response-tokens`` tokens each
(+-7%), prefix-shared (the default layout). "today" is ``lm_head_chunk_size=0``: the model's own
logits ``(N, K, V)`` at every kept position (``logits_to_keep`` from the first response's
predictor); "chunked" is ``lm_head_chunk_size=256`` (the default): the head only at the positions
that predict a response token, 256 at a time, recomputed in the backward.

Two measurements, each configuration in a fresh subprocess (so no peak carries over):

* **step**: the whole DPO step, ``--steps`` optimizer steps of ``PreferenceTrainer`` (AdamW, a live
  frozen-copy reference: ``reference="copy"``, the default) on fresh batches (``StepTimer``:
  collation not included). Reported: the process's peak RSS (``VmHWM``, model building and both models' weights included,
  as ``mmpo train`` would be measured), the peak above the RSS once the trainer was built, and the
  median step time of the steps after the first (the first when there is one step). The trainer's
  reference scores with the same ``lm_head_chunk_size`` as the policy, so "today" materialises the
  full logits in both passes. The issue measured 9.8 GB for today at 151,936 through
  ``mmpo train``; the target for chunked is under a quarter of that.
* **head**: the head alone. The shapes come from the collated first batch: today's path gets random
  hidden states ``(N, K, H)`` (rows x kept positions) and runs ``head`` (``output_head(model)``),
  then :func:`mmpo.forward.gathered_logprobs` at the batch's response positions with random
  targets; the chunked path gets random hidden states of the response positions only ``(M, H)``
  and runs :func:`mmpo.lm_head.chunked_logprobs` (chunk 256). Forward + backward of the sum (into
  the hidden states and the head's weight): the median time of ``--head-reps`` passes after one
  warm-up, then the peak RSS increase of one more pass over the RSS before it (glibc told to serve
  blocks of 1 MiB and more with mmap and its heap trimmed first, so that freed tensors leave the
  resident set, then ``VmHWM`` reset through ``/proc/self/clear_refs``; the timed passes run under
  glibc's default settings).
  Targets: chunked/today memory at most 1/8, time at most 1.1x.

Times: wall-clock, and this process's CPU time (all its threads; it moves less when other
processes share the cores). Not a test: machines are noisy, so nothing asserts a time; the
ratios, measured in one run, are what to compare. On 2 CPU cores the default run takes about 6
minutes: a step subprocess takes 30-70 s, a head subprocess 20-60 s. Today's path at 151,936 needs
about 16 GB of free memory (its step and its head alone both peak there); ``--vocab 32064`` alone
needs under 5 GB.
Output: a Markdown table per measurement, and with ``--json PATH`` the numbers.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from packing import failed, finish, ratio, release_freed_memory  # noqa: E402
from step_time import StepTimer  # noqa: E402
from vs_trl import proc_status_mb  # noqa: E402

MARK = "LM_HEAD_JSON "
CHUNK = 256
PATHS = {0: "today (full logits)", CHUNK: f"chunked ({CHUNK})"}


def make_records(n: int, response_tokens: int, seed: int = 0) -> list:
    from llava15_shape import records

    spread = max(1, response_tokens * 7 // 100)
    return records(n, seed=seed, response_words=(response_tokens - spread, response_tokens + spread))


# ------------------------------------------------------------------------------------------ the DPO step
class CpuStepTimer(StepTimer):
    """``StepTimer``'s wall times, and this process's CPU time of each step (all threads) in ``cpu``."""

    def __init__(self):
        super().__init__()
        self.cpu: list[float] = []
        self._cpu = 0.0

    def on_step_begin(self, args, state, control, **kw):
        self._cpu = time.process_time()
        super().on_step_begin(args, state, control, **kw)

    def on_step_end(self, args, state, control, **kw):
        super().on_step_end(args, state, control, **kw)
        self.cpu.append(time.process_time() - self._cpu)


def run_step(spec: dict[str, Any]) -> dict[str, Any]:
    from llava15_shape import build_llava15
    from transformers.trainer_callback import PrinterCallback

    from mmpo.data.collator import PreferenceDataset
    from mmpo.training.config import PreferenceConfig
    from mmpo.training.trainer import PreferenceTrainer

    recs = make_records(spec["batch_size"] * spec["steps"], spec["response_tokens"])
    model, processor = build_llava15("cpu", seed=0, vocab_size=spec["vocab"])
    args = PreferenceConfig(
        output_dir=tempfile.mkdtemp(prefix="mmpo-lm-head-"), max_steps=spec["steps"],
        per_device_train_batch_size=spec["batch_size"], learning_rate=1e-6, lr_scheduler_type="constant",
        optim="adamw_torch", logging_steps=10**6, save_strategy="no", disable_tqdm=True, report_to=[], seed=0,
        use_cpu=True, dataloader_num_workers=0, reference="copy", preflight=False, max_length=None,
        lm_head_chunk_size=spec["chunk"])
    timer = CpuStepTimer()
    trainer = PreferenceTrainer(model, args, processor, PreferenceDataset(recs), callbacks=[timer])
    trainer.remove_callback(PrinterCallback)
    del model
    gc.collect()
    built = proc_status_mb("VmRSS")
    first = trainer.data_collator([trainer.train_dataset[i] for i in range(spec["batch_size"])])
    trainer.train()
    peak = proc_status_mb("VmHWM")
    times, cpu = timer.times[1:] or timer.times, timer.cpu[1:] or timer.cpu
    ids = first["model_inputs"]["input_ids"]
    return {**spec, "rows": ids.shape[0], "width": ids.shape[1],
            "kept_positions": ids.shape[0] * (ids.shape[1] - int(first.get("logits_from", 0))),
            "response_positions": int(first["response_length"].sum()), "step_times": timer.times,
            "median_s": statistics.median(times), "cpu_times": timer.cpu, "median_cpu_s": statistics.median(cpu),
            "built_rss_mb": built, "peak_rss_mb": peak,
            "above_built_mb": peak - built, "threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------ the head alone
def run_head(spec: dict[str, Any]) -> dict[str, Any]:
    from llava15_shape import build_llava15

    from mmpo.data.collator import PreferenceCollator, RowEncoder
    from mmpo.forward import gathered_logprobs
    from mmpo.lm_head import chunked_logprobs, output_head

    torch.manual_seed(0)
    model, processor = build_llava15("cpu", seed=0, vocab_size=spec["vocab"])
    head = output_head(model)
    H, V = head.in_features, head.out_features
    recs = make_records(spec["batch_size"], spec["response_tokens"])
    batch = PreferenceCollator(RowEncoder(processor), prefix_sharing=True)(
        [{"record": r, "index": i} for i, r in enumerate(recs)])
    N, T = batch["model_inputs"]["input_ids"].shape
    K = T - int(batch.get("logits_from", 0))
    lengths = batch["response_length"]  # (R,)
    L = int(lengths.max())
    mask = torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)  # (R, L)
    rows = batch["response_row"]
    positions = (batch["response_logit_index"][:, :L] - (T - K)).clamp(0, K - 1)  # (R, L)
    targets = torch.randint(V, mask.shape)  # (R, L)
    M = int(mask.sum())
    if spec["chunk"]:
        hidden = torch.randn(M, H, requires_grad=True)
        flat = targets[mask]

        def run() -> None:
            chunked_logprobs(head, hidden, flat, spec["chunk"]).sum().backward()
    else:
        hidden = torch.randn(N, K, H, requires_grad=True)

        def run() -> None:
            gathered_logprobs(head(hidden), rows, positions, targets, mask).sum().backward()

    def timed() -> tuple[float, float]:
        hidden.grad, head.weight.grad = None, None
        start, cpu = time.perf_counter(), time.process_time()
        run()
        return time.perf_counter() - start, time.process_time() - cpu

    timed()  # warm-up
    times, cpu_times = zip(*[timed() for _ in range(spec["reps"])], strict=True)  # glibc's default settings
    hidden.grad, head.weight.grad = None, None
    gc.collect()
    release_freed_memory()
    before = proc_status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the RSS now
    timed()
    peak = proc_status_mb("VmHWM")
    return {**spec, "hidden_shape": list(hidden.shape), "positions": hidden.shape[0] * (K if not spec["chunk"] else 1),
            "rows": N, "kept": K, "response_positions": M, "hidden_size": H, "times": times,
            "median_s": statistics.median(times), "cpu_times": cpu_times, "median_cpu_s": statistics.median(cpu_times), "rss_before_mb": before, "peak_rss_mb": peak,
            "increase_mb": peak - before, "threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------ the run
def measure(spec: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith(MARK)), None)
    label = f"{spec['part']}, vocabulary {spec['vocab']}, {PATHS.get(spec['chunk'], spec['chunk'])}"
    if proc.returncode != 0 or line is None:
        print(f"  {label}: subprocess failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
        return {**spec, "error": proc.stderr[-3000:] or f"rc {proc.returncode}"}
    result = json.loads(line[len(MARK):])
    memory = result.get("peak_rss_mb") if spec["part"] == "step" else result.get("increase_mb")
    print(f"  {label}: {result['median_s']:.2f} s, {memory:.0f} MB ({time.perf_counter() - started:.0f} s)",
          flush=True)
    return result


def against_today(results: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Each result that ran, with today's (full logits) result of its vocabulary, the ratios' base
    (empty when that one failed); a result that failed is printed as a table row instead."""
    today = {r["vocab"]: r for r in results if r["chunk"] == 0 and "error" not in r}
    for r in results:
        if "error" in r:
            print(f"| {r['vocab']:>10} | {PATHS[r['chunk']]:<19} | failed: {failed(r)} |")
            continue
        yield r, today.get(r["vocab"], {})


def step_table(results: list[dict[str, Any]]) -> None:
    print("\n## the whole DPO step (PreferenceTrainer, live frozen-copy reference, AdamW)\n")
    print(f"| {'vocabulary':>10} | {'LM head':<19} | {'rows x width':>12} | {'head positions':>14} | {'s/step':>6} | "
          f"{'time vs today':>13} | {'CPU s/step':>10} | {'CPU vs today':>12} | {'peak RSS MB':>11} | "
          f"{'above built MB':>14} | {'peak vs today':>13} |")
    print(f"| {'-' * 9}: | {'-' * 19} | {'-' * 11}: | {'-' * 13}: | {'-' * 5}: | {'-' * 12}: | {'-' * 9}: | "
          f"{'-' * 11}: | {'-' * 10}: | {'-' * 13}: | {'-' * 12}: |")
    for r, base in against_today(results):
        positions = r["kept_positions"] if r["chunk"] == 0 else r["response_positions"]
        print(f"| {r['vocab']:>10} | {PATHS[r['chunk']]:<19} | {r['rows']:>4} x {r['width']:<5} | {positions:>14} | "
              f"{r['median_s']:6.2f} | {ratio(r['median_s'], base.get('median_s')):>13} | {r['median_cpu_s']:10.2f} | "
              f"{ratio(r['median_cpu_s'], base.get('median_cpu_s')):>12} | {r['peak_rss_mb']:11.0f} | "
              f"{r['above_built_mb']:14.0f} | {ratio(r['peak_rss_mb'], base.get('peak_rss_mb')):>13} |")
    for r in results:
        if r["chunk"] and r["vocab"] == 151936 and "error" not in r:
            print(f"target at 151,936: chunked peak RSS under a quarter of the issue's 9.8 GB (2509 MB): "
                  f"{r['peak_rss_mb']:.0f} MB -> {'met' if r['peak_rss_mb'] < 9.8 * 1024 / 4 else 'not met'}")


def head_table(results: list[dict[str, Any]]) -> None:
    print("\n## the head alone (forward + backward, random hidden states)\n")
    print(f"| {'vocabulary':>10} | {'LM head':<19} | {'hidden states':>15} | {'s':>6} | {'time vs today':>13} | "
          f"{'CPU s':>6} | {'CPU vs today':>12} | {'peak increase MB':>16} | {'memory vs today':>15} |")
    print(f"| {'-' * 9}: | {'-' * 19} | {'-' * 14}: | {'-' * 5}: | {'-' * 12}: | {'-' * 5}: | {'-' * 11}: | "
          f"{'-' * 15}: | {'-' * 14}: |")
    ran = []  # filled as the rows print, so a failed row keeps its place in the table
    for r, base in against_today(results):
        ran.append((r, base))
        shape = " x ".join(str(x) for x in r["hidden_shape"])
        print(f"| {r['vocab']:>10} | {PATHS[r['chunk']]:<19} | {shape:>15} | {r['median_s']:6.2f} | "
              f"{ratio(r['median_s'], base.get('median_s')):>13} | {r['median_cpu_s']:6.2f} | "
              f"{ratio(r['median_cpu_s'], base.get('median_cpu_s')):>12} | {r['increase_mb']:16.0f} | "
              f"{ratio(r['increase_mb'], base.get('increase_mb')):>15} |")
    for r, base in ran:
        if r["chunk"] and base:
            memory, seconds = r["increase_mb"] / base["increase_mb"], r["median_s"] / base["median_s"]
            cpu = r["median_cpu_s"] / base["median_cpu_s"]
            print(f"targets at {r['vocab']}: memory chunked/today {memory:.3f} <= 0.125 -> "
                  f"{'met' if memory <= 0.125 else 'not met'}; time {seconds:.2f}x <= 1.1x -> "
                  f"{'met' if seconds <= 1.1 else 'not met'} (CPU time {cpu:.2f}x)")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, nargs="+", default=[32064, 151936], help="vocabulary sizes")
    p.add_argument("--parts", nargs="+", choices=("step", "head"), default=["step", "head"])
    p.add_argument("--steps", type=int, default=2, help="DPO steps per step subprocess")
    p.add_argument("--batch-size", type=int, default=8, help="records per batch")
    p.add_argument("--response-tokens", type=int, default=300, help="about this many tokens per response")
    p.add_argument("--head-reps", type=int, default=3, help="timed forward + backward passes of the head alone")
    p.add_argument("--json", default=None, help="write the numbers here")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.one is not None:
        spec = json.loads(ns.one)
        print(MARK + json.dumps(run_step(spec) if spec["part"] == "step" else run_head(spec)))
        return 0
    started = time.perf_counter()
    print(f"LLaVA-1.5 shape (cpu size: text hidden 128), float32, {torch.get_num_threads()} torch threads; batch "
          f"{ns.batch_size} records, responses of about {ns.response_tokens} tokens, prefix-shared rows")
    base = {"batch_size": ns.batch_size, "response_tokens": ns.response_tokens}
    out: dict[str, Any] = {"settings": {**base, "steps": ns.steps, "head_reps": ns.head_reps, "chunk": CHUNK,
                                        "vocab": ns.vocab}}
    if "step" in ns.parts:
        out["step"] = [measure({**base, "part": "step", "vocab": v, "chunk": c, "steps": ns.steps})
                       for v in ns.vocab for c in (0, CHUNK)]
    if "head" in ns.parts:
        out["head"] = [measure({**base, "part": "head", "vocab": v, "chunk": c, "reps": ns.head_reps})
                       for v in ns.vocab for c in (0, CHUNK)]
    if "step" in out:
        step_table(out["step"])
    if "head" in out:
        head_table(out["head"])
    return finish(out, started, ns.json)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
