"""``mmpo demo``: a preference method end to end on the synthetic world, on a laptop CPU.

1. build (or reuse from the cache) the base model: tiny LLaVA, SFT on noisy captions;
2. build preference records from fresh scenes, in the form the method needs:
   ``truth`` pairs (chosen = exact description, rejected = one hallucinated object) or ``seva``
   pairs (the base model's answers on the clean vs the diffusion-noised image); ASPO and DAMA add
   per-sentence CLIP scores from the world's tiny CLIP; AdaViP adds vision-rejected images;
3. evaluate the base model on the held-out split (CHAIR, coverage, POPE);
4. train the method with :class:`~mmpo.training.trainer.PreferenceTrainer`;
5. evaluate again; write ``metrics.json``, the training log and plots; print a table.

The base model, the tiny CLIP, the prepared records and the base model's metrics are cached
(``--cache-dir``), so running several methods one after another pays for them once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

#: method name -> (the switches, the default data)
METHODS = {
    "dpo": ({}, "truth"),
    "aspo": ({"aspo": {"aspo": True}}, "seva"),
    "d2po": ({"dama": {"dama_data": True}}, "truth"),
    "mdpo": ({"dama": {"dama_model": True}}, "truth"),
    "dama": ({"dama": {"dama_data": True, "dama_model": True}}, "truth"),
    "adavip": ({"adavip": {"adavip": True}}, "truth"),
    "adavip-plus-vision": ({"adavip": {"adavip": True, "adavip_loss": "plus_vision"}}, "truth"),
}
#: Bumped whenever prepare_records changes what it builds, so stale cached records are not reused.
DATA_VERSION = 2
TABLE_KEYS = ("chair_i", "chair_s", "coverage", "mentions_per_response", "attribute_error", "pope_f1",
              "pope_accuracy", "pope_yes_ratio")
PLOTS = {
    "rewards.png": ["loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"],
    "aspo.png": ["aspo/weight_mean", "aspo/weight_std", "aspo/scale", "aspo/sentences_per_response"],
    "dama.png": ["dama/alpha_model", "dama/r_bar", "dama/gap_easy", "dama/gap_hard", "dama/beta_mean"],
    "adavip.png": ["adavip/weight_vision", "adavip/weight_language", "rewards/vision_margins"],
}


@dataclass
class DemoOptions:
    method: str = "dpo"
    data: str | None = None
    output_dir: str = "runs/demo"
    cache_dir: str = os.environ.get("MMPO_CACHE", str(Path.home() / ".cache" / "mmpo"))
    n_pairs: int = 800
    n_eval_scenes: int = 200
    steps: int = 200
    batch_size: int = 16
    learning_rate: float = 3e-4
    beta: float = 0.1
    sft_weight: float = 1.0
    base_steps: int = 1500
    base_scenes: int = 3000
    clip_steps: int | None = None
    seed: int = 0
    progress: bool = True


def build_parser() -> argparse.ArgumentParser:
    d = DemoOptions()
    p = argparse.ArgumentParser(prog="mmpo demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=list(METHODS), default=d.method, help="preference method to train")
    p.add_argument("--data", choices=("truth", "seva"), default=None,
                   help="preference pairs: ground truth vs hallucinated, or the base model's clean vs noisy-image "
                        "answers (default: seva for aspo, truth otherwise)")
    p.add_argument("--output-dir", default=d.output_dir, help="run directory (metrics.json, logs, plots)")
    p.add_argument("--cache-dir", default=d.cache_dir, help="base model, CLIP and data cache ($MMPO_CACHE)")
    p.add_argument("--n-pairs", type=int, default=d.n_pairs, help="scenes to build preference records from")
    p.add_argument("--n-eval-scenes", type=int, default=d.n_eval_scenes, help="held-out scenes to evaluate on")
    p.add_argument("--steps", type=int, default=d.steps, help="preference optimizer steps")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="records per step")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--beta", type=float, default=d.beta)
    p.add_argument("--sft-weight", type=float, default=d.sft_weight,
                   help="NLL term on the chosen response (0 = plain DPO, which collapses a tiny model)")
    p.add_argument("--base-steps", type=int, default=d.base_steps, help="SFT steps of the base model")
    p.add_argument("--base-scenes", type=int, default=d.base_scenes, help="SFT scenes of the base model")
    p.add_argument("--clip-steps", type=int, default=None, help="training steps of the world's tiny CLIP")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    return p


def run_demo(opts: DemoOptions) -> dict:
    """Run the demo; returns the ``metrics.json`` content."""
    import torch

    from ..data.collator import PreferenceDataset
    from ..data.construct.journal import atomic_write_text
    from ..plots import plot_log_history
    from ..toyworld.base import BaseModelRecipe, ensure_base_model
    from ..toyworld.scenes import WorldConfig
    from ..training.config import (
        AdavipArguments,
        AspoArguments,
        DamaArguments,
        Methods,
        ModelArguments,
        PreferenceConfig,
    )
    from ..training.model_loading import load_policy
    from ..training.trainer import PreferenceTrainer

    started = time.time()
    switches, default_data = METHODS[opts.method]
    data_kind = opts.data or default_data
    out = Path(opts.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(opts.seed)
    world = WorldConfig(seed=opts.seed)
    methods = Methods(aspo=AspoArguments(**switches.get("aspo", {})), dama=DamaArguments(**switches.get("dama", {})),
                      adavip=AdavipArguments(**switches.get("adavip", {})))

    say(f"[1/5] base model (tiny LLaVA, SFT on noisy captions; cache: {opts.cache_dir})")
    recipe = BaseModelRecipe(world=world, n_scenes=opts.base_scenes, steps=opts.base_steps, seed=opts.seed)
    base_dir, cached = ensure_base_model(recipe, opts.cache_dir, progress=opts.progress)
    say(f"      {'reused' if cached else 'built'} {base_dir}")
    model_args = ModelArguments(model_name_or_path=str(base_dir))
    model, processor = load_policy(model_args)

    say(f"[2/5] preference records: {data_kind} pairs"
        + (", CLIP sentence scores" if methods.aspo.aspo or methods.dama.dama_data else "")
        + (", vision-rejected images" if methods.adavip.adavip else ""))
    records = prepare_records(opts, data_kind, methods, base_dir, model, processor, world)
    from ..data.records import save_records

    say(f"      {len(records)} records -> {save_records(records, out / 'data' / 'train.jsonl')}")

    say(f"[3/5] evaluate the base model on {opts.n_eval_scenes} held-out scenes (priors broken)")
    before = evaluate_cached(opts, base_dir, model, processor, world)

    say(f"[4/5] train {opts.method} for {opts.steps} steps on {len(records)} records")
    args = PreferenceConfig(
        output_dir=str(out / "train"), max_steps=opts.steps, per_device_train_batch_size=opts.batch_size,
        learning_rate=opts.learning_rate, lr_scheduler_type="cosine", warmup_steps=min(10, opts.steps // 10),
        weight_decay=0.0, logging_steps=5, save_strategy="no", beta=opts.beta, sft_weight=opts.sft_weight,
        seed=opts.seed, disable_tqdm=not opts.progress, use_cpu=not torch.cuda.is_available(),
    )
    trainer = PreferenceTrainer(model, args, processor, PreferenceDataset(records), methods=methods)
    trainer.train()

    say("[5/5] evaluate the trained model")
    after = evaluate(opts, trainer.model, processor, world)

    trainer.save_model(str(out / "model"))
    processor.save_pretrained(str(out / "model"))
    log = trainer.state.log_history
    atomic_write_text(out / "train_log.json", json.dumps(log, indent=2))
    plots = [name for name, keys in PLOTS.items()
             if plot_log_history(log, keys, out / name, title=f"mmpo demo: {opts.method}")]
    metrics = {
        "method": opts.method,
        "data": data_kind,
        "before": {k: v for k, v in before.items() if k != "samples"},
        "after": {k: v for k, v in after.items() if k != "samples"},
        "samples": {"before": before.get("samples", []), "after": after.get("samples", [])},
        "options": asdict(opts),
        "base_model": str(base_dir),
        "n_records": len(records),
        "seconds": round(time.time() - started, 1),
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    say("\n" + metrics_table(metrics))
    say(f"\nrun directory: {out}  (metrics.json, train_log.json, model/, {', '.join(plots)})  [{metrics['seconds']:.0f} s]")
    return metrics


def prepare_records(opts: DemoOptions, data_kind: str, methods, base_dir: Path, model, processor, world) -> list:
    """The method's records, built once per (base model, data settings) and cached as JSONL."""
    from ..data.records import load_records, save_records
    from ..toyworld.scenes import sample_scenes

    needs_scores = methods.aspo.aspo or methods.dama.dama_data
    needs_vision = methods.adavip.adavip
    key = _key(DATA_VERSION, base_dir.name, data_kind, opts.n_pairs, opts.seed, opts.clip_steps, needs_scores,
               needs_vision)
    folder = Path(opts.cache_dir) / f"demo-data-{key}"
    final = folder / "records.jsonl"
    if final.exists():
        return load_records(final).records
    folder.mkdir(parents=True, exist_ok=True)
    # Preference scenes come from the prior-free distribution (with their own seed, disjoint from the
    # evaluation scenes): the data a user collects to fix a model's biases.
    scenes = sample_scenes(world.held_out(seed=opts.seed + 1), opts.n_pairs, prefix="pref")

    if data_kind == "truth":
        from ..toyworld.data import ground_truth_pairs

        records = ground_truth_pairs(scenes, world, folder / "images", seed=opts.seed, progress=opts.progress)
    else:
        from ..data.construct.journal import ensure_png
        from ..data.construct.noisy_pairs import build_noisy_pairs
        from ..toyworld.scenes import DESCRIBE_PROMPT

        images = folder / "images"
        images.mkdir(exist_ok=True)
        items = []
        for scene in scenes:
            path = ensure_png(images / f"{scene.id}.png", scene.render)
            items.append((scene.id, str(path), DESCRIBE_PROMPT, {"scene": json.dumps(scene.to_dict())}))
        report = build_noisy_pairs(model, processor, items, folder / "seva.jsonl", batch_size=32,
                                   max_new_tokens=64, progress=opts.progress)
        say(f"      {report.summary()}")
        records = load_records(folder / "seva.jsonl").records

    if needs_scores or needs_vision:
        from ..scoring.clip import CLIPScorer
        from ..toyworld.clip import TinyCLIPRecipe, ensure_tiny_clip

        recipe = TinyCLIPRecipe() if opts.clip_steps is None else TinyCLIPRecipe(steps=opts.clip_steps)
        clip_dir, cached = ensure_tiny_clip(opts.cache_dir, recipe, progress=opts.progress)
        say(f"      tiny CLIP: {'reused' if cached else 'trained'} {clip_dir}")
        scorer = CLIPScorer(clip_dir, cache_dir=opts.cache_dir)
    if needs_scores:
        from ..data.construct.sentence_scores import score_sentences
        from ..scoring.sentences import RuleSplitter

        records, report = score_sentences(records, scorer, RuleSplitter(), progress=opts.progress)
        say("      " + report.summary().replace("\n", "\n      "))
    if needs_vision:
        records = _vision_rejected(records, scorer, folder, opts)
    save_records(records, final)
    return load_records(final).records


