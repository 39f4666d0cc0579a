"""Sentence splitting and sentence token spans.

ASPO ("ASPO: Adaptive Sentence-Level Preference Optimization for Fine-Grained Multimodal Reasoning",
arXiv:2505.19100, section 3.2) weights the chosen response per *sentence*; AdaViP ("AdaViP: Aligning
Multi-modal LLMs via Adaptive Vision-enhanced Preference Optimization", arXiv:2504.15619, section 3.2)
and DAMA ("DAMA: Data- and Model-aware Alignment of Multi-modal LLMs", arXiv:2502.01943, section 3.1)
score sub-sentences with CLIP. Two splitters implement the :class:`SentenceSplitter` protocol:

* :class:`RuleSplitter` — deterministic, weight-free, exact character spans. ASPO needs these:
  its sentence rewards sum the log-ratios of each sentence's *tokens*, so every sentence must be
  a span of the response. This is the default everywhere.
* :class:`LLMSplitter` — what the AdaViP and DAMA papers do: prompt a local causal LM (LLaMA-3
  in the papers) to rewrite the response as self-contained sentences, one per line. Rewritten
  sentences are good CLIP inputs but are not spans of the response (see :meth:`LLMSplitter.split`).

:func:`token_spans` maps character spans to token spans through a tokenizer's ``offset_mapping``,
and :func:`sentence_token_spans` does split + tokenize + map in one call, tokenizing the response
on its own (no special tokens, then EOS); the training collator maps sentences onto the tokens its
encoder actually produced (in the prompt's context) with :func:`token_spans`.

Why not ``pysbd``: its ``char_span=True`` mode recovers spans by searching the segment text in the
input, and on inputs with spaced periods or ellipses (``"a . . . b"``) it returns overlapping
spans and drops characters, so the invariants below could not be guaranteed.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..types import SentenceSpan

__all__ = [
    "LLMSplitter",
    "RuleSplitter",
    "SentenceSplitter",
    "parse_sentence_lines",
    "sentence_token_spans",
    "token_spans",
]


@runtime_checkable
class SentenceSplitter(Protocol):
    """Splits a response into sentences.

    ``split(text)`` returns the sentences in order. For splitters whose sentences are spans of
    ``text`` (``char_start >= 0``): ``text[char_start:char_end] == span.text``, spans do not
    overlap, every sentence is non-empty and has no leading or trailing whitespace, and the
    whitespace between sentences belongs to none of them. ``token_start``/``token_end`` are -1
    until :func:`token_spans` fills them in.
    """

    def split(self, text: str) -> list[SentenceSpan]: ...


# --------------------------------------------------------------------------------------------
# Rule-based splitter
# --------------------------------------------------------------------------------------------

#: Abbreviations that never end a sentence (they are always followed by what they introduce).
NEVER_FINAL: frozenset[str] = frozenset({
    "mr", "mrs", "ms", "mx", "dr", "prof", "rev", "hon", "gen", "capt", "col", "lt", "sgt", "gov",
    "e.g", "i.e", "eg", "ie", "vs", "cf", "viz", "approx", "ca", "incl", "esp", "resp",
})
#: Abbreviations that end a sentence only when the next word is not lower-case ("etc. and" vs
#: "etc. Then"). Dotted acronyms ("U.S.", "a.m.") follow the same rule.
MAYBE_FINAL: frozenset[str] = frozenset({
    "etc", "inc", "ltd", "co", "corp", "jr", "sr", "st", "al", "bros", "dept", "est", "min", "max",
})
#: Abbreviations that do not end a sentence when a number follows ("No. 5", "Fig. 2").
BEFORE_NUMBER: frozenset[str] = frozenset({
    "no", "nos", "vol", "pp", "p", "ch", "sec", "fig", "figs", "eq", "eqs", "ref", "art", "op", "nr",
})

_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
_CLOSERS = "\"')]}\u201d\u2019\u00bb"
_OPENERS = "\"'([{\u201c\u2018\u00ab"
_EVENT = re.compile(
    rf"(?P<brk>[{_LINE_BREAKS}])|(?P<term>[.!?\u2026\u203d]+[{re.escape(_CLOSERS)}]*)"
)
_DOTTED_ACRONYM = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")
_LIST_NUMBER = re.compile(r"\d{1,3}")


class RuleSplitter:
    """Rule-based sentence splitter with exact character spans (the weight-free default).

    A sentence ends after a run of ``. ! ? …`` (plus closing quotes/brackets) that is followed by
    whitespace or the end of the text, and at line breaks (``newline_is_boundary``). A full stop
    does *not* end a sentence when it

    * closes an abbreviation that introduces something (``Dr.``, ``Mr.``, ``e.g.``; :data:`NEVER_FINAL`),
    * closes ``etc.``-like abbreviations or dotted acronyms (``U.S.``) and the next word is
      lower-case (:data:`MAYBE_FINAL`),
    * closes ``No.``/``Fig.`` before a number (:data:`BEFORE_NUMBER`),
    * closes an enumeration marker at the start of a sentence (``1. first 2. second``).

    Decimals (``3.5``) and inner dots never qualify because no whitespace follows the dot. An
    ellipsis ends a sentence only before an upper-case letter, a line break or the end of the
    text. ``?``/``!`` immediately followed by an upper-case letter also end a sentence
    (``"dollars!Really?"``); inside a quotation followed by a lower-case word they do not
    (``'"Stop!" he said.'``). A full stop preceded by whitespace — the synthetic world's
    ``"... top left . a blue square ..."`` — always ends one, whatever the case of the next word.
    Text after the last terminator is a sentence too (missing final punctuation), and a piece
    without any letter or digit (a stray ``"..."``) is merged into its neighbour.

    Args:
        newline_is_boundary: treat every line break as a sentence boundary (model responses use
            line breaks for lists and headings; set False for hard-wrapped prose).
    """

    def __init__(self, newline_is_boundary: bool = True):
        self.newline_is_boundary = newline_is_boundary

    def split(self, text: str) -> list[SentenceSpan]:
        pieces: list[tuple[int, int]] = []
        pending: int | None = None  # start of leading letterless pieces, merged into the next piece
        prev = 0
        for cut in [*self._cuts(text), len(text)]:
            start, end = _strip(text, prev, cut)
            prev = cut
            if start == end:
                continue
            if not any(ch.isalnum() for ch in text[start:end]):
                if pieces:
                    pieces[-1] = (pieces[-1][0], end)
                elif pending is None:
                    pending = start
                continue
            pieces.append((start if pending is None else pending, end))
            pending = None
        if pending is not None:  # the whole text is letterless: one sentence
            pieces.append(_strip(text, pending, len(text)))
        return [SentenceSpan(text[s:e], s, e) for s, e in pieces]

    def _cuts(self, text: str) -> list[int]:
        """Character positions where a sentence ends (end-exclusive), in increasing order."""
        cuts: list[int] = []
        start = 0  # where the current sentence began
        n = len(text)
        for m in _EVENT.finditer(text):
            if m.group("brk") is not None:
                if self.newline_is_boundary:
                    cuts.append(m.end())
                    start = m.end()
                continue
            end = m.end()
            if end < n and not text[end].isspace():
                run = m.group("term")
                if not (("?" in run or "!" in run or "\u203d" in run) and text[end].isupper()):
                    continue  # "3.5", "e.g", "file.txt", "!?x": not a boundary
            if self._ends_sentence(text, m.start(), end, start):
                cuts.append(end)
                start = end
        return cuts

    def _ends_sentence(self, text: str, a: int, end: int, sentence_start: int) -> bool:
        """Whether the terminator run ``text[a:end]`` ends the sentence that began at ``sentence_start``."""
        run = text[a:end].rstrip(_CLOSERS)
        quoted = len(run) < end - a
        nxt = _next_visible(text, end)
        next_char = text[nxt] if nxt < len(text) else ""
        if any(c in run for c in "?!\u203d"):
            return not (quoted and next_char.islower())  # '"Stop!" he said.' is one sentence
        if len(run) > 1 or run == "\u2026":  # ellipsis
            return next_char == "" or next_char.isupper() or _has_line_break(text[end:nxt])
        # a single full stop
        w_start = a
        while w_start > 0 and not text[w_start - 1].isspace():
            w_start -= 1
        word = text[w_start:a].lstrip(_OPENERS)
        if not word:  # "top left . a blue": a spaced full stop always ends a sentence
            return True
        if _LIST_NUMBER.fullmatch(word) and not text[sentence_start:w_start].strip():
            return False  # enumeration marker "1." opening a sentence
        lower = word.lower()
        if lower in NEVER_FINAL:
            return False
        if lower in BEFORE_NUMBER and next_char.isdigit():
            return False
        if lower in MAYBE_FINAL or _DOTTED_ACRONYM.fullmatch(word):
            return not next_char.islower()
        return True


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _next_visible(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _has_line_break(s: str) -> bool:
    return any(c in _LINE_BREAKS for c in s)


# --------------------------------------------------------------------------------------------
# LLM rewriter
# --------------------------------------------------------------------------------------------

#: The instruction given to the LLM; ``{text}`` is replaced by the response. In the spirit of the
#: AdaViP/DAMA papers' LLaMA-3 prompt (theirs is not published verbatim).
DEFAULT_INSTRUCTION = (
    "Rewrite the following text as short, self-contained sentences, one sentence per line. "
    "Each sentence must make sense on its own: replace pronouns and references with the nouns "
    "they stand for. Keep every fact, add nothing, and write nothing but the sentences.\n\n"
    "Text: {text}"
)

_LIST_MARKER = re.compile(r"^(?:[-*\u2022\u2013]|\(?\d{1,3}[.)]|\(\d{1,3}\))\s+")


def parse_sentence_lines(generated: str) -> list[str]:
    """The sentences of an LLM's rewrite: one per non-empty line, list markers removed.

    A first line that ends with ``":"`` is a preamble ("Here are the sentences:") and is dropped.
    """
    lines = [line.strip() for line in generated.splitlines()]
    lines = [line for line in lines if line]
    if lines and lines[0].endswith(":"):
        lines = lines[1:]
    out = []
    for line in lines:
        line = _LIST_MARKER.sub("", line).strip()
        if line:
            out.append(line)
    return out


class LLMSplitter:
    """Rewrites a response into self-contained sentences with a local Hugging Face causal LM.

    This is how the AdaViP and DAMA papers split responses before CLIP scoring (they prompt
    LLaMA-3). Generation is greedy and batched with left padding; the new tokens are decoded
    without special tokens and cut into lines by :func:`parse_sentence_lines`.

    Args:
        model: a causal LM (``PreTrainedModel``) or a local checkpoint path for
            ``AutoModelForCausalLM.from_pretrained``.
        tokenizer: the model's tokenizer; loaded from ``model`` when that is a path.
        instruction: the prompt, with a ``{text}`` placeholder.
        use_chat_template: wrap the instruction as one user turn of the tokenizer's chat
            template (when it has one); otherwise the prompt is the instruction followed by
            ``"\\n\\nSentences:\\n"``.
        max_new_tokens: generation budget per response.
        batch_size: responses per ``generate`` call.
        device: where to run; defaults to the model's device.
        fallback: splitter used when the LLM returns no sentence, so every non-empty response
            keeps at least one sentence (DAMA needs one); ``None`` returns ``[]`` then.
        generation_kwargs: extra arguments for ``model.generate`` (e.g. a ``logits_processor``).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        instruction: str = DEFAULT_INSTRUCTION,
        use_chat_template: bool = True,
        max_new_tokens: int = 256,
        batch_size: int = 8,
        device: str | None = None,
        fallback: SentenceSplitter | None = None,
        generation_kwargs: dict[str, Any] | None = None,
    ):
        if isinstance(model, str | Path):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from mmpo.hub import loading, pretrained_kwargs

            local = pretrained_kwargs(model, what="sentence-splitter LLM")  # local only, unless MMPO_ALLOW_DOWNLOAD=1
            with loading(model, "sentence-splitter LLM"):
                tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(model, **local)
                model = AutoModelForCausalLM.from_pretrained(model, **local)
        if tokenizer is None:
            raise ValueError("LLMSplitter needs the model's tokenizer when given a model object")
        if "{text}" not in instruction:
            raise ValueError("the instruction needs a '{text}' placeholder")
        self.model = model.to(device) if device is not None else model
        self.model.eval()
        self.tokenizer = tokenizer
        self.instruction = instruction
        self.use_chat_template = use_chat_template and getattr(tokenizer, "chat_template", None) is not None
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.fallback = fallback if fallback is not None else RuleSplitter()
        self.generation_kwargs = dict(generation_kwargs or {})

    def prompt(self, text: str) -> str:
        """The full prompt string for one response."""
        instruction = self.instruction.replace("{text}", text.strip())
        if self.use_chat_template:
            messages = [{"role": "user", "content": instruction}]
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return instruction + "\n\nSentences:\n"

    def rewrite(self, text: str) -> list[str]:
        """The self-contained sentences of one response."""
        return self.rewrite_many([text])[0]

    def rewrite_many(self, texts: Sequence[str]) -> list[list[str]]:
        """:meth:`rewrite` for many responses, ``batch_size`` per ``generate`` call."""
        out: list[list[str]] = []
        for i in range(0, len(texts), self.batch_size):
            chunk = list(texts[i : i + self.batch_size])
            for text, generated in zip(chunk, self._generate(chunk), strict=True):
                sentences = parse_sentence_lines(generated)
                if not sentences and text.strip() and self.fallback is not None:
                    sentences = [s.text for s in self.fallback.split(text)]
                out.append(sentences)
        return out

    def split(self, text: str) -> list[SentenceSpan]:
        """Best-effort spans of the rewritten sentences in ``text``.

        A rewritten sentence that occurs verbatim in ``text`` (whitespace may differ), after the
        previous aligned one, gets its real character span and the original wording. Any other
        sentence (rephrased, pronouns resolved) comes back with its rewritten text and
        ``char_start = char_end = -1``; :func:`token_spans` rejects such spans, so ASPO's token-level
        sentence rewards need :class:`RuleSplitter`. CLIP scoring only needs ``span.text``.
        """
        spans: list[SentenceSpan] = []
        cursor = 0
        for sentence in self.rewrite(text):
            words = sentence.split()
            m = re.compile(r"\s+".join(map(re.escape, words))).search(text, cursor) if words else None
            if m is None:
                spans.append(SentenceSpan(sentence, -1, -1))
            else:
                spans.append(SentenceSpan(text[m.start() : m.end()], m.start(), m.end()))
                cursor = m.end()
        return spans

    def _generate(self, texts: list[str]) -> list[str]:
        import torch

        tok = self.tokenizer
        side, pad = tok.padding_side, tok.pad_token
        tok.padding_side = "left"  # decoder-only generation continues from the right edge
        if pad is None:
            tok.pad_token = tok.eos_token
        try:
            enc = tok([self.prompt(t) for t in texts], return_tensors="pt", padding=True,
                      add_special_tokens=not self.use_chat_template)
            device = next(self.model.parameters()).device
            enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            kwargs = {"max_new_tokens": self.max_new_tokens, "do_sample": False, "pad_token_id": tok.pad_token_id}
            kwargs.update(self.generation_kwargs)
            with torch.no_grad():
                generated = self.model.generate(**enc, **kwargs)  # (B, T_prompt + T_new)
        finally:
            tok.padding_side = side
            if pad is None:
                tok.pad_token = None
        new = generated[:, enc["input_ids"].shape[1] :]  # (B, T_new)
        return tok.batch_decode(new, skip_special_tokens=True)


