"""DAMA numerics before and after: the paper's unguarded normaliser vs the bounded default.

    python benchmarks/dama_stability.py [--seeds 8] [--steps 40] [--flip 0 0.5] [--data truth|seva]
                                        [--data-alpha] [--sweep-only] [--out FILE]

Part 1, training (docs/methods.md, "DAMA numerics"): ``--seeds`` runs of ``--steps`` optimizer
steps of DAMA on the synthetic world, trained as ``mmpo demo --method mdpo`` trains it (the cached
base model, the demo's preference pairs, beta 0.1, lr 3e-4 cosine, batch 16, sft_weight 1, K = 12
of 16), once with ``dama_normalizer: paper`` ("before") and once with ``bounded`` ("after"), for
each ``--flip`` fraction of records with chosen and rejected swapped: 0 is the demo's clean data;
0.5 is label noise that makes the mean reward gap small and of either sign, the regime where the
paper's ``R_bar`` lands just above its guard or crosses zero. ``--data-alpha`` adds the tiny
CLIP's ``data_alpha`` (data- and model-aware; trains the CLIP on first use). Seeds change the data
order (``PreferenceConfig.seed``); the base model and the records are the same for every run. Runs
use ``on_nonfinite: skip``, so a NaN/inf batch is counted, not fatal; both modes mask dropped
records with ``torch.where`` (the sweep shows the old multiplication separately). Per row: the
range of ``dama/alpha_model``, the largest ``grad_norm`` (before clipping) and ``|R_bar|``, and how
many runs had a NaN/inf or stopped.

Part 2, float32 sweep (no training, seconds): the masked DAMA batch loss the trainer computes,
in float32, over a grid of 31 ``R_bar`` x 4 log-ratio scales x 3 betas = 372 points, for the four
combinations of normaliser (paper, bounded) and masking (``losses * mask``, ``torch.where``);
it counts NaN and non-finite batch losses. Plus 100 ratio-mode ``alpha_D`` values: how many the
unclamped formula puts outside ``DATA_ALPHA_RANGE`` (exactly 0 included).

The base model is built on first use (about 6 minutes on 2 free CPU cores) and cached under
``$MMPO_CACHE`` (default ``~/.cache/mmpo``), shared with ``mmpo demo``. A training run takes about
15 s on 2 free cores. Not a test: nothing asserts. Results: ``benchmarks/results/dama_stability.txt``.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

import torch

from mmpo.io import default_cache_dir
from mmpo.methods.dama import DATA_ALPHA_RANGE, dama_combine, dama_data_alpha, dama_delta, dama_model_alpha
from mmpo.methods.dpo import preference_loss

NORMALIZERS = ("paper", "bounded")
nan = float("nan")


# ---------------------------------------------------------------------------------------------
# Part 2: float32 sweep
# ---------------------------------------------------------------------------------------------

#: 31 running means: 0, and +- 15 magnitudes from below the zero-start guard (1e-6) to far past the
#: float32 overflow of e^-R_bar (R_bar < -88).
SWEEP_R_BARS = [0.0] + [sign * m for m in (1e-7, 1.5e-6, 1e-5, 1e-3, 0.1, 1.0, 10.0, 50.0, 87.0, 88.5, 90.0,
                                           100.0, 1e3, 1e5, 1e8) for sign in (1.0, -1.0)]
SWEEP_SCALES = [1e-2, 1.0, 1e2, 1e4]  # standard deviation of the summed log-ratios
SWEEP_BETAS = [0.01, 0.1, 1.0]


def masked_batch_loss(chosen: torch.Tensor, rejected: torch.Tensor, beta: float, r_bar: float, normalizer: str,
                      masking: str) -> torch.Tensor:
    """The trainer's DAMA batch loss (model-aware, K = 12 of 16), in the dtype of the inputs."""
    gaps = beta * (chosen - rejected)  # (B,)
    alpha_model, keep, _ = dama_model_alpha(gaps, r_bar, max(1, round(0.75 * gaps.numel())), normalizer=normalizer)
    beta_c = beta * dama_combine(torch.ones_like(chosen), alpha_model)  # (B,)
    losses, _ = preference_loss(chosen, rejected, beta_c)  # (B,)
    if masking == "where":
        kept = torch.where(keep, losses, torch.zeros_like(losses))
    else:
        kept = losses * keep.to(losses.dtype)
    return kept.sum() / keep.sum().clamp(min=1)


