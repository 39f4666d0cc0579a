"""Tiny, randomly initialised stand-ins for the major transformers VLM families, built offline.

These are **not** real checkpoints: every model here is a few-thousand-parameter random network
built from a config, and every processor wraps a byte-level BPE tokenizer that this module trains
itself on the toy world's text. They exist so tests can check that mmpo handles each family's
conventions exactly (image-token expansion, BOS handling, per-token side inputs such as
``token_type_ids`` or ``cross_attention_mask``, M-RoPE position ids, ...) without downloading
anything.

What is faithful to each family is its *plumbing*: the model and processor classes, the special
tokens and the attributes the processor reads from its tokenizer, a chat template in the family's
style (written here, not copied from any hub file) with the quirks that matter to training (an
end-of-turn token other than EOS, Gemma's trimming, a Thinking template's lead, a generation prompt
that is not a prefix of the template's own assistant turn), and whether the tokenizer itself adds a BOS
token (Gemma 3 and Llama-3.2-Vision tokenizers do, and their chat templates render one too — the
classic "double BOS"). What is not faithful: sizes, vocabularies and, of course, the weights.

``build_family(name)`` returns ``(model, processor)`` for ``name`` in :data:`FAMILIES` or
:data:`VARIANTS` (``"paligemma_chat"``, a PaliGemma with a chat template attached, and
``"qwen3_vl_thinking"``, Qwen3-VL with a "Thinking" template). Models are float32 and built
after ``torch.manual_seed(seed)``, so the same seed gives the same weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlavaOnevisionProcessor,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLProcessor,
    Qwen2VLProcessor,
    Qwen3VLProcessor,
    SmolVLMProcessor,
)

from ..toyworld.model import world_corpus

FAMILIES: tuple[str, ...] = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl",
                             "gemma3", "paligemma", "idefics3", "smolvlm", "mllama")
#: Other templates of a family: PaliGemma with a chat template, Qwen3-VL's "Thinking" one.
VARIANTS: tuple[str, ...] = ("paligemma_chat", "qwen3_vl_thinking")

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"

#: Words the chat templates below use, so that they tokenize into a few whole-word tokens.
TEMPLATE_WORDS = ["user assistant system model", "User: Assistant: System:", "USER: ASSISTANT: SYSTEM:",
                  "user: assistant: system:", "\n\n", "you are a helpful assistant ."]

# Special tokens of each family (named ones become tokenizer attributes such as ``image_token``).
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
QWEN_NAMED = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
              "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}
GEMMA3_NAMED = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
GEMMA3_TURNS = ["<start_of_turn>", "<end_of_turn>"]
IDEFICS_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
THINK_TAGS = ["<think>", "</think>"]
MLLAMA_TOKENS = ["<|image|>", "<|python_tag|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def family_tokenizer(extra_special_tokens: Sequence[str] = (), *, named_tokens: dict[str, str] | None = None,
                     add_bos: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the toy world's text, with ``<pad> <unk> <s> </s>`` and extras.

    Byte-level means every string round-trips and a word's token depends on the space before it
    (``"a"`` and ``" a"`` are different tokens), as in GPT-2, Llama-3 or Qwen tokenizers. As in the
    Llama-3 and Qwen pre-tokenizers, a run of newlines stays one piece even before a word, so a
    template's ``"\n\n"`` tokenizes the same whether or not a response follows it. The corpus
    is small, so training stops short of its 800-token target at about 440 tokens plus the specials.

    Args:
        extra_special_tokens: further special tokens (never split, skipped when decoding).
        named_tokens: special tokens exposed as tokenizer attributes, e.g. ``{"image_token": "<image>"}``
            gives ``tokenizer.image_token`` and ``tokenizer.image_token_id``.
        add_bos: make ``tokenizer(text)`` (``add_special_tokens=True``) prepend ``<s>``, as Gemma and
            Llama-3 tokenizers do; otherwise the tokenizer adds no special tokens at all.
    """
    named_tokens = dict(named_tokens or {})
    specials = [PAD, UNK, BOS, EOS]
    for token in [*extra_special_tokens, *named_tokens.values()]:
        if token not in specials:
            specials.append(token)
    raw = Tokenizer(models.BPE(unk_token=UNK))
    pieces = Regex(r" ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s*[\r\n]+|\s+(?!\S)|\s+")
    raw.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pieces, behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=800, min_frequency=1, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    raw.train_from_iterator(world_corpus() + TEMPLATE_WORDS, trainer=trainer)
    named = set(named_tokens.values())
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS,
        extra_special_tokens=[t for t in specials[4:] if t not in named], add_bos_token=add_bos,
        add_eos_token=False, padding_side="right", **named_tokens,
    )


