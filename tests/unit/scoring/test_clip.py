"""CLIPScorer on an untrained tiny CLIP built from config and saved to disk (no downloads)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from mmpo.scoring.clip import CLIPScorer, EmbeddingCache, ImageTextScorer
from mmpo.toyworld.clip import TinyCLIPConfig, build_clip_processor, build_clip_tokenizer, build_tiny_clip
from mmpo.toyworld.scenes import WorldConfig, sample_scenes

# 16 text positions, so a three-object description (32 tokens) needs word windows
SMALL = TinyCLIPConfig(vision_hidden=32, vision_layers=1, text_hidden=32, text_layers=1, max_positions=16,
                       projection_dim=16)


def save_clip(path, seed: int = 0):
    tokenizer = build_clip_tokenizer(SMALL)
    build_tiny_clip(tokenizer, SMALL, seed=seed).save_pretrained(path)
    build_clip_processor(tokenizer, SMALL).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def scenes():
    return sample_scenes(WorldConfig(seed=3), 4)


class ForwardCounter:
    """Counts forward passes of the vision and text towers."""

    def __init__(self, scorer: CLIPScorer):
        self.vision = self.text = 0
        scorer.model.vision_model.register_forward_hook(lambda *_: self._bump("vision"))
        scorer.model.text_model.register_forward_hook(lambda *_: self._bump("text"))

    def _bump(self, name: str) -> None:
        setattr(self, name, getattr(self, name) + 1)


def test_shapes_and_cosine_range(clip_dir, scenes):
    scorer = CLIPScorer(clip_dir, device="cpu", batch_size=3)
    assert isinstance(scorer, ImageTextScorer)
    images = [s.render() for s in scenes]
    texts = [s.objects[0].sentence() for s in scenes]
    paired = scorer.score(images, texts)
    assert paired.shape == (4,) and paired.dtype == torch.float32
    assert bool((paired.abs() <= 1 + 1e-5).all())
    matrix = scorer.score_matrix(images[:2], texts)
    assert matrix.shape == (2, 4)
    torch.testing.assert_close(matrix.diagonal(), paired[:2])
    assert scorer.score([], []).shape == (0,)
    assert scorer.score_matrix([], texts).shape == (0, 4)
    with pytest.raises(ValueError, match="pairs"):
        scorer.score(images, texts[:2])
    # CLIP as a classifier: its logits are these cosines times logit_scale.exp() (what DAMA's delta uses).
    with torch.no_grad():
        logits = scorer.model(**scorer.tokenizer(texts[:1], return_tensors="pt", padding=True),
                              **scorer.image_processor(images[:1], return_tensors="pt")).logits_per_image
    assert scorer.logit_scale == pytest.approx(scorer.model.logit_scale.exp().item())
    assert logits.item() == pytest.approx(scorer.logit_scale * paired[0].item(), rel=1e-4)


def test_paths_and_pil_images_agree(clip_dir, scenes, tmp_path):
    scorer = CLIPScorer(clip_dir, device="cpu")
    images = [s.render() for s in scenes[:2]]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    torch.testing.assert_close(scorer.image_embeddings(paths), scorer.image_embeddings(images))
    torch.testing.assert_close(scorer.image_embeddings([str(paths[0]), images[0].convert("RGBA")]),
                               scorer.image_embeddings([images[0], images[0]]))


def test_cache_hits_skip_the_model_across_instances(clip_dir, scenes, tmp_path):
    images = [s.render() for s in scenes]
    texts = [s.description() for s in scenes]
    first = CLIPScorer(clip_dir, device="cpu", cache_dir=tmp_path)
    counter = ForwardCounter(first)
    scores = first.score(images, texts)
    assert counter.vision > 0 and counter.text > 0
    calls = (counter.vision, counter.text)
    torch.testing.assert_close(first.score(images, texts), scores)
    assert (counter.vision, counter.text) == calls  # all hits

    second = CLIPScorer(clip_dir, device="cpu", cache_dir=tmp_path)  # e.g. another process
    counter2 = ForwardCounter(second)
    torch.testing.assert_close(second.score(images, texts), scores)
    assert second.fingerprint == first.fingerprint
    assert (counter2.vision, counter2.text) == (0, 0)
    second.score(images[:1], ["a small red circle is at the top left ."])  # one new text
    assert (counter2.vision, counter2.text) == (0, 1)
    assert len(second.cache) == len(images) + len(texts) + 1

    other = CLIPScorer(save_clip(tmp_path / "other", seed=1), device="cpu", cache_dir=tmp_path)
    assert other.fingerprint != first.fingerprint  # different weights never read stale entries
    counter3 = ForwardCounter(other)
    other.score(images, texts)
    assert counter3.vision > 0 and counter3.text > 0


def test_repeated_inputs_are_embedded_once(clip_dir, scenes):
    scorer = CLIPScorer(clip_dir, device="cpu", batch_size=64)
    counter = ForwardCounter(scorer)
    image = scenes[0].render()
    sentences = [o.sentence() for o in scenes[0].objects]
    scores = scorer.score([image] * (2 * len(sentences)), sentences * 2)
    assert (counter.vision, counter.text) == (1, 1)
    torch.testing.assert_close(scores[: len(sentences)], scores[len(sentences) :])


def test_long_texts_are_scored_by_word_windows(clip_dir, scenes):
    scorer = CLIPScorer(clip_dir, device="cpu")
    long = " ".join(s.description() for s in scenes)
    assert len(scorer.tokenizer(long)["input_ids"]) > scorer.max_text_tokens
    windows = scorer.text_windows(long)
    assert len(windows) > 1
    assert " ".join(windows) == " ".join(long.split())  # consecutive, nothing lost
    assert all(len(scorer.tokenizer(w)["input_ids"]) <= scorer.max_text_tokens for w in windows)
    short = scenes[0].objects[0].sentence()
    assert scorer.text_windows(short) == [short]
    # the text's embedding is the normalised mean of its windows' normalised embeddings
    expected = torch.nn.functional.normalize(scorer.text_embeddings(windows).mean(0), dim=-1)
    torch.testing.assert_close(scorer.text_embeddings([long])[0], expected)


def test_embedding_cache_is_first_writer_wins_and_thread_safe(tmp_path):
    cache = EmbeddingCache(tmp_path / "c.sqlite")
    cache.put_many({"a": np.array([1.0, 2.0]), "b": np.array([3.0])})
    cache.put_many({"a": np.array([9.0, 9.0])})
    got = cache.get_many(["a", "b", "missing", "a"])
    assert set(got) == {"a", "b"}
    np.testing.assert_array_equal(got["a"], np.array([1.0, 2.0], dtype=np.float32))

    def writer(offset: int) -> None:
        other = EmbeddingCache(tmp_path / "c.sqlite")
        for i in range(30):
            other.put_many({f"k{(i + offset) % 30}": np.full(4, float((i + offset) % 30))})

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = cache.get_many([f"k{i}" for i in range(30)])
    assert len(got) == 30 and all(float(v[0]) == int(k[1:]) for k, v in got.items())
