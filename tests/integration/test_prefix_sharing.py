"""Prefix sharing is exact: a record's image and prompt run once, its responses after them in one
row, and every log-prob and gradient equals the one-row-per-response path.

For every family the suite builds (:mod:`mmpo.testing.families`): the per-token log-probs of
chosen, rejected and AdaViP's vision-rejected rows agree to 1e-5 in float32 and so do the
gradients of a DPO-like loss with respect to every parameter; families that cannot share fall back
with one logged reason. Also: the batch layout itself, the mask, LoRA's adapter-off reference and
the precomputed reference table, eager attention, and the trainer's switch.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import training_args
from mmpo.data.collator import PreferenceCollator, PreferenceDataset, RowEncoder
from mmpo.forward import block_attention_mask, policy_response_logps, prefix_sharing_problem
from mmpo.testing.families import FAMILIES, VARIANTS, build_family
from mmpo.training.config import AdavipConfig, Methods, ModelArguments
from mmpo.training.policy import prepare_policy
from mmpo.training.reference import compute_reference_table
from mmpo.training.trainer import PreferenceTrainer
from mmpo.types import PreferenceRecord

ALL = (*FAMILIES, *VARIANTS)
SHARED = tuple(n for n in ALL if n != "gemma3")


def picture(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def records(n: int = 3) -> list[PreferenceRecord]:
    """Records of different prompt and response lengths and image sizes; the middle one has no
    vision-rejected image (its vision row must come from its chosen response)."""
    prompts = ["describe the image .", "is there a red circle in the image ? answer yes or no , then describe it ."]
    chosen = ["a red circle is at the top left .", "yes . a red circle is at the top left . a blue star is below it .",
              "a green square ."]
    rejected = ["a yellow star is at the bottom left . a red square is at the top .", "no .",
                "a blue circle is at the top right ."]
    out = []
    for i in range(n):
        out.append(PreferenceRecord(image=picture(64 if i % 2 else 56, 64, i), prompt=prompts[i % 2],
                                    chosen=chosen[i % 3], rejected=rejected[i % 3], id=f"r{i}",
                                    rejected_image=None if i == 1 else picture(64 if i % 2 else 56, 64, 100 + i)))
    return out


def collate(processor, recs, shared: bool, vision: bool = True) -> dict:
    collator = PreferenceCollator(RowEncoder(processor), vision_rows=vision, prefix_sharing=shared)
    return collator([{"record": r, "index": i} for i, r in enumerate(recs)])


def logps_and_grads(model, batch, forward=policy_response_logps) -> tuple[torch.Tensor, torch.Tensor,
                                                                          dict[str, torch.Tensor]]:
    model.zero_grad()
    logps, mask = forward(model, batch)
    B = batch["record_index"].shape[0]
    sums = logps.sum(dim=1)
    # A DPO-like scalar over all three row kinds, so every row's gradient path is exercised.
    loss = -torch.nn.functional.logsigmoid(sums[:B] - sums[B:2 * B]).sum() - 0.3 * sums[2 * B:].sum()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), mask, grads


def assert_same_logps_and_grads(want, got) -> None:
    """Two ``logps_and_grads`` results agree: masks exactly, log-probs to 1e-5 (and are not trivially
    small: random models give real log-probs), every gradient to 1e-5 of the largest one (some are
    exactly 0 in exact arithmetic: a key projection's bias shifts every score of a query by the
    same amount, so only float noise is left of them)."""
    (want_logps, want_mask, want_grads), (got_logps, got_mask, got_grads) = want, got
    assert torch.equal(got_mask, want_mask)
    torch.testing.assert_close(got_logps, want_logps, atol=1e-5, rtol=0)
    assert want_logps.abs().max() > 1.0
    assert got_grads.keys() == want_grads.keys()
    scale = max(g.abs().max() for g in want_grads.values())
    for key, grad in want_grads.items():
        torch.testing.assert_close(got_grads[key] / scale, grad / scale, atol=1e-5, rtol=0, msg=key)


@pytest.mark.parametrize("name", SHARED)
def test_shared_rows_give_the_same_logprobs_and_gradients(name, built):
    model, processor = built(name)
    assert prefix_sharing_problem(model) is None
    model.train()
    recs = records()
    separate = collate(processor, recs, shared=False)
    shared = collate(processor, recs, shared=True)
    assert shared["model_inputs"]["input_ids"].shape[0] == len(recs) + 2  # 3 pair rows + 2 vision rows
    assert separate["model_inputs"]["input_ids"].shape[0] == 3 * len(recs)
    assert_same_logps_and_grads(logps_and_grads(model, separate), logps_and_grads(model, shared))


def test_gemma3_cannot_share_and_says_why(built):
    """Gemma 3's image tokens attend to each other both ways, which one block mask does not carry:
    shared rows would differ (by about 1e-4 here), so it keeps one row per response."""
    model, _ = built("gemma3")
    assert "Gemma 3" in prefix_sharing_problem(model)


def test_the_shared_batch_layout():
    """Record b's chosen and rejected share row b; its vision entry is its own row, or its chosen
    response when it has no rejected image; each response's first token is predicted by the
    prompt's last position and its positions continue the prompt's."""
    _, processor = build_family("llava")
    recs = records()
    batch = collate(processor, recs, shared=True)
    B = len(recs)
    rows = batch["response_row"].tolist()
    assert rows == [0, 1, 2, 0, 1, 2, 3, 1, 4]
    segments, positions = batch["segment_ids"], batch["position_ids"]
    for r in range(3 * B):
        n, length = rows[r], int(batch["response_length"][r])
        tokens = batch["response_tokens"][r, :length]
        prompt_end = int((segments[n] == 0).sum())
        assert int(batch["response_logit_index"][r, 0]) == prompt_end - 1
        assert positions[n, tokens].tolist() == list(range(prompt_end, prompt_end + length))
        assert len(set(segments[n, tokens].tolist())) == 1
    assert batch["logits_from"] == min(int((segments[n] == 0).sum()) for n in range(segments.shape[0])) - 1
    assert batch["response_width"] == int(batch["response_length"].max())


def test_block_mask_by_hand():
    """Prompt [0, 0], first response [1], second response [2, 2], one pad."""
    segments = torch.tensor([[0, 0, 1, 2, 2, -1]])
    mask = block_attention_mask(segments, dtype=torch.float32, attention="sdpa")[0, 0].int()
    expected = torch.tensor([[1, 0, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0],
                             [1, 1, 0, 1, 0, 0],
                             [1, 1, 0, 1, 1, 0],
                             [0, 0, 0, 0, 0, 1]])
    assert torch.equal(mask, expected)
    prefix = block_attention_mask(segments, dtype=torch.float32, attention="sdpa", bidirectional_prefix=True)
    assert prefix[0, 0, 0, 1] and not prefix[0, 0, 2, 3]
    additive = block_attention_mask(segments, dtype=torch.bfloat16, attention="eager")
    assert additive.dtype == torch.bfloat16
    assert torch.equal(additive[0, 0] == 0, expected.bool())


def test_eager_attention_is_exact_too():
    model, processor = build_family("llava")
    model.config._attn_implementation = "eager"
    model.config.text_config._attn_implementation = "eager"
    recs = records()
    with torch.no_grad():
        want, _ = policy_response_logps(model, collate(processor, recs, shared=False))
        got, _ = policy_response_logps(model, collate(processor, recs, shared=True))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_flash_attention_cannot_share():
    model, _ = build_family("llava")
    model.config.text_config._attn_implementation = "flash_attention_2"
    assert "custom attention mask" in prefix_sharing_problem(model)


def test_adapter_off_reference_and_precomputed_table_are_exact(tmp_path):
    model, processor = build_family("qwen2_vl")
    lora = prepare_policy(model, ModelArguments(model_name_or_path="-", use_lora=True, lora_r=4),
                          training_args(tmp_path))
    recs = records()
    with torch.no_grad(), lora.disable_adapter():
        want, _ = policy_response_logps(lora, collate(processor, recs, shared=False))
        got, _ = policy_response_logps(lora, collate(processor, recs, shared=True))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    dataset = PreferenceDataset(recs)
    tables = [compute_reference_table(model, dataset, PreferenceCollator(RowEncoder(processor), vision_rows=True,
                                                                         prefix_sharing=shared), 2)
              for shared in (False, True)]
    for a, b in zip(*tables, strict=True):
        assert a.keys() == b.keys() == ({"chosen", "rejected"} | ({"vision"} if "vision" in a else set()))
        for kind in a:
            torch.testing.assert_close(b[kind], a[kind], atol=1e-5, rtol=0)


def trainer_for(name: str, tmp_path, **args) -> PreferenceTrainer:
    model, processor = build_family(name)
    tmp_path.mkdir(parents=True, exist_ok=True)
    recs = [dataclasses.replace(r, image=_saved(r.image, tmp_path / f"{i}.png"),
                                rejected_image=_saved(r.rejected_image, tmp_path / f"{i}-v.png"))
            for i, r in enumerate(records(4))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PreferenceTrainer(model, training_args(tmp_path / "out", **args), processor, PreferenceDataset(recs),
                                 methods=Methods(adavip=AdavipConfig(enabled=True)))


def _saved(image, path):
    if image is None:
        return None
    image.save(path)
    return str(path)


def test_the_trainer_shares_by_default_and_says_when_it_cannot(tmp_path, caplog):
    assert trainer_for("llava", tmp_path).data_collator.prefix_sharing
    assert not trainer_for("llava", tmp_path, prefix_sharing=False).data_collator.prefix_sharing
    with caplog.at_level(logging.INFO, logger="mmpo.training.trainer"):
        trainer = trainer_for("gemma3", tmp_path)
    assert not trainer.data_collator.prefix_sharing
    lines = [r.getMessage() for r in caplog.records if "prefix sharing" in r.getMessage()]
    assert len(lines) == 1 and "Gemma 3" in lines[0]


def test_shared_and_separate_training_take_the_same_steps(tmp_path):
    """Three AdaViP steps with and without sharing end at the same weights."""
    weights = []
    for shared in (False, True):
        trainer = trainer_for("llava", tmp_path / str(shared), prefix_sharing=shared, max_steps=3,
                              learning_rate=1e-3)
        trainer.train()
        weights.append({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
    worst = max((weights[0][n] - weights[1][n]).abs().max().item() for n in weights[0])
    assert worst < 1e-4, worst


def test_records_with_the_same_image_and_prompt_share_one_row(tmp_path):
    """Self-generated data has several pairs per image: records with the same image file and prompt
    run it once, all their responses after it, and each log-prob is still its own row's."""
    model, processor = build_family("qwen2_vl")
    base = records(3)
    path = _saved(base[0].image, tmp_path / "shared.png")
    recs = [dataclasses.replace(base[0], image=path, id="a"),
            dataclasses.replace(base[1], image=path, prompt=base[0].prompt, id="b"),
            dataclasses.replace(base[2], image=path, id="c", prompt="a different prompt .")]
    shared = collate(processor, recs, shared=True)
    assert shared["model_inputs"]["input_ids"].shape[0] == 2 + 2  # two (image, prompt) rows + two vision rows
    assert shared["response_row"].tolist()[:6] == [0, 0, 1, 0, 0, 1]
    with torch.no_grad():
        want, _ = policy_response_logps(model, collate(processor, recs, shared=False))
        got, _ = policy_response_logps(model, shared)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_gradient_checkpointing_keeps_shared_rows_exact():
    model, processor = build_family("llava")
    model.train()
    recs = records()
    _, _, want = logps_and_grads(model, collate(processor, recs, shared=False))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    _, _, got = logps_and_grads(model, collate(processor, recs, shared=True))
    scale = max(g.abs().max() for g in want.values())
    for key, grad in want.items():
        torch.testing.assert_close(got[key] / scale, grad / scale, atol=1e-5, rtol=0, msg=key)