# --------------------------------------------------------------------------------------------
# Chat templates. Each is one line of Jinja; ``render`` turns a message's content (a string, or a
# list of {"type": "image"} / {"type": "text", "text": ...} parts) into text, writing IMAGE for
# each image part.


def _render_macro(image: str) -> str:
    return ("{% macro render(content) %}{% if content is string %}{{ content }}{% else %}"
            "{% for part in content %}{% if part['type'] == 'image' %}" + image
            + "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
            "{% endif %}{% endmacro %}")


def _chatml(image: str) -> str:
    """``<|im_start|>role\\n...<|im_end|>\\n`` turns, generation prompt ``<|im_start|>assistant\\n``."""
    return (_render_macro(image)
            + "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ render(message['content']) }}"
            "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


#: LLaVA-1.5 / Vicuna style: "USER: <image>\n... ASSISTANT: answer</s>".
VICUNA_TEMPLATE = (
    _render_macro("<image>\n")
    + "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}ASSISTANT: {{ render(message['content']) }}</s>"
    "{% else %}{{ message['role'] | upper }}: {{ render(message['content']) }} {% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
QWEN_TEMPLATE = _chatml("<|vision_start|><|image_pad|><|vision_end|>")

#: Qwen3-VL "Thinking" style: the generation prompt opens a think block (``<|im_start|>assistant\n<think>\n``),
#: and the last assistant turn is written with its reasoning in one (an empty one when the message has
#: none), so a plain answer follows ``\n</think>\n\n``. A message that holds ``</think>`` (text
#: generated after the prompt's ``<think>``) is split there into the reasoning and the answer.
QWEN_THINKING_TEMPLATE = (
    _render_macro("<|vision_start|><|image_pad|><|vision_end|>")
    + "{% for message in messages %}{% set text = render(message['content']) %}"
    "{% if message['role'] == 'assistant' %}{% set thought = '' %}"
    "{% if '</think>' in text %}{% set thought = text.split('</think>')[0].rstrip('\n').split('<think>')[-1]"
    ".lstrip('\n') %}{% set text = text.split('</think>')[-1].lstrip('\n') %}{% endif %}"
    "<|im_start|>assistant\n{% if loop.last %}<think>\n{{ thought }}\n</think>\n\n{% endif %}{{ text }}<|im_end|>\n"
    "{% else %}<|im_start|>{{ message['role'] }}\n{{ text }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)

#: LLaVA-OneVision style: ChatML turns whose role is followed by a space, every image of a message
#: first, then each text part after a newline; the generation prompt has no space after the role,
#: so it is not a prefix of the template's own assistant turn (``assistant\n`` against ``assistant \n``).
ONEVISION_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }} "
    "{% if message['content'] is string %}{{ '\\n' + message['content'] }}{% else %}"
    "{% for part in message['content'] if part['type'] == 'image' %}<image>{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ '\\n' + part['text'] }}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: Gemma 3 style: the template renders BOS itself, has no system role (a system message is folded
#: into the first user turn), calls the assistant "model", writes an image as its BOI token, trims
#: every text, and ends each turn with ``<end_of_turn>`` (not the tokenizer's EOS).
GEMMA3_TEMPLATE = (
    _render_macro("<start_of_image>").replace("{{ content }}", "{{ content | trim }}")
    .replace("{{ part['text'] }}", "{{ part['text'] | trim }}")
    + "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = render(message['content']) + '\n\n' %}"
    "{% else %}<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{{ ns.system }}{% set ns.system = '' %}{{ render(message['content']) }}<end_of_turn>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

#: Llama-3.2-Vision style: BOS rendered by the template, header-delimited turns ended by <|eot_id|>.
MLLAMA_TEMPLATE = (
    _render_macro("<|image|>")
    + "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ render(message['content']) }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

#: Idefics3 / SmolVLM style: "<|im_start|>User:<image>text<end_of_utterance>\nAssistant: answer<end_of_utterance>\n".
#: The role is followed by ":" and, unless the content starts with an image, a space; so an assistant
#: answer is "Assistant: answer" while the generation prompt ends at "Assistant:" (no space).
IDEFICS_TEMPLATE = (
    _render_macro("<image>")
    + "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% if message['content'] is string or message['content'][0]['type'] != 'image' %} {% endif %}"
    "{{ render(message['content']) }}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)

#: Not a real PaliGemma convention (PaliGemma ships no chat template): every image first, then
#: "role: text\n" lines, generation prompt "assistant:". The processor puts BOS after the last <image>.
PALIGEMMA_CHAT_TEMPLATE = (
    _render_macro("")
    + "{% for message in messages %}{% if message['content'] is not string %}"
    "{% for part in message['content'] if part['type'] == 'image' %}<image>{% endfor %}{% endif %}"
    "{% endfor %}{% for message in messages %}{{ message['role'] }}: {{ render(message['content']) }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


# --------------------------------------------------------------------------------------------
# Processors without a video processor.
#
# The Qwen-VL, SmolVLM and LLaVA-OneVision processors have a ``video_processor`` slot, and every
# video processor needs torchvision, which is not installed here. ``video_processor=None`` is no
# way out: ``ProcessorMixin.__init__`` type-checks every slot its subclass's ``__init__`` names (None
# is not skipped), and without torchvision that check for the video slot cannot even find the
# video-processor base class (AttributeError). So each of these is subclassed with an
# ``__init__`` that does not name the slot (``ProcessorMixin`` finds the slots, and the settings that
# ``save_pretrained`` writes and ``from_pretrained`` passes back, from ``__init__``'s parameters): it
# then sees only an image processor and a tokenizer, and the family's own ``__init__`` runs
# unchanged, given ``video_processor=None``.
# ``save_pretrained`` records the subclass's name, so ``AutoProcessor.from_pretrained`` cannot
# rebuild these (it returns the bare tokenizer); ``type(processor).from_pretrained`` can. All
# image and text handling is the family's; only ``videos=`` is unsupported.


class Qwen2VLProcessorWithoutVideo(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` for images and text only: no video processor (that needs torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs)


class Qwen2_5_VLProcessorWithoutVideo(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` for images and text only: no video processor (that needs torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs)


class Qwen3VLProcessorWithoutVideo(Qwen3VLProcessor):
    """``Qwen3VLProcessor`` for images and text only: no video processor (that needs torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs)


class LlavaOnevisionProcessorWithoutVideo(LlavaOnevisionProcessor):
    """``LlavaOnevisionProcessor`` for images and text only: no video processor (that needs torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, num_image_tokens=None, vision_feature_select_strategy=None,
                 chat_template=None, image_token="<image>", video_token="<video>", vision_aspect_ratio="anyres_max_9",
                 **kwargs):
        super().__init__(image_processor, tokenizer, video_processor=None, num_image_tokens=num_image_tokens,
                         vision_feature_select_strategy=vision_feature_select_strategy, chat_template=chat_template,
                         image_token=image_token, video_token=video_token, vision_aspect_ratio=vision_aspect_ratio,
                         **kwargs)


class SmolVLMProcessorWithoutVideo(SmolVLMProcessor):
    """``SmolVLMProcessor`` for images and text only: no video processor (that needs torchvision)."""

    def __init__(self, image_processor, tokenizer, image_seq_len: int = 169, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, video_processor=None, image_seq_len=image_seq_len,
                         chat_template=chat_template, **kwargs)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        # SmolVLMProcessor's own only adds video-sampling defaults (num_frames, fps) read off its
        # video processor before calling ProcessorMixin's; without a video processor, call that.
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)


# --------------------------------------------------------------------------------------------
# Sizes shared by the tiny models.

TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 512}
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
MROPE_SECTION = [2, 3, 3]  # sums to head_dim / 2 = (64 / 4) / 2


def _special_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    return {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id}


def _text_kwargs(tokenizer: PreTrainedTokenizerFast) -> dict:
    return {**TEXT, "vocab_size": len(tokenizer), **_special_ids(tokenizer)}


def _llava():
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = family_tokenizer(named_tokens={"image_token": "<image>"})
    # 32x32 images, 8x8 patches: 16 patch features (+ CLS, which the "default" strategy drops).
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=VICUNA_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**VISION, image_size=32, patch_size=8, projection_dim=32),
        text_config=LlamaConfig(**_text_kwargs(tokenizer)), image_token_id=tokenizer.image_token_id,
        vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    return LlavaForConditionalGeneration, config, processor


def _llava_next():
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    tokenizer = family_tokenizer(named_tokens={"image_token": "<image>"})
    # "anyres": a 32x32 base view plus 32x32 tiles of the best-fitting grid below, 16x16 patches,
    # so 4 base features + 4 per tile (+ one newline feature per row of tile features).
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                   image_grid_pinpoints=pinpoints),
        tokenizer=tokenizer, patch_size=16, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=VICUNA_TEMPLATE,
    )
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(**VISION, image_size=32, patch_size=16, projection_dim=32),
        text_config=LlamaConfig(**_text_kwargs(tokenizer)), image_token_index=tokenizer.image_token_id,
        vision_feature_layer=-1, vision_feature_select_strategy="default", image_grid_pinpoints=pinpoints,
        image_seq_length=4,
    )
    return LlavaNextForConditionalGeneration, config, processor


