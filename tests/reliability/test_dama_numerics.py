"""DAMA numerics that cannot explode (docs/methods.md, "DAMA numerics").

The bounded normaliser (the default) keeps ``alpha_M`` in ``[1 / M, M]`` and ``|R_B|``, ``|R_bar|``
below ``(N / K) / tau`` for any finite float32 or float64 input; ``alpha_D`` stays in
``DATA_ALPHA_RANGE``; the per-record loss the trainer builds from them, masked with ``torch.where``,
is finite even in float32. The paper's unguarded formula is exercised too, to show each test would
catch the defect it guards against.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmpo.methods.dama import (
    ALPHA_MODEL_MAX,
    DATA_ALPHA_RANGE,
    R_FLOOR,
    RECIPES,
    DamaState,
    dama_alpha_from_delta,
    dama_combine,
    dama_data_alpha,
    dama_model_alpha,
)
from mmpo.methods.dpo import preference_loss
from mmpo.training.config import DamaConfig, Methods

FILTERS = ["topk", "bottom", "top", "none", "sample"]
EPS, FLOOR, ALPHA_MAX = 1e-6, 0.1, 10.0

float32s = st.floats(width=32, allow_nan=False, allow_infinity=False)
float64s = st.floats(allow_nan=False, allow_infinity=False)
# Both tails of the float64 range, the zero-start guard's edge and the float32 overflow point of e^-R_bar.
special_r_bars = st.sampled_from([0.0, 1e-300, -1e-300, 5e-324, 1e300, -1e300, 1e-6, -1e-6, 1.0000001e-6,
                                  -1.0000001e-6, 88.0, -88.0, -89.0, -1e4, 1.7e308, -1.7e308])
r_bars = st.one_of(special_r_bars, float64s, st.floats(-1e-3, 1e-3), st.floats(-200, 200))
# Summed log-ratios in float32, up to +-1e30 (2**100 = 1.27e30 is exactly representable).
logratios32 = st.floats(-(2.0**100), 2.0**100, width=32)


def check_model_alpha(gaps: torch.Tensor, r_bar: float, keep: int, filter_mode: str) -> None:
    """Every documented guarantee of the bounded ``dama_model_alpha`` on one input."""
    n = gaps.numel()
    k = n if filter_mode == "none" else min(keep, n)
    alpha, mask, rb = dama_model_alpha(gaps, r_bar, keep, filter_mode, generator=torch.Generator().manual_seed(0))
    assert alpha.dtype == gaps.dtype and rb.dtype == gaps.dtype
    assert torch.isfinite(alpha) and torch.isfinite(rb)
    if abs(r_bar) <= EPS:
        assert alpha.item() == 1.0
    else:
        # alpha_M is clamped in float64, then rounded to the gaps' dtype.
        assert 1 / ALPHA_MAX * (1 - 1e-6) <= alpha.item() <= ALPHA_MAX * (1 + 1e-6)
    assert mask.dtype == torch.bool and mask.shape == (n,) and int(mask.sum()) == k
    assert abs(rb.item()) <= (n / k) / FLOOR * (1 + 1e-6)


@settings(max_examples=300, deadline=None)
@given(st.lists(float32s, min_size=1, max_size=20), r_bars, st.integers(1, 20), st.sampled_from(FILTERS))
def test_bounded_model_alpha_float32_extremes(gaps, r_bar, keep, filter_mode):
    check_model_alpha(torch.tensor(gaps, dtype=torch.float32), r_bar, keep, filter_mode)


@settings(max_examples=300, deadline=None)
@given(st.lists(float64s, min_size=1, max_size=20), r_bars, st.integers(1, 20), st.sampled_from(FILTERS))
def test_bounded_model_alpha_float64_extremes(gaps, r_bar, keep, filter_mode):
    check_model_alpha(torch.tensor(gaps, dtype=torch.float64), r_bar, keep, filter_mode)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("r_bar", [1e-300, -1e-300, 1e300, -1e300, 2e-6, -2e-6, 0.0])
@pytest.mark.parametrize("scale", [1e30, 1e-30, 1.0])
def test_bounded_model_alpha_named_extremes(dtype, r_bar, scale):
    """The cases the issue names: gaps of 1e30 (and 1e-30) against R_bar of +-1e-300 and +-1e300."""
    gaps = torch.tensor([3.0, -1.0, 0.5, 2.0, -4.0, 1.0, 7.0, 0.25], dtype=torch.float64) * scale
    for filter_mode in FILTERS:
        check_model_alpha(gaps.to(dtype), r_bar, 6, filter_mode)


def test_the_paper_formula_explodes_where_the_bounded_one_does_not():
    """The defect: gaps [1e30, ...] over R_bar = 2e-6 give the paper R_B = 4.4e35 (inf in float32
    after one more step of the EMA), and R_bar = -100 gives alpha_M = e^88 = 1.65e38."""
    gaps = torch.tensor([1e30, 2e30, 1e30, -1e30], dtype=torch.float64)
    _, _, rb = dama_model_alpha(gaps, 2e-6, 3, normalizer="paper")
    assert rb.item() > 1e35
    alpha, _, _ = dama_model_alpha(torch.tensor([0.1, 0.2, 0.3]), -100.0, 2, normalizer="paper")
    assert alpha.item() > 1e38
    _, _, rb = dama_model_alpha(gaps, 2e-6, 3)
    assert abs(rb.item()) <= (4 / 3) / FLOOR
    alpha, _, _ = dama_model_alpha(torch.tensor([0.1, 0.2, 0.3]), -100.0, 2)
    assert alpha.item() == pytest.approx(ALPHA_MAX)


# --- the running mean ----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-30, 30), st.floats(-6, 6), st.integers(0, 2**31 - 1)), min_size=1, max_size=60),
    st.sampled_from(FILTERS),
)
def test_running_mean_stays_bounded(batches, filter_mode):
    """R_bar is fed only bounded R_B, and the EMA is a convex combination: |R_bar| <= (N / K) / tau at
    every step, whatever the gaps (log10 scale in [-30, 30], mean gap of either sign)."""
    state = DamaState(gamma=0.9)
    n, keep = 16, 12
    for log_scale, shift, seed in batches:
        noise = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        gaps = (noise + shift) * 10.0**log_scale  # (N,)
        alpha, _, rb = dama_model_alpha(gaps, state.r_bar, keep, filter_mode,
                                        generator=torch.Generator().manual_seed(seed))
        state.update(rb)
        assert math.isfinite(state.r_bar) and abs(state.r_bar) <= (n / keep) / FLOOR * (1 + 1e-9)
        assert 1 / ALPHA_MAX * (1 - 1e-9) <= alpha.item() <= ALPHA_MAX * (1 + 1e-9)


def test_running_mean_just_above_the_guard_hand_worked():
    """Three batches of 4 equal gaps, K = 3, gamma 0.9, from R_bar = 0.

    Paper: [2e-5]: guarded, R_B = 2e-5 (raw) -> R_bar = 2e-6, just above eps = 1e-6.
    [-1]: R_B = -1 / 2e-6 = -5e5, alpha_M = sigmoid(-5e5) / sigmoid(2e-6) = 0 -> R_bar = -5e4.
    [-1]: R_B = -1 / -5e4 = 2e-5, alpha_M = sigmoid(2e-5) / sigmoid(-5e4) = e^(5e4) -> capped e^88.
    Bounded: [2e-5]: guarded, divisor 0.1 * 2e-5, R_B = 10 -> R_bar = 1.
    [-1]: |R_bar| = 1 >= 0.1: R_B = -1, alpha_M = sigmoid(-1) / sigmoid(1) = 1/e = 0.3678794 -> R_bar = 0.8.
    [-1]: R_B = -1.25, alpha_M = sigmoid(-1.25) / sigmoid(0.8) = 0.2227001 / 0.6899745 = 0.3227658.
    """
    batches = [[2e-5] * 4, [-1.0] * 4, [-1.0] * 4]
    expected = {
        "paper": [(1.0, 2e-5, 2e-6), (0.0, -5e5, -5e4), (math.exp(88.0), 2e-5, -4.5e4)],
        "bounded": [(1.0, 10.0, 1.0), (math.exp(-1.0), -1.0, 0.8), (0.3227658, -1.25, 0.595)],
    }
    for normalizer, steps in expected.items():
        state = DamaState()
        for gaps, (alpha_m, r_batch, r_bar) in zip(batches, steps, strict=True):
            alpha, _, rb = dama_model_alpha(torch.tensor(gaps, dtype=torch.float64), state.r_bar, 3,
                                            normalizer=normalizer)
            state.update(rb)
            assert alpha.item() == pytest.approx(alpha_m, rel=1e-6, abs=1e-300), normalizer
            assert rb.item() == pytest.approx(r_batch, rel=1e-6), normalizer
            assert state.r_bar == pytest.approx(r_bar, rel=1e-6), normalizer


# --- the float32 loss path the trainer takes -----------------------------------------------------


def dama_batch_loss(chosen, rejected, beta, r_bar, normalizer="bounded", alpha_data=None, masked="where"):
    """The trainer's path in float32: gaps -> alpha_M and mask -> beta_C -> per-record DPO losses ->
    mean over the kept records (``torch.where``, or the old multiplication by the mask)."""
    gaps = beta * (chosen.detach() - rejected.detach())  # (B,)
    alpha_model, keep, _ = dama_model_alpha(gaps, r_bar, max(1, round(0.75 * gaps.numel())), normalizer=normalizer)
    alpha_data = torch.ones_like(chosen) if alpha_data is None else alpha_data
    beta_c = beta * dama_combine(alpha_data, alpha_model)  # (B,)
    losses, _ = preference_loss(chosen, rejected, beta_c)  # (B,)
    if masked == "where":
        kept = torch.where(keep, losses, torch.zeros_like(losses))
    else:
        kept = losses * keep.float()
    return kept.sum() / keep.sum().clamp(min=1), losses


def test_float32_overflow_reproduced_and_fixed():
    """R_bar = -100: paper alpha_M = min(sigmoid(R_B) / sigmoid(-100), e^88) = e^88 = 1.65e38, so
    beta_C = 1.65e37 and record 0's margin 1.65e37 * -50 = -8e38 overflows float32: its loss is inf.
    The filter drops it; inf * 0 = NaN (the old masking), torch.where gives 0. Bounded: alpha_M = 10,
    beta_C = 1, every loss finite."""
    chosen = torch.tensor([-50.0, 1.0, 2.0, 3.0], dtype=torch.float32)
    rejected = torch.zeros(4, dtype=torch.float32)
    loss, losses = dama_batch_loss(chosen, rejected, 0.1, -100.0, "paper", masked="multiply")
    assert torch.isinf(losses[0]) and torch.isnan(loss)
    loss, _ = dama_batch_loss(chosen, rejected, 0.1, -100.0, "paper", masked="where")
    assert torch.isfinite(loss)
    for masked in ("where", "multiply"):
        loss, losses = dama_batch_loss(chosen, rejected, 0.1, -100.0, "bounded", masked=masked)
        assert torch.isfinite(losses).all() and torch.isfinite(loss)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(logratios32, logratios32), min_size=1, max_size=16),
    r_bars,
    st.floats(1e-3, 10.0),
    st.sampled_from([None, DATA_ALPHA_RANGE[0], DATA_ALPHA_RANGE[1]]),
)
def test_float32_masked_loss_and_gradient_finite(pairs, r_bar, beta, alpha_d):
    """Log-ratios anywhere in +-2^100 = +-1.3e30 (float32), any R_bar, beta in [1e-3, 10], alpha_D at
    either end of its range: beta_C <= 10 * 1e3 * 10 = 1e5, so the margins stay below 2.6e35, under
    float32's 3.4e38; the masked loss and its gradient are finite."""
    chosen = torch.tensor([c for c, _ in pairs], dtype=torch.float32, requires_grad=True)
    rejected = torch.tensor([r for _, r in pairs], dtype=torch.float32)
    alpha_data = None if alpha_d is None else torch.full_like(rejected, alpha_d)
    loss, losses = dama_batch_loss(chosen, rejected, beta, r_bar, alpha_data=alpha_data)
    assert torch.isfinite(losses).all() and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(chosen.grad).all()


