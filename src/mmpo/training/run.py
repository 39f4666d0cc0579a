"""One training run from its config (:class:`~mmpo.training.config.RunConfig`'s parts): load, validate, train, check, save."""

from __future__ import annotations

import logging
from pathlib import Path

from ..data.collator import PreferenceDataset
from ..data.records import load_records
from ..io import atomic_write_json
from ..models import count_parameters, load_policy, model_source
from .config import DataArguments, Methods, ModelArguments, PreferenceConfig, resume_value
from .policy import prepare_policy
from .trainer import PreferenceTrainer, check_finite_parameters

logger = logging.getLogger(__name__)


def load_dataset(path: str, data_args: DataArguments) -> PreferenceDataset:
    result = load_records(path, on_error=data_args.on_bad_record, image_root=data_args.image_root)
    if result.errors:
        logger.warning(result.summary())
    return PreferenceDataset(result.records)


def run_training(model_args: ModelArguments, data_args: DataArguments, args: PreferenceConfig,
                 methods: Methods | None = None, callbacks=None,
                 resume_from_checkpoint: str | bool | None = None) -> PreferenceTrainer:
    """Train and save the policy (and processor) to ``args.output_dir``; returns the trainer.

    ``resume_from_checkpoint``: ``True`` (or "true") resumes from the newest complete checkpoint in
    ``args.output_dir``, a path from that checkpoint, ``None``/``False`` starts afresh.

    Raises:
        FileNotFoundError: the model path does not exist (checked before anything is loaded).
        NonFiniteLossError: a training step's loss or gradients were NaN/inf (``on_nonfinite='raise'``).
        NonFiniteParameterError: training ended with NaN/inf weights; nothing is saved.
    """
    if not data_args.train_file:
        raise ValueError("train_file is required: a JSONL of preference records or a saved dataset directory")
    model_source(model_args)  # a mistyped model path fails here, before minutes of record loading
    train = load_dataset(data_args.train_file, data_args)
    evaluation = load_dataset(data_args.eval_file, data_args) if data_args.eval_file else None
    model, processor = load_policy(model_args)
    model = prepare_policy(model, model_args, args)
    trainable, total = count_parameters(model)
    logger.info("policy: %d of %d parameters trainable", trainable, total)
    trainer = PreferenceTrainer(model, args, processor, train, evaluation, methods=methods, callbacks=callbacks,
                                on_bad_record=data_args.on_bad_record)  # preflight: every record encoded once
    trainer.train(resume_from_checkpoint=resume_value(resume_from_checkpoint))
    check_finite_parameters(trainer.model)  # never exit 0 with NaN weights, nor save them as the result
    trainer.save_model(args.output_dir)
    processor.save_pretrained(args.output_dir)
    atomic_write_json(Path(args.output_dir, "log_history.json"), trainer.state.log_history, indent=2)
    return trainer
