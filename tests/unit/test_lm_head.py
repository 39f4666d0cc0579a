"""The chunked LM head: log-probs from the last hidden states, chunk by chunk, equal the model's own.

Against a hand-worked example, a naive ``log_softmax`` reference (values and gradients, several
chunk sizes), and tiny transformers models: plain, tied embeddings, gradient checkpointing, a LoRA
adapter on ``lm_head``, a softcapped Gemma 3 text model and every VLM family mmpo builds. Also: the
head is never called on more than ``chunk_size`` positions (forward or backward), the head's
hooks run on every call, the context manager puts everything back, and ``head_problem`` names what
it cannot stand in for.
"""

from __future__ import annotations

import functools
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import LoraConfig, get_peft_model
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from mmpo.forward import gathered_logprobs
from mmpo.lm_head import (
    DEFAULT_CHUNK,
    chunk_for,
    chunked_logprobs,
    head_logprobs,
    head_problem,
    logit_softcap,
    output_head,
)
from mmpo.testing.families import FAMILIES, build_family

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)
# Tiny configs leave the default special-token ids outside the 97-token vocabulary (not used here), and
# transformers 5.25 calls gradient checkpointing "activation checkpointing" now (the old names still work).
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning")]


def naive_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The reference: the full log-softmax, then the target's entry."""
    return torch.log_softmax(head(hidden).float(), dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)


def random_problem(m: int, h: int = 6, v: int = 13, seed: int = 0):
    """A head with bias, hidden states ``(m, h)`` that require grad, targets ``(m,)``, loss weights ``(m,)``."""
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(h, v)
    with torch.no_grad():
        head.weight.copy_(torch.randn(v, h, generator=g))
        head.bias.copy_(torch.randn(v, generator=g))
    hidden = (torch.randn(m, h, generator=g) * 2).requires_grad_()
    targets = torch.randint(0, v, (m,), generator=g)
    weights = torch.randn(m, generator=g)
    return head, hidden, targets, weights


def grads_of(loss: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, tensors))


class ShapeLog:
    """Records the number of positions of every call of a module (a forward pre-hook)."""

    def __init__(self, module: torch.nn.Module):
        self.rows: list[int] = []
        self.handle = module.register_forward_pre_hook(lambda _, args: self.rows.append(args[0].shape[0]))


# --- the arithmetic --------------------------------------------------------------------------------


def test_hand_worked_two_positions_three_tokens():
    """Weights rows (1, 0), (0, 1), (1, 1); hidden (1, 0) and (0, 2): logits (1, 0, 1) and (0, 2, 2)."""
    head = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    hidden = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    targets = torch.tensor([0, 2])
    e = math.e
    expected = [1 - math.log(e + 1 + e), 2 - math.log(1 + e**2 + e**2)]
    for chunk in (1, 2, 5):
        got = chunked_logprobs(head, hidden, targets, chunk)
        assert got.dtype == torch.float32
        assert got.tolist() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 7, 10, 15])
def test_values_and_gradients_equal_the_naive_reference(chunk):
    """M = 10 positions: chunks of 1, 3, 7 (uneven last chunk), M and more than M."""
    head, hidden, targets, weights = random_problem(10)
    want = naive_logprobs(head, hidden, targets)
    want_grads = grads_of((weights * want).sum(), hidden, head.weight, head.bias)
    got = chunked_logprobs(head, hidden, targets, chunk)
    assert got.shape == (10,) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    for g, w in zip(grads_of((weights * got).sum(), hidden, head.weight, head.bias), want_grads, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)


def test_matches_gathered_logprobs_on_the_full_logits():
    """The same arithmetic as mmpo.forward's path over ``(N, K, V)`` logits, to float rounding."""
    head, _, _, _ = random_problem(0)
    g = torch.Generator().manual_seed(3)
    states = torch.randn(2, 5, 6, generator=g)  # (N, K, H)
    rows, positions = torch.tensor([0, 1]), torch.tensor([[0, 2, 4], [1, 3, 3]])  # (R,), (R, L)
    targets = torch.randint(0, 13, (2, 3), generator=g)
    mask = torch.ones(2, 3, dtype=torch.bool)
    want = gathered_logprobs(head(states), rows, positions, targets, mask)  # (R, L)
    got = chunked_logprobs(head, states[rows.unsqueeze(1), positions].flatten(0, 1), targets.flatten(), 2)
    torch.testing.assert_close(got.view(2, 3), want, atol=1e-6, rtol=0)


