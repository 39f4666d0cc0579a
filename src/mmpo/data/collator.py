"""Turn records into model inputs for any processor-based VLM.

Each row of a batch is one (image, prompt, response) sequence. The prompt is rendered for the
processor (:mod:`mmpo.prompting`: chat template or plain prefix, no double BOS, images one list per
row) and encoded by the processor itself, so image tokens are expanded exactly as the model expects;
the response is tokenised as the model would see it after the prompt and appended, written and
ended as the chat template writes an assistant turn (its end-of-turn token, or EOS where it has none).
Building the two halves separately gives exact response token spans — no guessing where the prompt
ends — and lets the response be truncated without ever cutting an image token. Every per-token
tensor the processor returns at prompt width (``token_type_ids``, ``mm_token_type_ids``,
``cross_attention_mask``) is continued over the response with the value that means "response text"
for that model (:data:`RESPONSE_FILL`).

A collated batch keeps what goes into ``model.forward`` apart from mmpo's own tensors:
``batch["model_inputs"]`` holds exactly the model's inputs (``input_ids``, ``attention_mask`` and the
processor's image tensors), everything else (``labels``, ``response_start``, ...) sits beside it and
can never reach the model.

A preference batch of ``B`` records has responses ``[chosen_0..chosen_{B-1}, rejected_0..rejected_{B-1}]``
(and, with AdaViP, ``[vision_0..vision_{B-1}]`` after them), and its log-probs come out in that
order, ``(2B, L)`` or ``(3B, L)``. The rows that carry them come in two layouts:

* one row per response (``2B`` or ``3B`` rows), each ``[image + prompt, response]``;
* **prefix-shared** (``prefix_sharing=True``, the trainer's default where the model allows it):
  one row per distinct (image, prompt), ``[image + prompt, chosen, rejected, ...]``, plus one row
  per vision-rejected image. :mod:`mmpo.forward` runs it with a block attention mask and restarted
  positions, so each response gets exactly the log-probs of a row of its own, while the image and
  prompt are encoded and run once instead of once per response.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from ..forward import BLOCKS, DOCUMENT_IDS, LOGITS_FROM, RESPONSE_WIDTH, SEGMENT_IDS
from ..methods.aspo.units import chosen_units, unit_batch
from ..prompting import (
    assistant_turn,
    chat_template_of,
    encode_inputs,
    render_prompt,
    rendered_response,
    resolve_prompt_format,
    tokenizer_of,
    uses_suffix_convention,
)
from ..types import PreferenceRecord, Prompt, image_list

#: Key of the model's own inputs in a collated batch.
MODEL_INPUTS = "model_inputs"
# The layout's keys (SEGMENT_IDS, DOCUMENT_IDS, BLOCKS, LOGITS_FROM, RESPONSE_WIDTH) are mmpo.forward's,
# which reads them.

#: Per-token processor outputs and how each continues over the response tokens: a constant, or
#: ``"repeat"`` (the prompt's last position, e.g. Mllama's cross-attention to the image, which every
#: later text token keeps). ``token_type_ids`` is 0 for text (Gemma 3: 1 marks image tokens) except
#: under PaliGemma's suffix convention, where 1 marks the causal suffix after the bidirectional prefix.
RESPONSE_FILL: dict[str, int | str] = {"token_type_ids": 0, "mm_token_type_ids": 0, "cross_attention_mask": "repeat"}

logger = logging.getLogger(__name__)


class SequenceTooLongError(ValueError):
    """A prompt (with its image tokens) does not fit ``max_length``."""


def move_batch(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """The batch with every tensor (also inside ``model_inputs``) on ``device``."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            out[key] = move_batch(value, device)
        else:
            out[key] = value.to(device) if torch.is_tensor(value) else value
    return out


def response_fill(processor: Any, key: str) -> int | str:
    if key == "token_type_ids" and uses_suffix_convention(processor):
        return 1
    return RESPONSE_FILL[key]


