"""loradyn: LoRA finetuning that gets the learning dynamics right.

Init[A]/Init[B] (arXiv 2406.08447), LoRA+ (arXiv 2402.12354), learning-rate transfer across width
and rank (μA, arXiv 2602.06204), feature-norm probes, and resumable learning-rate sweeps.

``import loradyn`` needs only torch, numpy, pandas and pyyaml: every public name is resolved
lazily from the module that owns it, and every submodule is an attribute that imports on first
use (``loradyn.hf.setup``, ``loradyn.scaling.lr_rules_table``), so optional extras (PEFT,
transformers, Ray, matplotlib) are imported only by the functions that need them.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from typing import Any

__version__ = "0.1.0"

# public name -> owning module (one module per concept)
_EXPORTS: dict[str, str] = {
    "FeatureNormProbe": "loradyn.probes",
    "InitScheme": "loradyn.init",
    "LoRAEmbedding": "loradyn.layers",
    "LoRALinear": "loradyn.layers",
    "LoraHandle": "loradyn.discover",
    "LoraSpec": "loradyn.specs",
    "LoradynError": "loradyn.errors",
    "SpecError": "loradyn.errors",
    "apply_lora": "loradyn.inject",
    "coord_check": "loradyn.coordcheck",
    "create_loraplus_optimizer": "loradyn.optim",
    "describe_param_groups": "loradyn.optim",
    "init_lora_": "loradyn.init",
    "iter_lora_layers": "loradyn.discover",
    "load_adapter": "loradyn.adapter_io",
    "load_results": "loradyn.sweep",
    "loraplus_param_groups": "loradyn.optim",
    "merge": "loradyn.inject",
    "run_sweep": "loradyn.sweep",
    "save_adapter": "loradyn.adapter_io",
    "suggest_lr": "loradyn.scaling",
    "suggest_lr_ratio": "loradyn.scaling",
    "tune": "loradyn.tuning",
    "unmerge": "loradyn.inject",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def _is_submodule(name: str) -> bool:
    if not name.isidentifier() or name.startswith("__"):
        return False
    return importlib.util.find_spec(f"{__name__}.{name}") is not None  # finds, does not import


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif _is_submodule(name):
        value = importlib.import_module(f"{__name__}.{name}")  # loradyn.hf, loradyn.scaling, ...
    else:
        raise AttributeError(f"module 'loradyn' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    submodules = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    return sorted(set(globals()) | set(_EXPORTS) | submodules)
