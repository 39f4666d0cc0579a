"""Turn records into model inputs for any processor-based VLM.

Each row of a batch is one (image, prompt, response) sequence. The prompt goes through the
processor's chat template and the processor itself (so image tokens are expanded exactly as the
model expects); the response is tokenised separately and appended, followed by EOS. Building the
two halves separately gives exact response token spans — no guessing where the prompt ends — and
lets the response be truncated without ever cutting an image token.

A preference batch of ``B`` records has rows ``[chosen_0..chosen_{B-1}, rejected_0..rejected_{B-1}]``
(and, when any record has a vision-rejected image, ``[vision_0..vision_{B-1}]`` after them), so the
policy needs one forward pass of ``2B`` (or ``3B``) rows.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from ..types import PreferenceRecord, Prompt, prompt_messages


class SequenceTooLongError(ValueError):
    """A prompt (with its image tokens) does not fit ``max_length``."""


def load_image(image: Any) -> Image.Image:
    """A PIL RGB image from a path or an in-memory image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    with Image.open(image) as im:
        return im.convert("RGB")


def prompt_text(processor: Any, prompt: Prompt) -> str:
    """The prompt rendered by the processor's chat template, ending with the generation prompt."""
    return processor.apply_chat_template(prompt_messages(prompt), add_generation_prompt=True, tokenize=False)


