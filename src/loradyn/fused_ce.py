"""Cross-entropy through a linear output layer without materialising the logits.

``linear_cross_entropy(hidden, weight, target)`` equals
``F.cross_entropy(hidden @ weight.T, target, ignore_index=-100)`` (logits promoted to float32 when
they are half precision, as a language model's loss does) but computes the logits ``chunk_size``
rows at a time and never keeps them: each chunk's softmax is turned into the gradient of
``hidden`` (and of ``weight`` when it trains) during the forward pass, and backward only scales it.
For a causal LM with a 49k vocabulary this replaces a (tokens × vocab) float32 logits tensor, its
float32 copy, ``log_softmax`` and its backward by two GEMMs and one pass over each cache-sized
chunk: on this CPU the loss of a SmolLM2 step falls from ≈ 1.6 s to ≈ 0.9 s
(``benchmarks/bench_causal_step.py``).

Precision follows autocast: inside ``torch.autocast(dtype=bfloat16)`` the two GEMMs run in bf16
(the weight's half-precision copy is cached while the weight is frozen and unchanged) and the
softmax in float32, exactly the dtypes of the unfused autocast path; float64 inputs stay float64.
"""

from __future__ import annotations

import weakref

import torch

from .errors import LoradynError

__all__ = ["linear_cross_entropy"]

IGNORE_INDEX = -100
# id(frozen weight) -> (weakref to it, version, data_ptr, dtype, cast copy): casting a 49k x 576
# head costs ~0.2 s on one CPU core, once per step otherwise. A few entries at most.
_CAST_CACHE: dict[int, tuple[weakref.ref, int, int, torch.dtype, torch.Tensor]] = {}


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    device = hidden.device.type
    if hidden.dtype in (torch.float32,) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return hidden.dtype


def _cast_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if weight.dtype == dtype:
        return weight.detach()
    if weight.requires_grad:
        return weight.detach().to(dtype)
    key = (weight._version, weight.data_ptr(), dtype)
    hit = _CAST_CACHE.get(id(weight))
    if hit is not None and hit[0]() is weight and hit[1:4] == key:
        return hit[4]
    for k in [k for k, v in _CAST_CACHE.items() if v[0]() is None]:
        del _CAST_CACHE[k]  # weights that are gone
    cast = weight.detach().to(dtype)
    _CAST_CACHE[id(weight)] = (weakref.ref(weight), *key, cast)
    return cast


def _chunked(hidden, weight, target, ignore_index, chunk_size, need_h, need_w):
    """Loss sum (float64), count of rows that count, and the unscaled gradients (or None)."""
    cdtype = _compute_dtype(hidden)
    sdtype = torch.float32 if cdtype in (torch.bfloat16, torch.float16) else cdtype
    with torch.autocast(hidden.device.type, enabled=False):
        w = _cast_weight(weight, cdtype)
        h = hidden.detach().to(cdtype)
        valid_all = target != ignore_index
        total = torch.zeros((), dtype=torch.float64, device=hidden.device)
        grad_h = torch.empty(h.shape, dtype=cdtype, device=h.device) if need_h else None
        grad_w = torch.zeros(w.shape, dtype=sdtype, device=w.device) if need_w else None
        rows = torch.arange(min(chunk_size, h.shape[0]), device=h.device)
        for start in range(0, h.shape[0], chunk_size):
            hc = h[start : start + chunk_size]
            valid = valid_all[start : start + chunk_size]
            safe = torch.where(valid, target[start : start + chunk_size], 0)
            logits = torch.mm(hc, w.t()).to(sdtype)  # (c, V)
            picked = logits.gather(1, safe[:, None]).squeeze(1)
            top = logits.amax(dim=1, keepdim=True)
            logits.sub_(top).exp_()
            denom = logits.sum(dim=1, keepdim=True)
            loss = top.squeeze(1) + denom.log().squeeze(1) - picked
            total += loss[valid].to(torch.float64).sum()
            if need_h or need_w:
                probs = logits.div_(denom)  # softmax; d loss_i / d logits_i = p_i - onehot(t_i)
                probs[rows[: len(safe)], safe] -= 1.0
                probs[~valid] = 0.0
                p = probs.to(cdtype)
                if need_h:
                    grad_h[start : start + chunk_size] = torch.mm(p, w)
                if need_w:
                    grad_w += torch.mm(p.t(), hc).to(sdtype)
    return total, int(valid_all.sum()), grad_h, grad_w, sdtype


def _reduce(total, count, reduction, sdtype):
    if reduction == "sum":
        return total.to(sdtype)
    return (total / count if count else torch.full((), float("nan"), dtype=torch.float64)).to(sdtype)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, target, ignore_index, chunk_size, reduction):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total, count, grad_h, grad_w, sdtype = _chunked(hidden, weight, target, ignore_index, chunk_size, need_h, need_w)
        ctx.scale = 1.0 / count if reduction == "mean" and count else 1.0
        ctx.dtypes = (hidden.dtype, weight.dtype)
        empty = torch.empty(0)
        ctx.save_for_backward(grad_h if need_h else empty, grad_w if need_w else empty)
        return _reduce(total, count, reduction, sdtype)

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        factor = grad_out * ctx.scale
        out_h = grad_h.to(h_dtype) * factor.to(h_dtype) if ctx.needs_input_grad[0] else None
        out_w = grad_w.to(w_dtype) * factor.to(w_dtype) if ctx.needs_input_grad[1] else None
        return out_h, out_w, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "mean",
    chunk_size: int = 128,
) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T, target)`` computed in row chunks, logits never stored.

    Args:
        hidden: ``(N, d)`` inputs of the output layer (e.g. a causal LM's last hidden states at
            the positions that have a label).
        weight: ``(V, d)`` output-layer weight (``lm_head.weight``; no bias).
        target: ``(N,)`` class indices; ``ignore_index`` rows count for nothing.
        reduction: ``"mean"`` over the rows that count (``nan`` when none does, like
            ``F.cross_entropy``) or ``"sum"``.
        chunk_size: rows per chunk (a chunk holds ``chunk_size × V`` float32 logits).

    Returns:
        A scalar: float32 for float32/half inputs, float64 for float64 inputs. Differentiable in
        ``hidden`` and in ``weight``.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise LoradynError(
            f"linear_cross_entropy needs hidden (N, d) and weight (V, d); got {tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    if target.shape != hidden.shape[:1]:
        raise LoradynError(f"target must have shape ({hidden.shape[0]},), got {tuple(target.shape)}")
    if reduction not in ("mean", "sum"):
        raise LoradynError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if chunk_size < 1:
        raise LoradynError(f"chunk_size must be >= 1, got {chunk_size}")
    bad = (target != ignore_index) & ((target < 0) | (target >= weight.shape[0]))
    if bool(bad.any()):
        raise LoradynError(f"target holds class indices outside [0, {weight.shape[0]}) (use {ignore_index} to ignore a row)")
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, target, ignore_index, chunk_size, reduction)
    total, count, _, _, sdtype = _chunked(hidden, weight, target, ignore_index, chunk_size, False, False)
    return _reduce(total, count, reduction, sdtype)
