"""Shared fixtures: a tiny LLaVA built from config, saved as a local checkpoint, and records."""

from __future__ import annotations

import pytest
import torch

from mmpo import progress
from mmpo.toyworld.data import ground_truth_pairs
from mmpo.toyworld.model import build_processor, build_tiny_vlm, train_tokenizer
from mmpo.toyworld.scenes import WorldConfig, sample_scenes

torch.set_num_threads(2)
progress.disable()  # no progress bars in the suite's output (tests/unit/test_progress.py turns them on)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A local checkpoint directory of an untrained tiny LLaVA + LlavaProcessor."""
    path = tmp_path_factory.mktemp("tiny_vlm")
    tokenizer = train_tokenizer()
    build_tiny_vlm(tokenizer, seed=0).save_pretrained(path)
    build_processor(tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_records(tmp_path_factory):
    """Eight ground-truth preference records with PNG images on disk."""
    world = WorldConfig(seed=3)
    scenes = sample_scenes(world, 8, prefix="t")
    return ground_truth_pairs(scenes, world, tmp_path_factory.mktemp("images"), seed=0)


@pytest.fixture(scope="session")
def varied_tiny_vlm():
    """The untrained tiny LLaVA with its matrices redrawn at std 0.3, so that its greedy output
    depends on the input (at the default init it emits the same word for everything, which would
    make generation tests vacuous). Returns ``(model, processor)``; do not train it in a test."""
    tokenizer = train_tokenizer()
    model = build_tiny_vlm(tokenizer, seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.3)
    return model, build_processor(tokenizer)


@pytest.fixture(scope="module")
def built():
    """``built(name)``: the tiny model and processor of family ``name`` (:mod:`mmpo.testing.families`),
    built once per test module."""
    from mmpo.testing.families import build_family

    cache: dict[str, tuple] = {}

    def get(name):
        if name not in cache:
            cache[name] = build_family(name)
        return cache[name]

    return get
