"""DAMA: data-aware alpha_D, model-aware alpha_M with its filters and zero-start guard, state."""

import itertools
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmpo.methods.dama import (
    DATA_ALPHA_RANGE,
    DamaState,
    dama_alpha_from_delta,
    dama_combine,
    dama_data_alpha,
    dama_delta,
    dama_model_alpha,
    dama_model_alpha_authors,
)
from mmpo.methods.dpo import dpo_loss


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


# --- data-aware ----------------------------------------------------------------------------------


def test_delta_hand_worked():
    """softmax([1; 0]) = [e/(e+1), 1/(e+1)] = [0.7310586, 0.2689414]: delta = 0.4621172 (= tanh 0.5).
    softmax([0, 0; 0]) = [1/3, 1/3; 1/3]: delta = 2/3 - 1/3 = 1/3.
    ratio mode, C_w = [20, 22], C_l = [21]: delta = 42 / 21 = 2.
    """
    assert math.isclose(dama_delta([1.0], [0.0]), 0.4621172, rel_tol=1e-6)
    assert math.isclose(dama_delta(torch.tensor([0.0, 0.0]), torch.tensor([0.0])), 1 / 3, rel_tol=1e-12)
    assert math.isclose(dama_delta([20.0, 22.0], [21.0], mode="ratio"), 2.0)


def test_data_alpha_hand_worked():
    """C_w = [1], C_l = [0]: delta = 0.4621172, sigmoid(delta) = 0.6135163.
    delta_bar = 0:   alpha_D = 0.6135163 / 0.5 = 1.2270326.
    delta_bar = 0.1: alpha_D = 0.6135163 / 0.5249792 = 1.1686488.
    delta_bar = delta: alpha_D = 1.
    """
    assert math.isclose(dama_data_alpha([1.0], [0.0], 0.0), 1.2270326, rel_tol=1e-6)
    assert math.isclose(dama_data_alpha([1.0], [0.0], 0.1), 1.1686488, rel_tol=1e-6)
    assert math.isclose(dama_data_alpha([1.0], [0.0], dama_delta([1.0], [0.0])), 1.0, rel_tol=1e-12)