def test_without_autograd_nothing_is_recorded():
    head, hidden, targets, _ = random_problem(6)
    with torch.no_grad():
        got = chunked_logprobs(head, hidden, targets, 4)
    assert got.grad_fn is None
    frozen = chunked_logprobs(head.requires_grad_(False), hidden.detach(), targets, 4)
    assert frozen.grad_fn is None
    torch.testing.assert_close(got, frozen, atol=0, rtol=0)


def test_no_positions_give_an_empty_result_that_backward_accepts():
    head, hidden, targets, _ = random_problem(0)
    got = chunked_logprobs(head, hidden, targets, 4)
    assert got.shape == (0,) and got.dtype == torch.float32
    got.sum().backward()
    assert hidden.grad.shape == (0, 6)
    assert head.weight.grad is not None and not head.weight.grad.any()  # the head took part (DDP sees it used)
    with torch.no_grad():
        assert chunked_logprobs(head, hidden, targets, 4).shape == (0,)


def test_bad_arguments_are_refused():
    head, hidden, targets, _ = random_problem(4)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_logprobs(head, hidden, targets, 0)
    with pytest.raises(ValueError, match=r"\(M, H\)"):
        chunked_logprobs(head, hidden, targets[:3], 2)


def test_chunk_for_a_byte_budget():
    assert chunk_for(151_936) == 110  # 256 MiB at 16 bytes a logit
    assert chunk_for(32_000) == 524
    assert chunk_for(10**12) == 1
    assert DEFAULT_CHUNK == 256


@settings(max_examples=60, deadline=None)
@given(data=st.data(), m=st.integers(0, 9), chunk=st.integers(1, 5))
def test_property_finite_nonpositive_and_equal_to_the_reference(data, m, chunk):
    """Hidden states anywhere in [-1e4, 1e4] (the ends included): finite, <= 0, the reference's values
    up to float32 rounding of the logits (whose magnitude reaches 1e4 x the weights)."""
    head, _, _, _ = random_problem(0, h=4, v=5)
    value = st.one_of(st.sampled_from([1e4, -1e4, 0.0]), st.floats(-1e4, 1e4, allow_nan=False, width=32))
    hidden = torch.tensor(data.draw(st.lists(value, min_size=4 * m, max_size=4 * m)), dtype=torch.float32)
    hidden = hidden.view(m, 4)
    targets = torch.tensor(data.draw(st.lists(st.integers(0, 4), min_size=m, max_size=m)), dtype=torch.long)
    with torch.no_grad():
        got = chunked_logprobs(head, hidden, targets, chunk)
        want = naive_logprobs(head, hidden, targets)
        scale = head(hidden).abs().max().item() if m else 0.0
    assert got.shape == (m,)
    assert torch.isfinite(got).all() and (got <= 0).all()
    torch.testing.assert_close(got, want, atol=1e-5 + 1e-6 * scale, rtol=1e-5)


# --- memory: never more than chunk_size positions at once ----------------------------------------------


def test_the_head_sees_at_most_chunk_size_positions_forward_and_backward():
    """The backward recomputes each chunk's logits, one chunk at a time, instead of keeping them."""
    head, hidden, targets, weights = random_problem(11)
    log = ShapeLog(head)
    got = chunked_logprobs(head, hidden, targets, 4)
    assert log.rows == [4, 4, 3]
    (weights * got).sum().backward()
    assert sorted(log.rows[3:]) == [3, 4, 4]  # the recompute: each chunk again, none larger
    with torch.no_grad():
        chunked_logprobs(head, hidden, targets, 4)
    assert log.rows[6:] == [4, 4, 3]  # no autograd, no recompute
    assert max(log.rows) <= 4


def test_a_dropout_in_the_head_replays_the_same_mask_in_the_recompute():
    """A LoRA dropout on ``lm_head`` draws in the forward; the recompute must draw the same mask, or the
    gradient is that of other logits. Reference: the same chunks through the head in the same order."""
    _, hidden, targets, weights = random_problem(9, seed=1)
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(6, 13)).train()
    torch.manual_seed(7)
    want = torch.cat([naive_logprobs(head, hidden[i:i + 4], targets[i:i + 4]) for i in range(0, 9, 4)])
    want_grads = grads_of((weights * want).sum(), hidden, head[1].weight)
    torch.manual_seed(7)
    got = chunked_logprobs(head, hidden, targets, 4)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    for g, w in zip(grads_of((weights * got).sum(), hidden, head[1].weight), want_grads, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)


