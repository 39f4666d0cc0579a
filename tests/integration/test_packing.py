"""Packed rows are exact: several records in one row, each attending only to itself with its positions
restarted, give every response the log-probs and gradients of a row of its own.

For every family the suite builds that can pack (all but Gemma 3, which cannot share a row at all,
and Mllama, whose cross-attention reads each row's own images): prefix-shared and packed, and
packed without sharing (one response per document), against one row per response, to 1e-5 in
float32. Also: how documents are grouped (:func:`pack_documents`), the mask with documents by hand,
the mask and flex attention's ``mask_mod`` against the rule element by element, flex attention's own
forward on this CPU, and a training step that is the same packed or not.
"""

from __future__ import annotations

import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_prefix_sharing import assert_same_logps_and_grads, logps_and_grads, records, trainer_for

from mmpo.data.collator import PreferenceCollator, RowEncoder, pack_documents
from mmpo.forward import (
    allowed_attention,
    attention_mask_for,
    block_attention_mask,
    document_starts,
    mask_mod,
    packing_problem,
    policy_response_logps,
)
from mmpo.testing.families import FAMILIES, VARIANTS, build_family

PACKABLE = tuple(n for n in (*FAMILIES, *VARIANTS) if n not in ("gemma3", "mllama"))


def collate(processor, recs, *, shared: bool, budget: int | None, vision: bool = True) -> dict:
    collator = PreferenceCollator(RowEncoder(processor), vision_rows=vision, prefix_sharing=shared,
                                  max_tokens_per_row=budget)
    return collator([{"record": r, "index": i} for i, r in enumerate(recs)])


def budget_for(processor, recs, shared: bool) -> int:
    """A budget that puts two or three documents in a row: twice the longest document."""
    alone = collate(processor, recs, shared=shared, budget=10**9)
    lengths = [int((alone["document_ids"][0] == d).sum()) for d in range(int(alone["document_ids"].max()) + 1)]
    return 2 * max(lengths) + 1


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "one-response-each"])
@pytest.mark.parametrize("name", PACKABLE)
def test_packed_rows_give_the_same_logprobs_and_gradients(name, shared, built):
    model, processor = built(name)
    assert packing_problem(model) is None
    model.train()
    recs = records(4)
    separate = collate(processor, recs, shared=False, budget=None)
    packed = collate(processor, recs, shared=shared, budget=budget_for(processor, recs, shared))
    documents = packed["document_ids"]
    documents_per_row = documents.max(dim=1).values + 1
    assert documents_per_row.max() >= 2 and documents.shape[0] >= 2  # several rows, some holding several records
    assert_same_logps_and_grads(logps_and_grads(model, separate), logps_and_grads(model, packed))


def test_mllama_cannot_pack_and_the_trainer_says_why(tmp_path, caplog):
    model, _ = build_family("mllama")
    assert "cross-attends" in packing_problem(model)
    with caplog.at_level(logging.INFO, logger="mmpo.training.trainer"):
        trainer = trainer_for("mllama", tmp_path, max_tokens_per_row=4096)
    assert trainer.data_collator.max_tokens_per_row is None
    assert [r.getMessage() for r in caplog.records if "packing is off" in r.getMessage()]
    assert trainer_for("llava", tmp_path / "l", max_tokens_per_row=4096).data_collator.max_tokens_per_row == 4096


def test_the_packed_layout(built):
    """Documents keep their order, each row holds at most the budget, positions restart with each
    document, and the response entries point into the right row and document."""
    _, processor = built("llava")
    recs = records(4)
    unpacked = collate(processor, recs, shared=True, budget=None)
    packed = collate(processor, recs, shared=True, budget=budget_for(processor, recs, True))
    budget = budget_for(processor, recs, True)
    documents, segments = packed["document_ids"], packed["segment_ids"]
    assert ((documents >= 0).sum(dim=1) <= budget).all()
    # The documents, read row by row, are the unpacked rows in order.
    pieces = [packed["model_inputs"]["input_ids"][n][documents[n] == d]
              for n in range(documents.shape[0]) for d in range(int(documents[n].max()) + 1)]
    want = [row[seg >= 0] for row, seg in zip(unpacked["model_inputs"]["input_ids"], unpacked["segment_ids"],
                                               strict=True)]
    assert len(pieces) == len(want) and all(torch.equal(a, b) for a, b in zip(pieces, want, strict=True))
    starts = document_starts(segments, documents)
    for n in range(documents.shape[0]):
        for t in range(documents.shape[1]):
            if documents[n, t] >= 0:
                assert packed["position_ids"][n, t] <= t - starts[n, t]
                assert segments[n, t] != 0 or packed["position_ids"][n, t] == t - starts[n, t]
    input_ids = packed["model_inputs"]["input_ids"]
    for r in range(packed["response_row"].shape[0]):
        n, length = packed["response_row"][r], packed["response_length"][r]
        tokens = packed["response_tokens"][r, :length]
        assert torch.equal(input_ids[n, tokens], unpacked["model_inputs"]["input_ids"][unpacked["response_row"][r],
                                                                                    unpacked["response_tokens"][r,
                                                                                                                :length]])
        assert len(set(documents[n, tokens].tolist())) == 1


