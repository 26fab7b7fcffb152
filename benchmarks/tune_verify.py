"""Does ``loradyn tune`` find the learning rate a full grid finds, for a fraction of its compute?

Per case (task ``sentiment`` / ``trec6`` on all-MiniLM-L6-v2, or ``wiki``: SmolLM2-135M on Wikipedia
chunks by validation perplexity, always in a quick form (:data:`SMOL`); Init[A] / Init[B]; alpha convention
``fixed`` (lora_alpha 16 at every rank: rule 1/r), ``rslora`` (lora_alpha 16, use_rslora: 1/sqrt(r)),
``prop`` (lora_alpha = rank: α = 1, rule 1)), it runs

* ``loradyn.tune`` with the proxy at rank 4 and the target at rank 64 (the spec's half-octave grid
  coarsened to one octave at the proxy, one seed, searched by ``--search``: bracket (the default), grid
  or tpe; confirmation at the target with every seed);
* the full half-octave grid at rank 64 with every seed (extended by 2 octaves, at most twice, when
  its optimum sits on an edge): the measured optimum (``loradyn.analysis.optimal_lr``, refined);

and reports: transferred lr / measured optimum (goal: within 2x), the metric at the recommended lr
vs at the measured optimum (goal: within one seed std of the optimum's), and tune's trial-seconds /
the full grid's measured trial-seconds (goal: <= 30 %). Plus μA's LoRA -> full finetuning transfer:
the Init[B], α = 1 proxy optimum as the full-finetuning lr of MiniLM (every weight trained with
AdamW, the same data, steps and warm-up: :func:`fft_trial`, a ``python``-kind trial), against the
full-finetuning optimum on a half-octave grid. A goal a case misses is reported as measured, with
its curve (``--out``/<case>/curves.png and the curve table in the JSON).

Usage::

    python benchmarks/tune_verify.py --quick                      # 2 cases + the FFT check, minutes
    python benchmarks/tune_verify.py [--cases sentiment:A:fixed,trec6:B:prop] [--workers 2]
    python benchmarks/tune_verify.py --cases wiki:A:fixed,wiki:B:prop   # SmolLM2-135M, its quick form (CPU: ~1 h)

Writes ``benchmarks/results/tune_verify[_quick].json`` and prints the table (machine, date, wall).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path

from _host import cpu_model  # noqa: E402  (benchmarks/, on sys.path as the script's folder)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["query", "key", "value", "dense"]
ALPHAS = {"fixed": {"alpha": 16.0, "rslora": False}, "rslora": {"alpha": 16.0, "rslora": True},
          "prop": {"alpha": None, "rslora": False}}  # prop: lora_alpha = rank (α = 1)
RULES = {"fixed": "1/r", "rslora": "1/sqrt(r)", "prop": "1"}
FULL = {"tasks": ["sentiment", "trec6"], "inits": ["A", "B"], "alphas": ["fixed", "rslora", "prop"],
        "steps": 100, "warmup": 10, "n_train": 0, "n_val": {"sentiment": 1000, "trec6": 500}, "n_test": 100,
        "grid": [-15, -7], "fft_grid": [-18, -10], "seeds": 3, "fft_seeds": 3}
# SmolLM2-135M on Wikipedia chunks (``wiki-lm``) always runs in this quick form (one case ≈ 30 trials of
# ≈ 2 min on a 2-core CPU; bf16 where the host's bf16 GEMMs are fast): metric validation perplexity.
SMOL = {"steps": 30, "warmup": 3, "n_train": 640, "n_val": {"wiki": 32}, "n_test": 16, "grid": [-12, -7],
        "seeds": 2, "seq_len": 128, "batch_size": 8, "eval_batch_size": 16, "bf16": True}
TASKS = {"sentiment": {"kind": "sentiment", "model": None, "metric": "val_accuracy", "mode": "max", "targets": TARGETS},
         "trec6": {"kind": "trec6", "model": None, "metric": "val_accuracy", "mode": "max", "targets": TARGETS},
         "wiki": {"kind": "wiki-lm", "model": "smollm2", "metric": "val_ppl", "mode": "min",
                  "targets": ["q_proj", "v_proj"], "settings": SMOL}}
QUICK = {"tasks": ["sentiment"], "cases": ["sentiment:A:fixed", "sentiment:B:prop"], "steps": 30, "warmup": 3,
         "n_train": 640, "n_val": {"sentiment": 200, "trec6": 200}, "n_test": 50, "grid": [-12, -8],
         "fft_grid": [-15, -11], "seeds": 2, "fft_seeds": 1}


def fft_trial(config, report):
    """Full finetuning of MiniLM on a classification preset: a ``python``-kind trial.

    On the GPU where there is one (as ``train.device: auto``). Every weight trains with AdamW at ``optim.lr_a`` (linear warm-up, then constant, as loradyn's
    LoRA trials), the head drawn from the seed as loradyn draws it; the data, batches and evaluation
    are those of the ``sentiment`` / ``trec6`` kinds (:mod:`loradyn.tasks.recipes`).
    """
    import torch

    from loradyn.serialize import spec_from_dict
    from loradyn.tasks.models import reset_head_
    from loradyn.tasks.runner import recipe_for
    from loradyn.tasks.spec import SentimentSpec, Trec6Spec
    from loradyn.tasks.train import SoloPack

    torch.set_num_threads(1)
    data = dict(config["data"])
    task = spec_from_dict({"sentiment": SentimentSpec, "trec6": Trec6Spec}[data["kind"]], data)
    recipe = recipe_for(task)
    recipe.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # as train.device=auto
    seed, train, optim = config["seed"], config["train"], config["optim"]
    torch.manual_seed(seed)
    model = recipe.base_model()
    with torch.no_grad():
        reset_head_(model.classifier, seed)
    model.to(recipe.device)
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=optim["lr_a"], weight_decay=optim.get("weight_decay", 0.0))
    warmup = train.get("warmup_steps", 0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warmup if warmup and s < warmup else 1.0)
    batches = recipe.train_batches(train["batch_size"], seed)
    pack = SoloPack()
    for step in range(train["steps"]):
        loss = recipe.train_losses(model, pack, next(batches))[0]
        if not torch.isfinite(loss):
            return {"val_accuracy": math.nan, "diverged_step": step}
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        report(step + 1, train_loss=loss.item())
    model.eval()
    out = recipe.evaluate(model, pack, "val", train.get("eval_batch_size", 50), final=True)[0]
    out["final_train_loss"] = loss.item()
    return out


def _settings(quick: bool) -> dict:
    return QUICK if quick else FULL


def task_settings(task: str, s: dict) -> dict:
    """The run's settings, or the task's own (SmolLM2 runs in its quick form only)."""
    if task not in TASKS:
        raise SystemExit(f"unknown task {task!r}: use {', '.join(TASKS)}")
    return {**s, **TASKS[task].get("settings", {})}


def _spec(task: str, init: str, alpha: str, s: dict, grid: list[float], seeds: int) -> dict:
    t = TASKS[task]
    lora = {"rank": 64, "init": init, "target_modules": t["targets"], "rslora": ALPHAS[alpha]["rslora"],
            "alpha": ALPHAS[alpha]["alpha"] or 64.0}
    model = s["model"] if s.get("model", "minilm") != "minilm" else (t["model"] or "minilm")  # --model: a smoke test
    data = {"kind": t["kind"], "model": model, "n_train": s["n_train"],
            "n_val": s["n_val"][task], "n_test": s["n_test"], **({"seq_len": s["seq_len"]} if "seq_len" in s else {})}
    train = {"steps": s["steps"], "batch_size": s.get("batch_size", 16), "eval_batch_size": s.get("eval_batch_size", 50),
             "warmup_steps": s["warmup"], **({"bf16": True} if s.get("bf16") else {})}
    return {"name": f"{task}-{init}-{alpha}",
            "base": {"task": data, "lora": lora, "optim": {"name": "adamw", "lr_a": 1e-3, "lr_ratio": 1.0}, "train": train},
            "grid": {"optim.lr_a": {"log2": [grid[0], grid[1], 0.5]}}, "seeds": seeds, "metric": t["metric"],
            "mode": t["mode"]}


def _full_grid(spec: dict, out: Path, run_kw: dict, max_extend: int = 2):
    """The half-octave grid at the target, extended by 2 octaves when its optimum is on an edge."""
    from loradyn.analysis import optimal_lr
    from loradyn.sweep import run_sweep

    lo, hi = spec["grid"]["optim.lr_a"]["log2"][:2]
    for _ in range(max_extend + 1):
        spec = {**spec, "grid": {"optim.lr_a": {"log2": [lo, hi, 0.5]}}}
        df = run_sweep(spec, out, **run_kw)
        opt = optimal_lr(df, metric=spec["metric"], mode=spec["mode"]).iloc[0].to_dict()
        if opt["edge"] == "low":
            lo -= 2
        elif opt["edge"] == "high":
            hi += 2
        else:
            break
    return df, opt


def _curve(df, metric: str, mode: str = "max") -> list[dict]:
    from loradyn.analysis import seed_stats

    stats = seed_stats(df, "optim.lr_a", metric=metric, mode=mode).sort_values("optim.lr_a")
    return [{"lr": float(r["optim.lr_a"]), "log2_lr": math.log2(r["optim.lr_a"]), "mean": float(r["mean"]),
             "std": float(r["std"]), "n_failed": int(r["n_failed"])} for _, r in stats.iterrows()]


def _plot(case: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    pts = [p for p in case["full_curve"] if math.isfinite(p["mean"])]
    ax.errorbar([p["lr"] for p in pts], [p["mean"] for p in pts], yerr=[p["std"] if math.isfinite(p["std"]) else 0
                                                                       for p in pts], fmt="o-", label="full grid, rank 64")
    conf = case.get("confirm_points") or []
    ax.plot([p["lr"] for p in conf], [p["mean"] for p in conf], "s", color="tab:orange", label="tune confirmation")
    if case.get("transferred_lr"):
        ax.axvline(case["transferred_lr"], color="tab:purple", ls="--", label="transferred")
    if case.get("measured_lr") and math.isfinite(case["measured_lr"]):
        ax.axvline(case["measured_lr"], color="tab:green", ls=":", label="measured optimum")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("lr_a")
    ax.set_ylabel(case.get("metric", "val_accuracy"))
    ax.set_title(case["case"])
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _verdicts(case: dict) -> list[dict]:
    from loradyn.verdicts import Verdict, seeds_reason

    edge = f"the full grid's optimum is on its edge ({case['measured_edge']})" if case["measured_edge"] else None
    chance = (f"accuracy at chance level ({case['measured_metric']:.3f} vs majority {case['chance']:.3f})"
              if case.get("chance") is not None and case["measured_metric"] - case["chance"] <= max(
                  0.01, case["measured_std"] if math.isfinite(case["measured_std"]) else 0.0) else None)
    ratio = case["transferred_over_measured"]
    out = [Verdict.check("transferred lr within 2x of the measured optimum", "0.5 <= ratio <= 2", f"{ratio:.3g}",
                         0.5 <= ratio <= 2.0, [edge, chance])]
    gap = (case["measured_metric"] - case["recommended_metric"]) * (1 if case.get("mode", "max") == "max" else -1)
    out.append(Verdict.check("metric at the recommended lr within one seed std of the optimum's",
                             "gap <= std", f"gap {gap:.4f}, std {case['measured_std']:.4f}",
                             gap <= case["measured_std"], [seeds_reason(case["seeds"]), chance]))
    out.append(Verdict.check("tune's compute <= 30 % of the full grid's", "<= 0.30",
                             f"{case['compute_fraction_measured']:.3f}", case["compute_fraction_measured"] <= 0.30))
    return [v.to_dict() for v in out]


def run_case(task: str, init: str, alpha: str, s: dict, out: Path, run_kw: dict) -> dict:
    import loradyn

    s = task_settings(task, s)
    spec = _spec(task, init, alpha, s, s["grid"], s["seeds"])
    proxy = ["lora.rank=4"] + (["lora.alpha=4.0"] if alpha == "prop" else [])
    t0 = time.perf_counter()
    result = loradyn.tune(spec, out=out / "tune", proxy=proxy, prune=s.get("prune", False),
                          search=s.get("search", "bracket"), **run_kw)
    tune_wall = time.perf_counter() - t0
    rec = result.recommendation
    t0 = time.perf_counter()
    full, opt = _full_grid(spec, out / "full", {**run_kw, "max_trials": None})
    full_wall = time.perf_counter() - t0
    full_seconds = float(full["seconds"].sum())
    chance = float(full["val_chance_accuracy"].dropna().iloc[0]) if "val_chance_accuracy" in full.columns else None
    rec_point = next((p for p in rec["confirm"]["points"] if rec["lr_a"] is not None
                      and math.isclose(p["optim.lr_a"], rec["lr_a"], rel_tol=1e-9)), None)
    case = {
        "case": f"{task}:{init}:{alpha}", "task": task, "init": init, "alpha": alpha, "alpha_rule": RULES[alpha],
        "metric": spec["metric"], "mode": spec["mode"], "model": spec["base"]["task"]["model"],
        "seeds": s["seeds"], "proxy_lr": rec["proxy"]["optimum"]["lr_a"], "proxy_edge": rec["proxy"]["optimum"]["edge"],
        "transfer_factor": rec["transfer"]["factor"], "transfer_rules": rec["transfer"]["rules"],
        "transferred_lr": rec["transferred_lr_a"], "recommended_lr": rec["lr_a"], "decision": rec["decision"],
        "reason": rec["reason"], "measured_lr": float(opt["lr_opt"]), "measured_grid_lr": float(opt["lr_grid_opt"]),
        "measured_edge": opt["edge"], "measured_metric": float(opt["metric_opt"]),
        "measured_std": float(opt["metric_opt_std"]), "chance": chance,
        "recommended_metric": float(rec_point["mean"]) if rec_point else math.nan,
        "recommended_std": float(rec_point["std"]) if rec_point else math.nan,
        "transferred_over_measured": rec["transferred_lr_a"] / float(opt["lr_opt"]),
        "recommended_over_measured": (rec["lr_a"] or math.nan) / float(opt["lr_opt"]),
        "search": rec["proxy"]["search"]["sampler"], "proxy_trials": rec["compute"]["proxy_trials"],
        "tune_trials": rec["compute"]["tune_trials"], "tune_trial_seconds": rec["compute"]["tune_trial_seconds"],
        "full_trials": len(full), "full_trial_seconds": full_seconds,
        "compute_fraction_measured": rec["compute"]["tune_trial_seconds"] / full_seconds,
        "compute_fraction_estimated": rec["compute_fraction"], "tune_wall_s": tune_wall, "full_wall_s": full_wall,
        "full_curve": _curve(full, spec["metric"], spec["mode"]),
        "confirm_points": [{"lr": p["optim.lr_a"], "mean": p["mean"], "std": p["std"]} for p in rec["confirm"]["points"]],
        "seconds_per_trial": full_seconds / max(len(full), 1),
    }
    case["verdicts"] = _verdicts(case)
    _plot(case, out / "curves.png")
    return case


def run_fft(task: str, lora_case: dict, s: dict, out: Path, run_kw: dict) -> dict:
    """μA: the Init[B], α = 1 LoRA optimum (the proxy's, rank 4) as MiniLM's full-finetuning lr."""
    from loradyn.tuning.transfer import transfer

    moved = transfer(lora_case["proxy_lr"], init="B", target_method="full", multiplier=1.0)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    spec = {"name": f"{task}-fft", "base": {
        "task": {"kind": "python", "entry": "tune_verify:fft_trial"},
        "data": {"kind": task, "model": s.get("model", "minilm"), "n_train": s["n_train"], "n_val": s["n_val"][task],
                 "n_test": s["n_test"]},
        "optim": {"lr_a": 1e-4}, "train": {"steps": s["steps"], "batch_size": 16, "eval_batch_size": 50,
                                           "warmup_steps": s["warmup"]}},
        "grid": {"optim.lr_a": {"log2": [s["fft_grid"][0], s["fft_grid"][1], 1.0 if s["fft_seeds"] == 1 else 0.5]}},
        "seeds": s["fft_seeds"], "metric": "val_accuracy", "mode": "max"}
    full, opt = _full_grid(spec, out / "fft", {**run_kw, "max_trials": None})
    from loradyn.analysis import seed_stats

    stats = seed_stats(full, "optim.lr_a", metric="val_accuracy", mode="max")
    nearest = stats.iloc[(stats["optim.lr_a"].map(math.log2) - math.log2(moved.lr_a)).abs().argsort().iloc[0]]
    return {"case": f"{task}:B:prop -> full finetuning", "transferred_lr": moved.lr_a, "rule": moved.rules[0],
            "measured_lr": float(opt["lr_opt"]), "measured_edge": opt["edge"], "measured_metric": float(opt["metric_opt"]),
            "measured_std": float(opt["metric_opt_std"]), "nearest_grid_lr": float(nearest["optim.lr_a"]),
            "metric_at_nearest": float(nearest["mean"]),
            "transferred_over_measured": moved.lr_a / float(opt["lr_opt"]), "full_curve": _curve(full, "val_accuracy"),
            "trials": len(full), "trial_seconds": float(full["seconds"].sum())}


def _table(cases: list[dict], fft: list[dict]) -> str:
    head = ("| case | proxy lr (r=4) | transferred | recommended | measured optimum (r=64) | transferred / measured "
            "| metric at recommended | metric at optimum ± std | compute (measured) | decision |")
    lines = [head, "|" + "---|" * 10]
    for c in cases:
        lines.append(f"| {c['case']} | {c['proxy_lr']:.3g}{' (' + c['proxy_edge'] + ')' if c['proxy_edge'] else ''} "
                     f"| {c['transferred_lr']:.3g} | {c['recommended_lr'] or float('nan'):.3g} "
                     f"| {c['measured_lr']:.3g}{' (' + c['measured_edge'] + ')' if c['measured_edge'] else ''} "
                     f"| {c['transferred_over_measured']:.2f} | {c['recommended_metric']:.4f} "
                     f"| {c['measured_metric']:.4f} ± {c['measured_std']:.4f} | {c['compute_fraction_measured']:.0%} "
                     f"| {c['decision']} |")
    for f in fft:
        lines.append(f"| {f['case']} | — | {f['transferred_lr']:.3g} | — | {f['measured_lr']:.3g}"
                     f"{' (' + f['measured_edge'] + ')' if f['measured_edge'] else ''} | "
                     f"{f['transferred_over_measured']:.2f} | {f['metric_at_nearest']:.4f} (nearest grid lr) | "
                     f"{f['measured_metric']:.4f} ± {f['measured_std']:.4f} | — | — |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 cases, 30 steps, a narrow grid, 2 seeds")
    parser.add_argument("--cases", default=None, help="comma-separated task:init:alpha (alpha: fixed, rslora, prop)")
    parser.add_argument("--no-fft", action="store_true", help="skip the LoRA -> full finetuning check")
    parser.add_argument("--out", default=None, help="output folder (default runs/tune-verify[-quick])")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--prune", action="store_true", help="tune with Optuna's successive-halving pruner")
    parser.add_argument("--search", default="bracket", choices=("bracket", "grid", "tpe"), help="tune's proxy search")
    parser.add_argument("--model", default="minilm",
                        help="minilm, or tiny-bert (classification) / tiny-llama (wiki) for a smoke test of the script")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the mode's)")
    parser.add_argument("--executor", default="process", choices=("serial", "process", "ray"))
    parser.add_argument("--json", default=None, help="where the JSON goes (default benchmarks/results/tune_verify*.json)")
    args = parser.parse_args(argv)
    s = dict(_settings(args.quick), model=args.model, prune=args.prune, search=args.search)
    if args.steps:
        s.update(steps=args.steps, warmup=min(s["warmup"], max(args.steps // 10, 0)))
    if args.cases:
        cases = args.cases.split(",")
    elif args.quick:
        cases = list(QUICK["cases"])
    else:
        cases = [f"{t}:{i}:{a}" for t in FULL["tasks"] for i in FULL["inits"] for a in FULL["alphas"]]
    out = Path(args.out or f"runs/tune-verify{'-quick' if args.quick else ''}")
    run_kw = {"executor": args.executor, "workers": args.workers, "quiet": True}
    start = time.perf_counter()
    done, fft = [], []
    cpu = cpu_model()
    full_cases = len(FULL["tasks"]) * len(FULL["inits"]) * len(FULL["alphas"])
    target = ROOT / "benchmarks" / "results" / f"tune_verify{'_quick' if args.quick else ''}{'_prune' if args.prune else ''}.json"
    if args.json:
        target = Path(args.json)

    def write() -> dict:  # after every case, so that a run cut short keeps what it measured
        trials = sum(c["tune_trials"] + c["full_trials"] for c in done) + sum(f["trials"] for f in fft)
        trial_s = (sum(c["tune_trial_seconds"] + c["full_trial_seconds"] for c in done)
                   + sum(f["trial_seconds"] for f in fft))
        report = {"quick": args.quick, "date": datetime.date.today().isoformat(), "machine": cpu,
                  "device": _device_name(), "cpus": os.cpu_count(), "workers": args.workers,
                  "wall_s": time.perf_counter() - start, "trials": trials, "trial_seconds": trial_s,
                  "settings": {k: v for k, v in s.items()}, "cases": done, "fft": fft,
                  "cases_asked": cases, "complete": len(done) == len(cases),
                  "full_run_estimate": _estimate_full(done, s, full_cases, args.workers),
                  "command": "python benchmarks/tune_verify.py" + (" --quick" if args.quick else "")
                  + (" --prune" if args.prune else "") + (f" --cases {args.cases}" if args.cases else "")}
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(report, indent=1, default=str) + "\n")
        return report

    for name in cases:
        task, init, alpha = name.split(":")
        t0 = time.perf_counter()
        case = run_case(task, init, alpha, s, out / name.replace(":", "-"), run_kw)
        case["wall_s"] = time.perf_counter() - t0
        done.append(case)
        print(f"{name}: transferred/measured {case['transferred_over_measured']:.2f}, compute "
              f"{case['compute_fraction_measured']:.0%}, {case['wall_s']:.0f} s", flush=True)
        write()
        if not args.no_fft and init == "B" and alpha == "prop" and task != "wiki":  # LoRA -> FFT right after its case
            t0 = time.perf_counter()
            f = run_fft(task, case, s, out / f"{task}-fft", run_kw)
            f["wall_s"] = time.perf_counter() - t0
            fft.append(f)
            print(f"{task} LoRA -> full finetuning: {f['wall_s']:.0f} s", flush=True)
            write()
    report = write()
    wall, trials, trial_s, estimate = report["wall_s"], report["trials"], report["trial_seconds"], report["full_run_estimate"]
    print(_table(done, fft))
    for c in done:
        for v in c["verdicts"]:
            print(f"{c['case']}: {v['status']}: {v['claim']} ({v['measured']}){' — ' + v['reason'] if v['reason'] else ''}")
    print(f"{'quick' if args.quick else 'full'} run: {trials} trials, {trial_s / 3600:.2f} CPU-h of trials, wall "
          f"{wall / 60:.1f} min, {cpu}, {os.cpu_count()} CPUs, {report['date']}")
    print(f"estimated full run ({full_cases} cases + FFT, {FULL['seeds']} seeds, {FULL['steps']} steps): "
          f"{estimate['cpu_hours']:.1f} CPU-h, about {estimate['wall_hours']:.1f} h on {args.workers} workers")
    print(f"wrote {target}")
    return 0


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def _estimate_full(done: list[dict], s: dict, n_cases: int, workers: int) -> dict:
    """The full run's cost from this run's measured seconds per trial, scaled by steps and evaluation rows."""
    if not done:
        return {"cpu_hours": math.nan, "wall_hours": math.nan}
    per_trial = sum(c["seconds_per_trial"] for c in done) / len(done)
    full_lrs = int((FULL["grid"][1] - FULL["grid"][0]) / 0.5) + 1
    # scale: training steps and validation rows (both taken as linear in the cost)
    train_share = 0.8
    scale = train_share * FULL["steps"] / s["steps"] + (1 - train_share) * (
        max(FULL["n_val"].values()) / max(s["n_val"].values()))
    full_grid = full_lrs * FULL["seeds"]
    coarse = full_lrs // 2 + 1  # the proxy's one-octave points
    # proxy: bracket ~6 points (3 starts and the walk); grid: every point and up to 2 fills; prune: rung 0 at 1/3
    proxy = 6 if s.get("search", "bracket") == "bracket" else coarse + 2
    tune = (coarse / 3 + 5 if s.get("prune") else proxy) + 3 * FULL["seeds"]  # + the confirmation
    fft = (int((FULL["fft_grid"][1] - FULL["fft_grid"][0]) / 0.5) + 1) * FULL["fft_seeds"] * len(FULL["tasks"])
    trials = n_cases * (full_grid + tune) + fft
    cpu_s = trials * per_trial * scale
    return {"per_trial_s_measured": per_trial, "scale": scale, "trials": trials, "cpu_hours": cpu_s / 3600,
            "wall_hours": cpu_s / 3600 / workers,
            "assumption": f"{n_cases} cases x ({full_grid} full-grid + about {tune:.0f} tune trial-equivalents) + {fft} FFT trials, "
                          f"each {per_trial:.0f} s x {scale:.2f} (steps {FULL['steps']}/{s['steps']} for 80 % of the "
                          "cost, validation rows for 20 %); no grid extension"}


if __name__ == "__main__":
    sys.exit(main())
