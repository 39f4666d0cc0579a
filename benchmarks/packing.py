"""Row layouts on long-tailed response lengths: padding, step time and memory of DPO and AdaViP, one run.

    python benchmarks/packing.py [--batch-size 8] [--budgets 2048 4096 8192] [--steps 3] [--warmup 1]
                                 [--parts a c] [--adavip-budgets ...] [--json PATH]

The model is ``llava15_shape.build_llava15("cpu")`` (LLaVA-1.5's image geometry, 576 image tokens
per image, its vocabulary of 32064, a small Llama), float32, on the CPU. The records (one batch of
``--batch-size``) have the chat template's ~50-token prompt and chosen and rejected responses whose
lengths are drawn independently, like RLAIF-V's: log-normal with median ``--median`` (100) tokens
and ``--sigma`` (0.75), clipped to [8, 500] (the drawn lengths are printed). Every record has a
vision-rejected image (AdaViP's third sample); the DPO rows ignore it.

Layouts (``PreferenceCollator``; the LM head at ``lm_head_chunk_size`` 256, the default, unless said):

* **before (shared, dense mask, full logits)**: the step before issue 33, the baseline of every ratio:
  prefix-shared rows (image + prompt once, both responses after it), one row per record, run under
  a dense 4-D mask over whole rows, the model's full ``(N, K, V)`` logits (``lm_head_chunk_size=0``);
* **one row per response**: ``prefix_sharing=False``, no packing (2 rows per record, 3 with AdaViP);
* **shared, dense mask**: prefix-shared rows under the dense mask, the chunked head;
* **shared**: prefix-shared rows, attention block by block (``mmpo.forward.Blocks``), the chunked head;
* **packed N**: prefix-shared documents packed into rows of up to N tokens (``max_tokens_per_row``);
* **shared, full logits**: the shared rows with the model's full logits.

Part (a), DPO: rows, row width, tokens run through the model (N x T), the padded share of them
(positions with ``segment_ids == -1`` or ``attention_mask == 0``), the LM head's positions, step
time and memory, with ratios to the baseline's. Part (c), AdaViP (a vision-rejected row per record) in
the same layouts beside DPO: the time ratio AdaViP/DPO next to the ratio of tokens run, and
AdaViP's step memory against one row per response (an earlier measurement had shared AdaViP pad
its vision rows to the pair rows' width and use more memory than unshared: 2800 vs 2486 MB).

What a step is: **not** ``PreferenceTrainer``'s loop but its work on one pre-collated batch, timed
directly (less noisy; no collation, and no optimizer, whose cost does not depend on the layout):
the live frozen-copy reference's pass (``mmpo.training.reference.FrozenCopyReference``, as the
trainer builds it, but scoring with the default chunked head in every configuration, also where
the policy's ``lm_head_chunk_size`` is 0, and under the same mask as the policy: the trainer's
reference follows the policy's setting, so the full-logits rows here, the baseline among them, are
a little faster than in training, which makes the ratios to the baseline conservative), the
policy's ``policy_response_logps`` with
``head_chunk=lm_head_chunk_size``, a sigmoid DPO loss (beta 0.1; with AdaViP, plus the same term
with the vision-rejected row as the loser) and its backward.

Time: every configuration in one process (the same weights, every batch collated first), in
rounds: ``--warmup`` untimed rounds, then ``--steps`` rounds in each of which every configuration
runs one step (in alternating order), so that a change in the machine's load (2 shared cores
here) falls on all of them alike; the median per configuration. Both wall-clock ("s/step") and
the process's CPU time ("CPU s/step", all its threads; it moves less when other processes take
the cores, though waiting threads that spin count too).

Memory: each configuration in a fresh subprocess, so no peak carries over: one warm-up step, then
glibc is told to serve blocks of 1 MiB and more with ``mmap`` and to trim its heap (so that freed
tensors leave the resident set), the kernel's peak RSS (``VmHWM``) is reset through
``/proc/self/clear_refs`` and ``--memory-steps`` steps run: **step MB** is that peak minus the RSS
before those steps (the step's own working memory: activations, logits, gradients), **peak RSS**
the peak itself (with both models' weights).

Not a test: machines are noisy, so nothing asserts a time; the ratios, measured in one run, are
what to compare. With the defaults (11 configurations, batch 8) about 8-10 minutes on 2 CPU cores:
the timing process about half, then 11 memory subprocesses of 20-40 s.
Output: a Markdown table per part, and with ``--json PATH`` the numbers.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_trl import machine, proc_status_mb  # noqa: E402

BETA = 0.1
CLIP = (8, 500)
MARK = "PACKING_JSON "


# ------------------------------------------------------------------------------------------ records
def response_token_lengths(n: int, seed: int, median: float, sigma: float) -> list[tuple[int, int]]:
    """``n`` (chosen, rejected) token lengths, drawn independently: log-normal, clipped to :data:`CLIP`."""
    draw = np.random.default_rng(seed).lognormal(np.log(median), sigma, size=(n, 2))
    lengths = np.clip(np.rint(draw), *CLIP).astype(int)
    return [(int(c), int(r)) for c, r in lengths]


def make_records(n: int, seed: int, median: float, sigma: float) -> list:
    from llava15_shape import records, words_for_tokens

    lengths = [(words_for_tokens(c), words_for_tokens(r)) for c, r in response_token_lengths(n, seed, median, sigma)]
    return records(n, seed=seed, vision=True, response_lengths=lengths)


# ------------------------------------------------------------------------------------------ one configuration
def layout_stats(batch: dict[str, Any], chunk: int) -> dict[str, Any]:
    """Rows, width, tokens run (N x T), real and padded tokens, and the LM head's positions."""
    ids = batch["model_inputs"]["input_ids"]
    N, T = ids.shape
    if "segment_ids" in batch:
        real = int((batch["segment_ids"] >= 0).sum())
    else:
        real = int(batch["model_inputs"]["attention_mask"].sum())
    response = int(batch["response_length"].sum())
    kept = N * (T - int(batch.get("logits_from", 0)))  # the full path's logits (logits_to_keep)
    return {"rows": N, "width": T, "run": N * T, "real": real, "padded": N * T - real,
            "padded_share": (N * T - real) / (N * T), "response_tokens": response,
            "head_positions": response if chunk else kept,
            "documents_per_row": (int(batch["document_ids"].max(dim=1).values.add(1).max())
                                  if "document_ids" in batch else 1)}


