"""What ``loradyn tune`` will do, decided before anything trains: the proxy and target sweeps, the
searched axes, the rank / width / alpha convention of the transfer, the seeds and the budget.

Every check here is a one-line :class:`~loradyn.errors.SpecError` (exit code 2 on the command line):
an axis other than ``optim.lr_a`` / ``lora.init`` / ``optim.lr_ratio`` with several values, an init
without a transfer rule, an alpha convention that cannot be read, a budget too small for the
confirmation step.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import LoradynError, SpecError
from ..overrides import parse_overrides, set_dotted
from ..scaling import ALPHA_RULES, canonical_alpha_rule
from ..serialize import spec_to_dict
from ..sweep.spec import SweepSpec, resolve_sweep
from ..tasks.registry import get_task
from .grid import bracket_starts, coarse_grid

__all__ = ["CONFIRM_POINTS", "SEARCHES", "TUNED", "Budget", "TunePlan", "dotted",
           "make_plan", "parse_budget"]
SEARCHES = ("bracket", "grid", "tpe")

TUNED = ("optim.lr_a", "lora.init", "optim.lr_ratio")
RULE_INITS = ("A", "B")  # the inits with a published (or derived) transfer rule
CONFIRM_POINTS = 3  # ×1/2, ×1, ×2 of the transferred lr
_ALPHA_KEYS = ("lora.alpha", "lora.lora_alpha", "lora.rslora", "lora.use_rslora", "lora.alpha_rule")


def dotted(data: Any, key: str, default: Any = None) -> Any:
    """``data[a][b]`` for ``key = "a.b"`` (``default`` when a part is missing)."""
    node = data
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


@dataclass(frozen=True)
class Budget:
    """``--budget``: at most this many trials, or this many trial-seconds (None: no limit)."""

    trials: int | None = None
    seconds: float | None = None

    def describe(self) -> str:
        if self.trials is not None:
            return f"{self.trials} trials"
        return f"{self.seconds:g} s" if self.seconds is not None else "no budget"


def parse_budget(value: Any) -> Budget:
    """``40`` (trials), ``"600s"``, ``"10m"``, ``"1.5h"`` (trial-seconds) or None."""
    if value is None or isinstance(value, Budget):
        return value or Budget()
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip().lower()
    else:
        raise SpecError(f"budget must be a number of trials (40) or of seconds (600s, 10m, 1.5h), got {value!r}")
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?", text)
    if not match:
        raise SpecError(f"budget must be a number of trials (40) or of seconds (600s, 10m, 1.5h), got {value!r}")
    number, unit = float(match.group(1)), match.group(2)
    if unit is None:
        if not number.is_integer() or number < 1:
            raise SpecError(f"a budget in trials must be an integer >= 1, got {value!r}")
        return Budget(trials=int(number))
    seconds = number * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[unit]
    if seconds <= 0:
        raise SpecError(f"a budget in seconds must be > 0, got {value!r}")
    return Budget(seconds=seconds)


@dataclass(frozen=True)
class TunePlan:
    """The resolved proxy and target of one tune run (see :func:`make_plan`)."""

    name: str
    kind: str
    metric: str
    mode: str
    proxy: SweepSpec                 # base: non-tuned axes folded in; grid: the searched axes
    target: SweepSpec
    proxy_overrides: tuple[str, ...]
    target_overrides: tuple[str, ...]
    lrs: tuple[float, ...]           # the proxy's coarse optim.lr_a grid
    inits: tuple[Any, ...]           # (None,) when the kind's config has no lora.init
    ratios: tuple[Any, ...]          # (None,) when it has no optim.lr_ratio
    proxy_seeds: tuple[int, ...]
    confirm_seeds: tuple[int, ...]
    rank: tuple[int, int] | None
    width: tuple[int, int] | None
    alpha_rule: str | None           # how the multiplier moves with the rank (None: no rank change)
    proxy_multiplier: float | None   # the proxy's α = PEFT scaling (for a full-finetuning target)
    target_method: str               # "lora" or "full" (full finetuning, synthetic kind)
    proxy_steps: int | None
    target_steps: int | None
    full_lrs: tuple[float, ...] | None   # the target spec's optim.lr_a axis (the full grid), if any
    full_axes: dict[str, int] = field(default_factory=dict)  # target axes the full grid would also sweep
    equal: bool = False
    proxy_picked: bool = False       # loradyn chose the proxy (no --proxy)
    budget: Budget = field(default_factory=Budget)
    notes: tuple[str, ...] = ()
    search: str = "bracket"          # the proxy search (see loradyn.tuning.search)

    @property
    def n_points(self) -> int:
        return len(self.lrs) * len(self.inits) * len(self.ratios)

    @property
    def n_start(self) -> int:
        """Points the proxy search trains at least (the bracket search: its start points per column)."""
        per_column = len(bracket_starts(self.lrs)) if self.search == "bracket" else len(self.lrs)
        return per_column * len(self.inits) * len(self.ratios)

    @property
    def confirm_trials(self) -> int:
        return CONFIRM_POINTS * len(self.confirm_seeds)


def _keys(overrides: Sequence[str]) -> set[str]:
    return {key.removeprefix("base.") for key, _ in parse_overrides(overrides)}


def _fold(sweep: SweepSpec, where: str) -> SweepSpec:
    """Single-valued non-tuned axes go into ``base``; several values are refused (one line)."""
    base, grid = copy.deepcopy(sweep.base), {}
    for key, values in sweep.grid.items():
        if key in TUNED:
            grid[key] = list(values)
        elif len(values) == 1:
            set_dotted(base, key, copy.deepcopy(values[0]), f"grid.{key}")
        else:
            raise SpecError(f"the {where} sweeps {key} over {len(values)} values; tune transfers one configuration: "
                            f"fix it with --{where} {key}=VALUE (tune searches only {', '.join(TUNED)})")
    return SweepSpec(name=sweep.name, base=base, grid=grid, seeds=sweep.seeds, metric=sweep.metric,
                     mode=sweep.mode, resources=sweep.resources)


def _axis(sweep: SweepSpec, key: str, resolved: Mapping[str, Any]) -> list[Any]:
    """The values of ``key`` in ``sweep``: its grid axis, else its value (defaults filled in: ``resolved``)."""
    if key in sweep.grid:
        return list(sweep.grid[key])
    value = dotted(sweep.base, key)
    return [value if value is not None else dotted(resolved, key)]


def point_config(sweep: SweepSpec, init: Any = None, ratio: Any = None, lr: float | None = None,
                 seed: int | None = None) -> dict[str, Any]:
    """The resolved plain configuration of one trial of ``sweep`` (axes at their first value)."""
    data = copy.deepcopy(sweep.base)
    for key, values in sweep.grid.items():
        set_dotted(data, key, copy.deepcopy(values[0]), f"grid.{key}")
    for key, value in (("lora.init", init), ("optim.lr_ratio", ratio), ("optim.lr_a", lr)):
        if value is not None:
            set_dotted(data, key, value)
    data["seed"] = sweep.seeds[0] if seed is None else seed
    config = get_task(sweep.kind).build(data)
    plain = spec_to_dict(config)
    return json.loads(json.dumps(plain, default=str))


def _scaling(cfg: Mapping[str, Any]) -> tuple[str, Any]:
    """How a configuration states its multiplier: ``("rule", name)``, ``("alpha", scaling)`` or ``("none", None)``."""
    rule = dotted(cfg, "lora.alpha_rule")
    if rule is not None:
        return "rule", canonical_alpha_rule(rule)
    alpha = dotted(cfg, "lora.alpha", dotted(cfg, "lora.lora_alpha"))
    rank = dotted(cfg, "lora.rank", dotted(cfg, "lora.r"))
    if isinstance(alpha, (int, float)) and isinstance(rank, int) and rank > 0:
        rslora = bool(dotted(cfg, "lora.rslora", dotted(cfg, "lora.use_rslora", False)))
        return "alpha", float(alpha) / (math.sqrt(rank) if rslora else rank)
    return "none", None


def _rule_of_gamma(gamma: float) -> str | None:
    for name, value in ALPHA_RULES.items():
        if abs(gamma - value) < 1e-6:
            return name
    return None


def read_alpha_rule(proxy_cfg: Mapping[str, Any], target_cfg: Mapping[str, Any], rank: tuple[int, int] | None,
                    given: str | None = None) -> str | None:
    """The alpha convention (``"1"``, ``"1/sqrt(r)"``, ``"1/r"``) that links the proxy's multiplier to
    the target's, read from the two configurations; ``given`` (``--alpha-rule``) must agree with them
    and is needed when they do not say (a python trial without ``lora.alpha``/``lora.alpha_rule``)."""
    given = canonical_alpha_rule(given) if given is not None else None
    (pk, pv), (tk, tv) = _scaling(proxy_cfg), _scaling(target_cfg)
    moved = rank is not None and rank[0] != rank[1]
    read: str | None = None
    if pk == tk == "rule":
        if pv != tv:
            raise SpecError(f"the proxy's lora.alpha_rule {pv!r} differs from the target's {tv!r}; "
                            "give both the same alpha rule")
        read = pv
    elif pk == tk == "alpha":
        if not moved:
            if not math.isclose(pv, tv, rel_tol=1e-9):
                raise SpecError(f"the proxy's LoRA multiplier (alpha/r = {pv:g}) differs from the target's "
                                f"({tv:g}) at the same rank; no transfer rule covers that: give both the same lora.alpha")
            return given
        gamma = -math.log(tv / pv) / math.log(rank[1] / rank[0])
        read = _rule_of_gamma(gamma)
        if read is None:
            raise SpecError(f"cannot read the alpha convention: from rank {rank[0]} to {rank[1]} the multiplier goes "
                            f"{pv:g} -> {tv:g}, i.e. as r^-{gamma:.3g}; use a fixed lora.alpha (1/r), "
                            "lora.rslora=true with a fixed alpha (1/sqrt(r)) or lora.alpha proportional to the rank (1)")
    elif pk != tk and "none" not in (pk, tk):
        raise SpecError("the proxy and the target state the LoRA multiplier differently (lora.alpha_rule on one side, "
                        "lora.alpha on the other); state it the same way on both")
    if read is None:
        if moved and given is None:
            raise SpecError("cannot read the alpha convention from the spec: set lora.alpha (and lora.rslora) or "
                            "lora.alpha_rule in the spec, or pass --alpha-rule 1|1/sqrt(r)|1/r")
        return given
    if given is not None and given != read and moved:
        raise SpecError(f"--alpha-rule {given} contradicts the spec, whose multiplier follows the {read!r} convention "
                        f"from rank {rank[0]} to {rank[1]}; drop --alpha-rule or change lora.alpha")
    return read


def _alpha_overrides(target_cfg: Mapping[str, Any], r0: int, rule: str) -> list[str]:
    """Proxy overrides that give the proxy the multiplier ``rule`` implies from the target's."""
    kind, value = _scaling(target_cfg)
    if kind == "rule":
        if value != rule:
            raise SpecError(f"--alpha-rule {rule} contradicts the spec's lora.alpha_rule {value!r}; drop --alpha-rule "
                            "or change lora.alpha_rule")
        return []  # the proxy states the same rule as the target
    if kind != "alpha":
        return []
    r1 = dotted(target_cfg, "lora.rank")
    rslora = bool(dotted(target_cfg, "lora.rslora", False))
    scaling0 = value * (r0 / r1) ** (-ALPHA_RULES[rule])
    alpha0 = scaling0 * (math.sqrt(r0) if rslora else r0)
    return [f"lora.alpha={alpha0!r}", f"lora.rslora={'true' if rslora else 'false'}"]


