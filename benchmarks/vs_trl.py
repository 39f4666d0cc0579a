"""mmpo vs TRL's DPOTrainer: step times, peak memory and step-0 parity, same weights, same records, one run.

    pip install -e .[bench]          # the extra pins trl==1.16.0 (it installs nothing else here)
    python benchmarks/vs_trl.py [--shape {toy,llava15,both}] [--rounds R] [--steps-per-round K]
                                [--batch-size B] [--quick] [--no-memory] [--out-dir DIR]

A script, not a test: it prints figures and asserts no timing (machines are noisy; the ratios are
what to compare). The default run (both shapes, 4 rounds of 3 steps after 2 warm-up steps, memory
subprocesses) took 11 minutes on 2 CPU cores (toy 73 s, llava15 584 s, of which about 100 s are
the memory subprocesses; ``elapsed_s`` in the JSON); ``--quick`` (1 round of 2 steps, no memory
subprocesses) takes about 3 minutes, ``--no-memory`` saves about 2.

Shapes:

* ``toy``: the synthetic world's tiny LLaVA (``mmpo.toyworld.model.build_tiny_vlm``, untrained:
  timing needs no training) and the demo's ground-truth pairs (``ground_truth_pairs``), batch 16.
* ``llava15``: ``llava15_shape.build_llava15("cpu")``: LLaVA-1.5's image geometry (336 px, patch 14,
  576 image tokens), vocabulary (32064) and projector on a small Llama, with LLaVA-1.5-length
  records (about 50 prompt tokens, 100-200 response tokens; the counts are printed), batch 4.

Rows (full fine-tuning, float32, AdamW, the same learning rate, sigmoid DPO loss, beta 0.1, no
truncation, no gradient checkpointing, batch collation included in the step time):

* ``mmpo unshared``: ``PreferenceTrainer`` with ``prefix_sharing=False``: one row per response
  (2 rows per record), live frozen-copy reference (``reference="copy"``).
* ``mmpo prefix-shared``: one packed row per record (image + prompt once, chosen and rejected
  after it under a block attention mask), live frozen-copy reference.
* ``mmpo prefix-shared + precomputed reference``: the same, with the reference log-probs computed
  once before training (``reference="precomputed"``); that one-off pass is timed separately.
* ``TRL live``: ``trl.DPOTrainer`` with an explicit reference model (a second copy of the weights),
  its own vision collator (conversational records, ``images``/``prompt``/``chosen``/``rejected``).
* ``mmpo unshared + AdaViP`` / ``mmpo prefix-shared + AdaViP``: AdaViP's third, vision-rejected
  sample per record (the chosen text on another image; 3 rows per record unshared, a second packed
  row shared). TRL has no equivalent, so these are compared with mmpo's own DPO rows.

Timing: every trainer is built once per shape and trains in its own thread; the threads take turns
(only one runs at a time), so in each round every row runs ``--steps-per-round`` optimizer steps of
its real ``Trainer`` loop, and the round keeps each row's median step time. A warm-up round runs
first and is discarded. A step is the wall time from the end of the previous step to the end of
this one (collation, forward, backward, clipping, optimizer). Reported per row: the median over
rounds of the round medians; vs TRL, the median of the per-round ratios and the ratio of the
minimum step times. Peak memory is measured per row in a subprocess of its own, over
``--memory-steps`` steps (CPU: peak RSS minus the RSS after the model was built; the peak is read
from ``VmHWM``, since ``ru_maxrss`` carries the parent's high-water mark over fork + exec; CUDA:
``max_memory_allocated`` minus the memory allocated after the model was built).

Parity, before any update: every policy is the same seeded perturbation of the initial weights
(``w + 0.01 * N(0, 1)``) and every reference is the initial weights, so rewards are not all zero.
On the first batch (the first B records), each mmpo DPO row's per-record policy and reference
log-probs, rewards and loss are compared with TRL's (its ``compute_ref_log_probs`` code path for
the log-probs, ``compute_loss`` and its logged metrics for the loss and rewards). EOS convention:
both sides score responses that end with EOS: mmpo ends a response as the chat template ends an
assistant turn (``RowEncoder.end_turn=True``), with ``</s>`` on the LLaVA-1.5 shape and with the
tokenizer's EOS on the toy shape, whose template writes no end token; TRL gets the EOS from the
LLaVA-1.5 chat template, and on the toy shape from an EOS appended to TRL's response text.

Reading the numbers: on the CPU, TRL's step is dominated by its chunked fused LM head (TRL 1.16
scores completions through ``ChunkedLogProbFunction``, which also computes entropy, mean logits and
top-1 hits and recomputes its tiles in the backward pass: about 80% of TRL's step on the llava15
shape under ``torch.profiler``), so the mmpo/TRL ratios here overstate what a GPU would show.
AdaViP's vision-rejected sample has its own image, so it cannot share the record's prefix: on the
llava15 shape it adds an image + prompt + chosen row (about 770 tokens, padded to the packed rows'
width) to a packed row of about 920, i.e. at least 1.8x the tokens of a DPO step.

Output: a Markdown table on stdout, and ``DIR/vs_trl-<shape>.json`` (default ``benchmarks/results``):
rows, settings, parity, targets and the machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))

BETA, LEARNING_RATE, PERTURBATION = 0.1, 1e-6, 0.01
TRL = "TRL live"


@dataclass(frozen=True)
class Row:
    kind: str  # "mmpo" or "trl"
    share: bool = True
    reference: str = "copy"
    adavip: bool = False


ROWS: dict[str, Row] = {
    "mmpo unshared": Row("mmpo", share=False),
    "mmpo prefix-shared": Row("mmpo"),
    "mmpo prefix-shared + precomputed reference": Row("mmpo", reference="precomputed"),
    TRL: Row("trl"),
    "mmpo unshared + AdaViP": Row("mmpo", share=False, adavip=True),
    "mmpo prefix-shared + AdaViP": Row("mmpo", adavip=True),
}
PARITY_ROWS = ("mmpo unshared", "mmpo prefix-shared", "mmpo prefix-shared + precomputed reference")
#: (name, numerator row, denominator row, shape it applies to, bound): the issue's targets.
TARGETS = (
    ("prefix-shared / TRL (per-round median)", "mmpo prefix-shared", TRL, "llava15", 0.6),
    ("prefix-shared + precomputed / TRL (per-round median)", "mmpo prefix-shared + precomputed reference", TRL,
     "llava15", 0.4),
    ("AdaViP shared / DPO shared (per-round median)", "mmpo prefix-shared + AdaViP", "mmpo prefix-shared", None, 1.3),
)
DEFAULT_BATCH = {"toy": 16, "llava15": 4}
#: transformers 5.x renamed ``gradient_checkpointing`` to ``activation_checkpointing`` (the old name warns).
CHECKPOINTING = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                 else "gradient_checkpointing")


# ------------------------------------------------------------------------------------------ shapes
@dataclass
class Shape:
    name: str
    processor: Any
    records: list  # PreferenceRecord, rejected_image set (AdaViP rows use it, the others ignore it)
    make_model: Any  # () -> a fresh model, the same weights every call
    append_eos_to_trl: bool  # the chat template renders no EOS after a response
    description: str
    info: dict = field(default_factory=dict)


def build_shape(name: str, n_records: int, tmp: Path) -> Shape:
    if name == "toy":
        from mmpo.toyworld.data import ground_truth_pairs
        from mmpo.toyworld.model import build_processor, build_tiny_vlm, train_tokenizer
        from mmpo.toyworld.scenes import WorldConfig, sample_scenes

        world = WorldConfig(seed=0)
        scenes = sample_scenes(world, n_records, prefix="bench")
        records = ground_truth_pairs(scenes, world, tmp / "images")
        (tmp / "vision").mkdir(exist_ok=True)
        for scene, record in zip(scenes, records, strict=True):  # AdaViP: the scene without its first object
            path = tmp / "vision" / f"{scene.id}.png"
            scene.render(without=0).save(path)
            record.rejected_image = str(path)
        tokenizer = train_tokenizer()
        return Shape(name, build_processor(tokenizer), records, lambda: build_tiny_vlm(tokenizer, seed=0), True,
                     "toy world tiny LLaVA (untrained), the demo's ground-truth pairs")
    if name == "llava15":
        from llava15_shape import build_llava15, build_processor, records, token_counts

        processor = build_processor()
        recs = records(n_records, seed=0, vision=True)
        counts = token_counts(processor, recs)
        return Shape(name, processor, recs, lambda: build_llava15("cpu", seed=0)[0], False,
                     "LLaVA-1.5 shape (cpu size): CLIP 336/14 (576 image tokens), 2-layer GELU projector, "
                     "Llama, vocabulary 32064", {"token_counts": counts})
    raise ValueError(f"unknown shape {name!r}")


def trl_dataset(shape: Shape):
    """The records in TRL's conversational vision format (the images as PIL images)."""
    from datasets import Dataset
    from PIL import Image

    eos = shape.processor.tokenizer.eos_token if shape.append_eos_to_trl else ""

    def image(ref):
        return ref if isinstance(ref, Image.Image) else Image.open(ref).convert("RGB")

    return Dataset.from_list([{
        "images": [image(r.image)],
        "prompt": [{"role": "user", "content": r.prompt}],  # TRL puts the image before the text, as mmpo
        "chosen": [{"role": "assistant", "content": r.chosen + eos}],
        "rejected": [{"role": "assistant", "content": r.rejected + eos}],
    } for r in shape.records])


