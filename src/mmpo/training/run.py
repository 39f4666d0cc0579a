"""One training run from its config (:class:`~mmpo.training.config.RunConfig`'s parts): load, validate, train, check, save."""

from __future__ import annotations

import logging
from pathlib import Path

from ..data.collator import PreferenceDataset
from ..data.records import LoadResult, load_records
from ..io import atomic_write_json
from ..models import count_parameters, load_policy, model_source
from .config import DataArguments, Methods, ModelArguments, PreferenceConfig, RunConfig, resume_value
from .model_card import DataFacts, run_facts
from .policy import prepare_policy
from .trainer import PreferenceTrainer, check_finite_parameters

logger = logging.getLogger(__name__)


def load_dataset(path: str, data_args: DataArguments) -> tuple[PreferenceDataset, LoadResult]:
    result = load_records(path, on_error=data_args.on_bad_record, image_root=data_args.image_root)
    if result.errors:
        logger.warning(result.summary())
    return PreferenceDataset(result.records, result.origins), result


def data_facts(path: str, result: LoadResult, used: PreferenceDataset) -> DataFacts:
    """The model card's account of one records file: read as ``result``, ``used`` after the preflight."""
    return DataFacts(path, result.format, len(result.records) + len(result.errors), len(used))


def run_training(model_args: ModelArguments, data_args: DataArguments, args: PreferenceConfig,
                 methods: Methods | None = None, callbacks=None,
                 resume_from_checkpoint: str | bool | None = None, command: str | None = None) -> PreferenceTrainer:
    """Train and save the policy (and processor) to ``args.output_dir``, with its model card
    (``README.md``, :mod:`mmpo.training.model_card`; ``command`` is the command line it shows); returns the trainer.

    ``resume_from_checkpoint``: ``True`` (or "true") resumes from the newest complete checkpoint in
    ``args.output_dir``, a path from that checkpoint, ``None``/``False`` starts afresh.

    Raises:
        FileNotFoundError: the model path does not exist (checked before anything is loaded).
        NonFiniteLossError: a training step's loss or gradients were NaN/inf (``on_nonfinite='raise'``).
        NonFiniteParameterError: training ended with NaN/inf weights; nothing is saved.
    """
    if not data_args.train_file:
        raise ValueError("train_file is required: a records file (.jsonl, .json, .parquet, .arrow), a directory of "
                         "them or a saved dataset, or a glob pattern")
    model_source(model_args)  # a mistyped model path fails here, before minutes of record loading
    train, train_read = load_dataset(data_args.train_file, data_args)
    evaluation, eval_read = load_dataset(data_args.eval_file, data_args) if data_args.eval_file else (None, None)
    model, processor = load_policy(model_args)
    model = prepare_policy(model, model_args, args)
    trainable, total = count_parameters(model)
    logger.info("policy: %d of %d parameters trainable", trainable, total)
    trainer = PreferenceTrainer(model, args, processor, train, evaluation, methods=methods, callbacks=callbacks,
                                on_bad_record=data_args.on_bad_record)  # preflight: every record encoded once
    trainer.card_facts = run_facts(
        RunConfig(model_args, data_args, args, methods or Methods()),
        data_facts(data_args.train_file, train_read, trainer.train_dataset),
        data_facts(data_args.eval_file, eval_read, trainer.eval_dataset) if evaluation is not None else None,
        model=model, reference=trainer.reference_kind, command=command)
    trainer.train(resume_from_checkpoint=resume_value(resume_from_checkpoint))
    check_finite_parameters(trainer.model)  # never exit 0 with NaN weights, nor save them as the result
    trainer.save_model(args.output_dir)
    processor.save_pretrained(args.output_dir)
    trainer.create_model_card()  # after save_model: a LoRA save writes peft's README.md, which this replaces
    atomic_write_json(Path(args.output_dir, "log_history.json"), trainer.state.log_history, indent=2)
    return trainer
