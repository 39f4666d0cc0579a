"""ASPO's options: the switch, the similarity/perplexity mix, the scale and the unit."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...checks import check_choice, check_number


@dataclass
class AspoConfig:
    """ASPO: sentence-level adaptive rewards on the chosen response ("ASPO: Adaptive Sentence-Level
    Preference Optimization for Fine-Grained Multimodal Reasoning", arXiv:2505.19100, section 3.2).

    In code the fields have no prefix; in YAML and on the command line each is ``aspo_<field>`` and the
    switch is ``aspo`` (:func:`mmpo.training.config.parse_config`)."""

    PREFIX = "aspo_"

    enabled: bool = field(default=False, metadata={
        "key": "aspo", "help": "Weight each chosen sentence's reward by CLIP similarity and the policy's own "
                               "perplexity."})
    alpha: float = field(default=0.5, metadata={
        "help": "w_i = alpha * S'_i + (1 - alpha) * PPL'_i. 1 = similarity only, 0 = perplexity only (Table 5). "
                "alpha > 0 needs chosen_sentence_scores in the records (mmpo score-sentences)."})
    normalizer: str = field(default="reward", metadata={
        "help": "Stop-gradient scale of the re-weighted sum: 'reward' = sg(R_c / R*_c) (paper, Eq. 12), "
                "'count' = sg(n / sum(1 + w_i)) (ablation)."})
    granularity: str = field(default="sentence", metadata={
        "help": "Unit that gets a weight: 'sentence' (paper), 'token' (each token, with its sentence's "
                "similarity), or 'response' (one unit: the weight is 0, so this is exactly DPO). Table 6."})

    def __post_init__(self):
        check_choice("aspo_normalizer", self.normalizer, ("reward", "count"))
        check_choice("aspo_granularity", self.granularity, ("sentence", "token", "response"))
        check_number("aspo_alpha", self.alpha, low=0, high=1)
