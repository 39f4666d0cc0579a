"""The policy's forward pass over a collated batch, giving response-aligned log-probs ``(R, L)``.

Two row layouts reach it (:mod:`mmpo.data.collator`):

* **one row per response**: ``[image + prompt, response]``, right-padded;
* **prefix-shared**: ``[image + prompt, chosen, rejected]`` in one row per record
  (:meth:`~mmpo.data.collator.RowEncoder.encode_shared`). The image and prompt are encoded and run
  through the model once instead of once per response. The row runs with a block attention mask
  (a response attends to the prompt and to its own earlier tokens, never to another response) and
  position ids that restart each response where the prompt ends, so every response token sees
  exactly what it would see in a row of its own: the log-probs are the same up to float rounding.

Either way the LM head runs only from the first position whose logits a response needs
(``logits_to_keep``), never over the image tokens, and the log-softmax only at response positions.
The batch carries the Python ints this needs, so the pass makes no host-device sync.

Prefix sharing needs a model that takes a custom 4-D mask and explicit position ids:
:func:`prefix_sharing_problem` says why a model cannot (the trainer then uses one row per response
and logs that line). Qwen-VL's M-RoPE positions are the model's own, computed on the whole row and
shifted back for the tokens after the first response (text positions advance by one in every
axis, so the shift is exact); PaliGemma's bidirectional prefix is part of the mask.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

#: Families whose attention masks are built inside the model in ways a single 4-D mask cannot carry.
UNSHAREABLE: dict[str, str] = {
    "gemma3": "Gemma 3 builds its own masks per layer type (sliding-window layers; image tokens attend "
              "bidirectionally)",
}
#: Attention implementations that take a custom 4-D mask as it is.
MASKABLE_ATTENTION = ("eager", "sdpa")
#: Families whose prompt (prefix) attends bidirectionally, responses causally.
BIDIRECTIONAL_PREFIX = ("paligemma",)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under its wrappers: DDP / FSDP / DeepSpeed (``.module``) and peft."""
    while True:
        inner = getattr(model, "module", None)
        if isinstance(inner, torch.nn.Module):
            model = inner
        elif hasattr(model, "get_base_model"):
            return model.get_base_model()
        else:
            return model


def model_type(model: torch.nn.Module) -> str:
    return getattr(getattr(unwrap(model), "config", None), "model_type", "") or ""


def attention_implementation(model: torch.nn.Module) -> str:
    """The language model's attention implementation (a VLM's text config decides for its decoder)."""
    config = getattr(unwrap(model), "config", None)
    text = getattr(config, "text_config", None) or config
    return getattr(text, "_attn_implementation", None) or getattr(config, "_attn_implementation", None) or "eager"


def prefix_sharing_problem(model: torch.nn.Module) -> str | None:
    """Why ``model`` cannot run prefix-shared rows exactly, or None when it can."""
    kind = model_type(model)
    if kind in UNSHAREABLE:
        return UNSHAREABLE[kind]
    attention = attention_implementation(model)
    if attention not in MASKABLE_ATTENTION:
        return (f"attn_implementation={attention!r} takes no custom 4-D attention mask "
                f"(use one of {', '.join(MASKABLE_ATTENTION)})")
    if "position_ids" not in inspect.signature(unwrap(model).forward).parameters:
        return f"{type(unwrap(model)).__name__}.forward takes no position_ids"
    return None


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(unwrap(model).forward).parameters


