"""``PreferenceTrainer``: a ``transformers.Trainer`` that optimises a preference loss for VLMs.

The training step, top to bottom:

1. one policy forward over the batch's ``2B`` rows (chosen then rejected) -> per-token log-probs;
2. the reference's per-token log-probs for the same rows (frozen copy, adapter-off, or table);
3. per-record log-ratios ``log pi(y) - log pi_ref(y)`` summed over response tokens;
4. ``mmpo.losses.compose.preference_loss`` turns them into per-record losses;
5. an optional NLL term on the chosen response; the mean is the loss; TRL's metric names are logged.

Only public ``Trainer`` hooks are overridden: ``compute_loss``, ``prediction_step`` and ``log``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from ..data.collator import PreferenceCollator, PreferenceDataset, RowEncoder
from ..losses.compose import preference_loss
from .config import PreferenceConfig
from .reference import AdapterReference, FrozenCopyReference, load_or_compute_reference, policy_response_logps


class PreferenceTrainer(Trainer):
    """Preference optimisation (DPO and the methods built on it) for processor-based VLMs.

    Args:
        model: the policy (a transformers VLM, optionally wrapped by peft).
        args: a :class:`PreferenceConfig`.
        processor: the model's processor (chat template, tokenizer, image processor).
        train_dataset / eval_dataset: :class:`PreferenceDataset`.
    """

    def __init__(self, model, args: PreferenceConfig, processor, train_dataset: PreferenceDataset,
                 eval_dataset: PreferenceDataset | None = None, callbacks=None):
        collator = PreferenceCollator(RowEncoder(processor, max_length=args.max_length))
        super().__init__(model=model, args=args, data_collator=collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processor, callbacks=callbacks)
        # Our loss is a mean over records: let Trainer divide it by the accumulation steps.
        self.loss_is_scaled_for_ga = False
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.reference = self._build_reference(args, collator, train_dataset)

    def _build_reference(self, args: PreferenceConfig, collator, train_dataset):
        is_peft = hasattr(self.model, "disable_adapter") and hasattr(self.model, "peft_config")
        kind = args.reference if args.reference != "auto" else ("adapter" if is_peft else "copy")
        self.reference_kind = kind
        if kind == "adapter":
            if not is_peft:
                raise ValueError("reference='adapter' needs a peft (LoRA) model; set use_lora or another reference")
            return AdapterReference(lambda: self.accelerator.unwrap_model(self.model))
        if kind == "copy":
            ref = FrozenCopyReference(self.model)
            ref.model.to(self.args.device)
            return ref
        cache_dir = args.reference_cache_dir or str(Path(args.output_dir) / "reference_cache")
        batch = args.per_device_eval_batch_size
        datasets = [train_dataset] + ([self.eval_dataset] if isinstance(self.eval_dataset, PreferenceDataset) else [])
        tables, self.reference_cache_paths = [], []
        for ds in datasets:
            ref, path = load_or_compute_reference(self.model, ds, collator, batch, cache_dir, device=self.args.device,
                                                  main_process_first=self.args.main_process_first)
            tables.append(ref)
            self.reference_cache_paths.append(str(path))
        self._eval_reference = tables[1] if len(tables) > 1 else None
        return tables[0]

    # ------------------------------------------------------------------ the loss
    def compute_loss(self, model, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        B = inputs["record_index"].shape[0]
        policy, mask = policy_response_logps(model, inputs)  # (R, L), R = 2B or 3B
        reference = self._reference_for(mode)
        with torch.no_grad():
            ref = reference(inputs)  # (R, L)
        logratios = ((policy - ref) * mask).sum(dim=1)  # (R,)
        policy_sums = (policy * mask).sum(dim=1)  # (R,)

        losses, diag = preference_loss(
            chosen_logratios=logratios[:B], rejected_logratios=logratios[B : 2 * B], beta=self.args.beta,
        )
        loss = losses.mean()
        if self.args.sft_weight > 0:
            n_tokens = mask[:B].sum(dim=1).clamp(min=1)
            nll = -(policy_sums[:B] / n_tokens).mean()
            loss = loss + self.args.sft_weight * nll
            diag["loss/sft"] = nll.detach()
        diag["logps/chosen"] = policy_sums[:B].detach()
        diag["logps/rejected"] = policy_sums[B : 2 * B].detach()
        self._record(mode, diag)
        return (loss, {"losses": losses.detach()}) if return_outputs else loss

    def _reference_for(self, mode: str):
        if mode == "eval" and getattr(self, "_eval_reference", None) is not None:
            return self._eval_reference
        return self.reference

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ------------------------------------------------------------------ logging
    def _record(self, mode: str, diag: dict[str, torch.Tensor]) -> None:
        for key, value in diag.items():
            value = self.accelerator.gather_for_metrics(value.detach().float().reshape(-1))
            self._metrics[mode][key].append(value.mean().item())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        averaged = {k: sum(v) / len(v) for k, v in self._metrics[mode].items() if v}
        if mode == "eval":
            averaged = {f"eval_{k}": v for k, v in averaged.items()}
        logs = {**logs, **averaged}
        self._metrics[mode].clear()
        super().log(logs, start_time)
