"""``apply_lora``: put loradyn's LoRA layers into a model, freeze the base, and merge/unmerge them.

Target matching follows PEFT (``peft.tuners.tuners_utils.check_target_module_exists`` for a list):
a module is adapted when its qualified name equals a target or ends with ``"." + target``.
``"all-linear"`` adapts every ``nn.Linear`` and transformers ``Conv1D`` except the output layer, as
PEFT does: the module returned by ``model.get_output_embeddings()`` (e.g. ``lm_head``), or, for
models without one, a top-level ``score`` / ``classifier`` linear head.

``modules_to_save`` (PEFT's name and semantics) are whole modules that are trained and saved with
the adapter, such as the randomly initialised head of a classification model. loradyn trains them
in place (their parameters get ``requires_grad=True``; no copy of the original is kept, so
:func:`lora_disabled` leaves them as trained) and :func:`loradyn.save_adapter` writes them the way
``peft.PeftModel.from_pretrained`` loads them. LoRA targets inside them are skipped, as in PEFT.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .discover import is_lora_layer, iter_lora_layers
from .errors import LoradynError
from .init import make_generator
from .layers import LoRAEmbedding, LoRALinear, is_conv1d
from .specs import LoraSpec

__all__ = [
    "ALL_LINEAR",
    "apply_lora",
    "find_modules_to_save",
    "find_targets",
    "is_classification_model",
    "lora_disabled",
    "lora_layers",
    "lora_state_dict",
    "matches_target",
    "merge",
    "modules_to_save_names",
    "unmerge",
]

ALL_LINEAR = "all-linear"
SEQ_CLS_HEAD_NAMES = ("score", "classifier")  # PEFT's names for classification heads


def matches_target(name: str, targets: tuple[str, ...] | list[str] | set[str]) -> bool:
    """PEFT's rule for a list of targets: ``name`` equals a target or ends with ``"." + target``."""
    return name in targets or any(name.endswith(f".{t}") for t in targets)


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def _output_layer_names(model: nn.Module) -> set[str]:
    """Names of the output head that ``"all-linear"`` leaves alone (PEFT's convention)."""
    head = None
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out):
        with contextlib.suppress(Exception):
            head = get_out()
    if not isinstance(head, nn.Module):
        heads = (getattr(model, n, None) for n in SEQ_CLS_HEAD_NAMES)
        head = next((m for m in heads if isinstance(m, nn.Module) and _is_linear(m)), None)
    if head is None:
        return set()
    return {name for name, module in model.named_modules(remove_duplicate=False) if module is head}


def _parent(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name.rpartition(".")[0])


def _inside(name: str, roots: Sequence[str]) -> bool:
    return any(name == r or name.startswith(f"{r}.") for r in roots)


def is_classification_model(model: nn.Module) -> bool:
    """A ``*ForSequenceClassification`` / ``*ForTokenClassification``, or a config with ``num_labels`` and a head."""
    cls = type(model).__name__
    if cls.endswith(("ForSequenceClassification", "ForTokenClassification")):
        return True
    config = getattr(model, "config", None)
    return getattr(config, "num_labels", None) is not None and any(
        isinstance(getattr(model, n, None), nn.Module) for n in SEQ_CLS_HEAD_NAMES
    )


def find_modules_to_save(model: nn.Module, modules_to_save: Sequence[str] | None) -> list[str]:
    """Qualified names of the modules that ``modules_to_save`` selects (outermost matches, module order).

    ``None`` is the default: the ``classifier`` / ``score`` head of a classification model (PEFT's
    ``task_type="SEQ_CLS"`` rule), else nothing. Names match as ``target_modules`` do. Raises
    :class:`LoradynError` for a given name that matches no module.
    """
    default = modules_to_save is None
    wanted = tuple(SEQ_CLS_HEAD_NAMES if default and is_classification_model(model) else modules_to_save or ())
    found: list[str] = []
    hit: set[str] = set()
    for name, module in model.named_modules():
        if not name or _inside(name, found) or getattr(module, "_loradyn_layer", False):
            continue
        matched = [t for t in wanted if matches_target(name, (t,))]
        if matched:
            found.append(name)
            hit.update(matched)
    missing = [t for t in wanted if t not in hit]
    if missing and not default:
        raise LoradynError(
            f"modules_to_save {missing} matched no module: name modules of the model (e.g. 'classifier') or drop them"
        )
    inside_lora = [n for n in found if "." in n and getattr(_parent(model, n), "_loradyn_layer", False)]
    if inside_lora:
        raise LoradynError(f"modules_to_save {inside_lora[:3]} lie inside LoRA layers: name whole modules")
    return found


