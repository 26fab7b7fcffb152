"""A tiny deterministic task for the sweep-engine tests (kind ``"toy"``; pure Python, no torch).

Gradient descent on ``L(w) = mean_i c_i (w_i - t_i)^2`` with curvatures ``c_i ∝ width``: even
coordinates use ``lr_a``, odd ones ``lr_b = lr_ratio * lr_a``, so the best learning rate falls
like ``1/width`` and too large a rate diverges (status ``diverged``). Knobs for the reliability
tests: ``sleep`` (seconds per trial), ``fail_lr_above`` (that trial raises -> ``failed``),
``crash_pack_lr_above`` (``run_pack`` itself raises), ``exit_lr_above`` (the process running the pack dies),
``die_once`` (a flag file: the first pack to create it kills its own process with SIGKILL after its
first trial started, once per sweep).

Subprocesses find it with ``PYTHONPATH=tests LORADYN_TASK_MODULES=sweep_toy`` (see
:func:`subprocess_env`); if ``LORADYN_TOY_LOG`` (or ``task.log``) is set, every execution appends
``<trial_id> <pid> <ray node id or ->`` to that file.
"""

from __future__ import annotations

import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from loradyn.specs import LoraSpec, OptimSpec
from loradyn.sweep.spec import config_id
from loradyn.tasks import TaskKind, TrialResult, register_task
from loradyn.tasks.pulse import report_steps

TESTS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ToyTaskSpec:
    kind: Literal["toy"] = "toy"
    width: int = 8
    steps: int = 30
    sleep: float = 0.0
    fail_lr_above: float | None = None
    crash_pack_lr_above: float | None = None
    exit_lr_above: float | None = None  # the worker process dies (os._exit) on such a pack
    die_once: str | None = None  # flag file: the first pack to create it SIGKILLs its process mid-pack
    log: str | None = None  # like LORADYN_TOY_LOG, for processes that do not share the driver's environment
    unpicklable_lr_above: float | None = None  # such a trial's result holds a lambda (cannot leave its process)
    pack_size: int = 4
    probes: bool = False

    def __post_init__(self) -> None:
        from loradyn.errors import SpecError

        if self.width < 1:
            raise SpecError(f"task.width must be >= 1, got {self.width}")


@dataclass(frozen=True)
class ToySpec:
    task: ToyTaskSpec = field(default_factory=ToyTaskSpec)
    lora: LoraSpec = field(default_factory=LoraSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    seed: int = 0


def train_one(cfg: ToySpec) -> TrialResult:
    t = cfg.task
    if t.fail_lr_above is not None and cfg.optim.lr_a > t.fail_lr_above:
        raise ValueError(f"toy trial refused lr_a={cfg.optim.lr_a}")
    rng = random.Random(cfg.seed * 1000 + t.width)
    target = [rng.gauss(0.0, 1.0) for _ in range(t.width)]
    curv = [t.width * (0.5 + rng.random()) for _ in range(t.width)]
    scale = cfg.lora.alpha / cfg.lora.rank
    w = [0.0 if cfg.lora.init == "B" else scale * rng.gauss(0.0, 1.0) for _ in range(t.width)]
    lrs = [cfg.optim.lr_a if i % 2 == 0 else cfg.optim.lr_b for i in range(t.width)]

    def loss() -> float:
        return sum(c * (wi - ti) * (wi - ti) for c, wi, ti in zip(curv, w, target)) / t.width

    curves, probes = [], []
    value = loss()
    for step in range(1, t.steps + 1):
        w = [wi - lr * 2 * c * (wi - ti) for wi, lr, c, ti in zip(w, lrs, curv, target)]
        value = loss()
        if step % 10 == 0 or step == t.steps:
            curves.append({"step": step, "metric": "train_loss", "value": value})
            if t.probes:
                z_a = math.sqrt(sum(wi * wi for wi in w) / t.width)
                z_b = math.sqrt(sum((c * wi) ** 2 for c, wi in zip(curv, w)) / t.width)
                for feature, v in (("z_a", z_a), ("z_b", z_b)):
                    probes.append({"step": step, "module": "toy", "feature": feature, "stat": "rms", "value": v})
        if not math.isfinite(value) or value > 1e12:
            return TrialResult("diverged", {"final_loss": math.inf, "steps_run": float(step)},
                               curves, probes, error=f"loss blew up at step {step}")
    return TrialResult("done", {"final_loss": value, "steps_run": float(t.steps)}, curves, probes)


def _node() -> str:
    """The Ray node this process runs on, or ``-``."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return "-"
    return ray.get_runtime_context().get_node_id()


def _first(flag: str) -> bool:
    try:
        os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def pack_key(config: ToySpec):
    return (config.task.width, config.task.steps)


def max_pack_size(config: ToySpec) -> int:
    return config.task.pack_size


def run_pack(configs):
    crash = configs[0].task.crash_pack_lr_above
    if crash is not None and any(c.optim.lr_a > crash for c in configs):
        raise RuntimeError("toy pack crashed\nsecond line that must not reach the store")
    exit_above = configs[0].task.exit_lr_above
    if exit_above is not None and any(c.optim.lr_a > exit_above for c in configs):
        os._exit(3)
    log = configs[0].task.log or os.environ.get("LORADYN_TOY_LOG")
    out = []
    for i, cfg in enumerate(configs):
        if log:
            with open(log, "a") as fh:
                fh.write(f"{config_id(cfg)} {os.getpid()} {_node()}\n")
        start = time.perf_counter()
        for step in range(10 if cfg.task.sleep else 0):  # the sleep in tenths, with heartbeats
            time.sleep(cfg.task.sleep / 10)
            report_steps(step + 1, 10)
            if i == 0 and step == 4 and cfg.task.die_once and _first(cfg.task.die_once):
                os.kill(os.getpid(), signal.SIGKILL)
        try:
            res = train_one(cfg)
        except Exception as err:
            res = TrialResult("failed", error=f"{type(err).__name__}: {err}")
        res.seconds = time.perf_counter() - start
        if cfg.task.unpicklable_lr_above is not None and cfg.optim.lr_a > cfg.task.unpicklable_lr_above:
            res.curves = [{"step": 1, "metric": "x", "value": lambda: 0}]
        out.append(res)
    return out


KIND = register_task(TaskKind(kind="toy", spec_cls=ToySpec, run_pack=run_pack, pack_key=pack_key,
                              max_pack_size=max_pack_size, metrics={"final_loss": "min"},
                              description="gradient descent on a separable quadratic (tests)"))


def toy_sweep(**grid_and_base) -> dict:
    """A small toy sweep dict: 2 inits x 4 learning rates x 2 seeds (16 trials) by default."""
    spec = {
        "name": "toy",
        "base": {"task": {"kind": "toy", "width": 8, "steps": 30}, "lora": {"rank": 4, "alpha": 4.0},
                 "optim": {"lr_a": 0.01}},
        "grid": {"lora.init": ["A", "B"], "optim.lr_a": {"log2": [-8, -5, 1]}},
        "seeds": [0, 1],
        "metric": "final_loss",
    }
    spec.update(grid_and_base)
    return spec


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for ``python -m loradyn`` subprocesses that must see the toy task."""
    env = dict(os.environ)
    paths = [str(TESTS_DIR), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["LORADYN_TASK_MODULES"] = "sweep_toy"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


PYTHON = sys.executable


def interruptible() -> None:
    """``preexec_fn`` for subprocesses a test interrupts: SIGINT at its default even where the test
    run itself ignores it (a shell starts background jobs, ``make test &``, with SIGINT ignored, and
    Python then never turns it into KeyboardInterrupt)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
