"""Flex attention + BlockMask on prefix-shared and packed rows: exactness against SDPA, step time and memory, on a GPU.

    python benchmarks/flex_attention_gpu.py [--models llava15 llava] [--batch-size 8]
                                            [--budget N] [--steps 5] [--warmup 2] [--tolerance 1e-4] [--json PATH]
    python benchmarks/flex_attention_gpu.py --device cpu --models llava --steps 1 --warmup 0   # code path only

Needs CUDA: without it the script says so and exits (code 2) unless ``--device cpu`` is given,
which checks the code path only (flex attention has no backward on the CPU, so its gradients and
its step are skipped there, and the exit code is then 3 when everything that ran passed).

Models (float32, so that the comparison is about the layout and the mask, not rounding):

* ``llava15``: ``llava15_shape.build_llava15(--size)`` (LLaVA-1.5's image geometry, 576 image
  tokens, vocabulary 32064; ``--size cpu``, the default, has a small Llama, ``7b`` the real one)
  with ``benchmarks/packing.py``'s long-tailed records (responses log-normal, median 100 tokens,
  clipped to [8, 500]), each with a vision-rejected image;
* ``llava`` (or another name of ``mmpo.testing.families``): the tiny families of the test suite,
  with short records of toy-world words on 56-64 px images. ``qwen2_vl`` (M-RoPE positions) can be
  named, but transformers 5.25 refuses flex attention for Qwen2-VL (``Qwen2VLTextModel does not
  support an attention implementation through torch's flex_attention``): its SDPA layouts are
  checked and the run is reported incomplete (exit code 3).

Each model is built once with ``attn_implementation="sdpa"``; its batches are collated by
``PreferenceCollator(RowEncoder(processor), vision_rows=True, ...)`` in three layouts: one row per
response (``prefix_sharing=False``), prefix-shared, and prefix-shared + packed
(``max_tokens_per_row=--budget``; default: twice the longest prefix-shared row, so rows hold
several records). Then ``model.set_attn_implementation("flex_attention")``: ``policy_response_logps``
passes a flex ``BlockMask`` (``mmpo.forward.flex_block_mask``; checked) instead of a dense 4-D mask.

Exactness: the per-token log-probs (``policy_response_logps``) and the gradients of a DPO-like loss
over chosen, rejected and vision-rejected rows (as ``logps_and_grads`` in
``tests/integration/test_prefix_sharing.py``) of SDPA shared, SDPA shared + packed, flex shared and
flex shared + packed, each against one row per response under SDPA: the largest absolute log-prob difference and the
largest gradient difference relative to the largest gradient must be at most ``--tolerance``
(1e-4). TF32 is switched off (matmul and cuDNN) so that float32 means float32.

Timing: a step (zero the gradients, ``policy_response_logps`` with its mask built, the loss, its
backward) for SDPA one row per response, SDPA shared, SDPA packed, flex shared and flex shared +
packed: median of ``--steps`` after ``--warmup`` (flex compiles its kernels in the warm-up), each
step between ``torch.cuda.synchronize()`` calls; and the peak ``torch.cuda.max_memory_allocated``
over the timed steps (reset before them), minus the memory allocated before them.

Exit code 0 only when every exactness check passed (1: one failed; 2: no CUDA; 3: all that ran passed,
but flex attention did not run for some model, or its gradients were not checked). Not a test: machines are noisy, so nothing
asserts a time; compare the ratios, measured in one run. Output: Markdown tables, ``--json PATH``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

LAYOUTS = {  # name: (attention implementation, the batch it runs on)
    "sdpa, one row per response": ("sdpa", "unshared"),
    "sdpa, shared": ("sdpa", "shared"),
    "sdpa, shared + packed": ("sdpa", "packed"),
    "flex, shared": ("flex_attention", "shared"),
    "flex, shared + packed": ("flex_attention", "packed"),
}
REFERENCE = "sdpa, one row per response"


# ------------------------------------------------------------------------------------------ models and records
def build(name: str, size: str, device: str):
    """``(model, processor)`` of ``name``, float32 on ``device``."""
    if name == "llava15":
        from llava15_shape import build_llava15

        return build_llava15(size, torch.float32, seed=0, device=device)
    from mmpo.testing.families import build_family

    model, processor = build_family(name)
    return model.to(device), processor


def family_records(n: int, seed: int = 0) -> list:
    """Short records of toy-world words on small random images, each with a vision-rejected image."""
    from llava15_shape import vocabulary
    from PIL import Image

    from mmpo.types import PreferenceRecord

    rng, pixels = random.Random(seed), np.random.default_rng(seed)
    words = vocabulary()

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi))) + " ."

    def picture(width: int) -> Image.Image:
        return Image.fromarray(pixels.integers(0, 256, (64, width, 3), dtype=np.uint8), mode="RGB")

    return [PreferenceRecord(image=picture(64 if i % 2 else 56), prompt=text(4, 12), chosen=text(3, 20),
                             rejected=text(3, 20), id=f"flex-{i}", rejected_image=picture(64 if i % 2 else 56))
            for i in range(n)]


def records_for(name: str, n: int, seed: int) -> list:
    if name == "llava15":
        from packing import make_records

        return make_records(n, seed, median=100.0, sigma=0.75)
    return family_records(n, seed)


def collate(processor, recs: list, shared: bool, budget: int | None) -> dict[str, Any]:
    from mmpo.data.collator import PreferenceCollator, RowEncoder

    collator = PreferenceCollator(RowEncoder(processor), vision_rows=True, prefix_sharing=shared,
                                  max_tokens_per_row=budget)
    return collator([{"record": r, "index": i} for i, r in enumerate(recs)])


def auto_budget(batch: dict[str, Any]) -> int:
    """Twice the longest prefix-shared row: two or more records per packed row."""
    return 2 * int((batch["segment_ids"] >= 0).sum(dim=1).max()) + 1


def layout_of(batch: dict[str, Any]) -> dict[str, Any]:
    N, T = batch["model_inputs"]["input_ids"].shape
    if "segment_ids" in batch:
        real = int((batch["segment_ids"] >= 0).sum())
    else:
        real = int(batch["model_inputs"]["attention_mask"].sum())
    return {"rows": N, "width": T, "run": N * T, "padded_share": (N * T - real) / (N * T)}


# ------------------------------------------------------------------------------------------ checks and steps
def loss_of(logps: torch.Tensor, B: int) -> torch.Tensor:
    """The DPO-like scalar of ``logps_and_grads``: every row kind's gradient path is exercised."""
    sums = logps.sum(dim=1)
    return -torch.nn.functional.logsigmoid(sums[:B] - sums[B:2 * B]).sum() - 0.3 * sums[2 * B:].sum()


