"""Save loradyn adapters in PEFT's on-disk format, and load PEFT-format adapters into loradyn layers.

:func:`save_adapter` writes ``adapter_config.json`` + ``adapter_model.safetensors`` that stock
``peft.PeftModel.from_pretrained(base_model, directory)`` loads with identical outputs:

* tensor keys ``base_model.model.<path>.lora_A.weight`` / ``.lora_B.weight`` (Linear, Conv1D) and
  ``base_model.model.<path>.lora_embedding_A`` / ``_B`` (Embedding); metadata ``{"format": "pt"}``;
* ``init_lora_weights: true`` whatever loradyn init was used: PEFT re-runs its own init before it
  loads the tensors, and an unknown string there would make it raise;
* ``target_modules`` is the shortest list of name suffixes that selects exactly the adapted
  modules under PEFT's matching rule (a full-name regex when no suffix list does);
* loradyn's own metadata (version and the ``LoraSpec``) goes under the extra key ``"loradyn"``.
  PEFT drops it on load with a ``UserWarning`` ("Unexpected keyword arguments ['loradyn'] ...").
  The warning is harmless; silence it with :data:`PEFT_EXTRA_KEY_WARNING` or pass
  ``metadata=False``.

``safetensors`` (the ``hf`` extra) is imported inside the functions.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from .discover import is_lora_layer
from .errors import LoradynError
from .inject import apply_lora, lora_layers, matches_target
from .layers import lora_scaling
from .specs import LoraSpec

__all__ = ["CONFIG_NAME", "PEFT_EXTRA_KEY_WARNING", "WEIGHTS_NAME", "load_adapter", "save_adapter"]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
#: ``warnings.filterwarnings("ignore", message=PEFT_EXTRA_KEY_WARNING)`` silences PEFT's note about
#: the extra ``"loradyn"`` key when it loads an adapter saved by :func:`save_adapter`.
PEFT_EXTRA_KEY_WARNING = r"Unexpected keyword arguments \['loradyn'\]"

_SUFFIXES = {
    ".lora_A.weight": ("linear", "A"),
    ".lora_B.weight": ("linear", "B"),
    ".lora_embedding_A": ("embedding", "A"),
    ".lora_embedding_B": ("embedding", "B"),
    ".base_layer.weight": ("embedding", "base"),  # PEFT's save_embedding_layers: the full table
}


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:  # pragma: no cover - depends on the environment
        raise LoradynError(
            "saving/loading adapters needs safetensors: pip install 'loradyn[hf]'"
        ) from None
    return safetensors.torch


def _named_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    ids = {id(m) for m in lora_layers(model)}
    return [(n, m) for n, m in model.named_modules() if id(m) in ids]


def _factors(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    if layer.kind == "embedding":
        return layer.lora_embedding_A, layer.lora_embedding_B
    return layer.lora_A.weight, layer.lora_B.weight


def _keys(name: str, kind: str) -> tuple[str, str]:
    if kind == "embedding":
        return f"{PREFIX}{name}.lora_embedding_A", f"{PREFIX}{name}.lora_embedding_B"
    return f"{PREFIX}{name}.lora_A.weight", f"{PREFIX}{name}.lora_B.weight"


def _peft_targets(model: nn.Module, adapted: list[str]) -> list[str] | str:
    """Shortest suffix list that PEFT's matcher maps onto exactly ``adapted`` in the base model."""
    inside = tuple(f"{a}." for a in adapted)
    base_names = [n for n, _ in model.named_modules() if n and not n.startswith(inside)]
    wanted = set(adapted)
    depth = max(a.count(".") + 1 for a in adapted)
    for k in range(1, depth + 1):
        suffixes = {".".join(a.split(".")[-k:]) for a in adapted}
        if {n for n in base_names if matches_target(n, suffixes)} == wanted:
            return sorted(suffixes)
    return "|".join(re.escape(a) for a in adapted)  # PEFT full-matches a string target


def _most_common(values: list) -> object:
    return Counter(values).most_common(1)[0][0]


