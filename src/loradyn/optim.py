"""LoRA+ parameter groups (arXiv 2402.12354): ``lr_b = lr_ratio * lr_a``, as plain torch param groups.

On a PEFT model the groups give every parameter exactly the learning rate (and, with
``weight_decay=0``, the weight decay) that ``peft.optimizers.create_loraplus_optimizer`` gives it
(peft 0.21.2, which contains the embedding fix of huggingface/peft#3503). The rule, in order:

1. ``embedding``: the A and B of LoRA *embedding* adapters (PEFT ``lora_embedding_A``/``_B``, loradyn
   ``LoRAEmbedding``), and any other trainable parameter held two levels below a PEFT LoRA
   Embedding layer. Learning rate ``lr_embedding`` (PEFT's default 1e-6 when None).
2. ``B`` / ``B_no_decay``: every ``lora_B`` and every trainable **1-D** parameter (biases,
   LayerNorm/RMSNorm weights, DoRA magnitudes), at ``lr * lr_ratio``. Split by transformers'
   decay-name rule as PEFT uses it: no decay when ``"bias"`` is in the name or the parameter
   lives inside an ``nn.LayerNorm`` (RMSNorm is *not* exempt, as in PEFT).
3. ``A``: everything else that is trainable (``lora_A`` and ≥2-D ``modules_to_save`` weights such
   as a classifier head), at ``lr``.

``A``, ``embedding`` and ``B`` get ``weight_decay``; ``B_no_decay`` gets 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
import torch
from torch import nn

from loradyn.discover import iter_lora_layers
from loradyn.errors import LoradynError

__all__ = [
    "OPTIMIZER_NAMES",
    "create_loraplus_optimizer",
    "describe_param_groups",
    "loraplus_param_groups",
    "resolve_optimizer",
]

PEFT_LR_EMBEDDING = 1e-6  # peft's `loraplus_lr_embedding` default
# PEFT's order: groupA, embedding, groupB, groupB_no_decay
GROUP_ORDER = ("A", "embedding", "B", "B_no_decay")
_EIGHT_BIT = ("Adam8bit", "AdamW8bit", "PagedAdam8bit", "PagedAdamW8bit")
#: optimizer names accepted for ``optimizer_cls``: transformers' ``TrainingArguments.optim`` names of
#: the plain torch optimizers, and the lower-case torch class names -> (class name, fixed kwargs)
OPTIMIZER_NAMES: dict[str, tuple[str, dict[str, Any]]] = {
    "adamw_torch": ("AdamW", {}),
    "adamw_torch_fused": ("AdamW", {"fused": True}),
    "adamw": ("AdamW", {}),
    "adam": ("Adam", {}),
    "sgd": ("SGD", {}),
    "adagrad": ("Adagrad", {}),
    "rmsprop": ("RMSprop", {}),
    "adamax": ("Adamax", {}),
    "nadam": ("NAdam", {}),
    "radam": ("RAdam", {}),
    "adadelta": ("Adadelta", {}),
}
_PEFT_KWARGS = {
    "loraplus_lr_ratio": "lr_ratio",
    "loraplus_weight_decay": "weight_decay",
    "loraplus_lr_embedding": "lr_embedding",
}


def loraplus_param_groups(
    model: nn.Module,
    *,
    lr: float,
    lr_ratio: float = 16.0,
    weight_decay: float = 0.0,
    lr_embedding: float | None = None,
) -> list[dict[str, Any]]:
    """LoRA+ param groups for any ``torch.optim`` optimizer.

    Every trainable parameter lands in exactly one group; frozen ones in none. See the module
    docstring for the rule. Each group is ``{"name", "params", "param_names", "lr",
    "weight_decay"}``; ``param_names`` is torch's own key for named parameters, so it survives
    ``optimizer.state_dict()``.

    Differences from ``peft.optimizers.create_loraplus_optimizer`` (all else is identical):

    - ``weight_decay`` is honoured for groups ``A``, ``embedding`` and ``B``. PEFT reads only
      ``loraplus_weight_decay`` (default 0) and overrides a plain ``weight_decay=`` in every group,
      so with PEFT the usual ``weight_decay`` silently does nothing (axolotl#4010). With
      ``weight_decay=0`` the two agree exactly.
    - Groups carry a ``name`` and ``param_names``; empty groups are dropped (PEFT keeps them).
    - A, B and embedding tensors are found by identity through
      :func:`loradyn.discover.iter_lora_layers`, so loradyn's own ``LoRALinear``/``LoRAEmbedding``
      and any non-PEFT model work; PEFT's name rules (``"lora_B" in name``; module two levels up
      is a PEFT LoRA Embedding) are kept as well, so PEFT models group as PEFT groups them.
    - The embedding group follows the fixed semantics (huggingface/peft#3503): both
      ``lora_embedding_A`` and ``lora_embedding_B`` get ``lr_embedding``. Released peft before
      that fix left the group empty (A at ``lr``, B at ``lr * ratio``); the installed 0.21.2
      behaves like the fix.
    - Bad input (``lr <= 0``, ``lr_ratio <= 0``, a negative or non-finite value, no trainable
      parameter) raises :class:`~loradyn.errors.LoradynError` instead of failing later.

    With ``lr_ratio=1``, ``lr_embedding=lr`` and ``weight_decay=0`` the groups train bitwise
    identically to ``AdamW(params, lr=lr)`` over the same parameters: torch optimizers apply the
    same per-element math whatever the grouping (tested on CPU for AdamW's single-tensor, foreach
    and fused paths; pass the same ``foreach``/``fused`` to both). With ``weight_decay > 0`` the
    plain equivalent needs the same two-way decay split (``B_no_decay`` at 0).

    Args:
        model: a PEFT model, a model with loradyn LoRA layers, or any ``nn.Module``.
        lr: ``lr_a``, the learning rate of A (and of other ≥2-D trainable weights).
        lr_ratio: ``lr_b / lr_a`` (λ in the paper). PEFT has no default; 16 is the LoRA+ paper's
            usual choice for LLMs (PEFT's docs example).
        weight_decay: decay of groups ``A``, ``embedding``, ``B``; ``B_no_decay`` gets 0.
        lr_embedding: learning rate of LoRA embedding adapters; None means PEFT's 1e-6.

    Returns:
        Non-empty groups in the order ``A``, ``embedding``, ``B``, ``B_no_decay``.

    Raises:
        LoradynError: invalid hyperparameters, or no trainable parameter in ``model``.
    """
    lr = _check(lr, "lr", positive=True)
    lr_ratio = _check(lr_ratio, "lr_ratio", positive=True)
    weight_decay = _check(weight_decay, "weight_decay", positive=False)
    lr_emb = (
        PEFT_LR_EMBEDDING
        if lr_embedding is None
        else _check(lr_embedding, "lr_embedding", positive=False)
    )

    settings = {
        "A": (lr, weight_decay),
        "embedding": (lr_emb, weight_decay),
        "B": (lr * lr_ratio, weight_decay),
        "B_no_decay": (lr * lr_ratio, 0.0),
    }
    members: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in GROUP_ORDER}
    for name, param, group in _classify(model):
        members[group].append((name, param))
    if not any(members.values()):
        raise LoradynError(
            f"{type(model).__name__} has no trainable parameter: add LoRA adapters or set requires_grad=True"
        )
    groups = []
    for group in GROUP_ORDER:
        if not members[group]:
            continue
        g_lr, g_wd = settings[group]
        groups.append(
            {
                "name": group,
                "params": [p for _, p in members[group]],
                "param_names": [n for n, _ in members[group]],
                "lr": g_lr,
                "weight_decay": g_wd,
            }
        )
    return groups


def resolve_optimizer(
    optimizer_cls: type[torch.optim.Optimizer] | str,
) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """(class, fixed kwargs) for an optimizer class or a name from :data:`OPTIMIZER_NAMES`.

    ``"adamw_torch_fused"`` gives ``AdamW`` with ``fused=True``, as transformers does.
    """
    if isinstance(optimizer_cls, str):
        key = optimizer_cls.strip().lower()
        if key not in OPTIMIZER_NAMES:
            raise LoradynError(
                f"unknown optimizer {optimizer_cls!r}: use an Optimizer class or one of {', '.join(OPTIMIZER_NAMES)}"
            )
        name, fixed = OPTIMIZER_NAMES[key]
        return getattr(torch.optim, name), dict(fixed)
    if isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer):
        return optimizer_cls, {}
    if callable(optimizer_cls) and not isinstance(optimizer_cls, torch.optim.Optimizer):
        return optimizer_cls, {}  # a factory taking (param_groups, lr=..., **kwargs), e.g. bitsandbytes
    raise LoradynError(
        f"optimizer_cls must be an Optimizer class or one of {', '.join(OPTIMIZER_NAMES)}, "
        f"got {type(optimizer_cls).__name__}"
    )


def create_loraplus_optimizer(
    model: nn.Module,
    optimizer_cls: type[torch.optim.Optimizer] | str = torch.optim.AdamW,
    *,
    lr: float | None = None,
    lr_ratio: float = 16.0,
    weight_decay: float = 0.0,
    lr_embedding: float | None = None,
    **optimizer_kwargs: Any,
) -> torch.optim.Optimizer:
    """``optimizer_cls(loraplus_param_groups(model, ...), lr=lr, **optimizer_kwargs)``.

    Drop-in for ``peft.optimizers.create_loraplus_optimizer`` with loradyn's argument names
    (``lr_ratio``, ``weight_decay``, ``lr_embedding``); see :func:`loraplus_param_groups` for
    the grouping and every difference from PEFT. As in PEFT, for bitsandbytes 8-bit Adam variants
    the ``nn.Embedding`` weights are registered for 32-bit optimizer state.

    Args:
        model: the model to optimize.
        optimizer_cls: any ``torch.optim.Optimizer`` class taking param groups, or a name as
            ``TrainingArguments.optim`` spells the plain torch optimizers (``"adamw_torch"``,
            ``"adamw_torch_fused"`` (``fused=True``), ``"sgd"``, ``"adagrad"``, ``"rmsprop"``) or
            as torch does, in lower case (``"adamw"``, ``"adam"``, ``"nadam"``...; see
            :data:`OPTIMIZER_NAMES`).
        lr: ``lr_a`` (required).
        lr_ratio: ``lr_b / lr_a``.
        weight_decay: decay of the decay groups (0 for ``B_no_decay``).
        lr_embedding: learning rate of LoRA embedding adapters; None means PEFT's 1e-6.
        **optimizer_kwargs: passed to ``optimizer_cls`` (``betas``, ``eps``, ``foreach``, ...).

    Returns:
        The optimizer; ``describe_param_groups(optimizer)`` shows what it holds.

    Raises:
        LoradynError: an unknown optimizer name, no ``lr``, PEFT-style ``loraplus_*`` keywords,
            ``weight_decay > 0`` with an optimizer that has no weight decay, or anything
            :func:`loraplus_param_groups` rejects.
    """
    for peft_name, ours in _PEFT_KWARGS.items():
        if peft_name in optimizer_kwargs:
            raise LoradynError(f"unknown keyword {peft_name}=: loradyn calls it {ours}=")
    optimizer_cls, fixed = resolve_optimizer(optimizer_cls)
    optimizer_kwargs = {**fixed, **optimizer_kwargs}
    if lr is None:
        raise LoradynError("create_loraplus_optimizer needs lr= (the learning rate of lora_A), e.g. lr=1e-4")
    groups = loraplus_param_groups(
        model, lr=lr, lr_ratio=lr_ratio, weight_decay=weight_decay, lr_embedding=lr_embedding
    )
    optimizer = optimizer_cls(groups, lr=lr, **optimizer_kwargs)
    cls_name = type(optimizer).__name__
    if weight_decay > 0 and "weight_decay" not in optimizer.defaults:
        raise LoradynError(f"{cls_name} has no weight decay: use weight_decay=0 or an optimizer that has it")
    if cls_name in _EIGHT_BIT:
        import bitsandbytes  # noqa: PLC0415  (optional; only reachable with a bnb optimizer class)

        manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                manager.register_module_override(module, "weight", {"optim_bits": 32})
    return optimizer


def describe_param_groups(
    optimizer_or_groups: torch.optim.Optimizer | Iterable[Mapping[str, Any]],
    model: nn.Module | None = None,
    *,
    max_names: int = 3,
) -> pd.DataFrame:
    """One row per param group: what it holds and at which learning rate.

    Args:
        optimizer_or_groups: an optimizer, or a list of param-group dicts.
        model: resolves parameter names by identity; without it names come from each group's
            ``param_names`` (set by :func:`loraplus_param_groups`), else are left blank.
        max_names: how many names ``example_names`` shows.

    Returns:
        Columns ``group`` (its ``name``, else its index), ``lr``, ``weight_decay``, ``n_params``
        (tensors), ``n_elements`` and ``example_names`` (comma-joined, ``+k more`` when cut).
    """
    groups = getattr(optimizer_or_groups, "param_groups", optimizer_or_groups)
    names_by_id = {} if model is None else {id(p): n for n, p in model.named_parameters()}
    rows = []
    for i, group in enumerate(groups):
        params = group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        if model is not None:
            names = [names_by_id.get(id(p), "?") for p in params]
        else:
            names = list(group.get("param_names", []))
        shown = ", ".join(names[:max_names])
        if len(names) > max_names:
            shown += f", +{len(names) - max_names} more"
        rows.append(
            {
                "group": group.get("name", i),
                "lr": group.get("lr", float("nan")),
                "weight_decay": group.get("weight_decay", float("nan")),
                "n_params": len(params),
                "n_elements": sum(p.numel() for p in params),
                "example_names": shown,
            }
        )
    columns = ["group", "lr", "weight_decay", "n_params", "n_elements", "example_names"]
    return pd.DataFrame(rows, columns=columns)


# --- internals ------------------------------------------------------------------------------------


def _check(value: Any, name: str, *, positive: bool) -> float:
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LoradynError(f"{name} must be a finite number {bound}, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise LoradynError(f"{name} must be a finite number {bound}, got {value!r}")
    return value


def _classify(model: nn.Module) -> list[tuple[str, nn.Parameter, str]]:
    """(name, param, group) for every trainable parameter, in ``named_parameters`` order."""
    handles = list(iter_lora_layers(model))
    emb_ids = {id(t) for h in handles if h.kind == "embedding" for t in (h.lora_A, h.lora_B)}
    b_ids = {id(h.lora_B) for h in handles if h.kind == "linear"}
    peft_emb_layers = {
        id(h.module) for h in handles if h.kind == "embedding" and h.source == "peft"
    }
    out = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # PEFT's rule: the tuner layer is two levels up, above a ModuleDict/ParameterDict
        owner = ".".join(name.split(".")[:-2])
        in_peft_emb = bool(owner) and id(model.get_submodule(owner)) in peft_emb_layers
        if id(param) in emb_ids or in_peft_emb:
            group = "embedding"
        elif id(param) in b_ids or "lora_B" in name or param.ndim == 1:
            group = "B" if _decays(model, name) else "B_no_decay"
        else:
            group = "A"
        out.append((name, param, group))
    return out


def _decays(model: nn.Module, name: str) -> bool:
    """transformers' rule as PEFT applies it: ``get_parameter_names(model, [nn.LayerNorm])`` minus "bias".

    A name decays unless it contains ``"bias"`` or a module on its path (below ``model``) is an
    ``nn.LayerNorm`` (``ALL_LAYERNORM_LAYERS`` is ``[nn.LayerNorm]`` in transformers 4.x and 5.x).
    """
    if "bias" in name:
        return False
    module = model
    for part in name.split(".")[:-1]:
        module = module.get_submodule(part)
        if isinstance(module, nn.LayerNorm):
            return False
    return True