def _hidden_size(model: str) -> int:
    from ..tasks.models import resolve_model

    try:
        config = json.loads((Path(resolve_model(model)) / "config.json").read_text())
    except (OSError, ValueError, LoradynError) as err:
        raise SpecError(f"cannot read the width of model {model!r} ({err}); pass --width N0 N1") from None
    for key in ("hidden_size", "n_embd", "d_model"):
        if isinstance(config.get(key), int):
            return config[key]
    raise SpecError(f"model {model!r} names no hidden_size in its config.json; pass --width N0 N1")


def read_width(proxy_cfg: Mapping[str, Any], target_cfg: Mapping[str, Any],
               given: Sequence[int] | None = None) -> tuple[int, int] | None:
    """(n0, n1): ``given``; else ``task.width`` (synthetic); else the hidden sizes of two different
    ``task.model``s; None when the width does not change."""
    if given is not None:
        pair = tuple(given)
        if len(pair) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in pair):
            raise SpecError(f"--width takes two integers >= 1 (proxy and target width), got {list(pair)!r}")
        return None if pair[0] == pair[1] else pair
    w0, w1 = dotted(proxy_cfg, "task.width"), dotted(target_cfg, "task.width")
    if isinstance(w0, int) and isinstance(w1, int):
        return None if w0 == w1 else (w0, w1)
    m0, m1 = dotted(proxy_cfg, "task.model"), dotted(target_cfg, "task.model")
    if isinstance(m0, str) and isinstance(m1, str) and m0 != m1:
        return _hidden_size(m0), _hidden_size(m1)
    return None


