"""Build the synthetic world's tokenizer and tiny LLaVA-style VLM from configs, offline.

Everything here produces ordinary Hugging Face objects — a ``PreTrainedTokenizerFast``, a
``LlavaProcessor`` and a ``LlavaForConditionalGeneration`` — saved with ``save_pretrained``
and loaded with ``from_pretrained`` from a local directory, exactly as a user's
``llava-hf/llava-1.5-7b-hf`` checkpoint on disk would be. No weights are downloaded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from .pope import pope_question
from .scenes import COLOURS, DESCRIBE_PROMPT, QUADRANTS, SHAPES, SIZES

PAD, UNK, BOS, EOS, IMAGE = "<pad>", "<unk>", "<s>", "</s>", "<image>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS, IMAGE]

#: A chat template in the spirit of LLaVA-1.5's ("USER: <image>\n... ASSISTANT:"), lower-cased
#: to match the world's word-level vocabulary.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] }} :"
    "{% if message['content'] is string %} {{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %} <image>{% elif part['type'] == 'text' %} {{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if not loop.last %} {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %} assistant :{% endif %}"
)


def world_corpus() -> list[str]:
    """Every word the world's prompts, descriptions and answers can use (one text per line)."""
    lines = [DESCRIBE_PROMPT, "user : assistant :", "is there a in the image ? yes no", ". , ?"]
    lines += [f"a {s} {c} {sh} is at the {q} ." for s in SIZES for c in COLOURS for sh in SHAPES for q in QUADRANTS]
    lines += [pope_question(sh) for sh in SHAPES]
    # Words of the world's AMBER- and MMHal-style benchmark questions (mmpo.toyworld.benchmark_files).
    lines += ["is the left of right above below what colour how many objects are there no 0 1 2 3 4"]
    return lines


def train_tokenizer(texts: Iterable[str] | None = None) -> PreTrainedTokenizerFast:
    """Train a word-level tokenizer on the world's text and wrap it as a transformers tokenizer."""
    raw = Tokenizer(models.WordLevel(unk_token=UNK))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1)
    raw.train_from_iterator(list(texts) if texts is not None else world_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS,
        extra_special_tokens={"image_token": IMAGE}, padding_side="right",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@dataclass(frozen=True)
class TinyVLMConfig:
    """Sizes of the tiny LLaVA: a CLIP vision tower and a Llama text model (about 0.7M parameters)."""

    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int = 256
    max_positions: int = 256


def build_processor(tokenizer: PreTrainedTokenizerFast, config: TinyVLMConfig = TinyVLMConfig()) -> LlavaProcessor:
    """A ``LlavaProcessor`` whose image token count matches the vision tower.

    The CLIP tower emits ``(image_size / patch_size)^2`` patch features plus one CLS feature;
    LLaVA's default feature strategy drops the CLS one, so ``num_additional_image_tokens=1``
    makes the processor insert exactly one ``<image>`` token per patch feature.
    """
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": config.image_size},
        crop_size={"height": config.image_size, "width": config.image_size},
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=config.patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_vlm(tokenizer: PreTrainedTokenizerFast, config: TinyVLMConfig = TinyVLMConfig(),
                   seed: int = 0) -> LlavaForConditionalGeneration:
    """A randomly initialised tiny ``LlavaForConditionalGeneration`` for ``tokenizer``'s vocabulary."""
    import torch

    vision = CLIPVisionConfig(
        hidden_size=config.vision_hidden, intermediate_size=config.vision_hidden * 2,
        num_hidden_layers=config.vision_layers, num_attention_heads=config.vision_heads,
        image_size=config.image_size, patch_size=config.patch_size, projection_dim=config.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.text_hidden, intermediate_size=config.text_intermediate,
        num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
        num_key_value_heads=config.text_heads, max_position_embeddings=config.max_positions,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    llava = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        vision_feature_layer=-1, vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(llava)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model