def _llava_onevision():
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        Qwen2Config,
        SiglipVisionConfig,
    )

    tokenizer = family_tokenizer([IM_START, IM_END], named_tokens={"image_token": "<image>", "video_token": "<video>"})
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    processor = LlavaOnevisionProcessorWithoutVideo(
        image_processor=LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32},
                                                        image_grid_pinpoints=pinpoints),
        tokenizer=tokenizer, num_image_tokens=4, vision_feature_select_strategy="full",
        chat_template=ONEVISION_TEMPLATE,
    )
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**VISION, image_size=32, patch_size=16),
        text_config=Qwen2Config(**_text_kwargs(tokenizer)), image_token_index=tokenizer.image_token_id,
        video_token_index=tokenizer.video_token_id, vision_feature_layer=-1,
        vision_feature_select_strategy="full", image_grid_pinpoints=pinpoints,
    )
    return LlavaOnevisionForConditionalGeneration, config, processor


def _qwen(version: str, thinking: bool = False):
    from transformers import Qwen2VLImageProcessorPil

    tokenizer = family_tokenizer([IM_START, IM_END], named_tokens=QWEN_NAMED)
    if thinking:  # as in Qwen3's tokenizers, the think tags are added tokens but not special ones
        tokenizer.add_tokens(THINK_TAGS)
    patch = 16 if version == "3" else 14
    factor = patch * 2  # patch size times the 2x2 spatial merge
    # Dynamic resolution: images are resized to multiples of `factor` with between 4 and 16 merged
    # patches, e.g. a 56x56 or 64x64 image gives 4 image tokens.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=factor * factor * 4, max_pixels=factor * factor * 16,
                                               patch_size=patch, temporal_patch_size=2, merge_size=2)
    ids = {"image_token_id": tokenizer.image_token_id, "video_token_id": tokenizer.video_token_id,
           "vision_start_token_id": tokenizer.vision_start_token_id,
           "vision_end_token_id": tokenizer.vision_end_token_id}
    text = {**_text_kwargs(tokenizer), "rope_parameters": {"rope_type": "default", "mrope_section": MROPE_SECTION}}
    if version == "2":
        from transformers import (
            Qwen2VLConfig,
            Qwen2VLForConditionalGeneration,
            Qwen2VLTextConfig,
            Qwen2VLVisionConfig,
        )

        vision = Qwen2VLVisionConfig(depth=1, embed_dim=32, hidden_size=TEXT["hidden_size"], mlp_ratio=2,
                                     num_heads=2, patch_size=patch, spatial_merge_size=2, temporal_patch_size=2)
        config = Qwen2VLConfig(vision_config=vision, text_config=Qwen2VLTextConfig(**text), **ids)
        cls, processor_cls = Qwen2VLForConditionalGeneration, Qwen2VLProcessorWithoutVideo
    elif version == "2.5":
        from transformers import (
            Qwen2_5_VLConfig,
            Qwen2_5_VLForConditionalGeneration,
            Qwen2_5_VLTextConfig,
            Qwen2_5_VLVisionConfig,
        )

        vision = Qwen2_5_VLVisionConfig(depth=1, hidden_size=32, intermediate_size=64, num_heads=2,
                                        out_hidden_size=TEXT["hidden_size"], patch_size=patch, spatial_merge_size=2,
                                        temporal_patch_size=2, window_size=factor * 2, fullatt_block_indexes=[0])
        config = Qwen2_5_VLConfig(vision_config=vision, text_config=Qwen2_5_VLTextConfig(**text), **ids)
        cls, processor_cls = Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessorWithoutVideo
    else:
        from transformers import (
            Qwen3VLConfig,
            Qwen3VLForConditionalGeneration,
            Qwen3VLTextConfig,
            Qwen3VLVisionConfig,
        )

        vision = Qwen3VLVisionConfig(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                                     out_hidden_size=TEXT["hidden_size"], patch_size=patch, spatial_merge_size=2,
                                     temporal_patch_size=2, num_position_embeddings=16,
                                     deepstack_visual_indexes=[0])
        text["rope_parameters"]["mrope_interleaved"] = True
        config = Qwen3VLConfig(vision_config=vision, text_config=Qwen3VLTextConfig(**text, head_dim=16), **ids)
        cls, processor_cls = Qwen3VLForConditionalGeneration, Qwen3VLProcessorWithoutVideo
    processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer,
                              chat_template=QWEN_THINKING_TEMPLATE if thinking else QWEN_TEMPLATE)
    return cls, config, processor


