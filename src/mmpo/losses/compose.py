"""The one place where the method switches meet.

Every method changes one part of the DPO objective, so they compose: DAMA rescales ``beta`` per
record, ASPO replaces the chosen log-ratio by a sentence-weighted one, AdaViP adds a third
(vision-rejected) sample and changes the link function. This function takes the already-adjusted
pieces and returns per-record losses plus detached diagnostics under TRL's metric names.
"""

from __future__ import annotations

import torch

from .dpo import dpo_loss


def preference_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    beta: float | torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-record preference losses and diagnostics.

    Args:
        chosen_logratios: ``(B,)`` ``log pi(y_w) - log pi_ref(y_w)``.
        rejected_logratios: ``(B,)`` the same for ``y_l``.
        beta: a float or a per-record ``(B,)`` tensor.

    Returns:
        ``(losses (B,), diagnostics)`` where diagnostics hold ``(B,)`` detached tensors keyed
        ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``.
    """
    losses = dpo_loss(chosen_logratios, rejected_logratios, beta)
    chosen_rewards = (beta * chosen_logratios).detach()
    rejected_rewards = (beta * rejected_logratios).detach()
    diag = {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/margins": chosen_rewards - rejected_rewards,
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
    }
    return losses, diag