# ------------------------------------------------------------------------------------------ trainers
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def common_args(max_steps: int, batch_size: int) -> dict[str, Any]:
    return dict(max_steps=max_steps, per_device_train_batch_size=batch_size, per_device_eval_batch_size=batch_size,
                learning_rate=LEARNING_RATE, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                max_grad_norm=1.0, optim="adamw_torch", seed=0, logging_steps=10**6, save_strategy="no",
                disable_tqdm=True, report_to=[], use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
                bf16=False, fp16=False, beta=BETA, max_length=None, **{CHECKPOINTING: False})


def build_trainer(name: str, shape: Shape, datasets: dict, max_steps: int, batch_size: int, tmp: Path,
                  callbacks: list) -> tuple[Any, float]:
    """The row's trainer and how long building it took (for the precomputed row: the reference pass)."""
    row = ROWS[name]
    out = tmp / name.replace(" ", "_").replace("+", "plus")
    model = shape.make_model()
    processor = copy.deepcopy(shape.processor)
    sync()
    start = time.perf_counter()
    if row.kind == "trl":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(output_dir=str(out), loss_type=["sigmoid"], disable_dropout=True,
                         precompute_ref_log_probs=False, **common_args(max_steps, batch_size))
        trainer = DPOTrainer(model=model, ref_model=shape.make_model(), args=args, train_dataset=datasets["trl"],
                             processing_class=processor, callbacks=callbacks)
    else:
        from mmpo.training.config import AdavipConfig, Methods, PreferenceConfig
        from mmpo.training.trainer import PreferenceTrainer

        args = PreferenceConfig(output_dir=str(out), reference=row.reference, reference_cache_dir=str(out / "ref"),
                                prefix_sharing=row.share, preflight=False, **common_args(max_steps, batch_size))
        methods = Methods(adavip=AdavipConfig(enabled=True)) if row.adavip else Methods()
        trainer = PreferenceTrainer(model, args, processor, datasets["mmpo"], methods=methods, callbacks=callbacks)
        trainer.data_collator.encoder.append_eos = True  # mmpo's default, stated: responses end with EOS
    sync()
    trainer.remove_callback(PrinterCallback)  # no train-summary dicts in the output
    return trainer, time.perf_counter() - start


