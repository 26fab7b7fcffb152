"""The synthetic task for the sweep engine: pack keys, pack sizes and ``run_pack``.

The ``synthetic`` kind's record (:mod:`loradyn.tasks.kinds.synthetic`) calls these functions.

* ``pack_key``: trials that can share the frozen precomputation and one batched loop — same task
  (width, data, teacher, *effective* data seed), method, rank, dtype, step count and recording
  options, and the same Adam betas/ε/weight decay. Init, α rule, ``lr_a``, ``lr_ratio`` and the
  student seed may differ.
* ``max_pack_size``: a pack is the unit that shares the frozen parts, sized to roughly
  :data:`PACK_SECONDS` of work; inside it the engine trains *chunks* of :func:`chunk_size`
  configurations at once, the size at which the (chunk, N, n) buffers still fit the cache so a
  chunk is never slower per configuration than one configuration alone (benchmarks/bench_synthetic.py).
* ``run_pack``: never raises for one trial; an exception fails the trials of its chunk only.
  Trials run on ``train.device`` (part of the pack key); a device that is not there fails them
  with one line (``validate`` says it before any training).
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from ..alarm import alarm_line, alarm_metrics, likely_fix
from ..serialize import spec_from_dict
from ..tasks.device import check_device, resolve_device
from ..tasks.registry import TrialResult
from .data import frozen_parts
from .engine import ChunkOutcome, train_full, train_lora_chunk
from .spec import SyntheticSpec

__all__ = ["PACK_SECONDS", "chunk_size", "max_pack_size", "pack_key", "run_pack", "seconds_per_step", "validate"]

PACK_SECONDS = 20.0  # target work per pack (s, one core)
_MAX_PACK = 64


def chunk_size(width: int, rank: int = 4, n_train: int = 1000, itemsize: int = 4, device_type: str = "cpu") -> int:
    """Configurations trained at once (the engine's K).

    The engine streams the data in row blocks of ~256 KB per configuration (the block size cannot
    depend on K, or a configuration's summation order would depend on its pack), so K sets the
    cache working set (K × 256 KB) and amortizes the per-block call overhead and the reads of H
    and G. Measured on this project's 2-core EPYC (1 thread, benchmarks/bench_synthetic.py):
    per-config throughput rises monotonically from K = 1 to K = 16 at n = 128–2048 (×3.1, ×2.5,
    ×2.6 over K = 1) and flattens between K = 8 and 16 at n = 4096 (×2.3), so K = 16 up to
    n = 2048 and K = 8 above (smaller packs balance better across workers where one configuration
    already costs seconds). Larger ranks grow the (K, r, n) Adam state and gradients, so K
    shrinks with r. On a GPU (no cache to fit, kernel launches to amortize) K = 32.
    """
    k = 32 if device_type != "cpu" else 16 if width <= 2048 else 8
    if rank > 16:
        k = max(2, k * 16 // rank)
    return k


def seconds_per_step(width: int, rank: int = 4, n_train: int = 1000, method: str = "lora") -> float:
    """Rough cost of one configuration-step on one core (s), for pack sizing and planning.

    LoRA: N·n·(10r + 6) flops at 32 GFLOP/s plus 25 µs, the transposed-block engine's rate in its
    chunks on this project's 2-core EPYC (1 thread, benchmarks/README.md, 2026-11-30: 28-37 GFLOP/s
    useful at n = 128-4096, r = 4, N = 1000); the engine before it ran at about 25 GFLOP/s.
    """
    if method == "full":
        return 4.0 * n_train * width * width / 40e9 + 1e-4
    flops = n_train * width * (10 * rank + 6)
    return flops / 32e9 + 2.5e-5


def _key(config: SyntheticSpec) -> tuple:
    t, lo, o = config.task, config.lora, config.optim
    lora_key = ("full",) if lo.method == "full" else ("lora", lo.rank)
    return (
        "synthetic", t.width, t.d_in, t.d_out, t.n_train, t.n_test, t.teacher_rank, t.form, t.readout,
        t.teacher_readout, config.data_seed, lora_key, config.train, o.name, tuple(o.betas), o.eps, o.weight_decay,
    )


def _as_spec(config: Any) -> SyntheticSpec:
    if isinstance(config, SyntheticSpec):
        return config
    if isinstance(config, Mapping):
        return spec_from_dict(SyntheticSpec, config)
    raise TypeError(f"expected a SyntheticSpec or a mapping, got {type(config).__name__}")


def _result(out: ChunkOutcome, config: SyntheticSpec, seconds: float) -> TrialResult:
    metrics = dict(out.metrics)
    metrics["alpha"] = 1.0 if config.lora.method == "full" else config.lora.alpha
    error = None
    if out.alarm is not None:  # the instability alarm stopped it: its fields and the one line
        metrics.update(alarm_metrics(out.alarm))
        lo = config.lora
        error = alarm_line(out.alarm, likely_fix(out.alarm, init=lo.init, lr_ratio=config.optim.lr_ratio,
                                                 rank=lo.rank, alpha_rule=lo.alpha_rule))
    return TrialResult(
        status="diverged" if out.status == "diverged" else "done",
        metrics=metrics, curves=out.curves, probes=out.probes, error=error, seconds=seconds,
    )


def _failed(err: BaseException, seconds: float) -> TrialResult:
    msg = f"{type(err).__name__}: {err}".splitlines()[0]
    return TrialResult(status="failed", error=msg, seconds=seconds)


def run_pack(configs: Sequence[Any], *, return_params: bool = False) -> list[TrialResult] | tuple:
    """Train synthetic trials in packs; one :class:`TrialResult` per config, in order.

    Configs with different pack keys are grouped internally; each group shares its frozen parts
    and is trained in chunks of :func:`chunk_size`. With ``return_params=True`` also returns the
    final ``(lora_A, lora_B)`` per config (``None`` for full finetuning or failures).
    """
    specs = [_as_spec(c) for c in configs]
    results: list[TrialResult | None] = [None] * len(specs)
    params: list[Any] = [None] * len(specs)
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(specs):
        groups.setdefault(_key(c), []).append(i)
    done_steps, total_steps = 0, sum(c.train.steps for c in specs)  # configuration-steps, for heartbeats
    for idxs in groups.values():
        cfg0 = specs[idxs[0]]
        t0 = time.perf_counter()
        try:
            device = check_device(cfg0.train.device)
            frozen = frozen_parts(cfg0, keep_w_star=cfg0.lora.method == "full", device=device)
        except Exception as err:  # noqa: BLE001 - reported per trial
            for i in idxs:
                results[i] = _failed(err, 0.0)
            continue
        setup = (time.perf_counter() - t0) / len(idxs)
        if cfg0.lora.method == "full":
            chunks = [[i] for i in idxs]
        else:
            size = chunk_size(cfg0.task.width, cfg0.lora.rank, cfg0.task.n_train,
                              8 if cfg0.train.dtype == "float64" else 4, device.type)
            chunks = [idxs[j : j + size] for j in range(0, len(idxs), size)]
        for chunk in chunks:
            t1 = time.perf_counter()
            beat = {"steps_before": done_steps, "steps_total": total_steps}
            done_steps += cfg0.train.steps * len(chunk)
            try:
                if cfg0.lora.method == "full":
                    outs = [train_full(frozen, specs[chunk[0]], **beat)]
                else:
                    outs = train_lora_chunk(frozen, [specs[i] for i in chunk], **beat)
            except Exception as err:  # noqa: BLE001 - reported per trial
                sec = (time.perf_counter() - t1) / len(chunk) + setup
                for i in chunk:
                    results[i] = _failed(err, sec)
                continue
            sec = (time.perf_counter() - t1) / len(chunk) + setup
            for i, out in zip(chunk, outs):
                results[i] = _result(out, specs[i], sec)
                if out.lora_A is not None:
                    params[i] = (out.lora_A, out.lora_B)
    return (results, params) if return_params else results


def pack_key(config: Any) -> Hashable:
    """Trials with equal keys share a pack (see the module docstring)."""
    return _key(_as_spec(config))


def max_pack_size(config: Any) -> int:
    """About :data:`PACK_SECONDS` of work, in whole chunks (at most 64 configurations)."""
    c = _as_spec(config)
    per_config = c.train.steps * seconds_per_step(c.task.width, c.lora.rank, c.task.n_train, c.lora.method)
    if c.lora.method == "full":
        return max(1, min(_MAX_PACK, int(PACK_SECONDS / per_config)))
    chunk = chunk_size(c.task.width, c.lora.rank, c.task.n_train, device_type=_device_type(c))
    n_chunks = max(1, int(PACK_SECONDS / (per_config * chunk)))
    return max(chunk, min(_MAX_PACK, chunk * n_chunks))


def _device_type(config: SyntheticSpec) -> str:
    try:
        return resolve_device(config.train.device).type
    except Exception:  # noqa: BLE001 - sizing only; run_pack reports a bad device
        return "cpu"


def validate(config: Any) -> None:
    """Bad input before any training: ``train.device`` absent here (one line naming the fix)."""
    check_device(_as_spec(config).train.device)
