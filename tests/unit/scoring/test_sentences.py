"""Sentence splitting, the LLM rewriter's plumbing, and character -> token span mapping."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedTokenizerFast,
)

from mmpo.scoring.sentences import (
    LLMSplitter,
    RuleSplitter,
    SentenceSplitter,
    parse_sentence_lines,
    sentence_token_spans,
    token_spans,
)
from mmpo.toyworld.model import train_tokenizer
from mmpo.toyworld.scenes import WorldConfig, sample_scenes
from mmpo.types import SentenceSpan


def texts(text: str) -> list[str]:
    return [s.text for s in RuleSplitter().split(text)]


# ---------------------------------------------------------------------------------------------
# RuleSplitter
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("a red circle is at the top left . a blue square is at the top right .",
     ["a red circle is at the top left .", "a blue square is at the top right ."]),
    ("Dr. Smith arrived. Mr. Jones left.", ["Dr. Smith arrived.", "Mr. Jones left."]),
    ("Use a shape, e.g. a star. It is bright.", ["Use a shape, e.g. a star.", "It is bright."]),
    ("It costs 3.5 dollars. That is cheap.", ["It costs 3.5 dollars.", "That is cheap."]),
    ("1. First item. 2. Second item.", ["1. First item.", "2. Second item."]),
    ("He waited... Then he left", ["He waited...", "Then he left"]),
    ("Wait... what? ok", ["Wait... what?", "ok"]),
    ("no final punctuation here", ["no final punctuation here"]),
    ("Shapes etc. are here. He lives in the U.S. He works.",
     ["Shapes etc. are here.", "He lives in the U.S.", "He works."]),
    ("See Fig. 2 and No. 5. Done.", ["See Fig. 2 and No. 5.", "Done."]),
    ('"Stop!" he said. Really?! Yes.', ['"Stop!" he said.', "Really?!", "Yes."]),
    ("dollars!Really? yes", ["dollars!", "Really?", "yes"]),
    ("The list:\n- one\n- two\n\n1. three", ["The list:", "- one", "- two", "1. three"]),
    ("is there a circle in the image ? yes .", ["is there a circle in the image ?", "yes ."]),
])
def test_rule_splitter_cases(text, expected):
    assert texts(text) == expected


def test_rule_splitter_spans_are_exact_and_skip_whitespace():
    text = "  Hello  world.   Hi\tthere!\n\n  Bye  "
    spans = RuleSplitter().split(text)
    assert [(s.char_start, s.char_end) for s in spans] == [(2, 15), (18, 27), (31, 34)]
    assert all(text[s.char_start : s.char_end] == s.text for s in spans)
    assert all(s.token_start == -1 for s in spans)


def test_rule_splitter_edge_cases():
    assert texts("") == []
    assert texts("   \n ") == []
    assert texts("...") == ["..."]
    assert texts(". . a . . b") == [". . a . .", "b"]  # letterless pieces join a neighbour
    assert texts("line one\nline two") == ["line one", "line two"]
    assert RuleSplitter(newline_is_boundary=False).split("line one\nline two")[0].text == "line one\nline two"
    assert isinstance(RuleSplitter(), SentenceSplitter)


def test_rule_splitter_on_world_descriptions():
    for scene in sample_scenes(WorldConfig(), 50):
        assert texts(scene.description()) == [o.sentence() for o in scene.objects]


_ALPHABET = st.sampled_from(list("ab Z9.!?,:;\"')(\n\t") + ["...", " . ", "\u2026", "\u00a0", "e.g.", "Dr.", "1. ", "3.5"])


def check_span_invariants(text: str, spans: list[SentenceSpan]) -> None:
    pos = 0
    covered = set()
    for s in spans:
        assert 0 <= pos <= s.char_start < s.char_end <= len(text)  # in order, non-overlapping, inside
        assert text[s.char_start : s.char_end] == s.text
        assert s.text == s.text.strip() and s.text
        covered.update(range(s.char_start, s.char_end))
        pos = s.char_end
    # every visible character is in a sentence; only whitespace lies between sentences
    assert all(text[i].isspace() for i in range(len(text)) if i not in covered)


@settings(max_examples=300, deadline=None)
@given(st.lists(_ALPHABET, max_size=40).map("".join))
def test_rule_splitter_invariants(text):
    check_span_invariants(text, RuleSplitter().split(text))
    check_span_invariants(text, RuleSplitter(newline_is_boundary=False).split(text))


# ---------------------------------------------------------------------------------------------
# LLMSplitter: plumbing with a tiny random Llama on the world's tokenizer (no quality claims)
# ---------------------------------------------------------------------------------------------


def test_parse_sentence_lines():
    generated = "Here are the sentences:\n\n1. A red circle is at the top.\n- The circle is large.\n  \n* (3) x\n"
    assert parse_sentence_lines(generated) == ["A red circle is at the top.", "The circle is large.", "(3) x"]
    assert parse_sentence_lines("") == []


def tiny_llama(tokenizer) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


class ForceTokens(LogitsProcessor):
    """Forces generation to emit ``ids`` (one per step), whatever the random model prefers."""

    def __init__(self, ids: list[int], prompt_len: int):
        self.ids, self.prompt_len = ids, prompt_len

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_len
        forced = torch.full_like(scores, -float("inf"))
        forced[:, self.ids[max(0, min(step, len(self.ids) - 1))]] = 0.0
        return forced


def test_llm_splitter_prompt_uses_chat_template():
    tok = train_tokenizer()
    splitter = LLMSplitter(tiny_llama(tok), tok, instruction="describe the image . {text}")
    assert splitter.prompt(" a red circle . ") == "user : describe the image . a red circle . assistant :"
    plain = LLMSplitter(tiny_llama(tok), tok, instruction="split : {text}", use_chat_template=False)
    assert plain.prompt("a b") == "split : a b\n\nSentences:\n"
    with pytest.raises(ValueError, match="placeholder"):
        LLMSplitter(tiny_llama(tok), tok, instruction="no placeholder")


def test_llm_splitter_batching_matches_one_by_one():
    tok = train_tokenizer()
    splitter = LLMSplitter(tiny_llama(tok), tok, max_new_tokens=8, batch_size=2,
                           instruction="describe the image . {text}")
    inputs = ["a red circle is at the top left .",
              "a blue square is at the top right . a small green star is at the bottom left .", "yes"]
    batched = splitter.rewrite_many(inputs)
    assert batched == [splitter.rewrite(t) for t in inputs]
    assert all(isinstance(s, list) and all(isinstance(x, str) and x for x in s) for s in batched)
    assert tok.padding_side == "right"  # restored


def test_llm_splitter_decodes_lines_and_aligns_spans():
    tok = train_tokenizer()
    tok.add_tokens(["\n"])
    model = tiny_llama(tok)
    ids = tok.convert_tokens_to_ids
    out = ["a", "red", "circle", ".", "\n", "\n", "a", "blue", "star", "\n", "no", ".", tok.eos_token]
    text = "a  red circle . then a blue square ."
    splitter = LLMSplitter(model, tok, instruction="describe the image . {text}", max_new_tokens=20)
    prompt_len = len(tok(splitter.prompt(text), add_special_tokens=False)["input_ids"])
    splitter.generation_kwargs = {"logits_processor": LogitsProcessorList([ForceTokens([ids(t) for t in out], prompt_len)])}
    assert splitter.rewrite(text) == ["a red circle .", "a blue star", "no ."]
    spans = splitter.split(text)
    # the first sentence is in the text (whitespace differs), the others are not
    assert spans[0] == SentenceSpan("a  red circle .", 0, 15)
    assert [(s.text, s.char_start, s.char_end) for s in spans[1:]] == [("a blue star", -1, -1), ("no .", -1, -1)]
    with pytest.raises(ValueError, match="character spans"):
        token_spans(spans, [(0, 1)])


def test_llm_splitter_falls_back_when_nothing_is_generated():
    tok = train_tokenizer()
    model = tiny_llama(tok)
    splitter = LLMSplitter(model, tok, instruction="describe the image . {text}", max_new_tokens=4)
    prompt_len = len(tok(splitter.prompt("a b . c d ."), add_special_tokens=False)["input_ids"])
    splitter.generation_kwargs = {"logits_processor": LogitsProcessorList([ForceTokens([tok.eos_token_id], prompt_len)])}
    assert splitter.rewrite("a b . c d .") == ["a b .", "c d ."]
    assert splitter.rewrite("  ") == []


# ---------------------------------------------------------------------------------------------
# token_spans
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE with a small vocabulary, so most words split into several tokens and
    offsets include the leading space ("Ġword")."""
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<unk>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [s.description() for s in sample_scenes(WorldConfig(), 200)] + ["Dr. Smith paid 3.5 dollars."]
    raw.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")


