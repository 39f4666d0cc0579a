"""The synthetic world's CLIP: a tiny ``CLIPModel`` trained contrastively on scenes and sentences.

It plays the part OpenAI CLIP plays in the papers (ASPO's sentence similarity, DAMA's and AdaViP's
sub-sentence scores), and it is saved as an ordinary CLIP checkpoint directory — ``config.json``,
safetensors weights, a ``CLIPProcessor`` with ``CLIPImageProcessorPil`` and the world's tokenizer —
so :class:`mmpo.scoring.clip.CLIPScorer` loads it exactly like a real one.

Two facts shape the tokenizer (docs: field notes): CLIP's text model pools the hidden state at
the first EOS token, except that an EOS id of 2 switches it to a legacy "highest token id"
pooling. The world's tokenizer has BOS = 2 and EOS = 3, and a post-processor wraps every text as
``<s> ... </s>`` so EOS is always there.

Training (:func:`train_tiny_clip`) is symmetric InfoNCE (Radford et al. 2021) over a batch of
rendered scenes, each paired with either one of its object sentences or its full description.
Departures from plain CLIP training, all enabled by the world's exact annotations or by its size:

* the training scenes come from the world with every prior broken (``WorldConfig().held_out``
  with its own seed, so not the evaluation scenes): the CLIP is the *judge* of hallucination and
  must not learn the co-occurrence and usual-colour shortcuts the VLM is meant to hallucinate from;
* multi-positive targets: a text that is true of several images in the batch (the same object
  sentence can describe two scenes) counts as a positive for all of them, instead of a false
  negative;
* hard negatives (``hard_negatives``): each batch adds one corrupted text per scene — an object
  with its shape (half the time, to a shape absent from the scene), colour, size or position
  changed, or a description with an absent object inserted or one object corrupted — which are
  negatives for every image. They teach the fine-grained distinctions the preference methods rely
  on (a hallucinated sentence must score below a true one);
* the temperature starts at 1/50 instead of CLIP's 1/0.07 (the learnt scale would take most of a
  short run to grow, and a sharper softmax weighs the hard negatives more).

Measured on 2 busy, shared CPU cores (1 torch thread), 300 held-out scenes: shape-swap accuracy
(see :func:`clip_sentence_accuracy`) 0.91 and absent-object insertion 0.98 with the defaults
(1,000 steps at batch 128: 540 s, ~0.54 s/step); with similar settings, ~0.70 after 200 steps and
~0.75 after 400 (insertion already 0.95-0.98). Shape recognition is what takes the steps: a tiny
ViT learns shapes slowly. :func:`ensure_tiny_clip` caches the result.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..io import building_directory, ensure_directory
from .scenes import COLOURS, QUADRANTS, SHAPES, SIZES, Scene, SceneObject, WorldConfig, sample_scenes

__all__ = [
    "TinyCLIPConfig",
    "TinyCLIPRecipe",
    "build_clip_processor",
    "build_clip_tokenizer",
    "build_tiny_clip",
    "clip_sentence_accuracy",
    "ensure_tiny_clip",
    "train_tiny_clip",
]


@dataclass(frozen=True)
class TinyCLIPConfig:
    """Sizes of the tiny CLIP (about 0.6M parameters)."""

    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    max_positions: int = 64
    projection_dim: int = 128
    logit_scale_init: float = 3.912  # ln(50); CLIP starts at ln(1 / 0.07) = 2.659 (see TinyCLIPRecipe)


@dataclass(frozen=True)
class TinyCLIPRecipe:
    """Everything that determines the trained tiny CLIP; its hash names the cache entry.

    Attributes:
        world: the world the training scenes come from.
        model: the model's sizes.
        n_scenes: distinct training scenes (rendered once).
        steps: optimizer steps.
        batch_size: scenes (images) per step; each brings one text and, with hard negatives, one
            corrupted text.
        learning_rate: AdamW peak learning rate (linear warm-up, then cosine decay to 0).
        warmup_steps: warm-up steps.
        weight_decay: AdamW weight decay.
        description_prob: probability that a scene's text is its full description rather than
            one of its object sentences.
        hard_negatives: add one corrupted text per scene to each batch (see the module docstring).
        shape_negative_prob: probability that a corrupted object has its shape changed (to one
            absent from the scene) rather than its colour, size or position.
        seed: seeds the model initialisation, the batches and the texts.
    """

    world: WorldConfig = field(default_factory=lambda: WorldConfig().held_out(seed=17))
    model: TinyCLIPConfig = field(default_factory=TinyCLIPConfig)
    n_scenes: int = 4000
    steps: int = 1000
    batch_size: int = 128
    learning_rate: float = 1e-3
    warmup_steps: int = 60
    weight_decay: float = 0.01
    description_prob: float = 0.25
    hard_negatives: bool = True
    shape_negative_prob: float = 0.5
    seed: int = 0

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        """The recipe as ``recipe.json`` holds it."""
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


def build_clip_tokenizer(config: TinyCLIPConfig = TinyCLIPConfig()):
    """The world's word-level tokenizer, adding ``<s>``/``</s>`` around every text."""
    from tokenizers import processors

    from .model import train_tokenizer

    tokenizer = train_tokenizer()
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if eos == 2 or bos == eos:
        raise ValueError(f"CLIP needs an EOS id other than 2 and distinct from BOS; got BOS {bos}, EOS {eos}")
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tokenizer.bos_token} $A {tokenizer.eos_token}",
        pair=f"{tokenizer.bos_token} $A {tokenizer.eos_token} $B {tokenizer.eos_token}",
        special_tokens=[(tokenizer.bos_token, bos), (tokenizer.eos_token, eos)],
    )
    tokenizer.model_max_length = config.max_positions
    tokenizer.chat_template = None
    return tokenizer


