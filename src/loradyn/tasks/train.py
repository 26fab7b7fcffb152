"""The training loop of the real-model tasks: solo PEFT runs and multi-adapter packs, one code path.

:func:`train_trials` trains trial configurations that share a pack key either together, as one
:class:`loradyn.packs.AdapterPack` on one base model, or one after the other as solo PEFT runs
(each on a fresh copy of the base). Everything goes through the core: PEFT LoRA layers,
:func:`loradyn.init_lora_` (per adapter in a pack), LoRA+ param groups
(:func:`loradyn.create_loraplus_optimizer`), :class:`loradyn.FeatureNormProbe`.

A trial whose training loss becomes non-finite is frozen at that step and reported ``diverged``;
the other adapters of its pack go on unaffected. So is a trial whose instability alarm fires
(``train.alarm``, :mod:`loradyn.alarm`): it stops after that step, with the step, the layer, the
feature and the likely fix in its metrics and its ``error`` line.

The model and every batch go to ``train.device`` (:mod:`loradyn.tasks.device`); forward and
backward run under autocast in ``train.precision`` (:mod:`loradyn.tasks.precision`), fp16 with a
gradient scaler; an optimizer step accumulates ``train.grad_accum`` micro-batches.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from ..alarm import alarm_line, alarm_metrics, likely_fix
from ..alarm_watch import ModelWatch
from ..errors import LoradynError
from ..init_methods import apply_init_, modifies_base
from ..optim import create_loraplus_optimizer
from ..packs import (
    AdapterPack,
    add_adapters,
    clip_grad_norm_per_adapter,
    pack_param_groups,
)
from ..probes import FeatureNormProbe
from .device import resolve_device
from .models import check_targets, lora_config
from .precision import autocast, grad_scaler, prepare_half_, stores_half
from .pulse import report_steps
from .registry import TrialResult

__all__ = ["train_trials", "SoloPack"]


class SoloPack:
    """The pack interface for one adapter trained by plain PEFT (no routing)."""

    k = 1

    def __init__(self, adapter: str = "default") -> None:
        self.adapters = [adapter]

    def __enter__(self) -> SoloPack:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def repeat(self, batch):
        return dict(batch)

    def split(self, tensor):
        return (tensor,)

    def drop(self, adapter: str) -> None:
        if adapter in self.adapters:
            self.adapters.remove(adapter)


def _optimizer_cls(name: str):
    return {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]


def _schedule(train, steps: int):
    def factor(step: int) -> float:
        if train.warmup_steps and step < train.warmup_steps:
            return (step + 1) / train.warmup_steps
        if train.schedule == "linear":
            rest = max(steps - train.warmup_steps, 1)
            return max(0.0, 1.0 - (step - train.warmup_steps) / rest)
        return 1.0

    return factor


def prepare_precision(model, train) -> None:
    """bf16 on the CPU: frozen Linear weights stored in bf16, eager attention (precision.py)."""
    if stores_half(resolve_device(train.device), train.precision):
        prepare_half_(model, torch.bfloat16)


def build_model(recipe, configs: Sequence[Any], base=None, *, dtype: torch.dtype = torch.float32):
    """A PEFT model over ``base`` with one adapter per config (``default`` when solo), initialised.

    Each adapter gets its config's ``lora.init`` (:func:`loradyn.init_methods.apply_init_`, seeded
    with the trial seed). An init that rewrites the base weight (pissa, olora) must run solo.

    Returns:
        ``(model, adapter_names)``.
    """
    from peft import get_peft_model

    first = configs[0]
    rewriting = [c.lora.init for c in configs if modifies_base(c.lora.init)]
    if rewriting and len(configs) > 1:
        raise LoradynError(f"init {rewriting[0]!r} rewrites the base weights: such a trial cannot share a pack, run it solo")
    base = recipe.base_model(dtype) if base is None else base
    targets = check_targets(base, first.lora.target_modules)
    peft_config = lora_config(first.lora, task_type=recipe.task_type, targets=targets)
    names = ["default"] if len(configs) == 1 else [f"t{i}" for i in range(len(configs))]
    with warnings.catch_warnings():  # peft 0.21 reads a property transformers 5 deprecates
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(base, peft_config, adapter_name=names[0])
    if len(names) > 1:
        add_adapters(model, names[1:], peft_config)
    for name, c in zip(names, configs):  # one init path for solo runs and packs
        apply_init_(model, c.lora.init, std_a=c.lora.std_a, std_b=c.lora.std_b, distribution=c.lora.distribution,
                    generator=c.seed, adapter=name)
        recipe.reset_head(model, name, c.seed)
    prepare_precision(model, first.train)
    return model, names


def build_optimizer(model, names: Sequence[str], configs: Sequence[Any]):
    """LoRA+ AdamW/Adam: ``create_loraplus_optimizer`` solo, per-adapter groups in a pack."""
    o = configs[0].optim
    cls = _optimizer_cls(o.name)
    kw = dict(betas=tuple(o.betas), eps=o.eps)
    if len(names) == 1:
        return create_loraplus_optimizer(model, cls, lr=o.lr_a, lr_ratio=o.lr_ratio, weight_decay=o.weight_decay, **kw)
    settings = {n: {"lr": c.optim.lr_a, "lr_ratio": c.optim.lr_ratio, "weight_decay": c.optim.weight_decay}
                for n, c in zip(names, configs)}
    return cls(pack_param_groups(model, settings), lr=o.lr_a, **kw)


def train_trials(recipe, configs: Sequence[Any], *, pack: bool, base=None, dtype: torch.dtype = torch.float32,
                 keep_model: bool = False) -> list[TrialResult] | tuple[list[TrialResult], Any]:
    """Train ``configs`` (same pack key) as one pack or as sequential solo runs.

    Args:
        recipe: the task's recipe (data, losses, evaluation).
        configs: trial configurations.
        pack: train them together on one base model (else one solo PEFT run each).
        base: a base model to use (solo runs use deep copies of it); loaded when None.
        dtype: parameter dtype of a base loaded here.
        keep_model: also return the trained model(s) (tests).

    Returns:
        One :class:`TrialResult` per config, in order (and the models when ``keep_model``).
    """
    base = recipe.base_model(dtype) if base is None else base
    if pack and len(configs) > 1:
        results, model = _train(recipe, configs, base)
        return (results, [model]) if keep_model else results
    results, models = [], []
    total = sum(c.train.steps for c in configs)
    for i, c in enumerate(configs):
        res, model = _train(recipe, [c], copy.deepcopy(base), steps_before=i * c.train.steps, steps_total=total)
        results.extend(res)
        if keep_model:  # else each trained copy of the base is freed before the next solo run
            models.append(model)
        del model
    return (results, models) if keep_model else results


def _train(recipe, configs: Sequence[Any], base, *, steps_before: int = 0,
           steps_total: int | None = None) -> tuple[list[TrialResult], Any]:
    """Train ``configs`` together; heartbeats count ``steps_before`` + this run's steps of ``steps_total``."""
    t0 = time.perf_counter()
    train = configs[0].train
    torch.set_num_threads(train.threads)
    device = resolve_device(train.device)
    model, names = build_model(recipe, configs, base)
    if device.type != "cpu":
        model.to(device)
    optimizer = build_optimizer(model, names, configs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(train, train.steps))
    scaler = grad_scaler(device, train.precision)
    router = AdapterPack(model, names) if len(names) > 1 else SoloPack(names[0])
    seed = train.data_order_seed if train.data_order_seed is not None else configs[0].seed
    batches = recipe.train_batches(train.batch_size, seed)
    index = {n: i for i, n in enumerate(names)}
    losses: list[list[float]] = [[] for _ in names]
    curves: list[list[dict[str, Any]]] = [[] for _ in names]
    diverged: dict[str, int] = {}
    skipped = 0
    probe, watch, kept = _probe_and_watch(model, names, train)
    alarms = {}
    model.train()
    recipe.device = device  # batches are built on the CPU and moved there
    with router, (probe or contextlib.nullcontext()):
        for step in range(train.steps):
            report_steps(steps_before + step, steps_total or train.steps)
            seen = _accumulate(recipe, model, router, batches, train, device, scaler, step, diverged)
            for name, values in seen.items():
                value = sum(values) / len(values)  # the step's loss: the mean over its micro-batches
                losses[index[name]].append(value)
                curves[index[name]].append({"step": step, "metric": "train_loss", "value": value})
            if not router.adapters:
                break
            if scaler is not None:
                scaler.unscale_(optimizer)  # clipping sees the true gradients
            if train.max_grad_norm is not None:
                clip_grad_norm_per_adapter(model, router.adapters, train.max_grad_norm)
            if _optimizer_step(optimizer, scaler):
                scheduler.step()
            else:  # the scaler skipped it (inf/nan gradients): a smaller scale next time, not a divergence
                skipped += 1
            optimizer.zero_grad(set_to_none=True)
            if probe is not None:
                probe.step()
            if watch is not None:
                rows = probe.take_rows()
                kept.extend(r for r in rows if train.probe_every and r[0] % train.probe_every == 0 and r[2] != "x")
                live = list(router.adapters)
                fired = watch.observe(step, {n: losses[index[n]][-1] for n in live if n in seen}, rows, live)
                for name, alarm in fired.items():
                    alarms[name], diverged[name] = alarm, step
                    router.drop(name)  # frozen after this step: no grad, no update, no slice in later batches
                if not router.adapters:
                    break
            if train.eval_every and (step + 1) % train.eval_every == 0 and step + 1 < train.steps:
                for name, metrics in zip(router.adapters, _evaluate(recipe, model, router, train, probe, ["val"],
                                                                    final=False, device=device)):
                    for metric, value in metrics.items():
                        curves[index[name]].append({"step": step + 1, "metric": metric, "value": value})
        final = {}
        if router.adapters:
            final = dict(zip(router.adapters, _evaluate(recipe, model, router, train, probe, ["val", "test"],
                                                        final=True, device=device)))
    if watch is not None:  # the alarm's probe: keep the probe_every steps' rows (without x)
        kept.extend(r for r in probe.take_rows() if train.probe_every and r[0] % train.probe_every == 0 and r[2] != "x")
    probe_rows = _split_probe(kept if watch is not None else probe.records, names) if probe is not None \
        else [[] for _ in names]
    seconds = (time.perf_counter() - t0) / len(names)
    results = []
    for i, name in enumerate(names):
        tail = losses[i][-max(1, min(10, len(losses[i]))):] if losses[i] else [math.nan]
        metrics = {"final_train_loss": float(sum(tail) / len(tail)), "steps_done": float(len(losses[i]))}
        if scaler is not None:
            metrics["skipped_steps"] = float(skipped)
        if name in diverged:
            metrics["diverged_step"] = float(diverged[name])
            error = None
            if name in alarms:
                metrics.update(alarm_metrics(alarms[name]))
                error = alarm_line(alarms[name], _fix(alarms[name], configs[i]))
            results.append(TrialResult("diverged", metrics, curves[i], probe_rows[i], error, seconds))
            continue
        metrics.update(final.get(name, {}))
        for metric, value in final.get(name, {}).items():
            if metric.startswith("val_"):
                curves[i].append({"step": len(losses[i]), "metric": metric, "value": value})
        results.append(TrialResult("done", metrics, curves[i], probe_rows[i], None, seconds))
    return results, model


