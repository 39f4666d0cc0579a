"""The policy's forward pass over a collated batch, giving response-aligned log-probs ``(R, L)``.

Three row layouts reach it (:mod:`mmpo.data.collator`):

* **one row per response**: ``[image + prompt, response]``, right-padded;
* **prefix-shared**: ``[image + prompt, chosen, rejected]`` in one row per record
  (:meth:`~mmpo.data.collator.RowEncoder.encode_shared`). The image and prompt are encoded and run
  through the model once instead of once per response. The row runs with a block attention mask
  (a response attends to the prompt and to its own earlier tokens, never to another response) and
  position ids that restart each response where the prompt ends, so every response token sees
  exactly what it would see in a row of its own: the log-probs are the same up to float rounding;
* **packed**: several such rows ("documents", or one response each without sharing) in one row
  up to a token budget, each attending only within itself (``document_ids``), positions restarting.

The mask of the last two is a dense 4-D tensor under eager attention, the same tensor carrying the
layout's blocks under SDPA (:class:`Blocks`: attention runs one block at a time, so the pairs the
mask would throw away are never computed), and a flex ``BlockMask`` under flex attention.

The LM head runs only at the positions that predict a response token, a chunk at a time, inside
the model's forward (:func:`mmpo.lm_head.head_logprobs`), or, with ``head_chunk=0``, from the first
position whose logits a response needs (``logits_to_keep``), the log-softmax at response positions
only. The batch carries the Python ints this needs, so the pass makes no host-device sync.

Prefix sharing and packing need a model that takes a custom mask and explicit position ids:
:func:`prefix_sharing_problem` and :func:`packing_problem` say why a model cannot (the trainer then
uses one row per response or per record and logs that line). Qwen-VL's M-RoPE positions are the
model's own, computed on the whole row and made each document's own (:func:`packed_position_ids`);
PaliGemma's bidirectional prefix is part of the mask.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

from .lm_head import DEFAULT_CHUNK, head_logprobs, head_problem

# Keys of the batch :mod:`mmpo.data.collator` builds and this module reads:
#: a prefix-shared or packed batch's segment ids ``(N, T)``, whose presence marks the layout;
SEGMENT_IDS = "segment_ids"
#: a packed batch's document ids ``(N, T)`` (several records' rows in one row);
DOCUMENT_IDS = "document_ids"
#: the same layout as Python ints, per document ``(row, first token, end of prompt, [(start, end) per response])``;
BLOCKS = "blocks"
#: two Python ints every batch carries, so the forward pass needs no host-device sync: the first
#: position whose logits any response needs, and the longest response.
LOGITS_FROM, RESPONSE_WIDTH = "logits_from", "response_width"

#: Families whose attention masks are built inside the model in ways a single 4-D mask cannot carry.
UNSHAREABLE: dict[str, str] = {
    "gemma3": "Gemma 3 builds its own masks per layer type (sliding-window layers; image tokens attend "
              "bidirectionally)",
}
#: Attention implementations that take a custom mask: a 4-D tensor (eager, SDPA) or a flex ``BlockMask``.
MASKABLE_ATTENTION = ("eager", "sdpa", "flex_attention")
#: Families that can share a record's prompt but cannot pack several records into one row.
UNPACKABLE: dict[str, str] = {
    "mllama": "Mllama cross-attends every token of a row to that row's own images, so records with different "
              "images cannot share a row",
}
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
        return (f"attn_implementation={attention!r} takes no custom attention mask "
                f"(use one of {', '.join(MASKABLE_ATTENTION)}; flex_attention keeps the flash-style kernel)")
    if "position_ids" not in inspect.signature(unwrap(model).forward).parameters:
        return f"{type(unwrap(model)).__name__}.forward takes no position_ids"
    return None


def packing_problem(model: torch.nn.Module) -> str | None:
    """Why ``model`` cannot run packed rows (several records in one row) exactly, or None when it can.
    Packing needs what prefix sharing needs (a custom mask and position ids) and a model that
    matches each image to its placeholder tokens wherever they sit in the batch."""
    return prefix_sharing_problem(model) or UNPACKABLE.get(model_type(model))


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(unwrap(model).forward).parameters


def policy_response_logps(model: torch.nn.Module, batch: dict[str, Any],
                          head_chunk: int | None = DEFAULT_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass over a collated batch; response-aligned log-probs and their mask ``(R, L)``.

    Only ``batch["model_inputs"]`` (plus, for prefix-shared or packed rows, the mask and position
    ids built here) reaches the model. With ``head_chunk`` (positions; the default), the LM head
    runs only at the positions that predict a response token, ``head_chunk`` of them at a time,
    inside the model's forward, its logits recomputed in the backward (:func:`mmpo.lm_head.head_logprobs`):
    the head's memory is O(chunk x vocabulary), not O(positions x vocabulary). ``None`` or 0 (or a
    model :func:`mmpo.lm_head.head_problem` names) takes the model's own logits.
    """
    inputs = dict(batch["model_inputs"])
    input_ids = inputs["input_ids"]  # (N, T)
    T = input_ids.shape[1]
    shared = SEGMENT_IDS in batch
    if shared:
        segments, documents = batch[SEGMENT_IDS], batch.get(DOCUMENT_IDS)  # (N, T) each
        inputs["attention_mask"] = attention_mask_for(model, segments, documents, batch.get(BLOCKS))
        inputs["position_ids"] = packed_position_ids(model, inputs, segments, batch["position_ids"], documents)
    logits_from = int(batch.get(LOGITS_FROM, 0))
    keep = {"logits_to_keep": T - logits_from} if logits_from > 0 and accepts_logits_to_keep(model) else {}
    width = batch.get(RESPONSE_WIDTH)
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
    if not head_chunk or head_problem(model) is not None:
        logits = model(**inputs, use_cache=False, **keep).logits  # (N, K, V)
        positions = (predictors - (T - logits.shape[1])).clamp(0, logits.shape[1] - 1)
        return gathered_logprobs(logits, rows, positions, targets, mask), mask

    def pick(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (N, K, H): the head's input
        positions = (predictors - (T - hidden.shape[1])).clamp(0, hidden.shape[1] - 1)
        return hidden[rows.unsqueeze(1).expand_as(positions)[mask], positions[mask]], targets[mask]  # (M, H), (M,)

    with head_logprobs(model, pick, head_chunk):
        values = model(**inputs, use_cache=False, **keep).logits  # (M,): what the head returned
    return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values), mask


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