# --- data-aware ----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(-100, 100), min_size=1, max_size=6),
    st.lists(st.floats(-100, 100), min_size=1, max_size=6),
    st.one_of(st.floats(-1e6, 1e6), float64s),
    st.sampled_from(["ratio", "softmax"]),
)
def test_data_alpha_is_never_zero_or_inf(clip_chosen, clip_rejected, delta_bar, mode):
    alpha = dama_data_alpha(clip_chosen, clip_rejected, delta_bar, mode)
    assert DATA_ALPHA_RANGE[0] <= alpha <= DATA_ALPHA_RANGE[1]


def test_ratio_mode_zero_alpha_reproduced_and_fixed():
    """100 records of CLIP scores ~ N(0, 1), ratio mode, delta_bar their mean delta: sigmoid(delta) of a
    record with sum C_w / sum C_l << 0 underflows, and the unclamped alpha_D was exactly 0 (or
    below 1e-3) for some; clamped, every alpha_D is in DATA_ALPHA_RANGE."""
    gen = torch.Generator().manual_seed(0)
    scores = [(torch.randn(3, generator=gen).tolist(), torch.randn(3, generator=gen).tolist()) for _ in range(100)]
    deltas = [sum(c) / sum(r) for c, r in scores]
    delta_bar = sum(deltas) / len(deltas)
    unclamped = [torch.sigmoid(torch.tensor(d, dtype=torch.float64)).item()
                 / torch.sigmoid(torch.tensor(delta_bar, dtype=torch.float64)).item() for d in deltas]
    assert sum(a < DATA_ALPHA_RANGE[0] for a in unclamped) > 0
    alphas = [dama_data_alpha(c, r, delta_bar, "ratio") for c, r in scores]
    assert all(DATA_ALPHA_RANGE[0] <= a <= DATA_ALPHA_RANGE[1] for a in alphas)
    assert dama_alpha_from_delta(-800.0, 800.0) == DATA_ALPHA_RANGE[0]  # e^-1600: 0.0 in float64


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("dama_gamma", 1.0), ("dama_gamma", -0.1), ("dama_gamma", float("nan")),
    ("dama_rho", 1.5), ("dama_rho", -0.5), ("dama_rho", float("inf")),
    ("dama_keep", 0.0), ("dama_keep", 1.01), ("dama_keep", float("nan")),
    ("dama_scale_floor", 0.0), ("dama_scale_floor", -1.0), ("dama_scale_floor", float("inf")),
    ("dama_alpha_model_max", 0.5), ("dama_alpha_model_max", float("inf")), ("dama_alpha_model_max", float("nan")),
    ("dama_normalizer", "clip"), ("dama_filter", "middle"), ("dama_combine", "mean"), ("dama_recipe", "code"),
    ("dama_alpha_model", "mean"), ("dama_running_mean", "kept"), ("dama_update", "epoch"),
    ("dama_loss_mean", "local"), ("dama_keep_rounding", "ceil"), ("dama_beta_min", -1e-3),
    ("dama_beta_min", float("nan")), ("dama_gap_uses_beta", "yes"),
])
def test_dama_arguments_reject_out_of_range_values(field, value):
    """The error names the YAML key (``dama_gamma``) of the field (``DamaConfig.gamma``)."""
    with pytest.raises(ValueError, match=field):
        DamaConfig(**{field.removeprefix("dama_"): value})


