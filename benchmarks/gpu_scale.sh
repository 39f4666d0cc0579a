#!/usr/bin/env bash
# LLaVA-1.5-7B-shaped DPO full fine-tuning (frozen-copy reference) under DDP, FSDP2 and DeepSpeed
# ZeRO-3, with the shipped configs/accelerate/*.yaml, on the visible GPUs; then one table of peak
# memory per GPU, median step time and tokens/s (see benchmarks/gpu_scale.py for what is measured).
#
#   bash benchmarks/gpu_scale.sh                      # every visible GPU
#   NPROC=1 bash benchmarks/gpu_scale.sh              # one process per engine
#   PYTHON=.venv/bin/python ENGINES="ddp zero3" ENGINE_TIMEOUT=300 bash benchmarks/gpu_scale.sh
#
# Each engine runs 2 warm-up + 5 measured steps, about 1.5-2.5 minutes with the launch and the model
# build (estimated; not yet measured), so 5-7 minutes in all on one H100/H200; an engine still running
# after ENGINE_TIMEOUT seconds (default 160: at most 8 minutes for the three) is stopped. An engine that
# fails (out of memory, time-out, crash) is reported as failed in the table and the next one runs.
# Results: benchmarks/results/gpu_scale-ENGINE.json. Needs mmpo installed in the Python that
# `accelerate` (from PATH) runs, and DeepSpeed for zero3.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
NPROC=${NPROC:-$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))')}
ENGINES=${ENGINES:-ddp fsdp zero3}
ENGINE_TIMEOUT=${ENGINE_TIMEOUT:-160}

mkdir -p benchmarks/results
outs=()
for engine in $ENGINES; do
    out=benchmarks/results/gpu_scale-$engine.json
    outs+=("$out")
    rm -f "$out"
    echo "== $engine: $NPROC process(es), configs/accelerate/$engine.yaml"
    rc=0
    timeout --kill-after=15 "$ENGINE_TIMEOUT" \
        accelerate launch --config_file "configs/accelerate/$engine.yaml" --num_processes "$NPROC" \
        benchmarks/gpu_scale.py --engine-label "$engine" --steps 5 --warmup 2 --out "$out" || rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "== $engine: exit code $rc"
    fi
    if [[ ! -s $out ]]; then  # no result written by the script itself: say why
        reason="exit code $rc"
        if [[ $rc -eq 124 || $rc -eq 137 ]]; then
            reason="stopped after ${ENGINE_TIMEOUT} s"
        fi
        printf '{"engine": "%s", "num_processes": %s, "error": "%s"}\n' "$engine" "$NPROC" "$reason" >"$out"
    fi
done

echo
echo "LLaVA-1.5-7B shape, DPO full fine-tuning, frozen-copy reference, bf16, gradient checkpointing, batch 2 per GPU:"
"$PYTHON" benchmarks/gpu_scale.py --table "${outs[@]}"  # exit status 1 if an engine failed
