"""AdaViP: vision-rejected samples and an adaptive Plackett-Luce loss.

"AdaViP: Aligning Multi-modal LLMs via Adaptive Vision-enhanced Preference Optimization",
arXiv:2504.15619, sections 3.2-3.3. What it changes in DPO: a third sample per record, the chosen
text on a doctored image with a key object removed, and one Plackett-Luce loss over the language-
and the vision-rejected sample (Eq. 11). Where mmpo departs (``logsumexp`` for the ``exp`` of
rewards, records without a vision sample trained as DPO): docs/papers.md, "AdaViP".

Here: :class:`AdavipConfig` (the options), :mod:`~mmpo.methods.adavip.loss` (the maths, torch only); the vision-rejected pipeline,
imported by path so that training does not load it: :mod:`~mmpo.methods.adavip.vision_rejected`
(tag -> detect -> segment -> inpaint -> pick by CLIP), its step interfaces and light backends
:mod:`~mmpo.methods.adavip.vision_steps`, :mod:`~mmpo.methods.adavip.inpainting`, and the
Hugging Face detectors and segmenters :mod:`~mmpo.methods.adavip.vision_hf_models`.
"""

from .config import AdavipConfig
from .loss import adavip_plackett_luce_loss, adavip_plus_vision_loss

__all__ = ["AdavipConfig", "adavip_plackett_luce_loss", "adavip_plus_vision_loss"]
