"""The LoRA coordinate check: how the adapter's features and their per-step changes scale with width.

In the style of μP's coordinate check (arXiv 2203.03466): train the same model at several widths for
a few steps, record the coordinate size (RMS) of each feature at each step, and look at how it moves
with width. For every LoRA pair (A: r × in, B: out × r, input x) at step t (after t updates):

============== ======================================== =================================================
``z_a``        Z_A = A·x (r-dim)                         grows ∝ n^1/2 under Init[A] at lr ∝ n^-1/2
``z_b``        Z_B = B·Z_A (out-dim, before scaling)     the adapter's output feature
``dz_b``       Z_B(t) − Z_B(t−1): the change update t made (at the input x of step t−1)
``dz_b_a``     B_{t−1}·ΔA·x: the part from A's update    δ1 of docs/theory.md §1
``dz_b_b``     ΔB·A_{t−1}·x: the part from B's update    δ2
``dz_b_ab``    ΔB·ΔA·x: the cross term                   δ3 (``dz_b`` = the sum of the three vectors)
``loss``       the training loss at step t (module ``""``)
============== ======================================== =================================================

Each value is a data average of per-vector RMS, ``mean over data points of ||v||_2 / sqrt(dim)``,
as :class:`loradyn.FeatureNormProbe`'s ``rms``; the ``dz_*`` rows exist for steps 1..T. The
change is taken at a fixed input (the one of step t−1), so it is the adapter's own change even in a
deep model whose earlier layers move too. Norms go through r × r Gram matrices in float64
(``||B v||² = vᵀ(BᵀB)v``), so no out-sized feature is materialised.

The training loop is plain: one batch, ``steps`` full-batch Adam (or AdamW) updates with lr_a on
lora_A and lr_b = lr_ratio · lr_a on lora_B (:func:`loradyn.loraplus_param_groups`: any other
trainable tensor follows its LoRA+ group). A non-finite loss ends that run at that step.

Example (a user's model; see the README for PEFT):
    >>> def make(width, seed):                                      # doctest: +SKIP
    ...     torch.manual_seed(seed)
    ...     net = nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))
    ...     return apply_lora(net, LoraSpec(rank=4, alpha=4, target_modules=("2",), distribution="gaussian"))
    >>> table = coord_check(make, [128, 512, 2048], lr=lambda n: 0.01 * (n / 128) ** -0.5,
    ...                     batch=x, loss=lambda model, x: model(x).square().mean())   # doctest: +SKIP
    >>> coord_slopes(table)                                         # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .discover import LoraHandle, iter_lora_layers
from .errors import LoradynError

__all__ = ["COLUMNS", "FEATURES", "coord_check", "coord_slopes"]

COLUMNS = ["width", "seed", "lr_a", "lr_b", "step", "module", "feature", "value"]
FEATURES = ("z_a", "z_b", "dz_b", "dz_b_a", "dz_b_b", "dz_b_ab", "loss")

LrRule = float | Callable[[int], float] | Mapping[int, float]


def _lr_at(lr: LrRule, width: int) -> float:
    if isinstance(lr, Mapping):
        if width not in lr:
            raise LoradynError(f"lr has no entry for width {width}; give one per width or a function of the width")
        value = lr[width]
    elif callable(lr):
        value = lr(width)
    else:
        value = lr
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise LoradynError(f"lr at width {width} must be a finite number > 0, got {value!r}")
    return float(value)


def _seed_list(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, bool):
        raise LoradynError(f"seeds must be a count >= 1 or a list of seeds, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise LoradynError(f"seeds must be a count >= 1 or a list of seeds, got {seeds!r}")
        return list(range(seeds))
    out = list(seeds)
    if not out or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in out):
        raise LoradynError(f"seeds must be a count >= 1 or a list of integers >= 0, got {seeds!r}")
    return out


def _check_widths(widths: Sequence[int]) -> list[int]:
    out = list(widths) if not isinstance(widths, (str, bytes)) else []
    if not out or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in out):
        raise LoradynError(f"widths must be a non-empty list of integers >= 1, got {widths!r}")
    return out


def _default_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    if not isinstance(batch, Mapping):
        raise LoradynError("pass loss=fn(model, batch) -> scalar tensor (the default reads model(**batch).loss)")
    out = model(**batch)
    value = getattr(out, "loss", None)
    if value is None and isinstance(out, Mapping):
        value = out.get("loss")
    if not isinstance(value, torch.Tensor):
        raise LoradynError("model(**batch) returned no .loss: pass loss=fn(model, batch) -> scalar tensor")
    return value


class _Inputs:
    """Forward hooks that keep each pair's adapter input of the current step (detached)."""

    def __init__(self, handles: list[LoraHandle]) -> None:
        self.seen: dict[str, list[torch.Tensor]] = {h.qualname: [] for h in handles}
        self.hooks = [h.a_module.register_forward_hook(self._hook(h.qualname)) for h in handles]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, out: Any) -> None:
            if args and isinstance(args[0], torch.Tensor):
                self.seen[name].append(args[0].detach().reshape(-1, args[0].shape[-1]))

        return hook

    def take(self) -> dict[str, torch.Tensor]:
        out = {k: torch.cat(v) if len(v) > 1 else v[0] for k, v in self.seen.items() if v}
        for v in self.seen.values():
            v.clear()
        return out

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def _rms(z: torch.Tensor, gram: torch.Tensor | None, dim: int) -> float:
    """mean over rows of ||z_row · G-metric|| / sqrt(dim): ||v|| for v = z (gram None) or v = M z with
    gram = MᵀM."""
    sq = (z * z).sum(-1) if gram is None else ((z @ gram) * z).sum(-1)
    return float(sq.clamp_min(0).sqrt().mean()) / math.sqrt(dim)


