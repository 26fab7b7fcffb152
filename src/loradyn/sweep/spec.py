"""Sweep specs: a base trial configuration, a grid over dotted keys, seeds; deterministic expansion.

A sweep YAML file looks like::

    name: width-lr
    base:                       # one full trial configuration, minus the seed
      task: {kind: synthetic, width: 128}
      lora: {rank: 4, init: A}
      optim: {lr_a: 1.0e-3, lr_ratio: 1.0}
    grid:                       # cross product, in this order (the last key varies fastest)
      lora.init: [A, B]
      task.width: [128, 512]
      optim.lr_a: {log2: [-12, -4, 0.5]}   # 2^-12, 2^-11.5, ..., 2^-4
    seeds: [0, 1, 2]            # or an integer n: seeds 0 .. n-1
    metric: final_train_loss    # optional: the metric the report ranks by (default: the task's first)
    mode: min                   # optional: min or max (default: the metric's declared direction)

Each trial is ``base`` with the grid point and the seed set, validated by the task's own spec
class (unknown keys and ill-typed values are rejected with one line). Its id is a content hash of
the resolved configuration (defaults filled in), so it is stable across processes and runs, and a
re-run finds the trials it already finished.

``metric`` must be one the task kind declares (``TaskKind.metrics``; any name when it declares
none), and ``mode`` may not contradict that metric's direction. The number of trials is counted
(:func:`count_trials`: grid axis lengths x seeds) before anything is expanded, and a sweep of more
than ``max_trials`` (default :data:`DEFAULT_MAX_TRIALS`) is refused.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import SpecError
from ..overrides import axis_values, log2_grid, parse_overrides, set_dotted
from ..serialize import identity_dict, load_yaml, spec_to_dict
from ..tasks.registry import TaskKind, get_task

__all__ = [
    "DEFAULT_MAX_TRIALS",
    "Pack",
    "SweepSpec",
    "Trial",
    "check_max_trials",
    "config_id",
    "count_line",
    "count_trials",
    "expand",
    "flatten",
    "log2_grid",
    "plan_packs",
    "resolve_metric",
    "resolve_sweep",
]

_TOP_KEYS = ("name", "seeds", "metric", "mode", "resources")
DEFAULT_MAX_TRIALS = 100_000


@dataclass(frozen=True)
class SweepSpec:
    """A sweep: ``base`` configuration, ``grid`` of dotted keys -> value lists, ``seeds``.

    Attributes:
        name: the sweep's name (defaults to the YAML file's stem).
        base: a full trial configuration without ``seed``; ``base["task"]["kind"]`` names the task.
        grid: dotted key -> list of values (already expanded: no ``log2`` shorthand left).
        seeds: the seeds every grid point runs with.
        metric: the metric that reports rank trials by (``None``: the task's first metric;
            :func:`resolve_sweep` fills it in).
        mode: ``min`` or ``max`` for ``metric`` (``None``: the metric's declared direction;
            :func:`resolve_sweep` fills it in).
        resources: what each pack asks the Ray executor for: ``{cpus: 1, gpus: 1}`` (default one
            CPU, no GPU).
    """

    name: str = "sweep"
    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    metric: str | None = None
    mode: Literal["min", "max"] | None = None
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.base["task"]["kind"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base": copy.deepcopy(self.base),
            "grid": {k: list(v) for k, v in self.grid.items()},
            "seeds": list(self.seeds),
            "metric": self.metric,
            "mode": self.mode,
            **({"resources": dict(self.resources)} if self.resources else {}),
        }


@dataclass(frozen=True)
class Trial:
    """One resolved trial: its position in the expansion, id, validated config and plain data."""

    idx: int
    trial_id: str
    config: Any
    data: dict[str, Any]


@dataclass(frozen=True)
class Pack:
    """Trials that a task trains together (same ``pack_key``, at most ``max_pack_size``)."""

    pack_id: str
    trials: tuple[Trial, ...]


def _seed_count(value: Any) -> int:
    """How many seeds ``value`` (a count or a list) names, without materialising a count."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise SpecError(f"seeds: an integer means 'this many seeds' and must be >= 1, got {value}")
        return value
    return len(_seeds(value))


