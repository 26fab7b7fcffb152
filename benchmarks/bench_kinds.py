"""The generic kinds cost no more than the built-in code they replace.

The same trials (all-MiniLM-L6-v2, Rotten Tomatoes polarity rows, LoRA r = 8 on
query/key/value/dense, one seed per init, ``--steps`` steps of 16) run three ways, each in its own
subprocess (1 torch thread), alternating, ``--repeats`` times; the median wall time of ``run_pack``
(data, model, training and evaluation) is reported:

* ``preset``: the ``sentiment`` kind (the built-in task, now a data preset of the generic code);
* ``hf-classify``: the generic kind on a CSV holding the same rows (same split seed and sizes);
* ``baseline``: the ``sentiment`` kind of an older loradyn source tree (``--baseline-src DIR``,
  e.g. a ``git worktree`` of the commit before the generic kinds), when given.

Usage::

    python benchmarks/bench_kinds.py [--steps 20] [--repeats 3] [--baseline-src /tmp/old/src]

Prints a table (and the metrics, which must agree) and writes ``benchmarks/results/bench_kinds.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

COMMON = {"model": "minilm", "n_train": 640, "n_val": 300, "n_test": 300, "split_seed": 0}
LORA = {"rank": 8, "alpha": 16.0, "target_modules": ["query", "key", "value", "dense"]}


def _child(kind: str, csv: str, steps: int) -> None:
    """Run the trials once in this process and print one JSON line: seconds and metrics."""
    import torch

    torch.set_num_threads(1)
    try:
        from loradyn.tasks.registry import get_task
    except ImportError:  # an older source tree
        from loradyn.sweep.protocol import get_task
    try:
        from loradyn.serialize import spec_from_dict
    except ImportError:
        from loradyn.specs import spec_from_dict
    task = {"kind": kind, **COMMON} if kind == "sentiment" else {"kind": kind, **COMMON, "data": csv}
    record = get_task(kind)
    configs = [spec_from_dict(record.spec_cls, {
        "task": task, "lora": {**LORA, "init": init}, "optim": {"name": "adamw", "lr_a": 2.0 ** -10},
        "train": {"steps": steps, "batch_size": 16, "eval_batch_size": 50, "pack": "solo"}, "seed": seed})
        for seed, init in ((0, "A"), (1, "B"))]
    start = time.perf_counter()
    results = [r for c in configs for r in record.run_pack([c])]
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "metrics": [r.metrics for r in results],
                      "status": [r.status for r in results]}))


def _run(which: str, csv: str, steps: int, baseline: str | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    kind = "hf-classify" if which == "hf-classify" else "sentiment"
    if which == "baseline":
        env["PYTHONPATH"] = os.pathsep.join([baseline, env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--csv", csv, "--steps", str(steps)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-src", default=None, help="src/ of an older loradyn to time as the baseline")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--csv", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_kinds.json"))
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.csv, args.steps)
        return
    import pandas as pd

    from loradyn.tasks import data

    with tempfile.TemporaryDirectory() as tmp:
        csv = str(Path(tmp) / "rt.csv")
        pd.DataFrame([{"text": t, "label": y} for t, y in data.rt_snippets(0.5)]).to_csv(csv, index=False)
        sides = ["preset", "hf-classify"] + (["baseline"] if args.baseline_src else [])
        runs: dict[str, list[dict]] = {s: [] for s in sides}
        for _ in range(args.repeats):
            for side in sides:
                runs[side].append(_run(side, csv, args.steps, args.baseline_src))
    table = {s: statistics.median(r["seconds"] for r in runs[s]) for s in sides}
    ref = table["baseline" if "baseline" in table else "preset"]
    print(f"2 trials x {args.steps} steps of 16 (MiniLM, RT polarity), median of {args.repeats}, 1 thread")
    print(f"{'code path':<14}{'wall s':>9}{'vs ' + ('baseline' if 'baseline' in table else 'preset'):>14}")
    for side, seconds in table.items():
        print(f"{side:<14}{seconds:9.2f}{seconds / ref:13.3f}x")
    def common(metrics_a, metrics_b):  # an older tree reports fewer metrics; compare the shared ones
        return all({k: a[k] for k in a.keys() & b.keys()} == {k: b[k] for k in a.keys() & b.keys()}
                   for a, b in zip(metrics_a, metrics_b))

    same = all(common(runs[s][0]["metrics"], runs[sides[0]][0]["metrics"]) for s in sides)
    print(f"metrics identical across code paths (shared metrics): {same}")
    result = {"benchmark": "bench_kinds", "steps": args.steps, "repeats": args.repeats, "median_seconds": table,
              "ratio_to_reference": {s: v / ref for s, v in table.items()}, "metrics_identical": same,
              "machine": _machine(), "date": time.strftime("%Y-%m-%d"), "baseline_src": args.baseline_src}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def _machine() -> str:
    from loradyn.experiments.framework import machine

    return machine()


if __name__ == "__main__":
    main()
