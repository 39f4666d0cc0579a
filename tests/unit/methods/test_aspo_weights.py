"""ASPO's sentence weights: min-max normalisation (Eq. 7) and w = alpha S' + (1 - alpha) PPL' (Eq. 10)."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmpo.methods.aspo import aspo_sentence_weights, aspo_sentence_weights_batched, minmax


def test_minmax_hand_worked():
    """[1, 3, 2]: min 1, max 3 -> [0, 1, 0.5]. One entry, or all equal -> zeros.
    Masked [1, 3, pad 100] with mask [1, 1, 0] -> [0, 1, 0]; only one valid entry -> zeros."""
    torch.testing.assert_close(minmax(torch.tensor([1.0, 3.0, 2.0])), torch.tensor([0.0, 1.0, 0.5]))
    torch.testing.assert_close(minmax(torch.tensor([7.0])), torch.tensor([0.0]))
    torch.testing.assert_close(minmax(torch.tensor([2.0, 2.0, 2.0])), torch.zeros(3))
    torch.testing.assert_close(
        minmax(torch.tensor([1.0, 3.0, 100.0]), torch.tensor([1, 1, 0])), torch.tensor([0.0, 1.0, 0.0])
    )
    torch.testing.assert_close(
        minmax(torch.tensor([1.0, 3.0, 100.0]), torch.tensor([False, True, False])), torch.zeros(3)
    )


def test_weights_hand_worked():
    """similarity [0.2, 0.4, 0.3] -> S' = [0, 1, 0.5];
    perplexity [2, 3, 6] -> -PPL = [-2, -3, -6] -> PPL' = [(−2+6)/4, (−3+6)/4, 0] = [1, 0.75, 0];
    alpha 0.5: w = [0.5, 0.875, 0.25]; alpha 1: w = S'; alpha 0: w = PPL'."""
    sim = torch.tensor([0.2, 0.4, 0.3])
    ppl = torch.tensor([2.0, 3.0, 6.0])
    torch.testing.assert_close(aspo_sentence_weights(sim, ppl), torch.tensor([0.5, 0.875, 0.25]))
    torch.testing.assert_close(aspo_sentence_weights(sim, ppl, alpha=1.0), torch.tensor([0.0, 1.0, 0.5]))
    torch.testing.assert_close(aspo_sentence_weights(sim, ppl, alpha=0.0), torch.tensor([1.0, 0.75, 0.0]))


def test_weights_do_not_change_with_clips_logit_scale():
    """DAMA reads CLIP's scores as logits (cosine x logit scale); ASPO's S'_i is min-max normalised per
    response, so the same scale leaves its weights unchanged: mmpo stores cosines and ASPO uses them."""
    sim = torch.tensor([[0.21, 0.34, 0.27, 0.0], [0.3, 0.25, 0.0, 0.0]], dtype=torch.float64)
    ppl = torch.tensor([[2.0, 3.0, 6.0, 1.0], [4.0, 1.5, 1.0, 1.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    for scale in (14.3, 46.7, 100.0):
        torch.testing.assert_close(aspo_sentence_weights_batched(scale * sim, ppl, mask),
                                   aspo_sentence_weights_batched(sim, ppl, mask))


def test_one_sentence_or_constant_scores_give_zero_weights():
    """The paper: with one sentence every w_i is 0 and ASPO is DPO."""
    torch.testing.assert_close(
        aspo_sentence_weights(torch.tensor([0.3]), torch.tensor([5.0])), torch.zeros(1)
    )
    torch.testing.assert_close(
        aspo_sentence_weights(torch.tensor([0.3, 0.3]), torch.tensor([5.0, 5.0])), torch.zeros(2)
    )


def _naive_minmax(values):
    if len(values) < 2 or max(values) == min(values):
        return [0.0] * len(values)
    lo, hi = min(values), max(values)
    return [(v - lo) / (hi - lo) for v in values]


def test_batched_matches_naive_reference_and_pads_with_zero():
    gen = torch.Generator().manual_seed(11)
    sim = torch.rand(12, 7, generator=gen, dtype=torch.float64)
    ppl = torch.rand(12, 7, generator=gen, dtype=torch.float64) * 20 + 1
    lengths = torch.randint(0, 8, (12,), generator=gen)
    mask = torch.arange(7)[None, :] < lengths[:, None]  # (B, S)
    weights = aspo_sentence_weights_batched(sim, ppl, mask, alpha=0.3)
    for i in range(12):
        n = int(lengths[i])
        s_norm = _naive_minmax(sim[i, :n].tolist())
        p_norm = _naive_minmax([-p for p in ppl[i, :n].tolist()])
        naive = [0.3 * a + 0.7 * b for a, b in zip(s_norm, p_norm, strict=True)] + [0.0] * (7 - n)
        torch.testing.assert_close(weights[i], torch.tensor(naive, dtype=torch.float64))
        if n:
            torch.testing.assert_close(weights[i, :n], aspo_sentence_weights(sim[i, :n], ppl[i, :n], 0.3))


def test_weights_are_detached():
    sim = torch.tensor([0.1, 0.5], requires_grad=True)
    ppl = torch.tensor([3.0, 2.0], requires_grad=True)
    assert not aspo_sentence_weights(sim, ppl).requires_grad


def test_infinite_perplexity_gives_no_nan():
    """An overflowed perplexity (exp of a large NLL) ranks lowest, and nothing becomes NaN."""
    weights = aspo_sentence_weights(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([2.0, math.inf, 3.0]))
    assert torch.isfinite(weights).all()
    assert math.isclose(weights[1].item(), 0.5 * 0.5, rel_tol=1e-6)  # S' = 0.5, PPL' = 0


finite = st.floats(-1e30, 1e30, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(finite, finite, st.booleans()), min_size=1, max_size=8), st.floats(0.0, 1.0))
def test_weights_finite_and_in_unit_interval(rows, alpha):
    sim = torch.tensor([[r[0] for r in rows]])
    ppl = torch.tensor([[r[1] for r in rows]])
    mask = torch.tensor([[r[2] for r in rows]])
    weights = aspo_sentence_weights_batched(sim, ppl, mask, alpha)
    assert torch.isfinite(weights).all()
    assert ((weights >= 0) & (weights <= 1 + 1e-6)).all()
    assert (weights[~mask] == 0).all()