def _seeds(value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return tuple(range(_seed_count(value)))
    if not isinstance(value, (list, tuple)) or not value:
        raise SpecError(f"seeds must be a non-empty list of integers (or a count), got {value!r}")
    out = []
    for s in value:
        if isinstance(s, bool) or not isinstance(s, int):
            raise SpecError(f"seeds: expected integers, got {s!r}")
        out.append(s)
    if len(set(out)) != len(out):
        raise SpecError(f"seeds has duplicates: {list(value)!r}")
    return tuple(out)


def _breakdown(lengths: Sequence[int], n_seeds: int) -> str:
    grid = " x ".join(map(str, lengths)) if lengths else "1 point"
    return f"grid {grid}, {n_seeds} seed{'s' if n_seeds != 1 else ''}"


def count_trials(spec: SweepSpec) -> int:
    """Trials of ``spec`` without expanding it: the product of the axis lengths times the seeds.

    An upper bound: :func:`expand` keeps equal resolved configurations once.
    """
    return math.prod(len(v) for v in spec.grid.values()) * len(spec.seeds)


def count_line(spec: SweepSpec) -> str:
    """``sweep 'name': up to N trials (grid 2 x 8, 3 seeds)``, for printing before expansion."""
    lengths = [len(v) for v in spec.grid.values()]
    return f"sweep {spec.name!r}: up to {count_trials(spec):,} trials ({_breakdown(lengths, len(spec.seeds))})"


def check_max_trials(max_trials: Any) -> int | None:
    """``max_trials`` as given (``None``: no limit); anything but an integer >= 1 is one line."""
    if max_trials is not None and (isinstance(max_trials, bool) or not isinstance(max_trials, int)
                                   or max_trials < 1):
        raise SpecError(f"max_trials (--max-trials) must be an integer >= 1, got {max_trials!r}")
    return max_trials


def resolve_metric(task: TaskKind, metric: str | None, mode: str | None) -> tuple[str | None, str]:
    """The ranked metric and its direction: ``metric`` must be one ``task`` declares (default: its
    first), and ``mode`` defaults to, and may not contradict, the declared direction. A kind that
    declares no metrics accepts any name (``mode`` default ``min``)."""
    declared = task.metrics
    if not declared:
        return metric, mode or "min"
    if metric is None:
        metric = task.default_metric
    elif metric not in declared:
        raise SpecError(f"metric {metric!r} is not a metric of task {task.kind!r}; "
                        f"set metric to one of: {', '.join(declared)}")
    direction = declared[metric]
    if mode is not None and mode != direction:
        verb = "minimises" if direction == "min" else "maximises"
        raise SpecError(f"mode {mode!r} contradicts metric {metric!r}, which task {task.kind!r} {verb}; "
                        f"set mode: {direction} or leave mode out")
    return metric, direction


def resolve_sweep(
    spec: SweepSpec | Mapping[str, Any] | str | Path, overrides: Sequence[str] = (), *,
    max_trials: int | None = DEFAULT_MAX_TRIALS,
) -> SweepSpec:
    """Load a sweep (YAML path, plain dict or :class:`SweepSpec`) and apply dotted overrides.

    Overrides are ``key=value`` strings. ``name``, ``seeds``, ``metric`` and ``mode`` set the
    sweep's own fields; any other key is relative to ``base`` (a leading ``base.`` is allowed).
    A key that is a grid axis replaces that axis (a scalar makes it a one-value axis); overriding
    ``metric`` without ``mode`` drops the spec's ``mode``. ``metric`` and ``mode`` are checked against the task kind and filled in (:func:`resolve_metric`).
    The trials are counted before the seeds or any trial are materialised, and more than
    ``max_trials`` (``None``: no limit) are refused.

    Raises:
        SpecError: malformed input, with one line naming the key and the fix.
    """
    max_trials = check_max_trials(max_trials)
    default_name = "sweep"
    if isinstance(spec, SweepSpec):
        data = spec.to_dict()
    elif isinstance(spec, Mapping):
        data = copy.deepcopy(dict(spec))
    elif isinstance(spec, (str, Path)):
        data = load_yaml(spec)
        default_name = Path(spec).stem
        if data is None:
            raise SpecError(f"sweep spec {str(spec)!r} is empty; it needs base, grid and seeds")
    else:
        raise SpecError(f"a sweep spec is a YAML path, a mapping or a SweepSpec, not {type(spec).__name__}")
    if not isinstance(data, Mapping):
        raise SpecError(f"a sweep spec must be a YAML mapping (name, base, grid, seeds), not {type(data).__name__}")
    valid = ("name", "base", "grid", "seeds", "metric", "mode", "resources")
    for key in data:
        if key not in valid:
            raise SpecError(f"unknown key {key!s} in sweep spec; valid keys: {', '.join(valid)}")
    base = data.get("base")
    if not isinstance(base, Mapping):
        raise SpecError("sweep spec needs a 'base' mapping (a full trial configuration with task.kind)")
    base = copy.deepcopy(dict(base))
    grid = data.get("grid") or {}
    if not isinstance(grid, Mapping):
        raise SpecError(f"grid must be a mapping of dotted keys to value lists, got {grid!r}")
    grid = {str(k): v for k, v in grid.items()}
    top = {k: data.get(k) for k in _TOP_KEYS if data.get(k) is not None}

    parsed = parse_overrides(overrides)
    if any(k == "metric" for k, _ in parsed) and not any(k == "mode" for k, _ in parsed):
        top.pop("mode", None)  # a new metric brings its own direction
    for key, value in parsed:
        if key in _TOP_KEYS:
            top[key] = value
            continue
        key = key.removeprefix("base.")
        if key in grid:
            grid[key] = value if isinstance(value, (list, tuple, Mapping)) else [value]
        else:
            set_dotted(base, key, value)

    task = base.get("task")
    if not isinstance(task, Mapping) or not isinstance(task.get("kind"), str):
        raise SpecError("base.task.kind is required: it names the task (e.g. task: {kind: synthetic})")
    expanded = {}
    for key, value in grid.items():
        if key == "seed":
            raise SpecError("grid.seed: use the top-level 'seeds' list for seeds")
        if key.split(".")[0] == "task" and key.endswith(".kind"):
            raise SpecError("grid.task.kind: one sweep runs one task; write one sweep per task")
        try:
            expanded[key] = axis_values(key, value)
        except OverflowError:  # a log2 axis past the float range
            raise SpecError(f"grid.{key}: {value!r} leaves the float range; use smaller exponents "
                            "or a larger step") from None
    name = top.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise SpecError(f"name must be a non-empty string, got {name!r}")
    mode = top.get("mode")
    if mode not in (None, "min", "max"):
        raise SpecError(f"mode must be 'min' or 'max', got {mode!r}")
    metric = top.get("metric")
    if metric is not None and not isinstance(metric, str):
        raise SpecError(f"metric must be a metric name, got {metric!r}")
    n_seeds = _seed_count(top.get("seeds", [0]))
    total = math.prod(len(v) for v in expanded.values()) * n_seeds
    if max_trials is not None and total > max_trials:
        breakdown = _breakdown([len(v) for v in expanded.values()], n_seeds)
        raise SpecError(f"sweep {name!r} has up to {total:,} trials ({breakdown}), more than the limit of "
                        f"{max_trials:,}; shrink the grid or the seeds, or raise the limit with --max-trials N")
    metric, mode = resolve_metric(get_task(task["kind"]), metric, mode)
    return SweepSpec(
        name=name, base=base, grid=expanded, seeds=_seeds(top.get("seeds", [0])), metric=metric, mode=mode,
        resources=_resources(top.get("resources")),
    )


def _resources(value: Any) -> dict[str, float]:
    """``resources: {cpus: 1, gpus: 1}``: what a pack asks the Ray executor for (numbers >= 0)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"resources must be a mapping like {{cpus: 1, gpus: 1}}, got {value!r}")
    out = {}
    for key, number in value.items():
        if key not in ("cpus", "gpus"):
            raise SpecError(f"resources: unknown key {key!r}; use cpus and gpus")
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not number >= 0:
            raise SpecError(f"resources.{key} must be a number >= 0, got {number!r}")
        out[key] = float(number)
    return out


def config_id(data: Any, kind: str | None = None) -> str:
    """Content hash (16 hex digits) of a resolved trial configuration (spec instance or plain dict).

    Fields added to the specs after stores existed (:func:`loradyn.serialize.late_field`) count only
    when they differ from their default, so an existing store's trials keep their ids. A plain dict
    is hashed as given."""
    plain = identity_dict(data)
    if kind is None:
        kind = plain.get("task", {}).get("kind") if isinstance(plain, Mapping) else None
    text = json.dumps({"kind": kind, "config": plain}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def expand(spec: SweepSpec, task: TaskKind | None = None) -> list[Trial]:
    """All trials of ``spec`` in a deterministic order: grid product (last key fastest), then seeds.

    Every trial is validated by the kind (``task.build``: its spec class); duplicates (equal
    resolved configurations) are kept once.
    """
    task = task if task is not None else get_task(spec.kind)
    keys = list(spec.grid)
    trials: list[Trial] = []
    seen: set[str] = set()
    for point in itertools.product(*(spec.grid[k] for k in keys)):
        for seed in spec.seeds:
            data = copy.deepcopy(spec.base)
            for key, value in zip(keys, point):
                set_dotted(data, key, copy.deepcopy(value), f"grid.{key}")
            data["seed"] = seed
            config = task.build(data)
            resolved = spec_to_dict(config)
            tid = config_id(config, spec.kind)
            if tid in seen:
                continue
            seen.add(tid)
            trials.append(Trial(idx=len(trials), trial_id=tid, config=config, data=resolved))
    return trials


def plan_packs(task: TaskKind, trials: Sequence[Trial], workers: int = 1) -> list[Pack]:
    """Group trials by ``task.pack_key`` (first-appearance order) and chunk by ``max_pack_size``,
    into a multiple of ``workers`` packs of near-equal size, so that every worker gets about the same
    work: 3 trials on 2 workers are packs of 2 and 1, not one pack of 3 and an idle worker; 22 trials
    with ``max_pack_size`` 8 are 6, 6, 6, 4 (two packs each), not 8, 8, 6 (14 trials on one worker)."""
    groups: dict[Any, list[Trial]] = {}
    for trial in trials:
        groups.setdefault(task.pack_key(trial.config), []).append(trial)
    packs = []
    for members in groups.values():
        size = int(task.max_pack_size(members[0].config))
        if size < 1:
            raise SpecError(f"task {task.kind!r}: max_pack_size returned {size}; it must be >= 1")
        if workers > 1:  # one pack per worker per round, near-equal sizes
            n_packs = workers * -(-len(members) // (workers * size))
            size = max(1, -(-len(members) // n_packs))
        for start in range(0, len(members), size):
            chunk = tuple(members[start : start + size])
            digest = hashlib.sha256(",".join(t.trial_id for t in chunk).encode()).hexdigest()[:16]
            packs.append(Pack(pack_id=digest, trials=chunk))
    return packs


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr_a": 1}}`` -> ``{"optim.lr_a": 1}`` (lists become tuples)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list):
            out[name] = tuple(value)
        else:
            out[name] = value
    return out

