"""LoRALinear / LoRAEmbedding against the naive float64 formula ``base(x) + s * x @ A.T @ B.T``.

Tolerances: float64 forward and gradients within rtol 1e-10 / atol 1e-12 (the fused ``addmm_``
only reorders float64 roundings, ~1e-16 relative); merge round trips within 1e-13 in float64 and
1e-6 in float32; bf16 autocast within 3e-2 relative to float64 (bf16 has an 8-bit mantissa).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import loradyn
from loradyn.discover import iter_lora_layers
from loradyn.errors import LoradynError
from loradyn.layers import LoRAEmbedding, LoRALinear, is_conv1d, lora_scaling

F64 = dict(rtol=1e-10, atol=1e-12)
IN, OUT, RANK = 12, 7, 3


class Conv1D(nn.Module):
    """Stand-in for transformers' Conv1D (detected by class name and (in, out) weight layout)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return out.view(x.size()[:-1] + (self.nf,))


def make_base(kind: str) -> nn.Module:
    torch.manual_seed(1)
    base = Conv1D(OUT, IN) if kind == "conv1d" else nn.Linear(IN, OUT)
    return base.double()


def base_weight_out_in(layer: LoRALinear) -> torch.Tensor:
    w = layer.base_layer.weight
    return w.T if layer.fan_in_fan_out else w