def allowed_attention(segments: torch.Tensor, documents: torch.Tensor | None = None, *,
                      bidirectional_prefix: bool = False) -> torch.Tensor:
    """Which token attends to which in prefix-shared or packed rows, ``(N, T, T)`` bool: the rule of
    :func:`mask_mod` evaluated at every (row, query, key) at once."""
    N, T = segments.shape
    index = torch.arange(T, device=segments.device)
    rule = mask_mod(segments, documents, bidirectional_prefix=bidirectional_prefix)
    return rule(torch.arange(N, device=segments.device).view(N, 1, 1), None, index.view(1, T, 1), index.view(1, 1, T))


def block_attention_mask(segments: torch.Tensor, *, dtype: torch.dtype, attention: str,
                         bidirectional_prefix: bool = False, documents: torch.Tensor | None = None) -> torch.Tensor:
    """The 4-D attention mask of prefix-shared or packed rows (:func:`allowed_attention`).

    Args:
        segments: ``(N, T)`` segment ids (0 a prompt, ``k`` its ``k``-th response, -1 padding).
        dtype: the model's float dtype (eager attention adds the mask to its scores).
        attention: the attention implementation: ``"sdpa"`` takes a boolean mask, ``"eager"`` an
            additive one (0 or the dtype's minimum).
        documents: ``(N, T)`` document ids of packed rows, or None (one document per row).

    Returns:
        ``(N, 1, T, T)``.
    """
    allowed = allowed_attention(segments, documents, bidirectional_prefix=bidirectional_prefix).unsqueeze(1)
    if attention == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill(~allowed,
                                                                                      torch.finfo(dtype).min)