# --------------------------------------------------------------------------------------------
# Character spans -> token spans
# --------------------------------------------------------------------------------------------


def token_spans(spans: Sequence[SentenceSpan], offsets: Sequence[Sequence[int]] | Any) -> list[SentenceSpan]:
    """Fill in each sentence's token span (end-exclusive) from a tokenizer's ``offset_mapping``.

    A token belongs to the sentence containing its first non-space character, i.e. the first
    sentence whose character span overlaps the token's (sentence spans have no surrounding
    whitespace, so a token ``" word"`` goes with ``word``). Tokens that overlap no sentence —
    special tokens such as EOS (offsets ``(0, 0)``), whitespace-only tokens between sentences, text
    outside every sentence — go with the sentence of the token before them (the first sentence for
    leading ones). So the token spans are contiguous, in order, and cover ``[0, T)``: every token
    of the response is in exactly one sentence and trailing EOS/padding goes to the last one. A
    sentence all of whose characters lie in a token that starts in an earlier sentence gets an
    empty span (``token_start == token_end``).

    Args:
        spans: sentences with character spans into the response (``char_start >= 0``), in order.
        offsets: ``(T, 2)`` character offsets of the response's tokens (list of pairs or tensor),
            relative to the same response text.

    Returns:
        Copies of ``spans`` with ``token_start``/``token_end`` set; ``[]`` when ``spans`` is empty.
    """
    spans = list(spans)
    if not spans:
        return []
    if any(s.char_start < 0 for s in spans):
        raise ValueError("token_spans needs character spans (char_start >= 0); an LLMSplitter rewrite "
                         "has none — use RuleSplitter for token-level sentence rewards")
    pairs = offsets.tolist() if hasattr(offsets, "tolist") else offsets
    starts = [s.char_start for s in spans]
    owner: list[int] = []  # (T,) sentence index of each token
    current = 0
    for start, end in pairs:
        if end > start:
            # first sentence overlapping [start, end): the last one starting before `end`, or earlier
            k = max(bisect.bisect_right(starts, start) - 1, 0)
            while k < len(spans) and spans[k].char_end <= start:
                k += 1
            if k < len(spans) and spans[k].char_start < end:
                current = max(current, k)
        owner.append(current)
    out = []
    for k, span in enumerate(spans):
        # owner is non-decreasing, so sentence k owns the contiguous run of tokens equal to k
        first, last = bisect.bisect_left(owner, k), bisect.bisect_right(owner, k)
        out.append(SentenceSpan(span.text, span.char_start, span.char_end, first, last))
    return out


def sentence_token_spans(text: str, tokenizer: Any, splitter: SentenceSplitter | None = None,
                         append_eos: bool = True) -> tuple[list[SentenceSpan], int]:
    """Split ``text`` into sentences and give each its token span in the tokenized response.

    The response is tokenized on its own: no special tokens, then one EOS (``append_eos``), which
    joins the last sentence. :class:`mmpo.data.collator.RowEncoder` tokenizes a response in the
    context of its prompt (and the template's lead), which gives the same tokens for word-level and
    most BPE tokenizers but not for all; the training collator therefore maps sentences with
    :func:`token_spans` onto the encoder's own offsets.

    Returns:
        ``(spans, n_tokens)``: the sentences with token spans covering ``[0, n_tokens)``.
    """
    splitter = splitter if splitter is not None else RuleSplitter()
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    if append_eos and tokenizer.eos_token_id is not None:
        offsets.append((0, 0))
    return token_spans(splitter.split(text), offsets), len(offsets)