# --- tiny transformers models ---------------------------------------------------------------------------


def tiny_llama(**overrides) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**{**TINY, **overrides}))


def positions_and_targets(n: int, t: int, m: int, seed: int = 0):
    """Input ids ``(n, t)`` and ``m`` (row, position, target) picks with loss weights."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, TINY["vocab_size"], (n, t), generator=g)
    rows = torch.randint(0, n, (m,), generator=g)
    positions = torch.randint(0, t, (m,), generator=g)
    targets = torch.randint(0, TINY["vocab_size"], (m,), generator=g)
    return ids, rows, positions, targets, torch.randn(m, generator=g)


def model_path(model, ids, rows, positions, targets, keep: int = 0) -> torch.Tensor:
    """Log-probs from the model's own logits (positions counted in the kept ones)."""
    logits = model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits.float()  # (N, K, V)
    return torch.log_softmax(logits, dim=-1)[rows, positions, targets]


class Picker:
    """A ``pick`` for :func:`head_logprobs`: the given (row, position) hidden states and targets; keeps
    the hidden states the head received, and whether the softcap was off in the config then."""

    def __init__(self, model, rows=None, positions=None, targets=None):
        self.model, self.rows, self.positions, self.targets = model, rows, positions, targets
        self.hidden, self.capped = None, None

    def __call__(self, hidden):  # (N, K, H)
        self.hidden = hidden.detach().clone()
        self.capped = getattr(self.model.config, "final_logit_softcapping", None)
        if self.rows is None:  # every kept position, targets drawn for them
            return hidden.flatten(0, 1), self.targets.flatten()
        return hidden[self.rows, self.positions], self.targets


def chunked_path(model, ids, rows, positions, targets, keep: int = 0, chunk: int = 3) -> torch.Tensor:
    with head_logprobs(model, Picker(model, rows, positions, targets), chunk):
        return model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits  # (M,)


def assert_same_logprobs_and_gradients(model, keep: int = 0) -> dict[str, torch.Tensor]:
    """Values and every parameter's gradient of a weighted sum agree to 1e-5; returns the gradients."""
    ids, rows, positions, targets, weights = positions_and_targets(2, 9, 11)
    positions = positions % (keep or 9)
    results = []
    for path in (model_path, chunked_path):
        model.zero_grad()
        logps = path(model, ids, rows, positions, targets, keep)
        (weights * logps).sum().backward()
        results.append((logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert got_grads.keys() == want_grads.keys() and want_grads
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)
    return want_grads


def test_tiny_llama_the_head_receives_the_last_hidden_states():
    model = tiny_llama()
    ids, rows, positions, targets, _ = positions_and_targets(2, 9, 5)
    pick = Picker(model, rows, positions % 4, targets)
    with head_logprobs(model, pick) as head:
        assert head is model.lm_head
        values = model(input_ids=ids, use_cache=False, logits_to_keep=4).logits
    assert values.shape == (5,) and values.dtype == torch.float32
    assert pick.hidden.shape == (2, 4, TINY["hidden_size"])
    torch.testing.assert_close(pick.hidden, model.model(input_ids=ids).last_hidden_state[:, -4:], atol=0, rtol=0)
    assert model(input_ids=ids, use_cache=False).logits.shape[-1] == TINY["vocab_size"]  # the head is back
    assert_same_logprobs_and_gradients(model)
    assert_same_logprobs_and_gradients(model, keep=5)


def test_tiny_llama_with_tied_embeddings():
    model = tiny_llama(tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert_same_logprobs_and_gradients(model)


@pytest.mark.parametrize("reentrant", [False, True])
def test_tiny_llama_with_gradient_checkpointing(reentrant):
    """The decoder layers checkpointed either way; the chunks are non-reentrant checkpoints inside that."""
    model = tiny_llama()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model.train()
    assert_same_logprobs_and_gradients(model)


def test_tiny_llama_with_lora_on_the_lm_head():
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"],
                                                    init_lora_weights=False))
    head = output_head(model)
    assert hasattr(head, "lora_A") and head is model.get_base_model().lm_head
    grads = assert_same_logprobs_and_gradients(model)
    lora_head = [name for name in grads if "lm_head.lora_" in name]
    assert len(lora_head) == 2 and all(grads[name].abs().max() > 0 for name in lora_head)


