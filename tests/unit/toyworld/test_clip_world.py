"""The synthetic world's tiny CLIP: tokenizer, texts, a short training run, caching, evaluation."""

from __future__ import annotations

import json
import random

import pytest
import torch

from mmpo.scoring.clip import CLIPScorer
from mmpo.toyworld.clip import (
    TinyCLIPConfig,
    TinyCLIPRecipe,
    _is_true,
    _training_texts,
    build_clip_tokenizer,
    build_tiny_clip,
    clip_sentence_accuracy,
    ensure_tiny_clip,
    train_tiny_clip,
)
from mmpo.toyworld.scenes import WorldConfig, sample_scenes

SMALL = TinyCLIPConfig(vision_hidden=32, vision_layers=1, text_hidden=32, text_layers=1, projection_dim=16)
TINY_RECIPE = TinyCLIPRecipe(model=SMALL, n_scenes=64, steps=20, batch_size=16, warmup_steps=5)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """On a busy 2-core machine, two torch threads per process made these tiny runs ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), recipe=TINY_RECIPE)


def test_tokenizer_wraps_every_text_in_bos_eos_and_avoids_legacy_pooling():
    tok = build_clip_tokenizer()
    assert tok.eos_token_id != 2 and tok.bos_token_id != tok.eos_token_id
    ids = tok(["a red circle", "there is a blue square in the image ?"])["input_ids"]
    assert all(row[0] == tok.bos_token_id and row[-1] == tok.eos_token_id for row in ids)
    assert tok.unk_token_id not in ids[0]
    model = build_tiny_clip(tok, SMALL)
    assert model.config.text_config.eos_token_id == tok.eos_token_id


def test_training_texts_are_true_and_corruptions_false():
    rng = random.Random(0)
    n = wrong = 0
    for scene in sample_scenes(WorldConfig(), 200):
        for _ in range(5):
            true, false = _training_texts(scene, rng, description_prob=0.3, shape_prob=0.5)
            assert _is_true(true, scene) and true != false
            # a corrupted text is false, except when an object was moved onto an identical one
            n, wrong = n + 1, wrong + _is_true(false, scene)
    assert wrong / n < 0.02


def test_is_true_checks_every_claim_against_some_object():
    scene = sample_scenes(WorldConfig(), 1)[0]
    obj = scene.objects[0]
    absent = next(s for s in ("circle", "square", "triangle", "diamond", "star", "cross") if s not in scene.shapes)
    assert _is_true(scene.description(), scene)
    assert _is_true(f"a {obj.colour} {obj.shape} . a {obj.shape} is at the {obj.quadrant} .", scene)
    assert not _is_true(f"{obj.sentence()} a {absent} .", scene)
    assert not _is_true(obj.sentence().replace(obj.shape, absent), scene)


def test_short_training_run_saves_a_loadable_clip(trained):
    log = json.loads((trained / "train_log.json").read_text())
    assert log["log"][-1]["step"] == TINY_RECIPE.steps - 1
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in log["log"])
    assert json.loads((trained / "recipe.json").read_text())["steps"] == 20

    scorer = CLIPScorer(trained, device="cpu")
    fresh = build_tiny_clip(build_clip_tokenizer(SMALL), SMALL, seed=TINY_RECIPE.seed)
    assert not torch.equal(scorer.model.text_projection.weight, fresh.text_projection.weight)  # it trained
    assert scorer.max_text_tokens == SMALL.max_positions

    held_out = sample_scenes(WorldConfig().held_out(), 8)
    result = clip_sentence_accuracy(scorer, held_out)
    assert 0.0 <= result["swap_accuracy"] <= 1.0 and 0.0 <= result["insert_accuracy"] <= 1.0
    assert result["n_swap"] == sum(len(s.objects) for s in held_out)
    assert result["n_insert"] == len(held_out)


class OracleScorer:
    """A test double that knows the scenes: 1 for a true text, 0 for a false one (``sign=-1`` inverts)."""

    def __init__(self, scenes, sign: float = 1.0):
        self.scenes = {s.render().tobytes(): s for s in scenes}
        self.sign = sign

    def score(self, images, texts):
        return self.sign * torch.tensor([float(_is_true(t, self.scenes[i.tobytes()]))
                                         for i, t in zip(images, texts, strict=True)])

    def score_matrix(self, images, texts):
        raise NotImplementedError


def test_accuracy_of_perfect_and_inverted_scorers():
    scenes = sample_scenes(WorldConfig().held_out(), 20)
    assert clip_sentence_accuracy(OracleScorer(scenes), scenes)["swap_accuracy"] == 1.0
    assert clip_sentence_accuracy(OracleScorer(scenes), scenes)["insert_accuracy"] == 1.0
    inverted = clip_sentence_accuracy(OracleScorer(scenes, sign=-1.0), scenes)
    assert inverted["swap_accuracy"] == 0.0 and inverted["insert_accuracy"] == 0.0


def test_ensure_tiny_clip_builds_once(tmp_path):
    recipe = TinyCLIPRecipe(model=SMALL, n_scenes=16, steps=2, batch_size=8, warmup_steps=1)
    path, cached = ensure_tiny_clip(tmp_path, recipe)
    assert not cached and (path / "recipe.json").exists() and (path / "model.safetensors").exists()
    again, cached = ensure_tiny_clip(tmp_path, recipe)
    assert cached and again == path
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no partial directories left
