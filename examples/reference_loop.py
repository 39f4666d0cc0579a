"""DPO for a VLM in plain PyTorch: the whole training step on one screen, no Trainer.

This is the reference the library's ``PreferenceTrainer`` is pinned to
(``tests/integration/test_reference_loop.py`` checks both give the same weights), and a starting
point for anyone who wants to hack on the loop itself.

    python examples/reference_loop.py --model DIR --records train.jsonl [--steps 100]
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch

from mmpo.data.collator import PreferenceCollator, PreferenceDataset, RowEncoder
from mmpo.forward import policy_response_logps
from mmpo.methods import dpo_loss


def train(model, processor, records, *, steps: int, batch_size: int, lr: float, beta: float,
          sft_weight: float = 0.0) -> list[float]:
    """Plain SGD on the DPO loss (+ optional NLL on the chosen response); returns the losses."""
    dataset = PreferenceDataset(records)
    collate = PreferenceCollator(RowEncoder(processor))
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    model.train()
    for step in range(steps):
        start = (step * batch_size) % len(dataset)
        batch = collate([dataset[(start + i) % len(dataset)] for i in range(batch_size)])
        B = batch["record_index"].shape[0]
        policy, mask = policy_response_logps(model, batch)  # (2B, L)
        with torch.no_grad():
            ref, _ = policy_response_logps(reference, batch)  # (2B, L)
        ratios = ((policy - ref) * mask).sum(dim=1)  # (2B,)
        loss = dpo_loss(ratios[:B], ratios[B:], beta).mean()
        if sft_weight > 0:  # the chosen tokens' mean NLL over the batch (sft_reduction: token, TRL's)
            loss = loss - sft_weight * (policy[:B] * mask[:B]).sum() / mask[:B].sum().clamp(min=1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def main(argv: list[str]) -> int:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmpo.data.records import load_records

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--records", required=True)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--beta", type=float, default=0.1)
    ns = p.parse_args(argv)
    model = AutoModelForImageTextToText.from_pretrained(ns.model)
    processor = AutoProcessor.from_pretrained(ns.model)
    losses = train(model, processor, load_records(ns.records).records, steps=ns.steps, batch_size=ns.batch_size,
                   lr=ns.lr, beta=ns.beta)
    print(f"loss: first {losses[0]:.4f}, last {losses[-1]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
