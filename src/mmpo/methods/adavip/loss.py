"""AdaViP: one Plackett-Luce loss over a language- and a vision-rejected sample.

"AdaViP: Aligning Multi-modal LLMs via Adaptive Vision-enhanced Preference Optimization",
arXiv:2504.15619, section 3.3. The vision-rejected images come from
:mod:`mmpo.methods.adavip.vision_rejected`; :func:`mmpo.methods.dpo.preference_loss` picks the
loss by the ``adavip_loss`` setting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _vision_mask(vision_mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if vision_mask is None:
        return torch.ones_like(like, dtype=torch.bool)
    return vision_mask.to(device=like.device, dtype=torch.bool)


def adavip_plackett_luce_loss(
    chosen_rewards: torch.Tensor,
    lang_rejected_rewards: torch.Tensor,
    vision_rejected_rewards: torch.Tensor,
    vision_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive vision-and-language preference loss, AdaViP Eq. 11, with Eq. 13's weight.

    ``L = -log sigmoid(-log sum_{j in {+-, -+}} exp(r(D^j) - r(D++)))
        = log(1 + exp(r(D+-) - r(D++)) + exp(r(D-+) - r(D++)))``,
    i.e. ``-log softmax`` of the chosen sample among the three (Plackett-Luce top-1, Eq. 10).
    Intuition: the chosen (image, response) must beat both the wrong response on the right image
    and the right response on a doctored image, and the harder rejected sample gets more push.

    The gradient (Eq. 12) lowers each rejected reward with weight
    ``sigmoid(log sum_j exp(r_j - r_++)) * omega_j``, where (Eq. 13)
    ``omega_{+-} = sigmoid(r(D+-) - r(D-+))`` and ``omega_{-+} = sigmoid(r(D-+) - r(D+-))``:
    the softmax shares of the two rejected terms. ``weight_vision`` is ``omega_{-+}``, log it as
    ``adavip/weight_vision`` and ``1 - weight_vision`` as ``adavip/weight_language``
    (docs/methods.md, "AdaViP").

    Where a record has no vision-rejected sample (``vision_mask`` false) its loss is exactly
    DPO's, ``softplus(r(D+-) - r(D++))``, and its ``weight_vision`` is 0; the vision reward there is
    ignored and may hold any finite placeholder.

    Args:
        chosen_rewards: ``(B,)`` ``r(D++) = beta * ratio(y_w | I_w)``.
        lang_rejected_rewards: ``(B,)`` ``r(D+-) = beta * ratio(y_l | I_w)``.
        vision_rejected_rewards: ``(B,)`` ``r(D-+) = beta * ratio(y_w | I_l)``.
        vision_mask: optional ``(B,)`` bool, true where the record has a vision-rejected image.

    Returns:
        ``(losses, weight_vision)``: ``(B,)`` per-record losses (log-sum-exp, finite for finite
        inputs) and ``(B,)`` detached ``omega_{-+}``.
    """
    has_vision = _vision_mask(vision_mask, chosen_rewards)  # (B,)
    lang_gap = lang_rejected_rewards - chosen_rewards  # (B,)
    # Masked records get a 0 placeholder so no garbage reaches logsumexp (or its backward).
    vision_gap = torch.where(
        has_vision, vision_rejected_rewards - chosen_rewards, torch.zeros_like(lang_gap)
    )  # (B,)

    terms = torch.stack([torch.zeros_like(lang_gap), lang_gap, vision_gap], dim=-1)  # (B, 3)
    plackett_luce = torch.logsumexp(terms, dim=-1)  # (B,)
    losses = torch.where(has_vision, plackett_luce, F.softplus(lang_gap))  # (B,)

    vision_vs_lang = (vision_gap - lang_gap).detach()  # (B,) r(D-+) - r(D+-)
    weight_vision = torch.where(has_vision, torch.sigmoid(vision_vs_lang), torch.zeros_like(vision_vs_lang))
    return losses, weight_vision


def adavip_plus_vision_loss(
    chosen_rewards: torch.Tensor,
    lang_rejected_rewards: torch.Tensor,
    vision_rejected_rewards: torch.Tensor,
    vision_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The "+Vision" ablation of AdaViP (Table 2): two independent, equally weighted DPO losses.

    ``L = -log sigmoid(r(D++) - r(D+-)) - log sigmoid(r(D++) - r(D-+))``.
    Intuition: the baseline AdaViP's single Plackett-Luce loss is compared against.

    Args:
        chosen_rewards: ``(B,)`` ``r(D++)``.
        lang_rejected_rewards: ``(B,)`` ``r(D+-)``.
        vision_rejected_rewards: ``(B,)`` ``r(D-+)``.
        vision_mask: optional ``(B,)`` bool; where false only the language pair's DPO term counts.

    Returns:
        ``(B,)`` per-record losses.
    """
    has_vision = _vision_mask(vision_mask, chosen_rewards)  # (B,)
    lang_term = F.softplus(lang_rejected_rewards - chosen_rewards)  # (B,)
    vision_gap = torch.where(
        has_vision, vision_rejected_rewards - chosen_rewards, torch.zeros_like(lang_term)
    )  # (B,)
    vision_term = torch.where(has_vision, F.softplus(vision_gap), torch.zeros_like(lang_term))  # (B,)
    return lang_term + vision_term
