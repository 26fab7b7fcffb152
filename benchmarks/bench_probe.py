"""FeatureNormProbe overhead on a MiniLM-sized LoRA training step (CPU, 1 thread).

Model: BertConfig(hidden 384, 6 layers, 12 heads, intermediate 1536), random init, float32; PEFT
LoRA r=8 on query, key, value, dense (36 pairs). One step = forward + backward + AdamW step on a
batch of random token ids. Baseline and probed steps are interleaved (ABAB...) on the same model
and batch; medians of wall and process-CPU time are reported (CPU time is the robust number on a
shared machine), plus the time spent inside the probe's hooks per step measured directly.
Goal: probe overhead <= 5 % at every=1.

Usage:
    .venv/bin/python benchmarks/bench_probe.py [--batch 16] [--seq 128] [--reps 7]

Writes benchmarks/results/bench_probe.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


def build(seed: int = 0):
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    model = get_peft_model(
        BertModel(cfg),
        LoraConfig(r=8, lora_alpha=16, target_modules=["query", "key", "value", "dense"]),
    )
    model.train()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--reps", type=int, default=7, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "bench_probe.json")
    )
    args = parser.parse_args()

    from loradyn import FeatureNormProbe
    from loradyn.discover import iter_lora_layers

    model = build()
    n_pairs = len(list(iter_lora_layers(model)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(
        0, 30522, (args.batch, args.seq), generator=torch.Generator().manual_seed(1)
    )

    def train_step() -> None:
        loss = model(input_ids=ids).last_hidden_state.pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    probe = FeatureNormProbe(model, every=1, stats=("rms", "l2"))

    def probed_step() -> None:
        with probe:  # attach/detach is part of the measured cost (a few µs)
            train_step()
            probe.step()

    probe_all = FeatureNormProbe(model, every=1, stats=("rms", "l2", "l1", "max"))

    def probed_all_step() -> None:  # l1/max materialise z_b (no Gram shortcut)
        with probe_all:
            train_step()
            probe_all.step()

    variants = {
        "baseline": train_step,
        "probe(every=1)": probed_step,
        "probe(all stats)": probed_all_step,
    }
    # wall time and process CPU time: on a shared machine CPU time is far less noisy
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.warmup):
        for fn in variants.values():
            fn()
    for _ in range(args.reps):
        for name, fn in variants.items():  # interleaved: drifts hit both variants alike
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)

    # direct cost: time spent inside the probe's per-call work, summed over one step
    inner: list[float] = []
    accumulate = probe._accumulate

    def timed_accumulate(site, z_a, x=None):
        t0 = time.perf_counter()
        accumulate(site, z_a, x)
        inner.append(time.perf_counter() - t0)

    probe._accumulate = timed_accumulate
    hook_s = []
    for _ in range(3):
        inner.clear()
        probed_step()
        hook_s.append(sum(inner))
    del probe._accumulate
    hook_s_med = statistics.median(hook_s)

    rows = []
    for name in variants:
        row = {"variant": name}
        for label, times in (("wall", wall), ("cpu", cpu)):
            base = statistics.median(times["baseline"])
            med = statistics.median(times[name])
            row[f"{label}_median_s"] = med
            row[f"{label}_min_s"] = min(times[name])
            row[f"{label}_overhead_pct"] = 100 * (med / base - 1)
        rows.append(row)
    paired_cpu = [100 * (p / b - 1) for b, p in zip(cpu["baseline"], cpu["probe(every=1)"])]
    hook_pct = 100 * hook_s_med / statistics.median(cpu["baseline"])

    print(
        f"MiniLM-sized step, batch {args.batch} x seq {args.seq}, {n_pairs} LoRA pairs, 1 thread, "
        f"{args.reps} interleaved reps"
    )
    print(
        f"{'variant':<16} {'wall med s':>10} {'wall ovh %':>10} {'cpu med s':>10} {'cpu min s':>10} {'cpu ovh %':>10}"
    )
    for r in rows:
        print(
            f"{r['variant']:<16} {r['wall_median_s']:>10.4f} {r['wall_overhead_pct']:>10.2f} "
            f"{r['cpu_median_s']:>10.4f} {r['cpu_min_s']:>10.4f} {r['cpu_overhead_pct']:>10.2f}"
        )
    print(f"median of paired CPU-time overheads: {statistics.median(paired_cpu):.2f} %")
    print(
        f"time inside probe hooks per step: {1e3 * hook_s_med:.1f} ms = {hook_pct:.2f} % of a step "
        f"(records: {len(probe.records)})"
    )

    result = {
        "benchmark": "bench_probe",
        "config": {
            "hidden": 384,
            "layers": 6,
            "heads": 12,
            "intermediate": 1536,
            "rank": 8,
            "targets": ["query", "key", "value", "dense"],
            "batch": args.batch,
            "seq": args.seq,
            "reps": args.reps,
            "warmup": args.warmup,
            "stats": ["rms", "l2"],
            "every": 1,
            "n_pairs": n_pairs,
        },
        "rows": rows,
        "paired_cpu_overhead_pct_median": statistics.median(paired_cpu),
        "hook_s_per_step": hook_s_med,
        "hook_pct_of_step": hook_pct,
        "raw_wall_s": wall,
        "raw_cpu_s": cpu,
        "env": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "device": "cpu",
            "dtype": "float32",
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
