"""The chunked LM head is exact for every family: log-probs and gradients of the forward pass with
the head run a few positions at a time (:func:`mmpo.lm_head.chunked_logprobs`) equal the model's own
full logits, to 1e-5 in float32, in every row layout (one row per response, prefix-shared, packed),
with LoRA on the head, with tied embeddings, and under gradient checkpointing. The engines
(DDP, FSDP2, ZeRO-2/3) run it by default in ``test_distributed_parity.py``.
"""

from __future__ import annotations

import pytest
from test_prefix_sharing import assert_same_logps_and_grads, logps_and_grads, records

from helpers import training_args
from mmpo.data.collator import PreferenceCollator, RowEncoder
from mmpo.forward import packing_problem, policy_response_logps, prefix_sharing_problem
from mmpo.lm_head import head_problem
from mmpo.testing.families import FAMILIES, VARIANTS, build_family
from mmpo.training.config import ModelArguments
from mmpo.training.policy import prepare_policy

ALL = (*FAMILIES, *VARIANTS)


def collate(processor, recs, **layout) -> dict:
    return PreferenceCollator(RowEncoder(processor), vision_rows=True, **layout)(
        [{"record": r, "index": i} for i, r in enumerate(recs)])


def chunked_and_full(model, batch, chunk: int = 3):
    """``logps_and_grads`` with the model's own logits, then with the head run ``chunk`` positions at a time."""
    results = []
    for head_chunk in (0, chunk):
        def forward(m, b, head_chunk=head_chunk):
            return policy_response_logps(m, b, head_chunk=head_chunk)
        results.append(logps_and_grads(model, batch, forward=forward))
    return results


@pytest.mark.parametrize("name", ALL)
def test_the_chunked_head_equals_the_full_logits(name):
    model, processor = build_family(name)
    assert head_problem(model) is None
    model.train()
    recs = records(3)
    layout = ({"max_tokens_per_row": 10**6} if packing_problem(model) is None
              else {"prefix_sharing": prefix_sharing_problem(model) is None})
    full, chunked = chunked_and_full(model, collate(processor, recs, **layout))
    assert_same_logps_and_grads(full, chunked)


def test_one_row_per_response_too():
    model, processor = build_family("qwen2_vl")
    model.train()
    assert_same_logps_and_grads(*chunked_and_full(model, collate(processor, records(3))))


def test_lora_on_the_head_and_gradient_checkpointing(tmp_path):
    model, processor = build_family("llava")
    lora = prepare_policy(model, ModelArguments(model_name_or_path="-", use_lora=True, lora_r=4, lora_dropout=0.0,
                                                lora_target_modules=r"(.*\.)?(q_proj|v_proj|lm_head)"),
                          training_args(tmp_path))
    lora.train()
    assert any("lm_head" in n and "lora" in n for n, p in lora.named_parameters() if p.requires_grad)
    lora.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    full, chunked = chunked_and_full(lora, collate(processor, records(3), prefix_sharing=True))
    assert any("lm_head" in key for key in chunked[2])
    assert_same_logps_and_grads(full, chunked)


def test_tied_embeddings():
    """With the head tied to the input embedding, the embedding's gradient has both paths."""
    model, processor = build_family("llava")
    model.config.tie_word_embeddings = model.config.text_config.tie_word_embeddings = True
    model.tie_weights()
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    assert head.weight is embedding.weight
    model.train()
    full, chunked = chunked_and_full(model, collate(processor, records(3), prefix_sharing=True))
    assert_same_logps_and_grads(full, chunked)


def test_the_trainer_passes_its_chunk_and_zero_keeps_the_full_logits(tmp_path, monkeypatch):
    from test_prefix_sharing import trainer_for

    import mmpo.training.trainer as trainer_module

    seen = []
    real = trainer_module.policy_response_logps

    def spy(model, batch, head_chunk=None):
        seen.append(head_chunk)
        return real(model, batch, head_chunk=head_chunk)

    monkeypatch.setattr(trainer_module, "policy_response_logps", spy)
    for chunk in (0, 7):
        trainer_for("llava", tmp_path / str(chunk), lm_head_chunk_size=chunk, max_steps=1).train()
        assert seen[-1] == chunk
