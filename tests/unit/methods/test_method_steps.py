"""Each method's training step on its own, without a Trainer: ``aspo_step`` and ``DamaController``.

The trainer calls exactly these (``PreferenceTrainer.compute_loss``); the integration tests pin the
Trainer to a plain loop, these pin the steps to hand-worked values and naive references.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmpo.methods.aspo import aspo_sentence_weights, aspo_step
from mmpo.methods.dama import DamaController, dama_combine, dama_model_alpha
from mmpo.methods.dpo import dpo_loss

# --------------------------------------------------------------------------------------------- ASPO


def _one_record():
    """One chosen response of 5 tokens in two sentences: tokens [0, 2) and [2, 5)."""
    token_ratios = torch.tensor([[0.5, 0.5, 1.0, 1.0, 1.0]])  # sentence ratios 1 and 3
    policy = torch.log(torch.tensor([[0.5, 0.5, 0.25, 0.25, 0.25]]))  # PPL 2 and 4
    spans = torch.tensor([[[0, 2], [2, 5]]])
    mask = torch.tensor([[True, True]])
    return token_ratios, policy, spans, mask


def test_aspo_step_hand_worked():
    """alpha 0.5; similarities [0.2, 0.8] -> S' = [0, 1]; PPL [2, 4] -> PPL' = [1, 0] (low PPL high);
    w = 0.5 * S' + 0.5 * PPL' = [0.5, 0.5]. R_c = 1 + 3 = 4, R*_c = 1.5 * 4 = 6, scale = 2/3;
    value 2/3 * 6 = 4 (DPO's value); gradient per token scale * (1 + w) = 1."""
    token_ratios, policy, spans, mask = _one_record()
    token_ratios.requires_grad_(True)
    chosen, diag = aspo_step(token_ratios, policy, spans, mask, torch.tensor([[0.2, 0.8]]), alpha=0.5)
    torch.testing.assert_close(chosen, torch.tensor([4.0]))
    chosen.sum().backward()
    torch.testing.assert_close(token_ratios.grad, torch.ones(1, 5))
    torch.testing.assert_close(diag["aspo/weight_mean"], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(diag["aspo/scale"], torch.tensor([2 / 3]))
    assert diag["aspo/sentences_per_response"].tolist() == [2.0]
    assert not any(value.requires_grad for value in diag.values())


def test_aspo_step_similarity_only_moves_the_gradient_to_the_matching_sentence():
    """alpha 1: w = S' = [0, 1]; R*_c = 1 + 2 * 3 = 7, scale 4/7: gradients 4/7 on sentence 1's
    tokens, 8/7 on sentence 2's; the value stays 4."""
    token_ratios, policy, spans, mask = _one_record()
    token_ratios.requires_grad_(True)
    chosen, _ = aspo_step(token_ratios, policy, spans, mask, torch.tensor([[0.2, 0.8]]), alpha=1.0)
    chosen.sum().backward()
    torch.testing.assert_close(chosen.detach(), torch.tensor([4.0]))
    torch.testing.assert_close(token_ratios.grad, torch.tensor([[4 / 7, 4 / 7, 8 / 7, 8 / 7, 8 / 7]]))


def test_aspo_step_with_one_unit_is_dpo():
    """Granularity "response" (one span over the whole response): the weight is 0, the scale 1, and
    the chosen log-ratio and its gradient are DPO's."""
    torch.manual_seed(0)
    token_ratios = torch.randn(3, 6, requires_grad=True)
    policy = -torch.rand(3, 6)
    spans = torch.tensor([[[0, 6]], [[0, 4]], [[0, 6]]])
    dpo_ratios = torch.stack([token_ratios[0].sum(), token_ratios[1, :4].sum(), token_ratios[2].sum()])
    chosen, diag = aspo_step(token_ratios, policy, spans, torch.ones(3, 1, dtype=torch.bool), torch.rand(3, 1))
    torch.testing.assert_close(chosen, dpo_ratios)
    torch.testing.assert_close(diag["aspo/weight_mean"], torch.zeros(3))
    rejected = torch.zeros(3)
    grad_aspo, = torch.autograd.grad(dpo_loss(chosen, rejected, 0.1).sum(), token_ratios)
    grad_dpo, = torch.autograd.grad(dpo_loss(dpo_ratios, rejected, 0.1).sum(), token_ratios)
    torch.testing.assert_close(grad_aspo, grad_dpo)


def _naive_aspo(token_ratios, policy, spans, mask, similarity, alpha):
    """Record by record, sentence by sentence, from the paper's equations."""
    out = []
    for b in range(token_ratios.shape[0]):
        n = int(mask[b].sum())
        ratios = [float(token_ratios[b, s:e].sum()) for s, e in spans[b, :n].tolist()]
        ppl = [math.exp(-float(policy[b, s:e].double().mean())) for s, e in spans[b, :n].tolist()]
        w = aspo_sentence_weights(similarity[b, :n].double(), torch.tensor(ppl, dtype=torch.float64), alpha).tolist()
        original, reweighted = sum(ratios), sum((1 + wi) * r for wi, r in zip(w, ratios, strict=True))
        scale = n / sum(1 + wi for wi in w) if abs(reweighted) < 1e-6 else original / reweighted
        out.append(scale * reweighted)
    return torch.tensor(out, dtype=torch.float64)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.0, 1.0))