def _rank(cfg: Mapping[str, Any]) -> int | None:
    value = dotted(cfg, "lora.rank", dotted(cfg, "lora.r"))
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _picked_proxy(target_cfg: Mapping[str, Any]) -> list[str]:
    """loradyn's proxy when none is named: rank r/4, at most 4 (one seed and a coarse grid follow)."""
    r1 = _rank(target_cfg)
    if r1 is None:
        return []
    return [f"lora.rank={max(1, min(4, r1 // 4))}"]


def make_plan(spec: Any, *, proxy: Sequence[str] = (), target: Sequence[str] = (), overrides: Sequence[str] = (),
              seeds: Any = None, alpha_rule: str | None = None, width: Sequence[int] | None = None,
              budget: Any = None, search: str = "bracket") -> TunePlan:
    """Resolve the proxy and target sweeps of ``spec`` and everything the transfer needs."""
    if search not in SEARCHES:
        raise SpecError(f"unknown search {search!r}: use {', '.join(SEARCHES)}")
    common = [str(o) for o in overrides]
    target = [str(o) for o in target] + ([f"seeds={seeds if isinstance(seeds, int) else list(seeds)}"]
                                         if seeds is not None else [])
    proxy = [str(o) for o in proxy]
    target_sweep = _fold(resolve_sweep(spec, [*common, *target], max_trials=None), "target")
    target_cfg = point_config(target_sweep)
    picked = not proxy
    if picked:
        proxy = _picked_proxy(target_cfg)
    keys = _keys(proxy)
    if alpha_rule is not None and not keys & set(_ALPHA_KEYS):
        r0 = dict(parse_overrides(proxy)).get("lora.rank", _rank(target_cfg))
        if isinstance(r0, int) and _rank(target_cfg):
            proxy = [*proxy, *_alpha_overrides(target_cfg, r0, canonical_alpha_rule(alpha_rule))]
    proxy_sweep = _fold(resolve_sweep(spec, [*common, *proxy], max_trials=None), "proxy")
    if proxy_sweep.metric != target_sweep.metric or proxy_sweep.mode != target_sweep.mode:
        raise SpecError("the proxy and the target rank trials by different metrics; set metric only in the spec")
    proxy_sweep = replace(proxy_sweep, name=f"{target_sweep.name}-proxy",
                          seeds=proxy_sweep.seeds if "seeds" in keys else target_sweep.seeds[:1])

    proxy_default = point_config(proxy_sweep)
    inits = [i for i in _axis(proxy_sweep, "lora.init", proxy_default)
             if i in _axis(target_sweep, "lora.init", target_cfg)]
    ratios = [r for r in _axis(proxy_sweep, "optim.lr_ratio", proxy_default)
              if r in _axis(target_sweep, "optim.lr_ratio", target_cfg)]
    if not inits or not ratios:
        what = "lora.init" if not inits else "optim.lr_ratio"
        raise SpecError(f"the proxy's {what} values and the target's have none in common; let the target keep them")
    if "optim.lr_a" in keys or "optim.lr_a" not in proxy_sweep.grid:
        lrs = _axis(proxy_sweep, "optim.lr_a", proxy_default)
        if "optim.lr_a" not in keys and isinstance(lrs[0], (int, float)):  # no axis: octaves around the spec's lr
            lrs = [lrs[0] * 2.0**k for k in range(-4, 5)]
    else:
        lrs = coarse_grid(proxy_sweep.grid["optim.lr_a"])
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 for v in lrs):
        raise SpecError(f"the proxy's optim.lr_a values must be numbers > 0, got {lrs!r}")
    lrs = sorted(set(float(v) for v in lrs))

    proxy_cfg = point_config(proxy_sweep, inits[0], ratios[0], lrs[0], proxy_sweep.seeds[0])
    target_point = point_config(target_sweep, inits[0], ratios[0], lrs[0], proxy_sweep.seeds[0])
    r0, r1 = _rank(proxy_cfg), _rank(target_cfg)
    rank = (r0, r1) if r0 is not None and r1 is not None else None
    method = dotted(target_cfg, "lora.method", "lora")
    equal = proxy_cfg == target_point
    rule, multiplier, notes = None, _multiplier(proxy_cfg), []
    if not equal:
        bad = [i for i in inits if i is not None and str(i) not in RULE_INITS]
        if bad or inits == [None]:
            raise SpecError(f"no transfer rule for lora.init {bad[0] if bad else 'unset'!r}: tune moves Init[A] and "
                            "Init[B] (lora.init: A or B); compare other inits with a plain loradyn sweep at the target")
        if dotted(proxy_cfg, "lora.method", "lora") != "lora":
            raise SpecError("the proxy must train a LoRA adapter (lora.method=lora); only the target may be full "
                            "finetuning")
        if method == "full":
            rank = None
            if any(str(i) != "B" for i in inits) or multiplier is None or not math.isclose(multiplier, 1.0):
                raise SpecError("a full-finetuning target needs an Init[B] proxy with multiplier alpha/r = 1 (μA's "
                                "transfer, arXiv 2602.06204): --proxy lora.init=B and lora.alpha = lora.rank "
                                "(or lora.alpha_rule=1)")
        else:
            rule = read_alpha_rule(proxy_cfg, target_cfg, rank, alpha_rule)
    if picked:
        notes.append(f"proxy picked by loradyn: {' '.join(proxy) or 'the target itself'}, seed "
                     f"{proxy_sweep.seeds[0]}, a one-octave grid of optim.lr_a")
    full_axes = {k: len(v) for k, v in target_sweep.grid.items() if k != "optim.lr_a" and len(v) > 1}
    steps0, steps1 = dotted(proxy_cfg, "train.steps"), dotted(target_cfg, "train.steps")
    plan = TunePlan(
        name=target_sweep.name, kind=target_sweep.kind, metric=target_sweep.metric, mode=target_sweep.mode,
        proxy=proxy_sweep, target=target_sweep, proxy_overrides=tuple(proxy), target_overrides=tuple(target),
        lrs=tuple(lrs), inits=tuple(inits), ratios=tuple(ratios), proxy_seeds=proxy_sweep.seeds,
        confirm_seeds=target_sweep.seeds, rank=rank,
        width=None if equal else read_width(proxy_cfg, target_cfg, width),
        alpha_rule=rule, proxy_multiplier=multiplier, target_method=method,
        proxy_steps=steps0 if isinstance(steps0, int) else None, target_steps=steps1 if isinstance(steps1, int) else None,
        full_lrs=tuple(target_sweep.grid["optim.lr_a"]) if "optim.lr_a" in target_sweep.grid else None,
        full_axes=full_axes, equal=equal, proxy_picked=picked, budget=parse_budget(budget), notes=tuple(notes),
        search=search,
    )
    if not equal:
        check_budget(plan)
    return plan


