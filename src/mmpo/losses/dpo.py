"""Direct Preference Optimization (Rafailov et al., 2023), the loss every other method extends."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    beta: float | torch.Tensor,
) -> torch.Tensor:
    """Per-record DPO loss, ``-log sigmoid(beta * (ratio(y_w) - ratio(y_l)))``.

    Rafailov et al. 2023, Eq. 7 (restated in docs/methods.md, "Notation").
    Intuition: push the policy's log-ratio of the chosen response above that of the rejected one,
    with ``beta`` setting how sharply the margin is rewarded.

    Args:
        chosen_logratios: ``(B,)`` policy log-prob minus reference log-prob of the chosen response,
            summed over its response tokens (ASPO passes its re-weighted chosen log-ratio here).
        rejected_logratios: ``(B,)`` the same for the rejected response.
        beta: a float, or a ``(B,)`` tensor of per-record betas (DAMA's ``beta_C = beta * alpha``).

    Returns:
        ``(B,)`` losses, not reduced. Computed with ``logsigmoid``, so finite for finite inputs.
    """
    margin = beta * (chosen_logratios - rejected_logratios)  # (B,)
    return -F.logsigmoid(margin)


def dpo_rewards(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    beta: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The implicit rewards ``r(y) = beta * ratio(y)`` of both responses, detached, for logging.

    They feed TRL's metric names: ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``
    (chosen minus rejected) and ``rewards/accuracies`` (chosen > rejected).

    Args:
        chosen_logratios: ``(B,)`` chosen log-ratios.
        rejected_logratios: ``(B,)`` rejected log-ratios.
        beta: a float or a ``(B,)`` tensor.

    Returns:
        ``(chosen_rewards, rejected_rewards)``, each ``(B,)`` and detached.
    """
    chosen = (beta * chosen_logratios).detach()
    rejected = (beta * rejected_logratios).detach()
    return chosen, rejected