def find_targets(
    model: nn.Module, target_modules: tuple[str, ...], *, exclude: Sequence[str] = ()
) -> list[str]:
    """Qualified names of the modules ``target_modules`` selects, in module order.

    ``"all-linear"`` may be combined with plain names. Modules equal to or inside ``exclude``
    (the ``modules_to_save``) are skipped, as PEFT skips them. Raises :class:`LoradynError` when
    nothing matches or when a named target is not an ``nn.Linear`` / ``Conv1D`` / ``nn.Embedding``.
    """
    targets = tuple(target_modules)
    names = [t for t in targets if t.lower() != ALL_LINEAR]
    all_linear = len(names) != len(targets)
    excluded = _output_layer_names(model) if all_linear else set()
    selected: list[str] = []
    for name, module in model.named_modules():
        if not name or _inside(name, exclude):
            continue
        if names and matches_target(name, names):
            if not (_is_linear(module) or isinstance(module, nn.Embedding)):
                raise LoradynError(
                    f"target {name!r} is a {type(module).__name__}; loradyn adapts nn.Linear, transformers "
                    "Conv1D and nn.Embedding: name leaf layers in target_modules"
                )
            selected.append(name)
        elif (
            all_linear and _is_linear(module) and name not in excluded
            and not isinstance(_parent(model, name), nn.MultiheadAttention)
        ):
            selected.append(name)
    if not selected:
        leaves = sorted({
            n.rsplit(".", 1)[-1] for n, m in model.named_modules()
            if n and (_is_linear(m) or isinstance(m, nn.Embedding))
        })
        shown = ", ".join(leaves[:12]) + (", ..." if len(leaves) > 12 else "")
        saved = f" outside modules_to_save {list(exclude)}" if exclude else ""
        raise LoradynError(
            f"target_modules {list(targets)} matched no module{saved}; linear/embedding layers here are named: "
            f"{shown or '(none)'} (or use 'all-linear')"
        )
    return selected


