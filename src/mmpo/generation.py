"""Batched greedy generation with any processor-based transformers VLM (e.g. LLaVA)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mmpo.prompting import assistant_turn, encode_inputs, render_prompt
from mmpo.types import Images, Prompt, image_list

from . import progress


def generate_responses(
    model: Any,
    processor: Any,
    images: Sequence[Images],
    prompts: Sequence[Prompt] | str,
    *,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    prompt_format: str = "auto",
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> list[str]:
    """Greedy (or sampled) responses of ``model`` to ``(image, prompt)`` pairs, one string per image.

    Each prompt is rendered and encoded as in training (:func:`mmpo.prompting.render_prompt` and
    :func:`mmpo.prompting.encode_inputs`: chat template or plain prefix, one BOS, one image list per
    row) under *left* padding (so every row's last prompt token sits at the end, where generation
    continues), decoded without special tokens from the first generated position on, and stripped.
    Generation stops at the model's EOS and at the token that ends the chat template's assistant
    turn (:func:`stop_token_ids`), the token training ends each response with.

    The tokenizer's ``padding_side`` and the model's train/eval mode are restored afterwards, also on
    error.

    Args:
        model: a ``generate``-capable VLM (e.g. ``LlavaForConditionalGeneration``).
        processor: its processor (e.g. ``LlavaProcessor``).
        images: one image (PIL image or path) per request, or a list of several.
        prompts: one prompt per image, or one string used for every image.
        batch_size: requests per ``generate`` call.
        max_new_tokens: generation length limit.
        prompt_format: ``"auto"``, ``"chat"`` or ``"plain"`` (see :mod:`mmpo.prompting`).
        do_sample: sample with ``temperature`` and ``top_p`` instead of decoding greedily (seed
            torch's generator first for reproducible samples).
        temperature, top_p: the sampling settings (used only with ``do_sample``).

    Returns:
        ``len(images)`` stripped responses, in input order.
    """
    if isinstance(prompts, str):
        prompts = [prompts] * len(images)
    if len(prompts) != len(images):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    tokenizer = processor.tokenizer
    texts = [render_prompt(processor, prompt, prompt_format, len(image_list(image)))
             for prompt, image in zip(prompts, images, strict=True)]
    stop = stop_token_ids(model, processor, prompt_format)
    was_training = model.training
    responses: list[str] = []
    model.eval()
    try:
        with torch.no_grad(), progress.bar(total=len(texts), desc="generate") as bar:
            for start in range(0, len(texts), batch_size):
                batch_texts = texts[start:start + batch_size]
                inputs = encode_inputs(processor, images[start:start + batch_size], batch_texts, padding_side="left")
                # floating tensors (pixel_values) take the model's dtype; ids and masks keep theirs
                inputs = inputs.to(model.device, dtype=model.dtype)
                extra = {} if tokenizer.pad_token_id is None else {"pad_token_id": tokenizer.pad_token_id}
                if stop:
                    extra["eos_token_id"] = stop
                if do_sample:
                    extra.update(temperature=temperature, top_p=top_p, top_k=0)
                output = model.generate(**inputs, do_sample=do_sample, max_new_tokens=max_new_tokens, **extra)
                new_tokens = output[:, inputs["input_ids"].shape[1]:]  # (B, T_new)
                responses += [r.strip() for r in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
                bar.update(len(batch_texts))
    finally:
        model.train(was_training)
    return responses


def stop_token_ids(model: Any, processor: Any, prompt_format: str = "auto") -> list[int]:
    """The model's EOS ids (its generation config's, else the tokenizer's) and the id of the token that
    ends the chat template's assistant turn (:class:`mmpo.prompting.AssistantTurn`), e.g. Gemma 3's
    ``<end_of_turn>``; ``[]`` where that adds nothing to the model's own setting."""
    turn = assistant_turn(processor, prompt_format)
    if turn.end_source != "template":
        return []
    tokenizer = processor.tokenizer
    own = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if own is None:
        own = tokenizer.eos_token_id
    ids = [] if own is None else ([own] if isinstance(own, int) else list(own))
    end = tokenizer(turn.end, add_special_tokens=False)["input_ids"][-1]
    return [] if end in ids else ids + [end]
