"""What to do with a probe's tidy table (``step, module, feature, stat, value``).

* :func:`instability_report`: which (module, feature) grew fastest and where the first non-finite
  value appeared (:meth:`loradyn.FeatureNormProbe.instability_report` calls it on its own table).
* :func:`write_table` / :func:`read_table`: the table as a CSV or Parquet file, written atomically
  (a temporary file in the same folder, then ``os.replace``), so a crash mid-write never leaves a
  half file behind (:class:`loradyn.hf.FeatureNormCallback` writes one at every Trainer save).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import LoradynError

__all__ = ["COLUMNS", "TABLE_FORMATS", "check_table_format", "instability_report", "read_table", "write_table"]

COLUMNS = ["step", "module", "feature", "stat", "value"]
TABLE_FORMATS = ("csv", "parquet")


def check_table_format(table_format: str) -> str:
    """``table_format`` if it is ``"csv"`` or a usable ``"parquet"``; a one-line error otherwise."""
    if table_format not in TABLE_FORMATS:
        raise LoradynError(f"table_format must be 'csv' or 'parquet', got {table_format!r}")
    if table_format == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise LoradynError("table_format='parquet' needs pyarrow: pip install pyarrow, or use "
                               "table_format='csv'") from None
    return table_format


def write_table(frame, path: str | os.PathLike) -> Path:
    """Write a tidy table to ``path`` (``.parquet``: Parquet, else CSV) atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_table(path: str | os.PathLike):
    """A table written by :func:`write_table`, with ``step`` int64 and ``value`` float64."""
    import pandas as pd

    path = Path(path)
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    return frame.astype({"step": "int64", "value": "float64"})


def instability_report(frame, stat: str) -> dict[str, Any]:
    """Which (module, feature) grew fastest, and where the first non-finite value appeared.

    Growth is ``last / first`` over the recorded steps of each (module, feature), both taken
    among finite positive values (so a ``z_b`` that starts at exactly 0 under Init[A] is
    measured from its first non-zero step).

    Args:
        frame: a tidy probe table (``step, module, feature, stat, value``).
        stat: which stat's rows to use.

    Returns:
        dict with ``module``, ``feature``, ``growth`` (the fastest grower; None if nothing
        was recorded), ``stat``, ``growth_by_feature`` (DataFrame, one row per feature: its fastest
        module, ``first_step``, ``first``, ``last_step``, ``last``, ``growth``) and
        ``first_nonfinite`` (dict with ``step, module, feature, stat, value``, or None).
    """
    import numpy as np
    import pandas as pd

    frame = frame[frame["stat"] == stat].sort_values("step", kind="stable")
    finite = np.isfinite(frame["value"].to_numpy())
    first_nonfinite = None
    if not finite.all():
        bad = frame[~finite].iloc[0]
        first_nonfinite = {c: bad[c] for c in COLUMNS}
        first_nonfinite["step"] = int(first_nonfinite["step"])
        first_nonfinite["value"] = float(first_nonfinite["value"])
    ok = frame[finite & (frame["value"] > 0).to_numpy()]
    growth_rows = []
    for (module, feature), g in ok.groupby(["module", "feature"], sort=False):
        first, last = g.iloc[0], g.iloc[-1]
        growth_rows.append({
            "feature": feature,
            "module": module,
            "first_step": int(first["step"]),
            "first": float(first["value"]),
            "last_step": int(last["step"]),
            "last": float(last["value"]),
            "growth": float(last["value"] / first["value"]),
        })
    cols = ["feature", "module", "first_step", "first", "last_step", "last", "growth"]
    growth = pd.DataFrame(growth_rows, columns=cols)
    if len(growth):
        growth = growth.sort_values("growth", ascending=False, kind="stable")
        top = growth.iloc[0]
        by_feature = growth.drop_duplicates("feature").reset_index(drop=True)
        fastest = {"module": top["module"], "feature": top["feature"], "growth": float(top["growth"])}
    else:
        by_feature = growth
        fastest = {"module": None, "feature": None, "growth": None}
    return {**fastest, "stat": stat, "growth_by_feature": by_feature, "first_nonfinite": first_nonfinite}
