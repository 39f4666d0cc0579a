"""Per-record ``weight`` and ``beta_scale`` in ``preference_loss``, DAMA's mean and the SFT term:
hand-worked values, the degenerate point (all 1 is today's loss), DAMA's beta composed with the
scale, and finiteness over the whole range records may hold."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmpo.data.records import BETA_SCALE_MAX, WEIGHT_MAX
from mmpo.methods.dama import DamaController
from mmpo.methods.dpo import dpo_loss, preference_loss
from mmpo.training.trainer import sft_nll

CHOSEN, REJECTED = torch.tensor([2.0, 1.0]), torch.tensor([-1.0, 3.0])


def test_hand_worked_weight_and_beta_scale():
    """beta 0.1, weights (2, 0.5), beta scales (1, 3).

    record 0: beta 0.1 * 1 = 0.1, c - r = 2 - (-1) = 3, margin 0.3: log(1 + e^-0.3) = 0.5543552, times 2 = 1.1087105
    record 1: beta 0.1 * 3 = 0.3, c - r = 1 - 3 = -2, margin -0.6: log(1 + e^0.6) = 1.0374880, times 0.5 = 0.5187440
    reduced: sum(w * l) / B = (1.1087105 + 0.5187440) / 2 = 0.8137272
    gradient of the reduced loss: dL/dc_i = -w_i * beta_i * sigmoid(-margin_i) / B
      record 0: -2 * 0.1 * sigmoid(-0.3) / 2 = -0.1 * 0.4255575 = -0.0425557
      record 1: -0.5 * 0.3 * sigmoid(0.6) / 2 = -0.075 * 0.6456563 = -0.0484242
    rewards use the record's beta: chosen 0.1 * 2 = 0.2 and 0.3 * 1 = 0.3, rejected -0.1 and 0.9.
    """
    chosen = CHOSEN.clone().requires_grad_(True)
    losses, diag = preference_loss(chosen, REJECTED, 0.1, beta_scale=torch.tensor([1.0, 3.0]),
                                   weight=torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(losses, torch.tensor([1.1087105, 0.5187440]))
    loss = DamaController(0.1).mean_loss(losses, None)  # the trainer's reduction with DAMA off: the mean over B
    torch.testing.assert_close(loss, torch.tensor(0.8137272))
    loss.backward()
    torch.testing.assert_close(chosen.grad, torch.tensor([-0.0425557, -0.0484242]))
    torch.testing.assert_close(diag["rewards/chosen"], torch.tensor([0.2, 0.3]))
    torch.testing.assert_close(diag["rewards/rejected"], torch.tensor([-0.1, 0.9]))


def _naive(chosen, rejected, beta, beta_scale, weight):
    """Record by record: ``w_i * -log sigmoid(s_i * beta_i * (c_i - r_i))``."""
    out = []
    for i in range(len(chosen)):
        margin = float(beta_scale[i]) * float(beta[i]) * (float(chosen[i]) - float(rejected[i]))
        out.append(float(weight[i]) * math.log1p(math.exp(-margin)))
    return torch.tensor(out, dtype=torch.float64)


def test_matches_the_naive_reference():
    g = torch.Generator().manual_seed(0)
    chosen, rejected = (torch.randn(32, generator=g, dtype=torch.float64) * 5 for _ in range(2))
    beta = torch.rand(32, generator=g, dtype=torch.float64) + 0.01  # (B,) as DAMA gives it
    scale = torch.rand(32, generator=g, dtype=torch.float64) * 4 + 0.01
    weight = torch.rand(32, generator=g, dtype=torch.float64) * 3
    weight[::5] = 0.0
    losses, _ = preference_loss(chosen, rejected, beta, beta_scale=scale, weight=weight)
    torch.testing.assert_close(losses, _naive(chosen, rejected, beta, scale, weight), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("adavip_loss", [None, "plackett_luce", "plus_vision"])
@pytest.mark.parametrize("beta", [0.1, "dama"])
def test_weight_and_scale_one_everywhere_is_todays_loss_and_gradient(adavip_loss, beta):
    """All ones: the same per-record losses, reduced loss and gradients, bit for bit, for DPO and
    AdaViP's two losses, with a float beta and with DAMA's per-record one."""
    g = torch.Generator().manual_seed(1)
    c, r, v = (torch.randn(6, generator=g) * 3 for _ in range(3))
    beta = torch.rand(6, generator=g) + 0.05 if beta == "dama" else beta
    mask = torch.tensor([True, False, True, True, False, True]) if adavip_loss else None
    kwargs = {"adavip_loss": adavip_loss} if adavip_loss else {}
    results = []
    for scales in ({}, {"beta_scale": torch.ones(6), "weight": torch.ones(6)}):
        leaves = [t.clone().requires_grad_(True) for t in (c, r, v)]
        losses, diag = preference_loss(leaves[0], leaves[1], beta, leaves[2] if adavip_loss else None, mask,
                                       **kwargs, **scales)
        losses.mean().backward()
        results.append((losses, diag, [t.grad for t in leaves[: 3 if adavip_loss else 2]]))
    (today, today_diag, today_grads), (ones, ones_diag, ones_grads) = results
    assert torch.equal(today, ones) and torch.equal(today.mean(), ones.mean())
    assert today_diag.keys() == ones_diag.keys() and all(torch.equal(today_diag[k], ones_diag[k]) for k in today_diag)
    assert all(torch.equal(a, b) for a, b in zip(today_grads, ones_grads, strict=True))
    if adavip_loss is None:  # and today's loss is the naive DPO loss
        expected = _naive(c, r, torch.full((6,), 0.1) if isinstance(beta, float) else beta, torch.ones(6),
                          torch.ones(6))
        torch.testing.assert_close(today.double(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("adavip_loss", ["plackett_luce", "plus_vision"])
def test_the_scaled_beta_reaches_adavip_as_a_per_record_beta_does(adavip_loss):
    """``beta_scale = s`` is exactly the per-record beta ``s * beta`` (as DAMA passes its ``beta_C``),
    for the vision-rejected sample too."""
    g = torch.Generator().manual_seed(2)
    c, r, v = (torch.randn(5, generator=g) * 3 for _ in range(3))
    mask, s = torch.tensor([True, True, False, True, False]), torch.tensor([1.0, 3.0, 0.5, 2.0, 7.0])
    scaled, scaled_diag = preference_loss(c, r, 0.1, v, mask, adavip_loss, beta_scale=s)
    direct, direct_diag = preference_loss(c, r, s * 0.1, v, mask, adavip_loss)
    torch.testing.assert_close(scaled, direct)
    for key in direct_diag:
        torch.testing.assert_close(scaled_diag[key], direct_diag[key])


def test_dama_beta_times_beta_scale():
    """Data-aware DAMA: beta_C = 0.1 * alpha_D = (0.2, 0.05); beta scales (1, 3) make the records'
    betas (0.2, 0.15). DAMA's own beta and diagnostics are computed without the scale."""
    controller = DamaController(0.1, data_aware=True, recipe="paper")
    beta_c, keep, dama_diag = controller.beta(CHOSEN, REJECTED, data_alpha=torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(beta_c, torch.tensor([0.2, 0.05]))
    torch.testing.assert_close(dama_diag["dama/beta_mean"], torch.tensor([0.2, 0.05]))
    losses, diag = preference_loss(CHOSEN, REJECTED, beta_c, beta_scale=torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(losses, dpo_loss(CHOSEN, REJECTED, torch.tensor([0.2, 0.15])))
    torch.testing.assert_close(diag["rewards/chosen"], torch.tensor([0.2 * 2.0, 0.15 * 1.0]))


def test_weighted_mean_over_dama_kept_records():
    """Margins 0, 0 and -inf (float32 overflow): losses log 2, log 2, inf; weights (2, 0.5, 4) make
    them (2 log 2, 0.5 log 2, inf). Model-aware DAMA keeps (T, T, F): the sum over the kept records
    divided by K = 2 is 1.25 log 2 = 0.8664340; the dropped record's inf stays out."""
    c, r = torch.tensor([0.0, 1.0, -3e38]), torch.tensor([0.0, 1.0, 3e38])
    losses, _ = preference_loss(c, r, 1.0, weight=torch.tensor([2.0, 0.5, 4.0]))
    torch.testing.assert_close(losses, torch.tensor([2 * math.log(2), 0.5 * math.log(2), math.inf]))
    loss = DamaController(0.1, model_aware=True, recipe="paper").mean_loss(losses, torch.tensor([True, True, False]))
    torch.testing.assert_close(loss, torch.tensor(0.8664340))


def test_a_weight_zero_record_adds_an_exact_zero_even_when_its_loss_is_inf():
    c = torch.tensor([-3e38, 1.0], requires_grad=True)
    losses, _ = preference_loss(c, torch.tensor([3e38, 0.0]), 1.0, weight=torch.tensor([0.0, 1.0]))
    assert losses[0].item() == 0.0 and math.isfinite(losses[1].item())
    losses.mean().backward()
    assert c.grad[0].item() == 0.0 and torch.isfinite(c.grad).all()


def test_sft_term_weighs_each_records_share():
    """Chosen sums (-6, -4) over (3, 1) tokens, weights (2, 0.5):
    token: (2 * 6 + 0.5 * 4) / 4 tokens = 3.5; record: mean(2 * 6 / 3, 0.5 * 4 / 1) = (4 + 2) / 2 = 3;
    sum: mean(2 * 6, 0.5 * 4) = 7. Weight 1 everywhere is the unweighted term, bit for bit."""
    sums, counts, w = torch.tensor([-6.0, -4.0]), torch.tensor([3, 1]), torch.tensor([2.0, 0.5])
    assert sft_nll(sums, counts, "token", w).item() == pytest.approx(3.5)
    assert sft_nll(sums, counts, "record", w).item() == pytest.approx(3.0)
    assert sft_nll(sums, counts, "sum", w).item() == pytest.approx(7.0)
    for reduction in ("token", "record", "sum"):
        assert torch.equal(sft_nll(sums, counts, reduction, torch.ones(2)), sft_nll(sums, counts, reduction))


finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)
weights = st.floats(0.0, WEIGHT_MAX)
scales = st.floats(0.0, BETA_SCALE_MAX, exclude_min=True)  # tiny ones too: 5e-324 is 0 in float32


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(finite, finite, finite, weights, scales), min_size=1, max_size=8),
       st.floats(1e-3, 1e3), st.sampled_from([None, "plackett_luce", "plus_vision"]))
def test_finite_for_every_weight_and_scale_a_record_may_hold(rows, beta, adavip_loss):
    """Any weight in [0, WEIGHT_MAX] and beta scale in (0, BETA_SCALE_MAX], betas up to 1e3 (DAMA's
    beta_C reaches beta * 1e4), log-ratios up to 1e4: finite, non-negative losses and gradients in float32."""
    c, r, v, w, s = (torch.tensor([row[k] for row in rows], dtype=torch.float32) for k in range(5))
    c.requires_grad_(True)
    r.requires_grad_(True)
    vision = v.requires_grad_(True) if adavip_loss else None
    kwargs = {"adavip_loss": adavip_loss} if adavip_loss else {}
    losses, diag = preference_loss(c, r, beta, vision, **kwargs, beta_scale=s, weight=w)
    loss = DamaController(beta).mean_loss(losses, None)
    loss.backward()
    assert torch.isfinite(losses).all() and (losses >= 0).all() and torch.isfinite(loss)
    assert torch.isfinite(c.grad).all() and torch.isfinite(r.grad).all()
    assert all(torch.isfinite(value).all() for value in diag.values())
