"""The pure loss functions: per-record losses from log-ratio tensors, torch only, no reduction."""

from mmpo.losses.adavip import adavip_loss, adavip_plus_vision_loss
from mmpo.losses.aspo import aspo_chosen_logratio, aspo_scale
from mmpo.losses.dama import (
    DamaState,
    dama_alpha_from_delta,
    dama_combine,
    dama_data_alpha,
    dama_delta,
    dama_model_alpha,
)
from mmpo.losses.dpo import dpo_loss, dpo_rewards

__all__ = [
    "DamaState",
    "adavip_loss",
    "adavip_plus_vision_loss",
    "aspo_chosen_logratio",
    "aspo_scale",
    "dama_alpha_from_delta",
    "dama_combine",
    "dama_data_alpha",
    "dama_delta",
    "dama_model_alpha",
    "dpo_loss",
    "dpo_rewards",
]
