"""A random-init VLM shaped like LLaVA-1.5, and records of LLaVA-1.5 preference-data lengths (no download).

Used by ``benchmarks/vs_trl.py`` and ``benchmarks/gpu_throughput.py``; importable from either as
``llava15_shape`` (the scripts put ``benchmarks/`` on ``sys.path``).

* :func:`build_llava15` builds a ``LlavaForConditionalGeneration`` from configs: a CLIP ViT vision
  tower at 336 px, patch 14 (577 patch features, CLS dropped by ``vision_feature_select_strategy=
  "default"`` -> 576 image tokens, features from ``vision_feature_layer=-2``), the 2-layer GELU
  projector and a Llama text model with LLaVA-1.5's vocabulary of 32064. ``size="7b"`` is
  LLaVA-1.5-7B's exact architecture (CLIP ViT-L/14-336 + Llama-2-7B/Vicuna-7B); ``size="cpu"`` keeps
  the image geometry and the vocabulary (the LM head is a large part of a step, and its saving by
  ``logits_to_keep`` depends on the vocabulary) but shrinks the widths and depths (text hidden 128,
  4 layers; vision hidden 64, 2 layers) so that an mmpo DPO step at batch 4 takes about 2 s on 2 CPU
  cores (hidden 256 took 3-5 s there: most of a step is vocabulary-wide work that no width removes).
* The processor is a ``LlavaProcessor`` with a ``CLIPImageProcessorPil`` at 336 (crop 336) and the
  byte-level tokenizer of :mod:`mmpo.testing.families` (about 450 tokens: every id is valid in the
  32064-row embedding), with a Vicuna / LLaVA-1.5 chat template ("USER: <image>\\n... ASSISTANT: ...</s>").
* :func:`records` makes :class:`mmpo.types.PreferenceRecord` s with random 336x336 images, a prompt
  of about 50 tokens and responses of 100-200 tokens: words of the toy world's vocabulary, which
  the tokenizer encodes as about one token per word (:func:`token_counts` measures it). With
  ``response_lengths`` each record's chosen and rejected word counts are given instead (e.g. drawn
  from a long-tailed distribution by ``benchmarks/packing.py``; :func:`words_for_tokens` converts).
* ``vocab_size`` (:func:`llava15_config`, :func:`build_llava15`) widens or narrows the vocabulary
  (e.g. Qwen2-VL's 151,936 for ``benchmarks/lm_head.py``); the tokenizer's ids stay valid.
"""

from __future__ import annotations

import functools
import random

import numpy as np
import torch
from PIL import Image

from mmpo.testing.families import VICUNA_TEMPLATE, family_tokenizer
from mmpo.toyworld.model import world_corpus
from mmpo.types import PreferenceRecord

IMAGE_SIZE, PATCH_SIZE = 336, 14
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 576: CLS dropped
VOCAB_SIZE = 32064

#: Vision tower and text model sizes. "7b": llava-hf/llava-1.5-7b-hf's config.json, field by field.
SIZES: dict[str, dict[str, dict]] = {
    "7b": {
        "vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5),
        "text": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5, hidden_act="silu",
                     rope_theta=10000.0, tie_word_embeddings=False),
    },
    "cpu": {
        "vision": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                       projection_dim=64, hidden_act="quick_gelu", layer_norm_eps=1e-5),
        "text": dict(hidden_size=128, intermediate_size=344, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=4, max_position_embeddings=4096, rms_norm_eps=1e-5, hidden_act="silu",
                     rope_theta=10000.0, tie_word_embeddings=False),
    },
}


@functools.lru_cache(maxsize=1)
def _tokenizer():
    # The tokenizer of mmpo.testing.families' "llava" family (trained on the toy world's text).
    return family_tokenizer(named_tokens={"image_token": "<image>"})


def build_processor():
    """The ``LlavaProcessor``: CLIP preprocessing at 336/336, patch 14, 576 ``<image>`` tokens per image."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    # As mmpo.testing.families._llava, at LLaVA-1.5's image geometry (CLIP's mean/std are the defaults).
    return LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                              crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=_tokenizer(), patch_size=PATCH_SIZE, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=VICUNA_TEMPLATE,
    )


def llava15_config(size: str, tokenizer=None, vocab_size: int = VOCAB_SIZE):
    """The ``LlavaConfig`` of ``size`` ("cpu" or "7b") for ``tokenizer``'s special ids, with a
    vocabulary of ``vocab_size`` (LLaVA-1.5's 32064 by default; at least the tokenizer's size)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, not {size!r}")
    tokenizer = tokenizer or _tokenizer()
    if len(tokenizer) > vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than the vocabulary of {vocab_size}")
    sizes = SIZES[size]
    vision = CLIPVisionConfig(**sizes["vision"], image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, num_channels=3)
    text = LlamaConfig(**sizes["text"], vocab_size=vocab_size, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=tokenizer.image_token_id,
                       projector_hidden_act="gelu", vision_feature_layer=-2,
                       vision_feature_select_strategy="default", image_seq_length=IMAGE_TOKENS,
                       tie_word_embeddings=False)


