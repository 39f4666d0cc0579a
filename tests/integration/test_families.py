"""Every supported VLM family trains with exact log-probs (the README's table of families).

Each family is a tiny random stand-in built in-process by :mod:`mmpo.testing.families` (the
family's real model and processor classes, the project's own byte-level tokenizer, a chat template
in the family's style). torchvision cannot be installed beside the CPU torch here, and transformers
5 needs it for the *video* processor slot of the Qwen-VL, SmolVLM and LLaVA-OneVision processors,
so those processors are built from their tokenizer and image processor without that slot.

For every family: (a) mmpo's per-token response log-probs equal a hand computation on the
processor's own full input; (b) a record's log-probs do not depend on the rows it is batched with;
(c) with policy == reference every reward is exactly 0 at step 0, live and precomputed; (d) two
steps of DPO (full tuning) and of LoRA with ASPO + DAMA + AdaViP composed change the trainable
weights. Qwen2-VL, the family most people fine-tune, also runs each method on its own.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import training_args
from mmpo.data.collator import MODEL_INPUTS, PreferenceCollator, PreferenceDataset, RowEncoder
from mmpo.forward import policy_response_logps
from mmpo.testing.families import FAMILIES, VARIANTS, build_family
from mmpo.training.config import (
    AdavipConfig,
    AspoConfig,
    DamaConfig,
    Methods,
    ModelArguments,
    PreferenceConfig,
)
from mmpo.training.policy import prepare_policy
from mmpo.training.trainer import PreferenceTrainer
from mmpo.types import prompt_messages

#: Every family and template variant: plain PaliGemma (no chat template) and PaliGemma with one,
#: Qwen3-VL's Instruct and Thinking templates; every other family has one template.
ALL = (*FAMILIES, *VARIANTS)

PROMPT = "describe the image ."
LONG_PROMPT = "is there a red circle in the image ? answer yes or no , then describe every object ."
RESPONSE = "a red circle is at the top left . a blue star is at the bottom right ."


def image(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


#: The token each stand-in's chat template ends an assistant turn with: the family's own convention,
#: written down here, not read from mmpo. PaliGemma's processor ends its suffix with EOS.
END_OF_TURN = {"llava": "</s>", "llava_next": "</s>", "llava_onevision": "<|im_end|>", "qwen2_vl": "<|im_end|>",
               "qwen2_5_vl": "<|im_end|>", "qwen3_vl": "<|im_end|>", "qwen3_vl_thinking": "<|im_end|>",
               "gemma3": "<end_of_turn>", "idefics3": "<end_of_utterance>", "smolvlm": "<end_of_utterance>",
               "mllama": "<|eot_id|>"}


def template_row(processor, name: str, prompt, response: str) -> tuple[str, int]:
    """The text of the row the chat template itself writes for ``response``, and how many of its
    tokens belong to the response.

    The whole conversation is rendered by ``apply_chat_template`` and cut after the token that
    ends the assistant turn (:data:`END_OF_TURN`). The response's tokens are those holding a
    character of its content (the template's lead before it, e.g. an empty think block, is input)
    through the end of the turn. Where the generation prompt is not a prefix of the template's own
    assistant turn (LLaVA-OneVision), the content follows the generation prompt, as in generation.
    """
    messages = prompt_messages(prompt) if isinstance(prompt, str) else prompt
    head = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    turn = [{"role": "assistant", "content": [{"type": "text", "text": response}]}]
    full = processor.apply_chat_template(messages + turn, tokenize=False)
    content = response if response in full else response.strip()  # templates that trim (Gemma 3)
    start = full.rindex(content)
    end_token = END_OF_TURN[name]
    end = full.index(end_token, start + len(content)) + len(end_token)
    if full.startswith(head):
        text = full[:end]
    else:
        text, start = head + full[start:end], len(head)
    offsets = processor.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return text, sum(e > start for _, e in offsets)


def hand_encoding(processor, name: str, picture, prompt, response: str) -> tuple[dict, int]:
    """The processor's own encoding of the row (see :func:`template_row`) and the response's token count."""
    tokenizer = processor.tokenizer
    pictures = picture if isinstance(picture, list) else [picture]  # one image, or several
    if type(processor).__name__ == "PaliGemmaProcessor":
        # PaliGemma's own convention: the prompt is a prefix, the response a suffix (+ EOS).
        text = (processor.apply_chat_template(prompt_messages(prompt), add_generation_prompt=True, tokenize=False)
                if processor.chat_template else prompt)
        enc = processor(images=[pictures], text=[text], suffix=[response], return_tensors="pt")
        enc.pop("labels")
        return enc, int((enc["token_type_ids"][0] == 1).sum())
    text, n_response = template_row(processor, name, prompt, response)
    kwargs = {"add_special_tokens": False} if text.startswith(tokenizer.bos_token) else {}
    return processor(images=[pictures], text=[text], return_tensors="pt", **kwargs), n_response


def hand_logprobs(model, processor, name: str, picture, prompt, response: str) -> torch.Tensor:
    """Per-token log-probs of the response as the template writes it, computed without mmpo's encoder."""
    enc, n_response = hand_encoding(processor, name, picture, prompt, response)
    with torch.no_grad():
        logits = model(**enc).logits[0].float()  # (T, V)
    ids = enc["input_ids"][0]
    per_token = torch.log_softmax(logits[:-1], dim=-1).gather(1, ids[1:, None])[:, 0]  # (T-1,)
    return per_token[-n_response:]


def mmpo_row(processor, picture, prompt, response: str) -> tuple[torch.Tensor, int]:
    """mmpo's row of ids for one response (padding dropped) and its response length."""
    batch = RowEncoder(processor)([picture], [prompt], [response])
    n = int(batch[MODEL_INPUTS]["attention_mask"][0].sum())
    return batch[MODEL_INPUTS]["input_ids"][0, :n], int(batch["response_length"][0])


_BUILT: dict[str, tuple] = {}


def family(name: str):
    """``(model, processor)`` built once per session; tests that train build their own."""
    if name not in _BUILT:
        _BUILT[name] = build_family(name)
    return _BUILT[name]


def mmpo_logprobs(processor, model, images, prompts, responses) -> list[torch.Tensor]:
    batch = RowEncoder(processor)(images, prompts, responses)
    with torch.no_grad():
        logps, mask = policy_response_logps(model, batch)
    return [row[m] for row, m in zip(logps, mask, strict=True)]


# --------------------------------------------------------------------------------------------- (a), (b)
@pytest.mark.parametrize("name", ALL)
def test_rows_equal_the_templates_own(name):
    """mmpo's row is the processor's encoding of the conversation the chat template writes, with the
    response ending as the template ends an assistant turn, not with the tokenizer's EOS."""
    _, processor = family(name)
    picture = image(64, 64, 0)
    enc, n_response = hand_encoding(processor, name, picture, PROMPT, RESPONSE)
    ids, length = mmpo_row(processor, picture, PROMPT, RESPONSE)
    assert ids.tolist() == enc["input_ids"][0].tolist()
    assert length == n_response


@pytest.mark.parametrize("name", ALL)
def test_logprobs_equal_a_hand_computation(name):
    model, processor = family(name)
    picture = image(64, 64, 0)
    expected = hand_logprobs(model, processor, name, picture, PROMPT, RESPONSE)
    (got,) = mmpo_logprobs(processor, model, [picture], [PROMPT], [RESPONSE])
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_logprobs_do_not_depend_on_the_batch(name):
    """The record alone and as the middle row beside rows of other prompt lengths and image sizes
    (this is what catches response tokens leaking into PaliGemma's bidirectional prefix)."""
    model, processor = family(name)
    picture = image(64, 64, 0)
    (alone,) = mmpo_logprobs(processor, model, [picture], [PROMPT], [RESPONSE])
    rows = mmpo_logprobs(processor, model, [image(48, 64, 1), picture, image(96, 80, 2)],
                         [LONG_PROMPT, PROMPT, LONG_PROMPT], ["no .", RESPONSE, RESPONSE + " " + RESPONSE])
    torch.testing.assert_close(rows[1], alone, atol=1e-5, rtol=0)


def test_no_row_starts_with_two_bos():
    for name in ("gemma3", "mllama"):  # templates that render BOS, tokenizers that add one
        _, processor = family(name)
        ids = RowEncoder(processor)([image(64, 64, 0)], [PROMPT], [RESPONSE])[MODEL_INPUTS]["input_ids"][0]
        bos = processor.tokenizer.bos_token_id
        assert ids[0] == bos and ids[1] != bos, name


def test_the_template_lead_joins_the_first_response_token():
    """Idefics3 / SmolVLM render ``Assistant: text``: the first response token carries the space."""
    _, processor = family("idefics3")
    encoder = RowEncoder(processor)
    assert encoder.lead == " "
    batch = encoder([image(64, 64, 0)], [PROMPT], [RESPONSE])
    first = batch[MODEL_INPUTS]["input_ids"][0, int(batch["response_start"][0])]
    assert processor.tokenizer.convert_ids_to_tokens(int(first)) == "Ġa"


@pytest.mark.parametrize(("name", "end"), [("gemma3", "<end_of_turn>"), ("idefics3", "<end_of_utterance>"),
                                         ("qwen2_vl", "<|im_end|>"), ("mllama", "<|eot_id|>")])
def test_responses_end_as_the_template_ends_a_turn(name, end, caplog):
    """Not with the tokenizer's EOS (``</s>`` in every stand-in), and the log says which end is used."""
    _, processor = family(name)
    with caplog.at_level(logging.INFO, logger="mmpo.data.collator"):
        ids, length = mmpo_row(processor, image(64, 64, 0), PROMPT, RESPONSE)
    assert processor.tokenizer.convert_ids_to_tokens(int(ids[-1])) == end
    assert processor.tokenizer.eos_token_id not in ids[-length:].tolist()
    assert f"responses end with {end!r}, as the chat template ends an assistant turn" in caplog.text


def test_without_an_end_token_in_the_template_responses_end_with_eos(caplog):
    _, processor = family("paligemma_chat")
    with caplog.at_level(logging.INFO, logger="mmpo.data.collator"):
        ids, _ = mmpo_row(processor, image(64, 64, 0), PROMPT, RESPONSE)
    assert int(ids[-1]) == processor.tokenizer.eos_token_id
    assert "responses end with the tokenizer's EOS '</s>'" in caplog.text


def test_gemma_trims_the_response_as_its_template_does():
    _, processor = family("gemma3")
    picture = image(64, 64, 0)
    padded = "  " + RESPONSE + " \n"
    ids, length = mmpo_row(processor, picture, PROMPT, padded)
    enc, n_response = hand_encoding(processor, "gemma3", picture, PROMPT, padded)
    assert ids.tolist() == enc["input_ids"][0].tolist() and length == n_response
    assert ids.tolist() == mmpo_row(processor, picture, PROMPT, RESPONSE)[0].tolist()


def test_the_thinking_lead_is_input_and_never_scored():
    """Qwen3 Thinking: ``<think>\\n`` ends the generation prompt, an answer follows ``\\n</think>\\n\\n``.
    The prompt's last newline and the lead's first are one token, as in the template's encoding, and
    the response is the answer's tokens and ``<|im_end|>`` alone."""
    _, processor = family("qwen3_vl_thinking")
    tokenizer = processor.tokenizer
    encoder = RowEncoder(processor)
    assert encoder.lead == "\n</think>\n\n"
    batch = encoder([image(64, 64, 0)], [PROMPT], [RESPONSE])
    start, length = int(batch["response_start"][0]), int(batch["response_length"][0])
    tokens = tokenizer.convert_ids_to_tokens(batch[MODEL_INPUTS]["input_ids"][0, : start + length].tolist())
    assert tokens[start - 4 : start] == ["<think>", "ĊĊ", "</think>", "ĊĊ"]
    assert length == len(tokenizer(RESPONSE, add_special_tokens=False)["input_ids"]) + 1
    assert tokens[start + length - 1] == "<|im_end|>"


def test_a_response_with_its_own_reasoning_is_written_as_the_template_writes_it():
    """A response generated after the prompt's ``<think>`` holds its reasoning and ``</think>``: it gets
    no second ``</think>``, its row is the template's, and prefix sharing gives it a row of its own
    (its prompt part has no lead) with the same log-probs as without sharing."""
    model, processor = family("qwen3_vl_thinking")
    picture = image(64, 64, 0)
    reasoning = "the image has two shapes .\n</think>\n\n" + RESPONSE
    ids, length = mmpo_row(processor, picture, PROMPT, reasoning)
    enc, n_response = hand_encoding(processor, "qwen3_vl_thinking", picture, PROMPT, reasoning)
    assert ids.tolist() == enc["input_ids"][0].tolist() and length == n_response
    assert ids.tolist().count(processor.tokenizer.convert_tokens_to_ids("</think>")) == 1
    (got,) = mmpo_logprobs(processor, model, [picture], [PROMPT], [reasoning])
    torch.testing.assert_close(got, hand_logprobs(model, processor, "qwen3_vl_thinking", picture, PROMPT, reasoning),
                               atol=1e-5, rtol=0)

    from mmpo.types import PreferenceRecord

    items = [{"record": PreferenceRecord(image=picture, prompt=PROMPT, chosen=reasoning, rejected="no ."),
              "index": 0}]
    logps = {}
    for shared in (False, True):
        batch = PreferenceCollator(RowEncoder(processor), prefix_sharing=shared)(items)
        with torch.no_grad():
            values, mask = policy_response_logps(model, batch)
        logps[shared] = [row[m] for row, m in zip(values, mask, strict=True)]
        if shared:
            assert batch[MODEL_INPUTS]["input_ids"].shape[0] == 2  # the two prompt parts differ
    for a, b in zip(logps[False], logps[True], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_a_generation_prompt_that_is_not_a_prefix_of_the_turn_is_named_once(caplog):
    """LLaVA-OneVision writes ``assistant\\n`` as its generation prompt but ``assistant \\n`` in a
    conversation: one warning names both, and the row follows the generation prompt."""
    _, processor = family("llava_onevision")
    with caplog.at_level(logging.WARNING, logger="mmpo.data.collator"):
        RowEncoder(processor)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "'<|im_start|>assistant\\n'" in warning and "'<|im_start|>assistant \\n'" in warning
    assert "\n" not in warning


def test_paligemma_marks_the_response_causal():
    _, processor = family("paligemma")
    batch = RowEncoder(processor)([image(64, 64, 0), image(64, 64, 1)], [LONG_PROMPT, PROMPT], [RESPONSE, "no ."])
    types, mask = batch[MODEL_INPUTS]["token_type_ids"], batch[MODEL_INPUTS]["attention_mask"]
    for r in range(2):
        s, n = int(batch["response_start"][r]), int(batch["response_length"][r])
        assert types[r, :s].eq(0).all() and types[r, s : s + n].eq(1).all()
        assert mask[r, s + n :].eq(0).all()


# ------------------------------------------------------------------------------------------ training
def records(tmp_path, n: int = 4, several: bool = False):
    """``n`` records with everything every method needs: a vision-rejected image, one CLIP score per
    chosen sentence, a DAMA ``data_alpha``; images of two sizes. ``several``: records 1 and 3 have
    two images (and a rejected image set of two), record 2 three, record 0 one."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        count = (1, 2, 3, 2)[i % 4] if several else 1
        imgs, others = [], []
        for j in range(count):
            img, other = tmp_path / f"{i}-{j}.png", tmp_path / f"{i}-{j}-v.png"
            image(64 if (i + j) % 2 else 56, 64, 10 * i + j).save(img)
            image(64 if (i + j) % 2 else 56, 64, 100 + 10 * i + j).save(other)
            imgs.append(str(img))
            others.append(str(other))
        chosen = RESPONSE if i % 2 else "a green square is at the top right ."
        out.append(dataclasses.replace(
            _record(imgs if count > 1 else imgs[0], PROMPT if i % 2 else LONG_PROMPT, chosen,
                    "a yellow star is at the bottom left ."),
            id=f"r{i}", rejected_image=others if count > 1 else others[0], data_alpha=0.5 + 0.25 * i,
            chosen_sentence_scores=[0.2 + 0.1 * k for k in range(chosen.count(" ."))]))
    return out


def _record(img, prompt, chosen, rejected):
    from mmpo.types import PreferenceRecord

    return PreferenceRecord(image=img if isinstance(img, list) else str(img), prompt=prompt, chosen=chosen,
                            rejected=rejected)


def make_args(tmp_path, **kw) -> PreferenceConfig:
    return training_args(tmp_path / "out", **{"per_device_eval_batch_size": 2, "learning_rate": 1e-2, **kw})


def trainer_for(name, tmp_path, methods: Methods | None = None, lora=False, several=False,
                **args) -> PreferenceTrainer:
    model, processor = build_family(name)
    model.train()
    if lora:
        model = prepare_policy(model, ModelArguments(model_name_or_path="-", use_lora=True, lora_r=4),
                               make_args(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PreferenceTrainer(model, make_args(tmp_path, **args), processor,
                                 PreferenceDataset(records(tmp_path, several=several)), methods=methods)


def step_zero_diagnostics(trainer) -> dict[str, torch.Tensor]:
    """The per-record diagnostics of the first ``compute_loss`` of ``trainer.train()``."""
    seen: list[dict] = []
    record = trainer._record

    def capture(mode, diag):
        seen.append({k: v.detach().clone() for k, v in diag.items()})
        record(mode, diag)

    trainer._record = capture
    trainer.args.max_steps = 1
    trainer.train()
    return seen[0]


@pytest.mark.parametrize("reference", ["copy", "precomputed"])
@pytest.mark.parametrize("name", ALL)
def test_rewards_are_zero_when_policy_is_reference(name, reference, tmp_path):
    trainer = trainer_for(name, tmp_path, reference=reference, learning_rate=0.0)
    diag = step_zero_diagnostics(trainer)
    # Equal up to float32 rounding, not always bitwise: PyTorch's CPU linear can take another kernel
    # when the weights do not require grad (the frozen copy's) than when they do (the policy's), even
    # under no_grad; on some CPUs that moves LLaVA-OneVision's projector output by 1 ulp and these
    # rewards by ~1e-7. A wrong reference (other weights, rows or masks) is off by far more.
    for key in ("rewards/chosen", "rewards/rejected"):
        assert diag[key].abs().max().item() <= 1e-5, (key, diag[key])


def trainable_snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_trains(trainer, expected_keys=()):
    before = trainable_snapshot(trainer.model)
    trainer.train()
    after = trainable_snapshot(trainer.model)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert changed, "no trainable parameter changed"
    assert all(torch.isfinite(p).all() for p in after.values())
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 2 and all(math.isfinite(e["loss"]) for e in logs)
    keys = {k for e in logs for k in e}
    assert set(expected_keys) <= keys, set(expected_keys) - keys
    return changed


@pytest.mark.parametrize("name", ALL)
def test_dpo_trains(name, tmp_path):
    assert_trains(trainer_for(name, tmp_path), ["rewards/margins", "logps/chosen"])


ALL_METHODS = Methods(aspo=AspoConfig(enabled=True), dama=DamaConfig(data=True, model=True),
                      adavip=AdavipConfig(enabled=True))


@pytest.mark.parametrize("name", ALL)
def test_lora_with_every_method_trains(name, tmp_path):
    trainer = trainer_for(name, tmp_path, methods=ALL_METHODS, lora=True)
    changed = assert_trains(trainer, ["aspo/weight_mean", "dama/alpha_model", "adavip/weight_vision"])
    assert changed and all("lora_" in n for n in changed)


QWEN_METHODS = {
    "aspo": Methods(aspo=AspoConfig(enabled=True)),
    "dama": Methods(dama=DamaConfig(data=True, model=True)),
    "adavip": Methods(adavip=AdavipConfig(enabled=True)),
}


@pytest.mark.parametrize("method", sorted(QWEN_METHODS))
def test_qwen2_vl_each_method_trains(method, tmp_path):
    assert_trains(trainer_for("qwen2_vl", tmp_path, methods=QWEN_METHODS[method]))


def test_qwen2_vl_precomputed_reference_trains(tmp_path):
    assert_trains(trainer_for("qwen2_vl", tmp_path, reference="precomputed"))


# ----------------------------------------------------------------------------------- several images
@pytest.mark.parametrize("name", ALL)
def test_two_images_logprobs_equal_a_hand_computation(name):
    """TRL's ``images`` list: the prompt takes the images in order; the processor encodes them itself."""
    model, processor = family(name)
    pictures = [image(64, 64, 0), image(48, 64, 3)]
    if type(processor).__name__ == "PaliGemmaProcessor" and not processor.chat_template:
        text = processor.tokenizer.convert_ids_to_tokens(processor.image_token_id) * 2 + PROMPT
        enc = processor(images=[pictures], text=[text], suffix=[RESPONSE], return_tensors="pt")
        enc.pop("labels")
        n_response = int((enc["token_type_ids"][0] == 1).sum())
        with torch.no_grad():
            logits = model(**enc).logits[0].float()
        ids = enc["input_ids"][0]
        expected = torch.log_softmax(logits[:-1], -1).gather(1, ids[1:, None])[:, 0][-n_response:]
    else:
        expected = hand_logprobs(model, processor, name, pictures, prompt_messages(PROMPT, 2), RESPONSE)
    (got,) = mmpo_logprobs(processor, model, [pictures], [PROMPT], [RESPONSE])
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_two_images_do_not_depend_on_the_batch(name):
    """Beside rows of one and of three images, of other sizes and prompt lengths."""
    model, processor = family(name)
    pictures = [image(64, 64, 0), image(48, 64, 3)]
    (alone,) = mmpo_logprobs(processor, model, [pictures], [PROMPT], [RESPONSE])
    rows = mmpo_logprobs(processor, model, [image(48, 64, 1), pictures, [image(96, 80, 2), image(64, 64, 5),
                                                                        image(32, 32, 6)]],
                         [LONG_PROMPT, PROMPT, LONG_PROMPT], ["no .", RESPONSE, RESPONSE + " " + RESPONSE])
    torch.testing.assert_close(rows[1], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["qwen2_vl", "idefics3", "mllama", "llava_onevision"])
def test_several_images_prefix_shared_equal_one_row_per_response(name, tmp_path):
    """Records of one, two and three images with their rejected image sets (AdaViP's vision rows):
    the shared layout gives every response the log-probs of a row of its own."""
    model, processor = family(name)
    dataset = PreferenceDataset(records(tmp_path, several=True))
    items = [dataset[i] for i in range(len(dataset))]
    logps = {}
    for shared in (False, True):
        batch = PreferenceCollator(RowEncoder(processor), vision_rows=True, prefix_sharing=shared)(items)
        with torch.no_grad():
            values, mask = policy_response_logps(model, batch)
        logps[shared] = [row[m] for row, m in zip(values, mask, strict=True)]
    assert len(logps[True]) == 3 * len(items)
    for alone, shared in zip(logps[False], logps[True], strict=True):
        torch.testing.assert_close(shared, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["qwen2_vl", "idefics3", "gemma3", "mllama", "llava_onevision"])
def test_records_with_several_images_train_with_every_method(name, tmp_path):
    """Records of one, two and three images (a rejected image set each for AdaViP), the precomputed
    reference, prefix sharing where the family allows it, LoRA with ASPO + DAMA + AdaViP composed;
    with policy == reference every reward is 0 at step 0."""
    zero = trainer_for(name, tmp_path / "zero", methods=Methods(adavip=AdavipConfig(enabled=True)), several=True,
                       reference="precomputed", learning_rate=0.0)
    diag = step_zero_diagnostics(zero)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/vision_rejected"):
        assert diag[key].abs().max().item() <= 1e-5, (key, diag[key])
    trainer = trainer_for(name, tmp_path / "train", methods=ALL_METHODS, lora=True, several=True,
                          reference="precomputed")
    assert_trains(trainer, ["aspo/weight_mean", "dama/alpha_model", "adavip/weight_vision"])


# ------------------------------------------------------------------------------------ batch contract
@pytest.mark.parametrize("shared", [False, True])
def test_only_model_inputs_reach_the_model(shared, tmp_path):
    """Every mmpo side tensor stays outside ``model_inputs``; everything inside is a forward argument
    (prefix-shared rows add their mask and position ids in :mod:`mmpo.forward`)."""
    import inspect

    model, processor = build_family("mllama")
    ds = PreferenceDataset(records(tmp_path))
    from mmpo.scoring.sentences import RuleSplitter

    collate = PreferenceCollator(RowEncoder(processor), vision_rows=True, sentence_splitter=RuleSplitter(),
                                 need_sentence_scores=True, need_data_alpha=True, prefix_sharing=shared)
    batch = collate([ds[i] for i in range(4)])
    inputs = batch[MODEL_INPUTS]
    side = set(batch) - {MODEL_INPUTS}
    layout = ({"segment_ids", "position_ids", "response_row", "response_tokens", "response_logit_index", "blocks"} if shared
              else {"labels", "response_start"})
    assert {"response_length", "record_index", "record_indices", "vision_mask", "unit_spans", "unit_mask", "unit_scores",
            "data_alpha", "logits_from", "response_width"} | layout == side
    assert not side & set(inputs)
    assert set(inputs) <= set(inspect.signature(model.forward).parameters)


def test_unknown_per_token_output_is_an_error():
    _, processor = build_family("llava")

    class Extra(type(processor)):
        def __call__(self, *args, **kwargs):
            out = super().__call__(*args, **kwargs)
            out["position_tags"] = torch.zeros_like(out["input_ids"])
            return out

    extra = Extra(image_processor=processor.image_processor, tokenizer=processor.tokenizer,
                  patch_size=processor.patch_size, chat_template=processor.chat_template,
                  vision_feature_select_strategy=processor.vision_feature_select_strategy,
                  num_additional_image_tokens=processor.num_additional_image_tokens)
    with pytest.raises(ValueError, match="'position_tags'.*RESPONSE_FILL"):
        RowEncoder(extra)([image(64, 64, 0)], [PROMPT], [RESPONSE])


def test_plain_prompts_without_a_chat_template(tmp_path):
    _, processor = family("paligemma")
    with pytest.raises(ValueError, match="no chat template"):
        RowEncoder(processor, prompt_format="chat")
    with pytest.raises(ValueError, match="conversational prompt"):
        RowEncoder(processor)([image(64, 64, 0)], [prompt_messages(PROMPT)], [RESPONSE])


@pytest.mark.parametrize("name", ["idefics3", "qwen2_vl", "paligemma"])
def test_sentence_units_are_the_chosen_sentences(name, tmp_path):
    """ASPO's unit spans, read back through the tokens the encoder produced, are the sentences
    (the lead space of Idefics3 joins the first sentence; EOS joins the last)."""
    from mmpo.scoring.sentences import RuleSplitter

    _, processor = family(name)
    ds = PreferenceDataset(records(tmp_path))
    batch = PreferenceCollator(RowEncoder(processor), sentence_splitter=RuleSplitter(),
                               need_sentence_scores=True)([ds[1]])
    ids, start = batch[MODEL_INPUTS]["input_ids"][0], int(batch["response_start"][0])
    spans = batch["unit_spans"][0][batch["unit_mask"][0]].tolist()
    texts = [processor.tokenizer.decode(ids[start + a : start + b], skip_special_tokens=True).strip()
             for a, b in spans]
    assert texts == ["a red circle is at the top left .", "a blue star is at the bottom right ."]