def build_clip_processor(tokenizer, config: TinyCLIPConfig = TinyCLIPConfig()):
    """A ``CLIPProcessor``: ``CLIPImageProcessorPil`` at the world's image size + ``tokenizer``."""
    from transformers import CLIPImageProcessorPil, CLIPProcessor

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": config.image_size},
        crop_size={"height": config.image_size, "width": config.image_size},
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_tiny_clip(tokenizer, config: TinyCLIPConfig = TinyCLIPConfig(), seed: int = 0):
    """A randomly initialised tiny ``CLIPModel`` for ``tokenizer``'s vocabulary."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    text = {
        "vocab_size": len(tokenizer), "hidden_size": config.text_hidden, "intermediate_size": 2 * config.text_hidden,
        "num_hidden_layers": config.text_layers, "num_attention_heads": config.text_heads,
        "max_position_embeddings": config.max_positions, "projection_dim": config.projection_dim,
        "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    vision = {
        "hidden_size": config.vision_hidden, "intermediate_size": 2 * config.vision_hidden,
        "num_hidden_layers": config.vision_layers, "num_attention_heads": config.vision_heads,
        "image_size": config.image_size, "patch_size": config.patch_size, "projection_dim": config.projection_dim,
    }
    torch.manual_seed(seed)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=config.projection_dim,
                                logit_scale_init_value=config.logit_scale_init))


# ---------------------------------------------------------------------------------------------
# Texts: true ones and corrupted ones
# ---------------------------------------------------------------------------------------------


def _describe(objects: list[SceneObject]) -> str:
    return " ".join(o.sentence() for o in sorted(objects, key=lambda o: QUADRANTS.index(o.quadrant)))


def _corrupt_object(obj: SceneObject, scene: Scene, rng: random.Random, shape_prob: float = 0.25) -> SceneObject:
    """``obj`` with one attribute changed: its shape (to one absent from the scene) with probability
    ``shape_prob``, else its colour, size or position."""
    absent = [s for s in SHAPES if s not in scene.shapes]
    if absent and rng.random() < shape_prob:
        return replace(obj, shape=rng.choice(absent))
    kind = rng.choice(("colour", "size", "position"))
    if kind == "size":
        return replace(obj, size=SIZES[1 - SIZES.index(obj.size)])
    if kind == "position":
        return replace(obj, quadrant=rng.choice([q for q in QUADRANTS if q != obj.quadrant]))
    return replace(obj, colour=rng.choice([c for c in COLOURS if c != obj.colour]))


def _insert_absent(scene: Scene, rng: random.Random) -> list[SceneObject]:
    """The scene's objects plus one of a shape the scene lacks (in a free quadrant when there is one)."""
    absent = [s for s in SHAPES if s not in scene.shapes] or list(SHAPES)
    free = [q for q in QUADRANTS if q not in {o.quadrant for o in scene.objects}] or list(QUADRANTS)
    ghost = SceneObject(rng.choice(absent), rng.choice(COLOURS), rng.choice(SIZES), rng.choice(free), (0, 0, 0, 0))
    return [*scene.objects, ghost]


def _training_texts(scene: Scene, rng: random.Random, description_prob: float,
                    shape_prob: float = 0.5) -> tuple[str, str]:
    """A true text of ``scene`` and a corrupted (false) one of the same kind."""
    if rng.random() < description_prob:
        if rng.random() < 0.5:
            return scene.description(), _describe(_insert_absent(scene, rng))
        objects = list(scene.objects)
        i = rng.randrange(len(objects))
        objects[i] = _corrupt_object(objects[i], scene, rng, shape_prob)
        return scene.description(), _describe(objects)
    obj = rng.choice(scene.objects)
    return obj.sentence(), _corrupt_object(obj, scene, rng, shape_prob).sentence()