def _features(module: nn.Module) -> tuple[int, int]:
    """(in, out) of a target layer: nn.Linear, Conv1D (weight stored (in, out)) or nn.Embedding."""
    if isinstance(module, nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    if is_conv1d(module):
        return tuple(module.weight.shape)
    return module.in_features, module.out_features


def _warn_rank_too_large(model: nn.Module, names: list[str], rank: int) -> None:
    over = [(n, min(_features(model.get_submodule(n)))) for n in names]
    over = [(n, cap) for n, cap in over if rank > cap]
    if over:
        name, cap = over[0]
        more = f" (and {len(over) - 1} more layers)" if len(over) > 1 else ""
        warnings.warn(
            f"rank {rank} exceeds min(in_features, out_features) = {cap} of {name!r}{more}: "
            f"the update B @ A has rank at most {cap} there; lower the rank",
            UserWarning,
            stacklevel=3,
        )


def _check_not_inside_mha(model: nn.Module, name: str) -> None:
    if isinstance(_parent(model, name), nn.MultiheadAttention):
        raise LoradynError(
            f"target {name!r} belongs to nn.MultiheadAttention, which reads its weights directly; "
            "loradyn cannot adapt it: drop it from target_modules"
        )


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Swap ``old`` for ``new`` at every path it occupies (shared modules stay shared)."""
    paths = [n for n, m in model.named_modules(remove_duplicate=False) if m is old and n]
    for path in paths:
        parent_name, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)


def apply_lora(
    model: nn.Module,
    spec: LoraSpec,
    *,
    generator: torch.Generator | int | None = None,
    modules_to_save: Sequence[str] | None = None,
) -> nn.Module:
    """Replace the targeted layers of ``model`` by loradyn LoRA layers, in place, and freeze the base.

    Every parameter that is neither a LoRA factor nor in a ``modules_to_save`` module gets
    ``requires_grad = False``; ``modules_to_save`` modules are trained in full (and saved by
    :func:`loradyn.save_adapter`), as in PEFT. Each adapter is
    initialised per ``spec`` (``init``, ``distribution``, ``std_a``, ``std_b``), drawing from
    ``generator`` in module order, so ``apply_lora(m, spec, generator=g)`` equals a later
    ``init_lora_(m, spec.init, generator=g, force=True)`` with the same seed. The spec is stored
    as ``model._loradyn_spec`` and the resolved ``modules_to_save`` paths as
    ``model._loradyn_modules_to_save`` for :func:`loradyn.save_adapter`. A ``UserWarning`` says when ``spec.rank`` exceeds
    ``min(in_features, out_features)`` of a target (the extra rank adds nothing there).

    Args:
        model: any ``nn.Module`` (plain torch or transformers).
        spec: the adapter to add; ``target_modules`` are matched as PEFT matches a list.
        generator: ``torch.Generator`` or int seed; ``None`` uses torch's default generator.
        modules_to_save: overrides ``spec.modules_to_save`` when given (``()`` for none). By
            default a classification model's ``classifier`` / ``score`` head is trained and saved.

    Returns:
        ``model`` itself.

    Raises:
        LoradynError: the model already holds LoRA layers, a target or a given
            ``modules_to_save`` name matches nothing, or a target is not an ``nn.Linear`` /
            ``Conv1D`` / ``nn.Embedding``.

    Example:
        >>> import torch, loradyn
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> model = loradyn.apply_lora(model, loradyn.LoraSpec(rank=2, target_modules=("0",)), generator=0)
        >>> sum(p.numel() for p in model.parameters() if p.requires_grad)  # r * (in + out)
        32
    """
    if not isinstance(spec, LoraSpec):
        raise LoradynError(f"spec must be a loradyn.LoraSpec, got {type(spec).__name__}")
    if any(is_lora_layer(m) for m in model.modules()):
        raise LoradynError(
            "model already has LoRA layers: apply_lora once per model (use init_lora_ to re-initialise)"
        )
    if modules_to_save is not None:
        modules_to_save = (modules_to_save,) if isinstance(modules_to_save, str) else tuple(modules_to_save)
    saved = find_modules_to_save(model, spec.modules_to_save if modules_to_save is None else modules_to_save)
    names = find_targets(model, spec.target_modules, exclude=saved)
    for name in names:
        _check_not_inside_mha(model, name)
    _warn_rank_too_large(model, names, spec.rank)
    gen = make_generator(generator)
    common = dict(
        rank=spec.rank, alpha=spec.alpha, rslora=spec.rslora, init=spec.init,
        distribution=spec.distribution, std_a=spec.std_a, std_b=spec.std_b, generator=gen,
    )
    for name in names:
        old = model.get_submodule(name)
        if isinstance(old, nn.Embedding):
            new: nn.Module = LoRAEmbedding(old, **common)
        else:
            new = LoRALinear(old, dropout=spec.dropout, **common)
        _replace(model, old, new)
    trained = {id(p) for layer in lora_layers(model) for p in _factors(layer)}
    trained |= {id(p) for name in saved for p in model.get_submodule(name).parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in trained)
    if modules_to_save is not None:
        spec = dataclasses.replace(spec, modules_to_save=modules_to_save)
    model._loradyn_spec = spec
    model._loradyn_modules_to_save = tuple(saved)
    return model


def modules_to_save_names(model: nn.Module) -> tuple[str, ...]:
    """Qualified names of the ``modules_to_save`` that :func:`apply_lora` (or ``load_adapter``) set up."""
    return tuple(getattr(model, "_loradyn_modules_to_save", ()))


def _factors(layer: nn.Module) -> tuple[nn.Parameter, nn.Parameter]:
    if isinstance(layer, LoRAEmbedding):
        return layer.lora_embedding_A, layer.lora_embedding_B
    return layer.lora_A.weight, layer.lora_B.weight


def lora_layers(model: nn.Module) -> Iterator[nn.Module]:
    """loradyn's own LoRA layers in ``model``, in module order."""
    for module in model.modules():
        if getattr(module, "_loradyn_layer", False):
            yield module


def _lora_modules(model: nn.Module) -> list[nn.Module]:
    seen: dict[int, nn.Module] = {}
    for h in iter_lora_layers(model):
        seen.setdefault(id(h.module), h.module)
    if not seen:
        raise LoradynError("no LoRA layers found in the model: call loradyn.apply_lora(model, spec) first")
    return list(seen.values())


def merge(model: nn.Module) -> int:
    """Merge every LoRA layer (loradyn's or PEFT's) into its base weight; returns how many changed."""
    count = 0
    for module in _lora_modules(model):
        if getattr(module, "_loradyn_layer", False):
            count += int(module.merge())
        elif not module.merged:
            module.merge()
            count += 1
    return count


def unmerge(model: nn.Module) -> int:
    """Undo :func:`merge`; returns how many layers changed (base weights equal up to rounding)."""
    count = 0
    for module in _lora_modules(model):
        if getattr(module, "_loradyn_layer", False):
            count += int(module.unmerge())
        elif module.merged:
            module.unmerge()
            count += 1
    return count


@contextlib.contextmanager
def lora_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager: loradyn layers forward the base layer only (the pretrained function)."""
    layers = list(lora_layers(model))
    previous = [layer.disabled for layer in layers]
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer, flag in zip(layers, previous):
            layer.disabled = flag


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA factors of loradyn layers, keyed as in ``model.state_dict()`` (detached, not copied)."""
    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if getattr(module, "_loradyn_layer", False):
            prefix = f"{name}." if name else ""
            a_key, b_key = (
                ("lora_embedding_A", "lora_embedding_B") if module.kind == "embedding"
                else ("lora_A.weight", "lora_B.weight")
            )
            lora_A, lora_B = _factors(module)
            out[prefix + a_key], out[prefix + b_key] = lora_A.detach(), lora_B.detach()
    return out
