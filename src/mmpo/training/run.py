"""One training run from its config (:class:`~mmpo.training.config.RunConfig`'s parts): load, validate, train, check, save."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..data.collator import PreferenceDataset
from ..data.records import LoadResult, load_records
from ..io import atomic_write_json
from ..models import count_parameters, load_policy, model_source
from .checkpoints import OutputDirLock, disk_full, disk_full_error, newest_complete_checkpoint
from .config import DataArguments, Methods, ModelArguments, PreferenceConfig, RunConfig, resume_value
from .model_card import DataFacts, run_facts
from .policy import prepare_policy
from .trainer import PreferenceTrainer, check_finite_parameters

logger = logging.getLogger(__name__)


def load_dataset(path: str, data_args: DataArguments, split: str | None = None) -> tuple[PreferenceDataset, LoadResult]:
    """The records at ``path`` (its ``split``, for a source of several) read with ``data_args``'
    settings, as a dataset.

    Raises:
        ValueError: as :func:`~mmpo.data.records.load_records`; also when ``path`` holds no record.
    """
    result = load_records(path, on_error=data_args.on_bad_record, image_root=data_args.image_root, split=split,
                          max_text_chars=data_args.max_text_chars,
                          allow_images_outside_root=data_args.allow_images_outside_root,
                          allow_absolute_image_paths=data_args.allow_absolute_image_paths)
    if not result.records:  # every bad record was an error already
        raise ValueError(f"{path}{f' (split {split!r})' if split else ''} holds no records: nothing to train or "
                         "evaluate on")
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

    Only one run writes an ``output_dir`` at a time: the main process holds its lock
    (:class:`~mmpo.training.checkpoints.OutputDirLock`) from before anything is loaded until the
    function returns or raises.

    Raises:
        ValueError: ``output_dir`` would overwrite the model's checkpoint (:func:`check_output_dir`).
        OutputDirInUseError: another run holds ``output_dir``'s lock; the message names its pid.
        FileNotFoundError: the model path does not exist (checked before anything is loaded).
        DiskFullError: the disk filled up while the model was saved (:func:`save_final_model`).
        NonFiniteLossError: a training step's loss or gradients were NaN/inf (``on_nonfinite='raise'``).
        NonFiniteParameterError: training ended with NaN/inf weights; nothing is saved.
    """
    if not data_args.train_file:
        raise ValueError("train_file is required: a records file (.jsonl, .json, .parquet, .arrow), a directory of "
                         "them or a saved dataset, or a glob pattern")
    check_output_dir(args.output_dir, model_args.model_name_or_path, args.reference_model)
    # Only the main process writes output_dir's files, so only it holds the lock (the others must not refuse).
    with OutputDirLock(args.output_dir) if args.process_index == 0 else contextlib.nullcontext():
        return _train(model_args, data_args, args, methods, callbacks, resume_from_checkpoint, command)


def _train(model_args: ModelArguments, data_args: DataArguments, args: PreferenceConfig, methods: Methods | None,
           callbacks, resume_from_checkpoint: str | bool | None, command: str | None) -> PreferenceTrainer:
    model_source(model_args)  # a mistyped model path fails here, before minutes of record loading
    train, train_read = load_dataset(data_args.train_file, data_args, data_args.train_split)
    evaluation, eval_read = (load_dataset(data_args.eval_file, data_args, data_args.eval_split) if data_args.eval_file
                             else (None, None))
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
    save_final_model(trainer, processor, args.output_dir)
    trainer.create_model_card()  # after save_model: a LoRA save writes peft's README.md, which this replaces
    atomic_write_json(Path(args.output_dir, "log_history.json"), trainer.state.log_history, indent=2)
    return trainer


