"""Multi-adapter packs vs K sequential solo PEFT runs: adapter-steps per second and peak memory.

Both sides train the same K LoRA adapters (differing in init, lr and LoRA+ ratio) for the same
steps on the same batches of a real task (default: all-MiniLM-L6-v2 on Rotten Tomatoes polarity,
batch 16, dynamic padding), through loradyn's task code:

* ``solo``: K PEFT runs one after the other, each on a fresh copy of the frozen base model;
* ``pack``: one :class:`loradyn.packs.AdapterPack` of K adapters on one base (the batch repeated K
  times).

Each measurement runs in its own subprocess (1 torch thread) so that its peak RSS
(``ru_maxrss``) is its own; solo and pack subprocesses alternate, ``--repeats`` times, and the
median time is reported. Time counts the training steps (setup excluded, reported apart).

Usage::

    python benchmarks/bench_packs.py                     # MiniLM, K in 1 2 4 8, 12 steps
    python benchmarks/bench_packs.py --model smollm2 --kind wiki-lm --k 1 4 --steps 4 --bf16
    python benchmarks/bench_packs.py --quick             # tiny-bert smoke run

Prints a table and writes ``benchmarks/results/bench_packs.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _configs(kind: str, model: str, k: int, batch: int, bf16: bool):
    from loradyn.serialize import spec_from_dict
    from loradyn.tasks.registry import get_task

    task = get_task(kind)
    lrs = [2.0 ** -(10 + i % 4) for i in range(k)]
    section = {"kind": kind, "model": model}
    if kind in ("sentiment", "trec6"):
        section.update(n_train=2000, n_val=100, n_test=100)
        targets = ["query", "value"]
    else:
        section.update(n_train=200, n_val=8, n_test=8, max_articles=30)
        targets = ["q_proj", "v_proj"]
    return [
        spec_from_dict(task.spec_cls, {
            "task": section,
            "lora": {"rank": 8, "alpha": 16, "init": "AB"[i % 2], "target_modules": targets},
            "optim": {"name": "adamw", "lr_a": lrs[i], "lr_ratio": [1.0, 16.0][(i // 2) % 2]},
            "train": {"batch_size": batch, "bf16": bf16, "data_order_seed": 0, "threads": 1},
            "seed": i,
        })
        for i in range(k)
    ]


def worker(mode: str, kind: str, model: str, k: int, steps: int, batch: int, bf16: bool) -> dict:
    """One measurement (run in a subprocess): setup + ``steps`` steps of K adapters, solo or packed."""
    import copy

    import torch

    torch.set_num_threads(1)
    from loradyn.tasks.runner import _stepper, recipe_for

    configs = _configs(kind, model, k, batch, bf16)
    recipe = recipe_for(configs[0].task)
    base = recipe.base_model()
    rss_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    setup = train = 0.0
    groups = [configs] if mode == "pack" else [[c] for c in configs]
    for group in groups:
        t = time.perf_counter()
        step = _stepper(recipe, group, base if mode == "pack" else copy.deepcopy(base))
        setup += time.perf_counter() - t
        train += sum(step() for _ in range(steps))
        del step
    return {
        "mode": mode, "k": k, "steps": steps, "setup_s": setup, "train_s": train,
        "adapter_steps_per_s": k * steps / train,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "base_rss_mib": rss_base,
    }


def _run(mode: str, args: argparse.Namespace, k: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--kind", args.kind, "--model", args.model,
           "--k", str(k), "--steps", str(args.steps), "--batch", str(args.batch)] + (["--bf16"] if args.bf16 else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", default="sentiment")
    p.add_argument("--model", default="minilm")
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny-bert, K 1 4, 4 steps")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_packs.json"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.kind, args.model, args.k[0], args.steps, args.batch, args.bf16)))
        return
    if args.quick:
        args.model, args.k, args.steps, args.repeats = "tiny-bert", [1, 4], 4, 1
    rows = []
    for k in args.k:
        runs = {"solo": [], "pack": []}
        for _ in range(args.repeats):  # alternate so that machine load hits both alike
            for mode in ("solo", "pack"):
                runs[mode].append(_run(mode, args, k))
        for mode in ("solo", "pack"):
            r = runs[mode]
            rows.append({
                "k": k, "mode": mode,
                "adapter_steps_per_s": statistics.median(x["adapter_steps_per_s"] for x in r),
                "train_s": statistics.median(x["train_s"] for x in r),
                "setup_s": statistics.median(x["setup_s"] for x in r),
                "peak_rss_mib": max(x["peak_rss_mib"] for x in r),
                "base_rss_mib": statistics.median(x["base_rss_mib"] for x in r),
            })
    solo = {r["k"]: r for r in rows if r["mode"] == "solo"}
    print(f"{args.kind} / {args.model}, batch {args.batch}, {args.steps} steps per adapter, "
          f"bf16={args.bf16}, 1 thread, median of {args.repeats}")
    print(f"{'K':>3} {'mode':>5} {'adapter-steps/s':>16} {'train s':>9} {'setup s':>8} {'peak RSS MiB':>13} {'pack/solo speed':>16}")
    for r in rows:
        ratio = r["adapter_steps_per_s"] / solo[r["k"]]["adapter_steps_per_s"]
        print(f"{r['k']:>3} {r['mode']:>5} {r['adapter_steps_per_s']:>16.3f} {r['train_s']:>9.2f} {r['setup_s']:>8.2f} "
              f"{r['peak_rss_mib']:>13.0f} {ratio:>15.2f}x")
    from loradyn.experiments.framework import machine

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "config": {k: v for k, v in vars(args).items() if k != "worker"},
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_avg_at_end": os.getloadavg(),
        "rows": rows,
    }, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