def _config(model: nn.Module, layers: list[tuple[str, nn.Module]], base_model_name_or_path, metadata):
    names = [n for n, _ in layers]
    ranks = {n: m.rank for n, m in layers}
    alphas = {n: m.alpha for n, m in layers}
    if len({m.rslora for _, m in layers}) > 1:
        raise LoradynError("PEFT needs one use_rslora for all layers: give every layer the same rslora")
    r, alpha = _most_common(list(ranks.values())), _most_common(list(alphas.values()))
    dropouts = [getattr(m.lora_dropout, "p", 0.0) for _, m in layers if m.kind == "linear"]
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": alpha,
        "target_modules": _peft_targets(model, names),
        "lora_dropout": max(dropouts) if dropouts else 0.0,
        "use_rslora": layers[0][1].rslora,
        "fan_in_fan_out": any(m.fan_in_fan_out for _, m in layers),
        "bias": "none",
        "init_lora_weights": True,  # never a loradyn scheme name: PEFT would raise on load
        "use_dora": False,
        "modules_to_save": None,
        "rank_pattern": {re.escape(n): v for n, v in ranks.items() if v != r},
        "alpha_pattern": {re.escape(n): v for n, v in alphas.items() if v != alpha},
        "inference_mode": True,
    }
    if metadata:
        from . import __version__

        spec = getattr(model, "_loradyn_spec", None)
        config["loradyn"] = {
            "version": __version__,
            "spec": spec.to_dict() if isinstance(spec, LoraSpec) else None,
        }
    return config


def save_adapter(
    model: nn.Module,
    directory: str | Path,
    *,
    base_model_name_or_path: str | None = None,
    metadata: bool = True,
) -> Path:
    """Write the model's loradyn adapters as a PEFT LoRA adapter directory.

    Args:
        model: a model prepared with :func:`loradyn.apply_lora` (the same object, i.e. the same
            module paths, that you will pass to ``PeftModel.from_pretrained``).
        directory: created if needed; ``adapter_config.json`` and ``adapter_model.safetensors``
            are (over)written.
        base_model_name_or_path: recorded in the config; default ``model.config._name_or_path``.
        metadata: also write loradyn's version and ``LoraSpec`` under the extra key ``"loradyn"``.

    Returns:
        The directory as a ``Path``.

    Raises:
        LoradynError: no loradyn LoRA layers, or mixed rsLoRA settings.

    Example:
        >>> # peft.PeftModel.from_pretrained(fresh_base_model, save_adapter(model, "out/adapter"))
    """
    layers = _named_layers(model)
    if not layers:
        raise LoradynError(
            "no loradyn LoRA layers in the model: call loradyn.apply_lora first "
            "(a peft.PeftModel saves itself with model.save_pretrained)"
        )
    st = _safetensors()
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers:
        for key, t in zip(_keys(name, layer.kind), _factors(layer)):
            tensors[key] = t.detach().contiguous().clone()
    config = _config(model, layers, base_model_name_or_path, metadata)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    st.save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