def tiny_gemma3_text(cap: float | None) -> Gemma3ForCausalLM:
    torch.manual_seed(0)
    config = Gemma3TextConfig(**TINY, head_dim=8, final_logit_softcapping=cap, initializer_range=0.3,
                              layer_types=["sliding_attention", "full_attention"], sliding_window=16)
    return Gemma3ForCausalLM(config)


def test_softcapped_gemma3_text_model():
    """Gemma3ForCausalLM applies ``cap * tanh(logits / cap)``: the chunks apply it instead, and under the
    context manager the model does not apply it to the hidden states. A cap of 1 bites at these logits
    (several units at this initialisation)."""
    model = tiny_gemma3_text(1.0)
    assert head_problem(model) is None and logit_softcap(model) == 1.0
    ids = positions_and_targets(2, 9, 1)[0]
    pick = Picker(model, targets=ids)
    with head_logprobs(model, pick):
        model(input_ids=ids, use_cache=False)
    assert pick.capped is None  # switched off while the model ran
    hidden = pick.hidden
    assert model.config.final_logit_softcapping == 1.0 and "final_logit_softcapping" in vars(model.config)
    plain = model.model(input_ids=ids).last_hidden_state
    assert plain.abs().max() > 1.0  # a softcap of 1 would have changed them
    torch.testing.assert_close(hidden, plain, atol=0, rtol=0)
    assert_same_logprobs_and_gradients(model)
    logits = model(input_ids=ids, use_cache=False).logits
    uncapped = chunked_logprobs(model.lm_head, hidden[0], ids[0], 4)  # without the cap: other numbers
    assert (uncapped - torch.log_softmax(logits[0], -1).gather(1, ids[0, :, None]).squeeze(1)).abs().max() > 0.5


def test_gemma3_text_model_without_a_cap():
    model = tiny_gemma3_text(None)
    assert head_problem(model) is None and logit_softcap(model) is None
    assert_same_logprobs_and_gradients(model)


# --- every VLM family mmpo builds -----------------------------------------------------------------------


def family_matches(model, keep: int = 5) -> None:
    """Text-only rows: the head receives hidden states ``(N, keep, H)``, and its chunked log-probs equal
    to the log-softmax of the model's own logits at every kept position."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 60, (2, 9), generator=g)
    head = output_head(model)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits  # (N, K, V)
        targets = torch.randint(0, logits.shape[-1], logits.shape[:2], generator=g)
        pick = Picker(model, targets=targets)
        with head_logprobs(model, pick, 3):
            got = model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits  # (N * K,)
        assert pick.hidden.shape == (*logits.shape[:2], head.in_features)
    want = torch.log_softmax(logits.float(), -1).gather(2, targets.unsqueeze(2)).flatten()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_gives_its_own_logprobs(name):
    model, _ = build_family(name)
    assert head_problem(model) is None and logit_softcap(model) is None
    family_matches(model)


def test_paligemma_with_a_softcap_in_its_text_config():
    """PaliGemma reads the cap through ``getattr(self.config.get_text_config(), ...)`` when called."""
    model, _ = build_family("paligemma")
    model.config.text_config.final_logit_softcapping = 0.5
    assert head_problem(model) is None and logit_softcap(model) == 0.5
    family_matches(model)


def test_gemma3_vlm_ignores_a_softcap_in_its_text_config():
    """Gemma3ForConditionalGeneration does not softcap (only Gemma3ForCausalLM does), so neither do the chunks."""
    model, _ = build_family("gemma3")
    ids = torch.randint(5, 60, (1, 6))
    with torch.no_grad():
        before = model(input_ids=ids, use_cache=False).logits
        model.config.text_config.final_logit_softcapping = 0.5
        torch.testing.assert_close(model(input_ids=ids, use_cache=False).logits, before, atol=0, rtol=0)
    assert head_problem(model) is None and logit_softcap(model) is None
    family_matches(model)


# --- the context manager puts everything back ---------------------------------------------------------------


def test_no_instance_forward_stays_none():
    model = tiny_llama()
    assert "forward" not in vars(model.lm_head)
    with head_logprobs(model, Picker(model)):
        assert "forward" in vars(model.lm_head)
    assert "forward" not in vars(model.lm_head)


def test_an_instance_forward_set_before_survives():
    """accelerate's hooks set an instance ``forward``; the very same object is put back."""
    model = tiny_llama()
    own = functools.partial(torch.nn.Linear.forward, model.lm_head)
    model.lm_head.forward = own
    with head_logprobs(model, Picker(model)):
        assert model.lm_head.forward is not own
    assert vars(model.lm_head)["forward"] is own