def float32_sweep() -> str:
    gen = torch.Generator().manual_seed(0)
    base_chosen = torch.randn(16, generator=gen)  # (B,) float32
    base_rejected = torch.randn(16, generator=gen)
    grid = [(r, s, b) for r in SWEEP_R_BARS for s in SWEEP_SCALES for b in SWEEP_BETAS]
    lines = [f"float32 sweep: {len(SWEEP_R_BARS)} R_bar x {len(SWEEP_SCALES)} log-ratio scales x "
             f"{len(SWEEP_BETAS)} betas = {len(grid)} batches of 16 records, K = 12",
             f"  R_bar in {SWEEP_R_BARS[1:]} and 0", f"  scales {SWEEP_SCALES}, betas {SWEEP_BETAS}", "",
             "| normaliser | masking | NaN loss | non-finite loss |", "| --- | --- | ---: | ---: |"]
    for normalizer in NORMALIZERS:
        for masking in ("multiply", "where"):
            nan = bad = 0
            for r_bar, scale, beta in grid:
                loss = masked_batch_loss(base_chosen * scale, base_rejected * scale, beta, r_bar, normalizer, masking)
                nan += bool(torch.isnan(loss))
                bad += not bool(torch.isfinite(loss))
            tag = {("paper", "multiply"): " (before)", ("bounded", "where"): " (after)"}.get((normalizer, masking), "")
            lines.append(f"| {normalizer}{tag} | {'losses * mask' if masking == 'multiply' else 'torch.where'} | "
                         f"{nan}/{len(grid)} | {bad}/{len(grid)} |")
    lines += ["", data_alpha_sweep()]
    return "\n".join(lines)


def data_alpha_sweep(n: int = 100) -> str:
    """Ratio-mode alpha_D of ``n`` records of 1-3 CLIP-like scores ~ N(0, 1) per response, unclamped
    (the old formula) and clamped (now)."""
    gen = torch.Generator().manual_seed(0)
    records = []
    for _ in range(n):
        p, q = torch.randint(1, 4, (2,), generator=gen).tolist()
        records.append((torch.randn(p, generator=gen).tolist(), torch.randn(q, generator=gen).tolist()))
    deltas = [dama_delta(c, r, mode="ratio") for c, r in records]
    delta_bar = sum(deltas) / n
    # The formula before the clamp: sigmoid(delta) / sigmoid(delta_bar) in log space, capped at e^88.
    log_bar = torch.nn.functional.logsigmoid(torch.tensor(delta_bar, dtype=torch.float64)).item()
    before = [math.exp(min(torch.nn.functional.logsigmoid(torch.tensor(d, dtype=torch.float64)).item() - log_bar,
                           88.0)) for d in deltas]
    after = [dama_data_alpha(c, r, delta_bar, mode="ratio") for c, r in records]
    low, high = DATA_ALPHA_RANGE

    def outside(values):
        return sum(not low <= v <= high for v in values)

    return (f"ratio-mode alpha_D over {n} records (scores ~ N(0, 1)): exactly 0 before {sum(v == 0 for v in before)}, "
            f"outside {list(DATA_ALPHA_RANGE)} before {outside(before)}, after {outside(after)} "
            f"(after: min {min(after):.3g}, max {max(after):.3g})")


# ---------------------------------------------------------------------------------------------
# Part 1: training
# ---------------------------------------------------------------------------------------------


