"""loradyn's own LoRA layers: ``LoRALinear`` (nn.Linear, transformers Conv1D) and ``LoRAEmbedding``.

Both compute ``y = base(x) + scaling * B @ A x`` with PEFT's names and shapes: ``lora_A`` is
(r, in_features), ``lora_B`` is (out_features, r), ``scaling = alpha / r`` (``alpha / sqrt(r)`` with
rsLoRA, arXiv 2312.03732). Dropout acts on the adapter input only.

Forward of :class:`LoRALinear` (why it is faster than PEFT's ``result + lora_B(lora_A(x)) * scaling``):

* the base layer runs on the flattened 2-D input, so its output is a fresh (N, out) tensor that is
  not a view; the adapter product is then accumulated into it in place with one
  ``addmm_(z_a, lora_B.T, alpha=scaling)``. That fuses B's matmul, the scaling and the residual add
  (PEFT makes two extra out-sized passes forward and one backward, and keeps an extra out-sized
  tensor), and autograd's backward for ``addmm_`` computes B's gradient as ``z_a.T @ grad``, a
  much faster GEMM layout on CPU than ``nn.Linear``'s ``grad.T @ z_a``;
* the input is never copied or cast (unless the adapter dtype differs from the input dtype
  outside autocast); under autocast only the tiny ``lora_B`` and ``z_a`` are cast;
* on CPU in bfloat16/float16 (autocast or half weights), where :func:`loradyn.half_gemm.half_plan`
  measured that it pays on this host, the frozen base GEMM runs through :class:`_FrozenHalfLinear`:
  there oneDNN is fast only when the second GEMM operand is the transpose of a contiguous (N, K)
  matrix. Autograd's backward for ``F.linear`` computes ``grad @ W`` with ``W`` contiguous
  (out, in) -- the slow layout, 4-5x slower on such a CPU (benchmarks/README.md) -- so the
  backward here multiplies by a contiguous copy of ``W.T`` cast once (Conv1D: the forward does);
  likewise the rank-sized adapter GEMMs run in float32 where half precision measured slower;
* ``lora_A`` is still called as a module, so forward hooks on it see Z_A with the input's
  leading shape. ``lora_B`` is not called as a module (hook-based probes compute Z_B = B Z_A).

Merging is explicit (:meth:`LoRALinear.merge` / :meth:`~LoRALinear.unmerge`); mode switches never
merge. While ``merged`` or ``disabled`` the forward is the base layer alone and ``lora_A`` is not
called. Do not update A or B while merged: ``unmerge`` subtracts the current ``scaling * B @ A``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from .errors import LoradynError
from .half_gemm import (
    _autocast_on,
    _FrozenHalfLinear,
    _half_compute_dtype,
    _shared_half_input,
    half_plan,
)
from .init import Distribution, init_pair_, make_generator

__all__ = ["LoRAEmbedding", "LoRALinear", "is_conv1d", "lora_scaling"]


def lora_scaling(rank: int, alpha: float, rslora: bool = False) -> float:
    """``alpha / rank``, or ``alpha / sqrt(rank)`` with rsLoRA."""
    return float(alpha) / (math.sqrt(rank) if rslora else rank)


def is_conv1d(module: nn.Module) -> bool:
    """True for transformers' ``Conv1D`` (GPT-2 style, weight stored (in, out)); never imports transformers."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(weight, torch.Tensor)
        and weight.ndim == 2
        and getattr(module, "nf", weight.shape[1]) == weight.shape[1]
    )