def test_aspo_step_matches_the_naive_reference(seed, alpha):
    """Random padded batches of 1-3 sentences per record: equal to the loop over records, finite."""
    g = torch.Generator().manual_seed(seed)
    B, L, S = 3, 9, 3
    token_ratios = torch.randn(B, L, generator=g, dtype=torch.float64)
    policy = -3 * torch.rand(B, L, generator=g, dtype=torch.float64)
    spans = torch.zeros(B, S, 2, dtype=torch.long)
    mask = torch.zeros(B, S, dtype=torch.bool)
    for b in range(B):
        cuts = sorted(torch.randperm(L - 1, generator=g)[: int(torch.randint(0, S, (1,), generator=g))] + 1)
        bounds = [0, *[int(c) for c in cuts], L]
        for i, (s, e) in enumerate(zip(bounds, bounds[1:], strict=False)):
            spans[b, i] = torch.tensor([s, e])
            mask[b, i] = True
    similarity = torch.rand(B, S, generator=g, dtype=torch.float64)
    chosen, diag = aspo_step(token_ratios, policy, spans, mask, similarity, alpha)
    assert torch.isfinite(chosen).all() and all(torch.isfinite(v).all() for v in diag.values())
    torch.testing.assert_close(chosen, _naive_aspo(token_ratios, policy, spans, mask, similarity, alpha))


# --------------------------------------------------------------------------------------------- DAMA


def test_dama_off_is_plain_dpo():
    controller = DamaController(0.1)
    beta, keep, diag = controller.beta(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 3.0]))
    assert (beta, keep, diag) == (0.1, None, {})
    losses = torch.tensor([0.5, 1.5])
    torch.testing.assert_close(controller.mean_loss(losses, keep), torch.tensor(1.0))
    controller.step_end()
    assert controller.r_bar == 0.0 and controller.mark() == 0


def test_data_aware_beta_is_beta_times_alpha_data():
    controller = DamaController(0.1, data_aware=True, recipe="paper")
    beta, keep, diag = controller.beta(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 3.0]),
                                       data_alpha=torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(beta, torch.tensor([0.2, 0.05]))
    assert keep is None
    torch.testing.assert_close(diag["dama/gap_easy"], torch.tensor([0.1]))  # beta * (1 - 0), alpha_D >= 1
    torch.testing.assert_close(diag["dama/gap_hard"], torch.tensor([-0.1]))
    with pytest.raises(ValueError, match="data_alpha"):
        controller.beta(torch.zeros(2), torch.zeros(2))


def test_model_aware_step_hand_worked():
    """Gaps R = 0.1 * (chosen - rejected) = [0.1, 0.2, 0.3, 1.0]; keep 3 of 4 closest to the mean 0.4:
    drops 1.0. R_bar = 0 (zero-start guard): alpha_M = 1 and R_B = mean_kept R / (tau * mean|R|) =
    0.2 / (0.1 * 0.4) = 5. After the step R_bar = 0.9 * 0 + 0.1 * 5 = 0.5."""
    controller = DamaController(0.1, model_aware=True, recipe="paper", normalizer="bounded")
    chosen, rejected = torch.tensor([1.0, 2.0, 3.0, 10.0]), torch.zeros(4)
    mark = controller.mark()
    beta, keep, diag = controller.beta(chosen, rejected)
    assert keep.tolist() == [True, True, True, False]
    torch.testing.assert_close(beta, torch.full((4,), 0.1))
    assert diag["dama/r_batch"].item() == pytest.approx(5.0)
    assert controller.mark() == mark + 1 and controller.r_bar == 0.0  # queued, not applied yet
    losses = torch.tensor([1.0, 2.0, 3.0, math.inf])
    torch.testing.assert_close(controller.mean_loss(losses, keep), torch.tensor(2.0))  # inf dropped, not NaN
    controller.step_end()
    assert controller.r_bar == pytest.approx(0.5) and controller.state.step == 1
    # The next batch sees R_bar = 0.5: alpha_M is the library function's, beta is beta * alpha_M.
    beta, keep, diag = controller.beta(chosen, rejected)
    alpha_m, expected_keep, _ = dama_model_alpha(0.1 * chosen, 0.5, 3, normalizer="bounded")
    torch.testing.assert_close(beta, 0.1 * dama_combine(torch.ones(4), alpha_m))
    assert keep.tolist() == expected_keep.tolist()


