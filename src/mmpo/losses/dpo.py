"""Direct Preference Optimization, the loss every other method extends.

"Direct Preference Optimization: Your Language Model is Secretly a Reward Model" (Rafailov et al.,
2023), arXiv:2305.18290. The implicit rewards ``beta * ratio`` are logged by
:func:`mmpo.losses.compose.preference_loss`.
"""

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