def mask_mod(segments: torch.Tensor, documents: torch.Tensor | None = None, *, bidirectional_prefix: bool = False):
    """Which token attends to which in prefix-shared or packed rows, as a flex attention
    ``mask_mod(b, h, q, k)`` (indices, or index tensors that broadcast: :func:`allowed_attention`).

    Token ``q`` attends to token ``k <= q`` of its own document (one record's rows: ``documents``,
    all one document when None) that is either the document's prompt (segment 0) or in ``q``'s own
    segment. With ``bidirectional_prefix`` a prompt's tokens also attend to the whole prompt of
    their document (PaliGemma). Padding (segment -1) attends only to itself, so no softmax row is
    empty.
    """
    if documents is None:
        documents = torch.where(segments >= 0, 0, -1)

    def allowed(b, h, q_index, k_index):
        q, k = segments[b, q_index], segments[b, k_index]
        attend = (k_index <= q_index) & (k >= 0) & (q >= 0) & ((k == 0) | (k == q))
        if bidirectional_prefix:
            attend = attend | ((q == 0) & (k == 0))
        attend = attend & (documents[b, q_index] == documents[b, k_index])
        return attend | ((q_index == k_index) & (q < 0))

    return allowed


def flex_block_mask(segments: torch.Tensor, documents: torch.Tensor | None = None, *,
                    bidirectional_prefix: bool = False):
    """The mask of :func:`allowed_attention` as a flex attention ``BlockMask``: blocks no token of which
    attends (another record's, another response's) are skipped by the kernel, not computed and masked."""
    from torch.nn.attention.flex_attention import create_block_mask

    N, T = segments.shape
    return create_block_mask(mask_mod(segments, documents, bidirectional_prefix=bidirectional_prefix),
                             N, None, T, T, device=segments.device)


def attention_mask_for(model: torch.nn.Module, segments: torch.Tensor, documents: torch.Tensor | None,
                       blocks: list[tuple[int, int, int, list[tuple[int, int]]]] | None = None) -> Any:
    """The mask ``model`` takes for prefix-shared or packed rows: a ``BlockMask`` under flex attention,
    else the 4-D tensor of :func:`block_attention_mask`; under SDPA with the batch's ``blocks``, that
    tensor carries them (:class:`Blocks`), so that attention runs block by block."""
    attention = attention_implementation(model)
    bidirectional = model_type(model) in BIDIRECTIONAL_PREFIX
    if attention == "flex_attention":
        return flex_block_mask(segments, documents, bidirectional_prefix=bidirectional)
    mask = block_attention_mask(segments, dtype=_float_dtype(model), attention=attention,
                                bidirectional_prefix=bidirectional, documents=documents)
    if attention == "sdpa" and blocks is not None:
        _install_block_attention()
        mask.mmpo_blocks = Blocks(segments.shape[1], blocks, bidirectional)
    return mask


