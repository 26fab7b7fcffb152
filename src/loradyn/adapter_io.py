"""Save loradyn adapters in PEFT's on-disk format, and load PEFT-format adapters into loradyn layers.

:func:`save_adapter` writes ``adapter_config.json`` + ``adapter_model.safetensors`` that stock
``peft.PeftModel.from_pretrained(base_model, directory)`` loads with identical outputs:

* tensor keys ``base_model.model.<path>.lora_A.weight`` / ``.lora_B.weight`` (Linear, Conv1D) and
  ``base_model.model.<path>.lora_embedding_A`` / ``_B`` (Embedding); metadata ``{"format": "pt"}``;
* ``init_lora_weights: true`` whatever loradyn init was used: PEFT re-runs its own init before it
  loads the tensors, and an unknown string there would make it raise;
* ``target_modules`` is the shortest list of name suffixes that selects exactly the adapted
  modules under PEFT's matching rule (a full-name regex when no suffix list does);
* ``modules_to_save`` (e.g. a classification head, see :func:`loradyn.apply_lora`) are listed by
  qualified name and stored as PEFT stores them: the module's own state-dict keys under
  ``base_model.model.<path>.`` (``base_model.model.classifier.weight``; PEFT's
  ``ModulesToSaveWrapper`` maps them onto ``classifier.modules_to_save.default.weight`` on load);
  ``task_type`` is ``"SEQ_CLS"`` / ``"TOKEN_CLS"`` for those model classes, else null;
* loradyn's own metadata (version and the ``LoraSpec``) goes under the extra key ``"loradyn"``.
  PEFT drops it on load with a ``UserWarning`` ("Unexpected keyword arguments ['loradyn'] ...").
  The warning is harmless; silence it with :data:`PEFT_EXTRA_KEY_WARNING` or pass
  ``metadata=False``.

File problems (an unwritable or missing path, a corrupt or truncated file) raise one
:class:`~loradyn.errors.LoradynError` line naming the file. Pickled weights (``adapter_model.bin``)
are refused, never unpickled. ``safetensors`` (the ``hf`` extra) is imported inside the functions. Loading lives in
:mod:`loradyn.adapter_load` (re-exported here).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from .adapter_load import (
    CONFIG_NAME,
    PREFIX,
    WEIGHTS_NAME,
    file_errors,
    load_adapter,
    lora_factors,
    named_lora_layers,
    one_line,
    safetensors_module,
)
from .errors import LoradynError
from .inject import matches_target, modules_to_save_names
from .specs import LoraSpec

__all__ = ["CONFIG_NAME", "PEFT_EXTRA_KEY_WARNING", "WEIGHTS_NAME", "load_adapter", "save_adapter"]

#: ``warnings.filterwarnings("ignore", message=PEFT_EXTRA_KEY_WARNING)`` silences PEFT's note about
#: the extra ``"loradyn"`` key when it loads an adapter saved by :func:`save_adapter`.
PEFT_EXTRA_KEY_WARNING = r"Unexpected keyword arguments \['loradyn'\]"

def _keys(name: str, kind: str) -> tuple[str, str]:
    if kind == "embedding":
        return f"{PREFIX}{name}.lora_embedding_A", f"{PREFIX}{name}.lora_embedding_B"
    return f"{PREFIX}{name}.lora_A.weight", f"{PREFIX}{name}.lora_B.weight"


def _peft_targets(model: nn.Module, adapted: list[str], saved: tuple[str, ...]) -> list[str] | str:
    """Shortest suffix list that PEFT's matcher maps onto exactly ``adapted`` in the base model.

    Modules in or under ``saved`` (modules_to_save) are left out: PEFT never adapts them.
    """
    inside = tuple(f"{a}." for a in (*adapted, *saved))
    base_names = [n for n, _ in model.named_modules() if n and n not in saved and not n.startswith(inside)]
    wanted = set(adapted)
    depth = max(a.count(".") + 1 for a in adapted)
    for k in range(1, depth + 1):
        suffixes = {".".join(a.split(".")[-k:]) for a in adapted}
        if {n for n in base_names if matches_target(n, suffixes)} == wanted:
            return sorted(suffixes)
    return "|".join(re.escape(a) for a in adapted)  # PEFT full-matches a string target


def _peft_saved(model: nn.Module, saved: tuple[str, ...]) -> list[str] | None:
    """``modules_to_save`` for the config: qualified names, checked against PEFT's plain ``endswith`` rule."""
    names = [n for n, _ in model.named_modules() if n]
    for name in saved:
        clash = next((n for n in names if n != name and n.endswith(name) and not n.startswith(f"{name}.")), None)
        if clash is not None:
            raise LoradynError(
                f"PEFT would also train {clash!r} for modules_to_save {name!r} (it matches by name ending): "
                "drop it from modules_to_save or rename the module"
            )
    return sorted(saved) or None


def _task_type(model: nn.Module) -> str | None:
    cls = type(model).__name__
    if cls.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    return "TOKEN_CLS" if cls.endswith("ForTokenClassification") else None


def _most_common(values: list) -> object:
    return Counter(values).most_common(1)[0][0]


def _config(model: nn.Module, layers: list[tuple[str, nn.Module]], saved, base_model_name_or_path, metadata):
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
        "task_type": _task_type(model),
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": alpha,
        "target_modules": _peft_targets(model, names, saved),
        "lora_dropout": max(dropouts) if dropouts else 0.0,
        "use_rslora": layers[0][1].rslora,
        "fan_in_fan_out": any(m.fan_in_fan_out for _, m in layers),
        "bias": "none",
        "init_lora_weights": True,  # never a loradyn scheme name: PEFT would raise on load
        "use_dora": False,
        "modules_to_save": _peft_saved(model, saved),
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

    The ``modules_to_save`` that :func:`loradyn.apply_lora` set up (by default the head of a
    classification model) are saved with the factors, so ``PeftModel.from_pretrained`` on a fresh
    base restores the trained head too.

    Returns:
        The directory as a ``Path``.

    Raises:
        LoradynError: no loradyn LoRA layers, mixed rsLoRA settings, or a directory that cannot
            be written.

    Example:
        >>> # peft.PeftModel.from_pretrained(fresh_base_model, save_adapter(model, "out/adapter"))
    """
    layers = named_lora_layers(model)
    if not layers:
        raise LoradynError(
            "no loradyn LoRA layers in the model: call loradyn.apply_lora first "
            "(a peft.PeftModel saves itself with model.save_pretrained)"
        )
    st = safetensors_module()
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers:
        for key, t in zip(_keys(name, layer.kind), lora_factors(layer)):
            tensors[key] = t.detach().contiguous().clone()
    saved = modules_to_save_names(model)
    for name in saved:  # PEFT's ModulesToSaveWrapper.adapter_state_dict keys: the module's own
        for key, t in model.get_submodule(name).state_dict().items():
            tensors[f"{PREFIX}{name}.{key}"] = t.detach().contiguous().clone()
    config = _config(model, layers, saved, base_model_name_or_path, metadata)
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
        st.save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
        (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    except file_errors() as err:
        raise LoradynError(f"cannot write the adapter to {out} ({one_line(err)}): give a writable directory") from None
    return out