def _gemma3():
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    tokenizer = family_tokenizer(GEMMA3_TURNS, named_tokens=GEMMA3_NAMED, add_bos=True)
    # 32x32 images, 8x8 patches: a 4x4 grid of features, average-pooled to 2x2 = 4 image tokens.
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": 32, "width": 32}),
                                tokenizer=tokenizer, image_seq_length=4, chat_template=GEMMA3_TEMPLATE)
    text = Gemma3TextConfig(**_text_kwargs(tokenizer), head_dim=16, query_pre_attn_scalar=16, sliding_window=512,
                            layer_types=["sliding_attention", "full_attention"])
    config = Gemma3Config(
        vision_config=SiglipVisionConfig(**VISION, image_size=32, patch_size=8), text_config=text,
        mm_tokens_per_image=4, boi_token_index=tokenizer.boi_token_id, eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id,
    )
    return Gemma3ForConditionalGeneration, config, processor


def _paligemma(chat: bool):
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessorPil,
        SiglipVisionConfig,
    )

    tokenizer = family_tokenizer(named_tokens={"image_token": "<image>"})
    # 32x32 images, 8x8 patches: 16 image tokens. The processor reads ``image_seq_length`` off its
    # image processor, and adds PaliGemma's 1024 <locXXXX> and 128 <segXXX> tokens to the tokenizer.
    image_processor = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    image_processor.image_seq_length = 16
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                   chat_template=PALIGEMMA_CHAT_TEMPLATE if chat else None)
    text = GemmaConfig(**_text_kwargs(tokenizer), head_dim=16)
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(**VISION, image_size=32, patch_size=8, projection_dim=TEXT["hidden_size"]),
        text_config=text, image_token_index=tokenizer.image_token_id, vocab_size=len(tokenizer),
        projection_dim=TEXT["hidden_size"], hidden_size=TEXT["hidden_size"],
    )
    return PaliGemmaForConditionalGeneration, config, processor


