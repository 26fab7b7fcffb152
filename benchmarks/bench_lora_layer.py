"""Step time of one LoRA linear layer: loradyn ``LoRALinear`` vs PEFT ``lora.Linear`` vs a bare frozen Linear.

One step = forward + backward of a (batch x seq, in) -> (batch x seq, out) layer with
``x.requires_grad=True`` (an inner layer of a network, so the input gradient is computed too) and
gradients for ``lora_A`` / ``lora_B``. Cases: (in, out) in {(384, 384), (576, 1536)}, r in {8, 64},
batch x seq = 16 x 128, float32 and bf16 autocast. The three variants run interleaved (rotating
order) in the same process on the same input; the table reports medians over ``--reps`` of the
per-step *thread CPU time* (robust on a shared machine) and the wall-clock median beside it.
Merged inference: forward under ``torch.no_grad`` of a merged ``LoRALinear`` vs the bare layer.

Goals: loradyn / PEFT <= 0.95 (fwd+bwd); merged inference / bare <= 1.03.

Host facts in the JSON: the CPU model, GFLOP/s of a 2048 x 576 x 1536 GEMM in float32 and bf16 in
each layout (forward ``x @ W.T``, autograd's backward ``grad @ W`` and ``grad @ (W.T contiguous).T``),
and the half-precision workarounds :func:`loradyn.half_gemm.half_plan` chose on this host
(``LORADYN_HALF_BASE`` / ``LORADYN_HALF_RANK`` = auto|on|off force them).

Usage:
    .venv/bin/python benchmarks/bench_lora_layer.py [--reps 9] [--inner 2] [--quick]

Writes benchmarks/results/bench_lora_layer.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

torch.set_num_threads(1)

from _host import cpu_model  # noqa: E402  (benchmarks/, on sys.path as the script's folder)

from loradyn.layers import LoRALinear  # noqa: E402

SHAPES = [(384, 384), (576, 1536)]
RANKS = [8, 64]
MODES = ["fp32", "bf16-autocast"]
BATCH, SEQ = 16, 128


def build(in_f: int, out_f: int, rank: int) -> dict[str, nn.Module]:
    """Three layers with the same base weight and the same (non-zero) A and B."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = nn.Linear(in_f, out_f)
    bare = nn.Linear(in_f, out_f)
    bare.load_state_dict(base.state_dict())
    bare.requires_grad_(False)
    ours = LoRALinear(nn.Linear(in_f, out_f), rank=rank, alpha=2.0 * rank, generator=0)
    ours.base_layer.load_state_dict(base.state_dict())
    peft_model = get_peft_model(nn.Sequential(base), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["0"]))
    theirs = peft_model.base_model.model[0]
    with torch.no_grad():
        ours.lora_B.weight.normal_(0, 0.02)
        theirs.lora_A["default"].weight.copy_(ours.lora_A.weight)
        theirs.lora_B["default"].weight.copy_(ours.lora_B.weight)
    return {"bare": bare, "peft": theirs, "loradyn": ours}


def make_step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor, mode: str):
    params = [p for p in layer.parameters() if p.requires_grad]

    def step() -> None:
        x.grad = None
        for p in params:
            p.grad = None
        if mode == "bf16-autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = layer(x)
        else:
            y = layer(x)
        y.backward(grad.to(y.dtype))

    return step


def time_interleaved(steps: dict[str, callable], reps: int, inner: int) -> dict[str, list[float]]:
    """Per-rep thread-CPU and wall seconds per step of each step function, rotating the order."""
    names = list(steps)
    out: dict[str, list[float]] = {f"{n}_{k}": [] for n in names for k in ("cpu", "wall")}
    for fn in steps.values():  # warm-up (allocator, autocast caches, oneDNN primitives)
        fn()
        fn()
    for rep in range(reps):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for name in order:
            c0, w0 = time.thread_time(), time.perf_counter()
            for _ in range(inner):
                steps[name]()
            out[f"{name}_cpu"].append((time.thread_time() - c0) / inner)
            out[f"{name}_wall"].append((time.perf_counter() - w0) / inner)
    return out


