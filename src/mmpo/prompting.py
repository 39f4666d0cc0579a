"""How an (image, prompt) pair reaches a transformers processor, the same way for training and generation.

Four things differ between VLM families and are easy to get silently wrong:

* **The prompt text.** Most processors carry a chat template; some (PaliGemma as shipped) have none
  and take a plain prefix. ``prompt_format="auto"`` uses the chat template when there is one and the
  plain path otherwise: the image placeholder followed by the prompt text, and the processor adds its
  own framing (PaliGemma: BOS after the image tokens and a newline).
* **Special tokens.** Templates of Gemma 3, Llama 3.2 Vision (Mllama) and others render BOS
  themselves; calling the processor with its default ``add_special_tokens=True`` would then add a
  second one. A text that already starts with the tokenizer's BOS is encoded without adding special
  tokens (the rule transformers' own ``apply_chat_template(tokenize=True)`` follows).
* **Images.** Processors that tile or count images per sample (Idefics3, SmolVLM, Gemma 3, Mllama)
  need one list of images per row; every processor accepts that nesting, so it is always used. A
  row may hold several images (a plain-text prompt then takes them all before its text).
* **The assistant turn.** What a template writes around a response (the end-of-turn token, a lead
  such as a Thinking template's empty think block, trimming) is read off the template itself:
  :class:`AssistantTurn`, :func:`assistant_turn`, :func:`rendered_response`.

Images are read with :func:`mmpo.io.load_image`. Only :mod:`mmpo.io` and :mod:`mmpo.types` are imported, so
data, training, evaluation and generation can all depend on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .io import load_image
from .types import Images, Prompt, image_list, prompt_messages

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


def render_prompt(processor: Any, prompt: Prompt, prompt_format: str = "auto", n_images: int = 1) -> str:
    """The prompt as text for ``processor``, ready for the response to follow.

    ``"chat"``: the processor's chat template with the generation prompt (a plain-text prompt is one
    user turn with its ``n_images`` images first). ``"plain"``: the prompt text after one image
    placeholder per image (kept where the text already holds them); a conversation (list of turns)
    needs a chat template and is an error here.
    """
    if resolve_prompt_format(processor, prompt_format) == "chat":
        return processor.apply_chat_template(prompt_messages(prompt, n_images), add_generation_prompt=True,
                                             tokenize=False)
    if not isinstance(prompt, str):
        raise ValueError(f"{type(processor).__name__} has no chat template, so a conversational prompt (a list of "
                         "turns) cannot be rendered; give plain-text prompts or set a chat template")
    placeholder = image_placeholder(processor)
    if placeholder in prompt:
        return prompt
    separator = "" if uses_suffix_convention(processor) else "\n"
    return placeholder * n_images + separator + prompt


#: Stands in for a response while the chat template renders an assistant turn; plain lower-case
#: letters, so no template trims or escapes it.
_PROBE = "mmpoprobe"


@dataclass(frozen=True)
class AssistantTurn:
    """How a processor's chat template writes an assistant turn, read off the template itself.

    A template is rendered twice on a probe conversation (one user turn, then one assistant turn
    with a known text), and the pieces around the known text are kept:

    * ``header``: what the template writes before an assistant message's content
      (``"<|im_start|>assistant\\n"``; Qwen3 "Thinking": ``"<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n"``).
    * ``generation_prompt``: what ``add_generation_prompt=True`` appends to the conversation, which is
      where generation, and so every response, starts.
    * ``lead``: ``header`` less ``generation_prompt``, the text the template puts between the generation
      prompt and the content: ``" "`` for Idefics3 and SmolVLM (``"Assistant:"`` then ``"Assistant: text"``),
      ``"\\n</think>\\n\\n"`` for Qwen3 Thinking (an empty think block closed after the prompt's
      ``<think>``), ``""`` for most. It belongs to the input, never to the scored response.
    * ``end``: how the response ends: the template's text after the content up to and including its
      first special token (``"<|im_end|>"``, ``"<end_of_turn>"``, ``"<end_of_utterance>"``,
      ``"<|eot_id|>"``), the token generation stops at; where the template writes no special token
      after the content, the tokenizer's EOS (``end_source`` says which).
    * ``mismatch``: ``None``, or a sentence naming how the generation prompt differs from the
      template's own assistant header (LLaVA-OneVision: ``"assistant\\n"`` against ``"assistant \\n"``).
      mmpo then follows the generation prompt, which is what the model sees when it generates.

    Without a chat template (the plain path) and under PaliGemma's suffix convention, the header,
    prompt and lead are empty and the response ends with EOS.
    """

    header: str = ""
    generation_prompt: str = ""
    lead: str = ""
    after: str = ""
    end: str = ""
    end_source: str = "eos"
    mismatch: str | None = None
    #: how the template takes an assistant message's content: ``"parts"`` (a list of text parts),
    #: ``"string"``, or ``None`` where it could not render the probe (the response is then used as is)
    content_form: str | None = None

    def describe(self) -> str:
        """One line for the log: how responses end and what comes before them."""
        if self.end_source == "template":
            how = f"responses end with {self.end!r}, as the chat template ends an assistant turn"
        elif self.end:
            how = f"responses end with the tokenizer's EOS {self.end!r} (the chat template writes no end-of-turn token)"
        else:
            how = "responses end without an end token (the tokenizer has no EOS)"
        return how + (f"; the template's lead {self.lead!r} is part of the prompt" if self.lead.strip() else "")


def _assistant_message(text: str, form: str) -> dict[str, Any]:
    content = [{"type": "text", "text": text}] if form == "parts" else text
    return {"role": "assistant", "content": content}


def assistant_turn(processor: Any, prompt_format: str = "auto") -> AssistantTurn:
    """The :class:`AssistantTurn` of ``processor``'s chat template (see there)."""
    tokenizer = tokenizer_of(processor)
    eos = getattr(tokenizer, "eos_token", None) or ""
    if uses_suffix_convention(processor) or resolve_prompt_format(processor, prompt_format) != "chat":
        return AssistantTurn(end=eos)
    messages = prompt_messages("x")
    generation = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    conversation = processor.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    for form in ("parts", "string"):
        try:
            full = processor.apply_chat_template(messages + [_assistant_message(_PROBE, form)],
                                                 add_generation_prompt=False, tokenize=False)
        except Exception:  # a template that rejects this content form; try the other one
            continue
        if full.startswith(conversation) and full.count(_PROBE) == 1:
            break
    else:
        return AssistantTurn(end=eos, mismatch="the chat template does not render an assistant message after its "
                                               "own conversation, so responses follow the generation prompt as given")
    header, after = full[len(conversation):].split(_PROBE)
    prompt = generation[len(conversation):] if generation.startswith(conversation) else generation
    if generation.startswith(conversation) and header.startswith(prompt):
        lead, mismatch = header[len(prompt):], None
    else:
        lead, mismatch = "", (f"the chat template's generation prompt ends {prompt[-40:]!r} but it writes an assistant "
                              f"turn as {header[-40:]!r}; mmpo follows the generation prompt (what the model sees "
                              "when it generates)")
    end, source = _turn_end(tokenizer, after)
    return AssistantTurn(header=header, generation_prompt=prompt, lead=lead, after=after,
                         end=end if source == "template" else eos, end_source=source, mismatch=mismatch,
                         content_form=form)


