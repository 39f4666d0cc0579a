"""Kill a 3-round ``mmpo iterate`` run at random moments, rerun it, and compare with an uninterrupted run.

    python benchmarks/rounds_killsafe.py                 # 8 kills at random moments (~2 min, 2 cores)
    python benchmarks/rounds_killsafe.py --kills 5 --seed 1

1. An uninterrupted run: 3 rounds on the shipped base model, 64 scenes per round, 6 samples per
   scene, 60 optimizer steps per round with a checkpoint every 10 (``save_strategy: steps``), each
   round's model evaluated on 50 held-out scenes.
2. The same command in another directory, SIGKILL-ed ``--kills`` times: each rerun (which continues
   the last) is killed after its start-up plus 0.5-1.5 times (uninterrupted duration - start-up) /
   (kills + 1), drawn uniformly, so the kills spread over the run; then rerun to the end. Where each kill landed (round, stage) is read from the files.
3. Every round's pairs compared line for line, and every round's model tensor by tensor (max |dW|).

Prints a table and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def command(out: Path, base: Path) -> list[str]:
    return [sys.executable, "-m", "mmpo.cli.main", "iterate", str(ROOT / "src/mmpo/configs/toyworld/dpo.yaml"),
            "--rounds", "3", "--world_scenes", "192", "--samples", "6", "--sample_batch_size", "8", "--eval_scenes",
            "50", "--max_steps", "60", "--per_device_train_batch_size", "8", "--warmup_steps", "5", "--save_strategy",
            "steps", "--save_steps", "10", "--model_name_or_path", str(base), "--output_dir", str(out), "--disable_tqdm", "true"]


def where(out: Path) -> str:
    """The round and stage a killed run had reached, from its files."""
    for k in (3, 2, 1):
        folder = out / f"round-{k}"
        if not folder.exists():
            continue
        if (folder / "round.json").exists():
            return f"after round {k}"
        if (folder / "model" / "model.safetensors").exists():
            return f"round {k}, evaluating or marking it finished (its model saved)"
        checkpoints = sorted(folder.glob("model/checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        if checkpoints:
            return f"round {k}, training (last checkpoint {checkpoints[-1].name})"
        if (folder / "train.jsonl").exists():
            return f"round {k}, training (no checkpoint yet)"
        journal = folder / "samples" / "rank-0-of-1.jsonl"
        n = len(journal.read_text().splitlines()) if journal.exists() else 0
        return f"round {k}, sampling ({n} of 64 scenes journaled)"
    return "before round 1"


def pairs(path: Path) -> list[tuple]:
    """A round's pairs without the paths (the two runs live in different folders)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [(row["id"], row["chosen"], row["rejected"], json.dumps(row["meta"]["self_pairs"], sort_keys=True))
            for row in rows]


def max_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert x.keys() == y.keys()
    return max((x[k].float() - y[k].float()).abs().max().item() for k in x)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/rounds-killsafe")
    p.add_argument("--kills", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rounds_killsafe.json"))
    ns = p.parse_args(argv)
    from mmpo.toyworld.shipped import SHIPPED_DIR

    (base,) = sorted(SHIPPED_DIR.glob("base-*"))
    run_dir = Path(ns.run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    whole, killed = run_dir / "uninterrupted", run_dir / "killed"

    began = time.perf_counter()
    process = subprocess.Popen(command(whole, base), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while process.poll() is None and not (whole / "rounds-settings.json").exists():
        time.sleep(0.05)
    startup = time.perf_counter() - began  # imports and checks, repeated by every rerun
    _, stderr = process.communicate()
    if process.returncode:
        raise SystemExit(stderr.decode()[-2000:])
    duration = time.perf_counter() - began
    print(f"uninterrupted: {duration:.1f} s ({startup:.1f} s before round 1 starts)")

    rng = random.Random(ns.seed)
    kills = []
    for _ in range(ns.kills):  # each rerun continues the last one: kills spread over the whole run
        delay = startup + rng.uniform(0.5, 1.5) * (duration - startup) / (ns.kills + 1)
        process = subprocess.Popen(command(killed, base), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process.wait(timeout=delay)
            kills.append({"after_s": round(delay, 1), "where": "the run had finished"})
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills.append({"after_s": round(delay, 1), "where": where(killed)})
        print(f"kill after {delay:.1f} s: {kills[-1]['where']}")
    subprocess.run(command(killed, base), check=True, env=env, capture_output=True)

    rounds = []
    for k in (1, 2, 3):
        same_pairs = pairs(whole / f"round-{k}" / "pairs.jsonl") == pairs(killed / f"round-{k}" / "pairs.jsonl")
        diff = max_difference(whole / f"round-{k}" / "model", killed / f"round-{k}" / "model")
        rounds.append({"round": k, "same_pairs": same_pairs, "max_weight_difference": diff})
        print(f"round {k}: pairs identical {same_pairs}, max |dW| {diff:.3g}")
    result = {"uninterrupted_seconds": round(duration, 1), "kills": kills, "rounds": rounds}
    Path(ns.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {ns.out}")
    return 0 if all(r["same_pairs"] and r["max_weight_difference"] == 0 for r in rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
