"""One SmolLM2 LoRA training step (forward + backward + AdamW) through the task code, four ways.

Variants, each on its own copy of the base model with LoRA r = 8 on q_proj / v_proj:

* ``fp32 logits`` (baseline): ``model(**inputs).logits`` → float32 ``cross_entropy`` over every
  position (the path the tasks took before the fused loss), SDPA attention;
* ``bf16 autocast logits`` (baseline): the same under ``torch.autocast("cpu", bfloat16)``;
* ``fp32 loradyn``: the tasks' path: decoder hidden states at labelled positions only →
  :func:`loradyn.fused_ce.linear_cross_entropy`;
* ``bf16 loradyn``: the tasks' path with ``train.bf16``: frozen Linear weights stored in bf16,
  eager attention, fused loss (:mod:`loradyn.tasks.precision`).

Variants alternate step by step (after one warm-up step each) so that load from other processes
hits all alike; the medians of wall time per step are reported, with the speed-up over the fp32
baseline. Shapes: ``wiki`` = 8 × 128-token Wikipedia chunks (every position labelled), ``gsm`` =
8 gsm_symbolic problems padded to the longest (loss on answer tokens only).

Usage::

    python benchmarks/bench_causal_step.py                 # wiki and gsm, 3 timed steps each
    python benchmarks/bench_causal_step.py --shapes wiki --steps 5

Prints a table and writes ``benchmarks/results/bench_causal_step.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

VARIANTS = ["fp32 logits", "bf16 autocast logits", "fp32 loradyn", "bf16 loradyn"]


def _config(shape: str, bf16: bool):
    from loradyn.serialize import spec_from_dict
    from loradyn.tasks.spec import GsmTrial, WikiLMTrial

    if shape == "wiki":
        return spec_from_dict(WikiLMTrial, {"task": {"n_val": 8, "n_test": 8},
                                            "train": {"batch_size": 8, "bf16": bf16}})
    return spec_from_dict(GsmTrial, {"task": {"n_train": 64, "n_val": 8, "n_test": 8},
                                     "train": {"batch_size": 8, "bf16": bf16}})


def _logits_losses(model, pack, batch):
    """The baseline: full logits, float32 cross-entropy over the labelled positions."""
    from loradyn.tasks.recipes import IGNORE

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    lg = logits[:, :-1].float()
    return [F.cross_entropy(lg.reshape(-1, lg.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE)]


def _stepper(recipe, base, variant: str, shape: str):
    from loradyn.tasks.train import SoloPack, build_model, build_optimizer

    bf16 = variant.startswith("bf16")
    config = _config(shape, bf16 and "loradyn" in variant)  # baselines get no bf16 preparation
    model, names = build_model(recipe, [config], copy.deepcopy(base))
    optimizer = build_optimizer(model, names, [config])
    batches = recipe.train_batches(8, 0)
    losses = _logits_losses if "logits" in variant else recipe.train_losses
    model.train()

    def step() -> tuple[float, float]:
        batch = next(batches)
        t0 = time.perf_counter()
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            loss = losses(model, SoloPack(), batch)[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, float(loss.detach())

    return step


def run(shapes, steps: int) -> list[dict]:
    from loradyn.tasks.runner import recipe_for

    rows = []
    for shape in shapes:
        recipe = recipe_for(_config(shape, False).task)
        base = recipe.base_model()
        steppers = {v: _stepper(recipe, base, v, shape) for v in VARIANTS}
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        losses: dict[str, float] = {}
        for v in VARIANTS:
            steppers[v]()  # warm-up (and the same batch order for every variant)
        for _ in range(steps):
            for v in VARIANTS:
                seconds, loss = steppers[v]()
                times[v].append(seconds)
                losses[v] = loss
        batch = next(recipe.train_batches(8, 0))
        tokens = int(batch["attention_mask"].sum())
        labelled = int((batch["labels"][:, 1:] != -100).sum())
        base_t = statistics.median(times[VARIANTS[0]])
        for v in VARIANTS:
            med = statistics.median(times[v])
            rows.append({"shape": shape, "variant": v, "step_s": med, "min_s": min(times[v]),
                         "speedup_vs_fp32_logits": base_t / med, "last_loss": losses[v],
                         "tokens": tokens, "labelled_tokens": labelled})
        del steppers, base
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["wiki", "gsm"], choices=["wiki", "gsm"])
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = run(args.shapes, args.steps)
    print(f"{'shape':<6} {'variant':<22} {'step s':>8} {'min s':>8} {'× fp32 logits':>14} {'loss':>8}")
    for r in rows:
        print(f"{r['shape']:<6} {r['variant']:<22} {r['step_s']:8.2f} {r['min_s']:8.2f} "
              f"{r['speedup_vs_fp32_logits']:14.2f} {r['last_loss']:8.4f}")
    out = Path(__file__).parent / "results" / "bench_causal_step.json"
    out.parent.mkdir(exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": 1, "steps": args.steps, "load_avg": os.getloadavg()}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
