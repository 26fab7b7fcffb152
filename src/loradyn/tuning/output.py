"""What ``loradyn tune`` writes: ``recommendation.json`` (docs/schema.md), the PEFT ``LoraConfig`` +
``TrainingArguments`` snippet, the evidence table (every proxy and confirmation trial) and the
compute spent against the estimated cost of the full target grid."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from .plan import TunePlan, dotted

__all__ = ["SCHEMA_VERSION", "compute_summary", "evidence_table", "peft_settings", "snippet_text", "write_json"]

SCHEMA_VERSION = 1
_CLS_KINDS = ("sentiment", "trec6", "hf-classify")
_LM_KINDS = ("wiki-lm", "gsm", "hf-causal-lm", "hf-sft")


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def compute_summary(plan: TunePlan, proxy: pd.DataFrame, confirm: pd.DataFrame, factor: float) -> dict[str, Any]:
    """Tune's trial-seconds against the full target grid's, estimated from the confirmation's measured
    seconds per trial (confirmation trials *are* target trials)."""
    proxy_s = float(pd.to_numeric(proxy.get("seconds"), errors="coerce").fillna(0).sum()) if len(proxy) else 0.0
    seconds = pd.to_numeric(confirm.get("seconds"), errors="coerce") if len(confirm) else pd.Series(dtype=float)
    confirm_s = float(seconds.fillna(0).sum())
    done = confirm[confirm["status"] == "done"] if len(confirm) else confirm
    per_trial = float(pd.to_numeric(done["seconds"], errors="coerce").mean()) if len(done) else \
        (float(seconds.mean()) if len(seconds) else math.nan)
    if plan.full_lrs is not None:
        lrs, where = list(plan.full_lrs), "the target spec's optim.lr_a axis"
    else:  # no axis in the spec: half-octave steps over the proxy's range, moved by the transfer
        lo, hi = math.log2(min(plan.lrs) * factor), math.log2(max(plan.lrs) * factor)
        lrs = [2.0 ** (lo + 0.5 * k) for k in range(int(round((hi - lo) / 0.5)) + 1)]
        where = "a half-octave grid over the proxy's optim.lr_a range moved by the transfer factor (the spec has no axis)"
    n_axes = math.prod(plan.full_axes.values()) if plan.full_axes else 1
    n_full = len(lrs) * n_axes * len(plan.confirm_seeds)
    est = n_full * per_trial
    axes = "".join(f" x {n} {k}" for k, n in plan.full_axes.items())
    return {
        "proxy_trials": int(len(proxy)), "confirm_trials": int(len(confirm)),
        "tune_trials": int(len(proxy) + len(confirm)),
        "proxy_trial_seconds": proxy_s, "confirm_trial_seconds": confirm_s, "tune_trial_seconds": proxy_s + confirm_s,
        "full_grid": {
            "optim.lr_a": lrs, "axes": dict(plan.full_axes), "seeds": list(plan.confirm_seeds), "n_trials": n_full,
            "seconds_per_trial": _float(per_trial), "est_trial_seconds": _float(est),
            "assumption": f"{len(lrs)} learning rates ({where}){axes} x {len(plan.confirm_seeds)} seeds at the target, "
                          "each costing the confirmation's mean measured seconds per finished trial",
        },
        "compute_fraction": _float((proxy_s + confirm_s) / est) if est and est > 0 else None,
    }


def evidence_table(plan: TunePlan, proxy: pd.DataFrame, confirm: pd.DataFrame, transferred: float) -> pd.DataFrame:
    """One row per proxy and confirmation trial: stage, configuration, seed, status, metric, seconds."""
    cols = ["trial_id", "lora.init", "optim.lr_ratio", "optim.lr_a", "optim.lr_b", "lora.rank", "lora.alpha",
            "lora.rslora", "lora.alpha_rule", "lora.method", "task.width", "task.model", "train.steps", "seed",
            "status", plan.metric, "seconds", "error"]
    frames = []
    for df, default_stage in ((proxy, "proxy"), (confirm, "confirm")):
        if not len(df):
            continue
        part = df[[c for c in cols if c in df.columns]].copy()
        part.insert(0, "stage", df["stage"] if "stage" in df.columns else default_stage)
        if default_stage == "confirm":
            part.insert(1, "multiplier", [round(float(v) / transferred, 6) for v in part["optim.lr_a"]])
        frames.append(part)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["stage"])
    if "multiplier" not in table.columns:
        table.insert(1, "multiplier", math.nan)
    return table


def peft_settings(plan: TunePlan, cfg: dict[str, Any], rec: dict[str, Any]) -> dict[str, Any]:
    """``LoraConfig`` and ``TrainingArguments`` keyword arguments and ``loradyn.hf.setup`` arguments for
    the recommendation at the target (``cfg``: the target's resolved configuration)."""
    lora: dict[str, Any] | None = None
    if plan.target_method != "full":
        rank = dotted(cfg, "lora.rank", dotted(cfg, "lora.r"))
        lora = {"r": rank}
        rule = dotted(cfg, "lora.alpha_rule")
        if rule is not None and isinstance(rank, int):  # the multiplier α = r^-γ as PEFT's lora_alpha / r
            from ..scaling import alpha_value

            lora.update(lora_alpha=rank * alpha_value(rule, rank), use_rslora=False)
        elif dotted(cfg, "lora.alpha") is not None:
            lora.update(lora_alpha=dotted(cfg, "lora.alpha"), use_rslora=bool(dotted(cfg, "lora.rslora", False)))
        if dotted(cfg, "lora.dropout") is not None:
            lora["lora_dropout"] = dotted(cfg, "lora.dropout")
        targets = dotted(cfg, "lora.target_modules")
        lora["target_modules"] = list(targets) if isinstance(targets, (list, tuple)) else (targets or "all-linear")
        if dotted(cfg, "lora.modules_to_save") is not None:
            lora["modules_to_save"] = list(dotted(cfg, "lora.modules_to_save"))
        if plan.kind in _CLS_KINDS:
            lora["task_type"] = "SEQ_CLS"
        elif plan.kind in _LM_KINDS:
            lora["task_type"] = "CAUSAL_LM"
    train = dict(dotted(cfg, "train", {}) or {})
    optim = dict(dotted(cfg, "optim", {}) or {})
    args: dict[str, Any] = {"output_dir": "out", "learning_rate": rec["lr_a"]}
    if isinstance(train.get("steps"), int):
        args["max_steps"] = train["steps"]
    batch = train.get("batch_size", dotted(cfg, "task.n_train") if plan.kind == "synthetic" else None)
    if isinstance(batch, int):
        args["per_device_train_batch_size"] = batch
    if (train.get("grad_accum") or 1) > 1:
        args["gradient_accumulation_steps"] = train["grad_accum"]
    warmup = train.get("warmup_steps") or 0
    if warmup:
        args["warmup_steps"] = warmup
    schedule = train.get("schedule", "constant")
    args["lr_scheduler_type"] = "linear" if schedule == "linear" else (
        "constant_with_warmup" if warmup else "constant")
    if optim:
        args["optim"] = "adamw_torch"
        args["weight_decay"] = float(optim.get("weight_decay", 0.0))
        betas = optim.get("betas") or (0.9, 0.999)
        args.update(adam_beta1=float(betas[0]), adam_beta2=float(betas[1]), adam_epsilon=float(optim.get("eps", 1e-8)))
    args["max_grad_norm"] = float(train["max_grad_norm"]) if train.get("max_grad_norm") else 0.0
    precision = train.get("precision")
    if precision in ("bf16", "fp16"):
        args[precision] = True
    args["seed"] = int(plan.confirm_seeds[0])
    setup = None if lora is None else {"init": rec["init"], "lr_ratio": rec["lr_ratio"], "seed": int(plan.confirm_seeds[0])}
    return {"lora_config": lora, "training_arguments": args, "loradyn_setup": setup}


def snippet_text(plan: TunePlan, settings: dict[str, Any], rec: dict[str, Any]) -> str:
    """A runnable PEFT + transformers snippet (``base_model`` and ``train_dataset`` are yours)."""
    decision = rec["decision"] + (f" ({rec['reason']})" if rec.get("reason") else "")
    head = [f"# loradyn tune: the recommendation for {plan.name!r} (task {plan.kind}) at the target",
            f"# init {rec['init']}, lr_a {rec['lr_a']:.4g}, lr_ratio {rec['lr_ratio']:g} (lr_b {rec['lr_b']:.4g}); "
            f"transferred lr_a {rec['transferred_lr_a']:.4g}; confirmation: {decision}"]
    if plan.kind == "synthetic":
        head.append("# (the synthetic toy has one adapted matrix: target your model's modules)")
    args = settings["training_arguments"]
    arg_text = ",\n    ".join(f"{k}={v!r}" for k, v in args.items())
    lines = head + ["import transformers"]
    lora = settings["lora_config"]
    if lora is not None:
        lines += ["from peft import LoraConfig, get_peft_model", "", "import loradyn", "",
                  "lora_config = LoraConfig(\n    " + ",\n    ".join(f"{k}={v!r}" for k, v in lora.items()) + ",\n)",
                  "model = get_peft_model(base_model, lora_config)  # base_model: your pretrained model"]
    else:
        lines += ["", "model = base_model  # full finetuning: every weight trains"]
    setup = settings["loradyn_setup"]
    lines += [f"args = transformers.TrainingArguments(\n    {arg_text},\n)",
              "trainer = transformers.Trainer(model=model, args=args, train_dataset=train_dataset)"]
    if setup is not None:
        lines.append(f"loradyn.hf.setup(trainer, init={setup['init']!r}, lr_ratio={float(setup['lr_ratio'])!r}, "
                     f"seed={setup['seed']!r})  # Init[{setup['init']}]; lr_b = lr_ratio x lr_a (LoRA+)")
    lines.append("trainer.train()")
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically (temporary file + rename), with non-finite numbers as null."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_plain(data), indent=2, default=str) + "\n")
    os.replace(tmp, path)