class Blocks:
    """Attention of prefix-shared or packed rows computed block by block instead of over whole rows.

    Under SDPA a dense 4-D mask makes the kernel compute every pair of a row's tokens and mask most
    of them out: another record's, another response's. Here each document's prompt attends to
    itself (causally, or both ways for PaliGemma's prefix) and each response to its prompt and
    causally to itself, one ``scaled_dot_product_attention`` call per block, which computes only
    the pairs that attend (what a flex ``BlockMask`` skips on its own). The softmax of every query is
    over the same keys as under the dense mask, so the values are the same up to float rounding.
    Padding gets 0 (no token attends to it, and it is never read).

    The blocks ride on the mask tensor (``mask.mmpo_blocks``), so they reach every attention call
    of the decoder, also the recompute of gradient checkpointing; transformers' ``sdpa`` entry is
    wrapped once (:func:`_install_block_attention`) and passes through any call whose mask does
    not carry blocks of its query's length, or that needs what the blocks do not do (a sliding
    window, a softcap, sinks, a position bias, attention weights).
    """

    def __init__(self, width: int, blocks: list[tuple[int, int, int, list[tuple[int, int]]]], bidirectional: bool):
        self.width, self.blocks, self.bidirectional = width, blocks, bidirectional
        self._masks: dict[tuple[int, int, Any], torch.Tensor] = {}

    def applies(self, query: torch.Tensor, key: torch.Tensor, kwargs: dict[str, Any]) -> bool:
        return (query.shape[2] == key.shape[2] == self.width
                and not any(kwargs.get(k) is not None for k in ("sliding_window", "softcap", "s_aux", "position_bias"))
                and not kwargs.get("output_attentions"))

    def attend(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               dropout: float = 0.0, scaling: float | None = None) -> tuple[torch.Tensor, None]:
        """``query`` ``(N, H, T, D)``, ``key``/``value`` ``(N, H_kv, T, D)``; returns ``(N, T, H, D)`` as
        transformers' SDPA function does."""
        sdpa = torch.nn.functional.scaled_dot_product_attention
        gqa = {"enable_gqa": True} if key.shape[1] != query.shape[1] else {}
        out = torch.zeros_like(query)
        for row, start, prompt_end, responses in self.blocks:
            keys, values = key[row, :, start:prompt_end], value[row, :, start:prompt_end]  # (H_kv, P, D)
            out[row, :, start:prompt_end] = sdpa(query[row, :, start:prompt_end], keys, values, dropout_p=dropout,
                                                 is_causal=not self.bidirectional, scale=scaling, **gqa)
            for first, end in responses:
                mask = self._response_mask(prompt_end - start, end - first, query.device)  # (L, P + L)
                out[row, :, first:end] = sdpa(query[row, :, first:end],
                                              torch.cat([keys, key[row, :, first:end]], dim=1),
                                              torch.cat([values, value[row, :, first:end]], dim=1),
                                              attn_mask=mask, dropout_p=dropout, scale=scaling, **gqa)
        return out.transpose(1, 2).contiguous(), None

    def _response_mask(self, prompt: int, length: int, device: Any) -> torch.Tensor:
        """A response of ``length`` tokens attends to all ``prompt`` tokens and causally to itself."""
        key = (prompt, length, device)
        if key not in self._masks:
            causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
            self._masks[key] = torch.cat([torch.ones(length, prompt, dtype=torch.bool, device=device), causal], 1)
        return self._masks[key]


@functools.cache
def _install_block_attention() -> None:
    """Wrap transformers' ``sdpa`` attention function (once, for the process) so that a call whose mask
    carries :class:`Blocks` runs block by block; every other call goes to the original unchanged."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    original = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def sdpa_or_blocks(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        blocks = getattr(attention_mask, "mmpo_blocks", None)
        if blocks is not None and blocks.applies(query, key, kwargs):
            return blocks.attend(module, query, key, value, dropout=dropout, scaling=scaling)
        return original(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)

    AttentionInterface.register("sdpa", sdpa_or_blocks)


def packed_position_ids(model: torch.nn.Module, inputs: dict[str, Any], segments: torch.Tensor,
                        positions: torch.Tensor, documents: torch.Tensor | None = None) -> torch.Tensor:
    """Position ids of prefix-shared or packed rows: ``positions`` (restarting with each document,
    each response continuing its prompt), or for M-RoPE models (Qwen-VL) the model's own 3-D
    positions of the whole row, made each document's own: the model numbers a row's documents on
    from the last, so each document's first position is subtracted (a document starts with a text
    or image token, both at 0 in every axis on its own), and so are the tokens of the earlier
    responses of its document (text positions advance by one in every axis, so the shift is exact)."""
    rope = next((m for m in unwrap(model).modules() if hasattr(m, "compute_3d_position_ids")), None)
    if rope is None:
        return positions
    index = torch.arange(segments.shape[1], device=segments.device).expand_as(segments)  # (N, T)
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
    starts = document_starts(segments, documents)  # (N, T) the index of each token's document's first token
    base = torch.gather(whole, 2, starts.unsqueeze(0).expand(whole.shape[0], -1, -1))  # (3, N, T)
    shift = (index - starts - positions) * valid  # (N, T): tokens of earlier responses of the document
    return (whole - base - shift.unsqueeze(0)) * valid.unsqueeze(0)


def document_starts(segments: torch.Tensor, documents: torch.Tensor | None) -> torch.Tensor:
    """``(N, T)``: for every token, the index in its row of its document's first token (padding: its own)."""
    index = torch.arange(segments.shape[1], device=segments.device).expand_as(segments)  # (N, T)
    if documents is None:
        return torch.where(segments >= 0, 0, index)
    previous = torch.nn.functional.pad(documents[:, :-1], (1, 0), value=-2)  # (N, T)
    first = (documents != previous) | (documents < 0)
    return torch.where(first, index, 0).cummax(dim=1).values


def _float_dtype(model: torch.nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
