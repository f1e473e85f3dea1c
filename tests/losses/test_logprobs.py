"""Token and sequence log-probs, entropy and masked statistics against hand-worked numbers and direct formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from lightft.losses.logprobs import (
    entropy_from_logits,
    head_logprobs,
    logits_logprobs,
    masked_mean,
    masked_whiten,
    sequence_logprobs,
    token_logprobs,
)
from lightft.losses.sft import IGNORE_INDEX


def test_token_logprobs_by_hand():
    # V = 2, logits (0, log 3): p = (1/4, 3/4). Next labels 1 then 0: log(3/4) = -0.287682, log(1/4) = -1.386294.
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, math.log(3)], [5.0, 5.0]]])  # (1, 3, 2)
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])
    expected = torch.tensor([[math.log(3 / 4), math.log(1 / 4)]])
    torch.testing.assert_close(token_logprobs(logits, labels), expected)


def test_token_logprobs_matches_log_softmax_gather_and_zeroes_ignored():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    labels = torch.randint(0, 11, (3, 6))
    labels[0, :3] = IGNORE_INDEX  # a prompt
    labels[2, 4:] = IGNORE_INDEX  # padding
    out = token_logprobs(logits, labels)
    assert out.shape == (3, 5) and out.dtype == torch.float32
    for b in range(3):
        for t in range(5):
            label = labels[b, t + 1].item()
            expected = 0.0 if label == IGNORE_INDEX else F.log_softmax(logits[b, t], dim=-1)[label].item()
            assert out[b, t].item() == pytest.approx(expected, abs=1e-5)
    assert (out[0, :2] == 0).all() and (out[2, 3:] == 0).all()


def test_token_logprobs_bf16_upcasts_to_float32():
    torch.manual_seed(0)
    logits = (4 * torch.randn(2, 5, 13)).to(torch.bfloat16)
    labels = torch.randint(0, 13, (2, 5))
    out = token_logprobs(logits, labels)
    assert out.dtype == torch.float32
    # the bf16 values themselves, in float32, give the same numbers: only the input rounding differs
    torch.testing.assert_close(out, token_logprobs(logits.float(), labels))


def test_token_logprobs_gradient_is_onehot_minus_softmax():
    logits = torch.zeros(1, 2, 4, requires_grad=True)
    labels = torch.tensor([[0, 2]])
    token_logprobs(logits, labels).sum().backward()
    # d log softmax(z)_2 / dz = onehot(2) - softmax(z) = (-1/4, -1/4, 3/4, -1/4); the last position predicts nothing
    torch.testing.assert_close(logits.grad[0, 0], torch.tensor([-0.25, -0.25, 0.75, -0.25]))
    assert (logits.grad[0, 1] == 0).all()


def test_sequence_logprobs_sums_trained_tokens_only():
    logits = torch.zeros(2, 5, 4)  # uniform: each token has log p = -log 4
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1, 2, 3], [IGNORE_INDEX, 0, IGNORE_INDEX, IGNORE_INDEX, 0]])
    logps, n_tokens = sequence_logprobs(logits, labels)
    # row 0: 3 trained tokens, -3 log 4 = -4.158883; row 1: 2 trained tokens, -2 log 4 = -2.772589
    torch.testing.assert_close(logps, torch.tensor([-3 * math.log(4), -2 * math.log(4)]))
    assert n_tokens.tolist() == [3, 2] and n_tokens.dtype == torch.long
    # logits that predict ignored labels do not matter
    logits[0, 0] = torch.tensor([9.0, -9.0, 3.0, 1.0])
    logits[1, 2] = torch.tensor([9.0, -9.0, 3.0, 1.0])
    torch.testing.assert_close(sequence_logprobs(logits, labels)[0], logps)


def test_entropy_by_hand():
    # uniform over 8: log 8 = 2.079442; p = (1/4, 3/4): -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.562335
    logits = torch.zeros(1, 2, 8)
    logits[0, 1, :2] = torch.tensor([0.0, math.log(3)])
    logits[0, 1, 2:] = -float("inf")  # masked vocabulary entries contribute 0, not NaN
    expected = torch.tensor([[math.log(8), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]])
    out = entropy_from_logits(logits)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)


def test_entropy_bf16_returns_float32():
    logits = torch.zeros(2, 3, 16, dtype=torch.bfloat16)
    out = entropy_from_logits(logits)
    assert out.dtype == torch.float32 and out.shape == (2, 3)
    torch.testing.assert_close(out, torch.full((2, 3), math.log(16)))


def test_masked_mean_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, float("nan"), 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    # (1 + 2 + 4 + 6) / 4 = 3.25; the NaN is outside the mask and must not leak
    assert masked_mean(values, mask).item() == pytest.approx(3.25)
    # per row: (1 + 2) / 2 = 1.5, (4 + 6) / 2 = 5
    torch.testing.assert_close(masked_mean(values, mask.bool(), dim=1), torch.tensor([1.5, 5.0]))
    # empty mask: the denominator is clamped to 1, so the mean is 0
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0


def test_masked_whiten_by_hand():
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([True, True, True, False])
    # mean 2, biased var (1 + 0 + 1) / 3 = 2/3: (x - 2) / sqrt(2/3) = (-1.224745, 0, 1.224745); 0 outside
    s = math.sqrt(2 / 3)
    torch.testing.assert_close(masked_whiten(values, mask), torch.tensor([-1 / s, 0.0, 1 / s, 0.0]))
    # shift_mean=False adds the mean 2 back
    torch.testing.assert_close(
        masked_whiten(values, mask, shift_mean=False), torch.tensor([2 - 1 / s, 2.0, 2 + 1 / s, 0.0])
    )


def test_masked_whiten_gives_zero_mean_unit_std_over_mask():
    torch.manual_seed(0)
    values = 5 + 3 * torch.randn(4, 10)
    mask = torch.rand(4, 10) > 0.3
    out = masked_whiten(values, mask)
    kept = out[mask]
    assert kept.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert kept.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    assert (out[~mask] == 0).all()


def _head_case(seed=0, batch=3, length=9, hidden=8, vocab=37):
    torch.manual_seed(seed)
    states = torch.randn(batch, length, hidden, requires_grad=True)
    head = torch.nn.Linear(hidden, vocab, bias=False)
    labels = torch.randint(0, vocab, (batch, length))
    labels[0, :4] = IGNORE_INDEX  # a prompt
    labels[2, 6:] = IGNORE_INDEX  # padding
    return states, head, labels


@pytest.mark.parametrize("chunk_size", [1, 5, 7, 1000, 0])
def test_head_logprobs_equal_logprobs_of_full_logits_with_gradients(chunk_size):
    states, head, labels = _head_case()
    full = logits_logprobs(head(states), labels, entropy=True)
    grads_full = torch.autograd.grad(full.total(), [states, head.weight])
    chunked = head_logprobs(states, head, labels, chunk_size, entropy=True)
    grads_chunked = torch.autograd.grad(chunked.total(), [states, head.weight])
    assert int(chunked.mask.sum()) == 18  # 18 trained positions: 5 and 7 do not divide them
    torch.testing.assert_close(chunked.logps, full.logps)
    torch.testing.assert_close(chunked.entropy, full.entropy)
    assert torch.equal(chunked.mask, full.mask)
    for got, expected in zip(grads_chunked, grads_full, strict=True):
        torch.testing.assert_close(got, expected)


def test_head_logprobs_keeps_no_logits_for_backward():
    states, head, labels = _head_case(vocab=1000)
    saved = []

    def pack(tensor):
        saved.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        chunked = head_logprobs(states, head, labels, chunk_size=4)
    assert saved and all(1000 not in shape for shape in saved), saved  # only inputs: (n, H) states, ids, masks
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits_logprobs(head(states), labels)
    assert any(1000 in shape for shape in saved)  # the full path keeps (.., V) tensors
    chunked.total().backward()  # the chunks are recomputed in backward
    assert head.weight.grad is not None and states.grad is not None


def test_head_logprobs_by_hand_and_sequence_sums():
    # H = V = 2, identity head: the hidden state is the logits. Row 0 predicts 1 then 0 from (0, log 3).
    states = torch.tensor([[[0.0, math.log(3)], [0.0, math.log(3)], [5.0, 5.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])
    head = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    out = head_logprobs(states, head, labels, chunk_size=1)
    torch.testing.assert_close(out.logps, torch.tensor([[math.log(3 / 4), math.log(1 / 4)]]))
    torch.testing.assert_close(out.sequence(), torch.tensor([math.log(3 / 16)]))
    assert out.n_tokens.tolist() == [2] and out.entropy is None