def _vision_rejected(records, scorer, folder: Path, opts: DemoOptions) -> list:
    """AdaViP's rejected images on the synthetic world: nouns of the chosen description as tags,
    the scene's ground-truth boxes and masks (annotation backends, named as such), OpenCV Telea
    inpainting, and the tiny CLIP picking the removal that hurts the description most."""
    from ..data.construct.inpainting import TeleaInpainter
    from ..data.construct.vision_backends import (
        AnnotationDetector,
        AnnotationSegmenter,
        NounTagger,
        SceneIndex,
    )
    from ..data.construct.vision_rejected import VisionRejectedPipeline, build_vision_rejected
    from ..data.records import load_records
    from ..toyworld.scenes import SHAPES

    scenes = SceneIndex.from_records(records)
    pipeline = VisionRejectedPipeline(tagger=NounTagger(SHAPES), detector=AnnotationDetector(scenes),
                                      segmenter=AnnotationSegmenter(scenes), inpainter=TeleaInpainter(),
                                      scorer=scorer)
    report = build_vision_rejected(records, pipeline, folder / "vision.jsonl", folder / "vision",
                                   progress=opts.progress, contact_sheet=Path(opts.output_dir) / "contact_sheet.png")
    say("      " + report.summary().replace("\n", "\n      "))
    return load_records(folder / "vision.jsonl").records


