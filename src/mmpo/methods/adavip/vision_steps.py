"""The steps tag -> detect -> segment of AdaViP's vision-rejected images: interfaces, box utilities, light backends.

AdaViP ("AdaViP: Aligning Multi-modal LLMs via Adaptive Vision-enhanced Preference Optimization",
arXiv:2504.15619, section 3.2, Eqs. 5-8) cascades four vision models to remove one object at a time
from the preferred image ``I_w``:

1. tag the image (paper: Recognize Anything) -> category names ``t_1..t_n``  (:class:`Tagger`);
2. detect each tag (paper: Grounding DINO) -> boxes ``b_i``                   (:class:`Detector`);
3. segment each box (paper: SAM) -> masks ``m_i``                             (:class:`Segmenter`);
4. inpaint each mask (paper: Big-LaMa) -> candidates ``c_i``   (:mod:`mmpo.methods.adavip.inpainting`).

This module holds the interfaces of steps 1-3 (:class:`Tagger`, :class:`Detector`,
:class:`Segmenter`, and :class:`Detection`), the box utilities every backend shares
(:func:`box_iou`, :func:`clip_box`, :func:`non_max_suppression`) and the light backends, which load
no detector or segmenter checkpoint. The transformers-backed detectors and segmenter (OWLv2,
Grounding DINO, SAM) are in :mod:`mmpo.methods.adavip.vision_hf_models`; the synthetic world's
ground-truth stand-ins are in :mod:`mmpo.toyworld.annotations`.

* :class:`NounTagger` — the object nouns of the chosen response, from a vocabulary (the
  weight-free stand-in for RAM that ``docs/methods.md``, AdaViP section, asks for);
* :class:`CLIPTagger` — zero-shot CLIP over a vocabulary (needs a CLIP checkpoint, through any
  :class:`~mmpo.scoring.clip.ImageTextScorer`);
* :class:`BoxSegmenter` — the detected box, filled.

Boxes are ``(x0, y0, x1, y1)`` in pixels of the image, edges exclusive: pixel column ``i``
spans ``[i, i + 1)``, so a box covering columns 3..9 has ``x0 = 3, x1 = 10`` (the synthetic
world's convention, and the continuous corner format transformers' detectors return).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from mmpo.scoring.clip import ImageTextScorer

__all__ = [
    "Box",
    "BoxSegmenter",
    "CLIPTagger",
    "Detection",
    "Detector",
    "NounTagger",
    "Segmenter",
    "Tagger",
    "box_iou",
    "clip_box",
    "non_max_suppression",
    "noun_forms",
]

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Detection:
    """One detected object: its tag, its box ``(x0, y0, x1, y1)`` (pixels, edges exclusive), its score."""

    label: str
    box: Box
    score: float


# ---------------------------------------------------------------------------------------------
# Protocols


@runtime_checkable
class Tagger(Protocol):
    """Stage 1, Eq. 5: the object categories to try removing from an image."""

    def tag(self, image: Image.Image, response: str) -> list[str]:
        """Category names, without duplicates, for the RGB ``image`` whose chosen response is ``response``."""
        ...


@runtime_checkable
class Detector(Protocol):
    """Stage 2, Eq. 6: boxes of the tagged categories."""

    def detect(self, image: Image.Image, tags: Sequence[str]) -> list[Detection]:
        """Detections whose ``label`` is one of ``tags``; any number per tag (zero included)."""
        ...


@runtime_checkable
class Segmenter(Protocol):
    """Stage 3, Eq. 7: one mask per box."""

    def segment(self, image: Image.Image, boxes: Sequence[Box]) -> list[np.ndarray]:
        """One ``(H, W)`` boolean mask per box, in order (an empty mask where nothing was found)."""
        ...


# ---------------------------------------------------------------------------------------------
# Taggers

_IRREGULAR_PLURALS: dict[str, str] = {
    "person": "people", "man": "men", "woman": "women", "child": "children", "mouse": "mice",
    "foot": "feet", "tooth": "teeth", "goose": "geese", "ox": "oxen", "die": "dice",
}
_SAME_PLURAL = frozenset({"sheep", "fish", "deer", "aircraft", "series", "species", "glasses", "scissors"})


def noun_forms(noun: str) -> set[str]:
    """The surface forms of a (possibly multi-word) noun: itself and its plurals, lower case.

    Only the last word is inflected (``"traffic light"`` -> ``"traffic lights"``). English
    plurals are irregular, so where a rule is ambiguous both forms are accepted
    (``"photo"`` -> ``"photos"``, ``"photoes"``; ``"leaf"`` -> ``"leafs"``, ``"leaves"``); a false
    form costs nothing, since it only matches if someone writes it.
    """
    words = noun.lower().split()
    if not words:
        raise ValueError("empty noun")
    *head, last = words
    forms = {last}
    if last in _IRREGULAR_PLURALS:
        forms.add(_IRREGULAR_PLURALS[last])
    elif last not in _SAME_PLURAL:
        if last.endswith(("s", "x", "z", "ch", "sh")):
            forms.add(last + "es")
        elif last.endswith("y") and len(last) > 1 and last[-2] not in "aeiou":
            forms.add(last[:-1] + "ies")
        else:
            forms.add(last + "s")
            if last.endswith("o"):
                forms.add(last + "es")
            if last.endswith("fe"):
                forms.add(last[:-2] + "ves")
            elif last.endswith("f"):
                forms.add(last[:-1] + "ves")
    return {" ".join([*head, form]) for form in forms}


class NounTagger:
    """Weight-free tagger: the vocabulary names the chosen response mentions, in order of first mention.

    Where the paper tags the *image* with RAM, this reads the *chosen response*: the objects it
    names are the ones whose removal can contradict it, which is what the selector looks for.
    Matching is case-insensitive, on whole words, plural-aware (:func:`noun_forms`), accepts a
    hyphen or any whitespace between the words of a multi-word name, and prefers the longest name
    (``"traffic light"`` over ``"light"``). It does not understand negation: "there is no dog"
    tags ``dog`` (the detector then usually finds none and the record is skipped).

    Args:
        vocabulary: the category names (the synthetic world: ``mmpo.toyworld.scenes.SHAPES``;
            real data: e.g. the COCO or RAM category list).
        aliases: other names for a category, ``{"sofa": "couch"}``; plurals are derived for them too.
    """

    def __init__(self, vocabulary: Iterable[str], aliases: Mapping[str, str] | None = None):
        self.vocabulary = list(dict.fromkeys(" ".join(v.lower().split()) for v in vocabulary))
        if not self.vocabulary or any(not v for v in self.vocabulary):
            raise ValueError("NounTagger needs a non-empty vocabulary of non-empty names")
        canonical: dict[str, str] = {}  # surface form -> vocabulary name
        for alias, name in (aliases or {}).items():
            name = " ".join(name.lower().split())
            if name not in self.vocabulary:
                raise ValueError(f"alias {alias!r} points to {name!r}, which is not in the vocabulary")
            canonical.update(dict.fromkeys(map(_words, noun_forms(alias)), name))
        for name in self.vocabulary:  # a vocabulary name always wins over an alias spelled the same
            canonical.update(dict.fromkeys(map(_words, noun_forms(name)), name))
        self._canonical = canonical
        # longest first, so the alternation prefers "traffic lights" to "traffic light" to "light"
        forms = sorted(canonical, key=len, reverse=True)
        pattern = "|".join(r"[\s-]+".join(map(re.escape, form.split())) for form in forms)
        self._pattern = re.compile(rf"(?<![\w-])(?:{pattern})(?![\w-])", re.IGNORECASE)

    def tag(self, image: Image.Image, response: str) -> list[str]:
        names = (self._canonical[_words(m.group(0))] for m in self._pattern.finditer(response))
        return list(dict.fromkeys(names))


def _words(text: str) -> str:
    """Lower case, hyphens and whitespace runs as single spaces: ``"T-Shirt"`` -> ``"t shirt"``."""
    return " ".join(w for w in re.split(r"[\s-]+", text.lower()) if w)


class CLIPTagger:
    """Zero-shot CLIP tagging: the vocabulary names whose prompt is most similar to the image.

    Each name becomes ``template.format(name)`` and is scored against the image with
    ``scorer.score_matrix`` (cosine similarity); the names scoring at least ``threshold`` are
    kept, best first, at most ``top_k`` of them. Raw cosine similarities depend on the CLIP model
    (OpenAI CLIP ViT-L/14 puts matching prompts around 0.25-0.3), so tune ``threshold`` per model;
    ``None`` keeps the ``top_k`` best whatever their score. The response is not used.

    Args:
        scorer: any :class:`~mmpo.scoring.clip.ImageTextScorer`, e.g. ``CLIPScorer(path)``.
        vocabulary: the category names to choose from.
        template: the prompt, with ``{}`` where the name goes.
        threshold: minimum cosine similarity, or ``None``.
        top_k: most names returned, or ``None`` for all that pass ``threshold``.
    """

    def __init__(self, scorer: ImageTextScorer, vocabulary: Iterable[str], *,
                 template: str = "a photo of a {}.", threshold: float | None = None, top_k: int | None = 5):
        self.scorer = scorer
        self.vocabulary = list(dict.fromkeys(vocabulary))
        if not self.vocabulary:
            raise ValueError("CLIPTagger needs a non-empty vocabulary")
        if "{}" not in template:
            raise ValueError("the template needs a '{}' placeholder for the name")
        if threshold is None and top_k is None:
            raise ValueError("give a threshold, a top_k, or both")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.template, self.threshold, self.top_k = template, threshold, top_k
        self.prompts = [template.format(name) for name in self.vocabulary]

    def tag(self, image: Image.Image, response: str) -> list[str]:
        scores = self.scorer.score_matrix([image], self.prompts)[0].float()  # (V,)
        order = scores.argsort(descending=True).tolist()
        if self.threshold is not None:
            order = [i for i in order if float(scores[i]) >= self.threshold]
        if self.top_k is not None:
            order = order[: self.top_k]
        return [self.vocabulary[i] for i in order]


# ---------------------------------------------------------------------------------------------
# Box helpers


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (0 when either is empty)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def clip_box(box: Sequence[float], width: int, height: int) -> Box:
    """The box clipped to a ``width`` x ``height`` image, as floats."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return (min(max(x0, 0.0), width), min(max(y0, 0.0), height),
            min(max(x1, 0.0), width), min(max(y1, 0.0), height))