def logps_and_grads(model, batch: dict[str, Any], grads: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    from mmpo.forward import policy_response_logps

    model.zero_grad(set_to_none=True)
    if not grads:
        with torch.no_grad():
            return policy_response_logps(model, batch)[0], {}
    logps, _ = policy_response_logps(model, batch)
    loss_of(logps, batch["record_index"].shape[0]).backward()
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return logps.detach(), out


def differences(got: tuple, want: tuple) -> dict[str, float]:
    logps = float((got[0] - want[0]).abs().max())
    if not got[1]:
        return {"logps": logps}
    if got[1].keys() != want[1].keys():
        return {"logps": logps, "grads": float("inf"), "grads_abs": float("inf")}
    scale = max(float(g.abs().max()) for g in want[1].values()) or 1.0
    worst = max(float((got[1][k] - want[1][k]).abs().max()) for k in want[1])
    return {"logps": logps, "grads": worst / scale, "grads_abs": worst, "grad_scale": scale}


def step_times(model, batch: dict[str, Any], steps: int, warmup: int, device: str) -> dict[str, float]:
    from mmpo.forward import policy_response_logps

    cuda = device == "cuda"
    B = batch["record_index"].shape[0]

    def step() -> float:
        model.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        logps, _ = policy_response_logps(model, batch)
        loss_of(logps, B).backward()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(warmup):
        step()
    model.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times = [step() for _ in range(steps)]
    out = {"median_s": statistics.median(times), "times": times}
    if cuda:
        out["peak_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    return out


def set_attention(model, implementation: str) -> None:
    model.set_attn_implementation(implementation)
    from mmpo.forward import attention_implementation

    if attention_implementation(model) != implementation:
        raise RuntimeError(f"set_attn_implementation({implementation!r}) left the language model at "
                           f"{attention_implementation(model)!r}")


def run_model(name: str, ns, device: str) -> dict[str, Any]:
    from torch.nn.attention.flex_attention import BlockMask

    from mmpo.data.collator import move_batch
    from mmpo.forward import attention_mask_for, packing_problem

    model, processor = build(name, ns.size, device)
    model.train()
    set_attention(model, "sdpa")
    recs = records_for(name, ns.batch_size, ns.seed)
    shared = collate(processor, recs, shared=True, budget=None)
    budget = ns.budget or auto_budget(shared)
    batches = {"unshared": collate(processor, recs, shared=False, budget=None), "shared": shared,
               "packed": collate(processor, recs, shared=True, budget=budget)}
    batches = {k: move_batch(v, device) for k, v in batches.items()}
    flex_grads = device == "cuda"  # flex attention has no CPU backward
    result: dict[str, Any] = {"model": name, "budget": budget, "device": device,
                              "layouts": {k: layout_of(v) for k, v in batches.items()}, "checks": {}, "steps": {}}

    try:  # transformers refuses models without flex support (e.g. Qwen2-VL in 5.25): say so, check the rest
        set_attention(model, "flex_attention")
        set_attention(model, "sdpa")
    except ValueError as error:
        result["flex_unsupported"] = str(error).split(". ")[0]
        print(f"  {name}: flex attention is not available: {result['flex_unsupported']}")
    want = logps_and_grads(model, batches["unshared"], grads=True)
    if float(want[0].abs().max()) <= 1.0:
        print(f"  {name}: warning: log-probs are all within 1 of 0; the comparison is weak")
    for layout in (layout for layout in LAYOUTS if layout != REFERENCE):
        implementation = LAYOUTS[layout][0]
        if implementation == "flex_attention" and "flex_unsupported" in result:
            continue
        set_attention(model, implementation)
        batch = batches[LAYOUTS[layout][1]]
        if implementation == "flex_attention":
            problem = packing_problem(model)
            if problem:
                raise RuntimeError(f"{name} under flex attention cannot pack: {problem}")
            mask = attention_mask_for(model, batch["segment_ids"], batch.get("document_ids"))
            if not isinstance(mask, BlockMask):
                raise RuntimeError(f"flex attention got a {type(mask).__name__}, not a BlockMask")
        grads = implementation != "flex_attention" or flex_grads
        if grads:
            got = logps_and_grads(model, batch, grads=True)
            diff = differences(got, want)
        else:
            diff = differences(logps_and_grads(model, batch, grads=False), (want[0], {}))
        diff["passed"] = diff["logps"] <= ns.tolerance and diff.get("grads", 0.0) <= ns.tolerance
        diff["gradients_checked"] = grads
        result["checks"][layout] = diff
        set_attention(model, "sdpa")
    for layout, (implementation, key) in LAYOUTS.items():
        if implementation == "flex_attention" and ("flex_unsupported" in result or not flex_grads):
            result["steps"][layout] = {"skipped": result.get("flex_unsupported", "no flex backward on the CPU")}
            continue
        set_attention(model, implementation)
        result["steps"][layout] = step_times(model, batches[key], ns.steps, ns.warmup, device)
        set_attention(model, "sdpa")
    result["all_passed"] = all(c["passed"] for c in result["checks"].values())
    result["complete"] = ("flex_unsupported" not in result
                          and all(c["gradients_checked"] for c in result["checks"].values()))
    return result


# ------------------------------------------------------------------------------------------ the run
def print_model(result: dict[str, Any], tolerance: float) -> None:
    lay, budget = result["layouts"], result["budget"]
    print(f"\n## {result['model']} ({result['device']}), packed budget {budget} tokens\n")
    print(f"| {'layout':<26} | {'rows x width':>12} | {'padded / run':>12} | {'max |logp diff|':>15} | "
          f"{'max grad diff / max grad':>24} | {'exact':>5} | {'s/step':>8} | {'vs sdpa one row':>15} | "
          f"{'peak MiB':>8} |")
    print(f"| {'-' * 26} | {'-' * 11}: | {'-' * 11}: | {'-' * 14}: | {'-' * 23}: | {'-' * 4}: | {'-' * 7}: | "
          f"{'-' * 14}: | {'-' * 7}: |")
    base = result["steps"].get(REFERENCE, {}).get("median_s")
    for layout in LAYOUTS:
        shape = lay[LAYOUTS[layout][1]]
        check = result["checks"].get(layout)
        if layout == REFERENCE:
            logp, grad, exact = "(reference)", "(reference)", "-"
        elif check is None:
            logp, grad, exact = "-", "-", "-"
        else:
            logp = f"{check['logps']:.2e}"
            grad = f"{check['grads']:.2e}" if "grads" in check else "not checked"
            exact = "yes" if check["passed"] else "NO"
        step = result["steps"].get(layout, {})
        seconds = f"{step['median_s']:.4f}" if "median_s" in step else "skipped"
        vs = f"{step['median_s'] / base:.2f}x" if "median_s" in step and base else "-"
        peak = f"{step['peak_mib']:.0f}" if "peak_mib" in step else "-"
        print(f"| {layout:<26} | {shape['rows']:>4} x {shape['width']:<5} | {shape['padded_share']:11.1%} | "
              f"{logp:>15} | {grad:>24} | {exact:>5} | {seconds:>8} | {vs:>15} | {peak:>8} |")
    if "flex_unsupported" in result:
        print(f"flex attention not checked: {result['flex_unsupported']}")
    print(f"tolerance {tolerance:g}: {'all checks passed' if result['all_passed'] else 'SOME CHECKS FAILED'}"
          + ("" if result["complete"] else " (incomplete: flex not run, or its gradients not checked on this device)"))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["llava15", "llava"],
                   help="llava15 (the LLaVA-1.5 shape) and/or names of mmpo.testing.families (qwen2_vl: "
                        "transformers 5.25 has no flex attention for Qwen2-VL; its SDPA layouts are still checked)")
    p.add_argument("--size", choices=("cpu", "7b"), default="cpu", help="size of the llava15 shape (7b in float32 "
                   "holds weights, gradients and two copies of them for the check: about 115 GB)")
    p.add_argument("--batch-size", type=int, default=8, help="records per batch")
    p.add_argument("--budget", type=int, default=None, help="max_tokens_per_row of the packed layout "
                   "(default: twice the longest prefix-shared row)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per layout")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (flex compiles here)")
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu: the code path only (no flex gradients or flex step; exit code 3 when all else passed)")
    p.add_argument("--json", default=None, help="write the numbers here")
    ns = p.parse_args(argv)
    if ns.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU (flex attention's backward runs only there); "
              "--device cpu checks the code path only", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    # transformers compiles flex attention; each layout (and the vision tower) calls it at other shapes. Static
    # shapes, one compile per shape: torch 2.13's dynamic-shape flex kernel for the CPU does not compile (g++:
    # "'cur_kvSplitSize8' was not declared in this scope") once a third shape makes dynamo mark the sizes dynamic.
    torch._dynamo.config.automatic_dynamic_shapes = False
    torch._dynamo.config.recompile_limit = 64
    started = time.perf_counter()
    name = torch.cuda.get_device_name() if ns.device == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}, float32 (TF32 off); batch {ns.batch_size} records with "
          f"vision-rejected images; {ns.steps} timed steps after {ns.warmup}")
    results = []
    for model_name in ns.models:
        t0 = time.perf_counter()
        try:
            result = run_model(model_name, ns, ns.device)
        except Exception as error:  # noqa: BLE001 - reported, and the exit code says it failed
            import traceback

            lines = traceback.format_exception(error)
            print("".join(lines[:-1]) + lines[-1][:3000], file=sys.stderr)  # compile errors run to megabytes
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            result = {"model": model_name, "error": f"{type(error).__name__}: {first}", "all_passed": False,
                      "complete": False}
            print(f"\n## {model_name}: failed: {result['error']}")
        else:
            print_model(result, ns.tolerance)
        result["wall_s"] = time.perf_counter() - t0
        results.append(result)
        if ns.device == "cuda":
            torch.cuda.empty_cache()
    passed = all(r["all_passed"] for r in results)
    complete = all(r["complete"] for r in results)
    print(f"\nexactness: {'PASSED' if passed else 'FAILED'}" + ("" if complete else " (incomplete: flex attention "
          "was not run, or its gradients were not checked)") + f"; {time.perf_counter() - started:.0f} s. Not a test for times: machines are noisy.")
    if ns.json:
        payload = {"device": name, "torch": torch.__version__, "settings": vars(ns), "results": results}
        Path(ns.json).parent.mkdir(parents=True, exist_ok=True)
        Path(ns.json).write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"wrote {ns.json}")
    if not passed:
        return 1
    return 0 if complete else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