def perturb(model: torch.nn.Module, scale: float = PERTURBATION) -> None:
    """``w += scale * N(0, 1)`` on every floating weight, seeded: the same noise for every row."""
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for _, weight in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if weight.is_floating_point():
                noise = torch.randn(weight.shape, generator=generator, dtype=torch.float32)
                weight.add_(scale * noise.to(weight.device, weight.dtype))


# ------------------------------------------------------------------------------------------ interleaving
class TurnTaker(TrainerCallback):
    """Runs a trainer's ``train()`` in a thread that pauses after every ``n`` optimizer steps.

    ``run(n)`` lets it take ``n`` more steps and waits until it has paused again, so exactly one
    trainer computes at a time. ``times`` holds each step's wall time measured from the end of the
    previous step (or the resume), ``compute`` from ``on_step_begin`` (collation excluded).
    """

    def __init__(self, name: str):
        self.name, self.trainer = name, None
        self.times: list[float] = []
        self.compute: list[float] = []
        self._go, self._parked = threading.Semaphore(0), threading.Semaphore(0)
        self._left, self._resume, self._begin = 0, 0.0, 0.0
        self._finishing, self.error, self.thread = False, None, None

    def start(self, trainer, threads: int) -> None:
        self.trainer = trainer

        def work():
            torch.set_num_threads(threads)
            self._go.acquire()
            self._resume = time.perf_counter()
            try:
                trainer.train()
            except BaseException as error:  # reported by run()
                self.error = error
            finally:
                self._finishing = True
                self._parked.release()

        self.thread = threading.Thread(target=work, name=self.name, daemon=True)
        self.thread.start()

    def run(self, steps: int) -> None:
        if self._finishing:
            raise RuntimeError(f"{self.name}: training already ended") from self.error
        self._left = steps
        self._go.release()
        self._parked.acquire()
        if self.error is not None:
            raise RuntimeError(f"{self.name} failed: {self.error!r}") from self.error

    def finish(self) -> None:
        self._finishing = True
        self._go.release()
        self.thread.join()

    def on_step_begin(self, args, state, control, **kwargs):
        sync()
        self._begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        sync()
        now = time.perf_counter()
        self.times.append(now - self._resume)
        self.compute.append(now - self._begin)
        self._left -= 1
        if self._left <= 0 and not self._finishing:
            self._parked.release()
            self._go.acquire()
        if self._finishing:  # finish() (after the last round, or after another row failed): stop here
            control.should_training_stop = True
        self._resume = time.perf_counter()
        return control