def _accumulate(recipe, model, router, batches, train, device, scaler, step: int,
                diverged: dict[str, int]) -> dict[str, list[float]]:
    """Forward and backward ``train.grad_accum`` micro-batches (each loss / grad_accum); the loss
    values each adapter saw. An adapter whose loss is not finite is frozen (dropped) at once."""
    seen: dict[str, list[float]] = {}
    for _ in range(train.grad_accum):
        batch = next(batches)
        live = list(router.adapters)
        with autocast(device, train.precision):
            slice_losses = recipe.train_losses(model, router, batch)
        values = torch.stack([loss.detach() for loss in slice_losses]).tolist()  # one device sync
        good = []
        for name, loss, value in zip(live, slice_losses, values):
            seen.setdefault(name, []).append(value)
            if math.isfinite(value):
                good.append(loss)
            else:
                diverged[name] = step
        if good:
            total = torch.stack(good).sum()
            if train.grad_accum > 1:
                total = total / train.grad_accum
            (total if scaler is None else scaler.scale(total)).backward()
        for name in live:
            if name in diverged:
                router.drop(name)  # frozen: no grad, no update, no slice in later batches
        if not router.adapters:
            break
    return seen


def _optimizer_step(optimizer, scaler) -> bool:
    """One optimizer step (through the fp16 scaler if any); False when the scaler skipped it."""
    if scaler is None:
        optimizer.step()
        return True
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= scale


