"""loradyn: LoRA finetuning that gets the learning dynamics right.

Init[A]/Init[B] (arXiv 2406.08447), LoRA+ (arXiv 2402.12354), learning-rate transfer across width
and rank (μA, arXiv 2602.06204), feature-norm probes, and resumable learning-rate sweeps.

``import loradyn`` needs only torch, numpy, pandas and pyyaml: every public name is resolved
lazily from the module that owns it, so optional extras (PEFT, transformers, Ray, matplotlib)
are imported only by the functions that need them.
"""

from __future__ import annotations

import importlib
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
    "create_loraplus_optimizer": "loradyn.optim",
    "describe_param_groups": "loradyn.optim",
    "init_lora_": "loradyn.init",
    "iter_lora_layers": "loradyn.discover",
    "load_results": "loradyn.sweep",
    "loraplus_param_groups": "loradyn.optim",
    "merge": "loradyn.inject",
    "run_sweep": "loradyn.sweep",
    "save_adapter": "loradyn.adapter_io",
    "suggest_lr": "loradyn.scaling",
    "suggest_lr_ratio": "loradyn.scaling",
    "unmerge": "loradyn.inject",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'loradyn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
