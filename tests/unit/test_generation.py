"""Batched greedy generation with the untrained tiny LLaVA of the synthetic world."""

from __future__ import annotations

import pytest

from mmpo.generation import generate_responses
from mmpo.toyworld.scenes import DESCRIBE_PROMPT, WorldConfig, sample_scenes


@pytest.fixture(scope="module")
def tiny(varied_tiny_vlm):
    return varied_tiny_vlm


@pytest.fixture(scope="module")
def images():
    return [s.render() for s in sample_scenes(WorldConfig(seed=5), 3)]


def test_one_string_per_image(tiny, images):
    model, processor = tiny
    out = generate_responses(model, processor, images, DESCRIBE_PROMPT, batch_size=2, max_new_tokens=4)
    assert len(out) == 3 and all(isinstance(r, str) and r == r.strip() for r in out)
    assert all("<image>" not in r and "<pad>" not in r for r in out)


def test_batched_equals_one_at_a_time_and_state_is_restored(tiny, images):
    """Prompts of different lengths force padding inside the batch; with left padding each row's
    greedy result equals the one it gets alone. The tokenizer's padding side and the model's
    training mode are put back afterwards."""
    model, processor = tiny
    prompts = [DESCRIBE_PROMPT, "is there a star in the image ?", "describe ."]
    processor.tokenizer.padding_side = "right"
    model.train()
    batched = generate_responses(model, processor, images, prompts, batch_size=3, max_new_tokens=6)
    assert processor.tokenizer.padding_side == "right" and model.training
    model.eval()
    alone = [generate_responses(model, processor, [im], [p], max_new_tokens=6)[0]
             for im, p in zip(images, prompts, strict=True)]
    assert len(set(batched)) == 3                              # the outputs depend on the input
    assert batched == alone


def test_length_mismatch(tiny, images):
    model, processor = tiny
    with pytest.raises(ValueError):
        generate_responses(model, processor, images, ["a", "b"])


def test_sampling_is_seeded_and_differs_from_greedy(tiny, images):
    import torch

    model, processor = tiny
    greedy = generate_responses(model, processor, images * 4, DESCRIBE_PROMPT, max_new_tokens=6)
    runs = []
    for _ in range(2):
        torch.manual_seed(11)
        runs.append(generate_responses(model, processor, images * 4, DESCRIBE_PROMPT, max_new_tokens=6, do_sample=True, temperature=1.5))
    assert runs[0] == runs[1]
    assert runs[0] != greedy
    assert len(set(runs[0][0::3])) > 1  # the same image, different samples


def test_generation_stops_where_training_ends_a_response(tiny):
    """Gemma 3 ends an assistant turn with <end_of_turn>, which training ends every response with:
    generation stops there too. The synthetic world's template writes no end token: nothing added."""
    from mmpo.generation import stop_token_ids
    from mmpo.testing.families import build_family

    gemma, processor = build_family("gemma3")
    tokenizer = processor.tokenizer
    assert stop_token_ids(gemma, processor) == [tokenizer.eos_token_id,
                                                tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    assert stop_token_ids(*tiny) == []