def test_skipped_batches_and_steps_take_their_r_batch_back():
    controller = DamaController(0.1, model_aware=True, recipe="paper")
    gaps = torch.tensor([1.0, 2.0, 3.0, 4.0])
    controller.beta(gaps, torch.zeros(4))
    mark = controller.mark()
    controller.beta(gaps, torch.zeros(4))
    controller.discard_since(mark)  # the second micro-batch was skipped
    assert controller.mark() == 1
    controller.beta(gaps, torch.zeros(4), training=False)  # evaluation queues nothing
    assert controller.mark() == 1
    controller.discard_pending()  # the optimizer step was skipped
    controller.step_end()
    assert controller.r_bar == 0.0 and controller.state.step == 0


def test_mean_over_micro_batches_and_state_round_trip():
    """step_end mixes in the mean R_B of the step's micro-batches; state_dict restores R_bar and the
    sample filter's generator, so a resumed run draws the same records."""
    a = DamaController(0.1, model_aware=True, recipe="paper", filter="sample", seed=3)
    r_batches = [a.beta(gaps, torch.zeros(4))[2]["dama/r_batch"].item()
                 for gaps in (torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([2.0, 2.0, 5.0, 1.0]))]
    expected = 0.1 * (sum(r_batches) / 2)  # (1 - gamma) * mean R_B, from R_bar = 0
    a.step_end()
    assert a.r_bar == pytest.approx(expected)
    b = DamaController(0.1, model_aware=True, recipe="paper", filter="sample", seed=99)
    b.load_state_dict(a.state_dict())
    assert b.r_bar == a.r_bar and b.state.step == a.state.step
    gaps = torch.randn(16)
    assert a.beta(gaps, torch.zeros(16))[1].tolist() == b.beta(gaps, torch.zeros(16))[1].tolist()


class _TwoProcesses:
    """A stand-in for two processes' gather: this process holds records 2-3 of a global batch of 4,
    the other process's gaps and kept count are fixed."""

    num_processes = 2

    def __init__(self, other_gaps, other_kept):
        self.other_gaps, self.other_kept = other_gaps, other_kept

    def concat(self, values):
        return torch.cat([self.other_gaps, values]), len(self.other_gaps)

    def sum(self, value):
        return value + self.other_kept


def test_global_batch_filter_and_mean():
    """The filter ranks the *global* batch; this process keeps its slice of the mask, and its kept sum
    is scaled by P / K_global so that DDP's gradient average is the mean over the global kept records."""
    gather = _TwoProcesses(other_gaps=torch.tensor([0.1, 0.2]), other_kept=torch.tensor(2.0))
    controller = DamaController(1.0, model_aware=True, recipe="paper", gather=gather)
    _, keep, _ = controller.beta(torch.tensor([0.3, 5.0]), torch.zeros(2))
    assert keep.tolist() == [True, False]  # global gaps [0.1, 0.2, 0.3, 5.0]: 5.0 is the outlier
    loss = controller.mean_loss(torch.tensor([3.0, 7.0]), keep)
    torch.testing.assert_close(loss, torch.tensor(3.0 * 2 / 3))  # kept sum 3, P = 2, K_global = 3


def test_dama_step_equals_dpo_when_every_factor_is_one():
    """alpha_D = 1 and R_bar = 0 (alpha_M = 1) with filter none: the per-record losses are DPO's."""
    controller = DamaController(0.1, data_aware=True, model_aware=True, recipe="paper", filter="none")
    chosen, rejected = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 1.0, 0.5])
    beta, keep, _ = controller.beta(chosen, rejected, data_alpha=torch.ones(3))
    losses = dpo_loss(chosen, rejected, beta)
    torch.testing.assert_close(controller.mean_loss(losses, keep), dpo_loss(chosen, rejected, 0.1).mean())
