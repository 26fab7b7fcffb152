"""Cost of the instability alarm (train.alarm, on by default) against the same training with it off.

1. A MiniLM-sized LoRA training step (CPU, 1 thread): BERT hidden 384, 6 layers, 12 heads,
   intermediate 1536, random init, float32, PEFT r=8 on query/key/value/dense. Baseline step vs the
   step with what the sweep loop adds when the alarm is on: a FeatureNormProbe every step with
   stats ``rms`` and the adapter inputs, ``take_rows``, the update sizes of every layer and one
   AlarmMonitor check (:class:`loradyn.alarm_watch.ModelWatch`). Interleaved, CPU-time medians.
2. The synthetic engine: one pack of K configurations (Init[A], lrs around the optimum) trained
   with ``train.alarm.enabled`` true vs false, interleaved repetitions, CPU-time medians.

Usage:
    .venv/bin/python benchmarks/bench_alarm.py [--reps 7] [--width 1024] [--k 16] [--steps 200]

Writes benchmarks/results/bench_alarm.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


def _cpu_median(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        c0 = time.process_time()
        fn()
        out.append(time.process_time() - c0)
    return out


def bench_real(reps: int, batch: int, seq: int) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertModel

    from loradyn import FeatureNormProbe
    from loradyn.alarm import AlarmSpec
    from loradyn.alarm_watch import ModelWatch

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512)
    model = get_peft_model(BertModel(cfg), LoraConfig(r=8, lora_alpha=16, target_modules=["query", "key", "value", "dense"]))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, 30522, (batch, seq), generator=torch.Generator().manual_seed(1))
    probe = FeatureNormProbe(model, every=1, stats=("rms",), inputs=True)
    watch = ModelWatch(model, ["default"], AlarmSpec())
    step = [0]

    def train_step() -> float:
        loss = model(input_ids=ids).last_hidden_state.pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def alarm_step() -> None:
        with probe:
            loss = train_step()
            probe.step()
            watch.observe(step[0], {"default": loss}, probe.take_rows(), ["default"])
        step[0] += 1

    for _ in range(2):
        train_step()
        alarm_step()
    base, alarm = [], []
    for _ in range(reps):  # interleaved: drifts hit both alike
        base += _cpu_median(train_step, 1)
        alarm += _cpu_median(alarm_step, 1)
    b, a = statistics.median(base), statistics.median(alarm)
    paired = statistics.median([y / x - 1 for x, y in zip(base, alarm)])
    return {"batch": batch, "seq": seq, "pairs": len(watch.updates), "baseline_s": b, "alarm_s": a,
            "overhead": a / b - 1, "paired_median_overhead": paired, "reps": reps}


def bench_synthetic(reps: int, width: int, k: int, steps: int) -> dict:
    from loradyn.synthetic import run_pack

    def configs(enabled: bool):
        return [{"task": {"width": width}, "lora": {"init": "A"}, "optim": {"lr_a": 2.0 ** (-9 + i * 0.25)},
                 "train": {"steps": steps, "alarm": {"enabled": enabled}}, "seed": 0} for i in range(k)]

    on, off = configs(True), configs(False)
    # the same work in both variants: the alarm must stop nothing here (else "on" would train less)
    statuses = {name: [r.status for r in run_pack(cfgs)] for name, cfgs in (("on", on), ("off", off))}
    t_on, t_off = [], []
    for _ in range(reps):
        t_off += _cpu_median(lambda: run_pack(off), 1)
        t_on += _cpu_median(lambda: run_pack(on), 1)
    a, b = statistics.median(t_on), statistics.median(t_off)
    return {"width": width, "k": k, "steps": steps, "statuses": statuses, "same_statuses": statuses["on"] == statuses["off"],
            "alarm_off_s": b, "alarm_on_s": a, "overhead": a / b - 1,
            "paired_median_overhead": statistics.median([y / x - 1 for x, y in zip(t_off, t_on)]), "reps": reps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--syn-reps", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_alarm.json"))
    args = parser.parse_args()
    t0 = time.time()
    real = bench_real(args.reps, args.batch, args.seq)
    print(f"MiniLM-sized step ({real['pairs']} LoRA pairs, {args.batch}x{args.seq}): baseline "
          f"{real['baseline_s']:.3f} s, with the alarm {real['alarm_s']:.3f} s: {100 * real['overhead']:+.2f} % "
          f"(paired median {100 * real['paired_median_overhead']:+.2f} %)")
    syn = bench_synthetic(args.syn_reps, args.width, args.k, args.steps)
    print(f"synthetic pack n={args.width} K={args.k} T={args.steps}: alarm off {syn['alarm_off_s']:.2f} s, on "
          f"{syn['alarm_on_s']:.2f} s: {100 * syn['overhead']:+.2f} % (paired median "
          f"{100 * syn['paired_median_overhead']:+.2f} %); same statuses with and without: {syn['same_statuses']}")
    result = {"real": real, "synthetic": syn, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "date": datetime.date.today().isoformat(), "wall_s": time.time() - t0}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
