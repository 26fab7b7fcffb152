"""The tune figure: the proxy's metric-vs-lr curves, the transferred point and the confirmation points
(matplotlib, imported lazily; ``loradyn[plot]``). Takes the evidence table and the recommendation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from ..analysis import seed_stats

__all__ = ["plot_tune"]


def plot_tune(evidence: pd.DataFrame, rec: dict[str, Any], path: str | Path) -> Path | None:
    """Write ``path`` (PNG); None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    metric, mode = rec["metric"], rec["mode"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    proxy = evidence[evidence["stage"] != "confirm"]
    full = proxy[proxy["stage"] != "rung0"]
    by = [c for c in ("lora.init", "optim.lr_ratio") if c in full.columns and full[c].nunique() > 1]
    for key, group in (full.groupby(by) if by else [((), full)]):
        key = key if isinstance(key, tuple) else (key,)
        stats = seed_stats(group, "optim.lr_a", metric=metric, mode=mode).sort_values("optim.lr_a")
        ok = stats["mean"].map(math.isfinite)
        label = ", ".join(f"{c.split('.')[-1]} {v}" for c, v in zip(by, key)) or "proxy"
        left.plot(stats["optim.lr_a"][ok], stats["mean"][ok], "o-", label=label)
        bad = stats[~ok]
        if len(bad):
            left.plot(bad["optim.lr_a"], [left.get_ylim()[1]] * len(bad), "x", color="tab:red")
    rung = proxy[proxy["stage"] == "rung0"]
    if len(rung):
        rs = seed_stats(rung, "optim.lr_a", metric=metric, mode=mode)
        rs = rs[rs["mean"].map(math.isfinite)]
        left.plot(rs["optim.lr_a"], rs["mean"], ".", color="grey", alpha=0.6,
                  label=f"rung 0 ({int(rung['train.steps'].iloc[0])} steps)")
    opt = rec["proxy"]["optimum"]
    left.axvline(opt["lr_a"], color="tab:green", ls=":", label=f"proxy optimum {opt['lr_a']:.3g}")
    for ax in (left, right):
        ax.axvline(rec["transferred_lr_a"], color="tab:purple", ls="--",
                   label=f"transferred {rec['transferred_lr_a']:.3g}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("lr_a")
        ax.set_ylabel(metric)
    conf = evidence[evidence["stage"] == "confirm"]
    if len(conf):
        cs = seed_stats(conf, "optim.lr_a", metric=metric, mode=mode).sort_values("optim.lr_a")
        ok = cs["mean"].map(math.isfinite)
        right.errorbar(cs["optim.lr_a"][ok], cs["mean"][ok], yerr=cs["std"][ok].fillna(0), fmt="s-", capsize=3,
                       color="tab:orange", label="confirmation (seed mean ± std)")
    if rec.get("lr_a") is not None:
        right.axvline(rec["lr_a"], color="tab:orange", ls="-", alpha=0.5, label=f"recommended {rec['lr_a']:.3g}")
    left.set_title(f"proxy: rank {rec['proxy'].get('rank')}")
    right.set_title(f"target: rank {rec['target'].get('rank')} — {rec['decision']}")
    for ax, part in ((left, full), (right, conf)):
        values = pd.to_numeric(part[metric], errors="coerce") if metric in part.columns else pd.Series(dtype=float)
        values = values[values.map(math.isfinite)]
        if mode == "min" and len(values) and (values > 0).all():
            ax.set_yscale("log")  # a loss: its range spans decades (not on a panel with nothing finite to show)
    for ax in (left, right):
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
