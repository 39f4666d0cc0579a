"""The pure loss functions and each method's training-step logic, torch only.

One module per paper: :mod:`~mmpo.losses.dpo`, :mod:`~mmpo.losses.aspo` (sentence weights and the
weighted chosen log-ratio, :func:`~mmpo.losses.aspo.aspo_step`), :mod:`~mmpo.losses.dama` (the
factors and :class:`~mmpo.losses.dama.DamaController`), :mod:`~mmpo.losses.adavip`; they meet in
:func:`~mmpo.losses.compose.preference_loss`. Losses are per record, not reduced.
"""

from mmpo.losses.adavip import adavip_plackett_luce_loss, adavip_plus_vision_loss
from mmpo.losses.aspo import aspo_chosen_logratio, aspo_scale, aspo_sentence_weights, aspo_step
from mmpo.losses.compose import preference_loss
from mmpo.losses.dama import (
    RECIPES,
    DamaController,
    DamaRecipe,
    DamaState,
    dama_alpha_from_delta,
    dama_combine,
    dama_data_alpha,
    dama_delta,
    dama_model_alpha,
    dama_model_alpha_authors,
    dama_recipe,
)
from mmpo.losses.dpo import dpo_loss

__all__ = [
    "RECIPES",
    "DamaController",
    "DamaRecipe",
    "DamaState",
    "adavip_plackett_luce_loss",
    "adavip_plus_vision_loss",
    "aspo_chosen_logratio",
    "aspo_scale",
    "aspo_sentence_weights",
    "aspo_step",
    "dama_alpha_from_delta",
    "dama_combine",
    "dama_data_alpha",
    "dama_delta",
    "dama_model_alpha",
    "dama_model_alpha_authors",
    "dama_recipe",
    "dpo_loss",
    "preference_loss",
]
