"""DPO: hand-worked values, a naive reference, finiteness at extremes."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmpo.methods.dpo import dpo_loss, preference_loss


def test_hand_worked_values():
    """L = -log sigmoid(beta * (c - r)) = log(1 + exp(-beta * (c - r))).

    record 0: beta 0.1, c = 2, r = -1: margin 0.3, log(1 + e^-0.3) = log(1.7408182) = 0.5543552
    record 1: c = r = 0.7: margin 0, log 2 = 0.6931472
    record 2: c = 1, r = 3, beta 0.5 (tensor beta): margin -1, log(1 + e) = 1.3132617
    """
    chosen = torch.tensor([2.0, 0.7, 1.0])
    rejected = torch.tensor([-1.0, 0.7, 3.0])
    beta = torch.tensor([0.1, 0.1, 0.5])
    expected = torch.tensor([0.5543552, 0.6931472, 1.3132617])
    torch.testing.assert_close(dpo_loss(chosen, rejected, beta), expected)
    torch.testing.assert_close(dpo_loss(chosen[:2], rejected[:2], 0.1), expected[:2])


def test_matches_naive_reference():
    gen = torch.Generator().manual_seed(0)
    chosen = torch.randn(32, generator=gen, dtype=torch.float64) * 5
    rejected = torch.randn(32, generator=gen, dtype=torch.float64) * 5
    beta = torch.rand(32, generator=gen, dtype=torch.float64) + 0.01
    losses = dpo_loss(chosen, rejected, beta)
    for i in range(32):
        margin = beta[i].item() * (chosen[i].item() - rejected[i].item())
        naive = -math.log(1.0 / (1.0 + math.exp(-margin)))
        assert math.isclose(losses[i].item(), naive, rel_tol=1e-9, abs_tol=1e-12)


def test_gradient_is_beta_times_sigmoid_of_minus_margin():
    """dL/dc = -beta * sigmoid(-margin); dL/dr = +beta * sigmoid(-margin).

    beta 2, c = 0.25, r = 0: margin 0.5, sigmoid(-0.5) = 0.3775407,
    so dL/dc = -2 * 0.3775407 = -0.7550813 and dL/dr = 0.7550813.
    """
    chosen = torch.tensor([0.25], requires_grad=True)
    rejected = torch.tensor([0.0], requires_grad=True)
    dpo_loss(chosen, rejected, 2.0).sum().backward()
    torch.testing.assert_close(chosen.grad, torch.tensor([-0.7550813]))
    torch.testing.assert_close(rejected.grad, torch.tensor([0.7550813]))


def test_logged_rewards_are_beta_times_logratio_and_detached():
    """preference_loss logs TRL's reward metrics: r = beta * ratio, margins, accuracies."""
    chosen = torch.tensor([1.0, -2.0], requires_grad=True)
    rejected = torch.tensor([0.5, 4.0], requires_grad=True)
    losses, diag = preference_loss(chosen, rejected, 0.1)
    torch.testing.assert_close(losses, dpo_loss(chosen, rejected, 0.1))
    torch.testing.assert_close(diag["rewards/chosen"], torch.tensor([0.1, -0.2]))
    torch.testing.assert_close(diag["rewards/rejected"], torch.tensor([0.05, 0.4]))
    torch.testing.assert_close(diag["rewards/margins"], torch.tensor([0.05, -0.6]))
    assert diag["rewards/accuracies"].tolist() == [1.0, 0.0]
    assert not any(value.requires_grad for value in diag.values())


finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(finite, finite), min_size=1, max_size=8), st.floats(1e-3, 10.0))
def test_finite_for_extreme_inputs(pairs, beta):
    chosen = torch.tensor([p[0] for p in pairs], requires_grad=True)
    rejected = torch.tensor([p[1] for p in pairs], requires_grad=True)
    losses = dpo_loss(chosen, rejected, beta)
    losses.sum().backward()
    assert torch.isfinite(losses).all()
    assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()
    assert (losses >= 0).all()