def _read(directory: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file():
        raise LoradynError(f"{cfg_path} not found: point load_adapter at a PEFT/loradyn adapter directory")
    config = json.loads(cfg_path.read_text())
    if config.get("peft_type") != "LORA":
        raise LoradynError(f"{cfg_path} has peft_type {config.get('peft_type')!r}; only 'LORA' adapters load")
    for key, ok in (("use_dora", False), ("bias", "none")):
        if config.get(key, ok) != ok:
            raise LoradynError(f"{cfg_path} sets {key}={config[key]!r}; loradyn loads plain LoRA ({key}={ok!r})")
    if config.get("modules_to_save"):
        raise LoradynError(f"{cfg_path} has modules_to_save; loradyn loads LoRA factors only")
    weights = directory / WEIGHTS_NAME
    if weights.is_file():
        tensors = _safetensors().load_file(str(weights))
    elif (directory / "adapter_model.bin").is_file():
        tensors = torch.load(directory / "adapter_model.bin", map_location="cpu", weights_only=True)
    else:
        raise LoradynError(f"no {WEIGHTS_NAME} (or adapter_model.bin) in {directory}")
    return config, tensors


def _pairs(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        if suffix is None or not key.startswith(PREFIX):
            raise LoradynError(f"unexpected tensor {key!r} in the adapter: loradyn loads LoRA A/B factors only")
        kind, which = _SUFFIXES[suffix]
        entry = pairs.setdefault(key[len(PREFIX): -len(suffix)], {})
        if which != "base":
            entry["kind"] = kind
        entry[which] = t
    for name, entry in pairs.items():
        if "A" not in entry or "B" not in entry:
            raise LoradynError(f"adapter has only one factor for {name!r}: the file is incomplete")
    return pairs


def _expected_alpha(config: dict, name: str) -> float:
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            return float(value)
    return float(config.get("lora_alpha", 8))


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load a PEFT-format LoRA adapter (from :func:`save_adapter` or ``PeftModel.save_pretrained``).

    If ``model`` has no LoRA layers yet, loradyn layers are injected first at exactly the paths in
    the file (rank and scaling from the config, base frozen); otherwise every loradyn layer must
    have a matching pair with the same shape and scaling. Only single-adapter, plain LoRA on
    ``nn.Linear`` / ``Conv1D`` / ``nn.Embedding`` is supported (no DoRA, bias, modules_to_save).

    Returns:
        ``model``, with the factors copied in.

    Raises:
        LoradynError: a missing or non-LoRA directory, unexpected tensors, or a layer mismatch.
    """
    directory = Path(directory)
    config, tensors = _read(directory)
    pairs = _pairs(tensors)
    rslora = bool(config.get("use_rslora", False))
    if not list(lora_layers(model)):
        if any(is_lora_layer(m) for m in model.modules()):
            raise LoradynError("model holds PEFT LoRA layers: load with PeftModel.load_adapter instead")
        _inject_from(model, config, pairs, rslora)
    layers = dict(_named_layers(model))
    if any(layer.merged for layer in layers.values()):
        raise LoradynError("model has merged LoRA layers: loradyn.unmerge(model) before load_adapter")
    missing = sorted(set(layers) - set(pairs))
    extra = sorted(set(pairs) - set(layers))
    if missing or extra:
        raise LoradynError(
            f"adapter and model disagree: no weights for {missing[:3]}, no layer for {extra[:3]}; "
            "apply_lora with the adapter's target_modules (or to a fresh model)"
        )
    with torch.no_grad():
        for name, layer in layers.items():
            entry = pairs[name]
            rank = int(entry["A"].shape[0])
            expected = lora_scaling(rank, _expected_alpha(config, name), rslora)
            lora_A, lora_B = _factors(layer)
            if entry["kind"] != layer.kind or entry["A"].shape != lora_A.shape or entry["B"].shape != lora_B.shape:
                raise LoradynError(
                    f"layer {name!r}: adapter shapes {tuple(entry['A'].shape)}/{tuple(entry['B'].shape)} do not "
                    f"fit {tuple(lora_A.shape)}/{tuple(lora_B.shape)}: use the same rank and base model"
                )
            if abs(layer.scaling - expected) > 1e-12 * max(1.0, abs(expected)):
                raise LoradynError(
                    f"layer {name!r} has scaling {layer.scaling:g} but the adapter expects {expected:g}: "
                    "apply_lora with the adapter's alpha, rank and rslora"
                )
            lora_A.copy_(entry["A"])
            lora_B.copy_(entry["B"])
            if "base" in entry:  # PEFT saved the whole (possibly resized) embedding table
                if entry["base"].shape != layer.base_layer.weight.shape:
                    raise LoradynError(f"layer {name!r}: saved embedding table has another shape: resize the model first")
                layer.base_layer.weight.copy_(entry["base"])
    return model


def _inject_from(model: nn.Module, config: dict, pairs: dict, rslora: bool) -> None:
    ranks = {int(e["A"].shape[0]) for e in pairs.values()}
    alphas = {_expected_alpha(config, n) for n in pairs}
    if len(ranks) > 1 or len(alphas) > 1:
        raise LoradynError(
            "adapter has per-layer ranks or alphas: build the layers yourself (apply_lora per group), then load_adapter"
        )
    meta = (config.get("loradyn") or {}).get("spec") or {}
    spec = LoraSpec(
        rank=ranks.pop(),
        alpha=alphas.pop(),
        init=meta.get("init", "A"),
        distribution=meta.get("distribution", "kaiming_uniform"),
        std_a=meta.get("std_a"),
        std_b=meta.get("std_b"),
        rslora=rslora,
        dropout=float(config.get("lora_dropout", 0.0) or 0.0),
        target_modules=tuple(pairs),  # exact paths; the factors are overwritten next
    )
    apply_lora(model, spec, generator=torch.Generator().manual_seed(0))  # leave the global RNG alone
