"""``loradyn.tune``: proxy search -> transfer -> confirmation -> recommendation (one call)."""

from __future__ import annotations

import datetime
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import LoradynError
from .confirm import MULTIPLIERS, Confirmation, confirm_spec, decide
from .figure import plot_tune
from .output import (
    SCHEMA_VERSION,
    compute_summary,
    evidence_table,
    peft_settings,
    snippet_text,
    write_json,
)
from .plan import TunePlan, make_plan, point_config
from .search import ProxyOutcome, require_optuna, search_proxy
from .transfer import Transfer, transfer

__all__ = ["TuneResult", "tune"]


@dataclass
class TuneResult:
    """What :func:`tune` found. ``plain_sweep`` is set (and ``recommendation`` empty) when the target
    equals the proxy: there was nothing to transfer and a plain sweep of the target ran instead."""

    out: Path
    recommendation: dict[str, Any] = field(default_factory=dict)
    evidence: pd.DataFrame | None = None
    files: dict[str, str] = field(default_factory=dict)
    plain_sweep: Path | None = None
    message: str = ""


class _Budget:
    """Counts trials and trial-seconds against ``--budget`` before each stage runs."""

    def __init__(self, plan: TunePlan) -> None:
        self.plan, self.trials, self.seconds, self.per_trial = plan, 0, 0.0, math.nan

    def spend(self, df: pd.DataFrame) -> None:
        self.trials += len(df)
        secs = pd.to_numeric(df["seconds"], errors="coerce").fillna(0.0)
        self.seconds += float(secs.sum())
        if len(df):
            self.per_trial = float(secs.mean())

    def check(self, stage: str, n: int, per_trial: float | None = None) -> None:
        budget, confirm = self.plan.budget, self.plan.confirm_trials
        reserve = 0 if stage == "confirm" else confirm
        if budget.trials is not None and self.trials + n + reserve > budget.trials:
            raise LoradynError(
                f"a budget of {budget.trials} trials is too small for the confirmation step: {self.trials} trials ran, "
                f"the {stage} step needs {n} more and the confirmation {confirm}; raise --budget to at least "
                f"{self.trials + n + reserve} (finished trials are kept: re-running resumes)")
        per = per_trial if per_trial is not None else self.per_trial
        if budget.seconds is not None and math.isfinite(per):
            need = (n + reserve) * per
            if self.seconds + need > budget.seconds:
                raise LoradynError(
                    f"a budget of {budget.seconds:g} s is too small for the confirmation step: {self.seconds:.0f} "
                    f"trial-seconds ran and the {stage} step with the confirmation needs about {need:.0f} s more "
                    f"({n + reserve} trials x {per:.2g} s); raise --budget to about "
                    f"{math.ceil(self.seconds + need)}s (finished trials are kept: re-running resumes)")


def _runner(executor: str, workers: int | None, quiet: bool, spent: _Budget):
    from ..sweep import run_sweep

    def run(spec: dict[str, Any], out: Path) -> pd.DataFrame:
        df = run_sweep(spec, out, executor=executor, workers=workers, quiet=quiet, max_trials=None)
        spent.spend(df)
        return df

    return run


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(f"tune: {text}", flush=True)


