"""DAMA's ``authors`` recipe against a transcription of the authors' training step.

``authors_step`` below is written from the description in docs/methods.md (section "Model-aware")
and docs/papers.md, in the most literal way: float32 sample weights drawn with
``torch.multinomial``, ``alpha_M = mean_kept sigmoid(A) / sigmoid(m)``, beta clamped at 1e-3, the
loss averaged over this process's kept records, and the EMA of the mean raw gap of all records
updated after the loss. :class:`~mmpo.methods.dama.DamaController` with its default recipe must give
the same kept set, ``alpha_M``, EMA, beta, loss and gradient, step after step.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mmpo.methods.dama import RECIPES, DamaController, DamaState, dama_model_alpha_authors
from mmpo.methods.dpo import dpo_loss


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def authors_step(chosen, rejected, alpha_data, beta, gap_mean, generator, rank=0, world=1):
    """One step of the authors' algorithm, literally. ``chosen``/``rejected``: the *global* batch's
    ``(N,)`` log-ratios (with gradient); this process holds records ``[rank B, (rank + 1) B)``.
    Returns (this process's loss, global kept mask, alpha_M, beta (N,), the EMA after the step)."""
    margins = chosen - rejected  # (N,) raw log-ratio margins
    gaps = margins.detach()
    weights = torch.exp(-0.5 * (gaps - torch.tensor([gap_mean], dtype=torch.float32)).pow(2))
    k = int(gaps.numel() * 0.8)
    index = torch.multinomial(weights, k, replacement=False, generator=generator)
    mask = torch.zeros(gaps.numel())
    mask[index] = 1.0
    alpha_model = torch.sigmoid(gaps[index]).mean() / torch.sigmoid(torch.tensor(gap_mean))
    beta_used = (beta * alpha_data * alpha_model).clamp(min=1e-3)
    losses = -F.logsigmoid(beta_used * margins)  # (N,)
    b = gaps.numel() // world
    local = mask[rank * b : (rank + 1) * b]
    loss = (losses[rank * b : (rank + 1) * b] * local).sum() / max(local.sum().item(), 1.0)
    ema = torch.tensor([gap_mean], dtype=torch.float32)
    ema.mul_(0.9).add_(gaps.mean(), alpha=1 - 0.9)
    return loss, mask.bool(), alpha_model.item(), beta_used.detach(), ema.item()


def _mmpo_step(controller, chosen, rejected, alpha_data):
    beta, keep, diag = controller.beta(chosen, rejected, data_alpha=alpha_data)
    loss = controller.mean_loss(dpo_loss(chosen, rejected, beta), keep)
    controller.step_end()
    return loss, keep, diag["dama/alpha_model"].item(), beta.detach(), controller.r_bar


def test_authors_two_steps_hand_worked():
    """N = 5, K = int(0.8 * 5) = 4, beta 0.1, alpha_D = [2, 0.5, 1, 1, 0.005].

    Step 1, m = 0: gaps A = [1, 2, 0, -1, 50]; the float32 weight of 50 is e^-1250 = 0, so the draw
    keeps records 0-3. alpha_M = (s(1) + s(2) + s(0) + s(-1)) / 4 / s(0) = (1 + s(2) + 0.5) / 2
    = 1.190399 (s(1) + s(-1) = 1). beta = 0.1 alpha_D alpha_M = [0.238080, 0.059520, 0.119040,
    0.119040, 0.000595 -> clamped to 0.001]. Loss = mean over the 4 kept of -log s(beta A); its
    gradient on record i's chosen log-ratio is -(1 - s(beta_i A_i)) beta_i / 4, 0 for record 4.
    EMA = 0.9 * 0 + 0.1 * mean(A) = 0.1 * 52 / 5 = 1.04.

    Step 2, m = 1.04: A = [1.04, 1.04, 1.04, 1.04, 60]: records 0-3 kept, every kept gap equals m,
    so alpha_M = 1 exactly (the steady state). EMA = 0.9 * 1.04 + 0.1 * (4 * 1.04 + 60) / 5 = 2.2192.
    """
    alpha_data = torch.tensor([2.0, 0.5, 1.0, 1.0, 0.005])
    controller = DamaController(0.1, data_aware=True, model_aware=True)  # the default recipe: authors
    chosen = torch.tensor([1.0, 2.0, 0.0, -1.0, 50.0], requires_grad=True)
    loss, keep, alpha_m, beta, ema = _mmpo_step(controller, chosen, torch.zeros(5), alpha_data)
    assert keep.tolist() == [True, True, True, True, False]
    expected_alpha = (1 + _sigmoid(2.0) + 0.5) / 2
    assert alpha_m == pytest.approx(expected_alpha, rel=1e-6) and expected_alpha == pytest.approx(1.190399, abs=1e-6)
    expected_beta = [0.1 * a * expected_alpha for a in (2.0, 0.5, 1.0, 1.0)] + [1e-3]
    assert beta.tolist() == pytest.approx(expected_beta, rel=1e-6)
    gaps = [1.0, 2.0, 0.0, -1.0]
    expected_loss = sum(-math.log(_sigmoid(b * a)) for b, a in zip(expected_beta, gaps, strict=False)) / 4
    assert loss.item() == pytest.approx(expected_loss, rel=1e-6)
    loss.backward()
    expected_grad = [-(1 - _sigmoid(b * a)) * b / 4 for b, a in zip(expected_beta, gaps, strict=False)] + [0.0]
    assert chosen.grad.tolist() == pytest.approx(expected_grad, rel=1e-5)
    assert ema == pytest.approx(1.04, rel=1e-6)

    chosen = torch.tensor([1.04, 1.04, 1.04, 1.04, 60.0], requires_grad=True)
    _, keep, alpha_m, beta, ema = _mmpo_step(controller, chosen, torch.zeros(5), alpha_data)
    assert keep.tolist() == [True, True, True, True, False]
    assert alpha_m == pytest.approx(1.0, abs=1e-7)
    assert ema == pytest.approx(2.2192, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_authors_recipe_equals_the_transcription_step_after_step(seed):
    """50 steps of 16 records with rising, noisy gaps: the same kept set (same generator state), and
    alpha_M, beta, the EMA, the loss and its gradient to float32 rounding."""
    data = torch.Generator().manual_seed(100 + seed)
    controller = DamaController(0.1, data_aware=True, model_aware=True, seed=seed)
    reference_generator, gap_mean = torch.Generator().manual_seed(seed), 0.0
    alpha_data = 0.5 + torch.rand(16, generator=data)
    worst = 0.0
    for step in range(50):
        base = torch.randn(16, generator=data) * 2.0 + 0.2 * step  # the gaps grow as training goes on
        c1 = base.clone().requires_grad_(True)
        c2 = base.clone().requires_grad_(True)
        rejected = torch.zeros(16)
        loss, keep, alpha_m, beta, ema = _mmpo_step(controller, c1, rejected, alpha_data)
        ref_loss, ref_keep, ref_alpha, ref_beta, gap_mean = authors_step(c2, rejected, alpha_data, 0.1, gap_mean,
                                                                         reference_generator)
        assert keep.tolist() == ref_keep.tolist(), f"step {step}"
        loss.backward()
        ref_loss.backward()
        for ours, theirs in ((alpha_m, ref_alpha), (ema, gap_mean), (loss.item(), ref_loss.item())):
            assert ours == pytest.approx(theirs, rel=2e-6, abs=1e-7), f"step {step}"
        torch.testing.assert_close(beta, ref_beta, rtol=2e-6, atol=1e-9)
        torch.testing.assert_close(c1.grad, c2.grad, rtol=2e-5, atol=1e-9)
        worst = max(worst, abs(ema - gap_mean), float((c1.grad - c2.grad).abs().max()))
    assert ema > 3.0  # the scenario did move the running mean (the draw was centred away from 0)
    assert worst < 1e-5


class _Process:
    """Process ``rank`` of a fake 2-process run: the global batch is ``everything``."""

    num_processes = 2

    def __init__(self, everything, rank, kept_by_rank):
        self.everything, self.rank, self.kept_by_rank = everything, rank, kept_by_rank

    def concat(self, values):
        return self.everything, self.rank * values.shape[0]

    def sum(self, value):
        return sum(self.kept_by_rank)


def test_per_process_loss_mean_on_two_processes():
    """Two processes x 4 records. Both draw the same global mask (same seed, same global gaps). With
    ``loss_mean: process`` each process's loss is the transcription's for its rank, and DDP's average
    of the two gradients is the mean of the per-process means, not one mean over the global kept set
    (``loss_mean: global``), which differs whenever the two processes keep different counts."""
    gaps = torch.tensor([0.1, 0.2, 0.3, 0.4, 4.0, 4.1, 0.0, -0.2])
    alpha_data = torch.ones(8)
    masks, grads = [], {}
    for mean in ("process", "global"):
        total = torch.zeros(8)
        for rank in (0, 1):
            # Which records each process keeps: the same draw the controller will make.
            everything = gaps.clone()
            kept = dama_model_alpha_authors(everything, 0.0, 6, generator=torch.Generator().manual_seed(5))[1]
            kept_by_rank = [kept[:4].sum(), kept[4:].sum()]
            controller = DamaController(0.1, model_aware=True, seed=5, loss_mean=mean,
                                        gather=_Process(everything, rank, kept_by_rank))
            local = gaps[rank * 4 : (rank + 1) * 4].clone().requires_grad_(True)
            beta, keep, _ = controller.beta(local, torch.zeros(4), data_alpha=alpha_data[:4])
            controller.mean_loss(dpo_loss(local, torch.zeros(4), beta), keep).backward()
            total[rank * 4 : (rank + 1) * 4] = local.grad / 2  # DDP averages over the 2 processes
            if mean == "process":
                masks.append(keep)
                full = gaps.clone().requires_grad_(True)
                ref_loss, ref_mask, *_ = authors_step(full, torch.zeros(8), alpha_data, 0.1, 0.0,
                                                      torch.Generator().manual_seed(5), rank=rank, world=2)
                assert keep.tolist() == ref_mask[rank * 4 : (rank + 1) * 4].tolist()
                ref_loss.backward()
                torch.testing.assert_close(local.grad, full.grad[rank * 4 : (rank + 1) * 4])
        grads[mean] = total
    kept = torch.cat(masks)
    assert int(kept[:4].sum()) != int(kept[4:].sum())  # the counts differ: the two means must differ
    assert not torch.allclose(grads["process"], grads["global"])


def test_authors_recipe_is_dpo_when_every_factor_is_one():
    """policy == reference (every gap 0) at the start: alpha_M = s(0) / s(0) = 1; alpha_D = 1; nothing is
    clamped (beta 0.1 > 1e-3); with no filtering the loss and its gradient are DPO's."""
    controller = DamaController(0.1, data_aware=True, model_aware=True, filter="none")
    chosen = torch.zeros(6, requires_grad=True)
    beta, keep, diag = controller.beta(chosen, torch.zeros(6), data_alpha=torch.ones(6))
    assert diag["dama/alpha_model"].item() == 1.0
    loss = controller.mean_loss(dpo_loss(chosen, torch.zeros(6), beta), keep)
    reference = torch.zeros(6, requires_grad=True)
    expected = dpo_loss(reference, torch.zeros(6), 0.1).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(chosen.grad, reference.grad)


def test_the_running_mean_moves_after_each_batch_and_skips_take_it_back():
    """update "loss": the EMA moves inside ``beta`` (the next micro-batch sees it), a skipped batch
    restores it, a skipped optimizer step restores the value before its first batch, and evaluation
    never moves it."""
    controller = DamaController(0.1, model_aware=True)
    ones = torch.ones(4)
    controller.beta(ones, torch.zeros(4))
    assert controller.r_bar == pytest.approx(0.1)
    controller.beta(ones, torch.zeros(4), training=False)
    assert controller.r_bar == pytest.approx(0.1)
    mark = controller.mark()
    controller.beta(3 * ones, torch.zeros(4))
    assert controller.r_bar == pytest.approx(0.39)
    controller.discard_since(mark)
    assert controller.r_bar == pytest.approx(0.1) and controller.state.step == 1
    controller.discard_pending()
    assert controller.r_bar == 0.0 and controller.state.step == 0
    controller.beta(torch.tensor([math.nan, 1.0, 1.0, 1.0]), torch.zeros(4))  # never applied: the guard names it
    assert controller.r_bar == 0.0


def test_keep_count_and_beta_clamp():
    authors, paper = RECIPES["authors"], RECIPES["paper"]
    assert [authors.keep_count(n) for n in (1, 4, 5, 10, 15, 16, 32)] == [1, 3, 4, 8, 12, 12, 25]
    assert [paper.keep_count(n) for n in (1, 4, 5, 10, 15, 16, 32)] == [1, 3, 4, 8, 11, 12, 24]
    controller = DamaController(0.1, data_aware=True)
    beta, _, diag = controller.beta(torch.zeros(2), torch.zeros(2), data_alpha=torch.tensor([1e-3, 1.0]))
    assert beta.tolist() == pytest.approx([1e-3, 0.1]) and diag["dama/beta_clamped"].tolist() == [1.0, 0.0]


def test_checkpoint_of_the_other_recipe_is_refused():
    authors = DamaController(0.1, model_aware=True)
    paper = DamaController(0.1, model_aware=True, recipe="paper")
    with pytest.raises(ValueError, match="kind 'all_gaps'.*dama_running_mean: all_gaps"):
        paper.load_state_dict(authors.state_dict())
    old = {"dama": {"r_bar": 0.5, "gamma": 0.9, "step": 3}, "dama_generator": paper.generator.get_state().tolist()}
    paper.load_state_dict(old)  # a checkpoint from before the recipes holds the paper's running mean
    assert paper.r_bar == 0.5
    with pytest.raises(ValueError, match="kept_normalised"):
        authors.load_state_dict(old)
    state = DamaState(kind="all_gaps")
    state.update(torch.tensor(2.0), float32=True)
    assert state.r_bar == pytest.approx(0.2)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=1, max_size=40),
    st.floats(-1e3, 1e3, allow_nan=False),
    st.floats(0.05, 1.0),
    st.sampled_from(["sample", "topk", "bottom", "top", "none"]),
)
def test_authors_alpha_never_nan_or_inf(gaps, running_mean, keep, filter_mode):
    gaps = torch.tensor(gaps, dtype=torch.float32)
    k = max(1, int(keep * gaps.numel()))
    alpha, mask = dama_model_alpha_authors(gaps, running_mean, k, filter_mode, torch.Generator().manual_seed(0))
    assert torch.isfinite(alpha) and alpha >= 0  # e.g. s(-105) / s(0) underflows float32 to 0, as theirs
    assert int(mask.sum()) == (gaps.numel() if filter_mode == "none" else k)
