"""``mmpo demo``: a preference method end to end on the synthetic world, on a laptop CPU.

1. build (or reuse from the cache) the base model: tiny LLaVA, SFT on noisy captions;
2. build preference records from fresh scenes, in the form the method needs:
   ``truth`` pairs (chosen = exact description, rejected = one hallucinated object) or ``seva``
   pairs (the base model's answers on the clean vs the diffusion-noised image); ASPO and DAMA add
   per-sentence CLIP scores from the world's tiny CLIP; AdaViP adds vision-rejected images;
3. evaluate the base model on the held-out split (CHAIR, coverage, POPE);
4. train the method with :class:`~mmpo.training.trainer.PreferenceTrainer`;
5. evaluate again; write ``metrics.json``, the training log and plots; print a table.

Each method is a config file, the one ``mmpo train`` runs: ``configs/toyworld/METHOD.yaml`` in a
checkout (``mmpo/configs/toyworld/`` in an installed package). The demo reads the method's switches
and training settings from it and overrides the paths, the seed and the device, and the settings
given on its command line (--steps, --batch-size, --learning-rate, --beta, --sft-weight).

The base model, the tiny CLIP, the prepared records and the base model's metrics are cached
(``--cache-dir``), so running several methods one after another pays for them once.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
import typing
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..io import default_cache_dir

#: The method configs, shipped inside the package (``configs/toyworld`` at the top of a checkout
#: links here): ``adavip_plus_vision.yaml`` is ``--method adavip-plus-vision``.
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "toyworld"
#: Preference pairs the demo builds; see :func:`preference_pairs`.
DATA_KINDS = ("truth", "seva")
#: Demo-specific, not training settings: the pairs a method trains on unless --data says otherwise.
#: ASPO's paper trains on SeVa pairs (its section 4.1), so its demo builds those from the base model;
#: every other method trains on ground-truth pairs, the synthetic world's stand-in for the
#: annotated RLAIF-V pairs DAMA and AdaViP use.
DEFAULT_DATA = {"aspo": "seva"}
#: demo option -> the config field it overrides when given (``None``: the config's value)
TRAINING_OPTIONS = {"steps": "max_steps", "batch_size": "per_device_train_batch_size",
                    "learning_rate": "learning_rate", "beta": "beta", "sft_weight": "sft_weight"}
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


def method_configs(folder: Path = CONFIG_DIR) -> dict[str, Path]:
    """``{method: config path}`` for the ``*.yaml`` files in ``folder``, sorted; ``_`` in a file
    name is ``-`` in the method name.

    Raises:
        FileNotFoundError: ``folder`` is missing or holds no config (a broken install), naming it.
    """
    configs = {path.stem.replace("_", "-"): path for path in sorted(Path(folder).glob("*.yaml"))}
    if not configs:
        raise FileNotFoundError(f"no method configs (*.yaml) in {folder}: the package's configs/toyworld "
                                "files are missing (reinstall mmpo)")
    return configs


def _option(default, help: str, choices: Callable[[], Iterable[str]] | tuple[str, ...] | None = None):
    """A :class:`DemoOptions` field; ``help`` (and ``choices``, or a function returning them) go to
    its command-line flag."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class DemoOptions:
    """The demo's options; each field is a command-line flag (``n_pairs`` is ``--n-pairs``, and a
    bool that is on by default is ``--no-NAME``) whose help is the field's ``metadata["help"]``.
    A training setting left at ``None`` is the method config's value."""

    method: str = _option("dpo", "preference method to train: its config is configs/toyworld/METHOD.yaml",
                          choices=lambda: method_configs())
    data: str | None = _option(None, "preference pairs: ground truth vs hallucinated, or the base model's clean "
                               "vs noisy-image answers (default: seva for aspo, truth otherwise)", choices=DATA_KINDS)
    output_dir: str = _option("runs/demo", "run directory (metrics.json, logs, plots)")
    cache_dir: str = _option(str(default_cache_dir()),
                             "base model, CLIP and data cache ($MMPO_CACHE)")
    n_pairs: int = _option(800, "scenes to build preference records from")
    n_eval_scenes: int = _option(200, "held-out scenes to evaluate on")
    steps: int | None = _option(None, "preference optimizer steps (default: the config's max_steps)")
    batch_size: int | None = _option(None, "records per step (default: the config's "
                                     "per_device_train_batch_size)")
    learning_rate: float | None = _option(None, "peak learning rate (default: the config's)")
    beta: float | None = _option(None, "DPO temperature (default: the config's)")
    sft_weight: float | None = _option(None, "NLL term on the chosen response (0 = plain DPO, which collapses a "
                                       "tiny model; default: the config's)")
    base_steps: int = _option(1500, "SFT steps of the base model")
    base_scenes: int = _option(3000, "SFT scenes of the base model")
    clip_steps: int | None = _option(None, "training steps of the world's tiny CLIP")
    seed: int = _option(0, "seed of the world, the data and training")
    progress: bool = _option(True, "hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The command line, one flag per :class:`DemoOptions` field, so the two cannot drift apart."""
    p = argparse.ArgumentParser(prog="mmpo demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(DemoOptions)
    for option in dataclasses.fields(DemoOptions):
        flag = "--" + option.name.replace("_", "-")
        text = option.metadata["help"]
        kind = hints[option.name]
        if kind is bool:
            if option.default:
                p.add_argument(f"--no-{flag[2:]}", dest=option.name, action="store_false", help=text)
            else:
                p.add_argument(flag, dest=option.name, action="store_true", help=text)
            continue
        (value_type,) = [t for t in typing.get_args(kind) if t is not type(None)] or [kind]
        choices = option.metadata["choices"]
        if callable(choices):
            choices = list(choices())
        p.add_argument(flag, dest=option.name, type=value_type, default=option.default, choices=choices, help=text)
    return p


def demo_config(opts: DemoOptions, out: Path) -> tuple[Path, tuple]:
    """The method's config file and its parsed dataclasses ``(model, data, training, aspo, dama,
    adavip)`` (:func:`~mmpo.training.config.parse_config`), with the demo's overrides: the run's
    paths, the seed, progress bars, the device, and the training settings ``opts`` gives.

    Given ``--steps``, warm-up lasts at most a tenth of them (a config's warm-up ratio is kept).

    Raises:
        ValueError: an unknown method (naming the ones there are) or data kind, or a bad config value.
    """
    import torch

    from ..training.config import parse_config

    configs = method_configs()
    if opts.method not in configs:
        raise ValueError(f"unknown method {opts.method!r}: the configs in {CONFIG_DIR} are {', '.join(configs)}")
    if opts.data is not None and opts.data not in DATA_KINDS:
        raise ValueError(f"data must be {' or '.join(DATA_KINDS)}, not {opts.data!r}")
    path = configs[opts.method]
    overrides = {"output_dir": out / "train", "train_file": out / "data" / "train.jsonl", "seed": opts.seed,
                 "disable_tqdm": not opts.progress, "use_cpu": not torch.cuda.is_available()}
    overrides.update({key: getattr(opts, option) for option, key in TRAINING_OPTIONS.items()
                      if getattr(opts, option) is not None})
    argv = [part for key, value in overrides.items() for part in (f"--{key}", str(value))]
    parsed = parse_config(path, argv)
    warmup = parsed[2].warmup_steps
    if opts.steps is not None and warmup >= 1 and warmup > opts.steps // 10:  # >= 1: steps, not a ratio
        parsed = parse_config(path, [*argv, "--warmup_steps", str(opts.steps // 10)])
    return path, parsed


def run_demo(opts: DemoOptions) -> dict:
    """Run the demo; returns the ``metrics.json`` content."""
    import torch

    from ..data.collator import PreferenceDataset
    from ..io import atomic_write_text
    from ..plots import plot_log_history
    from ..toyworld.base_model import BaseModelRecipe, ensure_base_model
    from ..toyworld.scenes import WorldConfig
    from ..training.config import Methods
    from ..training.model_loading import load_policy, prepare_policy
    from ..training.trainer import PreferenceTrainer

    started = time.time()
    out = Path(opts.output_dir)
    config_path, (model_args, _, args, aspo, dama, adavip) = demo_config(opts, out)  # bad configs fail first
    methods = Methods(aspo=aspo, dama=dama, adavip=adavip)
    data_kind = opts.data or DEFAULT_DATA.get(opts.method, "truth")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(opts.seed)
    world = WorldConfig(seed=opts.seed)

    say(f"[1/5] base model (tiny LLaVA, SFT on noisy captions; cache: {opts.cache_dir})")
    recipe = BaseModelRecipe(world=world, n_scenes=opts.base_scenes, steps=opts.base_steps, seed=opts.seed)
    base_dir, cached = ensure_base_model(recipe, opts.cache_dir, progress=opts.progress)
    say(f"      {'reused' if cached else 'built'} {base_dir}")
    model_args = dataclasses.replace(model_args, model_name_or_path=str(base_dir))
    model, processor = load_policy(model_args)

    say(f"[2/5] preference records: {data_kind} pairs"
        + (", CLIP sentence scores" if methods.aspo.enabled or methods.dama.dama_data else "")
        + (", vision-rejected images" if methods.adavip.enabled else ""))
    records = prepare_records(opts, data_kind, methods, base_dir, model, processor, world)
    from ..data.records import save_records

    say(f"      {len(records)} records -> {save_records(records, out / 'data' / 'train.jsonl')}")

    say(f"[3/5] evaluate the base model on {opts.n_eval_scenes} held-out scenes (priors broken)")
    before = evaluate_cached(opts, base_dir, model, processor, world)

    say(f"[4/5] train {opts.method} for {args.max_steps} steps on {len(records)} records")
    say(f"      settings: {config_path}")
    model = prepare_policy(model, model_args, args)  # the config's freezing / LoRA, as mmpo train applies them
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
    # The options as run: a training setting left to the config is recorded with the config's value.
    options = {**asdict(opts), **{option: getattr(args, key) for option, key in TRAINING_OPTIONS.items()}}
    metrics = {
        "method": opts.method,
        "data": data_kind,
        "before": {k: v for k, v in before.items() if k != "samples"},
        "after": {k: v for k, v in after.items() if k != "samples"},
        "samples": {"before": before.get("samples", []), "after": after.get("samples", [])},
        "options": options,
        "config": str(config_path),
        "base_model": str(base_dir),
        "n_records": len(records),
        "seconds": round(time.time() - started, 1),
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    say("\n" + metrics_table(metrics))
    say(f"\nrun directory: {out}  (metrics.json, train_log.json, model/, {', '.join(plots)})  [{metrics['seconds']:.0f} s]")
    return metrics


# ------------------------------------------------------------------------------------------ records
def prepare_records(opts: DemoOptions, data_kind: str, methods, base_dir: Path, model, processor, world) -> list:
    """The method's records, built once per (base model, data settings) and cached as JSONL.

    The steps: :func:`preference_pairs` for the data kind; then, when the method needs them, the
    world's tiny CLIP (:func:`clip_scorer`), per-sentence scores and DAMA's alpha_D
    (:func:`add_sentence_scores`, ASPO and DAMA's data-aware half) and vision-rejected images
    (:func:`add_vision_rejected`, AdaViP). Every step writes under :func:`data_folder`.
    """
    needs_scores = methods.aspo.enabled or methods.dama.dama_data
    needs_vision = methods.adavip.enabled
    folder = data_folder(opts, base_dir, data_kind, needs_scores, needs_vision)

    def build() -> list:
        records = preference_pairs(opts, data_kind, model, processor, world, folder)
        if needs_scores or needs_vision:
            scorer = clip_scorer(opts)
            if needs_scores:
                records = add_sentence_scores(records, scorer, opts)
            if needs_vision:
                records = add_vision_rejected(records, scorer, folder, opts)
        return records

    return cached_records(folder / "records.jsonl", build)


def data_folder(opts: DemoOptions, base_dir: Path, data_kind: str, needs_scores: bool, needs_vision: bool) -> Path:
    """The cache folder of one set of records: keyed by :data:`DATA_VERSION`, the base model, the
    data kind, the number of pairs, the seed, the CLIP recipe and what the method adds."""
    key = _key(DATA_VERSION, base_dir.name, data_kind, opts.n_pairs, opts.seed, opts.clip_steps, needs_scores,
               needs_vision)
    folder = Path(opts.cache_dir) / f"demo-data-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def cached_records(path: Path, build: Callable[[], list]) -> list:
    """The records at ``path`` if a previous run finished them; else ``build()``'s, saved there.
    Either way they are read back from ``path`` (absolute image paths, validated)."""
    from ..data.records import load_records, save_records

    if not path.exists():
        save_records(build(), path)  # atomic: a killed run leaves no half-written cache
    return load_records(path).records


def preference_pairs(opts: DemoOptions, data_kind: str, model, processor, world, folder: Path) -> list:
    """``opts.n_pairs`` records of ``data_kind``: ``truth`` (ground truth vs one hallucinated object)
    or ``seva`` (:func:`seva_pairs`)."""
    from ..toyworld.scenes import sample_scenes

    # Preference scenes come from the prior-free distribution (with their own seed, disjoint from the
    # evaluation scenes): the data a user collects to fix a model's biases.
    scenes = sample_scenes(world.held_out(seed=opts.seed + 1), opts.n_pairs, prefix="pref")
    if data_kind == "truth":
        from ..toyworld.data import ground_truth_pairs

        return ground_truth_pairs(scenes, world, folder / "images", seed=opts.seed, progress=opts.progress)
    if data_kind == "seva":
        return seva_pairs(opts, scenes, model, processor, folder)
    raise ValueError(f"data must be {' or '.join(DATA_KINDS)}, not {data_kind!r}")


def seva_pairs(opts: DemoOptions, scenes: list, model, processor, folder: Path) -> list:
    """SeVa pairs: the base model's answers on each scene's clean (chosen) and diffusion-noised
    (rejected) image; resumable (``seva.jsonl``), images re-rendered if damaged."""
    from ..data.construct.noisy_pairs import build_noisy_pairs
    from ..data.records import load_records
    from ..io import ensure_png
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
    return load_records(folder / "seva.jsonl").records


def clip_scorer(opts: DemoOptions):
    """A :class:`~mmpo.scoring.clip.CLIPScorer` on the world's tiny CLIP (trained once, cached)."""
    from ..scoring.clip import CLIPScorer
    from ..toyworld.clip import TinyCLIPRecipe, ensure_tiny_clip

    recipe = TinyCLIPRecipe() if opts.clip_steps is None else TinyCLIPRecipe(steps=opts.clip_steps)
    clip_dir, cached = ensure_tiny_clip(opts.cache_dir, recipe, progress=opts.progress)
    say(f"      tiny CLIP: {'reused' if cached else 'trained'} {clip_dir}")
    return CLIPScorer(clip_dir, cache_dir=opts.cache_dir)


def add_sentence_scores(records: list, scorer, opts: DemoOptions) -> list:
    """Each record with its chosen and rejected sentences' CLIP scores (ASPO's S_i) and DAMA's
    ``data_alpha``, the sentences split by the rule splitter."""
    from ..data.construct.sentence_scores import score_sentences
    from ..scoring.sentences import RuleSplitter

    records, report = score_sentences(records, scorer, RuleSplitter(), progress=opts.progress)
    say("      " + report.summary().replace("\n", "\n      "))
    return records


def add_vision_rejected(records: list, scorer, folder: Path, opts: DemoOptions) -> list:
    """AdaViP's rejected images on the synthetic world: nouns of the chosen description as tags,
    the scene's ground-truth boxes and masks (annotation backends, named as such), OpenCV Telea
    inpainting, and the tiny CLIP picking the removal that hurts the description most.
    Resumable (``vision.jsonl``); the contact sheet goes to the run directory."""
    from ..data.construct.inpainting import TeleaInpainter
    from ..data.construct.vision_rejected import VisionRejectedPipeline, build_vision_rejected
    from ..data.construct.vision_steps import NounTagger
    from ..data.records import load_records
    from ..toyworld.annotations import AnnotationDetector, AnnotationSegmenter, SceneIndex
    from ..toyworld.scenes import SHAPES

    scenes = SceneIndex.from_records(records)
    pipeline = VisionRejectedPipeline(tagger=NounTagger(SHAPES), detector=AnnotationDetector(scenes),
                                      segmenter=AnnotationSegmenter(scenes), inpainter=TeleaInpainter(),
                                      scorer=scorer)
    report = build_vision_rejected(records, pipeline, folder / "vision.jsonl", folder / "vision",
                                   progress=opts.progress, contact_sheet=Path(opts.output_dir) / "contact_sheet.png")
    say("      " + report.summary().replace("\n", "\n      "))
    return load_records(folder / "vision.jsonl").records


# ------------------------------------------------------------------------------------------ evaluation
def evaluate(opts: DemoOptions, model, processor, world) -> dict:
    from ..toyworld.evaluate import evaluate_world
    from ..toyworld.scenes import sample_scenes

    eval_scenes = sample_scenes(world.held_out(), opts.n_eval_scenes, prefix="heldout")
    stats_scenes = sample_scenes(world, opts.base_scenes, prefix="train")
    return evaluate_world(model, processor, eval_scenes, pope_split_scenes_for_stats=stats_scenes,
                          seed=opts.seed, progress=opts.progress)


def evaluate_cached(opts: DemoOptions, base_dir: Path, model, processor, world) -> dict:
    """The base model's metrics are the same for every method: computed once per base model."""
    from ..io import atomic_write_text

    path = base_dir / f"heldout-metrics-{_key(opts.n_eval_scenes, opts.seed)}.json"
    if path.exists():
        return json.loads(path.read_text())
    metrics = evaluate(opts, model, processor, world)
    atomic_write_text(path, json.dumps(metrics))
    return metrics


def metrics_table(metrics: dict) -> str:
    """A Markdown table of the headline metrics before and after training (``metric``, ``before``,
    ``after``, ``change``; three decimals)."""
    from ..evaluation.report import markdown_table

    before, after = metrics["before"], metrics["after"]
    rows = [(key, f"{before[key]:.3f}", f"{after[key]:.3f}", f"{after[key] - before[key]:+.3f}")
            for key in TABLE_KEYS if key in before and key in after]
    return markdown_table(("metric", "before", "after", "change"), rows,
                          right=("before", "after", "change")).rstrip("\n")


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:12]


def say(message: str) -> None:
    print(message, flush=True)


def main(argv: list[str]) -> int:
    ns = build_parser().parse_args(argv)
    run_demo(DemoOptions(**vars(ns)))
    return 0