def build_llava15(size: str, dtype: torch.dtype = torch.float32, seed: int = 0, device: str | torch.device | None = None,
                  vocab_size: int = VOCAB_SIZE):
    """``(model, processor)``: a random-init LLaVA-1.5-shaped ``LlavaForConditionalGeneration``.

    Args:
        size: "cpu" (9.2M parameters, most of them the 32064-token embedding and LM head) or
            "7b" (LLaVA-1.5-7B's exact architecture, 7.06B parameters).
        dtype: the weights' dtype.
        seed: ``torch.manual_seed`` before the weights are drawn (same seed, same weights).
        device: where the weights are created (e.g. "cuda" for "7b": no 28 GB float32 copy on the host).
        vocab_size: rows of the embedding and the LM head (default LLaVA-1.5's 32064).
    """
    from transformers import LlavaForConditionalGeneration

    processor = build_processor()
    tokenizer = processor.tokenizer
    config = llava15_config(size, tokenizer, vocab_size)
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, processor


@functools.lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """The toy world's words (letters only), each one token after a space for the families tokenizer."""
    tokenizer = _tokenizer()
    words = sorted({w for line in world_corpus() for w in line.split() if w.isalpha()})
    return tuple(w for w in words if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1)


def random_image(rng: np.random.Generator, size: int = IMAGE_SIZE) -> Image.Image:
    """Uniform noise, ``size`` x ``size`` RGB (the processor's resize and crop are then no-ops)."""
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), mode="RGB")


def _text(rng: random.Random, words: tuple[str, ...], n: int) -> str:
    out = []
    for i in range(n):
        out.append(rng.choice(words))
        if i % 12 == 11 and i < n - 1:  # sentences of 12 words (one extra "." token each)
            out[-1] += " ."
    return " ".join(out) + " ."


def words_for_tokens(tokens: int) -> int:
    """The word count whose text (as :func:`records` writes it: a "." after every 12th word and at the
    end) is ``tokens`` tokens long, or the nearest above (at least 1 word): ``n`` words are
    ``n + (n - 1) // 12 + 1`` tokens."""
    n = max(1, (tokens - 1) * 12 // 13)
    while n + (n - 1) // 12 + 1 < tokens:
        n += 1
    return n


def records(n: int, seed: int = 0, prompt_words: int = 40, response_words: tuple[int, int] = (100, 200),
            vision: bool = False, response_lengths: list[tuple[int, int]] | None = None) -> list[PreferenceRecord]:
    """``n`` preference records of LLaVA-1.5 preference-data lengths (about 50 prompt tokens with the
    chat template, 100-200 response tokens), each with its own random 336x336 image.

    Args:
        vision: also set ``rejected_image`` (another random image), AdaViP's vision-rejected sample.
        response_words: the range of response lengths in tokens (word counts are drawn to land in it).
        response_lengths: ``(chosen, rejected)`` word counts per record (at least ``n`` pairs),
            exactly, instead of ``response_words`` (:func:`words_for_tokens` converts from tokens).
            The texts, prompts and images are drawn from the same streams either way.
    """
    if response_lengths is not None and len(response_lengths) < n:
        raise ValueError(f"response_lengths has {len(response_lengths)} pairs for {n} records")
    rng, pixels = random.Random(seed), np.random.default_rng(seed)
    words = vocabulary()
    lo, hi = response_words
    out = []
    for i in range(n):
        if response_lengths is None:
            # Word counts chosen so that the responses, with their "." tokens, land in 100-200 tokens.
            n_chosen = rng.randint(lo * 12 // 13, hi * 12 // 13 - 1)
            chosen = _text(rng, words, n_chosen)
            rejected = _text(rng, words, rng.randint(lo * 12 // 13, hi * 12 // 13 - 1))
        else:
            chosen = _text(rng, words, response_lengths[i][0])
            rejected = _text(rng, words, response_lengths[i][1])
        out.append(PreferenceRecord(
            image=random_image(pixels), prompt=_text(rng, words, prompt_words), chosen=chosen, rejected=rejected,
            id=f"llava15-{seed}-{i}", rejected_image=random_image(pixels) if vision else None))
    return out


def token_counts(processor, recs: list[PreferenceRecord]) -> dict[str, tuple[int, int, float]]:
    """(min, max, mean) token counts of the prompt text (chat template included, image tokens excluded)
    and of the chosen and rejected responses (no EOS), as the processor's tokenizer encodes them."""
    from mmpo.prompting import render_prompt

    tok = processor.tokenizer
    image_id = tok.image_token_id

    def stats(values: list[int]) -> tuple[int, int, float]:
        return min(values), max(values), sum(values) / len(values)

    prompts = [sum(1 for t in tok(render_prompt(processor, r.prompt, "chat"), add_special_tokens=False)["input_ids"]
                   if t != image_id) for r in recs]
    chosen = [len(tok(" " + r.chosen, add_special_tokens=False)["input_ids"]) for r in recs]
    rejected = [len(tok(" " + r.rejected, add_special_tokens=False)["input_ids"]) for r in recs]
    return {"prompt": stats(prompts), "chosen": stats(chosen), "rejected": stats(rejected)}
