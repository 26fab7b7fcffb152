"""``loradyn tune``: the right learning rate (and init and LoRA+ ratio) without a blind grid.

A cheap proxy sweep (Optuna's sampler and pruner on top of loradyn's store), the μA / LoRA+
transfer of its optimum to the target (:mod:`loradyn.scaling`'s rules), and a short confirmation at
the target; ``DIR/recommendation.json`` holds the result (docs/schema.md).

* :mod:`~loradyn.tuning.plan` — the proxy and target, the alpha convention, widths, budget checks;
* :mod:`~loradyn.tuning.search` — the proxy search (Optuna samplers and pruners, the store as record);
* :mod:`~loradyn.tuning.transfer` — moving the optimum, each rule with its status;
* :mod:`~loradyn.tuning.confirm` — the ×1/2, ×1, ×2 confirmation and its verdict;
* :mod:`~loradyn.tuning.output`, :mod:`~loradyn.tuning.figure` — recommendation, snippet, evidence, plot;
* :mod:`~loradyn.tuning.api` — :func:`tune`; :mod:`~loradyn.tuning.cli` — ``loradyn tune``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Transfer", "TuneResult", "tune"]  # the transfer function: loradyn.tuning.transfer.transfer

_OWNERS = {"tune": "api", "TuneResult": "api", "Transfer": "transfer"}


def __getattr__(name: str) -> Any:  # lazy: ``loradyn --help`` does not import pandas through here
    if name not in _OWNERS:
        raise AttributeError(f"module 'loradyn.tuning' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_OWNERS[name]}"), name)
    globals()[name] = value
    return value
