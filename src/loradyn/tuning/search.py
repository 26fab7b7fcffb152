"""The proxy search: Optuna picks the points and prunes the bad ones; loradyn's sweep store runs and
records every trial (so a re-run resumes without re-running a finished trial).

* **Sampler.** ``bracket`` (default): :class:`optuna.samplers.GridSampler` over three start points
  per (``lora.init``, ``optim.lr_ratio``) column (the middle of the coarse ``optim.lr_a`` grid and two
  grid steps either side), then every column walks one grid step at a time towards its better side
  until its best point has measured neighbours on both sides (an all-diverged column steps down two
  grid steps at a time): about 5-6 trials per column on a 9-point grid instead of 9. ``grid``: the
  GridSampler over the whole coarse grid, every point once (for a curve that may have several bumps).
  ``tpe``: :class:`optuna.samplers.TPESampler` asks ``proxy_trials`` points in batches (for a large space).
* **Pruner.** With ``prune``, :class:`optuna.pruners.SuccessiveHalvingPruner` (asynchronous successive
  halving) over training length: every asked point first trains ``steps / eta`` steps (rung 0), its
  metric is reported to Optuna as the intermediate value, and only the points the pruner promotes
  train the full proxy steps. A diverged rung-0 trial reports NaN, which the pruner always prunes.
  The full-step neighbours of the best point are then filled in (a pruned neighbour is trained at
  full steps), so the optimum is bracketed by measured points.
* **Edges.** An optimum at the end of the proxy grid is extended by two grid steps beyond it, at
  most twice (as ``loradyn reproduce width-lr`` does).

The Optuna study lives in memory; the store is the record. Re-running asks the same points in the
same order (seeded), finds them finished in the store, and makes the same decisions.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..analysis import optimal_lr, seed_stats
from ..errors import LoradynError
from ..overrides import set_dotted
from .grid import bracket_starts
from .plan import TunePlan

__all__ = ["ProxyOutcome", "require_optuna", "search_proxy"]

MAX_EXTEND = 2
Point = tuple[Any, Any, float]  # (init, lr_ratio, lr_a); None where the kind has no such key


def require_optuna():
    """Optuna, imported on first use (one line naming the extra when it is missing)."""
    try:
        import optuna
    except ImportError:
        raise LoradynError("loradyn tune needs optuna: pip install 'loradyn[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _tell(study: Any, trial: Any, **kwargs: Any) -> None:
    """``study.tell``; GridSampler calls ``study.stop()`` after the last grid point, which raises outside
    ``optimize`` (optuna#4121) once the trial is already stored: that is the end of the grid, not an error."""
    try:
        study.tell(trial, **kwargs)
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise


@dataclass
class ProxyOutcome:
    """Every proxy trial of this tune (``stage``: rung0, proxy, walk, fill, extend), the optimum of each
    (init, lr_ratio) column at full steps, the best column, and Optuna's counts."""

    table: pd.DataFrame
    optima: pd.DataFrame
    best: dict[str, Any]
    pruned: int
    asked: int


class _Search:
    def __init__(self, plan: TunePlan, out: Path, run: Callable[..., pd.DataFrame], *, sampler: str,
                 n_trials: int | None, prune: bool, eta: int, seed: int, budget_check: Callable[[str, int], None]):
        self.plan, self.out, self.run_sweep = plan, out, run
        self.sampler, self.prune, self.eta, self.seed = sampler, prune, eta, seed
        self.n_trials = n_trials
        self.check = budget_check
        self.frames: list[pd.DataFrame] = []
        self.lrs: dict[tuple[Any, Any], list[float]] = {(i, r): list(plan.lrs) for i in plan.inits for r in plan.ratios}
        self.pruned = 0
        self.pruned_points: set[Point] = set()
        self.asked = 0
        steps = plan.proxy_steps
        self.rung_steps = max(1, int(round(steps / eta))) if prune and steps else None
        if self.rung_steps is not None and (self.rung_steps >= steps or plan.n_start < eta):
            self.rung_steps = None  # too short or too few points for a rung to save anything

    # --- running points through the store -------------------------------------------------------
    def _spec(self, points: list[Point], steps: int | None) -> dict[str, Any]:
        sweep = self.plan.proxy
        base = copy.deepcopy(sweep.base)
        if steps is not None:
            set_dotted(base, "train.steps", steps)
        inits = sorted({p[0] for p in points}, key=str)
        ratios = sorted({p[1] for p in points}, key=str)
        grid: dict[str, list[Any]] = {}
        if inits != [None]:
            grid["lora.init"] = inits
        if ratios != [None]:
            grid["optim.lr_ratio"] = ratios
        grid["optim.lr_a"] = sorted({p[2] for p in points})
        return {"name": sweep.name, "base": base, "grid": grid, "seeds": list(sweep.seeds),
                "metric": sweep.metric, "mode": sweep.mode, **({"resources": sweep.resources} if sweep.resources else {})}

    def _run(self, points: list[Point], steps: int | None, stage: str) -> dict[Point, float]:
        """Train ``points`` (all seeds) at ``steps`` (None: the proxy's own); their seed-mean metric."""
        if not points:
            return {}
        n = len(points) * len(self.plan.proxy_seeds)
        self.check(stage, n)
        groups: dict[tuple[Any, Any], set[float]] = {}
        for init, ratio, lr in points:
            groups.setdefault((init, ratio), set()).add(lr)
        lr_sets = {frozenset(v) for v in groups.values()}
        product = len(lr_sets) == 1 and len(groups) == len({k[0] for k in groups}) * len({k[1] for k in groups})
        batches = [points] if product else [[p for p in points if (p[0], p[1]) == key] for key in groups]
        values: dict[Point, float] = {}
        for batch in batches:
            df = self.run_sweep(self._spec(batch, steps), self.out)
            if self.plan.metric not in df.columns:  # every trial of the batch diverged before its evaluation
                df[self.plan.metric] = math.nan
            wanted = {(p[0], p[1], p[2]) for p in batch}
            df = df[[self._point(row) in wanted for _, row in df.iterrows()]].copy()
            df["stage"] = stage
            self.frames.append(df)
            stats = seed_stats(df, self._by(df), metric=self.plan.metric, mode=self.plan.mode)
            for _, row in stats.iterrows():
                key = self._point(row)
                values[key] = float(row["mean"]) if math.isfinite(row["mean"]) else math.nan
        return values

    def _by(self, df: pd.DataFrame) -> list[str]:
        return [c for c in ("lora.init", "optim.lr_ratio", "optim.lr_a") if c in df.columns]

    def _point(self, row: Any) -> Point:
        init = row["lora.init"] if "lora.init" in row and self.plan.inits != (None,) else None
        ratio = float(row["optim.lr_ratio"]) if "optim.lr_ratio" in row and self.plan.ratios != (None,) else None
        return init, ratio, float(row["optim.lr_a"])

    # --- Optuna ---------------------------------------------------------------------------------
    def _space(self) -> dict[str, list[Any]]:
        lrs = bracket_starts(self.plan.lrs) if self.sampler == "bracket" else list(self.plan.lrs)
        space: dict[str, list[Any]] = {"lr_a": lrs}
        if self.plan.inits != (None,):
            space["init"] = [str(i) for i in self.plan.inits]
        if self.plan.ratios != (None,):
            space["lr_ratio"] = [float(r) for r in self.plan.ratios]
        return space

    def _ask(self, study, space: dict[str, list[Any]]) -> tuple[Any, Point]:
        trial = study.ask()
        got = {k: trial.suggest_categorical(k, v) for k, v in space.items()}
        self.asked += 1
        return trial, (got.get("init"), got.get("lr_ratio"), float(got["lr_a"]))

    def run(self) -> ProxyOutcome:
        optuna = require_optuna()
        space = self._space()
        n_points = int(np.prod([len(v) for v in space.values()]))
        if self.sampler in ("grid", "bracket"):
            sampler, total, batch = optuna.samplers.GridSampler(space, seed=self.seed), n_points, n_points
        elif self.sampler == "tpe":
            total = self.n_trials or n_points
            sampler, batch = optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=min(4, total)), 4
        else:
            raise LoradynError(f"unknown search {self.sampler!r}: use bracket, grid or tpe")
        pruner = (optuna.pruners.SuccessiveHalvingPruner(min_resource=self.rung_steps, reduction_factor=self.eta)
                  if self.rung_steps else optuna.pruners.NopPruner())
        direction = "minimize" if self.plan.mode == "min" else "maximize"
        study = optuna.create_study(direction=direction, sampler=sampler, pruner=pruner)
        done: dict[Point, float] = {}
        while self.asked < total:
            asked = [self._ask(study, space) for _ in range(min(batch, total - self.asked))]
            survivors = asked
            if self.rung_steps:
                rung = self._run([p for _, p in asked], self.rung_steps, "rung0")
                survivors = []
                for trial, point in asked:
                    trial.report(rung[point], step=self.rung_steps)
                    if trial.should_prune():
                        _tell(study, trial, state=optuna.trial.TrialState.PRUNED)
                        self.pruned += 1
                        self.pruned_points.add(point)
                    else:
                        survivors.append((trial, point))
            todo = list(dict.fromkeys(p for _, p in survivors if p not in done))
            done.update(self._run(todo, None, "proxy"))
            for trial, point in survivors:
                value = done[point]
                if math.isfinite(value):
                    _tell(study, trial, values=value)
                else:
                    _tell(study, trial, state=optuna.trial.TrialState.FAIL)
        if self.sampler == "bracket":
            for key in sorted(self.lrs, key=str):
                self._walk(key, done)
        else:
            self._fill_and_extend(done)
        return self._outcome()

    # --- bracketing the optimum -----------------------------------------------------------------
    def _full(self) -> pd.DataFrame:
        df = pd.concat(self.frames, ignore_index=True) if self.frames else pd.DataFrame()
        return df[df["stage"] != "rung0"] if len(df) else df

    def _optima(self) -> pd.DataFrame:
        full = self._full()
        if not len(full):
            return pd.DataFrame()
        by = [c for c in ("lora.init", "optim.lr_ratio") if c in full.columns and self._varies(c)]
        return optimal_lr(full, by or None, metric=self.plan.metric, mode=self.plan.mode)

    def _varies(self, column: str) -> bool:
        return (column == "lora.init" and self.plan.inits != (None,)) or \
               (column == "optim.lr_ratio" and self.plan.ratios != (None,))

    def _best_row(self, optima: pd.DataFrame) -> dict[str, Any] | None:
        finite = optima[np.isfinite(optima["metric_opt"].astype(float)) & optima["lr_grid_opt"].notna()]
        if not len(finite):
            return None
        sign = 1.0 if self.plan.mode == "min" else -1.0
        return finite.loc[(sign * finite["metric_opt"].astype(float)).idxmin()].to_dict()

    def _walk(self, key: tuple[Any, Any], done: dict[Point, float]) -> None:
        """Walk column ``key`` one grid step at a time until its best point has measured neighbours (or is
        at the grid's end after ``MAX_EXTEND`` one-step extensions); an all-diverged column steps down.
        A point the pruner stopped counts as measured and not better."""
        sign = 1.0 if self.plan.mode == "min" else -1.0
        extended = 0
        while True:
            grid = sorted(self.lrs[key])
            column = {p[2]: math.nan for p in self.pruned_points if (p[0], p[1]) == key}  # the pruner's "worse"
            column.update({p[2]: v for p, v in done.items() if (p[0], p[1]) == key})
            finite = {lr: v for lr, v in column.items() if math.isfinite(v)}
            if not finite:  # every measured point diverged: two grid steps below the lowest, inside the grid
                below = [lr for lr in grid if lr < min(column)]
                todo = [below[max(0, len(below) - 2)]] if below else []
            else:
                best = min(sorted(finite), key=lambda lr: sign * finite[lr])
                i = grid.index(best)
                todo = [grid[j] for j in (i - 1, i + 1) if 0 <= j < len(grid) and grid[j] not in column]
                if not todo and i in (0, len(grid) - 1) and extended < MAX_EXTEND and len(grid) > 1:
                    step = math.log2(grid[1]) - math.log2(grid[0])
                    todo = [grid[i] * 2.0 ** (step if i else -step)]
                    self.lrs[key] = sorted(grid + todo)
                    extended += 1
            if not todo:
                return
            done.update(self._run([(*key, lr) for lr in todo], None, "walk"))

    def _fill_and_extend(self, done: dict[Point, float]) -> None:
        extended = 0
        for _ in range(4 * len(self.plan.lrs) + 2 * MAX_EXTEND + 2):
            optima = self._optima()
            best = self._best_row(optima) if len(optima) else None
            if best is None:
                return
            key = (best.get("lora.init") if self.plan.inits != (None,) else None,
                   float(best["optim.lr_ratio"]) if self.plan.ratios != (None,) else None)
            grid = sorted(self.lrs[key])
            i = grid.index(min(grid, key=lambda v: abs(math.log2(v) - math.log2(best["lr_grid_opt"]))))
            missing = [grid[j] for j in (i - 1, i + 1) if 0 <= j < len(grid) and (*key, grid[j]) not in done]
            if missing:
                done.update(self._run([(*key, lr) for lr in missing], None, "fill"))
                continue
            if i in (0, len(grid) - 1) and extended < MAX_EXTEND and len(grid) > 1:
                step = math.log2(grid[1]) - math.log2(grid[0])
                sign = -1 if i == 0 else 1
                new = [grid[i] * 2.0 ** (sign * step * k) for k in (1, 2)]
                self.lrs[key] = sorted(grid + new)
                extended += 1
                done.update(self._run([(*key, lr) for lr in new], None, "extend"))
                continue
            return

    def _outcome(self) -> ProxyOutcome:
        table = pd.concat(self.frames, ignore_index=True) if self.frames else pd.DataFrame()
        optima = self._optima()
        best = self._best_row(optima) if len(optima) else None
        if best is None:
            self._all_diverged(table)
        return ProxyOutcome(table=table, optima=optima, best=best, pruned=self.pruned, asked=self.asked)

    def _all_diverged(self, table: pd.DataFrame) -> None:
        failed = table[table["status"] == "failed"] if len(table) else table
        if len(table) and len(failed) == len(table):
            raise LoradynError(f"every proxy trial failed: {failed['error'].iloc[0]}")
        lo, hi = math.log2(min(self.plan.lrs)), math.log2(max(self.plan.lrs))
        span = hi - lo
        step = (span / (len(self.plan.lrs) - 1)) if len(self.plan.lrs) > 1 else 1.0
        new_hi = lo - step
        raise LoradynError(f"every proxy trial diverged (optim.lr_a 2^{lo:g} ... 2^{hi:g}): lower the grid, e.g. "
                           f"--proxy 'optim.lr_a={{log2: [{new_hi - span:g}, {new_hi:g}, {step:g}]}}'")


def search_proxy(plan: TunePlan, out: str | Path, run: Callable[..., pd.DataFrame], *, sampler: str = "bracket",
                 n_trials: int | None = None, prune: bool = True, eta: int = 3, seed: int = 0,
                 budget_check: Callable[[str, int], None] | None = None) -> ProxyOutcome:
    """Search the proxy's coarse grid with Optuna on top of the store in ``out`` (see the module docstring):
    ``sampler`` is ``bracket``, ``grid`` or ``tpe``.

    ``run(spec_dict, out)`` runs a sweep (``loradyn.run_sweep`` with the executor settings) and
    returns its results table; ``budget_check(stage, n_trials)`` may refuse the next ``n_trials``.

    Raises:
        LoradynError: every proxy trial diverged (with the grid to try instead) or failed.
    """
    return _Search(plan, Path(out), run, sampler=sampler, n_trials=n_trials, prune=prune, eta=eta, seed=seed,
                   budget_check=budget_check or (lambda stage, n: None)).run()
