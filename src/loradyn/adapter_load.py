"""Read PEFT-format LoRA adapter directories into loradyn layers: :func:`load_adapter`.

The file format (``adapter_config.json`` + ``adapter_model.safetensors``) is described in
:mod:`loradyn.adapter_io`, which also re-exports :func:`load_adapter`. Every file problem (a
missing directory, unreadable or invalid JSON, a corrupt or truncated safetensors file) is one
:class:`~loradyn.errors.LoradynError` line naming the file and the fix. Pickled weights
(``adapter_model.bin``) are refused: loradyn never unpickles.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from .discover import is_lora_layer
from .errors import LoradynError
from .inject import SEQ_CLS_HEAD_NAMES, apply_lora, lora_layers, modules_to_save_names
from .layers import lora_scaling
from .specs import LoraSpec

__all__ = ["CONFIG_NAME", "PREFIX", "WEIGHTS_NAME", "load_adapter"]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."

_SUFFIXES = {
    ".lora_A.weight": ("linear", "A"),
    ".lora_B.weight": ("linear", "B"),
    ".lora_embedding_A": ("embedding", "A"),
    ".lora_embedding_B": ("embedding", "B"),
    ".base_layer.weight": ("embedding", "base"),  # PEFT's save_embedding_layers: the full table
}


def safetensors_module():
    try:
        import safetensors.torch
    except ImportError:  # pragma: no cover - depends on the environment
        raise LoradynError(
            "saving/loading adapters needs safetensors: pip install 'loradyn[hf]'"
        ) from None
    return safetensors.torch


def file_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    return OSError, SafetensorError


def one_line(err: BaseException) -> str:
    """One line from a library exception (no newlines, no escape codes)."""
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return " ".join(text.split())[:200]


def named_lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    ids = {id(m) for m in lora_layers(model)}
    return [(n, m) for n, m in model.named_modules() if id(m) in ids]


def lora_factors(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    if layer.kind == "embedding":
        return layer.lora_embedding_A, layer.lora_embedding_B
    return layer.lora_A.weight, layer.lora_B.weight


def _read(directory: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    if directory.is_file():
        raise LoradynError(f"{directory} is a file: pass the adapter directory that holds {CONFIG_NAME}")
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file():
        raise LoradynError(f"{cfg_path} not found: point load_adapter at a PEFT/loradyn adapter directory")
    try:
        config = json.loads(cfg_path.read_text())
    except OSError as err:
        raise LoradynError(f"cannot read {cfg_path} ({one_line(err)}): check the path and its permissions") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise LoradynError(f"{cfg_path} is not valid JSON ({one_line(err)}): save the adapter again") from None
    if not isinstance(config, dict):
        raise LoradynError(f"{cfg_path} holds no JSON object: save the adapter again")
    if config.get("peft_type") != "LORA":
        raise LoradynError(f"{cfg_path} has peft_type {config.get('peft_type')!r}; only 'LORA' adapters load")
    for key, ok in (("use_dora", False), ("bias", "none")):
        if config.get(key, ok) != ok:
            raise LoradynError(f"{cfg_path} sets {key}={config[key]!r}; loradyn loads plain LoRA ({key}={ok!r})")
    weights = directory / WEIGHTS_NAME
    if not weights.exists():
        if (directory / "adapter_model.bin").is_file():
            raise LoradynError(
                f"{directory / 'adapter_model.bin'} is a pickle, which loradyn never loads: re-save the adapter "
                "as safetensors (PeftModel.save_pretrained(dir, safe_serialization=True))"
            )
        raise LoradynError(f"no {WEIGHTS_NAME} in {directory}: save the adapter there again")
    try:
        tensors = safetensors_module().load_file(str(weights))
    except file_errors() as err:
        raise LoradynError(
            f"{weights} is not a readable safetensors file ({one_line(err)}): save or download the adapter again"
        ) from None
    return config, tensors


def _is_lora_key(key: str) -> bool:
    return key.startswith(PREFIX) and any(key.endswith(s) for s in _SUFFIXES)


def _split_saved(model: nn.Module, config: dict, tensors: dict) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """(LoRA tensors, {module path: its state dict}) for the adapter's ``modules_to_save``.

    Modules are found as PEFT finds them on load: a module whose name ends with an entry of
    ``modules_to_save`` (plus ``classifier`` / ``score`` for ``SEQ_CLS`` / ``TOKEN_CLS``), keys
    ``base_model.model.<path>.<key of the module's own state dict>``.
    """
    lora = {k: t for k, t in tensors.items() if _is_lora_key(k)}
    rest = {k: t for k, t in tensors.items() if k not in lora}
    patterns = list(config.get("modules_to_save") or [])
    if config.get("task_type") in ("SEQ_CLS", "TOKEN_CLS"):
        patterns += [h for h in SEQ_CLS_HEAD_NAMES if h not in patterns]
    saved: dict[str, dict[str, torch.Tensor]] = {}
    lora_paths = [n for n, _ in named_lora_layers(model)]
    for name, module in model.named_modules():
        if (not rest or not name or not any(name.endswith(p) for p in patterns)
                or any(name == r or name.startswith(f"{r}.") for r in (*saved, *lora_paths))):
            continue
        keys = {f"{PREFIX}{name}.{k}": k for k in module.state_dict()}
        present = [k for k in keys if k in rest]
        if present and len(present) < len(keys):
            absent = sorted(set(keys) - set(present))[0]
            raise LoradynError(f"adapter lacks {absent!r} of modules_to_save {name!r}: the file is incomplete")
        if present:
            saved[name] = {keys[k]: rest.pop(k) for k in present}
    if rest:
        raise LoradynError(
            f"unexpected tensor {next(iter(rest))!r} in the adapter: loradyn loads LoRA A/B factors and "
            "modules_to_save only (use the base model the adapter was trained on)"
        )
    return lora, saved


def _load_saved(model: nn.Module, saved: dict[str, dict[str, torch.Tensor]]) -> None:
    """Copy the saved modules in, make them trainable and record them as ``modules_to_save``."""
    for name, state in saved.items():
        module = model.get_submodule(name)
        own = module.state_dict()
        for key, t in state.items():
            if t.shape != own[key].shape:
                raise LoradynError(
                    f"modules_to_save {name!r}: saved {key} has shape {tuple(t.shape)}, the model "
                    f"{tuple(own[key].shape)}: use the same base model (and num_labels)"
                )
        module.load_state_dict(state, strict=True)
        module.requires_grad_(True)
    model._loradyn_modules_to_save = tuple(dict.fromkeys((*modules_to_save_names(model), *saved)))


def _pairs(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        if suffix is None or not key.startswith(PREFIX):
            raise LoradynError(
                f"unexpected tensor {key!r} in the adapter: loradyn loads LoRA A/B factors and modules_to_save only"
            )
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
    ``nn.Linear`` / ``Conv1D`` / ``nn.Embedding`` is supported (no DoRA, no bias).
    ``modules_to_save`` in the file (e.g. a trained classification head) are copied into the
    model's modules of the same path and made trainable, as PEFT does.

    Returns:
        ``model``, with the factors (and saved modules) copied in.

    Raises:
        LoradynError: a missing, unreadable or non-LoRA directory, a corrupt or pickled weights
            file, unexpected tensors, or a layer mismatch.
    """
    directory = Path(directory)
    config, tensors = _read(directory)
    tensors, saved = _split_saved(model, config, tensors)
    pairs = _pairs(tensors)
    if not pairs:
        raise LoradynError(f"{directory / WEIGHTS_NAME} holds no LoRA factors: save the adapter again")
    rslora = bool(config.get("use_rslora", False))
    if not list(lora_layers(model)):
        if any(is_lora_layer(m) for m in model.modules()):
            raise LoradynError("model holds PEFT LoRA layers: load with PeftModel.load_adapter instead")
        _inject_from(model, config, pairs, rslora, tuple(saved))
    layers = dict(named_lora_layers(model))
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
            lora_A, lora_B = lora_factors(layer)
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
        _load_saved(model, saved)
    return model


def _inject_from(model: nn.Module, config: dict, pairs: dict, rslora: bool, saved: tuple[str, ...]) -> None:
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
        modules_to_save=saved,
    )
    apply_lora(model, spec, generator=torch.Generator().manual_seed(0))  # leave the global RNG alone