def _pairs(model: nn.Module) -> list[LoraHandle]:
    handles = [h for h in iter_lora_layers(model) if h.kind == "linear" and h.lora_A.dim() == 2]
    if not handles:
        raise LoradynError("no linear LoRA layers found in the model: add adapters (loradyn.apply_lora or "
                           "peft.get_peft_model) inside make_model")
    if any(h.magnitude is not None for h in handles):
        raise LoradynError("DoRA adapters are not supported by the coordinate check (use_dora=False)")
    return handles


def _built(out: Any, batch: Any) -> tuple[nn.Module, Any]:
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], nn.Module):
        return out
    if isinstance(out, nn.Module):
        if batch is None:
            raise LoradynError("make_model returned a model but no batch: pass batch=... or return (model, batch)")
        return out, batch
    raise LoradynError(f"make_model must return an nn.Module or (nn.Module, batch), got {type(out).__name__}")


def _one_run(model: nn.Module, batch: Any, loss_fn, lr_a: float, lr_b: float, steps: int, optim: dict,
             width: int, seed: int) -> list[tuple]:
    from .optim import loraplus_param_groups

    handles = _pairs(model)
    groups = loraplus_param_groups(model, lr=lr_a, lr_ratio=lr_b / lr_a, weight_decay=optim["weight_decay"])
    cls = torch.optim.AdamW if optim["name"] == "adamw" else torch.optim.Adam
    opt = cls([{k: v for k, v in g.items() if k in ("params", "lr", "weight_decay")} for g in groups],
              betas=optim["betas"], eps=optim["eps"])
    rows: list[tuple] = []
    base = (width, seed, lr_a, lr_b)
    inputs = _Inputs(handles)
    try:
        for t in range(steps + 1):
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch)
            value = float(loss.detach())
            rows.append((*base, t, "", "loss", value))
            xs = inputs.take()
            before = {}
            with torch.no_grad():
                for h in handles:
                    x = xs.get(h.qualname)
                    if x is None:
                        continue
                    a, b = h.lora_A.detach().double(), h.lora_B.detach().double()
                    z_a = x.double() @ a.T
                    rows.append((*base, t, h.qualname, "z_a", _rms(z_a, None, h.rank)))
                    rows.append((*base, t, h.qualname, "z_b", _rms(z_a, b.T @ b, h.out_features)))
                    before[h.qualname] = (x.double(), a.clone(), b.clone(), z_a)
            if t == steps or not math.isfinite(value):
                break
            loss.backward()
            opt.step()
            with torch.no_grad():
                for h in handles:
                    if h.qualname not in before:
                        continue
                    x, a0, b0, z_a0 = before[h.qualname]
                    a1, b1 = h.lora_A.detach().double(), h.lora_B.detach().double()
                    dz_a = x @ (a1 - a0).T
                    db = b1 - b0
                    gram_db = db.T @ db
                    both = torch.cat([b1, -b0], dim=1)  # Z_B(t+1) − Z_B(t) = [B1, −B0]·[Z_A1; Z_A0]
                    out = h.out_features
                    step_rows = {
                        "dz_b": _rms(torch.cat([z_a0 + dz_a, z_a0], dim=1), both.T @ both, out),
                        "dz_b_a": _rms(dz_a, b0.T @ b0, out),
                        "dz_b_b": _rms(z_a0, gram_db, out),
                        "dz_b_ab": _rms(dz_a, gram_db, out),
                    }
                    rows.extend((*base, t + 1, h.qualname, f, v) for f, v in step_rows.items())
    finally:
        inputs.remove()
    return rows


