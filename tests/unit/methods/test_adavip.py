"""AdaViP's Plackett-Luce loss (Eq. 11), its weights (Eq. 13) and the "+Vision" ablation."""

import math

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mmpo.methods.adavip import adavip_plackett_luce_loss, adavip_plus_vision_loss
from mmpo.methods.dpo import dpo_loss


def test_hand_worked_values():
    """r_c = 1, r_lang = 0, r_vis = 0.5 (rewards, beta already applied):

    L = log(1 + e^(0 - 1) + e^(0.5 - 1)) = log(1 + 0.3678794 + 0.6065307) = log(1.9744101) = 0.6802697
    weight_vision = omega_{-+} = sigmoid(r_vis - r_lang) = sigmoid(0.5) = 0.6224593
    Second record, all rewards equal: L = log 3 = 1.0986123, weight_vision = 0.5.
    """
    losses, weight_vision = adavip_plackett_luce_loss(
        torch.tensor([1.0, 0.2]), torch.tensor([0.0, 0.2]), torch.tensor([0.5, 0.2])
    )
    torch.testing.assert_close(losses, torch.tensor([0.6802697, math.log(3)]))
    torch.testing.assert_close(weight_vision, torch.tensor([0.6224593, 0.5]))


def test_gradient_weights_match_eq_13():
    """Eq. 12: dL/dr_j = sigmoid(log sum_j e^(r_j - r_c)) * omega_j, dL/dr_c = -sum of those.

    r_c = 1, r_lang = 0, r_vis = 0.5, Z = 1.9744101:
    dL/dr_lang = e^-1 / Z = 0.1863237,  dL/dr_vis = e^-0.5 / Z = 0.3071959,  dL/dr_c = -0.4935196.
    sigmoid(log(e^-1 + e^-0.5)) = 0.4935196, omega_{+-} = sigmoid(-0.5) = 0.3775407,
    omega_{-+} = 0.6224593, and 0.4935196 * 0.6224593 = 0.3071959: the vision share of the
    rejected gradient, dL/dr_vis / (dL/dr_vis + dL/dr_lang), is weight_vision.
    """
    chosen = torch.tensor([1.0], requires_grad=True)
    lang = torch.tensor([0.0], requires_grad=True)
    vis = torch.tensor([0.5], requires_grad=True)
    losses, weight_vision = adavip_plackett_luce_loss(chosen, lang, vis)
    losses.sum().backward()
    torch.testing.assert_close(lang.grad, torch.tensor([0.1863237]))
    torch.testing.assert_close(vis.grad, torch.tensor([0.3071959]))
    torch.testing.assert_close(chosen.grad, torch.tensor([-0.4935196]))
    gate = torch.sigmoid(torch.logsumexp(torch.tensor([-1.0, -0.5]), 0))
    torch.testing.assert_close(vis.grad, gate * weight_vision)
    torch.testing.assert_close(lang.grad, gate * (1 - weight_vision))