def extend_per_token(value: torch.Tensor, prompt_lengths: list[int], row_lengths: list[int], width: int,
                     fill: int | str) -> torch.Tensor:
    """A ``(R, T_prompt, ...)`` processor output widened to ``(R, T, ...)``.

    Row ``r`` keeps its first ``prompt_lengths[r]`` positions, takes ``fill`` over its response
    positions up to ``row_lengths[r]`` and zeros in its padding (which the attention mask hides).
    """
    out = value.new_zeros((value.shape[0], width, *value.shape[2:]))  # (R, T, ...)
    for r, (n_prompt, n_row) in enumerate(zip(prompt_lengths, row_lengths, strict=True)):
        out[r, :n_prompt] = value[r, :n_prompt]
        out[r, n_prompt:n_row] = value[r, n_prompt - 1] if fill == "repeat" else fill
    return out


@dataclass
class RowEncoder:
    """Encodes (image, prompt, response) rows into padded tensors.

    Args:
        processor: a transformers processor (``LlavaProcessor``, ``Qwen2VLProcessor``, ...).
        max_length: total token budget per row; responses are truncated to fit, prompts never.
        end_turn: end every response as the chat template ends an assistant turn (its end-of-turn
            token, e.g. ``<|im_end|>`` or ``<end_of_turn>``), or with the tokenizer's EOS where the
            template writes none or there is no template (:class:`mmpo.prompting.AssistantTurn`).
        prompt_format: ``"auto"`` (chat template when the processor has one, else plain),
            ``"chat"`` or ``"plain"``; see :mod:`mmpo.prompting`.
    """

    processor: Any
    max_length: int | None = None
    end_turn: bool = True
    prompt_format: str = "auto"
    truncated: int = field(default=0, init=False)
    boundary_merges: int = field(default=0, init=False)

    def __post_init__(self):
        self.prompt_format = resolve_prompt_format(self.processor, self.prompt_format)
        self.turn = assistant_turn(self.processor, self.prompt_format)
        self._suffix = uses_suffix_convention(self.processor)
        self._prompt_ids: dict[str, list[int]] = {}
        if self.turn.mismatch:
            logger.warning(self.turn.mismatch)
        if self.end_turn:
            logger.info(self.turn.describe())

    @property
    def tokenizer(self):
        return tokenizer_of(self.processor)

    @property
    def lead(self) -> str:
        return self.turn.lead

    def settings(self) -> dict[str, Any]:
        """What the encoding depends on besides the processor (for cache fingerprints)."""
        return {"max_length": self.max_length, "end_turn": self.end_turn, "prompt_format": self.prompt_format,
                "turn": dataclasses.asdict(self.turn), "chat_template": chat_template_of(self.processor)}

    def response_ids(self, prompt: Prompt, prompt_text: str, response: str,
                     n_images: int = 1) -> tuple[str, list[int], list[tuple[int, int]]]:
        """How ``response`` is encoded after ``prompt`` (``prompt_text`` is the prompt rendered):
        the text of the row's prompt part, then the response's token ids and their character
        offsets into ``response``.

        The response is written as the chat template writes it (:func:`mmpo.prompting.rendered_response`:
        the template's lead before it, trimmed where the template trims) and ended as the template
        ends an assistant turn. The whole text, prompt + lead + response + end, is tokenised at once,
        and the response's tokens are those from the first one holding a character of the response:
        a lead that merges into the first word (Idefics3's ``" "``) is scored with it, one that merges
        with the prompt's end or stands alone (Qwen3 Thinking's ``"\\n</think>\\n\\n"``) goes with the
        prompt, so the row holds exactly the tokens of the template's own conversation and the lead
        is never scored. Where that split does not reproduce the prompt's own tokens (the tokenizer
        merges the end of the prompt with the start of the response), the response is tokenised on
        its own after the prompt and lead, as in generation; so is every response under PaliGemma's
        suffix convention.

        Offsets of tokens outside the response (lead, end of turn) are clamped to its ends, EOS has
        ``(0, 0)``; where the template rewrites the response beyond trimming (a reasoning block),
        every offset is ``(-1, -1)``, which sentence-level methods refuse.
        """
        lead, content = rendered_response(self.processor, self.turn, prompt, prompt_text, response, n_images)
        shift = _position_in(response, content)
        end = self.turn.end if self.end_turn and self.turn.end_source == "template" else ""
        head, ids, offsets = None, None, None
        if not self._suffix:
            whole = prompt_text + lead + content + end
            full_ids, full_offsets = self._tokenize(whole)
            start = len(prompt_text) + len(lead)  # the content's first character
            first = next((k for k, (s, e) in enumerate(full_offsets) if e > start), len(full_ids))
            cuts = (full_offsets[first][0] if first < len(full_ids) else len(whole),  # the first token's start
                    full_offsets[first - 1][1] if first > 0 else 0)  # the end of the token before it
            for cut in dict.fromkeys(cuts):
                if len(prompt_text) <= cut <= start and self._prompt_tokens(whole[:cut]) == full_ids[:first]:
                    head, ids, offsets = whole[:cut], full_ids[first:], full_offsets[first:]
                    break
            else:
                self.boundary_merges += 1
                if self.boundary_merges == 1:
                    warnings.warn("the tokenizer merges the end of the prompt with the start of a response; such "
                                  "responses are tokenised on their own after the prompt's tokens, as in "
                                  "generation", stacklevel=3)
        if ids is None:
            head, start = prompt_text + lead, 0
            ids, offsets = self._tokenize(content + end)
        n = len(response)
        if shift is None:
            offsets = [(-1, -1)] * len(ids)
        else:
            offsets = [(s, e) if (s, e) == (-1, -1) else
                       (min(max(s - start + shift, 0), n), min(max(e - start + shift, 0), n)) for s, e in offsets]
        eos = self.tokenizer.eos_token_id
        if self.end_turn and not end and eos is not None:
            ids, offsets = ids + [eos], offsets + [(0, 0)]
        return head, ids, offsets

    def text_lengths(self, records: list[PreferenceRecord]) -> list[int]:
        """Each record's prompt (rendered as its rows are), chosen and rejected response in tokens, without
        the image tokens: what length-grouped sampling orders records by."""
        texts = [render_prompt(self.processor, r.prompt, self.prompt_format, len(image_list(r.image)))
                 + f"{r.chosen}\n{r.rejected}" for r in records]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _prompt_tokens(self, text: str) -> list[int]:
        ids = self._prompt_ids.get(text)
        if ids is None:
            ids = self._prompt_ids[text] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(self._prompt_ids) > 4096:
                self._prompt_ids.clear()
        return ids

    def _tokenize(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and character offsets without special tokens. A tokenizer without offsets (a slow
        one) gives ``(-1, -1)`` offsets, which sentence-level methods refuse (see :func:`mmpo.methods.aspo.units.chosen_units`)."""
        try:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            return enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]
        except NotImplementedError:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            return ids, [(-1, -1)] * len(ids)

    def __call__(self, images: list[Any], prompts: list[Prompt], responses: list[str],
                 row_names: list[str] | None = None) -> dict[str, Any]:
        """Encode rows.

        Returns a dict with ``model_inputs`` (``input_ids``, ``attention_mask`` ``(R, T)``, the processor's
        image tensors and per-token tensors widened to ``T``), ``labels`` ``(R, T)`` (-100 outside
        responses), ``response_start``/``response_length`` ``(R,)`` and ``response_offsets`` (per row,
        the character offsets of its kept response tokens; a list, not a tensor).
        """
        # One response per row is the shared layout with groups of one: the same rows, padded alike.
        rows = self.encode_shared(images, prompts, [[response] for response in responses], row_names)
        segments, lengths = rows[SEGMENT_IDS], rows["response_length"]  # (R, T), (R,)
        input_ids = rows[MODEL_INPUTS]["input_ids"]  # (R, T)
        starts = (segments == 0).sum(dim=1)  # (R,) the prompt's tokens come first
        labels = torch.where(segments == 1, input_ids, torch.full_like(input_ids, -100))  # (R, T)
        model_inputs = {"input_ids": input_ids, "attention_mask": (segments >= 0).long(),
                        **{k: v for k, v in rows[MODEL_INPUTS].items() if k != "input_ids"}}
        return {MODEL_INPUTS: model_inputs, "labels": labels, "response_start": starts, "response_length": lengths,
                "response_offsets": rows["response_offsets"], LOGITS_FROM: rows[LOGITS_FROM],
                RESPONSE_WIDTH: rows[RESPONSE_WIDTH]}

    def encode_shared(self, images: list[Any], prompts: list[Prompt], groups: list[list[str]],
                      row_names: list[str] | None = None, max_tokens_per_row: int | None = None) -> dict[str, Any]:
        """Encode rows that share their prompt: row ``n`` is ``[prompt_n, groups[n][0], groups[n][1], ...]``,
        the image and prompt tokens once, each response after them as if it were alone.

        Every response is tokenised and truncated exactly as :meth:`__call__` would encode it in a
        row of its own; :func:`mmpo.forward.policy_response_logps` then runs the row with a block
        attention mask (each response sees the prompt and its own earlier tokens, never another
        response) and restarted position ids, which gives the same log-probs as separate rows.
        Responses of one group whose prompt parts differ (:meth:`response_ids`: a response with its
        own reasoning block takes no lead) get a row each, so there may be more rows than groups.

        Returns a dict with ``model_inputs`` (``input_ids`` ``(N, T)`` and the processor's image
        and per-token tensors; no ``attention_mask``: the forward builds the 4-D one),
        ``segment_ids`` ``(N, T)`` (0 the prompt, ``k`` the ``k``-th response, -1 padding),
        ``position_ids`` ``(N, T)`` (each response's positions continue the prompt's), and one
        entry per response in group order: ``response_row`` ``(R,)`` (its row),
        ``response_tokens`` / ``response_logit_index`` ``(R, L)`` (the positions of its tokens and
        of the logits that predict them; the first token of every response is predicted by the
        prompt's last position), ``response_length`` ``(R,)`` and ``response_offsets``.

        With ``max_tokens_per_row``, the rows above ("documents") are **packed**: consecutive
        documents share a row up to that many tokens (a longer document has a row of its own), and
        ``document_ids`` ``(N, T)`` numbers the documents of each row (-1 padding). A token attends
        only within its document, positions restart with each document, and the order of the
        documents, and so of their images, is kept (:func:`pack_documents`).
        """
        counts = [len(image_list(i)) for i in images]
        texts = [render_prompt(self.processor, p, self.prompt_format, k) for p, k in zip(prompts, counts, strict=True)]
        row_of: dict[tuple[int, str], int] = {}
        row_images, row_texts, row_group, entries = [], [], [], []
        for n, (prompt, text, group) in enumerate(zip(prompts, texts, groups, strict=True)):
            for response in group:
                head, resp, offsets = self.response_ids(prompt, text, response, counts[n])
                if (n, head) not in row_of:
                    row_of[n, head] = len(row_texts)
                    row_images.append(images[n])
                    row_texts.append(head)
                    row_group.append(n)
                entries.append((row_of[n, head], resp, offsets))
        enc = encode_inputs(self.processor, row_images, row_texts)
        prompt_lengths = enc["attention_mask"].sum(dim=1).tolist()
        rows = [ids[:n_prompt].tolist() for ids, n_prompt in zip(enc["input_ids"], prompt_lengths, strict=True)]
        segments = [[0] * n_prompt for n_prompt in prompt_lengths]
        positions = [list(range(n_prompt)) for n_prompt in prompt_lengths]
        owner, tokens, predictors, lengths, kept_offsets = [], [], [], [], []
        in_row = [0] * len(rows)  # responses placed in each row so far: the next one's segment id is one more
        for r, resp, offsets in entries:
            n_prompt, n = prompt_lengths[r], row_group[r]
            resp, offsets = self._fit(resp, offsets, n_prompt, row_names[n] if row_names else f"row {n}")
            in_row[r] += 1
            start, k = len(rows[r]), in_row[r]
            owner.append(r)
            tokens.append(list(range(start, start + len(resp))))
            predictors.append(([n_prompt - 1] + list(range(start, start + len(resp) - 1)))[: len(resp)])
            lengths.append(len(resp))
            kept_offsets.append(offsets)
            rows[r] += resp
            segments[r] += [k] * len(resp)
            positions[r] += range(n_prompt, n_prompt + len(resp))
        doc_lengths = [len(r) for r in rows]
        packs = pack_documents(doc_lengths, max_tokens_per_row) if max_tokens_per_row else [[d] for d in
                                                                                             range(len(rows))]
        place = {d: (p, sum(doc_lengths[e] for e in pack[:j]), j)  # document -> (row, its first token, its number)
                 for p, pack in enumerate(packs) for j, d in enumerate(pack)}
        width = max(sum(doc_lengths[d] for d in pack) for pack in packs)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(packs), width), pad, dtype=torch.long)  # (N, T)
        segment_ids = torch.full((len(packs), width), -1, dtype=torch.long)  # (N, T)
        document_ids = torch.full((len(packs), width), -1, dtype=torch.long)  # (N, T)
        position_ids = torch.zeros((len(packs), width), dtype=torch.long)  # (N, T)
        for d, (row, segment, position) in enumerate(zip(rows, segments, positions, strict=True)):
            p, at, j = place[d]
            input_ids[p, at: at + len(row)] = torch.tensor(row)
            segment_ids[p, at: at + len(row)] = torch.tensor(segment)
            document_ids[p, at: at + len(row)] = j
            position_ids[p, at: at + len(row)] = torch.tensor(position)
        L = max(lengths, default=0)
        response_tokens = torch.zeros((len(lengths), L), dtype=torch.long)  # (R, L)
        logit_index = torch.zeros((len(lengths), L), dtype=torch.long)  # (R, L)
        for r, (d, tok, pred) in enumerate(zip(owner, tokens, predictors, strict=True)):
            at = place[d][1]
            response_tokens[r, : len(tok)] = torch.tensor(tok, dtype=torch.long) + at
            logit_index[r, : len(pred)] = torch.tensor(pred, dtype=torch.long) + at
        per_doc = self._image_inputs(enc, prompt_lengths, doc_lengths, max(doc_lengths))
        model_inputs = {"input_ids": input_ids, **{key: _pack_per_token(value, place, doc_lengths, len(packs), width)
                                                   if key in RESPONSE_FILL else value
                                                   for key, value in per_doc.items()}}
        batch = {MODEL_INPUTS: model_inputs, SEGMENT_IDS: segment_ids, "position_ids": position_ids,
                 "response_row": torch.tensor([place[d][0] for d in owner], dtype=torch.long),
                 "response_tokens": response_tokens, "response_logit_index": logit_index,
                 "response_length": torch.tensor(lengths, dtype=torch.long), "response_offsets": kept_offsets,
                 # every row starts with a document's prompt: no logits are needed before the shortest
                 LOGITS_FROM: max(min(prompt_lengths[pack[0]] for pack in packs) - 1, 0), RESPONSE_WIDTH: L}
        if max_tokens_per_row:
            batch[DOCUMENT_IDS] = document_ids
        # The same layout as Python ints, for attention run block by block (mmpo.forward.Blocks): per
        # document, its row, first token, the end of its prompt, and each of its responses' (start, end).
        spans: dict[int, list[tuple[int, int]]] = {d: [] for d in range(len(rows))}
        for d, tok in zip(owner, tokens, strict=True):
            at = place[d][1]
            spans[d].append((at + tok[0], at + tok[-1] + 1) if tok else (at + prompt_lengths[d],) * 2)
        batch[BLOCKS] = [(place[d][0], place[d][1], place[d][1] + prompt_lengths[d],
                          [span for span in spans[d] if span[1] > span[0]]) for d in range(len(rows))]
        return batch

    def _fit(self, resp: list[int], offsets: list[tuple[int, int]], n_prompt: int,
             name: str) -> tuple[list[int], list[tuple[int, int]]]:
        """A response's ids and offsets cut to the room ``max_length`` leaves after the prompt."""
        if self.max_length is None:
            return resp, offsets
        room = self.max_length - n_prompt
        if room < 1:
            raise SequenceTooLongError(
                f"{name}: the prompt with its image tokens is {n_prompt} tokens, which leaves no room "
                f"for a response within max_length={self.max_length}; image tokens are never "
                f"truncated, so raise max_length")
        if len(resp) > room:
            resp, offsets = resp[:room], offsets[:room]
            self.truncated += 1
            if self.truncated == 1:
                warnings.warn(f"responses longer than max_length={self.max_length} are truncated "
                              "(the prompt and image tokens are kept whole)", stacklevel=3)
        return resp, offsets

    def _image_inputs(self, enc: Any, prompt_lengths: list[int], row_lengths: list[int],
                      width: int) -> dict[str, Any]:
        """The processor's outputs besides ``input_ids``/``attention_mask``; per-token ones are widened
        from the prompt to the whole row (:data:`RESPONSE_FILL`)."""
        prompt_width, out = enc["input_ids"].shape[1], {}
        for key, value in enc.items():
            if key in ("input_ids", "attention_mask"):
                continue
            if key in RESPONSE_FILL:
                value = extend_per_token(value, prompt_lengths, row_lengths, width, response_fill(self.processor, key))
            elif torch.is_tensor(value) and value.dim() >= 2 and value.shape[:2] == (len(row_lengths), prompt_width):
                raise ValueError(
                    f"{type(self.processor).__name__} returned {key!r} of shape {tuple(value.shape)}, a per-token "
                    "tensor at prompt width that mmpo does not know how to continue over the response; add its "
                    "rule to mmpo.data.collator.RESPONSE_FILL")
            out[key] = value
        return out


class PreferenceDataset(torch.utils.data.Dataset):
    """Records as a map-style dataset; each item carries its index for reference-log-prob lookup.

    ``origins`` (optional, aligned with ``records``): where each record was read from, as
    :attr:`mmpo.data.records.LoadResult.origins` gives it, so the preflight's errors name the file
    and row; without it they name the record's position here.
    """

    def __init__(self, records: list[PreferenceRecord], origins: list[dict[str, Any]] | None = None):
        if origins is not None and len(origins) != len(records):
            raise ValueError(f"{len(records)} records but {len(origins)} origins")
        self.records = records
        self.origins = origins

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"record": self.records[index], "index": index}


@dataclass
class PreferenceCollator:
    """Collates ``PreferenceDataset`` items into one ``2B``- or ``3B``-row batch.

    Args:
        encoder: the :class:`RowEncoder`.
        vision_rows: add ``B`` vision-rejected rows (AdaViP). Records without a ``rejected_image``
            repeat their original image there; ``vision_mask`` tells the loss to ignore them.
        sentence_splitter: when set (ASPO), add the chosen responses' unit spans (see ``granularity``).
        granularity: ``"sentence"``, ``"token"`` (every response token a unit) or ``"response"`` (one unit).
        need_sentence_scores: require each record's ``chosen_sentence_scores`` (one per sentence)
            and add them per unit.
        need_data_alpha: require each record's ``data_alpha`` (DAMA) and add it.
        prefix_sharing: encode each record's image and prompt once, with its chosen and rejected
            responses after it in one row (:meth:`RowEncoder.encode_shared`); the log-probs are the
            same as with one row per response.
        max_tokens_per_row: pack several records' rows (each still its own image, prompt and
            responses, or one response each without prefix sharing) into one row of up to this many
            tokens, so that rows are not padded to the batch's longest record (:func:`pack_documents`).
            The batch is still the same ``B`` records; only how they are laid out in rows changes.

    The batch holds the encoder's ``model_inputs`` (the only thing passed to ``model.forward``),
    ``labels``, ``response_start``, ``response_length``, and mmpo's own side tensors beside them:
    ``record_index`` ``(B,)`` (and ``record_indices``, the same as a list); ``vision_mask`` ``(B,)`` bool; ``unit_spans`` ``(B, S, 2)``
    end-exclusive token spans into the response-aligned layout, ``unit_mask`` ``(B, S)``,
    ``unit_scores`` ``(B, S)``; ``data_alpha`` ``(B,)``; ``record_weight`` and ``beta_scale`` ``(B,)``
    when some record of the batch has that field.
    """

    encoder: RowEncoder
    vision_rows: bool = False
    sentence_splitter: Any = None
    granularity: str = "sentence"
    need_sentence_scores: bool = False
    need_data_alpha: bool = False
    prefix_sharing: bool = False
    max_tokens_per_row: int | None = None

    def __post_init__(self):
        if self.max_tokens_per_row is not None and (isinstance(self.max_tokens_per_row, bool)
                                                    or not isinstance(self.max_tokens_per_row, int)
                                                    or self.max_tokens_per_row < 1):
            raise ValueError(f"max_tokens_per_row must be a positive integer or None, got {self.max_tokens_per_row!r}")

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        records: list[PreferenceRecord] = [it["record"] for it in items]
        names = [record_name(it["index"], r) for it, r in zip(items, records, strict=True)]
        if self.prefix_sharing:
            batch = self._shared_rows(records, names)
        elif self.max_tokens_per_row:
            batch = self._packed_rows(records, names)
        else:
            batch = self._rows(records, names)
        offsets = batch.pop("response_offsets")
        batch["record_index"] = torch.tensor([it["index"] for it in items])
        batch["record_indices"] = [it["index"] for it in items]  # the same on the host: read without a sync
        if self.vision_rows:
            batch["vision_mask"] = torch.tensor([r.rejected_image is not None for r in records])
        if self.need_data_alpha:
            missing = [n for n, r in zip(names, records, strict=True) if r.data_alpha is None]
            if missing:
                raise ValueError(f"{missing[0]}: field 'data_alpha' is missing; DAMA's data-aware beta needs "
                                 "it (run `mmpo score-sentences --dama` on the records first)")
            batch["data_alpha"] = torch.tensor([float(r.data_alpha) for r in records])
        # Per-record weight and beta scale, only when some record of the batch has one (1 for the others).
        for key, values in (("record_weight", [r.weight for r in records]),
                            ("beta_scale", [r.beta_scale for r in records])):
            if any(v is not None for v in values):
                batch[key] = torch.tensor([1.0 if v is None else float(v) for v in values])  # (B,)
        if self.sentence_splitter is not None:
            chosen_offsets = offsets[: len(records)]  # the chosen rows come first
            tokenizer_name = type(self.encoder.tokenizer).__name__
            batch.update(unit_batch([
                chosen_units(r, o, name, self.sentence_splitter, self.granularity, self.need_sentence_scores,
                             tokenizer_name) for r, o, name in zip(records, chosen_offsets, names, strict=True)]))
        return batch

    def _rows(self, records: list[PreferenceRecord], names: list[str]) -> dict[str, Any]:
        """One row per (image, prompt, response): chosen, rejected, then the vision-rejected rows."""
        images = [r.image for r in records] * 2
        prompts = [r.prompt for r in records] * 2
        responses = [r.chosen for r in records] + [r.rejected for r in records]
        if self.vision_rows:
            images += [r.rejected_image if r.rejected_image is not None else r.image for r in records]
            prompts += [r.prompt for r in records]
            responses += [r.chosen for r in records]
        return self.encoder(images, prompts, responses, row_names=names * (len(responses) // len(records)))

    def _packed_rows(self, records: list[PreferenceRecord], names: list[str]) -> dict[str, Any]:
        """The rows of :meth:`_rows`, each a document of one response, packed (no prefix sharing)."""
        images = [r.image for r in records] * 2
        prompts = [r.prompt for r in records] * 2
        groups = [[r.chosen] for r in records] + [[r.rejected] for r in records]
        if self.vision_rows:
            images += [r.rejected_image if r.rejected_image is not None else r.image for r in records]
            prompts += [r.prompt for r in records]
            groups += [[r.chosen] for r in records]
        return self.encoder.encode_shared(images, prompts, groups, row_names=names * (len(groups) // len(records)),
                                          max_tokens_per_row=self.max_tokens_per_row)

    def _shared_rows(self, records: list[PreferenceRecord], names: list[str]) -> dict[str, Any]:
        """One row per distinct (image, prompt) of the batch holding the prompt once and every
        response of the records that have it after it, plus one row per vision-rejected image (its
        own image, the prompt, the chosen response); the responses come out in the order of
        :meth:`_rows` (chosen, rejected, vision). Records with the same image file (or image object)
        and prompt, as in self-generated data with several pairs per image, share one row. A record
        without a rejected image takes its vision entry from its chosen response: the same image,
        prompt and response."""
        row_of: dict[tuple[Any, str], int] = {}
        images, prompts, groups, row_names, chosen_entry, rejected_entry = [], [], [], [], [], []
        for record, name in zip(records, names, strict=True):
            key = (_identity(record.image), repr(record.prompt))
            if key not in row_of:
                row_of[key] = len(groups)
                images.append(record.image)
                prompts.append(record.prompt)
                groups.append([])
                row_names.append(name)
            n = row_of[key]
            chosen_entry.append((n, len(groups[n])))
            rejected_entry.append((n, len(groups[n]) + 1))
            groups[n] += [record.chosen, record.rejected]
        vision_entry = []
        if self.vision_rows:
            for b, (record, name) in enumerate(zip(records, names, strict=True)):
                if record.rejected_image is None:
                    vision_entry.append(chosen_entry[b])
                    continue
                vision_entry.append((len(groups), 0))
                images.append(record.rejected_image)
                prompts.append(record.prompt)
                groups.append([record.chosen])
                row_names.append(name)
        batch = self.encoder.encode_shared(images, prompts, groups, row_names=row_names,
                                           max_tokens_per_row=self.max_tokens_per_row)
        first = [0]  # the entry index of each row's first response (entries come in group order)
        for group in groups:
            first.append(first[-1] + len(group))
        order = [first[n] + k for n, k in chosen_entry + rejected_entry + vision_entry]
        index = torch.tensor(order, dtype=torch.long)
        for key in ("response_row", "response_tokens", "response_logit_index", "response_length"):
            batch[key] = batch[key][index]
        batch["response_offsets"] = [batch["response_offsets"][i] for i in order]
        return batch


def pack_documents(lengths: list[int], budget: int) -> list[list[int]]:
    """Consecutive documents of ``lengths`` tokens grouped into rows of at most ``budget`` tokens.

    Order is kept (the model matches images to their placeholder tokens in order). A document
    longer than ``budget`` gets a row of its own. Of the fewest rows that hold every document,
    the grouping with the narrowest widest row is taken, since every row is padded to that width:
    greedy filling gives the fewest rows for a capacity, and the smallest capacity in
    ``[1, budget]`` that still needs no more rows is found by bisection.
    """
    def fill(capacity: int) -> list[list[int]]:
        rows: list[list[int]] = []
        used = capacity + 1  # start a new row on the first document
        for d, n in enumerate(lengths):
            if used + n > capacity or n > capacity:
                rows.append([])
                used = 0
            rows[-1].append(d)
            used += n
        return rows

    if budget < 1:
        raise ValueError(f"max_tokens_per_row must be a positive number of tokens, got {budget}")
    fewest = len(fill(budget))
    low, high = 1, budget
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if len(fill(mid)) <= fewest else (mid + 1, high)
    return fill(low)


def _pack_per_token(value: torch.Tensor, place: dict[int, tuple[int, int, int]], lengths: list[int], n_rows: int,
                    width: int) -> torch.Tensor:
    """A per-token tensor of documents ``(D, T_doc, ...)`` laid out as the packed rows ``(N, T, ...)``."""
    out = value.new_zeros((n_rows, width, *value.shape[2:]))
    for d, n in enumerate(lengths):
        p, at, _ = place[d]
        out[p, at: at + n] = value[d, :n]
    return out


def _position_in(response: str, content: str) -> int | None:
    """Where the template's ``content`` starts in ``response``: 0 when unchanged, the trimmed
    whitespace's length when the template trims, None when it rewrote the text."""
    if content == response:
        return 0
    at = response.find(content) if content else -1
    if at >= 0 and not response[:at].strip() and not response[at + len(content):].strip():
        return at
    return None


def _identity(image: Any) -> Any:
    """What makes two records' images the same for prefix sharing: the same path, or the same object
    (for several images, each of them in order)."""
    if isinstance(image, (list, tuple)):
        return tuple(_identity(i) for i in image)
    return str(image) if isinstance(image, (str, os.PathLike)) else id(image)


def record_name(index: int, record: PreferenceRecord) -> str:
    """How errors name a record: its index in the dataset and its id."""
    return f"record #{index}" + (f" (id {record.id!r})" if record.id is not None else "")