def check_token_spans(text: str, spans: list[SentenceSpan], n_tokens: int, offsets) -> None:
    assert spans[0].token_start == 0 and spans[-1].token_end == n_tokens
    for a, b in zip(spans, spans[1:], strict=False):
        assert a.token_end == b.token_start  # contiguous: every token in exactly one sentence
    for s in spans:
        assert s.token_start <= s.token_end
        owned = [o for o in offsets[s.token_start : s.token_end] if o[1] > o[0]]
        if owned:  # the sentence's tokens cover its text
            assert owned[0][0] <= s.char_start and owned[-1][1] >= s.char_end


def test_token_spans_with_multi_token_words_and_odd_whitespace():
    tok = bpe_tokenizer()
    text = "  Dr. Smith  paid 3.5 dollars.\n\n a zigzagging   circle is at the top left .  a blue square"
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert len(enc["input_ids"]) > len(text.split()) + 5  # words really split into several tokens
    spans, n = sentence_token_spans(text, tok)
    assert n == len(enc["input_ids"]) + 1  # + EOS
    assert [s.text for s in spans] == ["Dr. Smith  paid 3.5 dollars.", "a zigzagging   circle is at the top left .",
                                       "a blue square"]
    offsets = [tuple(o) for o in enc["offset_mapping"]] + [(0, 0)]
    check_token_spans(text, spans, n, offsets)
    # token spans re-assemble the whole response, and each sentence's tokens decode to its text
    pieces = ["".join(text[a:b] for a, b in offsets[s.token_start : s.token_end]) for s in spans]
    assert "".join(pieces) == text
    assert [p.strip() for p in pieces] == [s.text for s in spans]
    assert spans[-1].token_end - 1 == len(enc["input_ids"])  # EOS joins the last sentence