def _idefics(smol: bool):
    from transformers import LlamaConfig

    tokenizer = family_tokenizer([IM_START, *IDEFICS_TOKENS])
    # Crops of 32x32 pixels, 8x8 patches, pixel-shuffled by 2: 4 image tokens per crop. Images are
    # resized to a longest edge of 64 and split into up to 2x2 crops plus a global view.
    image_kwargs = {"size": {"longest_edge": 64}, "max_image_size": {"longest_edge": 32}}
    vision = {**VISION, "image_size": 32, "patch_size": 8}
    text = LlamaConfig(**_text_kwargs(tokenizer))
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    if smol:
        from transformers import (
            SmolVLMConfig,
            SmolVLMForConditionalGeneration,
            SmolVLMImageProcessorPil,
            SmolVLMVisionConfig,
        )

        # SmolVLMProcessor.__init__ raises ImportError unless the num2words package is installed.
        processor = SmolVLMProcessorWithoutVideo(image_processor=SmolVLMImageProcessorPil(**image_kwargs),
                                                 tokenizer=tokenizer, image_seq_len=4, chat_template=IDEFICS_TEMPLATE)
        config = SmolVLMConfig(vision_config=SmolVLMVisionConfig(**vision), text_config=text, scale_factor=2,
                               image_token_id=image_token_id)
        return SmolVLMForConditionalGeneration, config, processor
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        Idefics3VisionConfig,
    )

    processor = Idefics3Processor(image_processor=Idefics3ImageProcessorPil(**image_kwargs), tokenizer=tokenizer,
                                  image_seq_len=4, chat_template=IDEFICS_TEMPLATE)
    config = Idefics3Config(vision_config=Idefics3VisionConfig(**vision), text_config=text, scale_factor=2,
                            image_token_id=image_token_id)
    return Idefics3ForConditionalGeneration, config, processor