@dataclass
class RowEncoder:
    """Encodes (image, prompt, response) rows into padded tensors.

    Args:
        processor: a transformers processor with a chat template (``LlavaProcessor``, ...).
        max_length: total token budget per row; responses are truncated to fit, prompts never.
        append_eos: end every response with the tokenizer's EOS token.
    """

    processor: Any
    max_length: int | None = None
    append_eos: bool = True
    truncated: int = field(default=0, init=False)

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    def response_ids(self, response: str) -> list[int]:
        ids = self.tokenizer(response, add_special_tokens=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        return ids + [eos] if self.append_eos and eos is not None else ids

    def __call__(self, images: list[Any], prompts: list[Prompt], responses: list[str],
                 row_names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Encode rows. Returns ``input_ids``, ``attention_mask`` ``(R, T)``, ``labels`` ``(R, T)``
        (-100 outside responses), ``response_start``/``response_length`` ``(R,)`` and the processor's
        image tensors (``pixel_values``, ...) in row order."""
        tokenizer = self.tokenizer
        texts = [prompt_text(self.processor, p) for p in prompts]
        side = tokenizer.padding_side
        tokenizer.padding_side = "right"
        try:
            enc = self.processor(images=[load_image(i) for i in images], text=texts, return_tensors="pt", padding=True)
        finally:
            tokenizer.padding_side = side
        prompt_lengths = enc["attention_mask"].sum(dim=1).tolist()
        rows, starts, lengths = [], [], []
        for r, (ids, n_prompt, response) in enumerate(zip(enc["input_ids"], prompt_lengths, responses, strict=False)):
            resp = self.response_ids(response)
            if self.max_length is not None:
                room = self.max_length - n_prompt
                if room < 1:
                    name = row_names[r] if row_names else f"row {r}"
                    raise SequenceTooLongError(
                        f"{name}: the prompt with its image tokens is {n_prompt} tokens, which leaves no room "
                        f"for a response within max_length={self.max_length}; image tokens are never "
                        f"truncated, so raise max_length")
                if len(resp) > room:
                    resp = resp[:room]
                    self.truncated += 1
                    if self.truncated == 1:
                        warnings.warn(f"responses longer than max_length={self.max_length} are truncated "
                                      "(the prompt and image tokens are kept whole)", stacklevel=2)
            rows.append(ids[:n_prompt].tolist() + resp)
            starts.append(n_prompt)
            lengths.append(len(resp))
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (R, T)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for r, (row, s, n) in enumerate(zip(rows, starts, lengths, strict=False)):
            input_ids[r, : len(row)] = torch.tensor(row)
            attention_mask[r, : len(row)] = 1
            labels[r, s : s + n] = input_ids[r, s : s + n]
        out = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
        out.update(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                   response_start=torch.tensor(starts), response_length=torch.tensor(lengths))
        return out


class PreferenceDataset(torch.utils.data.Dataset):
    """Records as a map-style dataset; each item carries its index for reference-log-prob lookup."""

    def __init__(self, records: list[PreferenceRecord]):
        self.records = records

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

    Extra keys: ``record_index`` ``(B,)``; ``vision_mask`` ``(B,)`` bool; ``unit_spans`` ``(B, S, 2)``
    end-exclusive token spans into the response-aligned layout, ``unit_mask`` ``(B, S)``,
    ``unit_scores`` ``(B, S)``; ``data_alpha`` ``(B,)``.
    """

    encoder: RowEncoder
    vision_rows: bool = False
    sentence_splitter: Any = None
    granularity: str = "sentence"
    need_sentence_scores: bool = False
    need_data_alpha: bool = False

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        records: list[PreferenceRecord] = [it["record"] for it in items]
        names = [record_name(it["index"], r) for it, r in zip(items, records, strict=True)]
        images = [r.image for r in records] * 2
        prompts = [r.prompt for r in records] * 2
        responses = [r.chosen for r in records] + [r.rejected for r in records]
        if self.vision_rows:
            images += [r.rejected_image if r.rejected_image is not None else r.image for r in records]
            prompts += [r.prompt for r in records]
            responses += [r.chosen for r in records]
        batch = self.encoder(images, prompts, responses, row_names=names * (len(responses) // len(records)))
        batch["record_index"] = torch.tensor([it["index"] for it in items])
        if self.vision_rows:
            batch["vision_mask"] = torch.tensor([r.rejected_image is not None for r in records])
        if self.need_data_alpha:
            missing = [n for n, r in zip(names, records, strict=True) if r.data_alpha is None]
            if missing:
                raise ValueError(f"{missing[0]}: field 'data_alpha' is missing; DAMA's data-aware beta needs "
                                 "it (run `mmpo score-sentences --dama` on the records first)")
            batch["data_alpha"] = torch.tensor([float(r.data_alpha) for r in records])
        if self.sentence_splitter is not None:
            lengths = batch["response_length"][: len(records)].tolist()
            units = [self._units(r, n, name) for r, n, name in zip(records, lengths, names, strict=True)]
            width = max(len(u) for u in units)
            spans = torch.zeros(len(units), width, 2, dtype=torch.long)  # (B, S, 2)
            scores = torch.zeros(len(units), width)  # (B, S)
            mask = torch.zeros(len(units), width, dtype=torch.bool)  # (B, S)
            for b, unit in enumerate(units):
                for s, (start, end, score) in enumerate(unit):
                    spans[b, s] = torch.tensor([start, end])
                    scores[b, s] = score
                    mask[b, s] = True
            batch.update(unit_spans=spans, unit_mask=mask, unit_scores=scores)
        return batch

    def _units(self, record: PreferenceRecord, n_tokens: int, name: str) -> list[tuple[int, int, float]]:
        """``(token_start, token_end, similarity)`` per unit of the chosen response, clipped to the
        ``n_tokens`` response tokens the encoder kept (a truncated response loses its tail)."""
        from ..scoring.sentences import sentence_token_spans

        sentences, _ = sentence_token_spans(record.chosen, self.encoder.tokenizer, self.sentence_splitter,
                                            append_eos=self.encoder.append_eos)
        scores = record.chosen_sentence_scores
        if self.need_sentence_scores:
            if scores is None:
                raise ValueError(f"{name}: field 'chosen_sentence_scores' is missing; ASPO's similarity weight "
                                 "needs it (run `mmpo score-sentences` first, or set aspo_alpha 0)")
            if len(scores) != len(sentences):
                raise ValueError(f"{name}: field 'chosen_sentence_scores' has {len(scores)} scores but the chosen "
                                 f"response splits into {len(sentences)} sentences; re-score with the same splitter")
        else:
            scores = [0.0] * len(sentences)
        pieces = [(min(s.token_start, n_tokens), min(s.token_end, n_tokens), float(c))
                  for s, c in zip(sentences, scores, strict=True)]
        pieces = [p for p in pieces if p[1] > p[0]]
        if self.granularity == "response":
            return [(0, n_tokens, sum(c for *_, c in pieces) / max(len(pieces), 1))]
        if self.granularity == "token":
            return [(t, t + 1, c) for start, end, c in pieces for t in range(start, end)]
        return pieces


def record_name(index: int, record: PreferenceRecord) -> str:
    """How errors name a record: its index in the dataset and its id."""
    return f"record #{index}" + (f" (id {record.id!r})" if record.id is not None else "")
