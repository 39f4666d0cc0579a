"""On-policy rounds: sample from the current policy, judge, pair, train; round after round.

RLAIF-V (Yu et al. 2024) reaches its numbers with four rounds of this loop, OPA-DPO and TPR with
theirs: each round's pairs are sampled from the model the round starts from, so the pairs describe
the mistakes the policy makes *now*. :func:`run_rounds` closes the loop with mmpo's own pieces:

1. **sample and judge** (:func:`~mmpo.data.construct.self_pairs.sample_and_judge`): the round's
   slice of the prompt pool, ``k`` responses per prompt from the current policy, seeded per round,
   every claim judged; under ``accelerate launch`` / ``torchrun`` each process takes every
   ``world``-th item of the slice and journals its own share;
2. **pair** (:func:`~mmpo.data.construct.self_pairs.pair_samples`): the shares merged once, in
   pool order, by the main process, optionally capped at ``pairs_per_round``;
3. **add what the methods need** (``enrich``: ASPO's sentence scores, DAMA's alpha_D, AdaViP's
   vision-rejected images; the caller decides how);
4. **train** (:func:`~mmpo.training.run.run_training`, all processes) from the current policy, the
   reference being the round's starting model (``round_reference="previous"``, RLAIF-V's choice)
   or the first round's (``"initial"``, through ``PreferenceConfig.reference_model``);
5. **evaluate** (``evaluate``, main process; optional) and mark the round finished.

``RUN_DIR/round-K/`` holds everything of round ``K``: ``samples/`` (the sampling journals),
``pairs.jsonl``, ``train.jsonl`` (the pairs with what the methods added), ``model/`` (the trained
policy, the next round's start), ``log_history.json`` and ``round.json`` (pair statistics, training
summary, metrics, seconds per stage), written last: a round with a ``round.json`` is never redone.
``RUN_DIR/round-0/round.json`` holds the starting model's metrics and ``RUN_DIR/rounds.json``
all rounds so far.

Kill-safe: sampling resumes per item from its journal (a share's batches, and so their seeds, are
the same on a rerun with the same number of processes), pairing and method data are rebuilt or
read from their own caches, and training resumes from the round's newest complete checkpoint when
the config saves them (``save_strategy: steps``). A run killed anywhere and rerun ends with the same
model as an uninterrupted run (``benchmarks/rounds_killsafe.py`` measures it).

With LoRA, each round's adapters are merged into the round's model, so every round starts from a
whole checkpoint with fresh adapters (and the adapter-off reference is the round's start).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import progress
from ..chat_http import MAX_UNREADABLE, check_endpoint_url
from ..checks import check_choice, check_number
from ..data.construct.self_pairs import (
    ClaimJudge,
    PairingRule,
    PairReport,
    SamplingSettings,
    pair_samples,
    sample_and_judge,
)
from ..data.items import Item, check_items
from ..io import PROGRESS_SUFFIX, atomic_write_json, atomic_write_jsonl, building_directory, read_jsonl
from ..types import PreferenceRecord
from . import distributed
from .config import DataArguments, Methods, ModelArguments, PreferenceConfig

logger = logging.getLogger(__name__)

#: What each round's reference model is: the model the round starts from, or the first round's.
ROUND_REFERENCES = ("previous", "initial")
#: The file that marks a finished round (written last) and the run's summary of all rounds.
ROUND_FILE, SUMMARY_FILE, SETTINGS_FILE = "round.json", "rounds.json", "rounds-settings.json"
#: Stages of a round, in order; ``round.json``'s ``seconds`` has one entry per stage.
STAGES = ("sample", "judge", "pair", "enrich", "train", "evaluate")

#: ``enrich(records, round_dir)``: the records with what the enabled methods need added.
Enrich = Callable[[list[PreferenceRecord], Path], list[PreferenceRecord]]
#: ``evaluate(model, processor)``: a dict of metrics (JSON numbers) of a policy.
Evaluate = Callable[[Any, Any], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class RoundsPlan:
    """How many rounds, on how much of the pool, sampled and paired how.

    Attributes:
        rounds: number of rounds (>= 1).
        items_per_round: prompts of the pool each round samples (round ``K`` takes items
            ``(K-1)*n .. K*n - 1``; the pool must hold ``rounds * items_per_round``).
        sampling: the sampler's settings; round ``K`` samples with seed ``sampling.seed + K - 1``.
        rule: how judged samples become pairs.
        round_reference: ``"previous"`` or ``"initial"`` (see the module docstring).
        pairs_per_round: keep at most this many pairs of a round (the first in pool order;
            ``None``: all), e.g. to compare with an offline pass at equal numbers of pairs.
        sample_batch_size: items per ``generate`` call (times ``sampling.n`` rows).
        keep_checkpoints: keep a finished round's training checkpoints (default: removed once the
            round's model is saved and marked finished).
        steps: optimizer steps of each round (``None``: the training config's ``max_steps`` for
            every round), e.g. to spread an offline pass's steps over the rounds.
        max_unknown: the largest fraction of a round's claims the judge may leave unknown before
            the run stops (:func:`~mmpo.data.construct.self_pairs.sample_and_judge`).
    """

    rounds: int
    items_per_round: int
    sampling: SamplingSettings = SamplingSettings()
    rule: PairingRule = PairingRule()
    round_reference: str = "previous"
    pairs_per_round: int | None = None
    sample_batch_size: int = 16
    keep_checkpoints: bool = False
    steps: tuple[int, ...] | None = None
    max_unknown: float = MAX_UNREADABLE

    def __post_init__(self):
        check_number("rounds", self.rounds, integer=True, low=1)
        check_number("judge_max_unknown", self.max_unknown, low=0, high=1)
        if self.steps is not None:
            if len(self.steps) != self.rounds:
                raise ValueError(f"steps gives {len(self.steps)} rounds' steps for {self.rounds} rounds")
            for k, steps in enumerate(self.steps, 1):
                check_number(f"steps of round {k}", steps, integer=True, low=1)
        check_number("items_per_round", self.items_per_round, integer=True, low=1)
        check_choice("round_reference", self.round_reference, ROUND_REFERENCES)
        check_number("pairs_per_round", self.pairs_per_round, integer=True, low=1, optional=True)
        check_number("sample_batch_size", self.sample_batch_size, integer=True, low=1)

    def round_sampling(self, k: int) -> SamplingSettings:
        """Round ``k``'s sampling settings (1-based): its own seed."""
        return dataclasses.replace(self.sampling, seed=self.sampling.seed + k - 1)

    def describe(self) -> dict[str, Any]:
        """The settings a rerun must share with the run it continues (``rounds`` may grow)."""
        out = dataclasses.asdict(self)
        out.pop("rounds")
        out.pop("keep_checkpoints")
        out.pop("max_unknown")  # a limit on the judge, not on what a round makes
        out["steps"] = list(self.steps) if self.steps is not None else None
        return out