@pytest.mark.parametrize(("field", "value"), [
    ("dama_gamma", 0.0), ("dama_gamma", 0.999), ("dama_rho", 0.0), ("dama_rho", 1.0), ("dama_keep", 1.0),
    ("dama_keep", 1), ("dama_scale_floor", 5.0), ("dama_alpha_model_max", 1.0), ("dama_normalizer", "paper"),
    ("dama_recipe", "paper"), ("dama_beta_min", 0.0), ("dama_filter", "sample"), ("dama_update", "step"),
])
def test_dama_arguments_accept_the_edges(field, value):
    name = field.removeprefix("dama_")
    assert getattr(DamaConfig(**{name: value}), name) == value


def test_config_defaults_are_the_library_defaults():
    """The config repeats the library's defaults (its help texts need the numbers): keep them equal.
    Unset choices resolve to the recipe's, set ones replace only themselves."""
    dama = DamaConfig()
    assert dama.recipe == "authors" and dama.resolved() == RECIPES["authors"]
    assert DamaConfig(recipe="paper").resolved() == RECIPES["paper"]
    assert (dama.scale_floor, dama.alpha_model_max) == (R_FLOOR, ALPHA_MODEL_MAX)
    assert (R_FLOOR, ALPHA_MODEL_MAX) == (FLOOR, ALPHA_MAX)
    assert (RECIPES["authors"].keep, RECIPES["authors"].beta_min, RECIPES["paper"].keep) == (0.8, 1e-3, 0.75)
    mixed = DamaConfig(recipe="paper", normalizer="bounded", filter="sample").resolved()
    assert (mixed.normalizer, mixed.filter, mixed.alpha_model, mixed.keep) == ("bounded", "sample", "paper", 0.75)