def coord_check(
    make_model: Callable[..., Any],
    widths: Sequence[int],
    *,
    lr: LrRule,
    steps: int = 5,
    seeds: int | Sequence[int] = 3,
    lr_ratio: float = 1.0,
    batch: Any = None,
    loss: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    optimizer: str = "adam",
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> pd.DataFrame:
    """Train ``make_model(width, seed)`` for ``steps`` updates at each width and seed, and record the
    RMS of Z_A, Z_B and of each step's change of Z_B split into A's and B's part (module docstring).

    Args:
        make_model: ``make_model(width, seed)`` (or ``make_model(width)``, called after
            ``torch.manual_seed(seed)``) returns the model with LoRA adapters (loradyn or PEFT), or
            ``(model, batch)`` when the inputs depend on the width.
        widths: the widths to compare.
        lr: lr_a, as one number, a function of the width (``lambda n: c * (n / 128) ** -0.5``) or a
            ``{width: lr}`` mapping.
        steps: updates T; steps 0..T are recorded.
        seeds: a count (seeds 0..k-1) or a list of seeds.
        lr_ratio: lr_b / lr_a (LoRA+).
        batch: the training batch, the same at every step (unless ``make_model`` returns one).
        loss: ``loss(model, batch) -> scalar tensor``; default ``model(**batch).loss``.
        optimizer: ``"adam"`` or ``"adamw"``; ``betas``, ``eps``, ``weight_decay`` as in torch.

    Returns:
        A tidy table with columns :data:`COLUMNS`: ``width, seed, lr_a, lr_b, step, module,
        feature, value``.

    Raises:
        LoradynError: bad arguments, a model without linear LoRA layers, or DoRA adapters (one line).
    """
    widths = _check_widths(widths)
    seed_list = _seed_list(seeds)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise LoradynError(f"steps must be an integer >= 1, got {steps!r}")
    if optimizer not in ("adam", "adamw"):
        raise LoradynError(f"optimizer must be 'adam' or 'adamw', got {optimizer!r}")
    if isinstance(lr_ratio, bool) or not isinstance(lr_ratio, (int, float)) or not (math.isfinite(lr_ratio) and lr_ratio > 0):
        raise LoradynError(f"lr_ratio must be a finite number > 0, got {lr_ratio!r}")
    if not callable(make_model):
        raise LoradynError("make_model must be a function (width, seed) -> model or (model, batch)")
    try:
        two_args = len(inspect.signature(make_model).parameters) >= 2
    except (TypeError, ValueError):
        two_args = True
    optim = {"name": optimizer, "betas": tuple(betas), "eps": float(eps), "weight_decay": float(weight_decay)}
    loss_fn = loss or _default_loss
    rows: list[tuple] = []
    for width in widths:
        lr_a = _lr_at(lr, width)
        for seed in seed_list:
            torch.manual_seed(seed)
            model, data = _built(make_model(width, seed) if two_args else make_model(width), batch)
            rows.extend(_one_run(model, data, loss_fn, lr_a, lr_a * lr_ratio, steps, optim, width, seed))
    return pd.DataFrame(rows, columns=COLUMNS)


def coord_slopes(table: pd.DataFrame, *, by: Sequence[str] = (), n_resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> pd.DataFrame:
    """Slope of log2 RMS against log2 width, per (``by``..., module, feature, step), with a seed-bootstrap CI.

    The slope is the least-squares fit through the seed-mean log2 RMS at each width; the CI is the
    percentile interval (:func:`loradyn.bootstrap.percentile_ci`, expanded for few seeds) of the
    same fit when each width's seeds are resampled with replacement (independently per width: the
    seeds of two widths are different models). Zero or non-finite values are left out. Returns
    ``by..., module, feature, step, slope, ci_low, ci_high, n_widths, n_seeds``.
    """
    from .bootstrap import percentile_ci

    need = [*by, "width", "seed", "step", "module", "feature", "value"]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise LoradynError(f"coord-check table lacks column(s) {', '.join(missing)}")
    rng = np.random.default_rng(seed)
    keys = [*by, "module", "feature", "step"]
    out = []
    for key, g in table.groupby(keys, sort=True, dropna=False):
        g = g[np.isfinite(g["value"].astype(float)) & (g["value"].astype(float) > 0)]
        per_width = {int(w): np.log2(gw["value"].to_numpy(float)) for w, gw in g.groupby("width")}
        xs = np.log2(np.array(sorted(per_width), dtype=float))
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        row.update(slope=math.nan, ci_low=math.nan, ci_high=math.nan, n_widths=len(xs),
                   n_seeds=min((len(v) for v in per_width.values()), default=0))
        if len(xs) >= 2:
            ys = [per_width[w] for w in sorted(per_width)]
            xc = xs - xs.mean()
            row["slope"] = float(xc @ np.array([y.mean() for y in ys]) / (xc @ xc))
            boot = np.stack([y[rng.integers(0, len(y), size=(n_resamples, len(y)))].mean(axis=1) for y in ys], axis=1)
            slopes = (boot - boot.mean(axis=1, keepdims=True)) @ xc / (xc @ xc)
            row["ci_low"], row["ci_high"] = percentile_ci(slopes, level, n_seeds=row["n_seeds"])
        out.append(row)
    return pd.DataFrame(out, columns=[*keys, "slope", "ci_low", "ci_high", "n_widths", "n_seeds"])