def tune(spec: Any, *, out: str | Path, proxy: Sequence[str] = (), target: Sequence[str] = (),
         overrides: Sequence[str] = (), seeds: Any = None, alpha_rule: str | None = None,
         width: Sequence[int] | None = None, search: str = "bracket", proxy_trials: int | None = None,
         prune: bool = False, reduction_factor: int = 3, budget: Any = None, executor: str = "process",
         workers: int | None = None, quiet: bool = False, seed: int = 0) -> TuneResult:
    """Find the learning rate (and init and LoRA+ ratio) for the target without a blind grid.

    A cheap sweep of ``spec`` on the proxy (a coarse log2 grid of ``optim.lr_a``, and ``lora.init`` /
    ``optim.lr_ratio`` where the spec sweeps them; Optuna picks (and, with ``prune``, prunes); loradyn's store records),
    the μA / LoRA+ transfer of its optimum to the target, and a confirmation sweep at ×1/2, ×1, ×2
    of the transferred lr_a. Writes ``out/recommendation.json``, ``out/peft_snippet.py``,
    ``out/evidence.csv`` and ``out/tune.png``; the sweeps live in ``out/proxy`` and ``out/confirm``,
    so re-running resumes without re-running a finished trial.

    Args:
        spec: a sweep spec (YAML path, dict or SweepSpec) of any task kind.
        out: the output folder.
        proxy, target: dotted ``key=value`` overrides that make the proxy and the target (e.g.
            ``["lora.rank=4", "train.steps=50"]`` and ``["lora.rank=64"]``); no ``proxy``: loradyn
            picks one (rank r/4, at most 4; one seed; a one-octave grid).
        overrides: overrides applied to both.
        seeds: the confirmation's seeds (a count or a list; default: the target spec's).
        alpha_rule: how the multiplier moves with the rank (``"1"``, ``"1/sqrt(r)"``, ``"1/r"``) where
            the spec does not say; with a ``lora.alpha`` spec it sets the proxy's alpha to match.
        width: ``(n0, n1)`` where the width changes and cannot be read from the spec.
        search: ``"bracket"`` (three start points per column, then a walk to the measured local optimum:
            about 5-6 of 9 coarse points), ``"grid"`` (every coarse point) or ``"tpe"`` (``proxy_trials`` points).
        prune: successive halving over training length (Optuna's pruner; ``reduction_factor``). Off by
            default: a rung-0 trial costs most of a full one where loading and evaluation dominate
            (measured on MiniLM: 10 of 30 steps cost 77 %), so it pays only for long trials or large spaces.
        budget: trials (``40``) or trial-seconds (``"600s"``, ``"10m"``); None: no limit.
        executor, workers, quiet: as for :func:`loradyn.run_sweep`.
        seed: the Optuna sampler's seed.

    Raises:
        LoradynError: bad input, in one line (see ``loradyn tune --help``).
    """
    require_optuna()
    out = Path(out)
    plan = make_plan(spec, proxy=proxy, target=target, overrides=overrides, seeds=seeds, alpha_rule=alpha_rule,
                     width=width, budget=budget, search=search)
    if plan.equal:
        return _plain_sweep(plan, out, executor, workers, quiet)
    _validate_target(plan)
    spent = _Budget(plan)
    run = _runner(executor, workers, quiet, spent)
    start = f"{plan.n_start} start points of {plan.n_points}" if plan.n_start < plan.n_points else f"{plan.n_points} points"
    _say(quiet, f"proxy {' '.join(plan.proxy_overrides) or '(the spec)'}: {start} "
                f"x {len(plan.proxy_seeds)} seed(s), {search} search -> {out / 'proxy'}")
    found = search_proxy(plan, out / "proxy", run, sampler=search, n_trials=proxy_trials, prune=prune,
                         eta=reduction_factor, seed=seed, budget_check=spent.check)
    best = found.best
    init = best.get("lora.init") if plan.inits != (None,) else None
    ratio = float(best["optim.lr_ratio"]) if plan.ratios != (None,) else None
    _say(quiet, f"proxy optimum: init {init}, lr_ratio {ratio}, lr_a {best['lr_opt']:.4g} "
                f"({plan.metric} {best['metric_opt']:.4g}{', edge ' + best['edge'] if best['edge'] else ''})")
    moved = transfer(best["lr_opt"], lr_ratio=ratio, init=str(init) if init is not None else "A",
                     alpha_rule=plan.alpha_rule, rank=plan.rank, width=plan.width, target_method=plan.target_method,
                     multiplier=plan.proxy_multiplier)
    for rule in moved.rules:
        _say(quiet, f"transfer {rule['step']}: {rule['rule']}, x{rule['factor']:.4g} ({rule['status']})")
    spent.check("confirm", plan.confirm_trials, _target_seconds(plan, found, spent))
    conf_spec = confirm_spec(plan, init, moved.lr_ratio if ratio is not None else None, moved.lr_a)
    conf_df = run(conf_spec, out / "confirm")
    conf_df["stage"] = "confirm"
    decision = decide(conf_df, transferred=moved.lr_a, metric=plan.metric, mode=plan.mode)
    return _finish(plan, out, found, moved, decision, conf_df, init, ratio, quiet, {
        "search": search, "prune": prune, "reduction_factor": reduction_factor, "seed": seed,
        "overrides": list(overrides), "spec": str(spec) if isinstance(spec, (str, Path)) else plan.name})