@lru_cache(maxsize=65536)
def _claims(text: str) -> tuple[tuple[str | None, str | None, str | None, str | None], ...]:
    """``(size, colour, shape, quadrant)`` claimed by each sentence of a world text (None: unsaid)."""
    claims = []
    for sentence in text.split(" ."):
        words = sentence.split()
        if not words:
            continue
        quadrant = sentence.split(" at the ", 1)[1].strip() if " at the " in sentence else None
        claims.append((next((w for w in words if w in SIZES), None), next((w for w in words if w in COLOURS), None),
                       next((w for w in words if w in SHAPES), None), quadrant))
    return tuple(claims)


def _is_true(text: str, scene: Scene) -> bool:
    """Whether every sentence of a world text is true of some object of ``scene`` (a sentence
    may leave attributes unsaid)."""
    return all(
        any(all(want is None or want == have for want, have in zip(claim, (o.size, o.colour, o.shape, o.quadrant),
                                                                    strict=True))
            for o in scene.objects)
        for claim in _claims(text)
    )


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def _text_features(model, tokenizer, texts: list[str], buckets: int = 4):
    """``(M, D)`` projected text features, computed in length buckets to limit padding.

    Object sentences are ~12 tokens and descriptions up to ~50: padding them together would
    roughly double the text tower's cost.
    """
    import torch

    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    size = math.ceil(len(order) / buckets)
    parts = []
    for i in range(0, len(order), size):
        enc = tokenizer([texts[j] for j in order[i : i + size]], padding=True, return_tensors="pt")
        parts.append(model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).pooler_output)
    return torch.cat(parts)[torch.argsort(torch.tensor(order))]  # back to the input order


def train_tiny_clip(out_dir: str | Path, steps: int | None = None, batch_size: int | None = None,
                    seed: int | None = None,
                    recipe: TinyCLIPRecipe | None = None, *, overwrite: bool = False) -> Path:
    """Train a tiny CLIP on the world and save it as a CLIP checkpoint directory; returns ``out_dir``.

    ``steps``, ``batch_size`` and ``seed`` override the fields of ``recipe`` (default
    :class:`TinyCLIPRecipe`). Besides the checkpoint, ``out_dir`` gets ``recipe.json`` and
    ``train_log.json`` (loss every few steps, wall-clock seconds).

    As :func:`~mmpo.toyworld.base_model.build_base_model`, the checkpoint is written into a
    temporary folder next to ``out_dir`` and renamed into place when complete, so ``out_dir`` never
    holds half a model; an existing checkpoint there is replaced only with ``overwrite``, and a
    second process writing the same ``out_dir`` meanwhile is refused, naming the first one's pid.
    """
    from .base_model import check_output_dir

    recipe = recipe if recipe is not None else TinyCLIPRecipe()
    overrides = {k: v for k, v in {"steps": steps, "batch_size": batch_size, "seed": seed}.items() if v is not None}
    recipe = replace(recipe, **overrides)
    out_dir = check_output_dir(out_dir, overwrite)
    with building_directory(out_dir, replace=overwrite) as folder:
        _train_tiny_clip(recipe, folder)
    return out_dir


