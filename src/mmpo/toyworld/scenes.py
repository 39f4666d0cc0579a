"""The synthetic world: scenes of coloured shapes with exact annotations.

A scene holds 1 to 4 objects, at most one per image quadrant. Each object has a shape (the
*category*, what CHAIR counts), a colour, a size and a position. Because every annotation is
known, hallucination metrics on this world are exact.

The world can *cause* hallucination in a model trained on it:

* co-occurrence priors: each shape has a partner (circle-star, square-cross, triangle-diamond)
  that is added to the scene with probability ``cooccurrence_prob`` when there is room;
* attribute priors: each shape has a usual colour, used with probability ``attribute_prob``;
* noisy captions: with probability ``caption_noise_prob`` a training caption gains one sentence
  about an absent partner object.

A held-out split built with :meth:`WorldConfig.held_out` breaks all three (no partner
preference, uniform colours, clean captions), so a model that learnt the priors hallucinates there.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES: tuple[str, ...] = ("small", "large")
QUADRANTS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")

RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (140, 50, 180),
    "orange": (240, 140, 30),
}
BACKGROUND = (235, 235, 235)

#: Shapes that usually appear together (symmetric).
PARTNERS: dict[str, str] = {
    "circle": "star", "star": "circle",
    "square": "cross", "cross": "square",
    "triangle": "diamond", "diamond": "triangle",
}
#: The usual colour of each shape.
USUAL_COLOUR: dict[str, str] = {
    "circle": "red", "square": "blue", "triangle": "green",
    "diamond": "yellow", "star": "orange", "cross": "purple",
}

DESCRIBE_PROMPT = "describe the image ."


@dataclass(frozen=True)
class SceneObject:
    """One object. ``box`` is ``(x0, y0, x1, y1)`` in pixels, end-exclusive."""

    shape: str
    colour: str
    size: str
    quadrant: str
    box: tuple[int, int, int, int]

    def sentence(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} is at the {self.quadrant} ."


@dataclass(frozen=True)
class Scene:
    """A rendered-on-demand scene: its objects (in quadrant order) and its canvas size."""

    id: str
    objects: tuple[SceneObject, ...]
    image_size: int = 64

    @property
    def shapes(self) -> frozenset[str]:
        """The object categories present (what CHAIR compares mentions against)."""
        return frozenset(o.shape for o in self.objects)

    def render(self, without: int | None = None) -> Image.Image:
        """Draw the scene; ``without`` leaves out the object at that index."""
        image = Image.new("RGB", (self.image_size, self.image_size), BACKGROUND)
        draw = ImageDraw.Draw(image)
        for i, obj in enumerate(self.objects):
            if i != without:
                _draw_shape(draw, obj.shape, obj.box, RGB[obj.colour])
        return image

    def mask(self, index: int) -> np.ndarray:
        """Boolean ``(H, W)`` mask of object ``index`` (its exact drawn pixels)."""
        image = Image.new("L", (self.image_size, self.image_size), 0)
        obj = self.objects[index]
        _draw_shape(ImageDraw.Draw(image), obj.shape, obj.box, 255)
        return np.asarray(image) > 0

    def description(self) -> str:
        """The exact, hallucination-free description: one sentence per object."""
        return " ".join(o.sentence() for o in self.objects)

    def to_dict(self) -> dict:
        return {"id": self.id, "image_size": self.image_size, "objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        objects = tuple(SceneObject(**{**o, "box": tuple(o["box"])}) for o in d["objects"])
        return cls(id=d["id"], objects=objects, image_size=d.get("image_size", 64))


@dataclass(frozen=True)
class WorldConfig:
    """How scenes and their training captions are sampled. All randomness flows from ``seed``."""

    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 4
    cooccurrence_prob: float = 0.8
    attribute_prob: float = 0.3
    caption_noise_prob: float = 0.3
    seed: int = 0
    partners: dict[str, str] = field(default_factory=lambda: dict(PARTNERS))
    usual_colour: dict[str, str] = field(default_factory=lambda: dict(USUAL_COLOUR))

    def held_out(self, seed: int | None = None) -> WorldConfig:
        """The same world with every prior broken: the split that exposes hallucination."""
        return replace(self, cooccurrence_prob=0.0, attribute_prob=0.0, caption_noise_prob=0.0,
                       seed=self.seed + 1_000_003 if seed is None else seed)


def sample_scenes(config: WorldConfig, n: int, prefix: str = "scene") -> list[Scene]:
    """Sample ``n`` scenes; the same config and ``n`` always give the same scenes."""
    rng = random.Random(config.seed)
    return [_sample_scene(config, rng, f"{prefix}-{i:06d}") for i in range(n)]


def noisy_caption(scene: Scene, config: WorldConfig, rng: random.Random) -> str:
    """A training caption: the exact description, plus (with ``caption_noise_prob``) one sentence
    about an absent partner of a present object, placed in a free quadrant."""
    caption = scene.description()
    if rng.random() >= config.caption_noise_prob:
        return caption
    missing = sorted({config.partners[s] for s in scene.shapes if config.partners.get(s)} - scene.shapes)
    free = [q for q in QUADRANTS if q not in {o.quadrant for o in scene.objects}]
    if not missing or not free:
        return caption
    shape = rng.choice(missing)
    ghost = SceneObject(shape, _colour_for(shape, config, rng), rng.choice(SIZES), rng.choice(free), (0, 0, 0, 0))
    return caption + " " + ghost.sentence()


def _sample_scene(config: WorldConfig, rng: random.Random, scene_id: str) -> Scene:
    n = rng.randint(config.min_objects, min(config.max_objects, len(QUADRANTS)))
    shapes: list[str] = []
    while len(shapes) < n:
        wanted = [config.partners[s] for s in shapes if config.partners.get(s) and config.partners[s] not in shapes]
        if wanted and rng.random() < config.cooccurrence_prob:
            shapes.append(wanted[0])
        else:
            shapes.append(rng.choice(SHAPES))
    quadrants = sorted(rng.sample(range(len(QUADRANTS)), n))
    rng.shuffle(shapes)
    objects = []
    for shape, q in zip(shapes, quadrants, strict=False):
        size = rng.choice(SIZES)
        objects.append(SceneObject(shape, _colour_for(shape, config, rng), size, QUADRANTS[q],
                                   _box(q, size, config.image_size, rng)))
    return Scene(scene_id, tuple(objects), config.image_size)


def _colour_for(shape: str, config: WorldConfig, rng: random.Random) -> str:
    if shape in config.usual_colour and rng.random() < config.attribute_prob:
        return config.usual_colour[shape]
    return rng.choice(COLOURS)


def _box(quadrant: int, size: str, image_size: int, rng: random.Random) -> tuple[int, int, int, int]:
    half = image_size // 2
    side = round(half * (0.9 if size == "large" else 0.65))
    slack = half - side - 2
    x0 = (quadrant % 2) * half + 1 + rng.randint(0, max(slack, 0))
    y0 = (quadrant // 2) * half + 1 + rng.randint(0, max(slack, 0))
    return (x0, y0, x0 + side, y0 + side)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy = x0 + w / 2, y0 + h / 2
    if shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1 - 1, cy), (cx, y1 - 1), (x0, cy)], fill=fill)
    elif shape == "star":
        points = []
        for k in range(10):
            r = (w / 2) if k % 2 == 0 else (w / 5)
            a = np.pi / 2 + k * np.pi / 5
            points.append((cx + r * np.cos(a), cy - r * np.sin(a)))
        draw.polygon(points, fill=fill)
    elif shape == "cross":
        t = max(w // 3, 1)
        draw.rectangle((x0, cy - t / 2, x1 - 1, cy + t / 2), fill=fill)
        draw.rectangle((cx - t / 2, y0, cx + t / 2, y1 - 1), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