def randomize_(layer: nn.Module, seed: int = 0) -> None:
    """Give both factors non-zero values so B @ A != 0 (init makes one of them zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (p for n, p in layer.named_parameters() if "lora" in n):
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)


def reference_linear(layer: LoRALinear, x: torch.Tensor, x_drop: torch.Tensor | None = None) -> torch.Tensor:
    """Naive float64 formula with fresh leaf copies of A and B (gradients compared separately)."""
    w = base_weight_out_in(layer).detach()
    b = layer.base_layer.bias.detach()
    A, B = layer.lora_A.weight, layer.lora_B.weight
    x_drop = x if x_drop is None else x_drop
    return x @ w.T + b + layer.scaling * x_drop @ A.T @ B.T


def grads(out: torch.Tensor, g: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(out, tensors, g)


# --- forward / backward vs the naive reference ------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("rslora", [False, True])
def test_linear_matches_float64_reference_forward_and_backward(kind: str, rslora: bool) -> None:
    layer = LoRALinear(make_base(kind), rank=RANK, alpha=5.0, rslora=rslora, generator=0)
    assert layer.fan_in_fan_out == (kind == "conv1d")
    assert layer.scaling == pytest.approx(5.0 / (math.sqrt(RANK) if rslora else RANK), rel=1e-15)
    randomize_(layer)
    x = torch.randn(4, 5, IN, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 5, OUT, dtype=torch.float64)
    A, B = layer.lora_A.weight, layer.lora_B.weight
    y = layer(x)
    ref = reference_linear(layer, x)
    torch.testing.assert_close(y, ref, **F64)
    for got, want in zip(grads(y, g, x, A, B), grads(ref, g, x, A, B)):
        torch.testing.assert_close(got, want, **F64)
    assert layer.base_layer.weight.grad is None and not layer.base_layer.weight.requires_grad


def test_linear_dropout_on_adapter_input_only() -> None:
    layer = LoRALinear(make_base("linear"), rank=RANK, alpha=4.0, dropout=0.5, generator=0)
    randomize_(layer)
    x = torch.randn(6, IN, dtype=torch.float64, requires_grad=True)
    g = torch.randn(6, OUT, dtype=torch.float64)
    A, B = layer.lora_A.weight, layer.lora_B.weight
    torch.manual_seed(123)
    y = layer(x)
    torch.manual_seed(123)  # the layer draws exactly one dropout mask of x's shape
    ref = reference_linear(layer, x, F.dropout(x, 0.5, training=True))
    torch.testing.assert_close(y, ref, **F64)
    for got, want in zip(grads(y, g, x, A, B), grads(ref, g, x, A, B)):
        torch.testing.assert_close(got, want, **F64)
    layer.eval()  # eval: no dropout, and no merge either
    torch.testing.assert_close(layer(x), reference_linear(layer, x), **F64)
    assert not layer.merged


def test_embedding_matches_float64_reference() -> None:
    torch.manual_seed(2)
    base = nn.Embedding(11, 6, padding_idx=0).double()
    layer = LoRAEmbedding(base, rank=2, alpha=3.0, generator=0)
    assert layer.kind == "embedding" and layer.lora_embedding_A.shape == (2, 11)
    assert layer.lora_embedding_B.shape == (6, 2)
    randomize_(layer)
    ids = torch.tensor([[1, 4, 4, 10], [3, 0, 7, 2]])
    g = torch.randn(2, 4, 6, dtype=torch.float64)
    A, B = layer.lora_embedding_A, layer.lora_embedding_B
    y = layer(ids)
    one_hot = F.one_hot(ids, 11).double()
    ref = base.weight.detach()[ids] + layer.scaling * one_hot @ A.T @ B.T
    torch.testing.assert_close(y, ref, **F64)
    (gA, gB), (rA, rB) = grads(y, g, A, B), grads(ref, g, A, B)
    rA[:, 0] = 0.0  # padding_idx gets no gradient, as in nn.Embedding and PEFT
    torch.testing.assert_close(gA, rA, **F64)
    torch.testing.assert_close(gB, rB, **F64)


def test_hook_on_lora_A_sees_z_a_with_input_shape() -> None:
    layer = LoRALinear(make_base("linear"), rank=RANK, alpha=4.0, generator=0)
    randomize_(layer)
    seen = []
    layer.lora_A.register_forward_hook(lambda m, inp, out: seen.append(out.detach()))
    x = torch.randn(2, 5, IN, dtype=torch.float64)
    layer(x)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], x @ layer.lora_A.weight.detach().T, **F64)


# --- init -------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["A", "B"])
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_output_equals_base_at_init(scheme: str, kind: str) -> None:
    layer = LoRALinear(make_base(kind), rank=RANK, alpha=8.0, init=scheme, generator=0)
    zero, rand = (layer.lora_B.weight, layer.lora_A.weight) if scheme == "A" else (
        layer.lora_A.weight, layer.lora_B.weight)
    assert not zero.any() and rand.abs().min() > 0
    x = torch.randn(3, IN, dtype=torch.float64)
    torch.testing.assert_close(layer(x), layer.base_layer(x), rtol=0, atol=0)


def test_default_init_is_peft_like_init_a() -> None:
    layer = LoRALinear(nn.Linear(256, 4), rank=64, alpha=64, generator=0)
    A = layer.lora_A.weight
    assert not layer.lora_B.weight.any()
    assert A.abs().max() <= 1 / math.sqrt(256)  # U(±1/sqrt(in)), PEFT's kaiming_uniform(a=sqrt(5))
    assert float(A.detach().var()) == pytest.approx(1 / (3 * 256), rel=0.1)


def test_generator_makes_init_deterministic() -> None:
    a = LoRALinear(nn.Linear(IN, OUT), rank=RANK, alpha=1.0, generator=7).lora_A.weight
    b = LoRALinear(nn.Linear(IN, OUT), rank=RANK, alpha=1.0, generator=torch.Generator().manual_seed(7)).lora_A.weight
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    e = LoRAEmbedding(nn.Embedding(9, 4), rank=2, alpha=1.0, init="B", generator=7)
    assert not e.lora_embedding_A.any() and e.lora_embedding_B.any()


# --- merge / unmerge / disabled ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "conv1d", "embedding"])
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-13), (torch.float32, 1e-6)])
def test_merge_unmerge_round_trip(kind: str, dtype: torch.dtype, atol: float) -> None:
    if kind == "embedding":
        torch.manual_seed(3)
        layer = LoRAEmbedding(nn.Embedding(10, 6), rank=2, alpha=3.0, generator=0)
        x = torch.tensor([[1, 2, 9], [0, 5, 5]])
    else:
        layer = LoRALinear(make_base(kind).float(), rank=RANK, alpha=3.0, generator=0)
        x = torch.randn(2, 3, IN)
    layer.to(dtype)
    randomize_(layer)
    x = x.to(dtype) if x.is_floating_point() else x
    w0 = layer.base_layer.weight.detach().clone()
    y = layer(x).detach()
    calls = []
    if kind != "embedding":
        layer.lora_A.register_forward_hook(lambda *a: calls.append(1))
    assert layer.merge() and layer.merged and not layer.merge()  # second merge is a no-op
    torch.testing.assert_close(layer(x), y, rtol=0, atol=atol)
    assert not calls  # merged: base only, lora_A not called
    assert layer.unmerge() and not layer.merged and not layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, w0, rtol=0, atol=atol)
    torch.testing.assert_close(layer(x), y, rtol=0, atol=atol)


def test_delta_weight_layout_and_value() -> None:
    for kind in ("linear", "conv1d"):
        layer = LoRALinear(make_base(kind), rank=RANK, alpha=6.0, generator=0)
        randomize_(layer)
        delta = layer.scaling * layer.lora_B.weight @ layer.lora_A.weight
        want = delta.T if kind == "conv1d" else delta
        torch.testing.assert_close(layer.delta_weight(), want.detach(), **F64)


def test_disabled_is_base_only_and_skips_lora_A() -> None:
    layer = LoRALinear(make_base("linear"), rank=RANK, alpha=3.0, generator=0)
    randomize_(layer)
    calls = []
    layer.lora_A.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(2, IN, dtype=torch.float64)
    layer.disabled = True
    torch.testing.assert_close(layer(x), layer.base_layer(x), rtol=0, atol=0)
    assert not calls
    layer.disabled = False
    assert not torch.allclose(layer(x), layer.base_layer(x)) and calls == [1]


# --- dtypes, autograd modes, hooks on the base -------------------------------------------------
def test_bf16_autocast_close_to_float64_and_gradients_flow() -> None:
    torch.manual_seed(4)
    layer = LoRALinear(nn.Linear(64, 32), rank=8, alpha=16.0, generator=0)
    randomize_(layer)
    x = torch.randn(4, 10, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    ref = reference_linear(layer.double(), x.double()).detach()
    layer.float()
    err = (y.double() - ref).norm() / ref.norm()
    assert err < 3e-2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x).float().pow(2).mean().backward()
    assert layer.lora_A.weight.grad.dtype == torch.float32 and layer.lora_B.weight.grad.abs().sum() > 0


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.detach().double() - want.detach()).norm() / want.detach().norm())


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_mixed_dtype_without_autocast(kind: str) -> None:
    """bf16 base, float32 adapter: bf16 output; output and A/B gradients close to float64."""
    layer = LoRALinear(make_base(kind).to(torch.bfloat16), rank=RANK, alpha=2.0, generator=0, dtype=torch.float32)
    if kind == "conv1d":  # a hook forces the module call, whose output is a view: out-of-place path
        layer.base_layer.register_forward_hook(lambda *a: None)
    assert layer.lora_A.weight.dtype == torch.float32
    randomize_(layer)
    ref_layer = copy.deepcopy(layer).double()
    x = torch.randn(3, IN, dtype=torch.bfloat16)
    g = torch.randn(3, OUT, dtype=torch.float64)
    y = layer(x)
    ref = reference_linear(ref_layer, x.double())
    assert y.dtype == torch.bfloat16 and y.shape == (3, OUT)
    assert rel_err(y, ref) < 3e-2
    got = grads(y, g.to(torch.bfloat16), layer.lora_A.weight, layer.lora_B.weight)
    want = grads(ref, g, ref_layer.lora_A.weight, ref_layer.lora_B.weight)
    assert got[0].dtype == torch.float32
    for a, b in zip(got, want):
        assert rel_err(a, b) < 3e-2


def test_no_grad_and_inference_mode() -> None:
    layer = LoRALinear(make_base("linear"), rank=RANK, alpha=3.0, generator=0)
    randomize_(layer)
    x = torch.randn(2, IN, dtype=torch.float64)
    want = reference_linear(layer, x).detach()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), want, **F64)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), want, **F64)


def test_base_layer_hooks_still_fire() -> None:
    layer = LoRALinear(make_base("linear"), rank=RANK, alpha=3.0, generator=0)
    randomize_(layer)
    seen = []
    layer.base_layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    x = torch.randn(2, 4, IN, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    torch.testing.assert_close(y, reference_linear(layer, x), **F64)
    assert seen == [torch.Size([8, OUT])]  # the base sees the flattened input
    y.sum().backward()
    assert x.grad is not None


# --- contract / errors -------------------------------------------------------------------------
def test_contract_attributes_and_discover() -> None:
    layer = LoRALinear(make_base("conv1d"), rank=RANK, alpha=3.0, dropout=0.1, generator=0)
    assert LoRALinear._loradyn_layer and LoRALinear.kind == "linear" and LoRAEmbedding.kind == "embedding"
    assert (layer.in_features, layer.out_features, layer.rank, layer.alpha) == (IN, OUT, RANK, 3.0)
    assert isinstance(layer.lora_dropout, nn.Dropout) and is_conv1d(layer.base_layer)
    (h,) = iter_lora_layers(nn.Sequential(layer))
    assert h.source == "loradyn" and h.kind == "linear" and h.a_module is layer.lora_A
    assert h.scaling == lora_scaling(RANK, 3.0) and h.fan_in_fan_out and h.is_active()
    assert loradyn.LoRALinear is LoRALinear and loradyn.LoRAEmbedding is LoRAEmbedding


@pytest.mark.parametrize(
    "kwargs",
    [dict(rank=0, alpha=1.0), dict(rank=2, alpha=-1.0), dict(rank=2, alpha=True), dict(rank=2, alpha=1.0, dropout=1.0)],
)
def test_bad_hyperparameters_raise(kwargs: dict) -> None:
    with pytest.raises(LoradynError):
        LoRALinear(nn.Linear(4, 4), **kwargs)


def test_wrong_base_type_raises() -> None:
    with pytest.raises(LoradynError, match="nn.Linear or transformers Conv1D"):
        LoRALinear(nn.Conv2d(3, 3, 1), rank=1, alpha=1.0)
    with pytest.raises(LoradynError, match="nn.Embedding"):
        LoRAEmbedding(nn.Linear(3, 3), rank=1, alpha=1.0)


def test_transformers_conv1d_detected() -> None:
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D as HFConv1D

    base = HFConv1D(OUT, IN).double()
    layer = LoRALinear(base, rank=RANK, alpha=2.0, generator=0)
    randomize_(layer)
    x = torch.randn(3, IN, dtype=torch.float64)
    assert layer.fan_in_fan_out
    torch.testing.assert_close(layer(x), reference_linear(layer, x), **F64)


# --- CPU half precision: the frozen base GEMM in oneDNN-friendly layouts ------------------------
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("mode", ["autocast-bf16", "autocast-fp16", "bf16-weights"])
@pytest.mark.parametrize("paths", ["on", "off"])
def test_half_precision_base_path_matches_float64(kind: str, mode: str, paths: str, monkeypatch) -> None:
    """Output and gradients of x, A, B within 3e-2 of float64 (bf16/fp16 rounding) with the host
    workarounds (custom base GEMM, float32 rank GEMMs) forced on and forced off; the custom base
    GEMM is used iff forced on, and it agrees with autocast's own ``F.linear`` to half-precision rounding."""
    from loradyn import layers as layers_mod

    monkeypatch.setenv("LORADYN_HALF_BASE", paths)
    monkeypatch.setenv("LORADYN_HALF_RANK", paths)
    calls = []
    real_apply = layers_mod._FrozenHalfLinear.apply
    monkeypatch.setattr(layers_mod._FrozenHalfLinear, "apply", lambda *a: calls.append(1) or real_apply(*a))
    torch.manual_seed(7)
    big_in, big_out = 96, 80
    base = Conv1D(big_out, big_in) if kind == "conv1d" else nn.Linear(big_in, big_out)
    half = torch.float16 if mode == "autocast-fp16" else torch.bfloat16
    layer = LoRALinear(base.double(), rank=4, alpha=8.0, generator=0)
    randomize_(layer)
    ref_layer = copy.deepcopy(layer)
    layer.float()
    if mode == "bf16-weights":
        layer.to(torch.bfloat16)
    x64 = torch.randn(5, 6, big_in, dtype=torch.float64, requires_grad=True)
    g64 = torch.randn(5, 6, big_out, dtype=torch.float64)
    x = x64.detach().to(torch.bfloat16 if mode == "bf16-weights" else torch.float32).requires_grad_()
    with torch.autocast("cpu", dtype=half, enabled=mode != "bf16-weights"):
        y = layer(x)
    assert bool(calls) == (paths == "on") and y.dtype == half
    got = grads(y, g64.to(y.dtype), x, layer.lora_A.weight, layer.lora_B.weight)
    ref = reference_linear(ref_layer, x64)
    want = grads(ref, g64, x64, ref_layer.lora_A.weight, ref_layer.lora_B.weight)
    assert rel_err(y, ref) < 3e-2
    assert got[0].dtype == x.dtype
    for a, b in zip(got, want):
        assert rel_err(a, b) < 3e-2
    # the plain autocast/F.linear computation of the base alone: same forward, close backward
    if kind == "linear":
        xb = x.detach().clone().requires_grad_()
        with torch.autocast("cpu", dtype=half, enabled=mode != "bf16-weights"):
            yb = layer._base_2d(xb.reshape(-1, big_in))
            yp = F.linear(xb.reshape(-1, big_in), layer.base_layer.weight, layer.base_layer.bias)
        torch.testing.assert_close(yb, yp, rtol=0, atol=0)
        gb = torch.autograd.grad(yb, xb, g64.reshape(-1, big_out).to(yb.dtype))[0]
        gp = torch.autograd.grad(yp, xb, g64.reshape(-1, big_out).to(yp.dtype))[0]
        torch.testing.assert_close(gb, gp, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("slow_nn", [True, False])
def test_half_base_path_follows_the_hosts_measurement(slow_nn: bool, monkeypatch) -> None:
    """In ``auto`` mode the custom base GEMM is used iff the (here faked) measurement found the NN
    layout slower by more than the margin; the float32 rank path likewise."""
    from loradyn import half_gemm
    from loradyn import layers as layers_mod

    monkeypatch.delenv("LORADYN_HALF_BASE", raising=False)
    monkeypatch.delenv("LORADYN_HALF_RANK", raising=False)
    monkeypatch.setattr(half_gemm, "_MEASURED", {})
    fake = {"nn": 4.0 if slow_nn else 1.0, "nt": 1.0, "rank_half": 1.0, "rank_fp32": 0.5 if slow_nn else 1.0}
    monkeypatch.setattr(half_gemm, "measure_half_gemms", lambda dtype: dict(fake))
    calls, float_mm = [], []
    real_apply, real_mm = layers_mod._FrozenHalfLinear.apply, torch.mm
    monkeypatch.setattr(layers_mod._FrozenHalfLinear, "apply", lambda *a: calls.append(1) or real_apply(*a))
    monkeypatch.setattr(torch, "mm", lambda a, b: float_mm.append(a.dtype) or real_mm(a, b))
    layer = LoRALinear(nn.Linear(16, 8), rank=2, alpha=2.0, generator=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(torch.randn(3, 16))
    assert y.dtype == torch.bfloat16
    assert bool(calls) == slow_nn
    assert float_mm == ([torch.float32] if slow_nn else [])


def test_half_path_not_used_for_trainable_base_or_float32() -> None:
    from loradyn import layers as layers_mod

    layer = LoRALinear(nn.Linear(16, 8), rank=2, alpha=2.0, generator=0)
    x = torch.randn(3, 16)
    assert layers_mod._half_compute_dtype(x, layer.base_layer.weight) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layers_mod._half_compute_dtype(x, layer.base_layer.weight) is torch.bfloat16
        assert layers_mod._half_compute_dtype(x.double(), layer.base_layer.weight) is None
        layer.base_layer.weight.requires_grad_(True)  # a trainable base keeps autograd's own path
        layer(x).float().sum().backward()
    assert layer.base_layer.weight.grad is not None


def test_autocast_input_cast_once_unless_lora_a_is_hooked() -> None:
    """Under autocast a float32 input is cast to bf16 once for the base GEMM and ``lora_A`` both;
    a forward hook on ``lora_A`` still sees the float32 input (then autocast casts per GEMM)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountCasts(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.casts = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.ops.aten._to_copy.default and args[0].numel() == 2 * 5 * 32:  # x-sized
                self.casts += kwargs.get("dtype") == torch.bfloat16
            return func(*args, **kwargs)

    layer = LoRALinear(nn.Linear(32, 24), rank=4, alpha=8.0, generator=0)
    x = torch.randn(2, 5, 32, requires_grad=True) * 1.0  # non-leaf, as inside a network
    counts, seen = [], []
    for hooked in (False, True):
        if hooked:
            layer.lora_A.register_forward_hook(lambda m, args, out: seen.append(args[0].dtype))
        with CountCasts() as mode, torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        counts.append(mode.casts)
        assert y.dtype == torch.bfloat16
    assert counts == [1, 2]
    assert seen == [torch.float32]