def test_pack_documents_by_hand():
    assert pack_documents([5, 5, 5, 5], 10) == [[0, 1], [2, 3]]
    assert pack_documents([9, 1, 1, 9], 10) == [[0, 1], [2, 3]]  # two rows of 10, not [9], [1, 1], [9]
    assert pack_documents([3, 3, 3, 3, 3], 10) == [[0, 1, 2], [3, 4]]  # rows of 9 and 6
    assert pack_documents([4, 4, 4], 10) == [[0, 1], [2]]
    assert pack_documents([12, 2, 2], 10) == [[0], [1, 2]]  # a document over the budget has a row of its own
    with pytest.raises(ValueError, match="max_tokens_per_row"):
        pack_documents([1], 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=30), st.integers(1, 120))
def test_pack_documents_keeps_order_and_budget_with_the_fewest_rows(lengths, budget):
    rows = pack_documents(lengths, budget)
    assert [d for row in rows for d in row] == list(range(len(lengths)))
    for row in rows:
        assert len(row) >= 1
        assert sum(lengths[d] for d in row) <= budget or len(row) == 1
    # The fewest rows: greedy filling at the budget is optimal for consecutive groups.
    fewest, used = 0, budget + 1
    for n in lengths:
        if used + n > budget or n > budget:
            fewest, used = fewest + 1, 0
        used += n
    assert len(rows) == fewest


def test_the_mask_with_documents_by_hand():
    """Row: document 0 = prompt [0, 0] + response [1]; document 1 = prompt [0] + responses [1], [2]; one pad."""
    segments = torch.tensor([[0, 0, 1, 0, 1, 2, -1]])
    documents = torch.tensor([[0, 0, 0, 1, 1, 1, -1]])
    mask = block_attention_mask(segments, dtype=torch.float32, attention="sdpa", documents=documents)[0, 0].int()
    expected = torch.tensor([[1, 0, 0, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0, 0],
                             [0, 0, 0, 1, 0, 0, 0],
                             [0, 0, 0, 1, 1, 0, 0],
                             [0, 0, 0, 1, 0, 1, 0],
                             [0, 0, 0, 0, 0, 0, 1]])
    assert torch.equal(mask, expected)
    assert document_starts(segments, documents).tolist() == [[0, 0, 0, 3, 3, 3, 6]]
    prefix = allowed_attention(segments, documents, bidirectional_prefix=True)[0]
    assert prefix[0, 1] and not prefix[2, 3] and not prefix[3, 1]


def naive_allowed(segments: list[int], documents: list[int], q: int, k: int, bidirectional: bool) -> bool:
    """The rule in words: padding sees only itself; otherwise a token sees a token of its own document
    that is not padding and is either earlier or itself, in the prompt or in its own response, or,
    for a bidirectional prefix, any prompt token when it is a prompt token itself."""
    if segments[q] < 0:
        return q == k
    if segments[k] < 0 or documents[q] != documents[k]:
        return False
    if bidirectional and segments[q] == 0 and segments[k] == 0:
        return True
    return k <= q and segments[k] in (0, segments[q])


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_the_mask_equals_the_rule_element_by_element(data):
    """Random packed layouts (documents of a prompt and responses, padding at the end): the dense
    mask and flex's ``mask_mod``, called one element at a time as flex calls it, give the rule."""
    rows, width = data.draw(st.integers(1, 3)), data.draw(st.integers(2, 24))
    segments = torch.full((rows, width), -1)
    documents = torch.full((rows, width), -1)
    for n in range(rows):
        t, d = 0, 0
        while t < width and data.draw(st.booleans()) | (t == 0):
            prompt = data.draw(st.integers(1, 4))
            segments[n, t: t + prompt], documents[n, t: t + prompt] = 0, d
            t += prompt
            for k in range(1, data.draw(st.integers(0, 3)) + 1):
                n_tokens = data.draw(st.integers(1, 4))
                segments[n, t: t + n_tokens], documents[n, t: t + n_tokens] = k, d
                t += n_tokens
            d += 1
    segments, documents = segments[:, :width], documents[:, :width]
    for bidirectional in (False, True):
        dense = allowed_attention(segments, documents, bidirectional_prefix=bidirectional)  # (N, T, T)
        rule = mask_mod(segments, documents, bidirectional_prefix=bidirectional)
        for n in range(rows):
            seg, doc = segments[n].tolist(), documents[n].tolist()
            for q in range(width):
                for k in range(width):
                    want = naive_allowed(seg, doc, q, k, bidirectional)
                    assert bool(dense[n, q, k]) == want, (n, q, k, bidirectional)
                    assert bool(rule(torch.tensor(n), None, torch.tensor(q), torch.tensor(k))) == want