def non_max_suppression(detections: Iterable[Detection], iou_threshold: float = 0.5,
                        max_per_label: int | None = None, min_side: float = 1.0) -> list[Detection]:
    """Greedy per-label non-maximum suppression, best score first.

    A detection is dropped when its box is thinner than ``min_side`` pixels, overlaps a kept box
    of the same label by IoU above ``iou_threshold``, or its label already has ``max_per_label``.
    """
    kept: list[Detection] = []
    count: dict[str, int] = {}
    for det in sorted(detections, key=lambda d: -d.score):
        x0, y0, x1, y1 = det.box
        if x1 - x0 < min_side or y1 - y0 < min_side:
            continue
        if max_per_label is not None and count.get(det.label, 0) >= max_per_label:
            continue
        if any(k.label == det.label and box_iou(k.box, det.box) > iou_threshold for k in kept):
            continue
        kept.append(det)
        count[det.label] = count.get(det.label, 0) + 1
    return kept


def _box_pixels(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """The integer pixel range ``[c0, c1) x [r0, r1)`` a box touches, clipped to the image."""
    x0, y0, x1, y1 = clip_box(box, width, height)
    return int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))


class BoxSegmenter:
    """Weight-free segmenter: every pixel the box touches. Removes some background with the object."""

    def segment(self, image: Image.Image, boxes: Sequence[Box]) -> list[np.ndarray]:
        width, height = image.size
        masks = []
        for box in boxes:
            mask = np.zeros((height, width), dtype=bool)  # (H, W)
            c0, r0, c1, r1 = _box_pixels(box, width, height)
            mask[r0:r1, c0:c1] = True
            masks.append(mask)
        return masks


def read_vocabulary(path: str | os.PathLike) -> list[str]:
    """Category names from a text file, one per line (blank lines and ``#`` comments skipped).

    Raises:
        ValueError: the file lists no name, naming it.
    """
    names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    names = [name for name in names if name and not name.startswith("#")]
    if not names:
        raise ValueError(f"vocabulary file {path} lists no names")
    return names