def _train_tiny_clip(recipe: TinyCLIPRecipe, out_dir: Path) -> None:
    """Train the tiny CLIP of ``recipe`` into the fresh folder ``out_dir`` (``recipe.json`` written last)."""
    import torch
    import torch.nn.functional as F

    from .. import progress

    tokenizer = build_clip_tokenizer(recipe.model)
    processor = build_clip_processor(tokenizer, recipe.model)
    model = build_tiny_clip(tokenizer, recipe.model, seed=recipe.seed)
    model.train()

    scenes = sample_scenes(recipe.world, recipe.n_scenes, prefix="clip-train")
    pixels = processor.image_processor(images=[s.render() for s in scenes], return_tensors="pt")["pixel_values"]  # (N, 3, H, W)

    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)

    def lr_factor(step: int) -> float:
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        progress_ = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress_))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    rng = random.Random(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    log: list[dict[str, Any]] = []
    start = time.perf_counter()
    bar = progress.bar(range(recipe.steps), desc="tiny CLIP")
    for step in bar:
        idx = torch.randperm(len(scenes), generator=gen)[: recipe.batch_size].tolist()
        pairs = [_training_texts(scenes[i], rng, recipe.description_prob, recipe.shape_negative_prob) for i in idx]
        texts = [p[0] for p in pairs] + ([p[1] for p in pairs] if recipe.hard_negatives else [])
        # positives[i, j]: text j is true of image i (B, B + B_neg)
        positives = torch.tensor([[_is_true(t, scenes[i]) for t in texts] for i in idx], dtype=torch.float32)
        image_embeds = F.normalize(model.get_image_features(pixel_values=pixels[idx]).pooler_output, dim=-1)  # (B, D)
        text_embeds = F.normalize(_text_features(model, tokenizer, texts), dim=-1)  # (B + B_neg, D)
        logits = model.logit_scale.exp() * image_embeds @ text_embeds.T  # (B, B + B_neg), as CLIPModel.forward
        n = len(idx)
        # image -> text: soft targets spread over every true text of the image
        loss_i2t = -(positives / positives.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
        # text -> image, for the true texts only (a corrupted text has no positive image)
        pos_t = positives[:, :n].T  # (B, B)
        loss_t2i = -(pos_t / pos_t.sum(1, keepdim=True) * F.log_softmax(logits[:, :n].T, dim=1)).sum(1).mean()
        loss = 0.5 * (loss_i2t + loss_t2i)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # as in CLIP
        if step % 20 == 0 or step == recipe.steps - 1:
            log.append({"step": step, "loss": round(loss.item(), 5), "lr": scheduler.get_last_lr()[0],
                        "logit_scale": round(model.logit_scale.exp().item(), 3),
                        "seconds": round(time.perf_counter() - start, 2)})
            bar.set_postfix(loss=f"{loss.item():.3f}")
    seconds = time.perf_counter() - start

    model.eval()
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    (out_dir / "train_log.json").write_text(json.dumps({"train_seconds": round(seconds, 2), "log": log}, indent=2))
    (out_dir / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2))  # written last: marks completion


def ensure_tiny_clip(cache_root: str | Path, recipe: TinyCLIPRecipe | None = None, shipped: bool = True) -> tuple[Path, bool]:
    """The tiny CLIP for ``recipe`` (default: the default recipe): the one shipped with mmpo when
    ``recipe`` is the default recipe and ``shipped`` (:mod:`mmpo.toyworld.shipped`), else the cached
    one, trained first if missing. Returns ``(path, was_ready)``: False when it was trained now.

    It is trained in a fresh temporary directory next to the target and renamed into place, so an
    interrupted build never leaves a half-written entry; if another process finished the same
    entry first, its copy is kept and this one discarded.
    """
    from .shipped import shipped_checkpoint

    recipe = recipe if recipe is not None else TinyCLIPRecipe()
    if shipped and (path := shipped_checkpoint("clip", recipe)) is not None:
        return path, True
    target = Path(cache_root) / f"toyworld-clip-{recipe.fingerprint()}"
    return ensure_directory(target, lambda folder: train_tiny_clip(folder, recipe=recipe),
                            "recipe.json")


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def clip_sentence_accuracy(scorer, scenes: list[Scene], seed: int = 0) -> dict[str, float]:
    """How often a CLIP scorer ranks a true text above a hallucinated one, on ``scenes``.

    * ``swap_accuracy``: for every object, its sentence vs. the same sentence with the shape
      replaced by one absent from the scene (``n_swap`` pairs);
    * ``insert_accuracy``: for every scene, its description vs. the description with an object of
      an absent shape inserted (in a free quadrant when there is one; ``n_insert`` pairs).

    Ties count as failures. Use held-out scenes (``sample_scenes(WorldConfig().held_out(), n)``).
    ``swap_margin`` and ``insert_margin`` are the mean score differences (true - hallucinated).

    Args:
        scorer: any :class:`mmpo.scoring.clip.ImageTextScorer`.
        scenes: the scenes to test on.
        seed: seeds the choice of the hallucinated shapes.
    """
    import torch

    rng = random.Random(seed)
    images, true_texts, false_texts, kinds = [], [], [], []
    for scene in scenes:
        image = scene.render()
        absent = [s for s in SHAPES if s not in scene.shapes]
        for obj in scene.objects:
            if absent:
                images.append(image)
                true_texts.append(obj.sentence())
                false_texts.append(replace(obj, shape=rng.choice(absent)).sentence())
                kinds.append("swap")
        images.append(image)
        true_texts.append(scene.description())
        false_texts.append(_describe(_insert_absent(scene, rng)))
        kinds.append("insert")
    if not images:
        return {"swap_accuracy": float("nan"), "insert_accuracy": float("nan"), "n_swap": 0, "n_insert": 0}
    margin = scorer.score(images, true_texts) - scorer.score(images, false_texts)  # (P,)
    result: dict[str, float] = {}
    for kind in ("swap", "insert"):
        mask = torch.tensor([k == kind for k in kinds])
        n = int(mask.sum())
        result[f"{kind}_accuracy"] = float((margin[mask] > 0).float().mean()) if n else float("nan")
        result[f"{kind}_margin"] = float(margin[mask].mean()) if n else float("nan")
        result[f"n_{kind}"] = n
    return result