def policy_response_logps(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass over a collated batch; response-aligned log-probs and their mask ``(R, L)``.

    Only ``batch["model_inputs"]`` (plus, for prefix-shared rows, the mask and position ids built
    here) reaches the model.
    """
    inputs = dict(batch["model_inputs"])
    input_ids = inputs["input_ids"]  # (N, T)
    T = input_ids.shape[1]
    shared = "segment_ids" in batch
    if shared:
        segments = batch["segment_ids"]  # (N, T)
        inputs["attention_mask"] = block_attention_mask(
            segments, dtype=_float_dtype(model), attention=attention_implementation(model),
            bidirectional_prefix=model_type(model) in BIDIRECTIONAL_PREFIX)
        inputs["position_ids"] = packed_position_ids(model, inputs, segments, batch["position_ids"])
    logits_from = int(batch.get("logits_from", 0))
    keep = {"logits_to_keep": T - logits_from} if logits_from > 0 and accepts_logits_to_keep(model) else {}
    logits = model(**inputs, use_cache=False, **keep).logits  # (N, K, V)
    offset = T - logits.shape[1]
    width = batch.get("response_width")
    lengths = batch["response_length"]  # (R,)
    L = int(lengths.max()) if width is None else int(width)
    steps = torch.arange(L, device=input_ids.device)  # (L,)
    mask = steps.unsqueeze(0) < lengths.unsqueeze(1)  # (R, L)
    if shared:
        rows, tokens, predictors = batch["response_row"], batch["response_tokens"], batch["response_logit_index"]
    else:
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        tokens = (batch["response_start"].unsqueeze(1) + steps).clamp(max=T - 1)  # (R, L)
        predictors = tokens - 1
    targets = torch.gather(input_ids[rows], 1, tokens)  # (R, L)
    return gathered_logprobs(logits, rows, (predictors - offset).clamp(0, logits.shape[1] - 1), targets, mask), mask


def gathered_logprobs(logits: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits[rows[r], positions[r, j]])[targets[r, j]]`` where ``mask``, else 0.

    Args:
        logits: ``(N, K, V)``.
        rows: ``(R,)`` the row of ``logits`` each output row reads.
        positions / targets / mask: ``(R, L)``.

    Returns:
        ``(R, L)`` float32. The normaliser is computed once per kept position, ``(N, K)``, and only
        scalars are gathered: copying ``(R, L, V)`` logits out first, and scattering their gradient
        back into a zero ``(N, K, V)`` tensor, made this 25-30% slower at a 32k vocabulary.
    """
    index = (rows.unsqueeze(1), positions)  # (R, L) each, broadcast
    normaliser = torch.logsumexp(logits.float(), dim=-1)  # (N, K)
    picked = logits[(*index, targets)].float()  # (R, L)
    return (picked - normaliser[index]).masked_fill(~mask, 0.0)


def block_attention_mask(segments: torch.Tensor, *, dtype: torch.dtype, attention: str,
                         bidirectional_prefix: bool = False) -> torch.Tensor:
    """The 4-D attention mask of prefix-shared rows.

    Token ``q`` attends to token ``k <= q`` of the prompt (segment 0) or of its own segment. With
    ``bidirectional_prefix`` the prompt's tokens also attend to the whole prompt (PaliGemma).
    Padding (segment -1) attends only to itself, so no softmax row is empty.

    Args:
        segments: ``(N, T)`` segment ids.
        dtype: the model's float dtype (eager attention adds the mask to its scores).
        attention: the attention implementation: ``"sdpa"`` takes a boolean mask, ``"eager"`` an
            additive one (0 or the dtype's minimum).

    Returns:
        ``(N, 1, T, T)``.
    """
    T = segments.shape[1]
    q, k = segments.unsqueeze(2), segments.unsqueeze(1)  # (N, T, 1), (N, 1, T)
    index = torch.arange(T, device=segments.device)
    causal = index.view(T, 1) >= index.view(1, T)  # (T, T)
    allowed = causal & (k >= 0) & (q >= 0) & ((k == 0) | (k == q))  # (N, T, T)
    if bidirectional_prefix:
        allowed = allowed | ((q == 0) & (k == 0))
    allowed = allowed | (torch.eye(T, dtype=torch.bool, device=segments.device) & (q < 0))
    allowed = allowed.unsqueeze(1)  # (N, 1, T, T)
    if attention == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill(~allowed,
                                                                                      torch.finfo(dtype).min)


def packed_position_ids(model: torch.nn.Module, inputs: dict[str, Any], segments: torch.Tensor,
                        positions: torch.Tensor) -> torch.Tensor:
    """Position ids of prefix-shared rows: ``positions`` (each response continuing the prompt), or
    for M-RoPE models (Qwen-VL) the model's own 3-D positions of the whole row shifted back by the
    tokens of the earlier responses of the row."""
    rope = next((m for m in unwrap(model).modules() if hasattr(m, "compute_3d_position_ids")), None)
    if rope is None:
        return positions
    index = torch.arange(segments.shape[1], device=segments.device)
    valid = (segments >= 0).long()  # (N, T)
    accepted = inspect.signature(rope.compute_3d_position_ids).parameters
    kwargs = {key: inputs.get(key) for key in ("image_grid_thw", "video_grid_thw", "mm_token_type_ids",
                                               "second_per_grid_ts") if key in accepted}
    saved = getattr(rope, "rope_deltas", None)
    try:
        rope.rope_deltas = None
        whole = rope.compute_3d_position_ids(input_ids=inputs["input_ids"], inputs_embeds=None,
                                             attention_mask=valid, cache=None, **kwargs)
    finally:
        rope.rope_deltas = saved
    if whole is None:  # no image in the batch: the model would use 1-D positions
        return positions
    shift = (index.unsqueeze(0) - positions) * valid  # (N, T): tokens of earlier responses in the row
    return whole - shift.unsqueeze(0)


def _float_dtype(model: torch.nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
