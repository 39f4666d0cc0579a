"""``PreferenceTrainer``: a ``transformers.Trainer`` that optimises a preference loss for VLMs.

The training step, top to bottom (``compute_loss``); each method's maths lives in its own module
of :mod:`mmpo.methods`, torch only and unit-tested without a Trainer:

1. one policy forward over the batch's rows (chosen, rejected, and AdaViP's vision-rejected)
   -> response-aligned per-token log-probs ``(R, L)``;
2. the reference's per-token log-probs for the same rows (frozen copy, adapter-off, or table);
3. per-record log-ratios ``log pi(y) - log pi_ref(y)``; with ASPO the chosen one is re-weighted
   per sentence (:func:`mmpo.methods.aspo.aspo_step`);
4. with DAMA, ``beta`` becomes a per-record ``beta_C`` and outlier records are filtered out
   (:class:`mmpo.methods.dama.DamaController`, which also keeps the running mean ``R_bar``);
5. :func:`mmpo.methods.dpo.preference_loss` gives per-record losses (DPO, or AdaViP's
   Plackett-Luce loss when there is a vision-rejected sample), with each record's ``beta_scale``
   times its beta and its loss times its ``weight`` (records without them: 1);
6. the mean over kept records (``sum(weight * loss) / B``), plus an optional NLL term on the chosen
   response (each record's share times its weight).

A step whose loss or gradients are NaN/inf stops the run with :class:`NonFiniteLossError`
(``on_nonfinite='raise'``) or is skipped without an update (``'skip'``).

The public ``Trainer`` hooks overridden: ``train`` (resume from the newest *complete* checkpoint
and restore mmpo's state), ``compute_loss``, ``training_step``, ``prediction_step``, ``log`` and
``create_model_card`` (mmpo's card, which ``push_to_hub`` then uploads);
private ones: ``_save_checkpoint``, to write mmpo's state before ``trainer_state.json`` (see
:mod:`mmpo.training.checkpoints`) and to report a full disk, and the loads of a resumed checkpoint's
files (``_load_from_checkpoint``, ``_load_optimizer_and_scheduler``, ``_load_scaler``,
``_load_rng_state``), to name the file that is damaged. DAMA's running mean is updated by a
callback, the gradients are checked by another.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast_object_list, gather_object
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .. import progress
from ..data.collator import PreferenceCollator, PreferenceDataset, RowEncoder
from ..data.preflight import bound_max_length, model_max_positions, preflight
from ..forward import packing_problem, policy_response_logps, prefix_sharing_problem, unwrap
from ..hub import load_model, pretrained_kwargs
from ..io import atomic_write_json
from ..methods.aspo import aspo_step
from ..methods.dama import DamaController, DamaStateMismatch
from ..methods.dpo import preference_loss
from . import distributed
from .checkpoints import (
    STATE_FILE,
    TRAINER_STATE_FILE,
    CheckpointError,
    check_resume_files,
    checkpoint_problem,
    disk_full,
    disk_full_error,
    newest_complete_checkpoint,
    read_json,
    reading_checkpoint,
)
from .config import Methods, PreferenceConfig, resume_value
from .model_card import RunFacts, write_model_card
from .reference import (
    AdapterReference,
    FrozenCopyReference,
    PrecomputedReference,
    cache_path,
    compute_reference_table,
    encoder_fingerprint_settings,
    read_table,
    reference_fingerprint,
    write_table,
)

logger = logging.getLogger(__name__)

#: The weights files ``Trainer`` may load from a checkpoint it resumes from.
RESUMED_WEIGHTS = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin")


class NonFiniteLossError(RuntimeError):
    """A training step's loss or gradient norm is NaN/inf; the message names the step, the records
    of the batch and the value."""


class NonFiniteParameterError(RuntimeError):
    """Trainable parameters are NaN/inf after training; the message names them."""


def check_finite_parameters(model: torch.nn.Module) -> None:
    """Raise :class:`NonFiniteParameterError` when any trainable parameter holds NaN or inf.

    Under FSDP and ZeRO-3 each process checks the shard it holds (together: every element)."""
    bad = [name for name, p in model.named_parameters()
           if p.requires_grad and not torch.isfinite(distributed.local_shard(p)).all()]
    if bad:
        raise NonFiniteParameterError(f"{len(bad)} trainable parameters hold NaN/inf after training "
                                      f"(first: {bad[:3]}); the model was not saved")


class PreferenceTrainer(Trainer):
    """Preference optimisation (DPO, ASPO, DAMA, AdaViP and their combinations) for VLMs.

    Args:
        model: the policy (a transformers VLM, optionally wrapped by peft).
        args: a :class:`PreferenceConfig`.
        processor: the model's processor (chat template, tokenizer, image processor).
        train_dataset / eval_dataset: :class:`PreferenceDataset`.
        methods: the method switches (:class:`Methods`); default: plain DPO.
    """

    def __init__(self, model, args: PreferenceConfig, processor, train_dataset: PreferenceDataset,
                 eval_dataset: PreferenceDataset | None = None, methods: Methods | None = None, callbacks=None,
                 on_bad_record: str = "raise"):
        self.methods = methods or Methods()
        aspo, dama, adavip = self.methods.aspo, self.methods.dama, self.methods.adavip
        splitter = None
        if aspo.enabled:
            from ..scoring.sentences import RuleSplitter

            splitter = RuleSplitter()
        collator = PreferenceCollator(
            RowEncoder(processor, max_length=args.max_length, prompt_format=args.prompt_format),
            vision_rows=adavip.enabled,
            sentence_splitter=splitter, granularity=aspo.granularity,
            need_sentence_scores=aspo.enabled and aspo.alpha > 0, need_data_alpha=dama.data,
            prefix_sharing=self._can_share(model, args),
            max_tokens_per_row=self._packing_budget(model, args),
        )
        bound_max_length(collator, model_max_positions(model))
        if args.preflight:  # every record through this collator now, so that no bad record ends a run mid-way
            train_dataset = self._preflight(train_dataset, collator, on_bad_record, "training records", args)
            if isinstance(eval_dataset, PreferenceDataset):
                eval_dataset = self._preflight(eval_dataset, collator, on_bad_record, "eval records", args)
        #: Batches skipped for NaN/inf (``on_nonfinite='skip'``), over the whole run (kept in checkpoints).
        self.nonfinite_skipped = 0
        self._step_records: list[list[str]] = []  # record ids of this optimizer step's finite micro-batches
        self._step_skips = 0  # this optimizer step's micro-batches skipped for a NaN/inf loss
        self._skipped_batch = False  # the last compute_loss in training skipped its batch
        callbacks = [_NonFiniteGuard(self)] + list(callbacks or []) + ([_DamaCallback(self)] if dama.model else [])
        super().__init__(model=model, args=args, data_collator=collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processor, callbacks=callbacks)
        distributed.wrap_only_present_layers(self.accelerator, unwrap(self.model))
        self.gather = AcceleratorGather(self.accelerator)
        #: DAMA's step and state (``R_bar``); with DAMA off its beta is the plain ``args.beta``.
        self.dama = DamaController.from_config(dama, args.beta, seed=args.seed, gather=self.gather)
        # Our loss is a mean over records: let Trainer divide it by the accumulation steps.
        self.loss_is_scaled_for_ga = False
        #: Per mode and key, the logging window's (sum on the device, count): read once per log.
        self._metrics: dict[str, dict[str, tuple[torch.Tensor, int]]] = {"train": {}, "eval": {}}
        self.reference = self._build_reference(args, collator, train_dataset)
        #: Some training or eval record has a ``weight`` or ``beta_scale``: log ``records/...`` for every batch.
        self._log_record_scales = any(r.weight is not None or r.beta_scale is not None
                                      for ds in (train_dataset, self.eval_dataset)
                                      if isinstance(ds, PreferenceDataset) for r in ds.records)

    @staticmethod
    def _can_share(model, args: PreferenceConfig) -> bool:
        """``args.prefix_sharing`` unless the model cannot run shared rows exactly (logged once, with why)."""
        if not args.prefix_sharing:
            return False
        problem = prefix_sharing_problem(model)
        if problem:
            logger.info("prefix sharing is off for this model (one row per response instead): %s", problem)
        return problem is None

    @staticmethod
    def _packing_budget(model, args: PreferenceConfig) -> int | None:
        """``args.max_tokens_per_row`` unless the model cannot run packed rows exactly (logged once, with why)."""
        if not args.max_tokens_per_row:
            return None
        problem = packing_problem(model)
        if problem:
            logger.info("packing is off for this model (one row per record instead): %s", problem)
            return None
        return args.max_tokens_per_row

    @staticmethod
    def _preflight(dataset: PreferenceDataset, collator: PreferenceCollator, on_bad_record: str, what: str,
                   args: PreferenceConfig) -> PreferenceDataset:
        with progress.bars(progress.enabled() and not args.disable_tqdm):  # the run's own bar switch
            result = preflight(dataset.records, collator, on_error=on_bad_record, what=what, origins=dataset.origins)
        return dataset if not result.errors else PreferenceDataset(result.records, result.origins or None)

    def _get_train_sampler(self, train_dataset=None):
        """Trainer's sampler; with ``train_sampling_strategy: group_by_length`` (or ``batch_rebalance``)
        records are grouped by their token counts (:meth:`mmpo.data.collator.RowEncoder.text_lengths`),
        so that a batch holds records of similar length and pads little: still
        ``per_device_train_batch_size`` of them (Trainer would look for an ``input_ids`` column)."""
        dataset = self.train_dataset if train_dataset is None else train_dataset
        strategy = getattr(self.args, "train_sampling_strategy", None)
        if strategy not in ("group_by_length", "batch_rebalance") or not isinstance(dataset, PreferenceDataset):
            return super()._get_train_sampler(train_dataset)
        # Here, not at the top: the strategy and its samplers are newer than the oldest transformers 5 admitted.
        from transformers.trainer_pt_utils import BatchRebalanceSampler, LengthGroupedSampler

        lengths = self.data_collator.encoder.text_lengths(dataset.records)
        accumulation = self.args.gradient_accumulation_steps
        if strategy == "group_by_length":
            return LengthGroupedSampler(self.args.train_batch_size * accumulation, lengths=lengths)
        world = max(1, self.args.world_size)
        return BatchRebalanceSampler(lengths=lengths, effective_batch_size=self.args.train_batch_size * accumulation * world,
                                     dp_size=world, grad_accum=accumulation, rank=self.args.process_index if world > 1
                                     else 0, drop_last=self.args.dataloader_drop_last)

    def _build_reference(self, args: PreferenceConfig, collator, train_dataset):
        is_peft = hasattr(self.model, "disable_adapter") and hasattr(self.model, "peft_config")
        kind = args.reference if args.reference != "auto" else ("adapter" if is_peft else "copy")
        self.reference_kind = kind
        self._eval_reference = None
        if kind == "adapter":
            if not is_peft:
                raise ValueError("reference='adapter' needs a peft (LoRA) model; set use_lora or another reference")
            if args.reference_model:
                raise ValueError(f"reference_model ({args.reference_model}) needs reference: copy or precomputed; "
                                 "the adapter-off reference is the policy's own base weights")
            return AdapterReference(lambda: self.accelerator.unwrap_model(self.model), args.lm_head_chunk_size)
        source = self.model if not args.reference_model else self._load_reference_model(args.reference_model)
        if kind == "copy":
            return FrozenCopyReference(source, self.accelerator, shard=args.shard_reference,
                                       copy=source is self.model, head_chunk=args.lm_head_chunk_size)
        if args.reference_model and distributed.engine(self.accelerator) in ("fsdp", "deepspeed"):
            raise ValueError("reference_model with reference: precomputed is not supported under FSDP or DeepSpeed "
                             "(the table is computed by the prepared policy); use reference: copy")
        cache_dir = args.reference_cache_dir or str(Path(args.output_dir) / "reference_cache")
        datasets = [train_dataset] + ([self.eval_dataset] if isinstance(self.eval_dataset, PreferenceDataset) else [])
        tables, self.reference_cache_paths = [], []
        for ds in datasets:
            table, path = self._precomputed_reference(ds, collator, cache_dir, source)
            tables.append(table)
            self.reference_cache_paths.append(str(path))
        self._eval_reference = tables[1] if len(tables) > 1 else None
        return tables[0]

    def _load_reference_model(self, path: str) -> torch.nn.Module:
        """The ``reference_model`` checkpoint in the policy's dtype, checked to have the policy's
        architecture and tensor shapes (a reference of another model gives meaningless rewards)."""
        from ..models import load_policy
        from .config import ModelArguments

        policy = unwrap(self.model)
        policy = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
        dtype = str(next(policy.parameters()).dtype).removeprefix("torch.")
        reference, _ = load_policy(ModelArguments(model_name_or_path=path, dtype=dtype), what="reference_model")
        if type(reference) is not type(policy):
            raise ValueError(f"reference_model {path} is a {type(reference).__name__}, the policy a "
                             f"{type(policy).__name__}: the reference must be the same architecture")
        # a LoRA policy's base weights, under the names they have without the adapters
        shapes = {name.replace(".base_layer.", "."): tuple(getattr(p, "ds_shape", p.shape))
                  for name, p in policy.named_parameters() if "lora_" not in name}
        theirs = {name: tuple(p.shape) for name, p in reference.named_parameters()}
        if theirs != shapes:
            differ = sorted(set(shapes) ^ set(theirs)) or [n for n in shapes if shapes[n] != theirs[n]]
            raise ValueError(f"reference_model {path} does not match the policy's tensors (e.g. {differ[0]}): "
                             "the reference must be the same architecture and size")
        logger.info("reference: %s, from reference_model %s", self.reference_kind, path)
        return reference.eval().requires_grad_(False)

    def _precomputed_reference(self, dataset: PreferenceDataset, collator, cache_dir: str,
                               source: torch.nn.Module | None = None):
        """The cached table, or one pass of the initial policy over ``dataset`` shared by all processes.

        Every process reads the cache; unless all of them found it, all compute the table together
        (each its share of the records) and the main process writes it once. Under FSDP and
        DeepSpeed the pass waits for the first use, so that it runs on the prepared, sharded
        policy rather than on a whole copy per device.
        """
        acc, source = self.accelerator, self.model if source is None else source
        path = cache_path(cache_dir, self._reference_fingerprint(dataset, collator, source))
        table = read_table(path, len(dataset.records))
        if acc.num_processes > 1 and not all(gather_object([table is not None])):
            table = None
        if table is not None:
            return PrecomputedReference(table), path

        def compute(model: torch.nn.Module) -> list[dict[str, torch.Tensor]]:
            table = compute_reference_table(model, dataset, collator, self.args.per_device_eval_batch_size,
                                            acc.device, rank=acc.process_index, world=acc.num_processes,
                                            gather=lambda share: gather_object([share]),
                                            head_chunk=self.args.lm_head_chunk_size)
            if acc.is_main_process:
                write_table(path, table)
            acc.wait_for_everyone()
            return table

        if distributed.engine(acc) in ("fsdp", "deepspeed"):
            return PrecomputedReference(None, pending=compute), path
        if source is not self.model:  # a reference_model: a whole copy, used once and dropped
            return PrecomputedReference(compute(source.to(acc.device))), path
        return PrecomputedReference(compute(self.model)), path

    def _reference_fingerprint(self, dataset: PreferenceDataset, collator, model: torch.nn.Module) -> str:
        """The cache key of ``model``'s log-probs, computed from the main process's weights and shared
        with every process (under FSDP's rank-0 loading the other processes' weights are not loaded yet)."""
        acc, settings = self.accelerator, encoder_fingerprint_settings(collator)
        if distributed.is_partitioned(model):  # ZeRO-3 at load: every process gathers each tensor,
            records = dataset.records if acc.is_main_process else []  # but only the main one hashes the images
            key = reference_fingerprint(model, records, settings, tensors=distributed.whole_tensors(model))
        else:
            key = reference_fingerprint(model, dataset.records, settings) if acc.is_main_process else None
        return broadcast_object_list([key])[0] if acc.num_processes > 1 else key

    # ------------------------------------------------------------------ the loss
    def compute_loss(self, model, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch=None):
        """The batch's loss: steps 1-6 of the module docstring, one line each; NaN/inf is handled by
        :meth:`_skip_nonfinite` (a skipped batch's loss is an exact zero)."""
        training, B = model.training, inputs["record_index"].shape[0]
        aspo, dama_mark = self.methods.aspo, self.dama.mark()
        policy, mask = policy_response_logps(model, inputs, head_chunk=self.args.lm_head_chunk_size)  # (R, L): 2B/3B
        with torch.no_grad():
            reference = self._reference(training, model)(inputs)  # (R, L)
        token_ratios = (policy - reference) * mask  # (R, L)
        ratios = token_ratios.sum(dim=1)  # (R,)
        chosen, rejected = ratios[:B], ratios[B : 2 * B]  # (B,)
        vision = ratios[2 * B : 3 * B] if self.methods.adavip.enabled else None  # (B,) AdaViP's third row
        diag: dict[str, torch.Tensor] = {}
        if aspo.enabled:
            chosen, diag = aspo_step(token_ratios[:B], policy[:B], inputs["unit_spans"], inputs["unit_mask"],
                                     inputs["unit_scores"], aspo.alpha, aspo.normalizer)
        beta, keep, dama_diag = self.dama.beta(chosen, rejected, inputs.get("data_alpha"), training=training)
        weight, beta_scale = inputs.get("record_weight"), inputs.get("beta_scale")  # (B,) or None (all 1)
        losses, loss_diag = preference_loss(chosen, rejected, beta, vision, inputs.get("vision_mask"),
                                            self.methods.adavip.loss, beta_scale=beta_scale, weight=weight)
        loss, nll = self._with_sft_term(self.dama.mean_loss(losses, keep), policy, mask, B, diag, weight)
        if self._log_record_scales:
            ones = torch.ones_like(chosen.detach())  # (B,)
            diag["records/weight"] = ones if weight is None else weight
            diag["records/beta_scale"] = ones if beta_scale is None else beta_scale
        if training and self._skip_nonfinite(model, inputs, loss, losses, keep, nll, dama_mark):
            loss = _zero_loss(model)
        else:
            self._record("train" if training else "eval", {**diag, **dama_diag, **loss_diag})
        return (loss, {"losses": losses.detach()}) if return_outputs else loss

    def _reference(self, training: bool, model: torch.nn.Module):
        """The reference for this pass: the eval table in evaluation with a precomputed reference.

        Tables that waited for the prepared policy (FSDP, DeepSpeed) are all computed now by
        ``model``, the train and the eval table together: only before the first optimizer step is
        the policy still the reference.
        """
        pending = [r for r in (self.reference, self._eval_reference)
                   if isinstance(r, PrecomputedReference) and r.table is None]
        if pending:
            if self.state.global_step > 0:
                raise RuntimeError(
                    f"the precomputed reference table is missing at step {self.state.global_step} (a resumed run "
                    f"whose cache {', '.join(self.reference_cache_paths)} is gone), and the policy is no longer "
                    "the initial one: restore the cache file, or start the run from its initial weights")
            for table in pending:
                table.ensure(model)
        return self.reference if training or self._eval_reference is None else self._eval_reference

    def _with_sft_term(self, loss: torch.Tensor, policy: torch.Tensor, mask: torch.Tensor, B: int,
                       diag: dict[str, torch.Tensor], weight: torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``preference_weight * loss + sft_weight * NLL`` and the NLL (None when ``sft_weight`` is 0);
        logs ``loss/sft`` and the responses' summed log-probs. The NLL of the chosen responses is
        reduced by :func:`sft_nll` with ``sft_reduction``, each record's share times its ``weight``
        ``(B,)`` (None: 1)."""
        if self.args.preference_weight != 1:
            loss = self.args.preference_weight * loss
        policy_sums = (policy * mask).sum(dim=1)  # (R,)
        diag["logps/chosen"] = policy_sums[:B].detach()
        diag["logps/rejected"] = policy_sums[B : 2 * B].detach()
        if self.args.sft_weight == 0:
            return loss, None
        nll = sft_nll(policy_sums[:B], mask[:B].sum(dim=1), self.args.sft_reduction, weight)
        diag["loss/sft"] = nll.detach()
        return loss + self.args.sft_weight * nll, nll

    # ------------------------------------------------------------------ NaN / inf guard
    def _record_ids(self, inputs: dict[str, Any] | torch.Tensor) -> list[str]:
        """The batch's record ids (``#index`` in the training set for a record without one), from the
        batch or its ``record_index``; read only to name records in an error (a host-device sync)."""
        records = self.train_dataset.records
        indices = inputs.tolist() if torch.is_tensor(inputs) else inputs.get("record_indices") or \
            inputs["record_index"].tolist()
        return [str(records[i].id) if records[i].id is not None else f"#{i}" for i in indices]

    def _skip_nonfinite(self, model, inputs: dict[str, Any], loss: torch.Tensor, losses: torch.Tensor,
                        keep: torch.Tensor | None, nll: torch.Tensor | None, dama_mark: int) -> bool:
        """A training batch's bookkeeping: False when its loss is finite (its records join the
        optimizer step's); raises :class:`NonFiniteLossError`, or (with ``on_nonfinite='skip'``)
        warns, counts, takes back its DAMA ``R_B`` and returns True when it is not."""
        self._skipped_batch = self._nonfinite_loss(model, inputs, loss, losses, keep, nll)
        if self._skipped_batch:
            self.dama.discard_since(dama_mark)  # this batch's R_B must not reach R_bar
            self._step_skips += 1
        else:
            self._step_records.append(inputs["record_index"].detach())
        return self._skipped_batch

    def _nonfinite_loss(self, model, inputs: dict[str, Any], loss: torch.Tensor, losses: torch.Tensor,
                        keep: torch.Tensor | None, nll: torch.Tensor | None) -> bool:
        """False when the training loss is finite; raises :class:`NonFiniteLossError`, or (with
        ``on_nonfinite='skip'``) warns, counts and returns True when it is not."""
        bad = not bool(torch.isfinite(loss.detach()))
        if self.args.on_nonfinite == "raise" and self.accelerator.num_processes > 1:
            # Every process stops together (one process raising alone would hang the others).
            anywhere = bool(self.gather.sum(torch.tensor(float(bad), device=loss.device)) > 0)
            if anywhere and not bad:
                raise NonFiniteLossError(f"step {self.state.global_step + 1}: the loss is NaN/inf on another "
                                         "process (its error names the records)")
        if not bad:
            return False
        ids = self._record_ids(inputs)
        per_record = losses.detach()
        if keep is not None:
            per_record = torch.where(keep, per_record, torch.zeros_like(per_record))
        causes = [f"{ids[i]!r}: {float(per_record[i])}" for i in range(len(ids)) if not torch.isfinite(per_record[i])]
        causes = [f"preference loss of {', '.join(causes)}"] if causes else []
        if nll is not None and not torch.isfinite(nll.detach()):
            causes.append(f"loss/sft is {float(nll)}")
        message = (f"step {self.state.global_step + 1}: loss is {float(loss)} (records {', '.join(map(repr, ids))}); "
                   f"non-finite: {'; '.join(causes) or 'the mean over the batch'}")
        if self.args.on_nonfinite == "raise":
            raise NonFiniteLossError(f"{message}. Lower learning_rate or beta, check these records, or set "
                                     "on_nonfinite: skip to skip such batches")
        self.nonfinite_skipped += 1
        logger.warning("%s; batch skipped (on_nonfinite=skip, %d skipped so far)", message, self.nonfinite_skipped)
        return True

    def check_gradients(self, model) -> None:
        """Before the optimizer step (after clipping): NaN/inf gradients raise, or drop the step's update.

        With ``on_nonfinite='skip'``, also when every micro-batch of the step was skipped: their zero
        gradients would still move the weights (Adam's momentum, weight decay); without a gradient
        the optimizer leaves a parameter untouched.
        """
        records, skips = self._step_records, self._step_skips
        self._step_records, self._step_skips = [], 0
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:  # DeepSpeed keeps its gradients to itself; nothing to check here
            return
        norm = float(torch.nn.utils.get_total_norm(grads, norm_type=2.0))
        bad, trained = not math.isfinite(norm), bool(records)
        if self.accelerator.num_processes > 1:  # every process decides the same (sharded gradients: FSDP)
            flags = torch.tensor([[float(bad), float(trained)]], device=grads[0].device)
            bad, trained = (bool(v > 0) for v in self.accelerator.gather(flags).sum(dim=0))
        if bad:
            ids = [i for batch in records for i in self._record_ids(batch)]
            message = (f"step {self.state.global_step + 1}: grad_norm is {norm} after clipping "
                       f"(records {', '.join(map(repr, ids))})")
            if self.args.on_nonfinite == "raise":
                raise NonFiniteLossError(f"{message}. Lower learning_rate, check these records, or set "
                                         "on_nonfinite: skip to skip such steps")
            self.nonfinite_skipped += len(records)
            self.dama.discard_pending()
            logger.warning("%s; optimizer step skipped (on_nonfinite=skip, %d batches skipped so far)", message,
                           self.nonfinite_skipped)
        if bad or (skips and not trained):
            for p in model.parameters():
                p.grad = None

    def training_step(self, model, inputs, num_items_in_batch=None):
        """``Trainer.training_step``; a skipped batch reports a NaN loss, which ``Trainer``'s
        ``logging_nan_inf_filter`` (on by default) leaves out of the logged mean (its zero loss would
        pull the mean down)."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        return torch.full_like(loss, float("nan")) if self._skipped_batch else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ------------------------------------------------------------------ state across checkpoints
    def mmpo_state(self) -> dict[str, Any]:
        return {**self.dama.state_dict(), "nonfinite_skipped_batches": self.nonfinite_skipped}

    def load_mmpo_state(self, state: dict[str, Any]) -> None:
        self.dama.load_state_dict(state)
        self.nonfinite_skipped = int(state.get("nonfinite_skipped_batches", 0))

    #: What this run's model card says (:func:`mmpo.training.model_card.run_facts`), set by
    #: :func:`mmpo.training.run.run_training`; None: ``create_model_card`` writes ``Trainer``'s own card.
    card_facts: RunFacts | None = None

    def create_model_card(self, *args, **kwargs) -> None:
        """Write mmpo's model card to ``output_dir/README.md`` (:mod:`mmpo.training.model_card`), on the
        main process. ``Trainer.push_to_hub`` calls this hook right before it uploads ``output_dir``, so
        the card published is mmpo's; its ``tags`` are added to the card's, other arguments are ignored."""
        if self.card_facts is None:
            return super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero():
            tags = kwargs.get("tags") or ()
            write_model_card(self.args.output_dir, self.card_facts, self.state.log_history,
                             [tags] if isinstance(tags, str) else tags)

    def _save_checkpoint(self, model, trial) -> None:
        """Write ``mmpo_state.json`` atomically into the checkpoint folder, then ``Trainer``'s files.

        ``Trainer`` writes ``trainer_state.json`` after the weights, optimizer and RNG states, so a
        readable one marks a finished checkpoint only when mmpo's state is written before it. The
        public ``on_save`` event fires after ``trainer_state.json`` (a kill in between resumed with
        ``R_bar = 0`` and exit 0), so this private method, which ``Trainer`` calls once per save on
        every process, is wrapped: the folder name is the one ``Trainer._save_checkpoint`` builds.
        Written for every run, not only DAMA's, so every checkpoint has the same files.

        A save that fills the disk deletes the half-written folder and raises
        :class:`~mmpo.training.checkpoints.DiskFullError` naming ``output_dir`` and the newest
        complete checkpoint, which is intact.
        """
        output_dir = Path(self._get_output_dir(trial=trial))
        folder = output_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        try:
            if self.args.should_save:
                folder.mkdir(parents=True, exist_ok=True)
                # A folder left by an earlier run at this step must not look finished while it is rewritten.
                (folder / TRAINER_STATE_FILE).unlink(missing_ok=True)
                atomic_write_json(folder / STATE_FILE, self.mmpo_state())
            super()._save_checkpoint(model, trial)
        except Exception as error:
            if not disk_full(error, output_dir):
                raise
            if self.args.should_save:  # the half-written checkpoint: never resumed from, and its space is wanted
                shutil.rmtree(folder, ignore_errors=True)
            newest, _ = newest_complete_checkpoint(output_dir, need_state=self.methods.dama.model)
            kept = (f"the newest complete checkpoint, {newest}, is intact (resume_from_checkpoint: true continues "
                    "from it)" if newest is not None else "no earlier checkpoint was written")
            raise disk_full_error(f"checkpoint {folder.name}", output_dir, kept) from error

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """``Trainer.train``, resuming only from a complete checkpoint and restoring mmpo's state.

        ``resume_from_checkpoint=True`` (or "true") picks the newest complete checkpoint in
        ``output_dir`` (:func:`~mmpo.training.checkpoints.newest_complete_checkpoint`), logging the
        newer ones it skipped and why. A named checkpoint must be complete; for a DAMA model-aware run
        that includes its ``mmpo_state.json`` (``R_bar``).

        The files ``Trainer`` loads from it (``trainer_state.json``, the optimizer, scheduler, scaler
        and RNG states, the weights) are checked first, and any error while ``Trainer`` loads them
        names the file (:func:`~mmpo.training.checkpoints.reading_checkpoint`); they are loaded
        with ``weights_only``, as ``Trainer`` does.

        Raises:
            CheckpointError: no complete checkpoint, or the named one is damaged (naming the file).
        """
        path = resume_value(resume_from_checkpoint)
        if path is True:
            path = self._newest_complete_checkpoint()
        if isinstance(path, str):
            problem = checkpoint_problem(path, need_state=self.methods.dama.model)
            if problem:
                raise CheckpointError(f"cannot resume from {path}: {problem}"
                                      + ("; a DAMA model-aware run needs its running mean R_bar from it"
                                         if STATE_FILE in problem else ""))
            check_resume_files(path)
            state_file = Path(path, STATE_FILE)
            if state_file.exists():
                try:
                    self.load_mmpo_state(read_json(state_file))
                except DamaStateMismatch as error:
                    raise CheckpointError(f"cannot resume from {path}: {error}") from None
                except (KeyError, TypeError, ValueError, RuntimeError) as error:
                    raise CheckpointError(f"{state_file} is not a valid mmpo state: {error!r}") from None
            self._load_renamed_weights(path)
        self._step_records, self._step_skips = [], 0
        return super().train(resume_from_checkpoint=path, **kwargs)

    # Trainer's loads of a checkpoint's files, each naming the file it could not load
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        with reading_checkpoint(resume_from_checkpoint, RESUMED_WEIGHTS):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint):
        with reading_checkpoint(checkpoint, ("optimizer.pt", "scheduler.pt")):
            return super()._load_optimizer_and_scheduler(checkpoint)

    def _load_scaler(self, checkpoint):
        with reading_checkpoint(checkpoint, ("scaler.pt",)):
            return super()._load_scaler(checkpoint)

    def _load_rng_state(self, checkpoint):
        with reading_checkpoint(checkpoint, (f"rng_state_{self.args.process_index}.pth", "rng_state.pth")):
            return super()._load_rng_state(checkpoint)

    def _newest_complete_checkpoint(self) -> str:
        output_dir = self.args.output_dir
        path, skipped = newest_complete_checkpoint(output_dir, need_state=self.methods.dama.model)
        for folder, problem in skipped:
            logger.warning("resume: skipping %s, incomplete (killed while it was written?): %s", folder.name, problem)
        if path is None:
            if not skipped:
                raise CheckpointError(f"resume_from_checkpoint=True but {output_dir} has no checkpoint")
            raise CheckpointError(f"resume_from_checkpoint=True but no checkpoint in {output_dir} is complete: "
                                  + "; ".join(problem for _, problem in skipped)
                                  + " (name a checkpoint's path to resume from it as it is)")
        logger.info("resume: from %s, the newest complete checkpoint in %s", path, output_dir)
        return str(path)

    def _load_renamed_weights(self, checkpoint: str) -> None:
        """Load checkpoint weights whose names ``Trainer`` cannot match.

        transformers 5 saves some VLMs (LLaVA among them) under their legacy parameter names
        (``language_model.model.*``) while the live module is ``model.language_model.*``.
        ``Trainer``'s resume loads the file with ``load_state_dict(strict=False)``, which then
        matches nothing and silently resumes from the *initial* weights. When the names differ,
        the checkpoint is read back through ``from_pretrained`` (which knows the renaming) and
        copied in; ``Trainer``'s own load that follows is then a no-op.
        """
        weights = Path(checkpoint, "model.safetensors")
        model = self.accelerator.unwrap_model(self.model)
        if not weights.exists() or not hasattr(model, "from_pretrained"):
            return
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            saved = set(f.keys())
        if saved <= set(model.state_dict()):
            return
        loaded = load_model(type(model), checkpoint, "checkpoint", dtype=next(model.parameters()).dtype,
                            **pretrained_kwargs(checkpoint, "checkpoint", allow_download=False))
        missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
        if missing or unexpected:
            raise RuntimeError(f"{checkpoint}: checkpoint weights do not fit the model "
                               f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        del loaded

    # ------------------------------------------------------------------ logging
    def _record(self, mode: str, diag: dict[str, torch.Tensor]) -> None:
        """Accumulate (sum, count) per key over the logging window. The sums stay on the device, so a
        step makes no host-device sync for its metrics; :meth:`log` reads them once."""
        window = self._metrics[mode]
        for key, value in diag.items():
            value = value.detach().float().reshape(-1)
            total, count = window.get(key, (0.0, 0))
            window[key] = (value.sum() + total, count + value.numel())

    def _window_means(self, mode: str) -> dict[str, float]:
        """The logging window's mean per key over every process's records: one gather of the key
        names and one of the sums (a process that recorded nothing for a key adds zeros)."""
        window = self._metrics[mode]
        keys = sorted(window)
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            keys = sorted(set().union(*gather_object([keys])))
        if not keys:
            return {}
        zero = torch.zeros((), device=self.args.device)
        sums = torch.stack([window[k][0] if k in window else zero for k in keys])  # (K,)
        counts = torch.tensor([float(window[k][1]) if k in window else 0.0 for k in keys], device=sums.device)
        pairs = torch.stack([sums, counts])  # (2, K)
        if self.accelerator.num_processes > 1:
            pairs = self.accelerator.gather(pairs.unsqueeze(0)).sum(dim=0)
        totals, numbers = pairs.tolist()
        return {k: s / n for k, s, n in zip(keys, totals, numbers, strict=True) if n > 0}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """``Trainer.log`` plus the window's metric means; NaN/inf means are logged as they are."""
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        averaged = self._window_means(mode)
        if mode == "eval":
            averaged = {f"eval_{k}": v for k, v in averaged.items()}
        elif self.args.on_nonfinite == "skip":
            averaged["nonfinite_skipped_batches"] = self.nonfinite_skipped
        logs = {**logs, **averaged}
        self._metrics[mode].clear()
        super().log(logs, start_time)


def _zero_loss(model: torch.nn.Module) -> torch.Tensor:
    """A loss of exactly 0 whose gradient is 0 for every trainable parameter.

    It replaces a skipped batch's loss: backpropagating the NaN loss itself would give NaN
    gradients (0 * NaN), and touching every parameter keeps DDP's gradient reduction complete.
    """
    terms = [p.reshape(-1)[:1].sum() * 0.0 for p in model.parameters() if p.requires_grad]
    return torch.stack(terms).sum() if terms else torch.zeros((), requires_grad=True)


def sft_nll(sums: torch.Tensor, counts: torch.Tensor, reduction: str = "token",
            weight: torch.Tensor | None = None) -> torch.Tensor:
    """The SFT term's negative log-likelihood of the chosen responses, 0-dim.

    Args:
        sums: ``(B,)`` each chosen response's summed token log-probs under the policy.
        counts: ``(B,)`` its number of tokens.
        reduction: ``"token"``: ``-sum(sums) / sum(counts)`` over the whole batch (TRL's ``sft`` loss,
            a token-weighted mean: long responses weigh more); ``"record"``: the mean over records of
            ``-sums / counts`` (every record weighs the same); ``"sum"``: the mean over records of
            ``-sums`` (RLAIF-V's trainer, which subtracts the summed chosen log-prob; its scale grows
            with the response length).
        weight: ``(B,)`` the records' ``weight``, or None (all 1): each record's share of the term is
            multiplied by its weight; the divisor (tokens or records) stays unweighted.
    """
    if weight is not None:
        sums = weight.to(sums) * sums  # (B,)
    if reduction == "token":
        return -sums.sum() / counts.sum().clamp(min=1)
    if reduction == "record":
        return -(sums / counts.clamp(min=1)).mean()
    if reduction == "sum":
        return -sums.mean()
    raise ValueError(f"sft_reduction must be token, record or sum, not {reduction!r}")


class _DamaCallback(TrainerCallback):
    """Updates DAMA's running mean after each optimizer step (``_save_checkpoint`` saves it)."""

    def __init__(self, trainer: PreferenceTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.dama.step_end()


class _NonFiniteGuard(TrainerCallback):
    """Checks the gradients after clipping, before the optimizer step (``on_pre_optimizer_step``,
    the last event before ``optimizer.step()`` in ``Trainer``'s loop)."""

    def __init__(self, trainer: PreferenceTrainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.trainer.check_gradients(model if model is not None else self.trainer.model)


class AcceleratorGather:
    """:class:`~mmpo.methods.dama.BatchGather` over ``accelerate``'s processes (DAMA's global batch,
    the NaN/inf guard's agreement)."""

    def __init__(self, accelerator):
        self.accelerator = accelerator

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    def concat(self, values: torch.Tensor) -> tuple[torch.Tensor, int]:
        if self.num_processes == 1:
            return values, 0
        sizes = self.accelerator.gather(torch.tensor([values.shape[0]], device=values.device))  # (P,)
        padded = self.accelerator.pad_across_processes(values, dim=0)  # (B_max,)
        everything = self.accelerator.gather(padded).reshape(len(sizes), -1)  # (P, B_max)
        parts = [everything[p, : int(sizes[p])] for p in range(len(sizes))]
        offset = int(sizes[: self.accelerator.process_index].sum())
        return torch.cat(parts), offset

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.num_processes == 1:
            return value
        return self.accelerator.gather(value.reshape(1)).sum()
