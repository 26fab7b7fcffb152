"""One view of "a LoRA pair" over loradyn's own layers and PEFT's LoRA layers.

:func:`iter_lora_layers` yields a :class:`LoraHandle` per (module, adapter). Init, LoRA+ grouping
and probes all go through it, so they share one definition of which tensor is A, which is B,
and what the scaling is. PEFT is never imported here: PEFT layers are recognised by their
attributes (``lora_A``/``lora_B`` ``ModuleDict``s, ``lora_embedding_A``/``_B`` ``ParameterDict``s,
``scaling`` dict), so the core works without the ``hf`` extra.

Shapes are PEFT's: ``lora_A`` is (r, in_features), ``lora_B`` is (out_features, r). For embeddings
``in_features`` is the vocabulary size and the adapter input is one-hot.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

__all__ = ["LoraHandle", "iter_lora_layers", "is_lora_layer"]

Kind = Literal["linear", "embedding"]


@dataclass(frozen=True)
class LoraHandle:
    """A LoRA pair inside a model.

    Attributes:
        name: the owning module's qualified name in the model.
        adapter: the adapter name (``"default"`` for loradyn's own layers).
        module: the LoRA layer (loradyn ``LoRALinear``/``LoRAEmbedding`` or a PEFT ``LoraLayer``).
        kind: ``"linear"`` (nn.Linear and transformers Conv1D) or ``"embedding"``.
        source: ``"loradyn"`` or ``"peft"``.
    """

    name: str
    adapter: str
    module: nn.Module
    kind: Kind
    source: Literal["loradyn", "peft"]

    # --- tensors -------------------------------------------------------------------------------
    @property
    def lora_A(self) -> nn.Parameter:
        """A, shape (r, in_features)."""
        m = self.module
        if self.kind == "embedding":
            return m.lora_embedding_A[self.adapter] if self.source == "peft" else m.lora_embedding_A
        return m.lora_A[self.adapter].weight if self.source == "peft" else m.lora_A.weight

    @property
    def lora_B(self) -> nn.Parameter:
        """B, shape (out_features, r)."""
        m = self.module
        if self.kind == "embedding":
            return m.lora_embedding_B[self.adapter] if self.source == "peft" else m.lora_embedding_B
        return m.lora_B[self.adapter].weight if self.source == "peft" else m.lora_B.weight

    @property
    def a_module(self) -> nn.Module | None:
        """The submodule whose forward output is Z_A (None for embeddings)."""
        if self.kind == "embedding":
            return None
        return self.module.lora_A[self.adapter] if self.source == "peft" else self.module.lora_A

    @property
    def magnitude(self) -> nn.Parameter | None:
        """DoRA's magnitude vector, if this adapter uses DoRA."""
        if self.source != "peft":
            return None
        use_dora = getattr(self.module, "use_dora", {})
        if not use_dora.get(self.adapter, False):
            return None
        mags = getattr(self.module, "lora_magnitude_vector", None)
        if mags is None or self.adapter not in mags:
            return None
        return mags[self.adapter].weight

    # --- shape / scaling -----------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return int(self.lora_A.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.lora_A.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.lora_B.shape[0])

    @property
    def scaling(self) -> float:
        s = self.module.scaling
        return float(s[self.adapter] if isinstance(s, dict) else s)

    @property
    def fan_in_fan_out(self) -> bool:
        """True when the base weight is stored (in, out), as in transformers' Conv1D."""
        return bool(getattr(self.module, "fan_in_fan_out", False))

    @property
    def base_layer(self) -> nn.Module:
        m = self.module
        return m.get_base_layer() if hasattr(m, "get_base_layer") else m.base_layer

    # --- state ---------------------------------------------------------------------------------
    def is_active(self) -> bool:
        """True when the adapter contributes to the forward pass unmerged (so Z_A, Z_B exist)."""
        m = self.module
        if self.source == "peft":
            if m.disable_adapters or m.merged:
                return False
            return self.adapter in m.active_adapters
        return not (m.merged or m.disabled)

    def delta_is_zero(self) -> bool:
        """True when B @ A == 0 exactly (a zero-product init, or an untouched adapter)."""
        with torch.no_grad():
            A, B = self.lora_A, self.lora_B
            if not bool(A.any()) or not bool(B.any()):
                return True
            return not bool((B.float() @ A.float()).any())

    @property
    def qualname(self) -> str:
        """``name`` for loradyn layers, ``name[adapter]`` for PEFT layers."""
        return self.name if self.source == "loradyn" else f"{self.name}[{self.adapter}]"


def _is_own(module: nn.Module) -> bool:
    return bool(getattr(module, "_loradyn_layer", False))


def _is_peft(module: nn.Module) -> bool:
    return (
        isinstance(getattr(module, "lora_A", None), nn.ModuleDict)
        and isinstance(getattr(module, "lora_B", None), nn.ModuleDict)
        and isinstance(getattr(module, "scaling", None), dict)
    )


def is_lora_layer(module: nn.Module) -> bool:
    """True for loradyn LoRA layers and PEFT LoRA layers."""
    return _is_own(module) or _is_peft(module)


def iter_lora_layers(model: nn.Module) -> Iterator[LoraHandle]:
    """Yield a :class:`LoraHandle` for every LoRA pair in ``model``, in module order.

    PEFT layers yield one handle per adapter (sorted by name), for Linear/Conv1D adapters
    (``lora_A``/``lora_B``) and Embedding adapters (``lora_embedding_A``/``_B``).
    """
    for name, module in model.named_modules():
        if _is_own(module):
            yield LoraHandle(name, "default", module, module.kind, "loradyn")
        elif _is_peft(module):
            for adapter in sorted(module.lora_A.keys()):
                if adapter in module.lora_B:
                    yield LoraHandle(name, adapter, module, "linear", "peft")
            emb_a = getattr(module, "lora_embedding_A", None)
            emb_b = getattr(module, "lora_embedding_B", None)
            if isinstance(emb_a, nn.ParameterDict) and isinstance(emb_b, nn.ParameterDict):
                for adapter in sorted(emb_a.keys()):
                    if adapter in emb_b:
                        yield LoraHandle(name, adapter, module, "embedding", "peft")