def evaluate(opts: DemoOptions, model, processor, world) -> dict:
    from ..toyworld.evaluate import evaluate_world
    from ..toyworld.scenes import sample_scenes

    eval_scenes = sample_scenes(world.held_out(), opts.n_eval_scenes, prefix="heldout")
    stats_scenes = sample_scenes(world, opts.base_scenes, prefix="train")
    return evaluate_world(model, processor, eval_scenes, pope_split_scenes_for_stats=stats_scenes,
                          seed=opts.seed, progress=opts.progress)


def evaluate_cached(opts: DemoOptions, base_dir: Path, model, processor, world) -> dict:
    """The base model's metrics are the same for every method: computed once per base model."""
    from ..data.construct.journal import atomic_write_text

    path = base_dir / f"heldout-metrics-{_key(opts.n_eval_scenes, opts.seed)}.json"
    if path.exists():
        return json.loads(path.read_text())
    metrics = evaluate(opts, model, processor, world)
    atomic_write_text(path, json.dumps(metrics))
    return metrics


def metrics_table(metrics: dict) -> str:
    """A Markdown table of the headline metrics before and after training."""
    rows = ["| metric | before | after | change |", "| --- | ---: | ---: | ---: |"]
    for key in TABLE_KEYS:
        if key in metrics["before"] and key in metrics["after"]:
            b, a = metrics["before"][key], metrics["after"][key]
            rows.append(f"| {key} | {b:.3f} | {a:.3f} | {a - b:+.3f} |")
    return "\n".join(rows)


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:12]


def say(message: str) -> None:
    print(message, flush=True)


def main(argv: list[str]) -> int:
    ns = build_parser().parse_args(argv)
    run_demo(DemoOptions(**vars(ns)))
    return 0