def test_a_wrapped_model_keeps_its_family_rules():
    """Under DDP (or FSDP / DeepSpeed) the model arrives wrapped: PaliGemma must keep its
    bidirectional prefix and its attention implementation must still be read."""
    from mmpo.forward import attention_implementation, model_type, unwrap

    model, processor = build_family("paligemma")

    class Wrapper(torch.nn.Module):  # what DistributedDataParallel looks like from outside
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    wrapped = Wrapper(model)
    assert unwrap(wrapped) is model and model_type(wrapped) == "paligemma"
    assert attention_implementation(wrapped) == attention_implementation(model)
    recs = records()
    with torch.no_grad():
        want, _ = policy_response_logps(model, collate(processor, recs, shared=False))
        got, _ = policy_response_logps(wrapped, collate(processor, recs, shared=True))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_each_layout_has_its_own_reference_cache(tmp_path):
    """The layouts agree to 1e-5, not bit for bit, so a precomputed table is cached per layout and
    the policy == reference rewards stay exactly 0 at step 0 under either."""
    from mmpo.training.reference import load_or_compute_reference

    model, processor = build_family("llava")
    recs = records()
    dataset = PreferenceDataset(recs)
    paths = {shared: load_or_compute_reference(model, dataset, PreferenceCollator(
        RowEncoder(processor), prefix_sharing=shared), 2, tmp_path)[1] for shared in (False, True)}
    assert paths[False] != paths[True] and paths[False].exists() and paths[True].exists()