def flip_labels(records: list, fraction: float, seed: int = 0) -> list:
    """``records`` with chosen and rejected swapped in a seeded random ``fraction`` of them: label
    noise, which makes the mean reward gap small or negative, the regime where the paper's update
    of ``R_bar`` crosses zero."""
    import dataclasses
    import random

    rng = random.Random(seed)
    flipped = set(rng.sample(range(len(records)), round(fraction * len(records))))
    return [dataclasses.replace(r, chosen=r.rejected, rejected=r.chosen) if i in flipped else r
            for i, r in enumerate(records)]


def train_runs(ns: argparse.Namespace) -> str:
    from mmpo.data.collator import PreferenceDataset
    from mmpo.models import load_policy
    from mmpo.toyworld.base_model import BaseModelRecipe, ensure_base_model
    from mmpo.toyworld.pipeline import DemoOptions, prepare_records
    from mmpo.toyworld.scenes import WorldConfig
    from mmpo.training.config import DamaConfig, Methods, ModelArguments, PreferenceConfig
    from mmpo.training.trainer import PreferenceTrainer

    started = time.time()
    world = WorldConfig(seed=0)
    recipe = BaseModelRecipe(world=world, n_scenes=ns.base_scenes, steps=ns.base_steps, seed=0)
    base_dir, cached = ensure_base_model(recipe, ns.cache_dir)
    print(f"base model: {'reused' if cached else 'built'} {base_dir} [{time.time() - started:.0f} s]", flush=True)
    model, processor = load_policy(ModelArguments(model_name_or_path=str(base_dir)))
    opts = DemoOptions(cache_dir=ns.cache_dir, n_pairs=ns.n_pairs, seed=0, base_steps=ns.base_steps,
                       base_scenes=ns.base_scenes, progress=False)
    data_methods = Methods(dama=DamaConfig(data=ns.data_alpha, model=True))
    with redirect_stdout(io.StringIO()):  # the demo's progress lines
        records = prepare_records(opts, ns.data, data_methods, base_dir, model, processor, world)
    have_alpha = all(r.data_alpha is not None for r in records)
    print(f"{len(records)} {ns.data} records{' with data_alpha' if have_alpha else ''} "
          f"[{time.time() - started:.0f} s]", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="mmpo-dama-stability-"))
    rows = []
    for flip in ns.flip:
        dataset = PreferenceDataset(flip_labels(records, flip))
        for normalizer in ns.normalizers:
            alphas, grads, r_bars, bad_runs, skipped = [], [], [], 0, 0
            for seed in range(ns.seeds):
                model, processor = load_policy(ModelArguments(model_name_or_path=str(base_dir)))
                args = PreferenceConfig(
                    output_dir=str(tmp / f"{flip}-{normalizer}-{seed}"), max_steps=ns.steps,
                    per_device_train_batch_size=16, learning_rate=ns.learning_rate, lr_scheduler_type="cosine",
                    warmup_steps=min(10, ns.steps // 10), weight_decay=0.0, logging_steps=1, save_strategy="no",
                    beta=0.1, sft_weight=1.0, sft_reduction="record", seed=seed, disable_tqdm=True, report_to="none",
                    use_cpu=not torch.cuda.is_available(), on_nonfinite="skip")
                methods = Methods(dama=DamaConfig(data=have_alpha, model=True, recipe="paper",
                                                     normalizer=normalizer, keep=0.75))
                trainer = PreferenceTrainer(model, args, processor, dataset, methods=methods)
                failure = ""
                try:
                    with redirect_stdout(io.StringIO()):  # the per-step log dicts
                        trainer.train()
                except Exception as exc:  # e.g. a non-finite R_B refused by DamaState.update
                    failure = f", stopped at step {trainer.state.global_step}: {type(exc).__name__}: {exc}"
                log = [e for e in trainer.state.log_history if "dama/alpha_model" in e]
                run_alpha = [e["dama/alpha_model"] for e in log]
                run_grad = [e["grad_norm"] for e in log if "grad_norm" in e]
                values = run_alpha + run_grad + [e["loss"] for e in log if "loss" in e]
                bad_runs += bool(failure) or trainer.nonfinite_skipped > 0 or not all(map(math.isfinite, values))
                skipped += trainer.nonfinite_skipped
                alphas += [a for a in run_alpha if math.isfinite(a)]
                grads += [g for g in run_grad if math.isfinite(g)]
                r_bars += [abs(e["dama/r_bar"]) for e in log if math.isfinite(e["dama/r_bar"])]
                print(f"  swapped {flip:.0%}, {normalizer}, seed {seed}: alpha_M [{min(run_alpha, default=nan):.3g}, "
                      f"{max(run_alpha, default=nan):.3g}], grad_norm max {max(run_grad, default=nan):.3g}, "
                      f"final R_bar {trainer.dama.r_bar:.3g}, skipped batches {trainer.nonfinite_skipped}"
                      f"{failure} [{time.time() - started:.0f} s]", flush=True)
            rows.append((flip, normalizer, min(alphas, default=nan), max(alphas, default=nan),
                         max(grads, default=nan), max(r_bars, default=nan), bad_runs, skipped))
    kind = "data- and model-aware" if have_alpha else "model-aware only (the records have no data_alpha)"
    lines = [f"training: {ns.seeds} seeds x {ns.steps} steps per row, DAMA {kind}, {ns.data} pairs, batch 16, "
             f"K = 12, beta 0.1, lr {ns.learning_rate:g} cosine, sft_weight 1; base model {base_dir.name} "
             f"({ns.base_steps} SFT steps); seeds change the data order", "",
             "| labels swapped | normaliser | alpha_M min | alpha_M max | grad_norm max | abs(R_bar) max | "
             "runs with NaN/inf | skipped batches |", "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for flip, normalizer, a_min, a_max, g_max, r_max, bad_runs, skipped in rows:
        tag = " (before)" if normalizer == "paper" else " (after)"
        lines.append(f"| {flip:.0%} | {normalizer}{tag} | {a_min:.3g} | {a_max:.3g} | {g_max:.3g} | {r_max:.3g} | "
                     f"{bad_runs}/{ns.seeds} | {skipped} |")
    lines.append(f"\n[{time.time() - started:.0f} s, {torch.get_num_threads()} threads]")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=8, help="training runs per normaliser")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    p.add_argument("--n-pairs", type=int, default=800, help="preference records (as mmpo demo)")
    p.add_argument("--base-steps", type=int, default=1500, help="SFT steps of the base model (as mmpo demo)")
    p.add_argument("--base-scenes", type=int, default=3000, help="SFT scenes of the base model (as mmpo demo)")
    p.add_argument("--data", choices=("truth", "seva"), default="truth",
                   help="preference pairs as mmpo demo builds them: ground truth vs one hallucinated object, or "
                        "the base model's answers on the clean vs the noised image")
    p.add_argument("--flip", type=float, nargs="+", default=[0.0, 0.5],
                   help="fractions of records whose chosen and rejected are swapped (label noise); one row each")
    p.add_argument("--learning-rate", type=float, default=3e-4, help="peak learning rate (as mmpo demo)")
    p.add_argument("--normalizers", nargs="+", choices=NORMALIZERS, default=list(NORMALIZERS))
    p.add_argument("--data-alpha", action="store_true",
                   help="score the records with the world's tiny CLIP (trained on first use) for data_alpha, so "
                        "the runs are data- and model-aware (default: model-aware only)")
    p.add_argument("--cache-dir", default=str(default_cache_dir()), help="$MMPO_CACHE, else ~/.cache/mmpo")
    p.add_argument("--sweep-only", action="store_true", help="only the float32 sweep (no training)")
    p.add_argument("--out", help="also write the report to this file")
    ns = p.parse_args(argv)
    torch.manual_seed(0)
    parts = [float32_sweep()]
    print(parts[0] + "\n", flush=True)
    if not ns.sweep_only:
        parts.append(train_runs(ns))
        print("\n" + parts[-1], flush=True)
    if ns.out:
        Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
        Path(ns.out).write_text("\n\n".join(parts) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
