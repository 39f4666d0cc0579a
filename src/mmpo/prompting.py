"""How an (image, prompt) pair reaches a transformers processor, the same way for training and generation.

Three things differ between VLM families and are easy to get silently wrong:

* **The prompt text.** Most processors carry a chat template; some (PaliGemma as shipped) have none
  and take a plain prefix. ``prompt_format="auto"`` uses the chat template when there is one and the
  plain path otherwise: the image placeholder followed by the prompt text, and the processor adds its
  own framing (PaliGemma: BOS after the image tokens and a newline).
* **Special tokens.** Templates of Gemma 3, Llama 3.2 Vision (Mllama) and others render BOS
  themselves; calling the processor with its default ``add_special_tokens=True`` would then add a
  second one. A text that already starts with the tokenizer's BOS is encoded without adding special
  tokens (the rule transformers' own ``apply_chat_template(tokenize=True)`` follows).
* **Images.** Processors that tile or count images per sample (Idefics3, SmolVLM, Gemma 3, Mllama)
  need one list of images per row; every processor accepts that nesting, so it is always used.

Images are read with :func:`mmpo.io.load_image`. Only :mod:`mmpo.io` and :mod:`mmpo.types` are imported, so
data, training, evaluation and generation can all depend on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .io import load_image
from .types import ImageRef, Prompt, prompt_messages

PROMPT_FORMATS = ("auto", "chat", "plain")

#: Processors that frame the prompt themselves and take the response as a separately tokenised
#: suffix (PaliGemma's prefix/suffix convention): the response is tokenised on its own, and
#: ``token_type_ids`` mark it with 1 (causal) against the bidirectional prefix's 0.
SUFFIX_PROCESSORS = ("PaliGemmaProcessor",)


def tokenizer_of(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def chat_template_of(processor: Any) -> str | None:
    return getattr(processor, "chat_template", None) or getattr(tokenizer_of(processor), "chat_template", None)


def uses_suffix_convention(processor: Any) -> bool:
    """True for processors (PaliGemma) whose responses are a separately tokenised suffix."""
    return any(cls.__name__ in SUFFIX_PROCESSORS for cls in type(processor).__mro__)


def resolve_prompt_format(processor: Any, prompt_format: str = "auto") -> str:
    """``"chat"`` or ``"plain"``: what ``prompt_format`` means for this processor."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, not {prompt_format!r}")
    if prompt_format == "auto":
        return "chat" if chat_template_of(processor) else "plain"
    if prompt_format == "chat" and not chat_template_of(processor):
        raise ValueError(f"prompt_format='chat' but {type(processor).__name__} has no chat template; set one "
                         "(processor.chat_template = ...) or use prompt_format='plain'")
    return prompt_format


def image_placeholder(processor: Any) -> str:
    token = getattr(processor, "image_token", None) or getattr(tokenizer_of(processor), "image_token", None)
    if not token:
        raise ValueError(f"{type(processor).__name__} names no image token, so a plain prompt cannot place the "
                         "image; give it a chat template or write the placeholder into the prompt text")
    return token


def render_prompt(processor: Any, prompt: Prompt, prompt_format: str = "auto") -> str:
    """The prompt as text for ``processor``, ready for the response to follow.

    ``"chat"``: the processor's chat template with the generation prompt. ``"plain"``: the prompt
    text after the image placeholder (kept where the text already holds one); a conversation
    (list of turns) needs a chat template and is an error here.
    """
    if resolve_prompt_format(processor, prompt_format) == "chat":
        return processor.apply_chat_template(prompt_messages(prompt), add_generation_prompt=True, tokenize=False)
    if not isinstance(prompt, str):
        raise ValueError(f"{type(processor).__name__} has no chat template, so a conversational prompt (a list of "
                         "turns) cannot be rendered; give plain-text prompts or set a chat template")
    placeholder = image_placeholder(processor)
    if placeholder in prompt:
        return prompt
    separator = "" if uses_suffix_convention(processor) else "\n"
    return placeholder + separator + prompt


#: Stands in for a response while the chat template renders an assistant turn; plain lower-case
#: letters, so no template trims or escapes it.
_PROBE = "mmpoprobe"


def response_lead(processor: Any, prompt_format: str = "auto") -> str:
    """The text a chat template puts between the generation prompt and an assistant turn's content.

    Idefics3 and SmolVLM render ``"Assistant:"`` as the generation prompt but ``"Assistant: text"``
    in a conversation, so a response tokenised straight after the prompt would start with ``A``
    where the model saw `` A`` in training. The lead is found by rendering a probe conversation
    both ways; it is ``""`` for the plain path, for suffix-convention processors and for templates
    that do not extend their own generation prompt.
    """
    if uses_suffix_convention(processor) or resolve_prompt_format(processor, prompt_format) != "chat":
        return ""
    messages = prompt_messages("x")
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    for content in ([{"type": "text", "text": _PROBE}], _PROBE):
        try:
            full = processor.apply_chat_template(messages + [{"role": "assistant", "content": content}],
                                                 add_generation_prompt=False, tokenize=False)
        except Exception:  # a template that rejects this content form; try the other one
            continue
        if full.startswith(prompt) and _PROBE in full[len(prompt):]:
            return full[len(prompt):].split(_PROBE, 1)[0]
    return ""


def encode_inputs(processor: Any, images: Sequence[ImageRef], texts: Sequence[str], padding_side: str = "right",
                  **kwargs: Any) -> Any:
    """``processor(images=[[image] per row], text=texts, padding=True, return_tensors="pt")``.

    Texts that already begin with BOS (rendered by the template) are encoded without special
    tokens, so no row starts with two. The tokenizer's padding side is restored afterwards, and a
    ``labels`` output (PaliGemma's) is dropped.
    """
    tokenizer = tokenizer_of(processor)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and all(t.startswith(bos) for t in texts):
        kwargs.setdefault("add_special_tokens", False)
    side = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        encoded = processor(images=[[load_image(i)] for i in images], text=list(texts), return_tensors="pt",
                            padding=True, **kwargs)
    finally:
        tokenizer.padding_side = side
    # PaliGemma's processor also returns prompt-only ``labels`` (all -100): not a model input here.
    encoded.pop("labels", None)
    return encoded