def _check_hparams(rank: int, alpha: float, dropout: float) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise LoradynError(f"rank must be an integer >= 1, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise LoradynError(f"alpha must be a finite number > 0, got {alpha!r}")
    if not (0.0 <= dropout < 1.0):
        raise LoradynError(f"dropout must satisfy 0 <= dropout < 1, got {dropout!r}")


def _add_product(result: torch.Tensor, z_a: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> torch.Tensor:
    """``result + scaling * z_a @ lora_B.T``, in place on ``result`` when autograd allows it cheaply.

    ``result`` is (N, out), ``z_a`` (N, r), ``lora_B`` (out, r); the returned tensor has
    ``result``'s dtype. In place is skipped for views (autograd would copy the whole gradient)
    and for grad-requiring leaves.
    """
    inplace = result._base is None and not (result.is_leaf and result.requires_grad)
    if (
        result.device.type == "cpu"
        and result.dtype in (torch.float16, torch.bfloat16)
        and half_plan(result.dtype).rank
    ):
        # on CPUs without fast half kernels, GEMMs with a rank-sized dimension fall back to slow,
        # layout-erratic kernels (10-100x slower than float32); the rank-r product is cheap in float32.
        with torch.autocast("cpu", enabled=False):
            delta = torch.mm(z_a.float(), lora_B.float().T)
        return result.add_(delta, alpha=scaling) if inplace else result + (scaling * delta).to(result.dtype)
    if z_a.dtype != result.dtype:
        z_a = z_a.to(result.dtype)
    if lora_B.dtype != result.dtype:
        lora_B = lora_B.to(result.dtype)
    if inplace:
        return result.addmm_(z_a, lora_B.T, alpha=scaling)
    return torch.addmm(result, z_a, lora_B.T, alpha=scaling)


def _adapter_dtype(weight: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return dtype
    return weight.dtype if weight.is_floating_point() else torch.get_default_dtype()


def _plain_forward(module: nn.Module, kind: type | str) -> bool:
    """True when calling the functional op is equivalent to calling ``module`` (no hooks, no patching)."""
    exact = type(module) is kind if isinstance(kind, type) else type(module).__name__ == kind
    return (
        exact
        and not module._forward_hooks
        and not module._forward_pre_hooks
        and "forward" not in module.__dict__  # e.g. accelerate's device-map wrapper
    )


class _Adapter(nn.Module):
    """Shared flags and merge bookkeeping of the two LoRA layers (private)."""

    _loradyn_layer = True
    kind = "linear"

    def _setup(self, base_layer: nn.Module, rank: int, alpha: float, rslora: bool) -> None:
        self.base_layer = base_layer
        base_layer.requires_grad_(False)
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.rslora = bool(rslora)
        self.scaling = lora_scaling(rank, alpha, rslora)
        self.merged = False
        self.disabled = False

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _base_weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def _delta_layout(self, delta: torch.Tensor) -> torch.Tensor:
        """Turn ``scaling * B @ A`` (out, in) into the base weight's layout."""
        return delta

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """``scaling * B @ A`` in the base weight's layout and dtype (computed in float32 for half types)."""
        lora_A, lora_B = self._factors()
        weight = self._base_weight()
        compute = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        delta = (lora_B.to(compute) @ lora_A.to(compute)) * self.scaling
        return self._delta_layout(delta).to(weight.dtype)

    @torch.no_grad()
    def merge(self) -> bool:
        """Add ``scaling * B @ A`` into the base weight. Returns False (no-op) if already merged."""
        if self.merged:
            return False
        self._base_weight().add_(self.delta_weight())
        self.merged = True
        return True

    @torch.no_grad()
    def unmerge(self) -> bool:
        """Subtract ``scaling * B @ A`` from the base weight. Returns False (no-op) if not merged."""
        if not self.merged:
            return False
        self._base_weight().sub_(self.delta_weight())
        self.merged = False
        return True

    def extra_repr(self) -> str:
        flags = "".join((", merged" if self.merged else "", ", disabled" if self.disabled else ""))
        rs = ", rslora" if self.rslora else ""
        return f"rank={self.rank}, alpha={self.alpha:g}, scaling={self.scaling:g}{rs}{flags}"


class LoRALinear(_Adapter):
    """``y = base(x) + scaling * lora_B(lora_A(dropout(x)))`` around a frozen nn.Linear or Conv1D.

    Args:
        base_layer: ``nn.Linear`` (weight (out, in)) or transformers ``Conv1D`` (weight (in, out);
            sets ``fan_in_fan_out``). It is frozen in place and kept as ``self.base_layer``.
        rank: r >= 1.
        alpha: PEFT's ``lora_alpha``.
        rslora: scale by ``alpha / sqrt(r)`` instead of ``alpha / r``.
        dropout: dropout probability on the adapter input (``nn.Identity`` when 0).
        init: ``"A"`` (Init[A], PEFT's default: B = 0, A ~ U(±1/sqrt(in))) or ``"B"`` (A = 0, B random).
        distribution, std_a, std_b: see :func:`loradyn.init.init_pair_`.
        generator: ``torch.Generator`` or int seed for the random factor.
        dtype: adapter dtype; default the base weight's dtype.

    Shapes: input (..., in_features) -> output (..., out_features).

    Example:
        >>> layer = LoRALinear(nn.Linear(16, 8), rank=4, alpha=8, generator=0)
        >>> layer(torch.randn(2, 16)).shape
        torch.Size([2, 8])
    """

    kind = "linear"

    def __init__(
        self,
        base_layer: nn.Module,
        *,
        rank: int,
        alpha: float,
        rslora: bool = False,
        dropout: float = 0.0,
        init: str = "A",
        distribution: Distribution = "kaiming_uniform",
        std_a: float | None = None,
        std_b: float | None = None,
        generator: torch.Generator | int | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_hparams(rank, alpha, dropout)
        if is_conv1d(base_layer):
            self.fan_in_fan_out = True
            in_features, out_features = base_layer.weight.shape
        elif isinstance(base_layer, nn.Linear):
            self.fan_in_fan_out = False
            in_features, out_features = base_layer.in_features, base_layer.out_features
        else:
            raise LoradynError(
                f"LoRALinear wraps nn.Linear or transformers Conv1D, got {type(base_layer).__name__}"
            )
        self._setup(base_layer, rank, alpha, rslora)
        self.in_features, self.out_features = int(in_features), int(out_features)
        weight = base_layer.weight
        kw = {"device": weight.device, "dtype": _adapter_dtype(weight, dtype)}
        # skip_init: nn.Linear's own init would draw from the global RNG; init_pair_ fills both
        self.lora_A = skip_init(nn.Linear, self.in_features, self.rank, bias=False, **kw)
        self.lora_B = skip_init(nn.Linear, self.rank, self.out_features, bias=False, **kw)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        init_pair_(
            self.lora_A.weight, self.lora_B.weight, init, fan_in=self.in_features,
            std_a=std_a, std_b=std_b, distribution=distribution, generator=make_generator(generator),
        )

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_A.weight, self.lora_B.weight

    def _delta_layout(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.T if self.fan_in_fan_out else delta

    def _base_2d(self, x2d: torch.Tensor) -> torch.Tensor:
        """Base output for a 2-D input, as a fresh (N, out) tensor when possible."""
        base = self.base_layer
        plain = _plain_forward(base, "Conv1D" if self.fan_in_fan_out else nn.Linear)
        if plain and not (base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad)):
            half = _half_compute_dtype(x2d, base.weight)
            if half is not None and half_plan(half).base:
                return _FrozenHalfLinear.apply(x2d, base.weight, base.bias, half, self.fan_in_fan_out)
        if self.fan_in_fan_out:
            if plain:
                if base.bias is None:
                    return x2d @ base.weight
                return torch.addmm(base.bias, x2d, base.weight)
        elif plain:
            return F.linear(x2d, base.weight, base.bias)
        return base(x2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or self.disabled:
            return self.base_layer(x)
        lead = x.shape[:-1]
        if _plain_forward(self.base_layer, "Conv1D" if self.fan_in_fan_out else nn.Linear):
            x = _shared_half_input(x, self.lora_A)
        result = self._base_2d(x.reshape(-1, self.in_features))
        x_a = x
        adapter_dtype = self.lora_A.weight.dtype
        if x.dtype != adapter_dtype and not _autocast_on(x.device.type):
            x_a = x.to(adapter_dtype)  # mixed dtypes without autocast: the only input copy
        z_a = self.lora_A(self.lora_dropout(x_a))  # module call: hooks on lora_A see Z_A
        result = _add_product(result, z_a.reshape(-1, self.rank), self.lora_B.weight, self.scaling)
        return result.view(*lead, self.out_features)


class LoRAEmbedding(_Adapter):
    """``y = base(ids) + scaling * (one_hot(ids) @ A.T) @ B.T`` around a frozen nn.Embedding.

    ``lora_embedding_A`` is (r, num_embeddings) and ``lora_embedding_B`` is (embedding_dim, r), as in
    PEFT. As in PEFT there is no dropout on the (one-hot) adapter input, and a scalar ``embed_scale``
    attribute of the base layer (Gemma-style scaled embeddings) also scales the adapter output.
    Init[A] draws A with fan_in = 1 (the input is one-hot); see :func:`loradyn.init_lora_`.

    Args:
        base_layer: the ``nn.Embedding`` to adapt (frozen in place).
        rank, alpha, rslora, init, distribution, std_a, std_b, generator, dtype: as :class:`LoRALinear`.
    """

    kind = "embedding"

    def __init__(
        self,
        base_layer: nn.Embedding,
        *,
        rank: int,
        alpha: float,
        rslora: bool = False,
        init: str = "A",
        distribution: Distribution = "kaiming_uniform",
        std_a: float | None = None,
        std_b: float | None = None,
        generator: torch.Generator | int | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_hparams(rank, alpha, 0.0)
        if not isinstance(base_layer, nn.Embedding):
            raise LoradynError(f"LoRAEmbedding wraps nn.Embedding, got {type(base_layer).__name__}")
        self._setup(base_layer, rank, alpha, rslora)
        self.fan_in_fan_out = False
        self.in_features = int(base_layer.num_embeddings)
        self.out_features = int(base_layer.embedding_dim)
        weight = base_layer.weight
        kw = {"device": weight.device, "dtype": _adapter_dtype(weight, dtype)}
        self.lora_embedding_A = nn.Parameter(torch.empty(self.rank, self.in_features, **kw))
        self.lora_embedding_B = nn.Parameter(torch.empty(self.out_features, self.rank, **kw))
        init_pair_(
            self.lora_embedding_A, self.lora_embedding_B, init, fan_in=1,
            std_a=std_a, std_b=std_b, distribution=distribution, generator=make_generator(generator),
        )

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_embedding_A, self.lora_embedding_B

    def _delta_layout(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.T  # the embedding table is (num_embeddings, dim)

    def _embed_scale(self) -> torch.Tensor | float | None:
        scale = getattr(self.base_layer, "embed_scale", None)
        if scale is None or (isinstance(scale, torch.Tensor) and scale.numel() != 1):
            return None
        return scale

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        if self.merged or self.disabled:
            return base(ids)
        flat = ids.reshape(-1)
        if _plain_forward(base, nn.Embedding):
            result = F.embedding(
                flat, base.weight, base.padding_idx, base.max_norm, base.norm_type,
                base.scale_grad_by_freq, base.sparse,
            )
        else:
            result = base(flat)
        z_a = F.embedding(
            flat, self.lora_embedding_A.T, base.padding_idx, base.max_norm, base.norm_type,
            base.scale_grad_by_freq, base.sparse,
        )
        scaling = self.scaling
        embed_scale = self._embed_scale()
        if embed_scale is not None:
            scaling *= float(embed_scale)
        result = _add_product(result, z_a, self.lora_embedding_B, scaling)
        return result.view(*ids.shape, self.out_features)
