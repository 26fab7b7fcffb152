"""``coord-check``: the LoRA coordinate check of the synthetic family (arXiv 2406.08447 at the level
its claims are stated: the hidden features, not the loss).

Protocol: for each init, learning rates lr = c·(n/n0)^γ with γ the papers' exponent (Init[A]: −1/2,
Init[B]: −1) and γ ± 1/4, at widths n0 = 128 … 8192, ≥ 5 seeds (each draws the teacher, the data
and the student init, so the CI covers the teacher's width-to-width variation too), T full-batch Adam steps of the synthetic student
(:mod:`loradyn.synthetic.module`, any ``task.form`` / ``task.readout``, on ``train.device``), measured
by :func:`loradyn.coord_check`: the RMS of Z_A, Z_B and of each step's change ΔZ_B, split into the
part from A's update and the part from B's update. Figures: RMS vs width, one line per step.

The statistic of a verdict is the slope of log2 RMS against log2 n, averaged over steps
``fit_from``…T (step 1 is special: under Init[A] B is still 0), with a 95 % CI from resampling
each width's seeds (:func:`loradyn.coordcheck.coord_slopes`). A claim "slope ≈ s" holds when the
whole CI lies within s ± ``tol``, fails when it lies wholly outside, and is undecided otherwise; a
sign claim holds when the CI lies on the predicted side of 0. Fewer than 5 seeds: undecided.
Predictions and their status (published / derived here): :mod:`~loradyn.experiments.predictions`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import pandas as pd

from ..bootstrap import seeds_ci_reason
from ..overrides import apply_overrides
from ..serialize import spec_from_dict
from .framework import Context, Experiment, Outcome, Verdict, plain
from .grids import base_config
from .predictions import COORD_LR_EXPONENT, Prediction, coord_exponent, regime_note

ID = "coord-check"
TOL = 0.15
FEATURES = ("z_a", "z_b", "dz_b", "dz_b_a", "dz_b_b")


@dataclass(frozen=True)
class Params:
    """Parameters of ``coord-check`` (override with ``experiment.<name>=value``).

    Attributes:
        widths: the widths n (the first is n0, where lr = c).
        inits: the init schemes.
        seeds: student seeds per (init, γ, width).
        steps: Adam steps T.
        offsets: the exponents tried, relative to the papers' γ.
        lr_A, lr_B: c, the learning rate at n0, per init (near the optimum at n = 128).
        data_seed: None (default): each seed draws its own teacher and data; a number fixes them
            (then only the student init varies, and the CI misses the teacher's variation).
        fit_from: first step of the slope window.
    """

    widths: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096, 8192)
    inits: tuple[str, ...] = ("A", "B")
    seeds: int = 5
    steps: int = 10
    offsets: tuple[float, ...] = (-0.25, 0.0, 0.25)
    lr_A: float = 2.0**-6
    lr_B: float = 2.0**-7
    data_seed: int | None = None
    fit_from: int = 2


FULL = Params()
QUICK = Params(widths=(128, 256, 512, 1024, 2048), steps=5)


def _spec(ctx: Context, p: Params, init: str):
    from ..synthetic import SyntheticSpec

    base = apply_overrides(base_config(ctx), ctx.base_overrides)
    if p.data_seed is not None:
        base["task"] = {**base.get("task", {}), "data_seed": p.data_seed}
    base["lora"] = {**base.get("lora", {}), "init": init, "method": "lora"}
    return spec_from_dict(SyntheticSpec, {**base, "seed": 0})


def _measure(ctx: Context, p: Params) -> pd.DataFrame:
    """Every (width, seed, init, offset) block; blocks already in ``<out>/coord_check.partial.csv`` from an
    interrupted run of the same parameters are kept (a re-run resumes)."""
    from ..coordcheck import coord_check
    from ..synthetic.module import make_model, student_loss

    partial, stamp = ctx.out / "coord_check.partial.csv", ctx.out / "coord_check.partial.json"
    marks = ctx.out / "coord_check.partial.done"
    key = json.dumps(plain({"params": p, "overrides": list(ctx.base_overrides)}), sort_keys=True)
    frames, done = [], set()
    if partial.exists() and marks.exists() and stamp.exists() and stamp.read_text() == key:
        # a block counts once its line is in the .done file (written after its rows): rows of a
        # block cut off by a kill are dropped and the block runs again
        done = {tuple(json.loads(line)) for line in marks.read_text().splitlines() if line.strip().endswith("]")}
        try:
            old = pd.read_csv(partial)
            keep = [(int(w), int(s), str(i), round(float(o), 6)) in done
                    for w, s, i, o in zip(old["width"], old["seed"], old["init"], old["offset"])]
            frames.append(old[keep])
        except (ValueError, OSError, KeyError):
            frames, done = [], set()
    ctx.out.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key)
    if not frames or not len(frames[0]):
        frames, done = [], set()
        partial.unlink(missing_ok=True)
        marks.unlink(missing_ok=True)
    else:
        frames[0].to_csv(partial, index=False)  # without the rows of an unfinished block
    specs = {init: _spec(ctx, p, init) for init in p.inits}
    factories = {init: make_model(spec) for init, spec in specs.items()}
    for n in p.widths:
        for seed in range(p.seeds):  # seed-major: the frozen parts of (n, seed) are shared by every block
            for init in p.inits:
                for off in p.offsets:
                    block = (n, seed, init, round(off, 6))
                    if block in done:
                        continue
                    gamma = COORD_LR_EXPONENT[init] + off
                    c = p.lr_A if init == "A" else p.lr_B
                    t0 = time.perf_counter()
                    o = specs[init].optim  # the trial's optimizer (lr_ratio, betas, ε, decay); lr from γ
                    table = coord_check(factories[init], [n], lr=c * (n / p.widths[0]) ** gamma, steps=p.steps,
                                        seeds=[seed], loss=student_loss, lr_ratio=o.lr_ratio, optimizer=o.name,
                                        betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
                    table["seconds"] = time.perf_counter() - t0
                    table.insert(0, "offset", off)
                    table.insert(0, "gamma", gamma)
                    table.insert(0, "init", init)
                    header = not partial.exists() or partial.stat().st_size == 0
                    table.to_csv(partial, mode="a", header=header, index=False)
                    with marks.open("a") as fh:
                        fh.write(json.dumps(list(block)) + "\n")
                    frames.append(table)
        ctx.say(f"  n={n}: done")
    return pd.concat(frames, ignore_index=True)


def run_rows(table: pd.DataFrame, steps: int) -> pd.DataFrame:
    """One row per run (init, γ, width, seed) for ``results.csv``, in the results schema
    (docs/schema.md): ``trial_id``, the run's configuration (``lora.init``, ``task.width``, ``seed``,
    ``optim.lr_a``, ``optim.lr_b``, ``gamma``, ``offset``), the loss at step 0 and at the last step it
    reached, ``status`` (``diverged``: a non-finite loss ended it), ``error``, ``seconds``."""
    loss = table[table["feature"] == "loss"]
    keys = ["init", "offset", "gamma", "width", "seed", "lr_a", "lr_b"]
    rows = []
    for key, g in loss.groupby(keys, sort=True):
        g = g.sort_values("step")
        last = g.iloc[-1]
        ok = int(last["step"]) == steps and math.isfinite(float(last["value"]))
        k = dict(zip(keys, key))
        rows.append({
            "trial_id": f"{ID}-{k['init']}-g{k['gamma']:+.3f}-n{int(k['width'])}-s{int(k['seed'])}",
            "lora.init": k["init"], "task.width": int(k["width"]), "seed": int(k["seed"]),
            "optim.lr_a": k["lr_a"], "optim.lr_b": k["lr_b"], "gamma": k["gamma"], "offset": k["offset"],
            "steps_done": int(last["step"]), "initial_train_loss": float(g.iloc[0]["value"]),
            "final_train_loss": float(last["value"]), "status": "done" if ok else "diverged",
            "error": "", "seconds": float(g["seconds"].iloc[0]) if "seconds" in g else float("nan"),
        })
    out = pd.DataFrame(rows)
    out.insert(0, "sweep", ID)
    out.insert(0, "experiment", ID)
    return out


def _claim(init: str, feature: str, off: float, what: str) -> tuple[str, Prediction]:
    pred = coord_exponent(init, feature, off)
    gamma = COORD_LR_EXPONENT[init] + off
    return f"Init[{init}], lr ∝ n^{gamma:g}: {what} ({pred.label()})", pred


def verdicts(slopes: pd.DataFrame, p: Params) -> list[Verdict]:
    few = seeds_ci_reason(p.seeds)
    out = []

    def stat(init, off, feature):
        s = slopes[(slopes["init"] == init) & (slopes["offset"].round(6) == round(off, 6)) & (slopes["feature"] == feature)]
        if s.empty:
            return math.nan, (math.nan, math.nan)
        r = s.iloc[0]
        return float(r["slope"]), (float(r["ci_low"]), float(r["ci_high"]))

    def near(init, off, feature, what):
        claim, pred = _claim(init, feature, off, what)
        slope, ci = stat(init, off, feature)
        out.append(Verdict.bounded(claim, f"{pred.value:+.2f} ± {TOL} (CI inside)", f"{slope:+.2f}",
                                   (pred.value - TOL, pred.value + TOL), ci, [few]))

    def sign(init, off, feature, what):
        claim, pred = _claim(init, feature, off, what)
        slope, ci = stat(init, off, feature)
        bounds = (0.0, math.inf) if pred.value > 0 else (-math.inf, 0.0)
        out.append(Verdict.bounded(claim, f"{'> 0' if pred.value > 0 else '< 0'} (theory {pred.value:+.2f})",
                                   f"{slope:+.2f}", bounds, ci, [few]))

    for init in p.inits:
        if 0.0 in p.offsets:
            near(init, 0.0, "dz_b", "the per-step change ΔZ_B is Θ(1) (slope in n)")
        for off in p.offsets:
            if off != 0.0:
                sign(init, off, "dz_b", f"ΔZ_B {'grows' if off > 0 else 'shrinks'} with width (slope sign)")
        if 0.0 in p.offsets:
            near(init, 0.0, "z_a", "Z_A " + ("grows ∝ n^1/2 (internal instability)" if init == "A" else "stays Θ(1)"))
            if init == "A":
                near(init, 0.0, "dz_b_a", "A's update moves Z_B by Θ(1)")
                near(init, 0.0, "dz_b_b", "B's update moves Z_B by Θ(1)")
            else:
                near(init, 0.0, "dz_b_b", "B's update vanishes ∝ n^-1 (B undertrained)")
    return out


def run(ctx: Context) -> Outcome:
    from ..coordcheck import coord_slopes
    from ..plots import plot_coord_check

    p = ctx.params
    if len(p.widths) < 2 or p.fit_from > p.steps:
        from ..errors import LoradynError

        raise LoradynError("coord-check needs ≥ 2 widths and fit_from <= steps")
    table = _measure(ctx, p)
    window = table[(table["step"] >= p.fit_from) & (table["step"] <= p.steps) & (table["module"] != "")]
    # mean over the window of log2 RMS per run, as a one-step table: the slope of the mean is the
    # mean of the per-step slopes
    import numpy as np

    runs = window[window["value"] > 0].assign(value=lambda d: np.log2(d["value"]))
    runs = runs.groupby(["init", "offset", "gamma", "module", "feature", "width", "seed"])["value"].mean().reset_index()
    runs = runs.assign(value=lambda d: 2.0 ** d["value"], step=p.steps)
    slopes = coord_slopes(runs, by=["init", "offset", "gamma"])
    per_step = coord_slopes(table[table["module"] != ""], by=["init", "offset", "gamma"])
    task = _spec(ctx, p, p.inits[0]).task
    figures = {
        f"coord_check_{init}": plot_coord_check(
            table[table["init"] == init], row="gamma", features=FEATURES,
            title=f"Init[{init}]: RMS vs width, lr = c·n^γ ({task.form} form, {task.readout} readout)")
        for init in p.inits
    }
    summary = {
        "slopes": slopes,
        "slopes_per_step": per_step,
        "model": {"form": task.form, "readout": task.readout, "teacher_readout": task.teacher_readout,
                  "note": regime_note(task)},
    }
    table.to_csv(ctx.out / "coord_check.csv", index=False)
    summary["table"] = "coord_check.csv"
    return Outcome(run_rows(table, p.steps), summary, figures, verdicts(slopes, p))


EXPERIMENT = Experiment(
    id=ID,
    description="LoRA coordinate check: RMS of Z_A, Z_B and per-step dZ_B (A's and B's part) vs width at lr = c*n^gamma (2406.08447)",
    params=Params, quick=QUICK, full=FULL, run=run, order=50, in_all=True,
)