def _multiplier(cfg: Mapping[str, Any]) -> float | None:
    """The proxy's total multiplier α (PEFT's scaling) at its rank, where the configuration says it."""
    kind, value = _scaling(cfg)
    if kind == "alpha":
        return value
    rank = _rank(cfg)
    if kind == "rule" and rank is not None:
        from ..scaling import alpha_value

        return alpha_value(value, rank)
    return None


def check_budget(plan: TunePlan) -> None:
    """Refuse, before anything trains, a trial budget that cannot hold one proxy pass and the confirmation."""
    if plan.budget.trials is None:
        return
    proxy = plan.n_start * len(plan.proxy_seeds)
    need = proxy + plan.confirm_trials
    if plan.budget.trials < need:
        seeds = len(plan.proxy_seeds)
        raise SpecError(f"a budget of {plan.budget.trials} trials is too small for the confirmation step: the proxy needs "
                        f"{'at least ' if plan.search == 'bracket' else ''}{proxy} ({plan.n_start} points x {seeds} seed{'s' if seeds != 1 else ''}) and the "
                        f"confirmation {plan.confirm_trials} ({CONFIRM_POINTS} points x {len(plan.confirm_seeds)} seeds); "
                        f"raise --budget to at least {need}, or use fewer seeds or a coarser proxy grid")