def check_output_dir(output_dir: str, model_path: str, reference_model: str | None = None) -> None:
    """Refuse an ``output_dir`` whose writing would overwrite or delete the checkpoint a run starts
    from, before anything is loaded: the model's (or ``reference_model``'s) directory itself, or a
    ``checkpoint-N`` folder (or the reference cache) inside ``output_dir``, which a run rewrites and
    rotates away. An ``output_dir`` inside the model's directory, or a model directory elsewhere
    inside ``output_dir``, is fine: no file of one is a file the other writes.

    Raises:
        ValueError: naming both paths.
    """
    out = Path(os.path.realpath(os.path.expanduser(output_dir)))
    for name, path in (("model_name_or_path", model_path), ("reference_model", reference_model)):
        if not path or not os.path.isdir(os.path.expanduser(path)):
            continue  # a Hub id, or a path model loading reports as missing
        source = Path(os.path.realpath(os.path.expanduser(path)))
        if source == out or (out.exists() and os.path.samefile(source, out)):
            raise ValueError(f"output_dir {output_dir} is the {name} directory {path}: training would overwrite the "
                             "checkpoint it starts from; set another output_dir")
        if out in source.parents:
            first = source.relative_to(out).parts[0]
            if CHECKPOINT_FOLDER.fullmatch(first) or first in ("reference_cache", FINAL_STAGING):
                raise ValueError(
                    f"{name} {path} is inside output_dir {output_dir} ({first}), which the run rewrites or deletes "
                    "(checkpoint rotation); to continue a run from one of its checkpoints use resume_from_checkpoint, "
                    "else set another output_dir")


#: ``checkpoint-N``: the folders ``Trainer`` writes (and deletes beyond ``save_total_limit``) in ``output_dir``.
CHECKPOINT_FOLDER = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-\d+")
#: Where the final model is written first, inside ``output_dir`` (:func:`save_final_model`); ``_*``, which
#: ``Trainer.push_to_hub`` does not upload.
FINAL_STAGING = "_mmpo_final_save"
#: Files of a saved model's weights that a new save replaces or makes stale (a LoRA save after a full one).
WEIGHT_NAMES = re.compile(r"(model|pytorch_model|adapter_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?"
                          r"|adapter_config\.json")


def save_final_model(trainer: PreferenceTrainer, processor, output_dir: str) -> None:
    """``trainer.save_model`` and ``processor.save_pretrained`` into a folder inside ``output_dir``,
    then each file moved into ``output_dir`` (weights files of an earlier save that this one does not
    write are deleted: a LoRA save after a full one). A save that fails (a full disk) leaves the
    files already in ``output_dir`` as they were, and the partial one is deleted. With
    ``push_to_hub``, ``output_dir`` is then uploaded, as ``Trainer.save_model`` does.

    Raises:
        DiskFullError: the disk filled up; the message names ``output_dir`` and says what is intact.
    """
    staging = Path(output_dir, FINAL_STAGING)
    writer = trainer.args.should_save
    if writer and staging.exists():
        shutil.rmtree(staging)  # a save killed before it was moved in
    try:
        trainer.save_model(str(staging), _internal_call=True)  # not pushed yet: the files are not in place
        if writer:
            processor.save_pretrained(str(staging))
    except Exception as error:
        if not disk_full(error, output_dir):
            raise
        if writer:
            shutil.rmtree(staging, ignore_errors=True)
        newest, _ = newest_complete_checkpoint(output_dir)
        kept = (f"the newest complete checkpoint, {newest}, is intact (resume_from_checkpoint: true saves the model "
                "from it)" if newest is not None else "the files already there were left as they were")
        raise disk_full_error("the trained model", output_dir, kept) from error
    trainer.accelerator.wait_for_everyone()  # every process's files are in staging
    if writer:
        new = {entry.name for entry in staging.iterdir()}
        for entry in sorted(staging.iterdir()):
            target = Path(output_dir, entry.name)
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
        for stale in Path(output_dir).iterdir():
            if stale.name not in new and stale.is_file() and WEIGHT_NAMES.fullmatch(stale.name):
                stale.unlink()
        staging.rmdir()
    trainer.accelerator.wait_for_everyone()
    if trainer.args.push_to_hub:  # what save_model(output_dir) did: upload output_dir
        trainer.push_to_hub(commit_message="Model save", revision=trainer.args.hub_revision)