def _turn_end(tokenizer: Any, after: str) -> tuple[str, str]:
    """``after`` up to and including its first special token, and ``"template"``; or ``("", "eos")``."""
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    specials |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    hits = [(after.find(token), -len(token), token) for token in specials if token and token in after]
    if not hits:
        return "", "eos"
    position, _, token = min(hits)
    return after[: position + len(token)], "template"


def rendered_response(processor: Any, turn: AssistantTurn, prompt: Prompt, prompt_text: str,
                      response: str, n_images: int = 1) -> tuple[str, str]:
    """``(lead, content)``: how the chat template writes ``response`` after ``prompt_text`` (the prompt
    rendered with its generation prompt).

    The conversation with ``response`` as the assistant's message is rendered, and the text between
    the generation prompt and the end of the turn is split into the lead and the content. So the
    response is trained as the template would show it: trimmed where the template trims (Gemma 3),
    and a response that already holds a reasoning block (``"...</think>\\n\\nanswer"``, generated after a
    Thinking template's ``<think>``) gets no second ``</think>``: its lead is then ``""``. Where the
    template cannot render it so, the response is used as is after ``turn.lead``.
    """
    if turn.content_form is None or not prompt_text.endswith(turn.generation_prompt):
        return turn.lead, response
    conversation = prompt_text[: len(prompt_text) - len(turn.generation_prompt)]
    try:
        messages = prompt_messages(prompt, n_images) + [_assistant_message(response, turn.content_form)]
        full = processor.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    except Exception:
        return turn.lead, response
    if not (full.startswith(conversation) and full.endswith(turn.after)):
        return turn.lead, response
    text = full[len(conversation): len(full) - len(turn.after)]
    if text.startswith(turn.header):
        return turn.lead, text[len(turn.header):]
    if turn.mismatch is None and text.startswith(turn.generation_prompt):
        return "", text[len(turn.generation_prompt):]
    return turn.lead, response


def encode_inputs(processor: Any, images: Sequence[Images], texts: Sequence[str], padding_side: str = "right",
                  **kwargs: Any) -> Any:
    """``processor(images=[[images of the row] per row], text=texts, padding=True, return_tensors="pt")``;
    a row's images are one image or a list of several (:func:`mmpo.types.image_list`).

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
        encoded = processor(images=[[load_image(i) for i in image_list(row)] for row in images], text=list(texts),
                            return_tensors="pt", padding=True, **kwargs)
    finally:
        tokenizer.padding_side = side
    # PaliGemma's processor also returns prompt-only ``labels`` (all -100): not a model input here.
    encoded.pop("labels", None)
    return encoded