# ------------------------------------------------------------------------------------------ parity
def mmpo_first_batch(trainer, batch_size: int) -> dict[str, Any]:
    from mmpo.data.collator import move_batch
    from mmpo.forward import policy_response_logps

    model = trainer.model.eval()
    batch = move_batch(trainer.data_collator([trainer.train_dataset[i] for i in range(batch_size)]),
                       trainer.args.device)
    with torch.no_grad():
        policy, mask = policy_response_logps(model, batch)
        reference = trainer.reference(batch)
        loss, outputs = trainer.compute_loss(model, batch, return_outputs=True)
    trainer._metrics["eval"].clear()
    model.train()
    B = batch_size
    pol, ref = (policy * mask).sum(1).double(), (reference * mask).sum(1).double()
    ids = batch["model_inputs"]["input_ids"]
    return {"policy_chosen": pol[:B], "policy_rejected": pol[B:2 * B], "ref_chosen": ref[:B],
            "ref_rejected": ref[B:2 * B], "loss": float(loss), "losses": outputs["losses"].double(),
            "response_tokens": mask.sum(1)[:2 * B].tolist(), "rows": tuple(ids.shape),
            "tokens": real_tokens(batch)}


def real_tokens(batch: dict[str, Any]) -> int:
    """Non-padding tokens of an mmpo batch (prefix-shared rows mark padding with segment id -1)."""
    if "segment_ids" in batch:
        return int((batch["segment_ids"] >= 0).sum())
    return int(batch["model_inputs"]["attention_mask"].sum())


