"""The demo's pipeline on the synthetic world: a preference method end to end, on a laptop CPU.

``mmpo demo`` (:mod:`mmpo.cli.demo`) is its command line; the benchmarks call the same steps.
:func:`run_demo` builds or reuses the base model and the tiny CLIP, prepares the preference records
the method needs (:func:`prepare_records`: self-generated, truth or SeVa pairs, CLIP sentence scores,
vision-rejected images; cached), evaluates the base model, trains the method and the SFT-on-chosen
control, evaluates them, and writes ``metrics.json``, the training log, plots and the report.
:class:`DemoOptions` holds every setting; each method is a config file, ``configs/toyworld/METHOD.yaml``
(:func:`demo_config` reads it and applies the demo's overrides).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import typing
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..io import building_directory, default_cache_dir
from ..report.html import CURVE_GROUPS

if typing.TYPE_CHECKING:
    from ..training.config import RunConfig

#: The method configs, shipped inside the package (``configs/toyworld`` at the top of a checkout
#: links here): ``adavip_plus_vision.yaml`` is ``--method adavip-plus-vision``.
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "toyworld"
#: Preference pairs the demo builds; see :func:`preference_pairs`.
DATA_KINDS = ("self", "truth", "seva")
#: The pairs every method trains on unless --data says otherwise: RLAIF-V-style self-generated,
#: judged pairs, the data all three papers train on (ASPO also reports SeVa pairs: --data seva).
DEFAULT_DATA_KIND = "self"
#: The control trained next to the method (its config is configs/toyworld/sft_chosen.yaml).
CONTROL_METHOD = "sft-chosen"
#: How the demo's self-generated pairs are sampled: RLAIF-V-style, several samples per image at the
#: model's own temperature.
SELF_SAMPLES, SELF_TEMPERATURE = 6, 1.0
#: demo option -> the config field it overrides when given (``None``: the config's value)
TRAINING_OPTIONS = {"steps": "max_steps", "batch_size": "per_device_train_batch_size",
                    "learning_rate": "learning_rate", "beta": "beta", "sft_weight": "sft_weight"}
#: Bumped whenever prepare_records changes what it builds, so stale cached records are not reused.
DATA_VERSION = 3
TABLE_KEYS = ("chair_i", "chair_s", "coverage", "mentions_per_response", "attribute_error", "pope_f1",
              "pope_accuracy", "pope_yes_ratio")
#: the PNG plots of the run directory: the report's curve groups (``rewards.png``, ``aspo.png``, ...)
PLOTS = {f"{group}.png": list(keys) for group, (_, keys) in CURVE_GROUPS.items()}
#: bumped when what an evaluation records changes, so cached metrics without it are recomputed
EVAL_VERSION = 2


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
    data: str = _option(DEFAULT_DATA_KIND, "preference pairs: self = the base model's own samples, each sentence "
                        "judged against the scene, best vs worst (RLAIF-V's recipe); truth = exact description vs one "
                        "hallucinated object; seva = the base model's clean vs noisy-image answers", choices=DATA_KINDS)
    judge_flip: float = _option(0.0, "with --data self: fraction of the scene judge's verdicts flipped (a noisy "
                                "labeler, as RLAIF-V's is; 0 = exact)")
    control: bool = _option(True, "skip the SFT-on-chosen control run (the baseline next to the method)")
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
    dama_recipe: str | None = _option(None, "DAMA's recipe (methods dama, d2po, mdpo and their compositions): authors "
                                      "(the released code) or paper (Eqs. 9-17 as printed); default: the config's",
                                      choices=("authors", "paper"))
    prompts: str = _option("describe", "with --data self: the instructions pairs are sampled for. describe = \"describe the "
                           "image\" only; mixed = half of the scenes asked a question instead (existence, colour, count "
                           "or position, answered by the policy and judged like a description), as RLAIF-V's data mixes "
                           "instructions. mixed starts from a base model supervised on those questions too (built on "
                           "this machine, cached)", choices=("describe", "mixed"))
    rounds: int = _option(0, "also train N on-policy rounds (RLAIF-V's loop: each round samples the current policy on "
                          "its own slice of the same scenes, judges, pairs and trains) and compare them with the one "
                          "offline pass at equal numbers of pairs and optimizer steps; 0: the offline pass only")
    base_steps: int = _option(1500, "SFT steps of the base model")
    base_scenes: int = _option(3000, "SFT scenes of the base model")
    clip_steps: int | None = _option(None, "training steps of the world's tiny CLIP")
    shipped: bool = _option(True, "ignore the base model and tiny CLIP shipped with mmpo: build them from their "
                            "recipes on this machine (cached; CPUs differ in float rounding, so this machine's "
                            "models and every number after them differ from the README's)")
    seed: int = _option(0, "seed of the world, the data and training")
    progress: bool = _option(True, "hide progress bars")
    report: bool = _option(True, "skip writing report.html (`mmpo report RUN_DIR` writes it later)")


def demo_config(opts: DemoOptions, out: Path) -> tuple[Path, RunConfig]:
    """The method's config file and its parsed :class:`~mmpo.training.config.RunConfig`
    (:func:`~mmpo.training.config.parse_config`), with the demo's overrides: the run's
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
    if opts.data not in DATA_KINDS:
        raise ValueError(f"data must be {' or '.join(DATA_KINDS)}, not {opts.data!r}")
    path = configs[opts.method]
    overrides = {"output_dir": out / "train", "train_file": out / "data" / "train.jsonl", "seed": opts.seed,
                 "disable_tqdm": not opts.progress, "use_cpu": not torch.cuda.is_available()}
    overrides.update({key: getattr(opts, option) for option, key in TRAINING_OPTIONS.items()
                      if getattr(opts, option) is not None})
    if opts.dama_recipe is not None:
        overrides["dama_recipe"] = opts.dama_recipe
    argv = [part for key, value in overrides.items() for part in (f"--{key}", str(value))]
    parsed = parse_config(path, argv)
    warmup = parsed.training.warmup_steps
    if opts.steps is not None and warmup >= 1 and warmup > opts.steps // 10:  # >= 1: steps, not a ratio
        parsed = parse_config(path, [*argv, "--warmup_steps", str(opts.steps // 10)])
    return path, parsed


def run_demo(opts: DemoOptions) -> dict:
    """Run the demo (progress bars as ``opts.progress`` says); returns the ``metrics.json`` content."""
    from .. import progress

    with progress.bars(opts.progress):
        return _run_demo(opts)


def _run_demo(opts: DemoOptions) -> dict:
    import torch

    from ..io import atomic_write_text
    from ..models import load_policy
    from ..plots import plot_log_history
    from .base_model import ensure_base_model
    from .scenes import WorldConfig

    started = time.time()
    out = Path(opts.output_dir)
    config_path, config = demo_config(opts, out)  # bad configs fail first
    model_args, args, methods = config.model, config.training, config.methods
    with_control = opts.control and opts.method != CONTROL_METHOD
    if with_control:
        demo_config(control_options(opts), out / "control")
    data_kind = opts.data
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(opts.seed)
    world = WorldConfig(seed=opts.seed)
    if opts.prompts != "describe" and (data_kind != "self" or opts.rounds):
        raise ValueError(f"--prompts {opts.prompts} asks the policy questions for self-generated pairs: it needs --data "
                         f"self and no --rounds (the rounds' pool is the describe prompt's), not --data {data_kind}"
                         + (f" --rounds {opts.rounds}" if opts.rounds else ""))
    if opts.rounds and data_kind != "self":
        raise ValueError(f"--rounds samples the policy's own responses each round: it needs --data self, not {data_kind}")
    if opts.rounds < 0 or (opts.rounds and opts.n_pairs // opts.rounds < 1):
        raise ValueError(f"--rounds must be >= 0 and at most --n-pairs ({opts.n_pairs}), not {opts.rounds}")
    steps = (6 if with_control else 5) + (1 if opts.rounds else 0)

    say(f"[1/{steps}] base model (tiny LLaVA, SFT on noisy captions; cache: {opts.cache_dir})")
    recipe = base_recipe(opts, world)
    base_dir, ready = ensure_base_model(recipe, opts.cache_dir, shipped=opts.shipped)
    say(f"      {provenance(base_dir, ready)} {base_dir}")
    model_args = dataclasses.replace(model_args, model_name_or_path=str(base_dir))
    model, processor = load_policy(model_args)

    say(f"[2/{steps}] preference records: {data_kind} pairs"
        + (", CLIP sentence scores" if methods.aspo.enabled or methods.dama.data else "")
        + (", vision-rejected images" if methods.adavip.enabled else ""))
    records, folder = prepare_records(opts, data_kind, methods, base_dir, model, processor, world)
    if not records:
        raise ValueError(f"no preference records came out of {opts.n_pairs} scenes ({data_kind} pairs; see {folder}): "
                         "with self pairs every sample of every scene was judged alike. Use more --n-pairs, a "
                         "better-trained base model (--base-steps), or --data truth")
    from ..data.records import save_records

    if opts.rounds and len(records) % opts.rounds:  # equal numbers of pairs: N rounds of len // N pairs each
        say(f"      the offline pass keeps {len(records) - len(records) % opts.rounds} of {len(records)} records, "
            f"{opts.rounds} rounds' worth")
        records = records[:len(records) - len(records) % opts.rounds]
    say(f"      {len(records)} records -> {save_records(records, out / 'data' / 'train.jsonl')}")

    say(f"[3/{steps}] evaluate the base model on {opts.n_eval_scenes} held-out scenes (priors broken)")
    before = evaluate_cached(opts, base_dir, model, processor, world)

    say(f"[4/{steps}] train {opts.method} for {args.max_steps} steps on {len(records)} records")
    say(f"      settings: {config_path}")
    trainer = train(model, processor, model_args, args, methods, records)
    say(f"[5/{steps}] evaluate the trained model")
    after = evaluate(opts, trainer.model, processor, world)
    with building_directory(out / "model", replace=True) as model_dir:  # whole or not at all, the old one until then
        trainer.save_model(str(model_dir))
        processor.save_pretrained(str(model_dir))

    control = None
    if with_control:
        say(f"[6/{steps}] the control: SFT on the same records' chosen responses "
            f"({CONFIG_DIR / 'sft_chosen.yaml'}), then evaluate")
        control = control_metrics(opts, folder, base_dir, records, world)

    rounds = None
    if opts.rounds:
        say(f"[{steps}/{steps}] {opts.rounds} on-policy rounds from the base model on the same {opts.n_pairs} scenes, "
            f"{len(records) // opts.rounds} pairs and about {args.max_steps // opts.rounds} steps each "
            f"(-> {out / 'rounds'})")
        rounds = on_policy_rounds(opts, model_args, args, methods, base_dir, before, len(records), world, folder)
    log = trainer.state.log_history
    atomic_write_text(out / "train_log.json", json.dumps(log, indent=2))
    plots = [name for name, keys in PLOTS.items()
             if plot_log_history(log, keys, out / name, title=f"mmpo demo: {opts.method}")]
    # The options as run: a training setting left to the config is recorded with the config's value.
    options = {**asdict(opts), **{option: getattr(args, key) for option, key in TRAINING_OPTIONS.items()},
               "dama_recipe": methods.dama.recipe if methods.dama.enabled else None}
    metrics = {
        "method": opts.method,
        "data": data_kind,
        "before": _scalars(before),
        "after": _scalars(after),
        **({"control": _scalars(control)} if control else {}),
        "samples": {"before": before.get("samples", []), "after": after.get("samples", []),
                    **({"control": control.get("samples", [])} if control else {})},
        "options": options,
        "config": str(config_path),
        "base_model": str(base_dir),
        "n_records": len(records),
        "seconds": round(time.time() - started, 1),
    }
    if (report := folder / "self_pairs_report.json").exists():
        metrics["self_pairs"] = json.loads(report.read_text())
    if rounds is not None:
        metrics["rounds"] = rounds
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    write_answers(out, world, opts, {"before": before, "after": after, **({"control": control} if control else {})})
    say("\n" + metrics_table(metrics))
    if rounds is not None:
        say("\n" + rounds_table(metrics))
    files = ["metrics.json", "train_log.json", "eval/", "model/", *plots]
    if opts.report:
        from ..report import write_report

        try:
            written = write_report([out], out / "report.html")
        except (ValueError, OSError) as error:    # the run itself is complete: say so, and how to retry
            say(f"\nreport.html not written: {error} (the run's files are complete; `mmpo report {out}` retries)")
        else:
            files.insert(0, "report.html")
            say(f"\n{written.summary()}")
    say(f"\nrun directory: {out}  ({', '.join(files)})  [{metrics['seconds']:.0f} s]")
    return metrics


def _scalars(result: dict) -> dict:
    """The result for metrics.json: the answers go to eval/answers.json (the report's gallery)."""
    from .rounds import scalars

    return scalars(result)


def write_answers(out: Path, world, opts: DemoOptions, results: dict[str, dict]) -> Path:
    """The evaluated scenes' images (``eval/images/SCENE.png``) and every model's answers with the
    scorer's spans and verdicts (``eval/answers.json``: ``{"prompt", "truth": {scene: description},
    "models": {stage: per-scene rows}}``), which the report's gallery shows."""
    from ..io import atomic_write_json, ensure_png
    from .rounds import eval_scenes
    from .scenes import DESCRIBE_PROMPT

    images = out / "eval" / "images"
    images.mkdir(parents=True, exist_ok=True)
    scenes = eval_scenes(world, opts.n_eval_scenes)
    for scene in scenes:
        ensure_png(images / f"{scene.id}.png", scene.render)
    path = out / "eval" / "answers.json"
    atomic_write_json(path, {"prompt": DESCRIBE_PROMPT, "truth": {s.id: s.description() for s in scenes},
                             "models": {stage: result.get("per_scene", []) for stage, result in results.items()}})
    return path


def train(model, processor, model_args, args, methods, records: list):
    """Train ``model`` on ``records`` as ``mmpo train`` would (the config's freezing / LoRA first);
    returns the trainer."""
    from ..data.collator import PreferenceDataset
    from ..training.policy import prepare_policy
    from ..training.trainer import PreferenceTrainer

    model = prepare_policy(model, model_args, args)
    trainer = PreferenceTrainer(model, args, processor, PreferenceDataset(records), methods=methods)
    trainer.train()
    return trainer


def control_options(opts: DemoOptions) -> DemoOptions:
    """The control's options: the method's, with the control's config. Its NLL weight is the
    method's ``--sft-weight``, or 1 when that is 0 (the control's loss is that term alone)."""
    sft_weight = opts.sft_weight if opts.sft_weight else None
    return dataclasses.replace(opts, method=CONTROL_METHOD, sft_weight=sft_weight)


def control_metrics(opts: DemoOptions, folder: Path, base_dir: Path, records: list, world) -> dict:
    """The control trained on ``records`` and evaluated; cached per record set and training settings,
    so running several methods on the same records trains it once."""
    from ..io import atomic_write_text
    from ..models import load_policy
    from ..training.config import Methods

    control = control_options(opts)
    out = Path(opts.output_dir) / "control"
    _, config = demo_config(control, out)
    model_args, args = config.model, config.training
    settings = {option: getattr(args, key) for option, key in TRAINING_OPTIONS.items()}
    path = folder / f"control-metrics-{_key(base_dir.name, settings, opts.n_eval_scenes, opts.seed, EVAL_VERSION)}.json"
    if path.exists():
        say(f"      reused {path}")
        return json.loads(path.read_text())
    model_args = dataclasses.replace(model_args, model_name_or_path=str(base_dir))
    model, processor = load_policy(model_args)
    trainer = train(model, processor, model_args, args, Methods(), records)
    metrics = evaluate(opts, trainer.model, processor, world)
    atomic_write_text(path, json.dumps(metrics))
    return metrics


# ------------------------------------------------------------------------------------------ rounds
def on_policy_rounds(opts: DemoOptions, model_args, args, methods, base_dir: Path, before: dict, n_pairs: int, world,
                     folder: Path) -> dict:
    """``opts.rounds`` on-policy rounds (:func:`mmpo.training.rounds.run_rounds`) in ``RUN_DIR/rounds``:
    from the base model, on the offline pass's scenes split evenly among the rounds, sampled and
    judged as the offline pairs were, at most ``n_pairs // rounds`` pairs and ``max_steps / rounds``
    optimizer steps per round (the offline pass's totals), each round evaluated as the offline pass
    was. Returns ``metrics.json``'s ``rounds``: the settings and every round's ``round.json``."""
    from ..data.construct.self_pairs import SamplingSettings
    from ..io import atomic_write_json
    from ..training.rounds import ROUND_FILE, RoundResult, RoundsPlan, method_enricher, round_dir, run_rounds
    from .judge import SceneJudge
    from .rounds import preference_scenes, scene_items, world_vision_pipeline

    n = opts.rounds
    steps = tuple(args.max_steps // n + (1 if k < args.max_steps % n else 0) for k in range(n))
    plan = RoundsPlan(rounds=n, items_per_round=opts.n_pairs // n, pairs_per_round=n_pairs // n, steps=steps,
                      sampling=SamplingSettings(n=SELF_SAMPLES, temperature=SELF_TEMPERATURE, seed=opts.seed),
                      sample_batch_size=32)
    run_dir = Path(opts.output_dir) / "rounds"
    start = round_dir(run_dir, 0) / ROUND_FILE  # the base model's metrics are round 0's: not evaluated again
    if not start.exists():
        atomic_write_json(start, RoundResult(round=0, model=str(base_dir), metrics=_scalars(before)).to_dict(), indent=2)
    scorer = clip_scorer(opts) if methods.aspo.enabled or methods.dama.data or methods.adavip.enabled else None
    indent = lambda message: say("      " + message.replace("\n", "\n      "))  # noqa: E731
    enrich = method_enricher(methods, scorer=scorer, say=indent,
                             vision_pipeline=world_vision_pipeline(scorer) if methods.adavip.enabled else None)
    items = scene_items(preference_scenes(world, opts.n_pairs, opts.seed), folder / "images")
    judge = SceneJudge(flip_prob=opts.judge_flip, seed=opts.seed)
    # checkpoints a few times per round: a killed demo resumes its rounds mid-training
    args = dataclasses.replace(args, output_dir=str(run_dir), save_strategy="steps", save_steps=max(1, min(steps) // 3))
    results = run_rounds(model_args, args, methods, plan, items, judge,
                         enrich=enrich, evaluate=evaluator(opts, world, keep_items=False),
                         say=indent)
    return {"n": n, "steps": list(steps), "pairs_per_round": plan.pairs_per_round,
            "items_per_round": plan.items_per_round, "offline": {"pairs": n_pairs, "steps": sum(steps)},
            "run_dir": str(run_dir), "rounds": [r.to_dict() for r in results]}


def rounds_table(metrics: dict) -> str:
    """A Markdown table of the base model, the offline pass and each round: the headline metrics,
    then each round's pairs, the share of chosen responses with a judged-wrong claim and steps."""
    from ..evaluation.report import markdown_table

    info = metrics["rounds"]
    rounds = [r for r in info["rounds"] if r["round"] > 0]
    self_pairs = metrics.get("self_pairs") or {}
    header = ("metric", "base", "offline pass", *(f"round {r['round']}" for r in rounds))
    rows = []
    for key in TABLE_KEYS:
        values = [metrics["before"].get(key), metrics["after"].get(key), *((r.get("metrics") or {}).get(key)
                                                                           for r in rounds)]
        if all(isinstance(v, (int, float)) for v in values):
            rows.append((key, *(f"{v:.3f}" for v in values)))
    rows.append(("pairs", "", str(info["offline"]["pairs"]), *(str(r["pairs"]["written"]) for r in rounds)))
    chosen = self_pairs.get("chosen_with_wrong")
    rows.append(("chosen with a wrong claim", "", f"{chosen:.3f}" if isinstance(chosen, (int, float)) else "",
                 *(f"{r['pairs']['chosen_with_wrong']:.3f}" for r in rounds)))
    rows.append(("optimizer steps", "", str(info["offline"]["steps"]), *(str(r["train"]["steps"]) for r in rounds)))
    return markdown_table(header, rows, right=header[1:]).rstrip("\n")


# ------------------------------------------------------------------------------------------ records
def base_recipe(opts: DemoOptions, world):
    """The base model's recipe: the shipped default, or with ``--prompts mixed`` the same recipe
    whose SFT rows also answer the colour, count and position questions the mixed pairs ask."""
    from .base_model import BaseModelRecipe
    from .questions import EXTRA_KINDS

    kinds = EXTRA_KINDS if opts.prompts == "mixed" else ()
    return BaseModelRecipe(world=world, n_scenes=opts.base_scenes, steps=opts.base_steps, seed=opts.seed,
                           question_kinds=kinds)


def prepare_records(opts: DemoOptions, data_kind: str, methods, base_dir: Path, model, processor,
                    world) -> tuple[list, Path]:
    """The method's records, built once per (base model, data settings) and cached as JSONL.

    The steps: :func:`preference_pairs` for the data kind; then, when the method needs them, the
    world's tiny CLIP (:func:`clip_scorer`), per-sentence scores and DAMA's alpha_D
    (:func:`add_sentence_scores`, ASPO and DAMA's data-aware half) and vision-rejected images
    (:func:`add_vision_rejected`, AdaViP). Every step writes under :func:`data_folder`, which is
    returned with the records.
    """
    needs_scores = methods.aspo.enabled or methods.dama.data
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

    return cached_records(folder / "records.jsonl", build), folder


def data_folder(opts: DemoOptions, base_dir: Path, data_kind: str, needs_scores: bool, needs_vision: bool) -> Path:
    """The cache folder of one set of records: keyed by :data:`DATA_VERSION`, the base model, the
    data kind, the number of pairs, the seed, the CLIP recipe and what the method adds."""
    key = _key(DATA_VERSION, base_dir.name, data_kind, opts.n_pairs, opts.seed, opts.clip_steps, needs_scores,
               needs_vision, *([opts.judge_flip] if data_kind == "self" and opts.judge_flip else []),
               *(["dama-delta-over-clip-logits"] if needs_scores else []),
               *([f"prompts-{opts.prompts}"] if data_kind == "self" and opts.prompts != "describe" else []))
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
    """Records from ``opts.n_pairs`` scenes of ``data_kind``: ``self`` (:func:`self_generated_pairs`),
    ``truth`` (ground truth vs one hallucinated object) or ``seva`` (:func:`seva_pairs`)."""
    from .rounds import preference_scenes

    # Preference scenes come from the prior-free distribution (with their own seed, disjoint from the
    # evaluation scenes): the data a user collects to fix a model's biases.
    scenes = preference_scenes(world, opts.n_pairs, opts.seed)
    if data_kind == "truth":
        from .data import ground_truth_pairs

        return ground_truth_pairs(scenes, world, folder / "images", seed=opts.seed)
    if data_kind == "seva":
        return seva_pairs(opts, scenes, model, processor, folder)
    if data_kind == "self":
        return self_generated_pairs(opts, scenes, model, processor, folder)
    raise ValueError(f"data must be {' or '.join(DATA_KINDS)}, not {data_kind!r}")


def seva_pairs(opts: DemoOptions, scenes: list, model, processor, folder: Path) -> list:
    """SeVa pairs: the base model's answers on each scene's clean (chosen) and diffusion-noised
    (rejected) image; resumable (``seva.jsonl``), images re-rendered if damaged."""
    from ..data.construct.noisy_pairs import build_noisy_pairs
    from ..data.records import load_records
    from .rounds import scene_items

    items = scene_items(scenes, folder / "images")
    report = build_noisy_pairs(model, processor, items, folder / "seva.jsonl", batch_size=32,
                               max_new_tokens=64)
    say(f"      {report.summary()}")
    return load_records(folder / "seva.jsonl").records


def self_generated_pairs(opts: DemoOptions, scenes: list, model, processor, folder: Path) -> list:
    """RLAIF-V-style pairs: :data:`SELF_SAMPLES` responses per scene sampled from the base model,
    each sentence judged exactly against the scene (:class:`~mmpo.toyworld.judge.SceneJudge`), the
    best-judged vs the worst-judged response; resumable (``self.samples.jsonl``). The report
    (samples per second, pairs, judged-wrong rates) goes to ``self_pairs_report.json``."""
    from ..data.construct.self_pairs import SamplingSettings, build_self_pairs
    from ..data.records import load_records
    from ..io import atomic_write_json
    from .judge import SceneJudge
    from .rounds import scene_items

    if opts.prompts == "mixed":
        from .questions import mixed_items

        items = mixed_items(scenes, folder / "images", seed=opts.seed)
    else:
        items = scene_items(scenes, folder / "images")
    sampling = SamplingSettings(n=SELF_SAMPLES, temperature=SELF_TEMPERATURE, seed=opts.seed)
    if not 0 <= opts.judge_flip <= 1:
        raise ValueError(f"judge_flip must be in [0, 1], got {opts.judge_flip}")
    judge = SceneJudge(flip_prob=opts.judge_flip, seed=opts.seed)
    sampled, paired = build_self_pairs(model, processor, items, judge, folder / "self.jsonl",
                                       sampling=sampling, batch_size=32)
    say(f"      {sampled.summary()}\n      {paired.summary()}")
    atomic_write_json(folder / "self_pairs_report.json", {
        "samples_per_second": round(sampled.samples_per_second, 1), "responses": sampled.responses,
        "claims": sampled.claims, **paired.to_dict()}, indent=2)
    return load_records(folder / "self.jsonl").records


def clip_scorer(opts: DemoOptions):
    """A :class:`~mmpo.scoring.clip.CLIPScorer` on the world's tiny CLIP (trained once, cached)."""
    from ..scoring.clip import CLIPScorer
    from .clip import TinyCLIPRecipe, ensure_tiny_clip

    recipe = TinyCLIPRecipe() if opts.clip_steps is None else TinyCLIPRecipe(steps=opts.clip_steps)
    clip_dir, ready = ensure_tiny_clip(opts.cache_dir, recipe, shipped=opts.shipped)
    say(f"      tiny CLIP: {provenance(clip_dir, ready)} {clip_dir}")
    return CLIPScorer(clip_dir, cache_dir=opts.cache_dir)


def provenance(path: Path, ready: bool) -> str:
    """How a checkpoint came to be: shipped with mmpo, reused from the cache, or built now."""
    from .shipped import SHIPPED_DIR

    if not ready:
        return "built"
    return "shipped with mmpo:" if path.parent == SHIPPED_DIR else "reused"


def add_sentence_scores(records: list, scorer, opts: DemoOptions) -> list:
    """Each record with its chosen and rejected sentences' CLIP scores (ASPO's S_i) and DAMA's
    ``data_alpha``, the sentences split by the rule splitter."""
    from ..data.construct.sentence_scores import score_sentences
    from ..scoring.sentences import RuleSplitter

    records, report = score_sentences(records, scorer, RuleSplitter())
    say("      " + report.summary().replace("\n", "\n      "))
    return records


def add_vision_rejected(records: list, scorer, folder: Path, opts: DemoOptions) -> list:
    """AdaViP's rejected images on the synthetic world: nouns of the chosen description as tags,
    the scene's ground-truth boxes and masks (annotation backends, named as such), OpenCV Telea
    inpainting, and the tiny CLIP picking the removal that hurts the description most.
    Resumable (``vision.jsonl``); the contact sheet goes to the run directory."""
    from ..data.records import load_records
    from ..methods.adavip.inpainting import TeleaInpainter
    from ..methods.adavip.vision_rejected import VisionRejectedPipeline, build_vision_rejected
    from ..methods.adavip.vision_steps import NounTagger
    from .annotations import AnnotationDetector, AnnotationSegmenter, SceneIndex
    from .scenes import SHAPES

    scenes = SceneIndex.from_records(records)
    pipeline = VisionRejectedPipeline(tagger=NounTagger(SHAPES), detector=AnnotationDetector(scenes),
                                      segmenter=AnnotationSegmenter(scenes), inpainter=TeleaInpainter(),
                                      scorer=scorer)
    report = build_vision_rejected(records, pipeline, folder / "vision.jsonl", folder / "vision", contact_sheet=Path(opts.output_dir) / "contact_sheet.png")
    say("      " + report.summary().replace("\n", "\n      "))
    return load_records(folder / "vision.jsonl").records


# ------------------------------------------------------------------------------------------ evaluation
def evaluator(opts: DemoOptions, world, keep_items: bool = True):
    """``evaluate(model, processor)`` on the held-out scenes every model of the demo is evaluated
    on (:func:`mmpo.toyworld.rounds.world_evaluator`), with the per-scene answers, spans and verdicts
    when ``keep_items``."""
    from .rounds import world_evaluator

    return world_evaluator(world, opts.n_eval_scenes, seed=opts.seed, n_stats_scenes=opts.base_scenes, keep_items=keep_items)


def evaluate(opts: DemoOptions, model, processor, world) -> dict:
    """The metrics on the held-out scenes, with the per-scene answers, spans and verdicts."""
    return evaluator(opts, world)(model, processor)


def evaluate_cached(opts: DemoOptions, base_dir: Path, model, processor, world) -> dict:
    """The base model's metrics are the same for every method: computed once per base model and
    cached beside the data (never inside the checkpoint, which may be the shipped, read-only one)."""
    from ..io import atomic_write_text

    key = _key(base_dir.name, opts.n_eval_scenes, opts.seed, EVAL_VERSION)
    path = Path(opts.cache_dir) / "demo-base-metrics" / f"heldout-metrics-{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    metrics = evaluate(opts, model, processor, world)
    atomic_write_text(path, json.dumps(metrics))
    return metrics


def metrics_table(metrics: dict) -> str:
    """A Markdown table of the headline metrics before and after training (``metric``, ``before``,
    ``after``, ``change``; three decimals), with the control's column and the method's difference
    from it when the run has a control."""
    from ..evaluation.report import markdown_table

    before, after, control = metrics["before"], metrics["after"], metrics.get("control")
    keys = [key for key in TABLE_KEYS if key in before and key in after]
    if control is None:
        rows = [(key, f"{before[key]:.3f}", f"{after[key]:.3f}", f"{after[key] - before[key]:+.3f}") for key in keys]
        return markdown_table(("metric", "before", "after", "change"), rows,
                              right=("before", "after", "change")).rstrip("\n")
    method = metrics.get("method", "after")
    header = ("metric", "before", "SFT control", method, "change", f"{method} - control")
    rows = [(key, f"{before[key]:.3f}", f"{control[key]:.3f}", f"{after[key]:.3f}", f"{after[key] - before[key]:+.3f}",
             f"{after[key] - control[key]:+.3f}") for key in keys if key in control]
    return markdown_table(header, rows, right=header[1:]).rstrip("\n")


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:12]


def say(message: str) -> None:
    print(message, flush=True)