@dataclasses.dataclass
class RoundResult:
    """One finished round, as its ``round.json`` holds it.

    Attributes:
        round: 1-based index (0: the starting model, evaluated only).
        model: the round's trained policy (0: the starting model).
        reference: the reference model it was trained against.
        items: prompts sampled; ``pairs``: the :class:`~mmpo.data.construct.self_pairs.PairReport`
            as a dict (``written``, ``chosen_with_wrong``, ``chosen_wrong_rate``, ...).
        train: ``steps``, ``loss`` (last logged), ``reward_margin`` (mean of the logged
            ``rewards/margins``) and ``reward_accuracy``.
        metrics: what ``evaluate`` returned (``None`` without an evaluator).
        seconds: wall time per stage (:data:`STAGES`).
        resumed: whether this run found the round finished by an earlier one.
    """

    round: int
    model: str
    reference: str | None = None
    items: int = 0
    pairs: dict[str, Any] = dataclasses.field(default_factory=dict)
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    resumed: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("resumed")
        return out

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> RoundResult:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in names}, resumed=True)

    def summary(self) -> str:
        if self.round == 0:
            return f"round 0 (the starting model {self.model}): {_metrics_text(self.metrics)}"
        p = self.pairs
        margin = self.train.get("reward_margin")
        unknown = f", {p['unknown_claims']} claims of unknown verdict dropped" if p.get("unknown_claims") else ""
        return (f"round {self.round}: {p.get('written', 0)} pairs from {self.items} prompts "
                f"(chosen with a judged-wrong claim {p.get('chosen_with_wrong', 0):.1%}{unknown}); "
                f"{self.train.get('steps', 0)} steps, reward margin "
                f"{'-' if not isinstance(margin, (int, float)) else format(margin, '.3f')}; "
                f"{_metrics_text(self.metrics)}; "
                + ", ".join(f"{stage} {self.seconds.get(stage, 0):.0f} s" for stage in STAGES))


def _metrics_text(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return "not evaluated"
    keys = [k for k in ("chair_i", "chair_s", "coverage", "pope_f1") if isinstance(metrics.get(k), (int, float))]
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in keys) or "evaluated"


def round_dir(run_dir: str | os.PathLike, k: int) -> Path:
    """``RUN_DIR/round-K``."""
    return Path(run_dir) / f"round-{k}"