def _evaluate(recipe, model, router, train, probe, splits, *, final: bool,
              device: torch.device | None = None) -> list[dict[str, float]]:
    """Metrics per live adapter on ``splits``, under the training precision's autocast, on ``device``
    (the recipe's batches go to ``recipe.device``, which :func:`_train` sets)."""
    device = resolve_device(train.device) if device is None else device
    model.eval()
    merged: list[dict[str, float]] = [{} for _ in router.adapters]
    ctx = probe.paused() if probe is not None else contextlib.nullcontext()
    with ctx, autocast(device, train.precision):
        for split in splits:
            for out, metrics in zip(merged, recipe.evaluate(model, router, split, train.eval_batch_size, final=final)):
                out.update(metrics)
    model.train()
    return merged


def _probe_and_watch(model, names: Sequence[str], train):
    """The probe (``train.probe_every``; with the alarm on, every ``gcd`` step and with inputs), the
    alarm's :class:`ModelWatch` (None when off) and the list that keeps the rows to store."""
    alarm = train.alarm
    if not alarm.enabled:
        return (FeatureNormProbe(model, every=train.probe_every) if train.probe_every else None), None, []
    every = math.gcd(train.probe_every, alarm.every) if train.probe_every else alarm.every
    stats = ("rms", "l2") if train.probe_every else ("rms",)
    return FeatureNormProbe(model, every=every, stats=stats, inputs=True), ModelWatch(model, names, alarm), []


def _fix(alarm, config) -> str:
    lora = config.lora
    return likely_fix(alarm, init=lora.init, lr_ratio=config.optim.lr_ratio, rank=lora.rank,
                      alpha_rule="1/sqrt(r)" if lora.rslora else "1/r")


def _split_probe(records, names: Sequence[str]) -> list[list[dict[str, Any]]]:
    """Probe records (dicts or row tuples) per adapter; module names lose the adapter suffix
    (``layer[t3]`` -> ``layer``)."""
    from ..probe_tables import COLUMNS

    out: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for rec in records:
        rec = rec if isinstance(rec, dict) else dict(zip(COLUMNS, rec))
        module, _, adapter = rec["module"].rpartition("[")
        adapter = adapter.rstrip("]")
        if adapter in out:
            out[adapter].append({**rec, "module": module})
    return [out[n] for n in names]


def check_pack_compatible(configs: Sequence[Any], key) -> None:
    keys = {key(c) for c in configs}
    if len(keys) > 1:
        raise LoradynError("trials of one pack must share their pack key (task, lora shape, train, data order)")
