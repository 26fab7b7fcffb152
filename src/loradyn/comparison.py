"""Methods compared at each one's own optimal learning rate: the best-vs-best table of a sweep.

A *method* is one value of the sweep's method columns — the LoRA init (``A``, ``B``, ``AB``,
``pissa``, …) and, when the sweep varies it, the LoRA+ ratio. Comparing methods at one shared
learning rate favours whichever that rate suits; here every method is read at the grid learning
rate where its seed-mean metric is best (:func:`loradyn.analysis.optimal_lr`, failed trials counted
as the worst value), with its seed spread, and the differences get three-valued verdicts
(:mod:`loradyn.verdicts`): a method beats another only by more than the seed std, with both optima
inside their grids, at least two seeds, and above chance level for accuracies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from .analysis import optimal_lr, seed_stats
from .verdicts import Verdict, noise_reason, seeds_reason, spread

__all__ = ["METHOD_COLUMNS", "best_vs_best", "chance_level", "init_verdicts", "method_rows"]

METHOD_COLUMNS = ("lora.init", "optim.lr_ratio")
CHANCE_MARGIN = 0.01  # an accuracy this close to the majority-class rate is "at chance" without a seed std


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def chance_level(df: pd.DataFrame, metric: str) -> float | None:
    """The majority-class accuracy of the metric's split (classification kinds report it)."""
    column = metric.replace("accuracy", "chance_accuracy")
    if not metric.endswith("accuracy") or column not in df:
        return None
    values = pd.to_numeric(df[column], errors="coerce").dropna()
    return float(values.mean()) if len(values) else None


def _label(key: Mapping[str, Any]) -> str:
    parts = []
    for col, value in key.items():
        if col == "lora.init":
            parts.append(f"Init[{value}]")
        elif col == "optim.lr_ratio":
            if value != 1.0:  # plain LoRA needs no mention
                parts.append(f"LoRA+ ratio {value:g}")
        else:
            parts.append(f"{col.rsplit('.', 1)[-1]}={value}")
    return ", ".join(parts) or ("plain LoRA" if "optim.lr_ratio" in key else "all")


def _reasons(row: Mapping[str, Any], curve: pd.DataFrame, lr: str, mode: str, chance: float | None,
             who: str) -> dict[str, str]:
    """Why a method's optimum cannot decide a comparison, by kind of reason."""
    reasons: dict[str, str] = {}
    if row["edge"] in ("low", "high", "none"):
        reasons["edge"] = f"{who}'s optimum on a grid edge ({row['edge']})"
    best, std = float(row["metric_opt"]), float(row["metric_opt_std"])
    if chance is not None and math.isfinite(best):
        margin = std if math.isfinite(std) else CHANCE_MARGIN
        if best - chance <= max(margin, CHANCE_MARGIN):
            reasons["chance"] = f"{who} at chance level ({best:.3g} vs majority class {chance:.3g})"
    others = curve[curve[lr] != row["lr_grid_opt"]]["mean"].to_numpy(dtype=float)
    others = others[pd.notna(others) & (abs(others) != math.inf)]
    if len(others) and math.isfinite(std) and math.isfinite(best):
        runner_up = others.max() if mode == "max" else others.min()
        if abs(best - runner_up) <= std:
            reasons["flat"] = f"{who}'s best lr beats the next within the seed std {std:.2g}"
    if row["n_seeds"] < 2:
        reasons["seeds"] = seeds_reason(int(row["n_seeds"]))
    return reasons


