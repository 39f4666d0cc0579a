"""Per-token log-probs against a naive log_softmax reference."""

import torch

from mmpo.logprobs import pad_response_logprobs, response_logprobs, span_sums, token_logprobs


def test_token_logprobs_match_log_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g) * 5
    ids = torch.randint(0, 11, (3, 7), generator=g)
    expected = torch.log_softmax(logits, dim=-1)[:, :-1].gather(2, ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(token_logprobs(logits, ids), expected)


def test_response_logprobs_pick_exactly_the_response_tokens():
    """Row 0: prompt of 3 tokens then 2 response tokens; row 1: prompt of 2 then 4 response tokens."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 5, generator=g)
    ids = torch.randint(0, 5, (2, 6), generator=g)
    start, length = torch.tensor([3, 2]), torch.tensor([2, 4])
    logps, mask = response_logprobs(logits, ids, start, length)
    full = torch.log_softmax(logits, dim=-1)
    assert logps.shape == (2, 4) and mask.tolist() == [[True, True, False, False], [True] * 4]
    for r in range(2):
        for j in range(int(length[r])):
            p = int(start[r]) + j
            torch.testing.assert_close(logps[r, j], full[r, p - 1, ids[r, p]])
    assert logps[0, 2:].abs().sum() == 0


def test_span_sums_against_loops():
    logps = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 0.0, 0.0]])
    spans = torch.tensor([[[0, 1], [1, 4]], [[0, 2], [0, 0]]])
    assert span_sums(logps, spans).tolist() == [[1.0, 9.0], [11.0, 0.0]]


def test_pad_response_logprobs():
    logps, mask = pad_response_logprobs([torch.tensor([1.0, 2.0]), torch.tensor([3.0])], width=3)
    assert logps.tolist() == [[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]]
    assert mask.sum().item() == 3