def test_the_config_reaches_the_dama_step(tmp_path, tiny_checkpoint, tiny_records):
    """``DamaController.from_config`` hands dama_normalizer, dama_scale_floor and dama_alpha_model_max
    to ``dama_model_alpha`` (at R_bar = -100 the paper's alpha_M is e^88, the bounded one the clamp),
    and the trainer builds its controller from its methods."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmpo.data.collator import PreferenceDataset
    from mmpo.methods.dama import DamaController
    from mmpo.training.config import PreferenceConfig
    from mmpo.training.trainer import PreferenceTrainer

    chosen, rejected = torch.tensor([-50.0, 1.0, 2.0, 3.0]), torch.zeros(4)
    for dama, expected in (
        (DamaConfig(model=True, recipe="paper"), math.exp(88.0)),
        (DamaConfig(model=True, recipe="paper", normalizer="bounded"), 10.0),
        (DamaConfig(model=True, recipe="paper", normalizer="bounded", alpha_model_max=2.0),
         2.0),
    ):
        controller = DamaController.from_config(dama, beta=0.1)
        controller.state = DamaState(r_bar=-100.0)
        beta_c, keep, diag = controller.beta(chosen, rejected, training=False)
        assert diag["dama/alpha_model"].item() == pytest.approx(expected, rel=1e-6)
        assert keep.tolist() == [False, True, True, True]
        assert beta_c.tolist() == pytest.approx([0.1 * expected] * 4, rel=1e-6)
        assert controller.mark() == 0  # evaluation queues no R_B

    args = PreferenceConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=4,
                            use_cpu=True, disable_tqdm=True, report_to="none", save_strategy="no", beta=0.3)
    dama = DamaConfig(model=True, recipe="paper", keep=0.5, gamma=0.5)
    trainer = PreferenceTrainer(AutoModelForImageTextToText.from_pretrained(tiny_checkpoint), args,
                                AutoProcessor.from_pretrained(tiny_checkpoint), PreferenceDataset(tiny_records),
                                methods=Methods(dama=dama))
    assert (trainer.dama.beta_base, trainer.dama.recipe.normalizer, trainer.dama.recipe.keep,
            trainer.dama.state.gamma) == (0.3, "paper", 0.5, 0.5)