def test_token_spans_hand_worked():
    """Text "ab. cd" -> sentences [0, 3) and [4, 6). Tokens: "a"(0,1) "b."(1,3) " c"(3,5) "d"(5,6) EOS(0,0).
    " c" starts with a space, its first visible char is in sentence 2; EOS follows the last token."""
    spans = [SentenceSpan("ab.", 0, 3), SentenceSpan("cd", 4, 6)]
    out = token_spans(spans, [(0, 1), (1, 3), (3, 5), (5, 6), (0, 0)])
    assert [(s.token_start, s.token_end) for s in out] == [(0, 2), (2, 5)]
    # a leading special token goes to the first sentence; a token spanning both to the first
    out = token_spans(spans, torch.tensor([[0, 0], [0, 5], [5, 6]]))
    assert [(s.token_start, s.token_end) for s in out] == [(0, 2), (2, 3)]
    out = token_spans(spans, [(0, 6)])  # one token holds both sentences: the second is empty
    assert [(s.token_start, s.token_end) for s in out] == [(0, 1), (1, 1)]
    assert token_spans([], [(0, 1)]) == []


def test_sentence_token_spans_world_tokenizer():
    tok = train_tokenizer()
    scene = sample_scenes(WorldConfig(), 3)[2]
    text = scene.description()
    spans, n = sentence_token_spans(text, tok)
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert n == len(ids) and len(spans) == len(scene.objects)
    for s in spans[:-1]:
        assert tok.decode(ids[s.token_start : s.token_end]) == s.text
    assert ids[spans[-1].token_end - 1] == tok.eos_token_id
    spans, n = sentence_token_spans(text, tok, append_eos=False)
    assert n == len(ids) - 1 and spans[-1].token_end == n


@settings(max_examples=150, deadline=None)
@given(st.lists(_ALPHABET, max_size=30).map("".join))
def test_token_spans_invariants(text):
    tok = bpe_tokenizer()
    spans, n = sentence_token_spans(text, tok)
    if not spans:
        assert not text.strip()
        return
    offsets = [tuple(o) for o in tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
    check_token_spans(text, spans, n, offsets + [(0, 0)])


def test_llm_splitter_loads_a_local_checkpoint(tmp_path):
    tok = train_tokenizer()
    tiny_llama(tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    splitter = LLMSplitter(tmp_path, instruction="describe the image . {text}", max_new_tokens=3)
    from_objects = LLMSplitter(tiny_llama(tok), tok, instruction="describe the image . {text}", max_new_tokens=3)
    assert splitter.rewrite("a red circle .") == from_objects.rewrite("a red circle .")
