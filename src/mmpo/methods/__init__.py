"""The preference methods, one place each: DPO and where the methods meet in :mod:`mmpo.methods.dpo`,
and one package per paper, :mod:`mmpo.methods.aspo`, :mod:`mmpo.methods.dama`,
:mod:`mmpo.methods.adavip`. Each package holds its paper's options, its maths (torch only), its
per-step state and the data code only that paper uses; its ``__init__`` says what the paper changes
and where mmpo departs from it (docs/papers.md lists every departure and the test that pins it).
What several papers share stays shared: sentence splitting and CLIP scoring (:mod:`mmpo.scoring`),
per-sentence scores for ASPO and DAMA (:mod:`mmpo.data.construct.sentence_scores`).
"""

from .dpo import dpo_loss, preference_loss

__all__ = ["dpo_loss", "preference_loss"]
