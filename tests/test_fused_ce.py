"""linear_cross_entropy against a float64 reference written out naively, and against the unfused
autocast path it replaces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from loradyn.errors import LoradynError
from loradyn.fused_ce import linear_cross_entropy

IGNORE = -100


def _naive(hidden, weight, target, reduction="mean"):
    """Per-row log-sum-exp minus the target logit, summed in plain Python loops over rows."""
    losses = []
    for i in range(hidden.shape[0]):
        t = int(target[i])
        if t == IGNORE:
            continue
        logits = [float(x) for x in (hidden[i] @ weight.T)]
        top = max(logits)
        lse = top + torch.tensor([v - top for v in logits], dtype=torch.float64).exp().sum().log().item()
        losses.append(lse - logits[t])
    total = sum(losses)
    return total / len(losses) if reduction == "mean" else total


def _data(n=13, d=6, v=11, dtype=torch.float64, seed=0, ignore=(2, 7)):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, dtype=dtype) * 2
    weight = torch.randn(v, d, generator=g, dtype=dtype)
    target = torch.randint(0, v, (n,), generator=g)
    for i in ignore:
        target[i] = IGNORE
    return hidden, weight, target


@pytest.mark.parametrize("chunk_size", [1, 4, 13, 64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_float64_loss_and_grads_match_reference(chunk_size, reduction):
    hidden, weight, target = _data()
    # reference value: naive loops; reference gradients: autograd through the unfused float64 loss
    ref = _naive(hidden, weight, target, reduction)
    h_ref, w_ref = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    F.cross_entropy(h_ref @ w_ref.T, target, ignore_index=IGNORE, reduction=reduction).backward()
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = linear_cross_entropy(h, w, target, reduction=reduction, chunk_size=chunk_size)
    assert loss.dtype == torch.float64
    assert abs(loss.item() - ref) <= 1e-12 * abs(ref)
    (3.0 * loss).backward()  # the upstream gradient is honoured
    torch.testing.assert_close(h.grad, 3.0 * h_ref.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(w.grad, 3.0 * w_ref.grad, rtol=1e-12, atol=1e-14)


def test_only_hidden_grad_when_weight_frozen():
    hidden, weight, target = _data(ignore=())
    h = hidden.clone().requires_grad_()
    linear_cross_entropy(h, weight, target).backward()
    h_ref = hidden.clone().requires_grad_()
    F.cross_entropy(h_ref @ weight.T, target).backward()
    torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-12, atol=1e-14)
    assert weight.grad is None


def test_float32_within_rounding_of_float64():
    hidden, weight, target = _data(n=40, d=16, v=300)
    ref = _naive(hidden, weight, target)
    loss = linear_cross_entropy(hidden.float(), weight.float(), target, chunk_size=7)
    assert loss.dtype == torch.float32
    assert abs(loss.item() - ref) <= 1e-5 * abs(ref)


def test_large_logits_do_not_overflow():
    hidden, weight, target = _data()
    hidden = hidden * 400  # logits in the thousands: exp would overflow without the max shift
    ref = _naive(hidden, weight, target)
    loss = linear_cross_entropy(hidden.float(), weight.float(), target)
    assert torch.isfinite(loss)
    assert abs(loss.item() - ref) <= 1e-5 * abs(ref)


def test_no_row_counts_gives_nan_like_cross_entropy():
    hidden, weight, _ = _data()
    target = torch.full((hidden.shape[0],), IGNORE)
    assert torch.isnan(linear_cross_entropy(hidden, weight, target))
    assert torch.isnan(F.cross_entropy(hidden @ weight.T, target, ignore_index=IGNORE))
    assert linear_cross_entropy(hidden, weight, target, reduction="sum").item() == 0.0


def test_bf16_autocast_matches_the_unfused_autocast_path():
    """Same dtypes as autocast's F.linear + .float() + cross_entropy: bf16 GEMMs, float32 softmax."""
    hidden, weight, target = _data(n=64, d=32, v=500, dtype=torch.float32, ignore=(0, 5, 9))
    h_ref, h = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(h_ref, weight).float(), target, ignore_index=IGNORE)
        loss = linear_cross_entropy(h, weight, target, chunk_size=16)
    ref.backward()
    loss.backward()
    assert loss.dtype == torch.float32 and h.grad.dtype == torch.float32
    assert abs(loss.item() - ref.item()) <= 1e-5 * abs(ref.item())  # same bf16 logits, sums reordered
    # gradients: both round p - onehot to bf16 before the GEMM; bf16 relative precision ~4e-3
    err = (h.grad - h_ref.grad).norm() / h_ref.grad.norm()
    assert err < 1e-2


def test_cached_half_weight_follows_in_place_updates():
    hidden, weight, target = _data(dtype=torch.float32, ignore=())
    weight = weight.clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = linear_cross_entropy(hidden, weight, target)
        with torch.no_grad():
            weight.mul_(2.0)  # bumps the version: the cached bf16 copy must not be reused
        second = linear_cross_entropy(hidden, weight, target)
        ref = F.cross_entropy(F.linear(hidden, weight).float(), target)
    assert abs(first.item() - second.item()) > 1e-3
    assert abs(second.item() - ref.item()) <= 1e-5 * abs(ref.item())


def test_no_grad_mode_returns_value_without_graph():
    hidden, weight, target = _data()
    h = hidden.clone().requires_grad_()
    with torch.no_grad():
        loss = linear_cross_entropy(h, weight, target)
    assert not loss.requires_grad
    assert abs(loss.item() - _naive(hidden, weight, target)) <= 1e-12 * loss.item()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hidden": torch.zeros(3, 4), "weight": torch.zeros(5, 6), "target": torch.zeros(3, dtype=torch.long)}, "hidden"),
        ({"hidden": torch.zeros(3, 4), "weight": torch.zeros(5, 4), "target": torch.zeros(2, dtype=torch.long)}, "target must"),
        ({"hidden": torch.zeros(3, 4), "weight": torch.zeros(5, 4), "target": torch.tensor([0, 5, 1])}, "outside"),
        ({"hidden": torch.zeros(3, 4), "weight": torch.zeros(5, 4), "target": torch.zeros(3, dtype=torch.long), "reduction": "none"}, "reduction"),
        ({"hidden": torch.zeros(3, 4), "weight": torch.zeros(5, 4), "target": torch.zeros(3, dtype=torch.long), "chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_input_one_line(kwargs, match):
    with pytest.raises(LoradynError, match=match) as info:
        linear_cross_entropy(**kwargs)
    assert "\n" not in str(info.value)