def preference_loss(policy: torch.Tensor, reference: torch.Tensor, B: int, vision: bool) -> torch.Tensor:
    """Sigmoid DPO on (chosen, rejected); with ``vision`` the same term for (chosen, vision-rejected)."""
    ratios = (policy - reference).sum(dim=1)  # (R,): rows are [chosen x B, rejected x B, vision x B]
    loss = -torch.nn.functional.logsigmoid(BETA * (ratios[:B] - ratios[B:2 * B])).mean()
    if vision:
        loss = loss - torch.nn.functional.logsigmoid(BETA * (ratios[:B] - ratios[2 * B:3 * B])).mean()
    return loss


def release_freed_memory() -> bool:
    """glibc: serve blocks of 1 MiB and more with mmap from now on, and give the free heap back."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
        libc.malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def build(base: dict[str, Any]):
    """``(records, policy, processor, reference)``: the model, its frozen copy and the batch's records."""
    from llava15_shape import build_llava15

    from mmpo.training.reference import FrozenCopyReference

    torch.manual_seed(0)
    recs = make_records(base["batch_size"], base["seed"], base["median"], base["sigma"])
    policy, processor = build_llava15("cpu", seed=0)
    policy.train()
    return recs, policy, processor, FrozenCopyReference(policy)


def collate(processor, recs: list, config: dict[str, Any]) -> dict[str, Any]:
    from mmpo.data.collator import PreferenceCollator, RowEncoder

    collator = PreferenceCollator(RowEncoder(processor), vision_rows=config["method"] == "adavip",
                                  prefix_sharing=config["shared"], max_tokens_per_row=config["budget"])
    batch = collator([{"record": r, "index": i} for i, r in enumerate(recs)])
    if not config.get("blocks", True):  # the dense 4-D mask over whole rows, as before block-by-block attention
        batch.pop("blocks", None)
    return batch


def stepper(policy, reference, batch: dict[str, Any], config: dict[str, Any]):
    """A function running one step of ``config`` on ``batch``; it returns (wall, CPU) seconds."""
    from mmpo.forward import policy_response_logps

    B, vision = batch["record_index"].shape[0], config["method"] == "adavip"

    def step() -> tuple[float, float]:
        policy.zero_grad(set_to_none=True)
        start, cpu = time.perf_counter(), time.process_time()
        reference_logps = reference(batch)
        logps, _ = policy_response_logps(policy, batch, head_chunk=config["chunk"])
        preference_loss(logps, reference_logps, B, vision).backward()
        return time.perf_counter() - start, time.process_time() - cpu

    return step


