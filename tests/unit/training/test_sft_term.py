"""The SFT term's three reductions (``sft_reduction``), hand-worked."""

import pytest
import torch

from mmpo.training.config import PreferenceConfig
from mmpo.training.trainer import sft_nll as sft_nll_of_sums

#: Two chosen responses: 3 tokens with log-probs -1, -2, -3 and 1 token with -4 (then padding).
LOGPS = torch.tensor([[-1.0, -2.0, -3.0, -9.0], [-4.0, -9.0, -9.0, -9.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])


def sft_nll(logps, mask, reduction):
    """The term from token log-probs, as the trainer calls it: per-response sums and token counts."""
    return sft_nll_of_sums((logps * mask).sum(dim=1), mask.sum(dim=1), reduction)


def test_token_is_trls_token_weighted_batch_mean():
    """(1 + 2 + 3 + 4) / 4 tokens = 2.5; the same as cross-entropy with mean reduction over the
    batch's response tokens, TRL's sft loss."""
    assert sft_nll(LOGPS, MASK, "token").item() == pytest.approx(2.5)
    logits = torch.tensor([[-1.0, 0.0], [-2.0, 0.0], [-3.0, 0.0], [-4.0, 0.0]])  # 4 response tokens, target 0
    as_ce = torch.nn.functional.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
    picked = torch.log_softmax(logits, dim=-1)[:, 0]  # (4,) the targets' log-probs
    rows = torch.tensor([[picked[0], picked[1], picked[2], 0.0], [picked[3], 0.0, 0.0, 0.0]])
    assert sft_nll(rows, MASK, "token").item() == pytest.approx(as_ce.item(), rel=1e-6)


def test_record_is_the_mean_of_per_response_means():
    """mean(6 / 3, 4 / 1) = 3: every record weighs the same, whatever its length."""
    assert sft_nll(LOGPS, MASK, "record").item() == pytest.approx(3.0)


def test_sum_is_rlaifv_summed_log_prob():
    """mean(6, 4) = 5: RLAIF-V's trainer subtracts the summed chosen log-prob, so the term grows with length."""
    assert sft_nll(LOGPS, MASK, "sum").item() == pytest.approx(5.0)


def test_gradients_and_bad_names():
    logps = LOGPS.clone().requires_grad_(True)
    sft_nll(logps, MASK, "token").backward()
    torch.testing.assert_close(logps.grad, -MASK.float() / 4)  # each response token weighs 1 / 4, padding 0
    with pytest.raises(ValueError, match="sft_reduction"):
        sft_nll(LOGPS, MASK, "mean")


def test_the_config_default_and_choices(tmp_path):
    assert PreferenceConfig(output_dir=str(tmp_path)).sft_reduction == "token"
    with pytest.raises(ValueError, match="sft_reduction must be token, record or sum"):
        PreferenceConfig(output_dir=str(tmp_path), sft_reduction="mean")