def test_data_alpha_matches_naive_reference():
    gen = torch.Generator().manual_seed(4)
    for _ in range(20):
        p, q = torch.randint(1, 6, (2,), generator=gen).tolist()
        c_w = (torch.randn(p, generator=gen, dtype=torch.float64) * 3 + 20).tolist()
        c_l = (torch.randn(q, generator=gen, dtype=torch.float64) * 3 + 20).tolist()
        z = sum(math.exp(c) for c in c_w + c_l)
        delta = sum(math.exp(c) for c in c_w) / z - sum(math.exp(c) for c in c_l) / z
        assert math.isclose(dama_delta(c_w, c_l), delta, rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(dama_data_alpha(c_w, c_l, 0.05), _sigmoid(delta) / _sigmoid(0.05), rel_tol=1e-9)
        ratio = sum(c_w) / sum(c_l)
        assert math.isclose(dama_delta(c_w, c_l, mode="ratio"), ratio, rel_tol=1e-12)


def test_data_alpha_finite_at_extremes():
    """sigmoid(1e4) / sigmoid(-1e4) = e^1e4 and sigmoid(-1e4) / sigmoid(1e4) = e^-1e4 are clamped to
    DATA_ALPHA_RANGE = [1e-3, 1e3]: never inf, never 0 (a record with alpha_D = 0 silently stops training)."""
    assert dama_alpha_from_delta(1e4, -1e4) == DATA_ALPHA_RANGE[1]
    assert dama_alpha_from_delta(-1e4, 1e4) == DATA_ALPHA_RANGE[0]
    assert dama_alpha_from_delta(-30.0, 0.0) == DATA_ALPHA_RANGE[0]  # sigmoid(-30) / 0.5 = 1.9e-13
    assert math.isfinite(dama_delta([1.0], [0.0], mode="ratio"))  # zero denominator guarded
    assert math.isfinite(dama_delta([1e4, -1e4], [1e4], mode="softmax"))


def test_ratio_mode_alpha_clamped_hand_worked():
    """ratio mode, C_w = [-3], C_l = [0.5], delta_bar = 1: delta = -6,
    sigmoid(-6) / sigmoid(1) = 0.0024726 / 0.7310586 = 0.0033823 (inside the range, unchanged);
    C_w = [-30]: delta = -60, sigmoid(-60) / sigmoid(1) = 1.2e-26 -> clamped to 1e-3.
    softmax mode is never clamped: its alpha_D lies in [1/e, e] for delta, delta_bar in [-1, 1]."""
    assert math.isclose(dama_data_alpha([-3.0], [0.5], 1.0, mode="ratio"), 0.0033823, rel_tol=1e-4)
    assert dama_data_alpha([-30.0], [0.5], 1.0, mode="ratio") == 1e-3
    assert math.isclose(dama_alpha_from_delta(-1.0, 1.0), math.exp(-1.0), rel_tol=1e-12)
    assert math.isclose(dama_alpha_from_delta(1.0, -1.0), math.e, rel_tol=1e-12)


def test_data_rejects_empty_and_unknown_mode():
    with pytest.raises(ValueError):
        dama_delta([], [1.0])
    with pytest.raises(ValueError):
        dama_delta([1.0], [1.0], mode="difference")


# --- model-aware ---------------------------------------------------------------------------------

GAPS = [-4.0, 1.0, 2.0, 3.0, 10.0]


@pytest.mark.parametrize(
    ("filter_mode", "kept", "r_batch"),
    [
        # mean 12/5 = 2.4; squared distances [40.96, 1.96, 0.16, 0.36, 57.76] -> keep {1, 2, 3}
        ("topk", [False, True, True, True, False], 2.0),
        ("bottom", [False, False, True, True, True], 5.0),  # drop the 2 lowest (-4, 1): mean(2, 3, 10)
        ("top", [True, True, True, False, False], -1 / 3),  # drop the 2 highest (3, 10): mean(-4, 1, 2)
        ("none", [True] * 5, 2.4),  # mean of all
    ],
)
def test_filters_hand_worked(filter_mode, kept, r_batch):
    """gaps [-4, 1, 2, 3, 10], K = 3, R_bar = 1 (so Rn = R):

    topk: R_B = 2, alpha_M = sigmoid(2) / sigmoid(1) = 1.2048242
    bottom: R_B = 5, alpha_M = 1.3587244; top: R_B = -1/3, alpha_M = 0.5709936;
    none: R_B = 2.4, alpha_M = 1.2541092.
    With gaps doubled and R_bar = 2 the normalised gaps, the mask and R_B are the same, and
    alpha_M = sigmoid(R_B) / sigmoid(2). ("none" keeps all 5 whatever K is.)
    """
    expected_alpha = _sigmoid(r_batch) / _sigmoid(1.0)
    hand = {"topk": 1.2048242, "bottom": 1.3587244, "top": 0.5709936, "none": 1.2541092}[filter_mode]
    assert math.isclose(expected_alpha, hand, rel_tol=1e-6)
    for scale in (1.0, 2.0):
        gaps = torch.tensor(GAPS) * scale
        alpha, mask, rb = dama_model_alpha(gaps, r_bar=scale, keep=3, filter=filter_mode)
        assert mask.tolist() == kept
        assert math.isclose(rb.item(), r_batch, rel_tol=1e-6, abs_tol=1e-7)
        assert math.isclose(alpha.item(), _sigmoid(r_batch) / _sigmoid(scale), rel_tol=1e-6)
        if scale == 1.0:
            assert math.isclose(alpha.item(), hand, rel_tol=1e-6)


def test_negative_r_bar_hand_worked():
    """R_bar = -1: Rn = [4, -1, -2, -3, -10]. topk keeps the same records {1, 2, 3}: R_B = -2,
    alpha_M = sigmoid(-2) / sigmoid(-1) = 0.4432301. "bottom" ranks raw gaps, so it still drops -4 and 1:
    R_B = mean(-2, -3, -10) = -5, alpha_M = sigmoid(-5) / sigmoid(-1) = 0.0248859 (paper); the bounded
    default has the same R_B (|R_bar| = 1 >= 0.1 * mean|R| = 0.4) and clamps alpha_M to 1/10."""
    alpha, mask, rb = dama_model_alpha(torch.tensor(GAPS), r_bar=-1.0, keep=3, filter="topk")
    assert mask.tolist() == [False, True, True, True, False]
    assert math.isclose(rb.item(), -2.0, rel_tol=1e-6)
    assert math.isclose(alpha.item(), 0.4432301, rel_tol=1e-6)
    alpha, mask, rb = dama_model_alpha(torch.tensor(GAPS), r_bar=-1.0, keep=3, filter="bottom", normalizer="paper")
    assert mask.tolist() == [False, False, True, True, True]
    assert math.isclose(rb.item(), -5.0, rel_tol=1e-6)
    assert math.isclose(alpha.item(), 0.0248859, rel_tol=1e-5)
    alpha, mask, rb = dama_model_alpha(torch.tensor(GAPS), r_bar=-1.0, keep=3, filter="bottom")
    assert mask.tolist() == [False, False, True, True, True]
    assert math.isclose(rb.item(), -5.0, rel_tol=1e-6)
    assert math.isclose(alpha.item(), 0.1, rel_tol=1e-6)


def test_bounded_divisor_floor_hand_worked():
    """gaps [-4, 1, 2, 3, 10]: S = mean|R| = 20 / 5 = 4, floor 0.1 * S = 0.4; K = 3, topk keeps {1, 2, 3}
    (kept sum 6, mean 2).

    R_bar = 0.01 < 0.4: paper R_B = 2 / 0.01 = 200, alpha_M = sigmoid(200) / sigmoid(0.01) = 1.9900498;
    bounded divisor 0.4, R_B = 2 / 0.4 = 5, alpha_M = sigmoid(5) / sigmoid(0.01) = 0.9933071 / 0.5025
    = 1.9767307.
    R_bar = -0.2: bounded divisor -0.4 (R_bar's sign), R_B = -5,
    alpha_M = sigmoid(-5) / sigmoid(-0.2) = 0.0066929 / 0.4501660 = 0.0148675 -> clamped to 0.1;
    paper R_B = -10, alpha_M = 1.0084695e-4.
    R_bar = -20 (no floor: 20 >= 0.4): R_B = -0.1 in both; paper alpha_M = sigmoid(-0.1) / sigmoid(-20)
    = 2.3046357e8, bounded 10.
    Bound: |R_B| <= (N / K) / 0.1 = 16.7 whatever R_bar is.
    """
    gaps = torch.tensor(GAPS, dtype=torch.float64)
    cases = [  # r_bar, bounded (R_B, alpha), paper (R_B, alpha)
        (0.01, (5.0, 1.9767307), (200.0, 1.9900498)),
        (-0.2, (-5.0, 0.1), (-10.0, 1.0084695e-4)),
        (-20.0, (-0.1, 10.0), (-0.1, 2.3046357e8)),
    ]
    for r_bar, bounded, paper in cases:
        for normalizer, (r_batch, alpha_m) in (("bounded", bounded), ("paper", paper)):
            alpha, mask, rb = dama_model_alpha(gaps, r_bar, 3, normalizer=normalizer)
            assert mask.tolist() == [False, True, True, True, False]
            assert math.isclose(rb.item(), r_batch, rel_tol=1e-9), (r_bar, normalizer)
            assert math.isclose(alpha.item(), alpha_m, rel_tol=1e-6), (r_bar, normalizer)
    for r_bar in (1e-5, -1e-5, 3e-3, -3e-3, 1e-300):
        _, _, rb = dama_model_alpha(gaps, r_bar, 3)
        assert abs(rb.item()) <= (5 / 3) / 0.1


def _naive_model_alpha(gaps, r_bar, keep, filter_mode, eps, normalizer="bounded", floor=0.1, alpha_max=10.0):
    n = len(gaps)
    k = n if filter_mode == "none" else min(keep, n)
    if filter_mode == "none":
        kept = list(range(n))
    elif filter_mode == "topk":
        mean = sum(gaps) / n
        kept = sorted(range(n), key=lambda i: ((gaps[i] - mean) ** 2, i))[:k]
    elif filter_mode == "bottom":
        kept = sorted(range(n), key=lambda i: (-gaps[i], i))[:k]
    else:  # top
        kept = sorted(range(n), key=lambda i: (gaps[i], i))[:k]
    guarded = abs(r_bar) <= eps
    if normalizer == "paper":
        divisor = 1.0 if guarded else r_bar
    else:
        scale = sum(abs(g) for g in gaps) / n
        magnitude = max(0.0 if guarded else abs(r_bar), floor * scale)
        divisor = -magnitude if r_bar < 0 and not guarded else magnitude
    r_batch = sum(gaps[i] / divisor for i in kept) / k if divisor != 0 else 0.0
    if guarded:
        return 1.0, sorted(kept), r_batch
    alpha = _sigmoid(r_batch) / _sigmoid(r_bar)
    if normalizer == "bounded":
        alpha = min(max(alpha, 1 / alpha_max), alpha_max)
    return alpha, sorted(kept), r_batch


@pytest.mark.parametrize("normalizer", ["bounded", "paper"])
@pytest.mark.parametrize("filter_mode", ["topk", "bottom", "top", "none"])
def test_model_alpha_matches_naive_reference(filter_mode, normalizer):
    """Both normalisers against a loop-and-sort reference; r_bar spans the floor (0.1 * mean|R| ~ 0.16)
    and the clamp (alpha_M outside [0.1, 10] for r_bar < -2.2 or a very negative R_B)."""
    gen = torch.Generator().manual_seed(5)
    for i in range(40):
        n = int(torch.randint(1, 17, (1,), generator=gen))
        gaps = (torch.randn(n, generator=gen, dtype=torch.float64) * 2).tolist()
        r_bar = float(torch.randn(1, generator=gen, dtype=torch.float64)) * (3 if i % 2 else 0.2)
        keep = int(torch.randint(1, 14, (1,), generator=gen))
        alpha, mask, rb = dama_model_alpha(torch.tensor(gaps, dtype=torch.float64), r_bar, keep, filter_mode,
                                           normalizer=normalizer)
        naive_alpha, naive_kept, naive_rb = _naive_model_alpha(gaps, r_bar, keep, filter_mode, 1e-6, normalizer)
        assert mask.nonzero().flatten().tolist() == naive_kept
        assert math.isclose(rb.item(), naive_rb, rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(alpha.item(), naive_alpha, rel_tol=1e-9)


def test_sample_mode_survives_underflowing_weights():
    """gaps [0, 1e3, 2e3, -1e3], R_bar = 0: weights exp(-R^2 / 2) = [1, e^-5e5, e^-2e6, e^-5e5], all but
    the first 0 in any float format; K = 2 must still keep 2 records: index 0 (the only positive
    weight) and the nearest of the rest, index 1 (tied with 3 at 1e3, the lower index wins)."""
    gen = torch.Generator().manual_seed(6)
    for _ in range(5):
        alpha, mask, rb = dama_model_alpha(torch.tensor([0.0, 1e3, 2e3, -1e3]), 0.0, 2, "sample", generator=gen)
        assert mask.tolist() == [True, True, False, False]
        assert torch.isfinite(alpha) and torch.isfinite(rb)


def test_sample_underflow_fix_differs_from_the_authors_draw():
    """The one place the authors' recipe departs from their code. Gaps [2000, 0, 20, 1000] around 0:
    the float32 weights are [0, 1, 0, 0] (e^-200 underflows). Their ``torch.multinomial`` must still
    return K = 2 records and fills with a zero-weight one by index, here 1000 instead of 20; mmpo keeps
    the nearest. Where no weight underflows, both draw the same records from the same generator."""
    gaps = torch.tensor([2000.0, 0.0, 20.0, 1000.0])
    weights = torch.exp(-0.5 * (gaps - torch.zeros(1)).pow(2))
    assert weights.tolist() == [0.0, 1.0, 0.0, 0.0]
    theirs = torch.multinomial(weights, 2, replacement=False, generator=torch.Generator().manual_seed(0))
    assert sorted(theirs.tolist()) == [1, 3]
    _, mask = dama_model_alpha_authors(gaps, 0.0, 2, generator=torch.Generator().manual_seed(0))
    assert mask.tolist() == [False, True, True, False]
    # All weights 0: their fallback draws K with replacement (duplicates possible); mmpo keeps the K nearest.
    _, mask = dama_model_alpha_authors(torch.tensor([90.0, -50.0, 70.0]), 0.0, 2)
    assert mask.tolist() == [False, True, True]
    # No underflow: the same generator state keeps the same records as their draw.
    gaps = torch.tensor([0.3, -1.2, 2.5, 0.9, 1.7, -0.4, 3.1, 0.0])
    weights = torch.exp(-0.5 * (gaps - torch.tensor([0.5])).pow(2))
    for seed in range(20):
        theirs = torch.multinomial(weights, 6, replacement=False, generator=torch.Generator().manual_seed(seed))
        _, mask = dama_model_alpha_authors(gaps, 0.5, 6, generator=torch.Generator().manual_seed(seed))
        assert mask.nonzero().flatten().tolist() == sorted(theirs.tolist())


def test_sample_mode_matches_sequential_weighted_draw():
    """gaps [0, 1, 2], R_bar = 0, K = 2: weights w = [1, e^-0.5, e^-2] = [1, 0.6065307, 0.1353353].
    Drawing without replacement, P({i, j}) = w_i/W * w_j/(W - w_i) + w_j/W * w_i/(W - w_j)."""
    w = [1.0, math.exp(-0.5), math.exp(-2.0)]
    total = sum(w)
    expected = {}
    for i, j in itertools.combinations(range(3), 2):
        expected[(i, j)] = w[i] / total * w[j] / (total - w[i]) + w[j] / total * w[i] / (total - w[j])
    gen = torch.Generator().manual_seed(7)
    draws = 3000
    counts = dict.fromkeys(expected, 0)
    for _ in range(draws):
        _, mask, _ = dama_model_alpha(torch.tensor([0.0, 1.0, 2.0]), 0.0, 2, "sample", generator=gen)
        counts[tuple(mask.nonzero().flatten().tolist())] += 1
    for pair, p in expected.items():
        assert abs(counts[pair] / draws - p) < 0.03, (pair, counts[pair] / draws, p)


def test_sample_mode_is_reproducible_with_a_generator():
    gaps = torch.randn(16, generator=torch.Generator().manual_seed(8))
    first = dama_model_alpha(gaps, 0.3, 12, "sample", generator=torch.Generator().manual_seed(9))[1]
    second = dama_model_alpha(gaps, 0.3, 12, "sample", generator=torch.Generator().manual_seed(9))[1]
    assert torch.equal(first, second) and first.sum().item() == 12


def test_zero_start_guard():
    """Bounded (default). Step 0 (policy == reference): all gaps 0, R_bar = 0 -> alpha_M = 1, R_B = 0
    (no scale to divide by), R_bar stays 0.
    Step 1: gaps [0.2, 0.4, 0.6, 5], R_bar = 0 -> guarded, alpha_M = 1, topk K = 3 keeps
    [0.2, 0.4, 0.6] (the batch mean is 1.55); divisor = 0.1 * mean|R| = 0.1 * 1.55 = 0.155,
    R_B = 0.4 / 0.155 = 2.5806452 -> R_bar = 0.1 * 2.5806452 = 0.2580645.
    Step 2: gaps [0.04, 0.08] (mean|R| 0.06, floor 0.006 < R_bar: the paper's formula):
    Rn = [0.155, 0.31], R_B = 0.2325, alpha_M = sigmoid(0.2325) / sigmoid(0.2580645)
    = 0.5578632 / 0.5641594 = 0.9888403.
    """
    state = DamaState()
    alpha, mask, rb = dama_model_alpha(torch.zeros(4), state.r_bar, keep=3)
    assert alpha.item() == 1.0 and rb.item() == 0.0 and mask.sum().item() == 3
    state.update(rb)
    assert state.r_bar == 0.0 and state.step == 1

    alpha, mask, rb = dama_model_alpha(torch.tensor([0.2, 0.4, 0.6, 5.0]), state.r_bar, keep=3)
    assert alpha.item() == 1.0
    assert mask.tolist() == [True, True, True, False]
    assert math.isclose(rb.item(), 2.5806452, rel_tol=1e-6)
    state.update(rb)
    assert math.isclose(state.r_bar, 0.2580645, rel_tol=1e-6)

    alpha, mask, rb = dama_model_alpha(torch.tensor([0.04, 0.08]), state.r_bar, keep=3)
    assert math.isclose(rb.item(), 0.2325, rel_tol=1e-5)
    assert math.isclose(alpha.item(), 0.9888403, rel_tol=1e-5)


def test_zero_start_guard_paper():
    """Paper normaliser. Step 1 as above but R_B = 0.4, the mean of the kept *raw* gaps -> R_bar = 0.04.
    Step 2: normalised by R_bar = 0.04: gaps [0.04, 0.08] -> Rn [1, 2], R_B = 1.5,
    alpha_M = sigmoid(1.5) / sigmoid(0.04) = 0.8175745 / 0.5099987 = 1.6030908.
    """
    state = DamaState()
    alpha, mask, rb = dama_model_alpha(torch.zeros(4), state.r_bar, keep=3, normalizer="paper")
    assert alpha.item() == 1.0 and rb.item() == 0.0
    state.update(rb)
    alpha, mask, rb = dama_model_alpha(torch.tensor([0.2, 0.4, 0.6, 5.0]), state.r_bar, keep=3, normalizer="paper")
    assert alpha.item() == 1.0
    assert mask.tolist() == [True, True, True, False]
    assert math.isclose(rb.item(), 0.4, rel_tol=1e-6)
    state.update(rb)
    assert math.isclose(state.r_bar, 0.04, rel_tol=1e-6)

    alpha, mask, rb = dama_model_alpha(torch.tensor([0.04, 0.08]), state.r_bar, keep=3, normalizer="paper")
    assert math.isclose(rb.item(), 1.5, rel_tol=1e-5)
    assert math.isclose(alpha.item(), 1.6030908, rel_tol=1e-5)


@pytest.mark.parametrize("normalizer", ["bounded", "paper"])
def test_guard_threshold_and_tiny_r_bar_stay_finite(normalizer):
    gaps = torch.tensor([1e4, -1e4, 3.0, 0.5])
    for r_bar in (0.0, 1e-7, -1e-6, 2e-6, -2e-6, 1e-3, -1e4, 1e4):
        for filter_mode in ("topk", "bottom", "top", "none", "sample"):
            alpha, mask, rb = dama_model_alpha(gaps, r_bar, 3, filter_mode, eps=1e-6, normalizer=normalizer)
            assert torch.isfinite(alpha) and torch.isfinite(rb) and alpha.item() >= 0
            assert mask.sum().item() == (4 if filter_mode == "none" else 3)
            if abs(r_bar) <= 1e-6:
                assert alpha.item() == 1.0


finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(finite, min_size=1, max_size=16),
    st.one_of(finite, st.floats(-1e-5, 1e-5), st.just(0.0)),
    st.integers(1, 16),
    st.sampled_from(["topk", "bottom", "top", "none", "sample"]),
    st.sampled_from(["bounded", "paper"]),
)
def test_model_alpha_never_nan_or_inf(gaps, r_bar, keep, filter_mode, normalizer):
    """Moderate inputs, both normalisers (extreme ones, bounded only: tests/reliability/test_dama_numerics.py)."""
    alpha, mask, rb = dama_model_alpha(torch.tensor(gaps), r_bar, keep, filter_mode, normalizer=normalizer)
    assert torch.isfinite(alpha) and torch.isfinite(rb) and alpha.item() >= 0
    expected_kept = len(gaps) if filter_mode == "none" else min(keep, len(gaps))
    assert mask.dtype == torch.bool and mask.sum().item() == expected_kept
    state = DamaState(r_bar=r_bar)
    state.update(rb)
    assert math.isfinite(state.r_bar)


def test_model_alpha_rejects_bad_arguments():
    with pytest.raises(ValueError):
        dama_model_alpha(torch.tensor([]), 0.0, 1)
    with pytest.raises(ValueError):
        dama_model_alpha(torch.ones(3), 0.0, 0)
    with pytest.raises(ValueError):
        dama_model_alpha(torch.ones(3), 0.0, 2, filter="middle")
    with pytest.raises(ValueError, match="r_bar"):
        dama_model_alpha(torch.ones(3), float("nan"), 2)
    with pytest.raises(ValueError, match="normalizer"):
        dama_model_alpha(torch.ones(3), 1.0, 2, normalizer="clip")
    with pytest.raises(ValueError, match="floor"):
        dama_model_alpha(torch.ones(3), 1.0, 2, floor=0.0)
    with pytest.raises(ValueError, match="alpha_max"):
        dama_model_alpha(torch.ones(3), 1.0, 2, alpha_max=0.5)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=16),
    st.floats(0.5, 30).flatmap(lambda m: st.sampled_from([m, -m])),
    st.integers(1, 16),
    st.sampled_from(["topk", "bottom", "top", "none"]),
)
def test_bounded_equals_paper_where_the_paper_is_safe(gaps, r_bar, keep, filter_mode):
    """Degenerate point: when |R_bar| >= 0.1 * mean|R_i| the bounded R_B *is* the paper's R_i / R_bar,
    and its alpha_M equals the paper's whenever the paper's lies in [0.1, 10]."""
    gaps_t = torch.tensor(gaps, dtype=torch.float64)
    if abs(r_bar) < 0.1 * gaps_t.abs().mean().item():
        r_bar = math.copysign(0.1 * gaps_t.abs().mean().item() * 1.5, r_bar) or 1.0
    alpha_b, mask_b, rb_b = dama_model_alpha(gaps_t, r_bar, keep, filter_mode)
    alpha_p, mask_p, rb_p = dama_model_alpha(gaps_t, r_bar, keep, filter_mode, normalizer="paper")
    assert torch.equal(mask_b, mask_p)
    assert rb_b.item() == rb_p.item()
    assert alpha_b.item() == min(max(alpha_p.item(), 0.1), 10.0)


