"""ASPO's re-weighted chosen log-ratio (docs/methods.md, "ASPO")."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmpo.methods.aspo import aspo_chosen_logratio, aspo_scale
from mmpo.methods.dpo import dpo_loss


def _grad(ratios, weights, mask, normalizer="reward", eps=1e-6):
    ratios = ratios.clone().requires_grad_(True)
    out = aspo_chosen_logratio(ratios, weights, mask, normalizer, eps)
    out.sum().backward()
    return out.detach(), ratios.grad


def test_hand_worked_reward_normalizer():
    """ratios [1, 3], weights [0, 1]:

    R_c = 1 + 3 = 4, R*_c = 1*1 + 2*3 = 7, scale = sg(4/7).
    value = 4/7 * 7 = 4 (= DPO's chosen log-ratio); gradients scale * (1 + w) = [4/7, 8/7].
    """
    value, grad = _grad(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[True, True]]))
    torch.testing.assert_close(value, torch.tensor([4.0]))
    torch.testing.assert_close(grad, torch.tensor([[4 / 7, 8 / 7]]))


def test_hand_worked_count_normalizer():
    """ratios [1, 3], weights [0, 1], normalizer "count":

    scale = n / sum(1 + w) = 2 / 3; value = 2/3 * 7 = 14/3 = 4.6667; gradients [2/3, 4/3].
    """
    value, grad = _grad(
        torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[1, 1]]), normalizer="count"
    )
    torch.testing.assert_close(value, torch.tensor([14 / 3]))
    torch.testing.assert_close(grad, torch.tensor([[2 / 3, 4 / 3]]))


def test_hand_worked_fallback_when_reweighted_sum_vanishes():
    """ratios [1, -0.5], weights [0, 1]: R*_c = 1 - 2 * 0.5 = 0 < eps, so scale = 2 / 3 (count).

    value = 2/3 * 0 = 0 (finite, no 0/0); gradients [2/3, 4/3].
    """
    value, grad = _grad(torch.tensor([[1.0, -0.5]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[True, True]]))
    torch.testing.assert_close(value, torch.tensor([0.0]))
    torch.testing.assert_close(grad, torch.tensor([[2 / 3, 4 / 3]]))


def test_padding_is_ignored():
    """Row [1, 3, pad=1e6] with weights [0, 1, 0.7] equals row [1, 3]; the pad gets no gradient."""
    value, grad = _grad(
        torch.tensor([[1.0, 3.0, 1e6]]), torch.tensor([[0.0, 1.0, 0.7]]), torch.tensor([[1, 1, 0]])
    )
    torch.testing.assert_close(value, torch.tensor([4.0]))
    torch.testing.assert_close(grad, torch.tensor([[4 / 7, 8 / 7, 0.0]]))


def test_one_sentence_is_dpo():
    """One sentence: w = 0, R_c = R*_c, scale 1 -> value and gradient are DPO's."""
    ratios = torch.tensor([[0.3], [-2.0], [5.0]])
    for normalizer in ("reward", "count"):
        value, grad = _grad(ratios, torch.zeros(3, 1), torch.ones(3, 1, dtype=torch.bool), normalizer)
        torch.testing.assert_close(value, ratios[:, 0])
        torch.testing.assert_close(grad, torch.ones(3, 1))


def test_at_init_equals_dpo_without_nan():
    """policy == reference: every ratio 0, R*_c = 0 -> fallback, chosen log-ratio 0.

    dpo_loss(0, 0, beta) = log 2 = 0.6931472 for both normalizers, with finite gradients
    -beta * sigmoid(0) * scale * (1 + w) = -0.1 * 0.5 * (3 / 4.5) * [1.5, 1, 2] = [-0.05, -1/30, -1/15].
    """
    weights = torch.tensor([[0.5, 0.0, 1.0]])
    for normalizer in ("reward", "count"):
        ratios = torch.zeros(1, 3, requires_grad=True)
        chosen = aspo_chosen_logratio(ratios, weights, torch.ones(1, 3), normalizer)
        loss = dpo_loss(chosen, torch.zeros(1), 0.1)
        loss.sum().backward()
        torch.testing.assert_close(loss, dpo_loss(torch.zeros(1), torch.zeros(1), 0.1))
        torch.testing.assert_close(loss, torch.tensor([math.log(2)]))
        torch.testing.assert_close(ratios.grad, torch.tensor([[-0.05, -1 / 30, -1 / 15]]))


def _naive(ratios, weights, mask, normalizer, eps):
    out = []
    for row_r, row_w, row_m in zip(ratios.tolist(), weights.tolist(), mask.tolist(), strict=True):
        kept = [(r, w) for r, w, m in zip(row_r, row_w, row_m, strict=True) if m]
        n = len(kept)
        total_w = sum(1 + w for _, w in kept)
        count_scale = n / total_w if total_w > 0 else 1.0
        original = sum(r for r, _ in kept)
        reweighted = sum((1 + w) * r for r, w in kept)
        if normalizer == "count" or abs(reweighted) < eps:
            scale = count_scale
        else:
            scale = original / reweighted
        out.append(
            (scale * reweighted, [scale * (1 + w) if m else 0.0 for w, m in zip(row_w, row_m, strict=True)])
        )
    return out


@pytest.mark.parametrize("normalizer", ["reward", "count"])
def test_matches_naive_reference_value_and_gradient(normalizer):
    """Random batch: value and per-sentence gradient scale * (1 + w_i) against a loop."""
    gen = torch.Generator().manual_seed(1)
    ratios = torch.randn(16, 6, generator=gen, dtype=torch.float64) * 3
    weights = torch.rand(16, 6, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, 7, (16,), generator=gen)
    mask = torch.arange(6)[None, :] < lengths[:, None]  # (B, S)
    value, grad = _grad(ratios, weights, mask, normalizer)
    for i, (naive_value, naive_grad) in enumerate(_naive(ratios, weights, mask, normalizer, 1e-6)):
        assert math.isclose(value[i].item(), naive_value, rel_tol=1e-9, abs_tol=1e-9)
        torch.testing.assert_close(grad[i], torch.tensor(naive_grad, dtype=torch.float64))
    if normalizer == "reward":  # value equals DPO's chosen log-ratio, sum of the real sentences
        torch.testing.assert_close(value, (ratios * mask).sum(-1))


def test_scale_is_detached_and_weights_are_constants():
    ratios = torch.tensor([[1.0, 2.0]], requires_grad=True)
    weights = torch.tensor([[0.2, 0.6]], requires_grad=True)
    assert not aspo_scale(ratios, weights, torch.ones(1, 2)).requires_grad
    aspo_chosen_logratio(ratios, weights, torch.ones(1, 2)).sum().backward()
    assert weights.grad is None


def test_unknown_normalizer_raises():
    with pytest.raises(ValueError):
        aspo_chosen_logratio(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), "length")


finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(finite, st.floats(0.0, 1.0), st.booleans()), min_size=1, max_size=8),
    finite,
    st.floats(1e-3, 10.0),
    st.sampled_from(["reward", "count"]),
)
def test_finite_for_extreme_inputs(sentences, rejected, beta, normalizer):
    ratios = torch.tensor([[s[0] for s in sentences]], requires_grad=True)
    weights = torch.tensor([[s[1] for s in sentences]])
    mask = torch.tensor([[s[2] for s in sentences]])
    chosen = aspo_chosen_logratio(ratios, weights, mask, normalizer)
    loss = dpo_loss(chosen, torch.tensor([rejected]), beta)
    loss.sum().backward()
    assert torch.isfinite(chosen).all() and torch.isfinite(loss).all()
    assert torch.isfinite(ratios.grad).all()
