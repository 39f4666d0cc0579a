"""AdaViP's options: the switch and which loss the vision sample enters."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...checks import check_choice


@dataclass
class AdavipConfig:
    """AdaViP: vision-rejected images and the adaptive Plackett-Luce loss ("AdaViP: Aligning Multi-modal
    LLMs via Adaptive Vision-enhanced Preference Optimization", arXiv:2504.15619, section 3.3, Eq. 11).

    In code the fields have no prefix; in YAML and on the command line each is ``adavip_<field>`` and the
    switch is ``adavip`` (:func:`mmpo.training.config.parse_config`)."""

    PREFIX = "adavip_"

    enabled: bool = field(default=False, metadata={"key": "adavip",
        "help": "Add a third sample per record, the chosen text on its rejected_image; records without one "
                "are trained with plain DPO."})
    loss: str = field(default="plackett_luce", metadata={
        "help": "'plackett_luce' (paper, Eq. 11) or 'plus_vision' (ablation: sum of two equal-weight DPO losses)."})

    def __post_init__(self):
        check_choice("adavip_loss", self.loss, ("plackett_luce", "plus_vision"))
