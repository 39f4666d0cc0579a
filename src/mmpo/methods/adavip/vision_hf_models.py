"""The transformers-backed detectors and segmenter of AdaViP's construction, each loaded from a local checkpoint.

* :class:`OwlV2Detector` — OWLv2 open-vocabulary detection (``Owlv2ForObjectDetection``);
* :class:`GroundingDinoDetector` — Grounding DINO, the paper's detector
  (``AutoModelForZeroShotObjectDetection``);
* :class:`SamSegmenter` — Segment Anything with box prompts, the paper's segmenter (``SamModel``).

They implement the step interfaces of :mod:`mmpo.methods.adavip.vision_steps`, which also holds the
box utilities and the light backends (the synthetic world's ground-truth stand-ins are in
:mod:`mmpo.toyworld.annotations`). Nothing is downloaded: ``path`` is a directory holding the
model and its processor (``save_pretrained`` output, e.g. a snapshot of
``google/owlv2-base-patch16-ensemble``, ``IDEA-Research/grounding-dino-tiny`` or ``facebook/sam-vit-base``),
loaded with ``local_files_only=True`` (:func:`mmpo.hub.pretrained_kwargs`); a mistyped path is a
``FileNotFoundError`` naming it, never a Hub look-up.
Without torchvision, transformers uses its PIL image processors; OWLv2's needs scipy to resize.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmpo.hub import load_model, loading, pretrained_kwargs
from mmpo.methods.adavip.vision_steps import Box, Detection, clip_box, non_max_suppression

__all__ = ["GroundingDinoDetector", "OwlV2Detector", "SamSegmenter"]


def _device(device: str | None) -> torch.device:
    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


class OwlV2Detector:
    """OWLv2 (Minderer et al. 2023): one text query per tag, ``template.format(tag)``.

    Boxes scoring above ``threshold`` are kept (transformers' ``post_process_grounded_object_detection``),
    clipped to the image, then thinned by per-label non-maximum suppression
    (:func:`~mmpo.methods.adavip.vision_steps.non_max_suppression`).

    Args:
        path: local checkpoint directory (``Owlv2ForObjectDetection`` + ``Owlv2Processor``).
        threshold: minimum box score (sigmoid of the query logit); OWLv2 scores are low, 0.1-0.3 is usual.
        template: the text query, with ``{}`` for the tag.
        nms_iou: IoU above which a lower-scoring box of the same label is dropped.
        max_per_label: at most this many boxes per tag (``None``: no limit).
        device: where to run; defaults to CUDA when available.
        allow_download: let a ``path`` that is not a local directory be downloaded as a Hub id
            (default: ``MMPO_ALLOW_DOWNLOAD``, else no: a missing directory is a ``FileNotFoundError``).
    """

    def __init__(self, path: str | Path, *, threshold: float = 0.2, template: str = "a photo of a {}",
                 nms_iou: float = 0.5, max_per_label: int | None = 3, device: str | None = None,
                 allow_download: bool | None = None):
        from transformers import AutoProcessor, Owlv2ForObjectDetection

        self.device = _device(device)
        local = pretrained_kwargs(path, what="OWLv2 detector", allow_download=allow_download)
        self.model = load_model(Owlv2ForObjectDetection, path, "OWLv2 detector", **local).to(self.device).eval()
        with loading(path, "OWLv2 detector processor"):
            self.processor = AutoProcessor.from_pretrained(path, **local)
        self.threshold, self.template = threshold, template
        self.nms_iou, self.max_per_label = nms_iou, max_per_label

    def detect(self, image: Image.Image, tags: Sequence[str]) -> list[Detection]:
        tags = list(tags)
        if not tags:
            return []
        width, height = image.size
        inputs = self.processor(text=[[self.template.format(t) for t in tags]], images=image, return_tensors="pt")
        with torch.no_grad():
            outputs = self.model(**inputs.to(self.device))
        result = self.processor.post_process_grounded_object_detection(
            outputs, threshold=self.threshold, target_sizes=[(height, width)])[0]
        detections = [Detection(tags[int(label)], clip_box(box, width, height), float(score))
                      for box, score, label in zip(result["boxes"].tolist(), result["scores"].tolist(),
                                                   result["labels"].tolist(), strict=True)]
        return non_max_suppression(detections, self.nms_iou, self.max_per_label)


class GroundingDinoDetector:
    """Grounding DINO (Liu et al. 2023), the AdaViP paper's detector.

    The tags are joined into one prompt, ``"cat. traffic light."`` (lower case, as the model was
    trained), ``tags_per_prompt`` at a time. Each of the model's queries gets, for every tag, the
    highest token probability over that tag's tokens; its label is the best tag and its score that
    probability. Queries scoring at least ``box_threshold`` are kept, clipped and thinned by
    per-label non-maximum suppression. (transformers' post-processing instead decodes the
    above-threshold tokens into a phrase; reading the tag's own tokens maps every box to exactly
    one tag, which is what the paper's per-tag detection, Eq. 6, asks for.)

    Args:
        path: local checkpoint directory (``AutoModelForZeroShotObjectDetection`` + ``AutoProcessor``).
        box_threshold: minimum score of a kept box (the model card's default: 0.35; 0.25-0.4 is usual).
        nms_iou: IoU above which a lower-scoring box of the same label is dropped.
        max_per_label: at most this many boxes per tag (``None``: no limit).
        tags_per_prompt: tags per forward pass (the text is limited to ``config.max_text_len`` tokens).
        device: where to run; defaults to CUDA when available.
        allow_download: let a ``path`` that is not a local directory be downloaded as a Hub id
            (default: ``MMPO_ALLOW_DOWNLOAD``, else no: a missing directory is a ``FileNotFoundError``).
    """

    def __init__(self, path: str | Path, *, box_threshold: float = 0.35, nms_iou: float = 0.5,
                 max_per_label: int | None = 3, tags_per_prompt: int = 16, device: str | None = None,
                 allow_download: bool | None = None):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.device = _device(device)
        local = pretrained_kwargs(path, what="Grounding DINO detector", allow_download=allow_download)
        self.model = load_model(AutoModelForZeroShotObjectDetection, path, "Grounding DINO detector", **local).to(self.device).eval()
        with loading(path, "Grounding DINO detector processor"):
            self.processor = AutoProcessor.from_pretrained(path, **local)
        self.box_threshold, self.nms_iou, self.max_per_label = box_threshold, nms_iou, max_per_label
        self.tags_per_prompt = max(int(tags_per_prompt), 1)

    def detect(self, image: Image.Image, tags: Sequence[str]) -> list[Detection]:
        tags = list(dict.fromkeys(tags))
        detections: list[Detection] = []
        for start in range(0, len(tags), self.tags_per_prompt):
            detections += self._detect_chunk(image, tags[start:start + self.tags_per_prompt])
        return non_max_suppression(detections, self.nms_iou, self.max_per_label)

    def _detect_chunk(self, image: Image.Image, tags: list[str]) -> list[Detection]:
        width, height = image.size
        text, spans = "", []  # spans: each tag's character range in the prompt
        for tag in tags:
            name = " ".join(tag.lower().split())
            spans.append((len(text), len(text) + len(name)))
            text += name + ". "
        text = text.rstrip()
        offsets = self.processor.tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
        max_len = self.model.config.max_text_len
        token_sets = [[i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start and i < max_len]
                      for start, end in spans]
        inputs = self.processor(images=image, text=text, return_tensors="pt")
        with torch.no_grad():
            outputs = self.model(**inputs.to(self.device))
        probs = outputs.logits[0].float().sigmoid().cpu()  # (Q, max_text_len); padding positions are 0
        per_tag = torch.stack([probs[:, ids].max(dim=-1).values if ids else torch.zeros(len(probs))
                               for ids in token_sets], dim=1)  # (Q, K)
        scores, labels = per_tag.max(dim=-1)  # (Q,), (Q,)
        cx, cy, w, h = outputs.pred_boxes[0].float().cpu().unbind(-1)  # (Q,) each, relative to the image
        corners = torch.stack([(cx - w / 2) * width, (cy - h / 2) * height,
                               (cx + w / 2) * width, (cy + h / 2) * height], dim=-1)  # (Q, 4)
        keep = (scores >= self.box_threshold).nonzero().flatten().tolist()
        return [Detection(tags[int(labels[q])], clip_box(corners[q].tolist(), width, height), float(scores[q]))
                for q in keep]


class SamSegmenter:
    """Segment Anything (Kirillov et al. 2023) with one box prompt per object, as in the paper.

    All boxes of an image go through one forward pass. With ``multimask=True`` SAM proposes three
    masks per box and the one with the highest predicted IoU is kept; the default single-mask
    output is SAM's recommended mode for unambiguous (box) prompts.

    Args:
        path: local checkpoint directory (``SamModel`` + ``SamProcessor``).
        multimask: ask for three masks per box and keep the best-scoring one.
        device: where to run; defaults to CUDA when available.
        allow_download: let a ``path`` that is not a local directory be downloaded as a Hub id
            (default: ``MMPO_ALLOW_DOWNLOAD``, else no: a missing directory is a ``FileNotFoundError``).
    """

    def __init__(self, path: str | Path, *, multimask: bool = False, device: str | None = None,
                 allow_download: bool | None = None):
        from transformers import AutoProcessor, SamModel

        self.device = _device(device)
        local = pretrained_kwargs(path, what="SAM segmenter", allow_download=allow_download)
        self.model = load_model(SamModel, path, "SAM segmenter", **local).to(self.device).eval()
        with loading(path, "SAM segmenter processor"):
            self.processor = AutoProcessor.from_pretrained(path, **local)
        self.multimask = multimask

    def segment(self, image: Image.Image, boxes: Sequence[Box]) -> list[np.ndarray]:
        if not boxes:
            return []
        inputs = self.processor(images=image, input_boxes=[[[float(v) for v in box] for box in boxes]],
                                return_tensors="pt")
        with torch.no_grad():
            outputs = self.model(pixel_values=inputs["pixel_values"].to(self.device),
                                 input_boxes=inputs["input_boxes"].to(self.device),
                                 multimask_output=self.multimask)
        masks = self.processor.image_processor.post_process_masks(
            outputs.pred_masks.cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu(),
        )[0]  # (N, M, H, W) bool: M = 3 with multimask, else 1
        best = outputs.iou_scores[0].argmax(dim=-1).cpu() if self.multimask else torch.zeros(len(boxes), dtype=torch.long)
        chosen = masks[torch.arange(len(boxes)), best]  # (N, H, W)
        return [m.numpy().astype(bool) for m in chosen]


#: The Hugging Face detectors by name, as the ``--detector`` / ``vision_detector`` options name them.
DETECTORS = {"owlv2": OwlV2Detector, "grounding-dino": GroundingDinoDetector}


def load_detector(kind: str, path: str | Path, *, device: str | None = None, threshold: float | None = None):
    """The ``kind`` detector (``"owlv2"`` or ``"grounding-dino"``) from a local checkpoint;
    ``threshold`` is its minimum box score (default the detector's own)."""
    if kind not in DETECTORS:
        raise ValueError(f"unknown detector {kind!r}: {' or '.join(DETECTORS)}")
    name = "threshold" if kind == "owlv2" else "box_threshold"
    return DETECTORS[kind](path, device=device, **({name: threshold} if threshold is not None else {}))