def trl_first_batch(trainer, batch_size: int) -> dict[str, Any]:
    trainer.model.eval()
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(batch_size)]))
    with torch.no_grad():
        pc, pr = trainer.compute_ref_log_probs(trainer.model, batch)
        rc, rr = trainer.compute_ref_log_probs(trainer.ref_model, batch)
        loss = trainer.compute_loss(trainer.model, batch)
    metrics = {k: v[-1] for k, v in trainer._metrics["eval"].items() if v}
    trainer._metrics["eval"].clear()
    trainer.model.train()
    mask = batch["completion_mask"]
    return {"policy_chosen": pc.double(), "policy_rejected": pr.double(), "ref_chosen": rc.double(),
            "ref_rejected": rr.double(), "loss": float(loss), "metrics": metrics,
            "response_tokens": mask.sum(1).tolist(), "rows": tuple(batch["input_ids"].shape),
            "tokens": int(batch["attention_mask"].sum())}


def parity(mmpo: dict[str, Any], trl: dict[str, Any]) -> dict[str, Any]:
    def diff(a, b) -> float:
        return float((torch.as_tensor(a, dtype=torch.float64).cpu() - torch.as_tensor(b, dtype=torch.float64).cpu())
                     .abs().max())

    out = {"response_tokens_equal": mmpo["response_tokens"] == trl["response_tokens"]}
    for key in ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected"):
        out[f"logps/{key}"] = diff(mmpo[key], trl[key])
    for kind in ("chosen", "rejected"):
        mine = BETA * (mmpo[f"policy_{kind}"] - mmpo[f"ref_{kind}"]).cpu()
        theirs = BETA * (trl[f"policy_{kind}"] - trl[f"ref_{kind}"]).cpu()
        out[f"rewards/{kind}"] = diff(mine, theirs)
        if f"rewards/{kind}" in trl["metrics"]:  # TRL's logged batch mean against mmpo's mean
            out[f"rewards/{kind} (TRL's logged mean)"] = abs(float(mine.mean()) - trl["metrics"][f"rewards/{kind}"])
        if f"logps/{kind}" in trl["metrics"]:
            out[f"logps/{kind} (TRL's logged mean)"] = abs(float(mmpo[f"policy_{kind}"].mean())
                                                           - trl["metrics"][f"logps/{kind}"])
    out["loss"] = abs(mmpo["loss"] - trl["loss"])
    return out