def method_rows(df: pd.DataFrame, *, metric: str, mode: str, methods: Sequence[str], lr: str = "optim.lr_a",
                tiebreak: str | None = None, test_metric: str | None = None) -> list[dict[str, Any]]:
    """One row per method: ``key`` (method column -> value), ``label``, ``optimal_lr`` (the grid lr
    with the best seed mean), ``best``, ``best_std``, ``n_seeds``, ``edge``, ``interior``, ``curve``
    (seed mean per lr), ``test_at_optimum``, ``chance`` and ``reasons`` (why it cannot decide)."""
    methods = list(methods)
    opt = optimal_lr(df, methods, lr=lr, metric=metric, mode=mode, refine=False,
                     tiebreak=tiebreak if tiebreak and tiebreak in df else None)
    curves = seed_stats(df, [*methods, lr], metric=metric, mode=mode)
    test = seed_stats(df, [*methods, lr], metric=test_metric, mode=mode) if test_metric and test_metric in df else None
    chance = chance_level(df, metric)
    rows = []
    for r in opt.to_dict("records"):
        key = {m: r[m] for m in methods}
        mask = pd.Series(True, index=curves.index)
        for m, v in key.items():
            mask &= curves[m] == v
        curve = curves[mask].sort_values(lr)
        row = {"key": key, "label": _label(key), "optimal_lr": float(r["lr_grid_opt"]),
               "best": _finite(r["metric_opt"]), "best_std": _finite(r["metric_opt_std"]),
               "n_seeds": int(r["n_seeds"]), "edge": r["edge"], "interior": r["edge"] in ("", "unstable"),
               "curve": {float(a): _finite(m) for a, m in zip(curve[lr], curve["mean"])}, "chance": chance,
               "reasons": _reasons(r, curve, lr, mode, chance, _label(key))}
        if test is not None:
            t = test[(test[lr] == r["lr_grid_opt"])]
            for m, v in key.items():
                t = t[t[m] == v]
            row["test_at_optimum"] = _finite(t["mean"].iloc[0]) if len(t) else None
        rows.append(row)
    return rows


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def init_verdicts(rows: Sequence[Mapping[str, Any]], metric: str, mode: str) -> list[Verdict]:
    """The two claims of arXiv 2406.08447 on the plain-LoRA methods (ratio 1, or no ratio column):
    Init[A]'s optimal lr is larger than Init[B]'s, and Init[A]'s best metric is at least as good."""
    plain = {r["key"].get("lora.init"): r for r in rows if r["key"].get("optim.lr_ratio", 1.0) == 1.0}
    if "A" not in plain or "B" not in plain:
        return []
    a, b = plain["A"], plain["B"]
    ra, rb = a["reasons"], b["reasons"]
    few = seeds_reason(min(a["n_seeds"], b["n_seeds"]))
    lr_claim = Verdict.check(
        "Init[A]'s optimal learning rate is larger than Init[B]'s",
        "optimal lr Init[A] > Init[B]",
        f"Init[A] {a['optimal_lr']:.3g}, Init[B] {b['optimal_lr']:.3g}",
        bool(a["optimal_lr"] > b["optimal_lr"]),
        [few, *(x.get(k) for k in ("edge", "chance", "flat") for x in (ra, rb))],
    )
    ma, mb = a["best"], b["best"]
    better = (ma is not None and mb is not None) and (ma >= mb if mode == "max" else ma <= mb)
    metric_claim = Verdict.check(
        f"Init[A]'s best {metric} is at least as good as Init[B]'s",
        f"best {metric} Init[A] {'>=' if mode == 'max' else '<='} Init[B]",
        f"Init[A] {_fmt(ma)}, Init[B] {_fmt(mb)} (seed means)",
        bool(better),
        [few, ra.get("chance"), rb.get("chance"),
         noise_reason(_nan(ma), _nan(mb), spread(_nan(a["best_std"]), _nan(b["best_std"])))],
    )
    return [lr_claim, metric_claim]


def best_vs_best(df: pd.DataFrame, *, metric: str, mode: str, lr: str = "optim.lr_a",
                 methods: Sequence[str] | None = None, tiebreak: str | None = None
                 ) -> tuple[pd.DataFrame, list[Verdict]]:
    """The best-vs-best table of a sweep and its verdicts.

    Args:
        df: the sweep's results (``loradyn.load_results``).
        metric, mode: the metric compared and whether higher (``max``) or lower (``min``) is better.
        lr: the learning-rate column each method is optimised over.
        methods: the method columns (default: those of :data:`METHOD_COLUMNS` the sweep varies).

    Returns:
        ``(table, verdicts)``: one row per method, best first (``rank``, the method columns,
        ``optimal_lr``, the best seed mean and its seed std, ``n_seeds``, ``edge``), and for every
        method but the winner the verdict "the winner is better, each at its own optimal lr", plus
        the papers' two Init[A] vs Init[B] claims when the sweep has both inits.
    """
    if methods is None:
        methods = [c for c in METHOD_COLUMNS if c in df and df[c].astype(str).nunique() > 1]
    if not methods or lr not in df or metric not in df:
        return pd.DataFrame(), []
    rows = method_rows(df, metric=metric, mode=mode, methods=methods, lr=lr, tiebreak=tiebreak)
    sign = -1.0 if mode == "max" else 1.0
    rows.sort(key=lambda r: sign * r["best"] if r["best"] is not None else math.inf)
    table = pd.DataFrame([{"rank": i + 1, **r["key"], "optimal_lr": r["optimal_lr"], metric: r["best"],
                           f"{metric}_std": r["best_std"], "n_seeds": r["n_seeds"], "edge": r["edge"]}
                          for i, r in enumerate(rows)])
    verdicts = []
    winner = rows[0] if rows and rows[0]["best"] is not None else None
    for other in rows[1:] if winner else []:
        w, o = winner["best"], other["best"]
        verdicts.append(Verdict.check(
            f"{winner['label']} is better than {other['label']}, each at its own optimal lr",
            f"{metric} {'higher' if mode == 'max' else 'lower'} by more than the seed std",
            f"{_fmt(w)} at lr {winner['optimal_lr']:.3g} vs {_fmt(o)} at lr {other['optimal_lr']:.3g}",
            o is None or (w > o if mode == "max" else w < o),
            [*(r["reasons"].get(k) for r in (winner, other) for k in ("edge", "chance", "seeds")),
             noise_reason(w, _nan(o), spread(_nan(winner["best_std"]), _nan(other["best_std"])))],
        ))
    if "lora.init" in methods:
        verdicts += init_verdicts(rows, metric, mode)
    return table, verdicts
