"""Sweep-engine overhead and executor scaling, with a calibrated busy-loop task.

* Overhead: ``run_sweep`` (serial executor, progress on) wall time vs the summed compute time of
  its packs (each pack ≈ ``--pack-seconds`` of pure-Python work, measured inside ``run_pack``).
  Overhead = wall / compute − 1: spec expansion, store creation and writes, claims, heartbeats,
  progress, env capture and the final results table; "cold" is the first call in a fresh process
  (it also pays one-time imports), "warm" a second call. Goal ≤ 5 % for packs of ≥ 1 s.
* Scaling: throughput (packs per second, end to end including worker start-up) of ``process``
  and ``ray`` with W workers vs one worker. Goal ≥ 0.85·W where W cores are free. Ray is started
  once before its runs (``ray.init`` time is reported separately, not charged to throughput).

The work per pack is a fixed number of loop iterations (calibrated once to ``--pack-seconds``),
so a CPU shared with other processes shows up as longer compute, not as engine overhead; for the
scaling rows it does lower the ratio. ``busy`` = compute / (W · wall) is the fraction of the W
worker slots' time spent computing: the engine's share of the scaling, whatever the contention
(efficiency ≈ busy when W cores are free). Writes benchmarks/results/bench_sweep.json.

    python benchmarks/bench_sweep.py [--packs 12] [--pack-seconds 1.0] [--workers 2] [--skip-ray]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from loradyn.tasks import TaskKind, TrialResult, register_task


@dataclass(frozen=True)
class BusyTaskSpec:
    kind: Literal["busy"] = "busy"
    iterations: int = 1000
    index: int = 0


@dataclass(frozen=True)
class BusySpec:
    task: BusyTaskSpec = field(default_factory=BusyTaskSpec)
    seed: int = 0


def spin(iterations: int) -> int:
    x = 0
    for i in range(iterations):
        x = (x + i * i) % 1_000_003
    return x


def run_busy(configs):
    """One trial per pack; a pack is ``iterations`` loop steps of pure Python (one core)."""
    out = []
    for cfg in configs:
        start = time.perf_counter()
        value = spin(cfg.task.iterations)
        out.append(TrialResult("done", {"value": float(value)}, seconds=time.perf_counter() - start))
    return out


KIND = register_task(TaskKind(kind="busy", spec_cls=BusySpec, run_pack=run_busy, metrics={"value": "min"},
                              pack_key=lambda config: config.task.index))


def calibrate(seconds: float) -> int:
    n = 200_000
    while True:
        start = time.perf_counter()
        spin(n)
        took = time.perf_counter() - start
        if took > 0.2:
            return int(n * seconds / took)
        n *= 2


def sweep_spec(packs: int, iterations: int) -> dict:
    return {"name": "busy", "base": {"task": {"kind": "busy", "iterations": iterations}},
            "grid": {"task.index": list(range(packs))}, "seeds": [0]}


def run(spec: dict, executor: str, workers: int, quiet: bool = True) -> dict:
    from loradyn.sweep import run_sweep

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        df = run_sweep(spec, Path(tmp) / "s", executor=executor, workers=workers, quiet=quiet)
        wall = time.perf_counter() - start
    assert (df["status"] == "done").all(), df["error"].dropna().tolist()[:3]
    compute = float(df["seconds"].sum())
    return {"executor": executor, "workers": workers, "packs": len(df), "wall_s": wall, "compute_s": compute,
            "packs_per_s": len(df) / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packs", type=int, default=12)
    parser.add_argument("--pack-seconds", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_sweep.json"))
    args = parser.parse_args()

    iterations = calibrate(args.pack_seconds)
    spec = sweep_spec(args.packs, iterations)
    # cold: the first run_sweep of the process pays one-time imports (pandas, sqlite3, yaml);
    # warm: a second run in the same process. Progress lines are on in both (part of the overhead).
    cold = run(spec, "serial", 1, quiet=False)
    cold["executor"] = "serial (cold)"
    serial = run(spec, "serial", 1, quiet=False)
    rows = [cold, serial]
    for r in rows:
        r["overhead"] = r["wall_s"] / r["compute_s"] - 1
    for w in (1, args.workers):
        rows.append(run(spec, "process", w))
    ray_init = None
    if not args.skip_ray:
        try:
            import ray
        except ImportError:
            print("ray not installed: skipping the ray rows", file=sys.stderr)
        else:
            start = time.perf_counter()
            ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            ray_init = time.perf_counter() - start
            for w in (1, args.workers):
                rows.append(run(spec, "ray", w))
            ray.shutdown()
    base = {r["executor"]: r["packs_per_s"] for r in rows if r["workers"] == 1}
    for r in rows:
        r["speedup"] = r["packs_per_s"] / base[r["executor"]]
        r["efficiency"] = r["speedup"] / r["workers"]
        r["busy"] = r["compute_s"] / (r["workers"] * r["wall_s"])  # worker slots kept computing

    print(f"\nbusy-loop packs: {args.packs} x {args.pack_seconds:g} s (calibrated {iterations} iterations); "
          f"cpu_count={os.cpu_count()}; load average {os.getloadavg()[0]:.2f}")
    print(f"{'executor':<14}{'W':>3}{'wall s':>9}{'compute s':>11}{'packs/s':>9}{'speedup':>9}{'eff.':>7}{'busy':>7}{'overhead':>10}")
    for r in rows:
        over = f"{100 * r['overhead']:.2f}%" if "overhead" in r else ""
        print(f"{r['executor']:<14}{r['workers']:>3}{r['wall_s']:>9.2f}{r['compute_s']:>11.2f}{r['packs_per_s']:>9.3f}"
              f"{r['speedup']:>9.2f}{r['efficiency']:>7.2f}{r['busy']:>7.2f}{over:>10}")
    if ray_init is not None:
        print(f"ray.init: {ray_init:.1f} s (not charged to the ray rows)")
    result = {"benchmark": "bench_sweep", "packs": args.packs, "pack_seconds": args.pack_seconds,
              "iterations": iterations, "cpu_count": os.cpu_count(), "loadavg": os.getloadavg(),
              "ray_init_s": ray_init, "rows": rows, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"overhead_cold": cold["overhead"], "overhead_warm": serial["overhead"],
                      **{f"{r['executor']}_efficiency_W{r['workers']}": r["efficiency"] for r in rows if r["workers"] > 1},
                      **{f"{r['executor']}_busy_W{r['workers']}": r["busy"] for r in rows if r["workers"] > 1}}))
    print(f"wrote {out}")


if __name__ == "__main__":
    # re-import under the module's own name so worker processes and Ray tasks can import the task
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_sweep

    bench_sweep.main()