def _validate_target(plan: TunePlan) -> None:
    """The target's inputs (data, model, device) are checked before the proxy trains (the proxy's are
    checked by its first sweep), so a bad target fails at once, in one line."""
    from ..tasks.registry import get_task

    task = get_task(plan.kind)
    if task.validate is not None:
        task.validate(task.build(point_config(plan.target, plan.inits[0], plan.ratios[0], plan.lrs[0])))


def _target_seconds(plan: TunePlan, found: ProxyOutcome, spent: _Budget) -> float:
    """Seconds per confirmation trial, estimated from the proxy's full-step trials and the step ratio."""
    full = found.table[found.table["stage"] != "rung0"]
    per = float(pd.to_numeric(full["seconds"], errors="coerce").mean()) if len(full) else spent.per_trial
    if plan.proxy_steps and plan.target_steps:
        per *= plan.target_steps / plan.proxy_steps
    return per


def _plain_sweep(plan: TunePlan, out: Path, executor: str, workers: int | None, quiet: bool) -> TuneResult:
    from ..sweep import run_sweep

    where = out / "sweep"
    message = (f"nothing to transfer: the target equals the proxy ({' '.join(plan.target_overrides) or 'no overrides'}); "
               f"ran a plain sweep of the target instead: {where} (loradyn results {where})")
    _say(quiet, message)
    run_sweep(plan.target.to_dict(), where, executor=executor, workers=workers, quiet=quiet, max_trials=None)
    return TuneResult(out=out, plain_sweep=where, message=message)