# ------------------------------------------------------------------------------------------ memory
def proc_status_mb(key: str) -> float:
    """A ``/proc/self/status`` memory field in MB: ``VmRSS`` (now) or ``VmHWM`` (this process's peak RSS)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_row(name: str, shape_name: str, batch_size: int, steps: int) -> dict[str, float]:
    """Peak memory of one row over ``steps`` steps (run in a subprocess of its own)."""
    tmp = Path(tempfile.mkdtemp(prefix="mmpo-vs-trl-mem-"))
    shape = build_shape(shape_name, batch_size * steps, tmp)
    datasets = {"mmpo": mmpo_dataset(shape), "trl": trl_dataset(shape) if ROWS[name].kind == "trl" else None}
    cuda = torch.cuda.is_available()
    fresh = shape.make_model
    model = fresh().to(device())
    sync()
    base = torch.cuda.memory_allocated() / 2**20 if cuda else proc_status_mb("VmRSS")  # baseline: the policy built
    built = [model]
    shape.make_model = lambda: built.pop() if built else fresh().to(device())  # the row's policy is this one
    del model
    trainer, _ = build_trainer(name, shape, datasets, steps, batch_size, tmp, [])
    trainer.train()
    # ru_maxrss is not this process's own peak: Linux carries the high-water mark over fork + exec,
    # so a subprocess of the benchmark (whose trainers hold gigabytes) starts at the parent's RSS.
    # VmHWM is the peak RSS of this process image alone; ru_maxrss is kept in the JSON for reference.
    ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else proc_status_mb("VmHWM")
    return {"baseline_mb": base, "peak_mb": peak, "delta_mb": peak - base, "ru_maxrss_mb": ru_maxrss,
            "measure": "cuda max_memory_allocated" if cuda else "VmHWM (peak RSS)"}


def measure_memory(names: list[str], shape_name: str, batch_size: int, steps: int) -> dict[str, dict]:
    out = {}
    for name in names:
        command = [sys.executable, __file__, "--_memory-row", name, "--shape", shape_name,
                   "--batch-size", str(batch_size), "--memory-steps", str(steps)]
        proc = subprocess.run(command, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("MEMORY_JSON ")), None)
        if proc.returncode != 0 or line is None:
            print(f"  memory of {name!r}: subprocess failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
            out[name] = {}
        else:
            out[name] = json.loads(line[len("MEMORY_JSON "):])
            print(f"  memory of {name}: {out[name]['delta_mb']:.0f} MB above the built model")
    return out


def mmpo_dataset(shape: Shape):
    from mmpo.data.collator import PreferenceDataset

    return PreferenceDataset(shape.records)


# ------------------------------------------------------------------------------------------ the run
def machine() -> dict[str, Any]:
    import transformers

    import mmpo

    try:
        import trl

        trl_version = trl.__version__
    except ImportError:
        trl_version = None
    return {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl_version,
            "mmpo": getattr(mmpo, "__version__", None), "device": device(),
            "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()}


def ratio_stats(results: dict[str, dict], num: str, den: str) -> dict[str, float] | None:
    if num not in results or den not in results:
        return None
    a, b = results[num]["round_medians"], results[den]["round_medians"]
    return {"per_round_median": statistics.median(x / y for x, y in zip(a, b, strict=True)),
            "min_ratio": results[num]["min_s"] / results[den]["min_s"]}


def run_shape(shape_name: str, ns, names: list[str]) -> dict[str, Any]:
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    batch = ns.batch_size or DEFAULT_BATCH[shape_name]
    total_steps = ns.warmup_steps + ns.rounds * ns.steps_per_round
    tmp = Path(tempfile.mkdtemp(prefix=f"mmpo-vs-trl-{shape_name}-"))
    t0 = time.perf_counter()
    shape = build_shape(shape_name, batch * total_steps, tmp)
    datasets = {"mmpo": mmpo_dataset(shape), "trl": trl_dataset(shape) if TRL in names else None}
    print(f"\n## {shape_name}: {shape.description}")
    if "token_counts" in shape.info:
        c = shape.info["token_counts"]
        print("token counts (min / max / mean): " + "; ".join(
            f"{k} {v[0]} / {v[1]} / {v[2]:.1f}" for k, v in c.items()) + " (prompt: chat template text, image "
            "tokens excluded; responses: without EOS)")
    takers, setup = {}, {}
    for name in names:
        taker = TurnTaker(name)
        taker.trainer, setup[name] = build_trainer(name, shape, datasets, total_steps, batch, tmp, [taker])
        takers[name] = taker
    model0 = takers[names[0]].trainer.model
    params = sum(p.numel() for p in model0.parameters())
    print(f"{params / 1e6:.2f}M parameters, batch {batch} records, {ns.rounds} rounds x {ns.steps_per_round} "
          f"steps (+{ns.warmup_steps} warm-up), {threads} torch threads, {len(shape.records)} records")
    if "mmpo prefix-shared + precomputed reference" in setup:
        print(f"one-off precomputed reference pass over {len(shape.records)} records: "
              f"{setup['mmpo prefix-shared + precomputed reference']:.2f} s (trainer construction; "
              f"a live-reference trainer takes {setup.get('mmpo prefix-shared', float('nan')):.2f} s)")

    # Parity before any update: policy = perturbed weights, reference = initial weights, for every row.
    for taker in takers.values():
        perturb(taker.trainer.model)
    firsts = {}
    for name in names:
        row = ROWS[name]
        if name == TRL:
            firsts[name] = trl_first_batch(takers[name].trainer, batch)
        elif name in PARITY_ROWS or row.adavip:
            firsts[name] = mmpo_first_batch(takers[name].trainer, batch)
    parities = {name: parity(firsts[name], firsts[TRL]) for name in PARITY_ROWS if name in firsts and TRL in firsts}
    for name, p in parities.items():
        groups = {"logps": [v for k, v in p.items() if k.startswith("logps/")],
                  "rewards": [v for k, v in p.items() if k.startswith("rewards/")], "loss": [p["loss"]]}
        print(f"parity {name} vs TRL (first batch, max |diff|): "
              + ", ".join(f"{k} {max(v):.2e}" for k, v in groups.items())
              + f"; same response tokens: {p['response_tokens_equal']}")

    # Interleaved rounds.
    for taker in takers.values():
        taker.start(taker.trainer, threads)
    try:
        for name in names:  # warm-up round, discarded
            takers[name].run(ns.warmup_steps)
        for r in range(ns.rounds):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                takers[name].run(ns.steps_per_round)
    finally:
        for taker in takers.values():
            taker.finish()
    results: dict[str, dict] = {}
    for name in names:
        times = takers[name].times[ns.warmup_steps:]
        compute = takers[name].compute[ns.warmup_steps:]
        k = ns.steps_per_round
        rounds = [times[i * k:(i + 1) * k] for i in range(ns.rounds)]
        medians = [statistics.median(x) for x in rounds]
        first = firsts.get(name, {})
        results[name] = {"median_s": statistics.median(medians), "min_s": min(times), "round_medians": medians,
                         "step_times": times, "compute_median_s": statistics.median(compute),
                         "setup_s": setup[name], "first_batch_rows": first.get("rows"),
                         "first_batch_tokens": first.get("tokens")}
    memory = measure_memory(names, shape_name, batch, ns.memory_steps) if ns.memory else {}
    for name in names:
        results[name]["memory"] = memory.get(name, {})
    for name in names:
        stats = ratio_stats(results, name, TRL)
        results[name]["vs_trl"] = stats

    ratios = {
        "AdaViP shared / DPO shared": ratio_stats(results, "mmpo prefix-shared + AdaViP", "mmpo prefix-shared"),
        "AdaViP shared / DPO unshared": ratio_stats(results, "mmpo prefix-shared + AdaViP", "mmpo unshared"),
        "AdaViP unshared / DPO unshared": ratio_stats(results, "mmpo unshared + AdaViP", "mmpo unshared"),
        "prefix-shared / unshared": ratio_stats(results, "mmpo prefix-shared", "mmpo unshared"),
    }
    targets = []
    for label, num, den, only, bound in TARGETS:
        stats = ratio_stats(results, num, den)
        if stats is None or (only is not None and only != shape_name):
            continue
        value = stats["per_round_median"]
        targets.append({"target": label, "bound": bound, "value": value, "met": value <= bound})

    mem_col = "peak mem MB" + (" (RSS)" if device() == "cpu" else " (CUDA)")
    print(f"\n| {'row':<44} | {'s/step':>7} | {'vs TRL (round median)':>21} | {'vs TRL (min/min)':>16} | "
          f"{'first batch rows x width':>24} | {mem_col:>18} |")
    print(f"| {'-' * 44} | {'-' * 6}: | {'-' * 20}: | {'-' * 15}: | {'-' * 23}: | {'-' * 17}: |")
    for name, res in results.items():
        vs, rows, mem = res["vs_trl"], res["first_batch_rows"], res["memory"].get("delta_mb")
        round_ratio = f"{vs['per_round_median']:.2f}x" if vs else "-"
        min_ratio = f"{vs['min_ratio']:.2f}x" if vs else "-"
        shape_text = f"{rows[0]} x {rows[1]}" if rows else "-"
        mem_text = f"{mem:.0f}" if mem is not None else "-"
        print(f"| {name:<44} | {res['median_s']:7.3f} | {round_ratio:>21} | {min_ratio:>16} | {shape_text:>24} | "
              f"{mem_text:>18} |")
    print()
    for label, stats in ratios.items():
        if stats:
            print(f"{label}: {stats['per_round_median']:.2f}x (per-round median), {stats['min_ratio']:.2f}x (min/min)")
    for t in targets:
        print(f"target {t['target']} <= {t['bound']}: {t['value']:.2f} -> {'met' if t['met'] else 'not met'}")

    out = {
        "shape": shape_name, "description": shape.description, "shape_info": shape.info,
        "parameters": params, "rows": results, "ratios": ratios, "targets": targets,
        "parity": parities,
        "parity_convention": "responses end with EOS on both sides (mmpo append_eos=True; TRL: "
                             + ("EOS appended to its response text" if shape.append_eos_to_trl
                                else "the chat template's </s>") + "); policy = initial weights + "
                             f"{PERTURBATION} * N(0, 1), reference = initial weights; first {batch} records",
        "settings": {"batch_size": batch, "rounds": ns.rounds, "steps_per_round": ns.steps_per_round,
                     "warmup_steps": ns.warmup_steps, "records": len(shape.records), "beta": BETA,
                     "learning_rate": LEARNING_RATE, "optimizer": "adamw_torch", "dtype": "float32",
                     "loss": "sigmoid", "max_length": None, "gradient_checkpointing": False,
                     "memory_steps": ns.memory_steps if ns.memory else None, "quick": ns.quick},
        "machine": machine(), "elapsed_s": time.perf_counter() - t0,
    }
    out_dir = Path(ns.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"vs_trl-{shape_name}.json"
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"wrote {path} ({out['elapsed_s']:.0f} s for this shape)")
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=("toy", "llava15", "both"), default="both")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps-per-round", type=int, default=3)
    p.add_argument("--warmup-steps", type=int, default=2, help="steps per row before the first round (discarded)")
    p.add_argument("--batch-size", type=int, default=None, help="records per batch (default: toy 16, llava15 4)")
    p.add_argument("--quick", action="store_true", help="smoke check: 1 round of 2 steps, 1 warm-up, no memory")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory subprocesses")
    p.add_argument("--memory-steps", type=int, default=2)
    p.add_argument("--rows", default=None, help="comma-separated subset of the rows (default: all)")
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--_memory-row", dest="memory_row", default=None, help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.memory_row is not None:
        result = memory_row(ns.memory_row, ns.shape, ns.batch_size, ns.memory_steps)
        print("MEMORY_JSON " + json.dumps(result))
        return 0
    if ns.quick:
        ns.rounds, ns.steps_per_round, ns.warmup_steps, ns.memory = 1, 2, 1, False
    names = list(ROWS) if ns.rows is None else [n.strip() for n in ns.rows.split(",")]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; rows are {list(ROWS)}")
    try:
        import trl  # noqa: F401
    except ImportError:
        print("trl is not installed: pip install -e .[bench] (trl==1.16.0); running the mmpo rows only")
        names = [n for n in names if n != TRL]
    start = time.perf_counter()
    for shape in (("toy", "llava15") if ns.shape == "both" else (ns.shape,)):
        run_shape(shape, ns, names)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
