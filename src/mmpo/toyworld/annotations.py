"""Offline stand-ins for a detector and a segmenter that read the synthetic world's ground truth.

AdaViP's construction (:mod:`mmpo.methods.adavip.vision_rejected`) detects the tagged objects and
segments them with vision models (:mod:`mmpo.methods.adavip.vision_hf_models`). On the synthetic
world the exact answers are known, so these backends, named as such, return them instead of any
model's guess: no checkpoint, no download, and every box and mask is right.

* :class:`AnnotationDetector` — the exact box of every object of the tagged shapes (score 1);
* :class:`AnnotationSegmenter` — the exact drawn pixels of the object a box covers;
* :class:`SceneIndex` — finds an image's scene by its pixels, since a stage receives only the image.

They implement :class:`~mmpo.methods.adavip.vision_steps.Detector` and
:class:`~mmpo.methods.adavip.vision_steps.Segmenter`, and work only on the world's unmodified
renderings (a photo, or a scene's image after any edit, is an error naming the image's size).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

from mmpo.io import image_key
from mmpo.methods.adavip.vision_steps import Box, Detection, box_iou
from mmpo.toyworld.scenes import Scene
from mmpo.types import PreferenceRecord

__all__ = ["AnnotationDetector", "AnnotationSegmenter", "SceneIndex"]


class SceneIndex:
    """The synthetic world's scenes, found by their rendered pixels.

    The annotation backends receive only the image (that is the stage protocol), so they find
    its scene here: the key is a hash of the RGB pixels (:func:`mmpo.io.image_key`), and PNG is
    lossless, so a record's image file finds the scene it was rendered from.
    """

    def __init__(self, scenes: Iterable[Scene]):
        self._scenes: dict[str, Scene] = {image_key(scene.render()): scene for scene in scenes}

    @classmethod
    def from_records(cls, records: Iterable[PreferenceRecord]) -> SceneIndex:
        """The scenes in the records' ``meta["scene"]`` (``Scene.to_dict()``, as JSON text or a dict),
        as ``mmpo.toyworld.data.ground_truth_pairs`` writes them; raises ``ValueError`` naming the
        first record without one."""
        scenes = []
        for index, record in enumerate(records):
            name = f"record {record.id!r}" if record.id is not None else f"record #{index}"
            value = record.meta.get("scene")
            if value is None:
                raise ValueError(f"{name} has no meta['scene']: the annotation backends read the synthetic "
                                 "world's ground truth, so every record needs its scene (as ground_truth_pairs "
                                 "writes it); use a model backend for other data")
            try:
                scenes.append(Scene.from_dict(json.loads(value) if isinstance(value, str) else value))
            except (TypeError, KeyError, ValueError) as exc:
                raise ValueError(f"{name}: meta['scene'] is not a Scene.to_dict() ({exc})") from exc
        return cls(scenes)

    def __len__(self) -> int:
        return len(self._scenes)

    def scene_for(self, image: Image.Image) -> Scene:
        """The scene ``image`` is a rendering of; ``KeyError`` when it is none of them."""
        key = image_key(image)
        if key not in self._scenes:
            raise KeyError(f"this {image.size[0]}x{image.size[1]} image is not the rendering of any of the "
                           f"{len(self._scenes)} indexed scenes (the annotation backends work only on the "
                           "synthetic world's unmodified images)")
        return self._scenes[key]


class AnnotationDetector:
    """Ground truth, not a model: the exact box of every object of the scene whose shape was tagged (score 1)."""

    def __init__(self, scenes: SceneIndex):
        self.scenes = scenes

    def detect(self, image: Image.Image, tags: Sequence[str]) -> list[Detection]:
        wanted = set(tags)
        scene = self.scenes.scene_for(image)
        return [Detection(obj.shape, tuple(float(v) for v in obj.box), 1.0)
                for obj in scene.objects if obj.shape in wanted]


class AnnotationSegmenter:
    """Ground truth, not a model: for each box, the exact drawn pixels of the scene's object that
    overlaps it most (IoU at least ``min_iou``), else an empty mask."""

    def __init__(self, scenes: SceneIndex, min_iou: float = 0.5):
        self.scenes = scenes
        self.min_iou = min_iou

    def segment(self, image: Image.Image, boxes: Sequence[Box]) -> list[np.ndarray]:
        scene = self.scenes.scene_for(image)
        masks = []
        for box in boxes:
            ious = [box_iou(tuple(map(float, obj.box)), tuple(map(float, box))) for obj in scene.objects]
            best = int(np.argmax(ious)) if ious else -1
            if best >= 0 and ious[best] >= self.min_iou:
                masks.append(scene.mask(best))  # (H, W) bool
            else:
                masks.append(np.zeros((image.size[1], image.size[0]), dtype=bool))  # (H, W)
        return masks