def run_timing(base: dict[str, Any], configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Step times of every configuration, in one process, interleaved: ``warmup`` rounds, then ``steps``
    rounds in each of which every configuration runs one step (in alternating order), so that a
    change of the machine's load falls on all of them alike."""
    recs, policy, processor, reference = build(base)
    steps = [stepper(policy, reference, collate(processor, recs, c), c) for c in configs]
    times: list[list[tuple[float, float]]] = [[] for _ in configs]
    for r in range(base["warmup"] + base["steps"]):
        order = range(len(configs)) if r % 2 == 0 else reversed(range(len(configs)))
        for i in order:
            measured = steps[i]()
            if r >= base["warmup"]:
                times[i].append(measured)
    out = []
    for config, pairs in zip(configs, times, strict=True):
        wall, cpu = [w for w, _ in pairs], [c for _, c in pairs]
        out.append({**config, "step_times": wall, "median_s": statistics.median(wall), "cpu_times": cpu,
                    "median_cpu_s": statistics.median(cpu)})
    return out


def run_memory(base: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The layout and step memory of one configuration (in a subprocess of its own): one warm-up step,
    then the peak RSS of ``memory_steps`` steps over the RSS before them."""
    recs, policy, processor, reference = build(base)
    batch = collate(processor, recs, config)
    step = stepper(policy, reference, batch, config)
    step()  # warm-up: lazy initialisations are not the layout's memory
    policy.zero_grad(set_to_none=True)
    gc.collect()
    trimmed = release_freed_memory()
    before = proc_status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the RSS now
    for _ in range(base["memory_steps"]):
        step()
    peak = proc_status_mb("VmHWM")
    return {**config, "layout": layout_stats(batch, config["chunk"]), "rss_before_mb": before, "peak_rss_mb": peak,
            "step_mb": peak - before, "malloc_trimmed": trimmed, "threads": torch.get_num_threads()}


def subprocess_json(flag: str, payload: Any) -> tuple[Any, str | None]:
    """Run this script with ``flag payload`` in a fresh process: (its JSON result, or None, and the error)."""
    proc = subprocess.run([sys.executable, __file__, flag, json.dumps(payload)], capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith(MARK)), None)
    if proc.returncode != 0 or line is None:
        return None, proc.stderr[-3000:] or f"rc {proc.returncode}"
    return json.loads(line[len(MARK):]), None


def measure(base: dict[str, Any], configs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every configuration's timing (one interleaved subprocess) and memory (a subprocess each), by key."""
    started = time.perf_counter()
    timed, error = subprocess_json("--time", {"base": base, "configs": configs})
    if error:
        print(f"  timing subprocess failed:\n{error}", flush=True)
    else:
        print(f"  timed {len(configs)} configurations, interleaved ({time.perf_counter() - started:.0f} s)", flush=True)
    out = {}
    for i, config in enumerate(configs):
        started = time.perf_counter()
        memory, failure = subprocess_json("--memory", {"base": base, "config": config})
        if failure:
            print(f"  {describe(config)}: memory subprocess failed:\n{failure}", flush=True)
            memory = {**config, "error": failure}
        result = {**memory, **({k: v for k, v in timed[i].items() if k not in config} if timed else {})}
        if error:
            result["error"] = error
        out[key_of(config)] = result
        if "error" not in result:
            lay = result["layout"]
            print(f"  {describe(config)}: {lay['rows']} x {lay['width']}, {result['median_s']:.2f} s/step, "
                  f"step {result['step_mb']:.0f} MB (memory: {time.perf_counter() - started:.0f} s)", flush=True)
    return out


def key_of(config: dict[str, Any]) -> str:
    return json.dumps({k: config.get(k, True) for k in ("method", "shared", "budget", "chunk", "blocks")},
                      sort_keys=True)


# ------------------------------------------------------------------------------------------ the run
def layout_name(shared: bool, budget: int | None, chunk: int, blocks: bool = True) -> str:
    if not blocks and chunk == 0 and shared and not budget:
        return "before (shared, dense mask, full logits)"
    if not shared:
        name = "one row per response"
    elif budget:
        name = f"packed {budget}"
    else:
        name = "shared"
    return name + ("" if blocks or not shared else ", dense mask") + (", full logits" if chunk == 0 else "")


def describe(spec: dict[str, Any]) -> str:
    return f"{spec['method']}, {layout_name(spec['shared'], spec['budget'], spec['chunk'], spec.get('blocks', True))}"


def finish(out: dict[str, Any], started: float, json_path: str | None) -> int:
    """The run's closing line, with the machine and the time taken added to ``out``, written to ``json_path``."""
    out["machine"] = machine()
    out["elapsed_s"] = time.perf_counter() - started
    print(f"\nNot a test: machines are noisy; compare the ratios. {out['elapsed_s']:.0f} s in all.")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(out, indent=2, default=str) + "\n")
        print(f"wrote {json_path}")
    return 0


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def part_a_configs(ns) -> list[dict[str, Any]]:
    layouts = [(True, None, 0, False), (False, None, 256, True), (True, None, 256, False), (True, None, 256, True),
               *[(True, b, 256, True) for b in ns.budgets], (True, None, 0, True)]
    return [{"method": "dpo", "shared": shared, "budget": budget, "chunk": chunk, "blocks": blocks}
            for shared, budget, chunk, blocks in layouts]


def part_c_configs(ns) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(layout name, AdaViP's configuration, DPO's) of part (c)."""
    out = []
    for shared, budget, chunk, blocks in [(False, None, 256, True), (True, None, 0, False), (True, None, 256, True),
                                          *[(True, b, 256, True) for b in ns.adavip_budgets]]:
        config = {"shared": shared, "budget": budget, "chunk": chunk, "blocks": blocks}
        out.append((layout_name(shared, budget, chunk, blocks), {"method": "adavip", **config},
                    {"method": "dpo", **config}))
    return out


def failed(result: dict[str, Any]) -> str:
    lines = result["error"].strip().splitlines()
    return lines[-1][:100] if lines else "failed"


def part_a(ns, results: dict[str, dict]) -> list[dict[str, Any]]:
    rows = [results[key_of(c)] for c in part_a_configs(ns)]
    # The baseline: the step before issue 33 (prefix-shared rows under a dense mask, the model's full logits).
    today = next((r for r in rows if r["shared"] and not r["budget"] and not r["chunk"] and not r.get("blocks", True)
                  and "error" not in r), {})
    print(f"\n## (a) DPO, batch {ns.batch_size} records, long-tailed response lengths "
          f"(lm_head_chunk_size 256 unless said)\n")
    print(f"| {'layout':<42} | {'rows x width':>12} | {'tokens run':>10} | {'padded / run':>12} | "
          f"{'head positions':>14} | {'s/step':>6} | {'vs before':>9} | {'CPU s/step':>10} | {'vs before':>9} | "
          f"{'step MB':>7} | {'vs before':>9} | {'peak RSS MB':>11} |")
    print(f"| {'-' * 42} | {'-' * 11}: | {'-' * 9}: | {'-' * 11}: | {'-' * 13}: | {'-' * 5}: | {'-' * 7}: | "
          f"{'-' * 9}: | {'-' * 7}: | {'-' * 6}: | {'-' * 7}: | {'-' * 10}: |")
    for r in rows:
        name = layout_name(r["shared"], r["budget"], r["chunk"], r.get("blocks", True))
        if "error" in r:
            print(f"| {name:<42} | failed: {failed(r)} |")
            continue
        lay = r["layout"]
        print(f"| {name:<42} | {lay['rows']:>4} x {lay['width']:<5} | {lay['run']:>10} | {lay['padded_share']:11.1%} | "
              f"{lay['head_positions']:>14} | {r['median_s']:6.2f} | {ratio(r['median_s'], today.get('median_s')):>8} | "
              f"{r['median_cpu_s']:10.2f} | {ratio(r['median_cpu_s'], today.get('median_cpu_s')):>8} | "
              f"{r['step_mb']:7.0f} | {ratio(r['step_mb'], today.get('step_mb')):>8} | {r['peak_rss_mb']:11.0f} |")
    return rows


def part_c(ns, results: dict[str, dict]) -> list[dict[str, Any]]:
    rows = [{"layout": name, "adavip": results[key_of(a)], "dpo": results[key_of(d)]}
            for name, a, d in part_c_configs(ns)]
    unshared = rows[0]["adavip"]
    print(f"\n## (c) AdaViP (a vision-rejected row per record) vs DPO, batch {ns.batch_size} records\n")
    print(f"| {'layout':<42} | {'AdaViP rows x width':>19} | {'padded / run':>12} | {'AdaViP s/step':>13} | "
          f"{'DPO s/step':>10} | {'AdaViP/DPO time':>15} | {'AdaViP/DPO CPU time':>19} | "
          f"{'AdaViP/DPO tokens run':>21} | {'AdaViP step MB':>14} | {'DPO step MB':>11} | "
          f"{'AdaViP MB vs one row per response':>33} |")
    print(f"| {'-' * 42} | {'-' * 18}: | {'-' * 11}: | {'-' * 12}: | {'-' * 9}: | {'-' * 14}: | {'-' * 18}: | "
          f"{'-' * 20}: | {'-' * 13}: | {'-' * 10}: | {'-' * 32}: |")
    for row in rows:
        a, d = row["adavip"], row["dpo"]
        if "error" in a or "error" in d:
            print(f"| {row['layout']:<42} | failed: {failed(a if 'error' in a else d)} |")
            continue
        lay = a["layout"]
        print(f"| {row['layout']:<42} | {lay['rows']:>7} x {lay['width']:<9} | {lay['padded_share']:11.1%} | "
              f"{a['median_s']:13.2f} | {d['median_s']:10.2f} | {ratio(a['median_s'], d['median_s']):>15} | "
              f"{ratio(a['median_cpu_s'], d['median_cpu_s']):>19} | {ratio(lay['run'], d['layout']['run']):>21} | "
              f"{a['step_mb']:14.0f} | {d['step_mb']:11.0f} | {ratio(a['step_mb'], unshared.get('step_mb')):>33} |")
    if "step_mb" in unshared:
        for row in rows[1:]:
            a = row["adavip"]
            if "step_mb" in a:
                verdict = "no larger" if a["step_mb"] <= unshared["step_mb"] else "LARGER"
                print(f"AdaViP {row['layout']}: step memory {a['step_mb']:.0f} MB, {verdict} than one row per "
                      f"response ({unshared['step_mb']:.0f} MB)")
    return rows


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=8, help="records per batch")
    p.add_argument("--budgets", type=int, nargs="+", default=[2048, 4096, 8192], help="max_tokens_per_row values")
    p.add_argument("--adavip-budgets", type=int, nargs="+", default=None, help="packed budgets of part (c) "
                   "(default: --budgets)")
    p.add_argument("--parts", nargs="+", choices=("a", "c"), default=["a", "c"])
    p.add_argument("--steps", type=int, default=3, help="timed rounds (one step of every configuration each)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--memory-steps", type=int, default=1, help="steps under the reset VmHWM, after one warm-up step")
    p.add_argument("--seed", type=int, default=0, help="seed of the lengths, texts and images")
    p.add_argument("--median", type=float, default=100.0, help="median response length, tokens")
    p.add_argument("--sigma", type=float, default=0.75, help="sigma of the log-normal response lengths")
    p.add_argument("--json", default=None, help="write the numbers here")
    p.add_argument("--time", default=None, help=argparse.SUPPRESS)
    p.add_argument("--memory", default=None, help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.time is not None:
        job = json.loads(ns.time)
        print(MARK + json.dumps(run_timing(job["base"], job["configs"])))
        return 0
    if ns.memory is not None:
        job = json.loads(ns.memory)
        print(MARK + json.dumps(run_memory(job["base"], job["config"])))
        return 0
    ns.adavip_budgets = ns.adavip_budgets or ns.budgets
    started = time.perf_counter()
    lengths = response_token_lengths(ns.batch_size, ns.seed, ns.median, ns.sigma)
    flat = [x for pair in lengths for x in pair]
    print(f"LLaVA-1.5 shape (cpu size, vocabulary 32064), float32, {torch.get_num_threads()} torch threads; "
          f"batch {ns.batch_size} records; response tokens log-normal (median {ns.median:g}, sigma {ns.sigma:g}, "
          f"clipped to {list(CLIP)}), this batch: min {min(flat)}, median {statistics.median(flat):g}, "
          f"mean {statistics.mean(flat):.0f}, max {max(flat)}")
    print("(chosen, rejected) tokens: " + " ".join(f"({c}, {r})" for c, r in lengths))
    print(f"step = reference pass + policy forward + backward; times: median of {ns.steps} interleaved rounds after "
          f"{ns.warmup}, one process; step MB: peak RSS of {ns.memory_steps} step(s) minus the RSS before, a fresh "
          f"process per configuration")
    base = {"batch_size": ns.batch_size, "seed": ns.seed, "median": ns.median, "sigma": ns.sigma,
            "steps": ns.steps, "warmup": ns.warmup, "memory_steps": ns.memory_steps}
    configs: dict[str, dict[str, Any]] = {}
    if "a" in ns.parts:
        configs.update((key_of(c), c) for c in part_a_configs(ns))
    if "c" in ns.parts:
        configs.update((key_of(c), c) for _, a, d in part_c_configs(ns) for c in (a, d))
    results = measure(base, list(configs.values()))
    out: dict[str, Any] = {"settings": {**base, "budgets": ns.budgets, "adavip_budgets": ns.adavip_budgets,
                                        "clip": CLIP, "beta": BETA, "lm_head_chunk_size": 256},
                           "response_token_lengths": lengths}
    if "a" in ns.parts:
        out["part_a"] = part_a(ns, results)
    if "c" in ns.parts:
        out["part_c"] = part_c(ns, results)
    return finish(out, started, ns.json)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
