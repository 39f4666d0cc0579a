"""DAMA: a per-record beta from data hardness and model responsiveness.

"DAMA: Data- and Model-aware Alignment of Multi-modal LLMs", arXiv:2502.01943, sections 3.1-3.3,
and the authors' released training code, which produced the paper's tables. What it changes in
DPO: ``beta_C = beta * alpha`` per record, ``alpha`` combining an offline data factor ``alpha_D``
(how clearly CLIP separates chosen from rejected) and an online model factor ``alpha_M`` (the
batch's filtered reward gaps against their running mean). D2PO is the data half, MDPO the model half.
Two recipes: ``"authors"`` (default, the released algorithm) and ``"paper"`` (the equations as
printed); docs/methods.md, "DAMA", restates both and docs/papers.md, "DAMA", lists every difference.

Here: :class:`DamaConfig` (the options), :mod:`~mmpo.methods.dama.factors` (the maths, torch only) and
:mod:`~mmpo.methods.dama.controller` (the recipes, the running mean kept in checkpoints, and
:class:`DamaController`, the training step's object). ``alpha_D`` is written into the records by
:mod:`mmpo.data.construct.sentence_scores` (shared with ASPO).
"""

from .config import DamaConfig
from .controller import (
    RECIPES,
    BatchGather,
    DamaController,
    DamaRecipe,
    DamaState,
    DamaStateMismatch,
    SingleProcess,
    dama_recipe,
)
from .factors import (
    ALPHA_MODEL_MAX,
    DATA_ALPHA_RANGE,
    R_FLOOR,
    dama_alpha_from_delta,
    dama_combine,
    dama_data_alpha,
    dama_delta,
    dama_model_alpha,
    dama_model_alpha_authors,
)

__all__ = [
    "ALPHA_MODEL_MAX",
    "DATA_ALPHA_RANGE",
    "RECIPES",
    "R_FLOOR",
    "BatchGather",
    "DamaConfig",
    "DamaController",
    "DamaRecipe",
    "DamaState",
    "DamaStateMismatch",
    "SingleProcess",
    "dama_alpha_from_delta",
    "dama_combine",
    "dama_data_alpha",
    "dama_delta",
    "dama_model_alpha",
    "dama_model_alpha_authors",
    "dama_recipe",
]
