"""ASPO: sentence-level adaptive rewards on the chosen response.

"ASPO: Adaptive Sentence-Level Preference Optimization for Fine-Grained Multimodal Reasoning",
arXiv:2505.19100, section 3.2. What it changes in DPO: each sentence of the chosen response gets a
weight from its CLIP image-text similarity and the policy's own perplexity, and the chosen
log-ratio is re-weighted by ``1 + w_i`` per sentence and rescaled back onto DPO's scale
(:func:`aspo_step`). Where mmpo departs (the stop-gradient scale, the ``0/0`` fallback, whose
perplexity): docs/papers.md, "ASPO".

Here: :class:`AspoConfig` (the options), :mod:`~mmpo.methods.aspo.loss` (the maths), :mod:`~mmpo.methods.aspo.units` (the chosen
response's units, batched by the collator). The sentences' CLIP scores come from
:mod:`mmpo.data.construct.sentence_scores` (shared with DAMA).
"""

from .config import AspoConfig
from .loss import (
    aspo_chosen_logratio,
    aspo_scale,
    aspo_sentence_weights,
    aspo_sentence_weights_batched,
    aspo_step,
    minmax,
)

__all__ = [
    "AspoConfig",
    "aspo_chosen_logratio",
    "aspo_scale",
    "aspo_sentence_weights",
    "aspo_sentence_weights_batched",
    "aspo_step",
    "minmax",
]