def test_everything_is_put_back_when_the_body_raises():
    llama, gemma = tiny_llama(), tiny_gemma3_text(1.0)
    for model in (llama, gemma):
        with pytest.raises(KeyError, match="boom"), head_logprobs(model, Picker(model)):
            raise KeyError("boom")
        assert "forward" not in vars(output_head(model))
    assert gemma.config.final_logit_softcapping == 1.0


def test_hooks_run_once_for_the_models_call_and_the_chunks_use_the_heads_own_forward():
    """Inside the model's forward, the model calls the head once (its hooks run: ZeRO-3 gathers the
    weight there, and again when the gradient reaches the head's output); the chunks and their
    recompute in the backward call the head's own forward, never the module: a module call in the
    recompute would let ZeRO-3 release the weight before the gradient that needs it."""
    model = tiny_llama()
    log = ShapeLog(model.lm_head)
    ids, rows, positions, targets, weights = positions_and_targets(2, 9, 5)
    with head_logprobs(model, Picker(model, rows, positions, targets), 2):
        values = model(input_ids=ids, use_cache=False).logits
    assert log.rows == [2]  # one call, on the (N, K, H) hidden states
    (weights * values).sum().backward()
    assert log.rows == [2]
    assert model.lm_head.weight.grad is not None


def test_an_instance_forward_set_before_is_what_the_chunks_call():
    """accelerate's hooks put their own ``forward`` on the instance; inside the block the chunks call it."""
    model = tiny_llama()
    calls = []

    def own(x):
        calls.append(x.shape[0])
        return torch.nn.Linear.forward(model.lm_head, x)

    model.lm_head.forward = own
    ids, rows, positions, targets, _ = positions_and_targets(2, 9, 5)
    with torch.no_grad(), head_logprobs(model, Picker(model, rows, positions, targets), 2):
        model(input_ids=ids, use_cache=False)
    assert calls == [2, 2, 1]
    with head_logprobs(model, Picker(model, rows, positions, targets), 2):
        values = model(input_ids=ids, use_cache=False).logits
    values.sum().backward()
    assert calls[3:] == [2, 2, 1, 1, 2, 2]  # the forward's chunks, then the recompute (last chunk first)


# --- head_problem ---------------------------------------------------------------------------------------------


class ScaledLlama(LlamaForCausalLM):
    """Multiplies its logits after the head, as Aya Vision and Cohere do."""

    def forward(self, input_ids=None, logits_to_keep=0, **kwargs):
        hidden_states = self.model(input_ids=input_ids).last_hidden_state
        logits = self.lm_head(hidden_states)
        logits = logits * 2.0
        return CausalLMOutputWithPast(logits=logits)


class CachedCapLlama(LlamaForCausalLM):
    """Softcaps with a value copied at construction: switching the config off would not stop it."""

    def __init__(self, config):
        super().__init__(config)
        self.final_logit_softcapping = 3.0

    def forward(self, input_ids=None, logits_to_keep=0, **kwargs):
        hidden_states = self.model(input_ids=input_ids).last_hidden_state
        logits = self.lm_head(hidden_states)
        if self.final_logit_softcapping is not None:
            logits = logits / self.final_logit_softcapping
            logits = torch.tanh(logits)
            logits = logits * self.final_logit_softcapping
        return CausalLMOutputWithPast(logits=logits)


def test_head_problem_names_what_it_cannot_stand_in_for():
    assert "no output head" in head_problem(LlamaModel(LlamaConfig(**TINY)))
    assert "no output head" in head_problem(torch.nn.Linear(2, 3))
    torch.manual_seed(0)
    scaled = ScaledLlama(LlamaConfig(**TINY))
    assert "`logits = logits * 2.0`" in head_problem(scaled)
    with pytest.raises(ValueError, match="changes the logits"), head_logprobs(scaled, Picker(scaled)):
        pass
    assert "not read from its config" in head_problem(CachedCapLlama(LlamaConfig(**TINY)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        granite = GraniteForCausalLM(GraniteConfig(**TINY))
    assert "logits_scaling" in head_problem(granite)
    assert head_problem(tiny_llama()) is None