def _mllama():
    from transformers import (
        MllamaConfig,
        MllamaForConditionalGeneration,
        MllamaImageProcessorPil,
        MllamaProcessor,
        MllamaTextConfig,
        MllamaVisionConfig,
    )
    from transformers.models.mllama.image_processing_pil_mllama import get_all_supported_aspect_ratios

    tokenizer = family_tokenizer(MLLAMA_TOKENS, named_tokens={"image_token": "<|image|>"}, add_bos=True)
    # Tiles of 32x32 pixels, up to 2 tiles an image; one <|image|> token per image, which the text
    # model attends to through its cross-attention layer (layer 1) via ``cross_attention_mask``.
    processor = MllamaProcessor(
        image_processor=MllamaImageProcessorPil(size={"height": 32, "width": 32}, max_image_tiles=2),
        tokenizer=tokenizer, chat_template=MLLAMA_TEMPLATE,
    )
    vision = MllamaVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1, attention_heads=2,
        image_size=32, patch_size=8, max_num_tiles=2, intermediate_layers_indices=[0], vision_output_dim=64,
        supported_aspect_ratios=[list(r) for r in get_all_supported_aspect_ratios(2)],
    )
    text = MllamaTextConfig(**_text_kwargs(tokenizer), cross_attention_layers=[1])
    config = MllamaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.image_token_id)
    return MllamaForConditionalGeneration, config, processor


BUILDERS: dict[str, Callable[[], tuple]] = {
    "llava": _llava,
    "llava_next": _llava_next,
    "llava_onevision": _llava_onevision,
    "qwen2_vl": lambda: _qwen("2"),
    "qwen2_5_vl": lambda: _qwen("2.5"),
    "qwen3_vl": lambda: _qwen("3"),
    "qwen3_vl_thinking": lambda: _qwen("3", thinking=True),
    "gemma3": _gemma3,
    "paligemma": lambda: _paligemma(chat=False),
    "paligemma_chat": lambda: _paligemma(chat=True),
    "idefics3": lambda: _idefics(smol=False),
    "smolvlm": lambda: _idefics(smol=True),
    "mllama": _mllama,
}


def build_family(name: str, seed: int = 0) -> tuple[torch.nn.Module, ProcessorMixin]:
    """A tiny random model of family ``name`` and its processor, consistent with each other.

    ``name`` is one of :data:`FAMILIES` or :data:`VARIANTS`. The model is float32, in eval mode,
    with its generation config's pad/bos/eos ids set to the tokenizer's.
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown family {name!r}; expected one of {', '.join(BUILDERS)}")
    model_cls, config, processor = BUILDERS[name]()
    tokenizer = processor.tokenizer
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, processor
