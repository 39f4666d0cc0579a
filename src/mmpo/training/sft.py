"""Supervised fine-tuning on (image, prompt, response) rows: how the synthetic world's base model is made.

The loss is the model's own next-token cross-entropy on response tokens (prompt and image
tokens are labelled -100 by the same :class:`RowEncoder` the preference collator uses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from ..data.collator import RowEncoder


@dataclass
class SFTCollator:
    """Collates items with ``image``, ``prompt`` and ``response`` keys into a labelled batch."""

    encoder: RowEncoder

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.encoder([it["image"] for it in items], [it["prompt"] for it in items],
                             [it["response"] for it in items])
        return {**batch["model_inputs"], "labels": batch["labels"]}


class RowDataset(torch.utils.data.Dataset):
    """Rows with an ``image`` (path, PIL image, or an object with ``render()``), ``prompt`` and ``response``."""

    def __init__(self, rows: list[Any]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        image = row.scene.render() if hasattr(row, "scene") else row.image
        return {"image": image, "prompt": row.prompt, "response": row.response}


def train_sft(model, processor, rows: list[Any], args: TrainingArguments, max_length: int | None = None,
              callbacks=None) -> Trainer:
    """Fine-tune ``model`` on ``rows``; returns the finished ``Trainer`` (its ``state.log_history`` has the losses)."""
    trainer = Trainer(model=model, args=args, data_collator=SFTCollator(RowEncoder(processor, max_length)),
                      train_dataset=RowDataset(rows), processing_class=processor, callbacks=callbacks)
    trainer.train()
    return trainer