# --- state and combination -----------------------------------------------------------------------


def test_state_update_and_round_trip():
    """R_bar = 0, gamma 0.9: update(2) -> 0.2; update(1) -> 0.9 * 0.2 + 0.1 * 1 = 0.28."""
    state = DamaState()
    state.update(2.0)
    state.update(torch.tensor(1.0))
    assert math.isclose(state.r_bar, 0.28) and state.step == 2
    saved = json.loads(json.dumps(state.state_dict()))
    restored = DamaState(gamma=0.5)
    restored.load_state_dict(saved)
    assert restored == state
    with pytest.raises(ValueError):
        state.update(float("nan"))


def test_combine_hand_worked():
    """alpha_D = [1.2, 0.8], alpha_M = 1.5: product [1.8, 1.2];
    sum with rho 0.25: 0.75 * 1.5 + 0.25 * [1.2, 0.8] = [1.425, 1.325]."""
    alpha_data = torch.tensor([1.2, 0.8])
    torch.testing.assert_close(dama_combine(alpha_data, torch.tensor(1.5)), torch.tensor([1.8, 1.2]))
    torch.testing.assert_close(dama_combine(alpha_data, 1.5, "sum", rho=0.25), torch.tensor([1.425, 1.325]))
    with pytest.raises(ValueError):
        dama_combine(alpha_data, 1.5, "mean")


def test_alpha_one_is_dpo():
    """alpha_D = 1 and alpha_M = 1 (the zero-start guard, or alpha_max = 1 at any R_bar):
    beta_C = beta, the loss is DPO's."""
    gen = torch.Generator().manual_seed(10)
    chosen, rejected = torch.randn(8, generator=gen), torch.randn(8, generator=gen)
    gaps = 0.1 * (chosen - rejected)
    for alpha_model, mask, _ in (dama_model_alpha(torch.zeros(8), 0.0, keep=8),
                                 dama_model_alpha(gaps, -50.0, keep=8, alpha_max=1.0),
                                 dama_model_alpha(gaps, 3.0, keep=8, alpha_max=1.0)):
        assert alpha_model.item() == 1.0 and mask.all()
        for mode in ("product", "sum"):
            beta_c = 0.1 * dama_combine(torch.ones(8), alpha_model, mode)
            assert torch.equal(dpo_loss(chosen, rejected, beta_c), dpo_loss(chosen, rejected, 0.1))