def test_flex_attention_runs_packed_rows_exactly_on_this_cpu(built):
    """Flex attention's forward runs on CPU (its backward does not: the GPU script
    ``benchmarks/flex_attention_gpu.py`` checks gradients); shared + packed rows under a
    ``BlockMask`` equal one row per response under SDPA."""
    model, processor = build_family("llava")
    recs = records(4)
    with torch.no_grad():
        want, _ = policy_response_logps(model, collate(processor, recs, shared=False, budget=None))
        model.set_attn_implementation("flex_attention")
        assert packing_problem(model) is None
        packed = collate(processor, recs, shared=True, budget=budget_for(processor, recs, True))
        from torch.nn.attention.flex_attention import BlockMask
        assert isinstance(attention_mask_for(model, packed["segment_ids"], packed["document_ids"]), BlockMask)
        got, _ = policy_response_logps(model, packed)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_a_packed_training_step_is_the_same_as_an_unpacked_one(tmp_path):
    """Three AdaViP steps with packing end at the weights of three steps without it: the batch is
    still the same records, DAMA's and the loss's per-batch statistics see the same values."""
    weights = []
    for budget in (None, 4096):
        trainer = trainer_for("llava", tmp_path / str(budget), max_tokens_per_row=budget, max_steps=3,
                              learning_rate=1e-3)
        assert trainer.data_collator.max_tokens_per_row == budget
        trainer.train()
        weights.append({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
    worst = max((weights[0][n] - weights[1][n]).abs().max().item() for n in weights[0])
    assert worst < 1e-4, worst


def test_length_grouping_orders_records_by_their_token_counts(tmp_path):
    """``train_sampling_strategy: group_by_length`` groups records of similar length into a batch (so a
    batch pads little, packed or not), by the token counts of their prompts and responses."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    trainer = trainer_for("llava", tmp_path, train_sampling_strategy="group_by_length", max_steps=1)
    records = trainer.train_dataset.records
    lengths = trainer.data_collator.encoder.text_lengths(records)
    tokenizer = trainer.data_collator.encoder.tokenizer
    assert lengths[0] > len(tokenizer(records[0].chosen + records[0].rejected)["input_ids"])  # the prompt counts
    assert len(set(lengths)) > 1
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler)
    order = list(sampler)
    assert sorted(order) == list(range(len(records)))
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)  # one mega-batch here: longest first
    trainer.train()
    rebalanced = trainer_for("llava", tmp_path / "rebalance", train_sampling_strategy="batch_rebalance", max_steps=1)
    from transformers.trainer_pt_utils import BatchRebalanceSampler
    assert isinstance(rebalanced._get_train_sampler(), BatchRebalanceSampler)
    rebalanced.train()


@pytest.mark.parametrize("name", ["llava", "qwen2_vl", "paligemma", "idefics3"])
def test_attention_block_by_block_equals_the_dense_mask(name, built, monkeypatch):
    """Under SDPA the shared and packed rows' attention runs one block at a time (each prompt, each
    response with its prompt) instead of over the whole row under a dense mask: the same log-probs and
    gradients, and every decoder attention call took the blocks."""
    import mmpo.forward as forward

    model, processor = built(name)
    model.train()
    recs = records(4)
    packed = collate(processor, recs, shared=True, budget=budget_for(processor, recs, True))
    dense = {k: v for k, v in packed.items() if k != "blocks"}
    calls = []
    attend = forward.Blocks.attend
    monkeypatch.setattr(forward.Blocks, "attend", lambda self, *a, **k: calls.append(1) or attend(self, *a, **k))
    want = logps_and_grads(model, dense)
    assert not calls
    got = logps_and_grads(model, packed)
    assert len(calls) == model.config.get_text_config().num_hidden_layers
    assert_same_logps_and_grads(want, got)