def test_gradient_share_equals_weight_vision_on_random_inputs():
    gen = torch.Generator().manual_seed(2)
    chosen, lang, vis = (
        torch.randn(64, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(3)
    )
    losses, weight_vision = adavip_plackett_luce_loss(chosen, lang, vis)
    losses.sum().backward()
    torch.testing.assert_close(vis.grad / (vis.grad + lang.grad), weight_vision)
    torch.testing.assert_close(chosen.grad, -(vis.grad + lang.grad))


def test_matches_naive_reference():
    gen = torch.Generator().manual_seed(3)
    chosen, lang, vis = (torch.randn(32, generator=gen, dtype=torch.float64) * 4 for _ in range(3))
    mask = torch.rand(32, generator=gen) > 0.3
    losses, weight_vision = adavip_plackett_luce_loss(chosen, lang, vis, mask)
    plus_vision = adavip_plus_vision_loss(chosen, lang, vis, mask)
    for i in range(32):
        c, rl, rv = chosen[i].item(), lang[i].item(), vis[i].item()
        if mask[i]:
            naive = math.log(1 + math.exp(rl - c) + math.exp(rv - c))
            naive_weight = math.exp(rv) / (math.exp(rv) + math.exp(rl))
            naive_plus = math.log(1 + math.exp(rl - c)) + math.log(1 + math.exp(rv - c))
        else:
            naive = math.log(1 + math.exp(rl - c))
            naive_weight = 0.0
            naive_plus = naive
        assert math.isclose(losses[i].item(), naive, rel_tol=1e-9)
        assert math.isclose(weight_vision[i].item(), naive_weight, rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(plus_vision[i].item(), naive_plus, rel_tol=1e-9)


def test_without_vision_sample_is_exactly_dpo():
    """vision_mask False: L = softplus(r_lang - r_c) = dpo_loss(c, r, beta) with rewards = beta * ratios;
    weight_vision 0; the (huge, placeholder) vision reward gets no gradient and causes no NaN."""
    beta = 0.1
    chosen_ratio = torch.tensor([3.0, -1.0, 0.0])
    rejected_ratio = torch.tensor([1.0, 2.0, 0.0])
    chosen = (beta * chosen_ratio).requires_grad_()
    vis = torch.tensor([1e30, -1e30, 0.0], requires_grad=True)
    losses, weight_vision = adavip_plackett_luce_loss(chosen, beta * rejected_ratio, vis, torch.zeros(3, dtype=torch.bool))
    assert torch.equal(losses.detach(), F.softplus(beta * rejected_ratio - beta * chosen_ratio))
    torch.testing.assert_close(losses, dpo_loss(chosen_ratio, rejected_ratio, beta))
    assert torch.equal(weight_vision, torch.zeros(3))
    losses.sum().backward()
    assert torch.equal(vis.grad, torch.zeros(3))
    assert torch.isfinite(chosen.grad).all()


def test_vanishing_vision_sample_tends_to_dpo():
    """r_vis -> -inf removes the vision term: L -> softplus(r_lang - r_c), weight_vision -> 0."""
    losses, weight_vision = adavip_plackett_luce_loss(torch.tensor([0.5]), torch.tensor([0.2]), torch.tensor([-1e4]))
    torch.testing.assert_close(losses, F.softplus(torch.tensor([0.2 - 0.5])))
    torch.testing.assert_close(weight_vision, torch.tensor([0.0]))


def test_plus_vision_hand_worked():
    """r_c = 1, r_lang = 0, r_vis = 0.5: log(1 + e^-1) + log(1 + e^-0.5) = 0.3132617 + 0.4740770 = 0.7873387."""
    out = adavip_plus_vision_loss(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.5]))
    torch.testing.assert_close(out, torch.tensor([0.7873387]))
    masked = adavip_plus_vision_loss(
        torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.5]), torch.tensor([False])
    )
    torch.testing.assert_close(masked, torch.tensor([0.3132617]))


finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(finite, finite, finite, st.booleans()), min_size=1, max_size=8), st.floats(1e-3, 10.0)
)
def test_finite_for_extreme_inputs(rows, beta):
    chosen = torch.tensor([r[0] for r in rows], requires_grad=True)
    lang = torch.tensor([r[1] for r in rows], requires_grad=True)
    vis = torch.tensor([r[2] for r in rows], requires_grad=True)
    mask = torch.tensor([r[3] for r in rows])
    losses, weight_vision = adavip_plackett_luce_loss(beta * chosen, beta * lang, beta * vis, mask)
    plus = adavip_plus_vision_loss(beta * chosen, beta * lang, beta * vis, mask)
    (losses.sum() + plus.sum()).backward()
    for t in (losses, weight_vision, plus, chosen.grad, lang.grad, vis.grad):
        assert torch.isfinite(t).all()
    assert ((weight_vision >= 0) & (weight_vision <= 1)).all()
