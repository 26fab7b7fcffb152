"""The papers' synthetic experiments, reproduced with verdicts: ``loradyn reproduce <id>``.

============== ==========================================================================
id             what
============== ==========================================================================
width-lr       optimal lr vs width, Init[A] vs Init[B] (slopes −1/2 and −1; 2406.08447)
feature-norms  Z_A, Z_B over training at n = 128 and 8192, each init at its optimal lr
loraplus-heatmap  (lr_a × lr_b) loss heatmaps at two widths: optimum above the diagonal
rank-lr        optimal lr vs rank under μA: slopes −1/2, −1/4, 0, 0, with full finetuning
============== ==========================================================================

Each experiment runs on the sweep engine (resumable: re-running the same command skips finished
trials) and writes ``results.csv``, ``summary.json`` (fitted quantities and ``verdicts``) and PNG
figures into its output directory, and prints the verdict table. A claim that does not hold is
reported as not holding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import LoradynError

__all__ = ["EXPERIMENTS", "reproduce"]

_MODULES = {
    "width-lr": "width_lr",
    "feature-norms": "feature_norms",
    "loraplus-heatmap": "loraplus_heatmap",
    "rank-lr": "rank_lr",
}

EXPERIMENTS: dict[str, str] = {
    "width-lr": "optimal lr vs width, Init[A] vs Init[B]: slopes -1/2 and -1 (2406.08447)",
    "feature-norms": "Z_A/Z_B norms over training at n=128 and 8192, each init at its optimal lr (2406.08447)",
    "loraplus-heatmap": "lr_a x lr_b loss heatmaps at two widths: optimum above the diagonal, ratio grows with width (2402.12354)",
    "rank-lr": "optimal lr vs rank (muA): slopes -1/2, -1/4, 0, 0 + full finetuning reference (2602.06204)",
}

REAL_EXPERIMENTS = ("sentiment-init", "trec6-init", "wiki-init", "gsm-init")


def _module(experiment_id: str):
    import importlib

    return importlib.import_module(f"{__name__}.{_MODULES[experiment_id]}")


def reproduce(
    experiment_id: str,
    *,
    out: str | Path,
    quick: bool = False,
    seeds: int | None = None,
    overrides: Sequence[str] = (),
    executor: str = "process",
    workers: int | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run one experiment (or ``"all"``, in order, into ``out/<id>/``) and return its summary.

    Args:
        experiment_id: one of :data:`EXPERIMENTS`, or ``"all"``.
        out: output directory (``results.csv``, ``summary.json``, figures, ``sweeps/``).
        quick: the reduced grids (``reproduce all --quick`` takes a few minutes on 2 cores).
        seeds: number of seeds (overrides the experiment's default).
        overrides: dotted ``key=value`` overrides of the base trial configuration
            (``optim.lr_ratio=4``, ``lora.rank=8``, ``train.steps=100``); ``experiment.<name>=value``
            sets an experiment parameter (``experiment.widths=[128,1024]``).
        executor, workers, quiet: passed to :func:`loradyn.sweep.run_sweep`.

    Returns:
        The summary dict (also written to ``summary.json``) with ``verdicts``: a list of
        ``{"claim", "expected", "measured", "holds"}``. For ``"all"``: ``{"experiments": {id: summary},
        "verdicts": [... every verdict, claim prefixed by its id]}``.

    Raises:
        LoradynError: unknown experiment id or bad override (one line).
    """
    from .common import Context, split_overrides

    if experiment_id in REAL_EXPERIMENTS:  # real pretrained models: loradyn.tasks.experiments (not in "all")
        from ..tasks.experiments import reproduce_real

        return reproduce_real(experiment_id, out=out, quick=quick, seeds=seeds, overrides=overrides,
                              executor=executor, workers=workers, quiet=quiet)
    valid = [*EXPERIMENTS, "all", *REAL_EXPERIMENTS]
    if experiment_id not in valid:
        raise LoradynError(f"unknown experiment {experiment_id!r}; valid ids: {', '.join(valid)}")
    base_overrides, params = split_overrides(overrides)
    out = Path(out)
    ids = list(EXPERIMENTS) if experiment_id == "all" else [experiment_id]
    if experiment_id == "all":
        for key in params:
            if not any(_accepts(eid, key) for eid in ids):
                raise LoradynError(f"unknown key experiment.{key}: no experiment has a parameter {key!r}")
    shared: dict[str, Any] = {}
    summaries = {}
    for eid in ids:
        ctx = Context(
            experiment=eid, out=out / eid if experiment_id == "all" else out, quick=quick, seeds=seeds,
            base_overrides=base_overrides, params_overrides=params, executor=executor, workers=workers,
            quiet=quiet, shared=shared,
        )
        if experiment_id == "all":
            ctx.params_overrides = {k: v for k, v in params.items() if _accepts(eid, k)}
        ctx.say(f"== {eid}{' (quick)' if quick else ''} -> {ctx.out}")
        summaries[eid] = _module(eid).run(ctx)
    if experiment_id != "all":
        return summaries[experiment_id]
    import json

    from .common import _plain, verdict_table

    verdicts = [{**v, "claim": f"[{eid}] {v['claim']}"} for eid, s in summaries.items() for v in s["verdicts"]]
    combined = {"experiments": summaries, "quick": quick, "verdicts": verdicts,
                "seconds": round(sum(s.get("seconds", 0.0) for s in summaries.values()), 1)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(_plain(combined), indent=2) + "\n")
    if not quiet:
        print(f"\nall{' (quick)' if quick else ''}: {len(verdicts)} verdicts, {sum(v['holds'] for v in verdicts)} hold, {combined['seconds']} s")
        print(verdict_table(verdicts))
    return combined


def _accepts(experiment_id: str, key: str) -> bool:
    """With ``all``, an ``experiment.<key>`` override goes to the experiments that have that parameter."""
    import dataclasses

    params_cls = _module(experiment_id).Params
    return key in {f.name for f in dataclasses.fields(params_cls)}