def _finish(plan: TunePlan, out: Path, found: ProxyOutcome, moved: Transfer, decision: Confirmation,
            conf_df: pd.DataFrame, init: Any, ratio: Any, quiet: bool, how: dict[str, Any]) -> TuneResult:
    best = found.best
    lr_a = decision.lr_a
    lr_ratio = moved.lr_ratio if ratio is not None else 1.0
    target_cfg = point_config(plan.target, init, moved.lr_ratio if ratio is not None else None, moved.lr_a)
    confirm_rows = conf_df[[c for c in ("trial_id", "optim.lr_a", "seed", "status", plan.metric, "seconds", "error")
                            if c in conf_df.columns]].copy()
    confirm_rows.insert(1, "multiplier", [round(v / moved.lr_a, 6) for v in confirm_rows["optim.lr_a"]])
    rec: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "name": plan.name, "spec": how["spec"], "task": plan.kind,
        "metric": plan.metric, "mode": plan.mode,
        "overrides": how["overrides"], "proxy_overrides": list(plan.proxy_overrides),
        "target_overrides": list(plan.target_overrides),
        "init": init, "lr_a": lr_a, "lr_ratio": lr_ratio, "lr_b": lr_a * lr_ratio if lr_a is not None else None,
        "transferred_lr_a": moved.lr_a, "transferred_lr_ratio": lr_ratio,
        "decision": decision.status, "reason": decision.reason, "next_lr_a": decision.next_lr_a,
        "proxy": {
            "picked_by_loradyn": plan.proxy_picked, "rank": plan.rank[0] if plan.rank else None,
            "width": plan.width[0] if plan.width else None, "steps": plan.proxy_steps, "seeds": list(plan.proxy_seeds),
            "grid": {"optim.lr_a": list(plan.lrs), "lora.init": list(plan.inits), "optim.lr_ratio": list(plan.ratios)},
            "search": {"sampler": how["search"], "seed": how["seed"],
                       "pruner": "SuccessiveHalvingPruner" if _rung_steps(found) else None,
                       "reduction_factor": how["reduction_factor"] if _rung_steps(found) else None,
                       "rung_steps": _rung_steps(found), "asked": found.asked, "pruned": found.pruned},
            "optimum": {"init": init, "lr_ratio": ratio, "lr_a": best["lr_opt"], "lr_grid": best["lr_grid_opt"],
                        "metric": best["metric_opt"], "metric_std": best["metric_opt_std"], "edge": best["edge"],
                        "refined": bool(best["refined"])},
            "optima": found.optima.to_dict("records"),
            "status_counts": found.table["status"].value_counts().to_dict(),
        },
        "transfer": {"rank": list(plan.rank) if plan.rank else None, "width": list(plan.width) if plan.width else None,
                     "alpha_rule": plan.alpha_rule, "target_method": plan.target_method, "factor": moved.factor,
                     "rules": list(moved.rules), "derived": moved.derived},
        "target": {"rank": plan.rank[1] if plan.rank else None, "width": plan.width[1] if plan.width else None,
                   "steps": plan.target_steps, "seeds": list(plan.confirm_seeds), "method": plan.target_method},
        "confirm": {"multipliers": list(MULTIPLIERS), "trials": confirm_rows.to_dict("records"),
                    "points": decision.points.to_dict("records"), "status": decision.status,
                    "reason": decision.reason, "next_lr_a": decision.next_lr_a, "verdict": decision.verdict},
        "notes": list(plan.notes) + ([f"the proxy's optimum is on its grid edge ({best['edge']}) after extending the "
                                      "grid: the transfer starts from a bound, not an optimum"]
                                     if best["edge"] in ("low", "high") else []),
        "machine": platform.processor() or platform.machine(), "date": datetime.date.today().isoformat(),
        "timestamp": time.time(),
    }
    compute = compute_summary(plan, found.table, conf_df, moved.factor)
    rec["compute"] = compute
    rec["compute_fraction"] = compute["compute_fraction"]
    evidence = evidence_table(plan, found.table, conf_df, moved.lr_a)
    files = {"recommendation": str(out / "recommendation.json"), "evidence": str(out / "evidence.csv")}
    evidence.to_csv(out / "evidence.csv", index=False)
    snippet = None
    if lr_a is not None:
        rec["peft"] = peft_settings(plan, target_cfg, rec)
        snippet = snippet_text(plan, rec["peft"], rec)
        (out / "peft_snippet.py").write_text(snippet)
        files["snippet"] = str(out / "peft_snippet.py")
    plot = plot_tune(evidence, rec, out / "tune.png")
    if plot is not None:
        files["plot"] = str(plot)
    rec["files"] = files
    write_json(out / "recommendation.json", rec)
    _report(rec, snippet, quiet)
    return TuneResult(out=out, recommendation=rec, evidence=evidence, files=files)


def _rung_steps(found: ProxyOutcome) -> int | None:
    rung = found.table[found.table["stage"] == "rung0"]
    return int(rung["train.steps"].iloc[0]) if len(rung) and "train.steps" in rung.columns else None


def _report(rec: dict[str, Any], snippet: str | None, quiet: bool) -> None:
    if quiet:
        return
    for _, row in pd.DataFrame(rec["confirm"]["points"]).iterrows():
        print(f"tune: confirm x{row['multiplier']:g}: lr_a {row['optim.lr_a']:.4g}, {rec['metric']} "
              f"{row['mean']:.4g} ± {row['std']:.2g} ({int(row['n_seeds'])} seeds, {int(row['n_failed'])} failed)")
    decision = rec["decision"] + (f": {rec['reason']}" if rec["reason"] else "")
    if rec["lr_a"] is None:
        print(f"tune: no recommendation: {decision}")
    else:
        print(f"tune: recommended init {rec['init']}, lr_a {rec['lr_a']:.4g}, lr_ratio {rec['lr_ratio']:g}, "
              f"lr_b {rec['lr_b']:.4g} (transferred {rec['transferred_lr_a']:.4g}); {decision}")
    c = rec["compute"]
    frac = rec["compute_fraction"]
    print(f"tune: compute {c['tune_trial_seconds']:.1f} trial-s ({c['tune_trials']} trials) vs the full grid's "
          f"estimated {c['full_grid']['est_trial_seconds'] or float('nan'):.1f} trial-s ({c['full_grid']['n_trials']} "
          f"trials): {frac * 100 if frac is not None else float('nan'):.0f} %")
    if snippet:
        print(snippet, end="")
    for path in rec["files"].values():
        print(f"wrote {path}")
