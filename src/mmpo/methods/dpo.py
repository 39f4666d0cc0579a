"""DPO, the loss every method extends, and the one place where the method switches meet.

"Direct Preference Optimization: Your Language Model is Secretly a Reward Model" (Rafailov et al.,
2023), arXiv:2305.18290: :func:`dpo_loss`.

Every method changes one part of the DPO objective, so they compose in :func:`preference_loss`:
DAMA rescales ``beta`` per record (:class:`mmpo.methods.dama.DamaController`), ASPO replaces the
chosen log-ratio by a sentence-weighted one (:func:`mmpo.methods.aspo.aspo_step`), AdaViP adds a
third (vision-rejected) sample and changes the loss (:mod:`mmpo.methods.adavip.loss`).
:func:`preference_loss` turns those pieces into per-record losses plus detached diagnostics under
TRL's metric names (and ``adavip/...`` when the vision sample is present). A record may also scale
its own beta and weigh its own loss (``beta_scale``, ``weight``; docs/methods.md, "Per-record weight
and beta scale").
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .adavip.loss import adavip_plackett_luce_loss, adavip_plus_vision_loss

AdavipLoss = Literal["plackett_luce", "plus_vision"]


def dpo_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    beta: float | torch.Tensor,
) -> torch.Tensor:
    """Per-record DPO loss, ``-log sigmoid(beta * (ratio(y_w) - ratio(y_l)))``.

    Rafailov et al. 2023, Eq. 7 (restated in docs/methods.md, "DPO").
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


def preference_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    beta: float | torch.Tensor,
    vision_logratios: torch.Tensor | None = None,
    vision_mask: torch.Tensor | None = None,
    adavip_loss: AdavipLoss = "plackett_luce",
    beta_scale: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-record preference losses and diagnostics.

    Args:
        chosen_logratios: ``(B,)`` ``log pi(y_w) - log pi_ref(y_w)`` (ASPO: the weighted version).
        rejected_logratios: ``(B,)`` the same for ``y_l``.
        beta: a float or a per-record ``(B,)`` tensor (DAMA's ``beta_C``).
        vision_logratios: ``(B,)`` log-ratios of the chosen text on the vision-rejected image
            (AdaViP), or None for two-sample DPO.
        vision_mask: ``(B,)`` bool, True where a record has a vision-rejected sample.
        adavip_loss: with a vision sample, ``"plackett_luce"`` (AdaViP Eq. 11) or ``"plus_vision"``
            (the ablation: two DPO losses); the config key of the same name.
        beta_scale: ``(B,)`` the records' ``beta_scale`` (> 0) or None (all 1): record ``i``'s beta is
            ``beta_scale_i * beta_i``, used by every loss and reward below.
        weight: ``(B,)`` the records' ``weight`` (>= 0) or None (all 1): multiplies each record's loss.
            A weight-0 record's loss is an exact 0, even where its loss is inf.

    Returns:
        ``(losses (B,), diagnostics)``: the losses times ``weight``, not reduced (the trainer's mean
        over ``B`` makes weight 1 everywhere today's loss). Diagnostics hold detached ``(B,)`` tensors
        keyed ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``
        (rewards with the scaled beta) and, with a vision sample, ``rewards/vision_rejected``,
        ``rewards/vision_margins``, ``adavip/weight_vision`` and ``adavip/weight_language`` over the
        records that have one.
    """
    if beta_scale is not None:
        beta = beta_scale.to(chosen_logratios) * beta  # (B,)
    losses, diag = _preference_loss(chosen_logratios, rejected_logratios, beta, vision_logratios, vision_mask,
                                    adavip_loss)
    if weight is not None:
        weight = weight.to(losses)  # (B,); a weight-0 record's loss replaced, not multiplied: inf * 0 is NaN
        losses = torch.where(weight > 0, weight * losses, torch.zeros_like(losses))  # (B,)
    return losses, diag


def _preference_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    beta: float | torch.Tensor,
    vision_logratios: torch.Tensor | None,
    vision_mask: torch.Tensor | None,
    adavip_loss: AdavipLoss,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`preference_loss` for each record's final beta, unweighted."""
    chosen_rewards = beta * chosen_logratios  # (B,)
    rejected_rewards = beta * rejected_logratios  # (B,)
    diag = {
        "rewards/chosen": chosen_rewards.detach(),
        "rewards/rejected": rejected_rewards.detach(),
        "rewards/margins": (chosen_rewards - rejected_rewards).detach(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().detach(),
    }
    if vision_logratios is None:
        return dpo_loss(chosen_logratios, rejected_logratios, beta), diag

    vision_rewards = beta * vision_logratios  # (B,)
    mask = torch.ones_like(chosen_rewards, dtype=torch.bool) if vision_mask is None else vision_mask.bool()
    if adavip_loss == "plackett_luce":
        losses, weight_vision = adavip_plackett_luce_loss(chosen_rewards, rejected_rewards, vision_rewards, mask)
    elif adavip_loss == "plus_vision":
        losses = adavip_plus_vision_loss(chosen_rewards, rejected_rewards, vision_rewards, mask)
        weight_vision = torch.sigmoid(vision_rewards - rejected_rewards).detach()
    else:
        raise ValueError(f"adavip_loss must be plackett_luce or plus_vision, not {adavip_loss!r}")
    # Always the same keys (possibly empty), so every process logs the same metrics.
    diag["rewards/vision_rejected"] = vision_rewards[mask].detach()
    diag["rewards/vision_margins"] = (chosen_rewards - vision_rewards)[mask].detach()
    diag["adavip/weight_vision"] = weight_vision[mask].detach()
    diag["adavip/weight_language"] = 1.0 - weight_vision[mask].detach()
    return losses, diag
