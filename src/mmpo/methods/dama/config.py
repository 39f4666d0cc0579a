"""DAMA's options: the two halves, the recipe, and every choice of the model-aware step."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field

from ...checks import check_choice, check_number
from .controller import (
    RECIPES,
    AlphaModelForm,
    DamaRecipe,
    KeepRounding,
    LossMean,
    RunningMean,
    UpdateTime,
    dama_recipe,
)
from .factors import CombineMode, FilterMode, Normalizer


@dataclass
class DamaConfig:
    """DAMA: data- and model-aware per-record beta ("DAMA: Data- and Model-aware Alignment of Multi-modal
    LLMs", arXiv:2502.01943). D2PO = data only, MDPO = model only.

    In code the fields have no prefix; in YAML and on the command line each is ``dama_<field>``
    (:func:`mmpo.training.config.parse_config`).

    ``dama_recipe`` sets every choice of the model-aware step at once: ``authors`` (the released code,
    which produced the paper's tables) or ``paper`` (Eqs. 9-17 as printed). Each ``dama_*`` choice
    left unset (null) takes the recipe's value; set one to change only that (ablations).
    :meth:`resolved` gives the resolved choices."""

    PREFIX = "dama_"

    data: bool = field(default=False, metadata={
        "help": "Scale beta per record by the offline alpha_D stored in the records (mmpo score-sentences)."})
    model: bool = field(default=False, metadata={
        "help": "Scale beta per batch by alpha_M from the filtered reward gaps and their running mean."})
    recipe: str = field(default="authors", metadata={
        "help": "'authors': the authors' released algorithm (raw gaps, weighted random draw of int(0.8 N) centred "
                "at an EMA of the mean gap of all records, alpha_M = mean kept sigmoid(gap) / sigmoid(EMA), EMA "
                "updated after each batch's loss, loss averaged per process, beta >= 1e-3). 'paper': Eqs. 9-17 as "
                "printed (beta * gap / R_bar, the K = round(0.75 N) gaps closest to the batch mean, "
                "alpha_M = sigmoid(R_B) / sigmoid(R_bar), R_bar an EMA of R_B per optimizer step, one global mean)."})
    keep: float | None = field(default=None, metadata={
        "help": "Fraction K/N of the global batch the filter keeps (authors 0.8, paper 12/16 = 0.75)."})
    keep_rounding: str | None = field(default=None, metadata={
        "help": "K = int(keep * N) ('floor', authors) or round(keep * N) ('round', paper); at least 1."})
    filter: str | None = field(default=None, metadata={
        "help": "'sample': the authors' weighted random draw centred at the running mean; 'topk': the K gaps "
                "closest to the batch mean (paper); 'bottom'/'top' drop the lowest/highest; 'none' keeps all."})
    gap_uses_beta: bool | None = field(default=None, metadata={
        "help": "Reward gap = beta * (ratio_w - ratio_l) (paper, Eq. 9); false: the raw log-ratio margin (authors)."})
    alpha_model: str | None = field(default=None, metadata={
        "help": "'authors': alpha_M = mean over kept of sigmoid(gap) / sigmoid(running mean); 'paper': "
                "sigmoid(mean over kept of gap / R_bar) / sigmoid(R_bar) (Eqs. 10-13)."})
    running_mean: str | None = field(default=None, metadata={
        "help": "What the running mean averages: 'all_gaps', the mean gap of all N records (authors), or "
                "'kept_normalised', the paper's R_B (Eq. 15)."})
    update: str | None = field(default=None, metadata={
        "help": "When the running mean moves: after each batch's loss ('loss', authors) or after each optimizer "
                "step with the mean of its micro-batches ('step')."})
    loss_mean: str | None = field(default=None, metadata={
        "help": "'process': the kept losses averaged on each process, then over processes (authors); 'global': "
                "one mean over the kept records of the global batch."})
    beta_min: float | None = field(default=None, metadata={
        "help": "Lower clamp of the per-record beta (authors 1e-3; paper 0 = none)."})
    gamma: float = field(default=0.9, metadata={"help": "Momentum of the running mean (both sources: 0.9)."})
    combine: str = field(default="product", metadata={
        "help": "'product': alpha = alpha_D * alpha_M (paper); 'sum': (1 - rho) alpha_M + rho alpha_D (ablation)."})
    rho: float = field(default=0.5, metadata={"help": "Weight of alpha_D when dama_combine = sum."})
    normalizer: str | None = field(default=None, metadata={
        "help": "dama_alpha_model paper only: how the gaps are normalised by R_bar (docs/methods.md, 'DAMA "
                "numerics'). 'paper' (the recipe's): the unguarded R_i / R_bar, alpha_M up to e^88 (diverges on "
                "falling gaps). 'bounded': divide by R_bar held at least dama_scale_floor x the batch's mean |R_i| "
                "away from 0, alpha_M clamped to [1 / dama_alpha_model_max, dama_alpha_model_max]."})
    scale_floor: float = field(default=0.1, metadata={
        "help": "'bounded' only: the divisor's floor tau relative to the batch's mean |R_i|; bounds "
                "|R_B| and |R_bar| by (N / K) / tau."})
    alpha_model_max: float = field(default=10.0, metadata={
        "help": "'bounded' only: alpha_M is clamped to [1 / this, this]; >= 1 (1 = alpha_M always 1)."})

    def __post_init__(self):
        check_choice("dama_recipe", self.recipe, tuple(RECIPES))
        optional_choices = {  # field -> the Literal of its DamaRecipe attribute
            "keep_rounding": KeepRounding, "filter": FilterMode, "alpha_model": AlphaModelForm,
            "running_mean": RunningMean, "update": UpdateTime, "loss_mean": LossMean, "normalizer": Normalizer}
        for name, kind in optional_choices.items():
            if getattr(self, name) is not None:
                check_choice(f"dama_{name}", getattr(self, name), typing.get_args(kind))
        if self.gap_uses_beta is not None and not isinstance(self.gap_uses_beta, bool):
            raise ValueError(f"dama_gap_uses_beta must be true or false, not {self.gap_uses_beta!r}")
        check_choice("dama_combine", self.combine, typing.get_args(CombineMode))
        check_number("dama_keep", self.keep, low=0, high=1, low_open=True, optional=True)
        check_number("dama_beta_min", self.beta_min, low=0, optional=True)
        check_number("dama_gamma", self.gamma, low=0, high=1, high_open=True)
        check_number("dama_rho", self.rho, low=0, high=1)
        check_number("dama_scale_floor", self.scale_floor, low=0, low_open=True)
        check_number("dama_alpha_model_max", self.alpha_model_max, low=1)

    def resolved(self) -> DamaRecipe:
        """The resolved :class:`~mmpo.methods.dama.DamaRecipe`: ``recipe`` with every set field applied."""
        return dama_recipe(self.recipe, keep=self.keep, keep_rounding=self.keep_rounding,
                           filter=self.filter, gap_uses_beta=self.gap_uses_beta,
                           alpha_model=self.alpha_model, running_mean=self.running_mean,
                           update=self.update, loss_mean=self.loss_mean, beta_min=self.beta_min,
                           normalizer=self.normalizer, floor=self.scale_floor,
                           alpha_max=self.alpha_model_max, gamma=self.gamma, combine=self.combine,
                           rho=self.rho)

    @property
    def enabled(self) -> bool:
        return self.data or self.model
