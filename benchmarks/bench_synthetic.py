"""Benchmark of the batched synthetic engine against plain PyTorch loops, side by side, 1 thread.

Baselines (written plainly here, one configuration at a time, autograd + ``torch.optim.Adam``):
  (a) naive: recomputes the frozen parts φ(W_in x) and W*·φ(W_in x) at every step;
  (b) precomputed: the frozen parts computed once, the LoRA path with autograd.
The engine (``loradyn.synthetic.train_lora_chunk``) is timed at several pack sizes K.
Throughput is configurations × steps per second of process CPU time (the machine is shared, so
CPU time is less noisy than wall time; wall time is reported too). "Useful" GFLOP/s counts only
the LoRA path, forward and backward: N·n·(10r + 4·d_out + 2) flops per configuration-step
(the fraction of sgemm it reaches), against the sgemm GFLOP/s measured in the same run.

Usage: python benchmarks/bench_synthetic.py [--widths 128,1024,4096] [--full-width-lr]
Writes benchmarks/results/bench_synthetic.json and prints a table. No asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _host import cpu_model  # noqa: E402  (benchmarks/, on sys.path as the script's folder)

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

from loradyn.synthetic import (  # noqa: E402
    SyntheticSpec,
    chunk_size,
    frozen_parts,
    teacher_weights,
    train_lora_chunk,
)

N, D_IN, R = 1000, 5, 4


def clock():
    return time.process_time(), time.perf_counter()


def elapsed(t0):
    c, w = clock()
    return c - t0[0], w - t0[1]


def sgemm_gflops(size: int = 2048, reps: int = 3) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = clock()
        a @ b
        best = min(best, elapsed(t0)[0])
    return 2 * size**3 / best / 1e9


def weights(n: int) -> dict[str, torch.Tensor]:
    cfg = SyntheticSpec.from_dict({"task": {"width": n}})
    w = {k: v.float() for k, v in teacher_weights(cfg.task, 0).items()}
    teacher = w["w_star"] + w["b_star"] @ w["a_star"]
    w["y"] = torch.relu(torch.relu(w["x_train"] @ w["w_in"].T) @ teacher.T) @ w["w_out"].T
    return w


def baseline_naive(w, steps: int, lr: float = 1e-3):
    """(a) plain PyTorch: every step recomputes φ(W_in x) and the frozen W* product."""
    n = w["w_star"].shape[0]
    a = torch.nn.Parameter(torch.randn(R, n) / n**0.5)
    b = torch.nn.Parameter(torch.zeros(n, R))
    opt = torch.optim.Adam([a, b], lr=lr)
    for _ in range(steps):
        h = torch.relu(w["x_train"] @ w["w_in"].T)
        p = h @ w["w_star"].T + (h @ a.T) @ b.T
        loss = (torch.relu(p) @ w["w_out"].T - w["y"]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def baseline_precomputed(w, steps: int, lr: float = 1e-3):
    """(b) plain PyTorch with φ(W_in x) and W*·φ(W_in x) computed once."""
    n = w["w_star"].shape[0]
    h = torch.relu(w["x_train"] @ w["w_in"].T)
    g = h @ w["w_star"].T
    a = torch.nn.Parameter(torch.randn(R, n) / n**0.5)
    b = torch.nn.Parameter(torch.zeros(n, R))
    opt = torch.optim.Adam([a, b], lr=lr)
    for _ in range(steps):
        p = g + (h @ a.T) @ b.T
        loss = (torch.relu(p) @ w["w_out"].T - w["y"]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def engine(n: int, k: int, steps: int):
    cfgs = [
        SyntheticSpec.from_dict({"task": {"width": n}, "lora": {"init": "AB"[i % 2]},
                                 "optim": {"lr_a": 1e-4 * (1 + i), "lr_ratio": 2.0}, "train": {"steps": steps}})
        for i in range(k)
    ]
    frozen = frozen_parts(cfgs[0])
    return lambda: train_lora_chunk(frozen, cfgs)


def rate(fn, configs: int, steps: int, reps: int = 2) -> dict:
    """Best of ``reps``: configuration-steps per CPU second (and per wall second)."""
    fn_warm = fn
    best = None
    for _ in range(reps):
        t0 = clock()
        fn_warm()
        cpu, wall = elapsed(t0)
        r = {"cps_cpu": configs * steps / cpu, "cps_wall": configs * steps / wall, "cpu_s": cpu, "wall_s": wall}
        if best is None or r["cps_cpu"] > best["cps_cpu"]:
            best = r
    return best


def bench_width(n: int, ks: list[int], sgemm: float) -> dict:
    w = weights(n)
    steps_naive = max(3, min(50, int(8e4 / n)))  # a few seconds each
    steps = max(10, min(200, int(4e5 / n)))
    out = {"width": n}
    out["naive"] = rate(lambda: baseline_naive(w, steps_naive), 1, steps_naive)
    out["precomputed"] = rate(lambda: baseline_precomputed(w, steps), 1, steps)
    flops = N * n * (10 * R + 4 * 1 + 2)
    out["engine"] = {}
    for k in ks:
        run = engine(n, k, steps)
        run()  # warm-up (allocations, frozen parts cached)
        res = rate(run, k, steps + 1)
        res["useful_gflops"] = flops * res["cps_cpu"] / 1e9
        res["pct_sgemm"] = 100 * res["useful_gflops"] / sgemm
        out["engine"][k] = res
    k_auto = chunk_size(n, R)
    out["k_auto"] = k_auto
    best_k = max(out["engine"], key=lambda k: out["engine"][k]["cps_cpu"])
    auto = out["engine"].get(k_auto, out["engine"][best_k])
    out["speedup_vs_naive"] = auto["cps_cpu"] / out["naive"]["cps_cpu"]
    out["speedup_vs_precomputed"] = auto["cps_cpu"] / out["precomputed"]["cps_cpu"]
    out["k_vs_k1"] = {k: v["cps_cpu"] / out["engine"][1]["cps_cpu"] for k, v in out["engine"].items()} if 1 in out["engine"] else {}
    return out


def full_width_lr(workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "loradyn", "reproduce", "width-lr", "--out", tmp, "--workers", str(workers), "--quiet"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        summary = {}
        if (Path(tmp) / "summary.json").exists():
            summary = json.loads((Path(tmp) / "summary.json").read_text())
    return {"wall_s": wall, "exit_code": proc.returncode, "workers": workers,
            "verdicts": summary.get("verdicts"), "n_trials": summary.get("n_trials"),
            "stderr_tail": proc.stderr[-500:]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="128,1024,2048,4096")
    ap.add_argument("--ks", default="1,2,4,8,16")
    ap.add_argument("--full-width-lr", action="store_true", help="also time `loradyn reproduce width-lr` (full, ~10 min)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_synthetic.json"))
    args = ap.parse_args(argv)
    widths = [int(x) for x in args.widths.split(",")]
    ks = [int(x) for x in args.ks.split(",")]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    sgemm = sgemm_gflops()
    rows = [bench_width(n, ks, sgemm) for n in widths]
    sgemm_after = sgemm_gflops()
    report = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                    "threads": torch.get_num_threads(), "loadavg_start": load,
                    "loadavg_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "sgemm_gflops": {"before": sgemm, "after": sgemm_after},
        "widths": rows,
    }
    print(f"sgemm (1 thread, 2048^3): {sgemm:.1f} GFLOP/s before, {sgemm_after:.1f} after; load avg {load}")
    hdr = f"{'n':>5} {'naive':>8} {'precomp':>8} " + " ".join(f"{'K=' + str(k):>8}" for k in ks) + f" {'K*':>3} {'×naive':>7} {'×precomp':>8} {'GFLOP/s':>8} {'%sgemm':>6}"
    print("configuration-steps per CPU-second (1 thread)")
    print(hdr)
    for r in rows:
        auto = r["engine"].get(r["k_auto"], {})
        print(f"{r['width']:>5} {r['naive']['cps_cpu']:>8.1f} {r['precomputed']['cps_cpu']:>8.1f} "
              + " ".join(f"{r['engine'][k]['cps_cpu']:>8.1f}" for k in ks)
              + f" {r['k_auto']:>3} {r['speedup_vs_naive']:>7.1f} {r['speedup_vs_precomputed']:>8.1f}"
              f" {auto.get('useful_gflops', float('nan')):>8.1f} {auto.get('pct_sgemm', float('nan')):>6.0f}")
    if args.full_width_lr:
        res = full_width_lr(args.workers)
        report["full_width_lr"] = res
        held = sum(v["holds"] for v in res["verdicts"] or [])
        print(f"full width-lr: {res['wall_s']:.0f} s wall with {args.workers} workers, {res['n_trials']} trials, "
              f"{held}/{len(res['verdicts'] or [])} verdicts hold (exit {res['exit_code']})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