def med_ms(values: list[float]) -> float:
    return round(1e3 * statistics.median(values), 3)


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median over reps of the per-rep ratio (the two ran back to back, so drift cancels)."""
    return round(statistics.median(a / b for a, b in zip(num, den)), 3)


def bench_train(reps: int, inner: int, shapes, ranks, modes) -> list[dict]:
    rows = []
    for in_f, out_f in shapes:
        for rank in ranks:
            layers = build(in_f, out_f, rank)
            x = torch.randn(BATCH, SEQ, in_f, requires_grad=True)
            grad = torch.randn(BATCH, SEQ, out_f)
            for mode in modes:
                steps = {name: make_step(layer, x, grad, mode) for name, layer in layers.items()}
                t = time_interleaved(steps, reps, inner)
                row = {"in": in_f, "out": out_f, "rank": rank, "mode": mode}
                for key, values in t.items():
                    row[f"{key}_ms"] = med_ms(values)
                row["loradyn_over_peft"] = paired_ratio(t["loradyn_cpu"], t["peft_cpu"])
                row["loradyn_over_peft_wall"] = paired_ratio(t["loradyn_wall"], t["peft_wall"])
                row["peft_over_bare"] = paired_ratio(t["peft_cpu"], t["bare_cpu"])
                row["loradyn_over_bare"] = paired_ratio(t["loradyn_cpu"], t["bare_cpu"])
                overhead_peft = row["peft_cpu_ms"] - row["bare_cpu_ms"]
                overhead_ours = row["loradyn_cpu_ms"] - row["bare_cpu_ms"]
                row["lora_overhead_ratio"] = round(overhead_ours / overhead_peft, 3) if overhead_peft > 0 else None
                rows.append(row)
                print(
                    f"{in_f:>4}x{out_f:<5} r={rank:<3} {mode:<13} bare {row['bare_cpu_ms']:8.2f}  "
                    f"peft {row['peft_cpu_ms']:8.2f}  loradyn {row['loradyn_cpu_ms']:8.2f} ms   "
                    f"loradyn/peft {row['loradyn_over_peft']:.3f} (wall {row['loradyn_over_peft_wall']:.3f})   "
                    f"(loradyn-bare)/(peft-bare) {row['lora_overhead_ratio']}",
                    flush=True,
                )
    return rows


def bench_merged(reps: int, inner: int, shapes, ranks) -> list[dict]:
    rows = []
    for in_f, out_f in shapes:
        for rank in ranks:
            layers = build(in_f, out_f, rank)
            ours, bare = layers["loradyn"], layers["bare"]
            ours.merge()
            x = torch.randn(BATCH, SEQ, in_f)

            def fwd(layer, x=x):
                def run():
                    with torch.no_grad():
                        layer(x)
                return run

            t = time_interleaved({"bare": fwd(bare), "merged": fwd(ours)}, reps, 4 * inner)
            row = {
                "in": in_f, "out": out_f, "rank": rank,
                "bare_cpu_ms": med_ms(t["bare_cpu"]), "merged_cpu_ms": med_ms(t["merged_cpu"]),
                "merged_over_bare": paired_ratio(t["merged_cpu"], t["bare_cpu"]),
                "merged_over_bare_wall": paired_ratio(t["merged_wall"], t["bare_wall"]),
            }
            rows.append(row)
            print(
                f"merged inference {in_f:>4}x{out_f:<5} r={rank:<3} bare {row['bare_cpu_ms']:7.2f}  "
                f"merged {row['merged_cpu_ms']:7.2f} ms   merged/bare {row['merged_over_bare']:.3f} "
                f"(wall {row['merged_over_bare_wall']:.3f})",
                flush=True,
            )
    return rows


def host_gemms() -> dict:
    """GFLOP/s (best of 3, thread CPU time) of the base layer's GEMMs in each layout; the plan chosen."""
    from loradyn.half_gemm import half_plan, measure_half_gemms

    gen = torch.Generator().manual_seed(0)
    n, k, m = BATCH * SEQ, 576, 1536
    flops = 2 * n * k * m
    out: dict = {"shape_n_in_out": [n, k, m]}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        x, w = torch.randn(n, k, generator=gen).to(dtype), torch.randn(m, k, generator=gen).to(dtype)
        grad, w_t = torch.randn(n, m, generator=gen).to(dtype), w.T.contiguous()
        products = {
            "x@W.T": lambda x=x, w=w: x @ w.T,
            "grad@W": lambda grad=grad, w=w: grad @ w,
            "grad@(W.T)c.T": lambda grad=grad, w_t=w_t: grad @ w_t.T,
        }
        for label, fn in products.items():
            fn()
            best = float("inf")
            for _ in range(3):
                c0 = time.thread_time()
                fn()
                best = min(best, time.thread_time() - c0)
            out[f"{name} {label} GFLOP/s"] = round(flops / max(best, 1e-9) / 1e9, 1)
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        plan = half_plan(dtype)
        out[f"{name} plan"] = {"base": plan.base, "rank": plan.rank}
        out[f"{name} plan measurement ms"] = {key: round(1e3 * v, 3) for key, v in measure_half_gemms(dtype).items()}
    out["env"] = {key: os.environ.get(key, "auto") for key in ("LORADYN_HALF_BASE", "LORADYN_HALF_RANK")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--inner", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="first shape and rank only, 3 reps")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_lora_layer.json"))
    args = parser.parse_args()
    shapes, ranks, reps = (SHAPES[:1], RANKS[:1], 3) if args.quick else (SHAPES, RANKS, args.reps)
    import peft

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    host = host_gemms()
    print(json.dumps(host))
    train = bench_train(reps, args.inner, shapes, ranks, MODES)
    merged = bench_merged(reps, args.inner, shapes, ranks)
    ratios = [r["loradyn_over_peft"] for r in train]
    summary = {
        "loradyn_over_peft_max": max(ratios),
        "loradyn_over_peft_median": round(statistics.median(ratios), 3),
        "goal_loradyn_over_peft": 0.95,
        "merged_over_bare_max": max(r["merged_over_bare"] for r in merged),
        "goal_merged_over_bare": 1.03,
    }
    print(json.dumps(summary))
    result = {
        "benchmark": "bench_lora_layer",
        "step": "forward+backward, x.requires_grad=True; medians of per-step thread CPU time",
        "batch_x_seq": [BATCH, SEQ],
        "reps": reps,
        "inner": args.inner,
        "torch": torch.__version__,
        "peft": peft.__version__,
        "threads": torch.get_num_threads(),
        "machine": cpu_model(),
        "host_gemms": host,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "seconds": round(time.perf_counter() - t0, 1),
        "train": train,
        "merged_inference": merged,
        "summary": summary,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
