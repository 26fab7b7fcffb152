"""Reading a sweep store back as tables: one row per trial (the results schema, docs/schema.md),
and the curve and probe records; a parent folder's stores concatenated."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import LoradynError
from .spec import flatten
from .store import DB_NAME, SweepStore

__all__ = ["find_stores", "load_curves", "load_probes", "load_results", "record_table", "results_frame"]


def results_frame(store: SweepStore, trial_ids: Sequence[str] | None = None):
    """One row per trial (expansion order): ``trial_id``, config columns, ``seed``, ``status``,
    metric columns, ``error``, ``seconds``."""
    import pandas as pd

    rows = store.fetch("SELECT trial_id, config, status, metrics, error, seconds FROM trials ORDER BY idx")
    if trial_ids is not None:
        order = {tid: i for i, tid in enumerate(trial_ids)}
        rows = sorted((r for r in rows if r[0] in order), key=lambda r: order[r[0]])
    records, config_cols, metric_cols = [], {}, {}
    for tid, config, status, metrics, error, seconds in rows:
        flat = flatten(json.loads(config))
        seed = flat.pop("seed", None)
        if "optim.lr_a" in flat and "optim.lr_ratio" in flat and "optim.lr_b" not in flat:
            flat["optim.lr_b"] = _lr_b(flat["optim.lr_a"], flat["optim.lr_ratio"])
        values = json.loads(metrics) if metrics else {}
        config_cols.update(dict.fromkeys(flat))
        metric_cols.update(dict.fromkeys(values))
        records.append({"trial_id": tid, **flat, "seed": seed, "status": status, **values,
                        "error": error, "seconds": seconds})
    reserved = {"trial_id", "seed", "status", "error", "seconds"}
    columns = ["trial_id", *config_cols, "seed", "status",
               *[m for m in metric_cols if m not in reserved and m not in config_cols], "error", "seconds"]
    return pd.DataFrame.from_records(records, columns=columns)

def record_table(store: SweepStore, name: str):
    import pandas as pd

    columns = {"curves": ["trial_id", "step", "metric", "value"],
               "probes": ["trial_id", "step", "module", "feature", "stat", "value"]}[name]
    rows = store.fetch(f"SELECT {', '.join(columns)} FROM {name} ORDER BY rowid")
    return pd.DataFrame.from_records(rows, columns=columns)


def _lr_b(lr_a: Any, lr_ratio: Any) -> float | None:
    """``optim.lr_b`` as :attr:`loradyn.OptimSpec.lr_b` defines it (None where it cannot)."""
    from ..errors import SpecError
    from ..specs import OptimSpec

    try:
        return OptimSpec(lr_a=lr_a, lr_ratio=lr_ratio).lr_b
    except (SpecError, TypeError):
        return None


def find_stores(directory: str | Path) -> list[Path]:
    """Sweep directories at or below ``directory`` (itself first if it holds a store)."""
    directory = Path(directory)
    if (directory / DB_NAME).is_file():
        return [directory]
    if not directory.is_dir():
        raise LoradynError(f"{str(directory)!r} does not exist or is not a directory")
    found = sorted(p.parent for p in directory.rglob(DB_NAME))
    if not found:
        raise LoradynError(f"no sweep store in {str(directory)!r} or below (expected {DB_NAME}; run loradyn sweep first)")
    return found


def _load(directory: str | Path, what: str, with_config: bool = True):
    import pandas as pd

    frames = []
    stores = find_stores(directory)
    for sweep_dir in stores:
        store = SweepStore.open(sweep_dir)
        try:
            results = results_frame(store)
            frame = results if what == "results" else record_table(store, what)
            if what != "results" and with_config:
                keep = list(results.columns[: list(results.columns).index("seed") + 1])
                frame = frame.merge(results[keep], on="trial_id", how="left")
        finally:
            store.close()
        if len(stores) > 1 or Path(directory) != sweep_dir:
            frame.insert(0, "sweep", str(sweep_dir.relative_to(directory)) or ".")
        frames.append(frame)
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def load_results(directory: str | Path):
    """The results table of the sweep in ``directory`` (one row per trial), as a DataFrame.

    Columns: ``trial_id``, the flattened configuration (``task.width``, ``lora.init``,
    ``optim.lr_a``, ... and the derived ``optim.lr_b``), ``seed``, ``status``, the metrics,
    ``error``, ``seconds``. If ``directory`` holds no store but has sweep directories below it
    (``loradyn reproduce all``), their tables are concatenated with a leading ``sweep`` column.

    Raises:
        LoradynError: no sweep store at or below ``directory``.
    """
    return _load(directory, "results")


def load_curves(directory: str | Path, *, with_config: bool = True):
    """Curve records (``trial_id, step, metric, value``), joined with each trial's configuration."""
    return _load(directory, "curves", with_config)


def load_probes(directory: str | Path, *, with_config: bool = True):
    """Probe records (``trial_id, step, module, feature, stat, value``), joined with the configuration."""
    return _load(directory, "probes", with_config)