def read_round(run_dir: str | os.PathLike, k: int) -> RoundResult | None:
    """Round ``k``'s result if it finished (its ``round.json`` exists), else ``None``.

    Raises:
        ValueError: a ``round.json`` that is not a round's result, naming the file.
    """
    path = round_dir(run_dir, k) / ROUND_FILE
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(value, dict) or value.get("round") != k:
            raise ValueError("not this round's result")
        return RoundResult.from_dict(value)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: unreadable round result ({error}); delete the file to redo round {k}") from None


def read_rounds(run_dir: str | os.PathLike) -> list[RoundResult]:
    """Every finished round of a run directory in order, round 0 (the start) first when it was evaluated."""
    found = []
    k = 0
    while True:
        result = read_round(run_dir, k)
        if result is None and k > 0:
            return found
        if result is not None:
            found.append(result)
        k += 1


def train_summary(log_history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Steps, the last logged loss (the run's mean ``train_loss`` when no step was logged) and the
    means of the logged reward margins and accuracies."""
    def mean(key: str) -> float | None:
        values = [row[key] for row in log_history if isinstance(row.get(key), (int, float))]
        return sum(values) / len(values) if values else None

    steps = max((row.get("step", 0) for row in log_history), default=0)
    losses = [row[key] for row in log_history for key in ("loss", "train_loss") if isinstance(row.get(key), (int, float))]
    return {"steps": steps, "loss": losses[-1] if losses else None,
            "reward_margin": mean("rewards/margins"), "reward_accuracy": mean("rewards/accuracies")}


def settings_fingerprint(items: Sequence[Item], plan: RoundsPlan, judge: ClaimJudge, args: PreferenceConfig,
                         model_args: ModelArguments, methods: Methods) -> dict[str, Any]:
    """What a rerun must share with the run it continues: the pool (ids, in order), the plan, the
    judge, the starting model and the training settings that change what a round makes."""
    pool = hashlib.sha256("\n".join(item.id for item in items).encode()).hexdigest()[:16]
    training = {key: getattr(args, key) for key in (
        "beta", "sft_weight", "sft_reduction", "preference_weight", "reference", "learning_rate", "max_steps",
        "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps", "seed")}
    return {"pool": pool, "plan": plan.describe(), "judge": judge.describe(),
            "model": os.path.abspath(model_args.model_name_or_path), "use_lora": model_args.use_lora,
            "training": training, "methods": json.loads(json.dumps(dataclasses.asdict(methods), default=str))}


def check_settings(run_dir: Path, settings: dict[str, Any]) -> None:
    """Write ``settings`` to a new run directory, or check they are the ones it was made with.

    Raises:
        ValueError: the run directory was made with other settings, naming those that differ.
    """
    path = run_dir / SETTINGS_FILE
    if path.exists():
        before = json.loads(path.read_text(encoding="utf-8"))
        if before != settings:
            differ = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
            raise ValueError(f"{run_dir} holds rounds made with other settings ({', '.join(differ)} differ; see "
                             f"{path}): use another output_dir, or the same settings to continue it")
        return
    atomic_write_json(path, settings, indent=2)


def _share(items: Sequence[Item], rank: int, world: int) -> list[Item]:
    return list(items[rank::world])


def journal_path(folder: Path, rank: int, world: int) -> Path:
    """The sampling journal of process ``rank`` of ``world``."""
    return folder / "samples" / f"rank-{rank}-of-{world}.jsonl"


def merge_journals(folder: Path, items: Sequence[Item]) -> Path:
    """The rows of every process's journal of a round in pool order, written to ``samples.jsonl``
    (an item sampled twice, by runs with different numbers of processes, counts once).

    Raises:
        ValueError: an item of ``items`` that no journal holds, naming it.
    """
    rows: dict[str, Any] = {}
    for path in sorted((folder / "samples").glob("rank-*-of-*.jsonl")):
        if path.name.endswith(PROGRESS_SUFFIX):
            continue
        for row in read_jsonl(path):
            if isinstance(row, dict) and "id" in row:
                rows.setdefault(str(row["id"]), row)
    missing = [item.id for item in items if item.id not in rows]
    if missing:
        raise ValueError(f"{folder}: {len(missing)} of {len(items)} items were not sampled (e.g. {missing[0]!r})")
    return atomic_write_jsonl(folder / "samples.jsonl", [rows[item.id] for item in items])


def run_rounds(model_args: ModelArguments, args: PreferenceConfig, methods: Methods | None, plan: RoundsPlan,
               items: Sequence[Sequence[Any]], judge: ClaimJudge, *, enrich: Enrich | None = None,
               evaluate: Evaluate | None = None, data_args: DataArguments | None = None, say: Callable[[str], None] = logger.info) -> list[RoundResult]:
    """Run ``plan.rounds`` on-policy rounds in ``args.output_dir`` (see the module docstring).

    Args:
        model_args: the starting policy (``model_name_or_path``), its dtype and LoRA settings.
        args: the training settings of every round (``max_steps`` etc. per round); ``output_dir``
            is the run directory; round ``K`` trains with seed ``args.seed + K - 1``.
        methods: the method switches (default: plain DPO).
        plan: rounds, pool slices, sampling and pairing.
        items: the prompt pool, ``(id, image, prompt[, meta])`` (checked before any work).
        judge: the claim judge.
        enrich: adds what the methods need to a round's records (main process; the result is
            cached in ``train.jsonl``).
        evaluate: metrics of a policy (main process; the starting model's are round 0's).
        data_args: ``on_bad_record`` and ``image_root`` for reading the round's records.
        say: where one line per finished stage goes.

    Returns:
        every round's :class:`RoundResult`, round 0 first when there is an evaluator.

    Raises:
        ValueError: a pool smaller than ``rounds * items_per_round``, a run directory made with
            other settings, or anything the stages raise (naming the bad item or record).
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object


    methods = methods or Methods()
    data_args = data_args or DataArguments()
    state = PartialState()
    main, rank, world = state.is_main_process, state.process_index, state.num_processes
    say = say if main else (lambda message: None)
    checked = check_items(items)
    need = plan.rounds * plan.items_per_round
    if len(checked) < need:
        raise ValueError(f"the prompt pool holds {len(checked)} items, and {plan.rounds} rounds of "
                         f"{plan.items_per_round} need {need}: give more items, fewer rounds or fewer items per round")
    run_dir = Path(os.path.abspath(args.output_dir))
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        check_settings(run_dir, settings_fingerprint(checked, plan, judge, args, model_args, methods))
    state.wait_for_everyone()
    if args.save_strategy == "no":
        logger.warning("save_strategy is 'no': a round killed while it trains restarts its training "
                       "(save_strategy: steps resumes it from its last checkpoint)")

    initial = os.path.abspath(model_args.model_name_or_path)
    results: list[RoundResult] = []
    if evaluate is not None:
        start = read_round(run_dir, 0)
        if start is None:
            start = RoundResult(round=0, model=initial)
            finish = functools.partial(_finish_round, start, round_dir(run_dir, 0), model_args, evaluate, [],
                                       state.device, True, lambda message: None)
            together(state, finish if main else _nothing)
            start = read_round(run_dir, 0)
        results.append(start)
        say(start.summary())

    policy = initial
    for k in range(1, plan.rounds + 1):
        folder = round_dir(run_dir, k)
        done = read_round(run_dir, k)
        if done is not None:
            say(f"{done.summary()} [finished before]")
            results.append(done)
            policy = done.model
            continue
        seconds: dict[str, float] = {}
        reference = initial if plan.round_reference == "initial" and k > 1 else policy
        pool = checked[(k - 1) * plan.items_per_round:k * plan.items_per_round]

        # 1. sample and judge: every process its share, into its own journal
        report = together(state, functools.partial(_sample_round, model_args, policy, _share(pool, rank, world), judge,
                                                   journal_path(folder, rank, world), plan, k, state.device,
                                                   progress.enabled() and main))
        timings = gather_object([(report.sample_seconds, report.judge_seconds)]) if world > 1 else \
            [(report.sample_seconds, report.judge_seconds)]
        seconds["sample"] = round(max(t[0] for t in timings), 1)
        seconds["judge"] = round(max(t[1] for t in timings), 1)

        # 2-3. pair (the shares merged once) and add the methods' data: the main process
        pair = functools.partial(_pair_round, folder, pool, plan, k, judge, policy, enrich, seconds, say)
        pair_report = together(state, pair if main else PairReport)

        # 4. train from the current policy, resuming from the round's last complete checkpoint
        began = time.perf_counter()
        round_args = args if plan.steps is None else dataclasses.replace(args, max_steps=plan.steps[k - 1])
        trainer = _train_round(folder, policy, reference, model_args, data_args, round_args, methods, k)
        log_history = trainer.state.log_history
        del trainer
        state.wait_for_everyone()
        model_dir = folder / "model"
        if model_args.use_lora:
            merge = functools.partial(merge_adapters, policy, folder / "train", model_dir, dtype=model_args.dtype)
            together(state, merge if main else _nothing)
        seconds["train"] = round(time.perf_counter() - began, 1)

        # 5. evaluate and mark the round finished
        result = RoundResult(round=k, model=str(model_dir), reference=reference, items=len(pool),
                             pairs=_pair_stats(pair_report), train=train_summary(log_history), seconds=seconds)
        finish = functools.partial(_finish_round, result, folder, model_args, evaluate, log_history, state.device,
                                   plan.keep_checkpoints, say)
        together(state, finish if main else _nothing)
        result = dataclasses.replace(read_round(run_dir, k), resumed=False)  # every process: the main one's
        results.append(result)
        if main:
            atomic_write_json(run_dir / SUMMARY_FILE, [r.to_dict() for r in results], indent=2)
        policy = result.model
    return results


def _sample_round(model_args: ModelArguments, policy: str, share: list[Item], judge: ClaimJudge, journal: Path,
                  plan: RoundsPlan, k: int, device: Any, bars: bool):
    """Stage 1 on one process: its share of round ``k``'s prompts sampled from ``policy`` and judged
    (with progress bars where ``bars``: the main process)."""
    from ..models import load_policy

    model, processor = load_policy(dataclasses.replace(model_args, model_name_or_path=policy), device=str(device))
    if distributed.is_partitioned(model):
        raise ValueError("DeepSpeed ZeRO-3 partitioned the policy at load, and sampling needs whole weights on each "
                         "process: run mmpo iterate with ZeRO-2, FSDP or DDP")
    with progress.bars(bars):
        return sample_and_judge(model, processor, [(i.id, i.image, i.prompt, i.meta) for i in share], judge,
                                journal, sampling=plan.round_sampling(k), batch_size=plan.sample_batch_size,
                                image_dir=journal.parent.parent / "images", max_unknown=plan.max_unknown,
                                max_unknown_setting="judge_max_unknown")


def _pair_round(folder: Path, pool: list[Item], plan: RoundsPlan, k: int, judge: ClaimJudge, policy: str,
                enrich: Enrich | None, seconds: dict[str, float], say: Callable[[str], None]) -> PairReport:
    """Stages 2-3 on the main process: the shares merged in pool order, paired (capped at
    ``plan.pairs_per_round``) into ``pairs.jsonl``, the methods' data added into ``train.jsonl``."""
    from ..data.records import save_records

    began = time.perf_counter()
    samples = merge_journals(folder, pool)
    records, report = pair_samples(samples, plan.rule, meta={"judge": judge.describe(), "round": k, "policy": policy})
    report.out_path = folder / "pairs.jsonl"
    if plan.pairs_per_round is not None and len(records) > plan.pairs_per_round:
        report.dropped["cap"] = len(records) - plan.pairs_per_round
        records = records[:plan.pairs_per_round]
        report.written = len(records)
    if not records:
        raise ValueError(f"round {k} made no preference pair from {len(pool)} prompts (every response of every prompt "
                         f"was judged alike; see {samples}): sample more responses (samples), use a higher temperature "
                         "or more items per round")
    save_records(records, folder / "pairs.jsonl")
    seconds["pair"] = round(time.perf_counter() - began, 1)
    began = time.perf_counter()
    if not (folder / "train.jsonl").exists():
        save_records(enrich(records, folder) if enrich is not None else records, folder / "train.jsonl")
    seconds["enrich"] = round(time.perf_counter() - began, 1)
    say(f"round {k}: {report.summary()}")
    return report


def _finish_round(result: RoundResult, folder: Path, model_args: ModelArguments, evaluate: Evaluate | None,
                  log_history: list, device: Any, keep_checkpoints: bool, say: Callable[[str], None]) -> None:
    """Stage 5 on the main process: the round's model evaluated, its log and ``round.json`` written
    (the mark that it finished), its checkpoints removed."""
    from ..models import load_policy

    began = time.perf_counter()
    if evaluate is not None:
        model, processor = load_policy(dataclasses.replace(model_args, model_name_or_path=result.model),
                                       device=str(device))
        result.metrics = evaluate(model, processor)
    result.seconds["evaluate"] = round(time.perf_counter() - began, 1)
    if log_history:
        atomic_write_json(folder / "log_history.json", log_history, indent=2)
    atomic_write_json(folder / ROUND_FILE, result.to_dict(), indent=2)
    if not keep_checkpoints:
        _remove_checkpoints(folder)
    say(result.summary())


def _nothing() -> None:
    return None


def together(state: Any, action: Callable[[], Any]) -> Any:
    """``action()`` on every process; under several processes each learns whether another failed,
    so that one process's error (a bad image, a judge that is down) ends the run on all of them
    with that error instead of leaving the others waiting at the next barrier."""
    from accelerate.utils import gather_object

    error: Exception | None = None
    value = None
    try:
        value = action()
    except Exception as caught:  # re-raised below, on every process
        error = caught
    if state.num_processes > 1:
        failures = gather_object([None if error is None else f"{type(error).__name__}: {error}"])
        if error is None and any(failures):
            raise RuntimeError(f"another process failed: {next(f for f in failures if f)}")
    if error is not None:
        raise error
    return value


def _pair_stats(report: PairReport) -> dict[str, Any]:
    stats = report.to_dict()
    stats.pop("out_path", None)
    return stats


def _train_round(folder: Path, policy: str, reference: str, model_args: ModelArguments, data_args: DataArguments,
                 args: PreferenceConfig, methods: Methods, k: int):
    """Train round ``k`` from ``policy`` against ``reference``, resuming from the round's newest
    complete checkpoint. Full tuning writes the model (and checkpoints) to ``model/``; LoRA its
    adapters to ``train/`` (merged into ``model/`` afterwards)."""
    from .checkpoints import newest_complete_checkpoint
    from .run import run_training

    output_dir = folder / ("train" if model_args.use_lora else "model")
    # The reference is the round's starting model: with a frozen copy, a copy of the policy as
    # loaded; otherwise (``initial``) the first round's model, through reference_model.
    reference_model = None if reference == policy else reference
    round_args = dataclasses.replace(args, output_dir=str(output_dir), seed=args.seed + k - 1,
                                     reference_model=reference_model or args.reference_model,
                                     resume_from_checkpoint=None)
    if reference_model and round_args.reference in ("adapter", "auto") and model_args.use_lora:
        round_args = dataclasses.replace(round_args, reference="copy")
    checkpoint, _ = newest_complete_checkpoint(output_dir)
    return run_training(dataclasses.replace(model_args, model_name_or_path=policy),
                        dataclasses.replace(data_args, train_file=str(folder / "train.jsonl"), eval_file=None),
                        round_args, methods, resume_from_checkpoint=True if checkpoint else None)


def merge_adapters(base: str, adapter_dir: Path, out_dir: Path, dtype: str = "auto") -> Path:
    """The LoRA adapters in ``adapter_dir`` merged into the ``base`` checkpoint, saved whole (with
    the processor) to ``out_dir`` (replacing it)."""
    from peft import PeftModel

    from ..models import load_policy

    model, processor = load_policy(ModelArguments(model_name_or_path=base, dtype=dtype))
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    with building_directory(out_dir, replace=True) as folder:  # out_dir is never half written
        merged.save_pretrained(str(folder))
        processor.save_pretrained(str(folder))
    return out_dir


def _remove_checkpoints(folder: Path) -> None:
    from .checkpoints import checkpoint_folders

    for train_dir in (folder / "model", folder / "train"):
        for checkpoint in checkpoint_folders(train_dir):
            shutil.rmtree(checkpoint, ignore_errors=True)
        shutil.rmtree(train_dir / "reference_cache", ignore_errors=True)


def method_enricher(methods: Methods, *, scorer: Any = None,
                    vision_pipeline: Callable[[list[PreferenceRecord]], Any] | None = None, say: Callable[[str], None] = logger.info) -> Enrich | None:
    """The ``enrich`` step for ``methods``: CLIP sentence scores and DAMA's alpha_D
    (:func:`~mmpo.data.construct.sentence_scores.score_sentences`) when ASPO or DAMA's data-aware
    factor is on, then AdaViP's vision-rejected images
    (:func:`~mmpo.methods.adavip.vision_rejected.build_vision_rejected`, journaled in the round's
    ``vision.jsonl``) when AdaViP is on; ``None`` when no method needs anything.

    Args:
        scorer: a :class:`~mmpo.scoring.clip.CLIPScorer` (needed by every method here).
        vision_pipeline: ``records -> VisionRejectedPipeline`` (AdaViP; built per round, since the
            synthetic world's annotation backends index the round's scenes).

    Raises:
        ValueError: a method is on and what it needs was not given.
    """
    needs_scores = methods.aspo.enabled or methods.dama.data
    needs_vision = methods.adavip.enabled
    if not (needs_scores or needs_vision):
        return None
    if scorer is None:
        wanted = [name for name, on in (("ASPO", methods.aspo.enabled), ("DAMA's data-aware beta", methods.dama.data),
                                        ("AdaViP", needs_vision)) if on]
        raise ValueError(f"{' and '.join(wanted)} need a CLIP model to score sentences or images: set clip_model")
    if needs_vision and vision_pipeline is None:
        raise ValueError("AdaViP needs its vision-rejected pipeline (a detector and a segmenter)")

    def enrich(records: list[PreferenceRecord], folder: Path) -> list[PreferenceRecord]:
        from ..data.records import load_records

        if needs_scores:
            from ..data.construct.sentence_scores import score_sentences
            from ..scoring.sentences import RuleSplitter

            records, report = score_sentences(records, scorer, RuleSplitter())
            say(report.summary())
        if needs_vision:
            from ..methods.adavip.vision_rejected import build_vision_rejected

            report = build_vision_rejected(records, vision_pipeline(records), folder / "vision.jsonl",
                                           folder / "vision")
            say(report.summary())
            records = load_records(folder / "vision.jsonl").records
        return records

    return enrich


def _help(text: str, choices: tuple[str, ...] | None = None) -> dict[str, Any]:
    return {"help": text, **({"choices": choices} if choices else {})}


@dataclasses.dataclass
class IterateArguments:
    """``mmpo iterate``'s own settings, beside the training config's (one YAML file holds both;
    the training settings apply to every round: ``max_steps`` is per round)."""

    rounds: int = dataclasses.field(default=3, metadata=_help("Number of on-policy rounds."))
    items_file: str | None = dataclasses.field(default=None, metadata=_help(
        "The prompt pool: a JSONL of items (id, image, prompt), as `mmpo self-pairs --input` reads. Default: "
        "scenes of the synthetic world (world_scenes of them, judged by their annotations)."))
    world_scenes: int | None = dataclasses.field(default=None, metadata=_help(
        "Without items_file: scenes in the pool (default rounds x items_per_round, or 600)."))
    items_per_round: int | None = dataclasses.field(default=None, metadata=_help(
        "Prompts each round samples (default: the pool divided evenly among the rounds)."))
    pairs_per_round: int | None = dataclasses.field(default=None, metadata=_help(
        "Keep at most this many pairs per round (the first in pool order); default all."))
    samples: int = dataclasses.field(default=6, metadata=_help("Responses sampled per prompt (>= 2)."))
    sample_temperature: float = dataclasses.field(default=1.0, metadata=_help("Sampling temperature."))
    sample_top_p: float = dataclasses.field(default=1.0, metadata=_help("Nucleus sampling mass."))
    sample_max_new_tokens: int = dataclasses.field(default=64, metadata=_help("Length limit of a sampled response."))
    sample_batch_size: int = dataclasses.field(default=16, metadata=_help(
        "Prompts per generate call (x samples rows)."))
    judge: str = dataclasses.field(default="scene", metadata=_help(
        "The claim judge: scene (the synthetic world's annotations), model (a local VLM, judge_model) or endpoint "
        "(an OpenAI-compatible server: judge_url, judge_model_name, key in $MMPO_JUDGE_API_KEY).",
        ("scene", "model", "endpoint")))
    judge_flip: float = dataclasses.field(default=0.0, metadata=_help(
        "Scene judge: fraction of verdicts flipped (a noisy labeler)."))
    judge_model: str | None = dataclasses.field(default=None, metadata=_help("Model judge: a local checkpoint."))
    judge_question: str | None = dataclasses.field(default=None, metadata=_help(
        "Model / endpoint judge: the question template with {claim}."))
    judge_url: str | None = dataclasses.field(default=None, metadata=_help(
        "Endpoint judge: base URL (default $MMPO_JUDGE_URL)."))
    judge_model_name: str | None = dataclasses.field(default=None, metadata=_help(
        "Endpoint judge: the served model's name (default $MMPO_JUDGE_MODEL)."))
    judge_workers: int = dataclasses.field(default=8, metadata=_help("Endpoint judge: concurrent requests."))
    judge_timeout: float = dataclasses.field(default=60.0, metadata=_help(
        "Endpoint judge: seconds per request in all (connecting and reading the whole reply)."))
    judge_max_unknown: float = dataclasses.field(default=MAX_UNREADABLE, metadata=_help(
        "Stop when more than this fraction of a round's claims get an unknown verdict (a judge reply that says "
        "neither yes nor no; checked from 20 claims on); 1 never stops."))
    pairs: str = dataclasses.field(default="best_worst", metadata=_help(
        "One pair per prompt (best vs worst) or every pair of different scores.", ("best_worst", "all")))
    pair_score: str = dataclasses.field(default="wrong_count", metadata=_help(
        "A response's score: minus the number (RLAIF-V) or the fraction of its judged-wrong claims.",
        ("wrong_count", "wrong_rate")))
    tie_break: str = dataclasses.field(default="more_correct", metadata=_help(
        "Order of responses with the same score.", ("more_correct", "fewer_claims", "first")))
    max_length_ratio: float | None = dataclasses.field(default=None, metadata=_help(
        "Drop pairs whose longer response has more than this many times the words of the shorter."))
    max_pairs_per_item: int | None = dataclasses.field(default=None, metadata=_help(
        "With pairs: all, keep the widest score gaps."))
    round_reference: str = dataclasses.field(default="previous", metadata=_help(
        "Each round's reference: the model the round starts from (previous; RLAIF-V) or the first round's "
        "(initial).", ROUND_REFERENCES))
    clip_model: str | None = dataclasses.field(default=None, metadata=_help(
        "CLIP for ASPO's sentence scores, DAMA's alpha_D and AdaViP's selection: a local checkpoint, or "
        "'toyworld' (the synthetic world's tiny CLIP; the default with the synthetic pool)."))
    vision_vocabulary: str = dataclasses.field(default="toyworld", metadata=_help(
        "AdaViP: the object names to remove ('toyworld' or a text file, one per line)."))
    vision_detector: str = dataclasses.field(default="annotations", metadata=_help(
        "AdaViP's detector: annotations (the synthetic world's boxes), owlv2 or grounding-dino "
        "(vision_detector_path).", ("annotations", "owlv2", "grounding-dino")))
    vision_detector_path: str | None = dataclasses.field(default=None, metadata=_help(
        "AdaViP: local checkpoint of the detector."))
    vision_segmenter: str = dataclasses.field(default="annotations", metadata=_help(
        "AdaViP's segmenter: annotations, box or sam (vision_segmenter_path).", ("annotations", "box", "sam")))
    vision_segmenter_path: str | None = dataclasses.field(default=None, metadata=_help(
        "AdaViP: local checkpoint of SAM."))
    eval_scenes: int = dataclasses.field(default=200, metadata=_help(
        "With the synthetic pool: held-out scenes the starting model and every round's model are evaluated on "
        "(CHAIR, coverage, POPE); 0 skips evaluation."))
    keep_checkpoints: bool = dataclasses.field(default=False, metadata=_help(
        "Keep a finished round's training checkpoints (default: removed once its model is saved)."))
    cache_dir: str | None = dataclasses.field(default=None, metadata=_help(
        "Where the synthetic world's CLIP and CLIP embeddings are cached (default $MMPO_CACHE or ~/.cache/mmpo)."))

    def __post_init__(self):
        check_number("rounds", self.rounds, integer=True, low=1)
        for name in ("world_scenes", "items_per_round", "pairs_per_round", "max_pairs_per_item"):
            check_number(name, getattr(self, name), integer=True, low=1, optional=True)
        check_number("samples", self.samples, integer=True, low=2)
        check_number("sample_temperature", self.sample_temperature, low=0, low_open=True)
        check_number("sample_top_p", self.sample_top_p, low=0, low_open=True, high=1)
        check_number("sample_max_new_tokens", self.sample_max_new_tokens, integer=True, low=1)
        check_number("sample_batch_size", self.sample_batch_size, integer=True, low=1)
        check_number("judge_flip", self.judge_flip, low=0, high=1)
        check_number("judge_workers", self.judge_workers, integer=True, low=1)
        check_number("judge_timeout", self.judge_timeout, low=0, low_open=True)
        check_number("judge_max_unknown", self.judge_max_unknown, low=0, high=1)
        if self.judge_url:
            check_endpoint_url(self.judge_url, "judge_url")  # a key in it would land in logs and progress files
        check_number("max_length_ratio", self.max_length_ratio, low=1, optional=True)
        check_number("eval_scenes", self.eval_scenes, integer=True, low=0)
        for f in dataclasses.fields(self):
            if f.metadata.get("choices"):
                check_choice(f.name, getattr(self, f.name), f.metadata["choices"])
        if self.judge == "model" and not self.judge_model:
            raise ValueError("judge: model needs judge_model (a local checkpoint)")
        if self.judge == "scene" and self.items_file:
            raise ValueError("judge: scene reads the synthetic world's annotations, which your items_file does not "
                             "have: use judge: model or judge: endpoint")
        for kind, path, name in ((self.vision_detector, self.vision_detector_path, "vision_detector"),
                                 (self.vision_segmenter, self.vision_segmenter_path, "vision_segmenter")):
            if kind not in ("annotations", "box") and not path:
                raise ValueError(f"{name}: {kind} needs {name}_path (a local checkpoint)")

    def plan(self, pool_size: int, seed: int) -> RoundsPlan:
        """The :class:`RoundsPlan` for a pool of ``pool_size`` items and the training ``seed``."""
        per_round = self.items_per_round or pool_size // self.rounds
        if per_round < 1:
            raise ValueError(f"the prompt pool holds {pool_size} items, fewer than rounds ({self.rounds})")
        return RoundsPlan(
            rounds=self.rounds, items_per_round=per_round,
            sampling=SamplingSettings(n=self.samples, temperature=self.sample_temperature, top_p=self.sample_top_p,
                                      max_new_tokens=self.sample_max_new_tokens, seed=seed),
            rule=PairingRule(pairs=self.pairs, score=self.pair_score, tie_break=self.tie_break,
                             max_length_ratio=self.max_length_ratio, max_pairs_per_item=self.max_pairs_per_item),
            round_reference=self.round_reference, pairs_per_round=self.pairs_per_round,
            sample_batch_size=self.sample_batch_size, keep_checkpoints=self.keep_checkpoints,
            max_unknown=self.judge_max_unknown)
