"""Feature-norm probes: the data-averaged norms of Z_A, Z_B and the LoRA output during training.

For a LoRA pair with input ``x`` (after LoRA dropout), arXiv 2406.08447 tracks

* ``z_a = A x`` (r-dim internal features; they grow ``∝ n^1/2`` under Init[A] with ``lr ∝ n^-1/2``,
  the paper's "internal instability"),
* ``z_b = B z_a`` (out-dim, before scaling),
* ``lora_out = scaling * z_b`` (what the adapter adds to the base layer's output),
* ``x``, the adapter's input itself, only with ``inputs=True`` (the alarm's scale for ``lora_out``,
  :mod:`loradyn.alarm`; embedding adapters have none).

:class:`FeatureNormProbe` hooks every LoRA pair that :func:`loradyn.discover.iter_lora_layers`
finds (loradyn's own layers and PEFT layers, every adapter) and records, per training step, the
norm of each data point's feature vector averaged over all data points (every leading dimension:
batch, sequence, ...) and over all forward calls within the step (gradient accumulation). The
average is weighted by data points: ``sum of norms / number of vectors``. Padding tokens count
like any other token.

Stats (each a norm of one vector ``v`` of dimension ``d``, then data-averaged):

======== =========================== ===========================================================
``l2``   ``||v||_2``                 Euclidean norm; carries a ``sqrt(d)`` for ``d``-dim vectors
``rms``  ``||v||_2 / sqrt(d)``       coordinate RMS; Θ(1) for well-scaled features
``l1``   ``||v||_1``
``max``  ``||v||_inf``               largest absolute coordinate
======== =========================== ===========================================================

How it hooks: a forward hook on the submodule whose output is Z_A (``handle.a_module``: PEFT's
``lora_A[adapter]``, loradyn's ``lora_A``) sees Z_A exactly as the model computes it (after
dropout and PEFT's dtype cast). Z_B's norms are computed from it under ``torch.no_grad()``: for
``l2``/``rms`` without materialising Z_B, as ``||B z||^2 = z^T (B^T B) z`` with the (r, r) Gram
matrix in float64 (O(r^2) per vector); ``l1``/``max`` recompute ``z_b = z_a B^T`` (the size of
lora_B's own forward), in float32 or float64, and cost noticeably more (see
``benchmarks/bench_probe.py``). Embedding adapters have no A submodule: a forward hook on the
layer recomputes ``z_a = A^T[ids]``. Everything is
detached and reduced to a few numbers per call, so no activation or autograd graph is kept, the
model's outputs, gradients and RNG stream are untouched, and hooks are removed on exit.

Every forward call while attached is recorded (also under ``no_grad``/``inference_mode``); wrap
evaluation loops in :meth:`FeatureNormProbe.paused`. Adapters that are merged, disabled or
inactive contribute no Z_A and are not recorded.
``lora_bias`` (PEFT) is not part of ``z_b``/``lora_out``. For embeddings whose base layer has a
scalar ``embed_scale`` (e.g. Gemma3), ``lora_out`` includes that scale as the layer does.
DoRA (``use_dora=True``): PEFT's DoRA still calls ``lora_A``/``lora_B``, so ``z_a`` and ``z_b`` are
the usual ones; ``lora_out`` is ``scaling * z_b`` **without** DoRA's magnitude renormalisation
(DoRA's actual contribution is ``m/||W + scaling BA|| * (W x + scaling z_b) - W x``). PEFT's DoRA
also calls ``lora_A`` on an identity matrix to build its weight norm, so for DoRA adapters the
probe hooks the magnitude module instead and recomputes ``z_a = A x`` from its input.
Conv adapters are not probed. Activation checkpointing re-runs forwards during backward: both the sums and the counts double,
so the averages are unchanged.

Example:
    >>> probe = FeatureNormProbe(model, every=10)            # doctest: +SKIP
    >>> with probe:                                           # doctest: +SKIP
    ...     for batch in loader:
    ...         loss = model(**batch).loss; loss.backward(); opt.step(); opt.zero_grad()
    ...         probe.step()
    >>> probe.to_frame()          # columns: step, module, feature, stat, value   # doctest: +SKIP
    >>> probe.instability_report()                                               # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .discover import LoraHandle, iter_lora_layers
from .errors import LoradynError
from .probe_tables import COLUMNS, instability_report

__all__ = ["FEATURES", "STATS", "FeatureNormProbe"]

FEATURES = ("z_a", "z_b", "lora_out")
STATS = ("rms", "l2", "l1", "max")

_NO_LORA = (
    "no LoRA layers found in model: add adapters first (loradyn.apply_lora(model, spec) or "
    "peft.get_peft_model(model, config)), then build the FeatureNormProbe"
)

# The stats come from three per-vector norms; "rms" reuses the l2 norm.
_BASE_OF = {"rms": "l2", "l2": "l2", "l1": "l1", "max": "max"}


def _check_stats(stats: str | Sequence[str]) -> tuple[str, ...]:
    stats = (stats,) if isinstance(stats, str) else tuple(stats)
    bad = [s for s in stats if s not in STATS]
    if bad or not stats:
        raise LoradynError(f"unknown stat(s) {bad or stats!r}: choose from {', '.join(STATS)}")
    return tuple(dict.fromkeys(stats))


class _Site:
    """Running sums for one LoRA pair during the current step (all detached)."""

    __slots__ = ("handle", "acc", "count")

    def __init__(self, handle: LoraHandle) -> None:
        self.handle = handle
        self.acc: torch.Tensor | None = None  # (2, n_base): rows z_a, z_b; float64 sums of norms
        self.count = 0  # number of data points (vectors) seen this step

    def reset(self) -> None:
        self.acc, self.count = None, 0


class FeatureNormProbe:
    """Record data-averaged norms of ``z_a``, ``z_b`` and ``lora_out`` for every LoRA pair.

    Use as a context manager (hooks are registered on enter, removed on exit) and call
    :meth:`step` once per optimizer step. Only steps with ``step % every == 0`` are recorded;
    other steps cost nothing beyond a flag check per hook call.

    Args:
        model: a model with loradyn or PEFT LoRA layers.
        every: record every ``every``-th step (step numbers start at 0).
        stats: norms to record, any of ``"rms"``, ``"l2"``, ``"l1"``, ``"max"``.
        inputs: also record feature ``x``, the norms of each linear adapter's input (one more
            read of the input per recorded call).

    Raises:
        LoradynError: for an unknown stat, ``every < 1``, or a model without LoRA layers.
    """

    def __init__(
        self, model: nn.Module, *, every: int = 1, stats: str | Sequence[str] = ("rms", "l2"),
        inputs: bool = False,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise LoradynError(f"every must be an integer >= 1, got {every!r}")
        if not isinstance(model, nn.Module) or next(iter_lora_layers(model), None) is None:
            raise LoradynError(_NO_LORA)
        self.model = model
        self.every = every
        self.stats = _check_stats(stats)
        self._base = tuple(dict.fromkeys(_BASE_OF[s] for s in self.stats))  # norms to compute
        self._needs_z_b = "l1" in self._base or "max" in self._base  # these materialise z_b
        self.inputs = bool(inputs)
        self.features = (*FEATURES, "x") if self.inputs else FEATURES
        self.current_step = 0
        self._rows: list[tuple[int, str, str, str, float]] = []
        self._sites: list[_Site] = []
        self._hooks: list[Any] = []
        self._paused = False

    # --- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> FeatureNormProbe:
        self.attach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def attach(self) -> FeatureNormProbe:
        """Register the forward hooks (done by ``with probe:``)."""
        if self._hooks:
            raise LoradynError("probe is already attached; use it in one `with` block at a time")
        handles = list(iter_lora_layers(self.model))
        if not handles:  # adapters removed after the probe was built
            raise LoradynError(_NO_LORA)
        # conv adapters (4-D lora_A) have no per-token vectors along the last dim: not probed
        self._sites = [_Site(h) for h in handles if h.lora_A.dim() == 2]
        for site in self._sites:
            h = site.handle
            if h.kind == "embedding":
                hook = h.module.register_forward_hook(self._embedding_hook(site), with_kwargs=True)
            elif h.magnitude is not None:
                # DoRA calls lora_A on an identity matrix to build its weight norm, so lora_A's
                # hook would also see that; the magnitude module's input is exactly lora_A's input
                dora = h.module.lora_magnitude_vector[h.adapter]
                hook = dora.register_forward_pre_hook(self._dora_hook(site))
            else:
                hook = h.a_module.register_forward_hook(self._linear_hook(site))
            self._hooks.append(hook)
        return self

    def detach(self) -> None:
        """Flush the current step's sums into records and remove every hook."""
        self._flush()
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Within this block forward calls are not recorded (e.g. an evaluation loop)."""
        prev, self._paused = self._paused, True
        try:
            yield
        finally:
            self._paused = prev

    # --- steps -----------------------------------------------------------------------------
    @property
    def recording(self) -> bool:
        """True when forward calls in the current step are recorded."""
        return not self._paused and self.current_step % self.every == 0

    def step(self) -> None:
        """Close the current step (its averages become records) and advance by one."""
        self.set_step(self.current_step + 1)

    def set_step(self, step: int) -> None:
        """Close the current step and continue at ``step``."""
        self._flush()
        self.current_step = int(step)

    # --- hooks -----------------------------------------------------------------------------
    def _linear_hook(self, site: _Site):
        def hook(module: nn.Module, args: tuple, z_a: torch.Tensor) -> None:
            if self.recording and isinstance(z_a, torch.Tensor):
                with torch.no_grad():
                    x = args[0].detach() if self.inputs and args and isinstance(args[0], torch.Tensor) else None
                    self._accumulate(site, z_a.detach(), x)

        return hook

    def _dora_hook(self, site: _Site):
        def hook(module: nn.Module, args: tuple) -> None:
            if self.recording and args and isinstance(args[0], torch.Tensor):
                with torch.no_grad():
                    x = args[0].detach()
                    z_a = F.linear(x, site.handle.lora_A.detach())
                    self._accumulate(site, z_a, x if self.inputs else None)

        return hook

    def _embedding_hook(self, site: _Site):
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            if not self.recording or kwargs.get("adapter_names") is not None:
                return  # mixed-batch forwards route sub-batches to other adapters
            if not site.handle.is_active() or not args:
                return
            ids = args[0]
            with torch.no_grad():
                z_a = F.embedding(ids, site.handle.lora_A.detach().T)
                self._accumulate(site, z_a)

        return hook

    def _accumulate(self, site: _Site, z_a: torch.Tensor, x: torch.Tensor | None = None) -> None:
        """Add this call's sums of per-vector norms of z_a, z_b = B z_a and (``inputs``) x
        (no_grad, detached)."""
        B = site.handle.lora_B.detach()
        z_a = z_a.reshape(-1, z_a.shape[-1])
        # z_a is (N, r) with r small: its float64 copy is cheap and makes the sums exact enough
        z_a64 = z_a.to(torch.float64)
        sums_a: dict[str, torch.Tensor] = {}
        sums_b: dict[str, torch.Tensor] = {}
        if "l2" in self._base:
            # ||B z||^2 = z^T (B^T B) z with the (r, r) Gram matrix, in float64: O(N r^2) instead
            # of materialising the (N, out) z_b (which dominated the probe's cost)
            B64 = B.to(torch.float64)
            sq_b = ((z_a64 @ (B64.T @ B64)) * z_a64).sum(-1).clamp_min_(0.0)
            sums_a["l2"] = torch.linalg.vector_norm(z_a64, dim=-1).sum()
            sums_b["l2"] = sq_b.sqrt().sum()
        if self._needs_z_b:
            # l1 / max need |z_b| itself: one (N, r) x (r, out) product (the size of lora_B's own
            # forward) in float32, or float64 for a float64 model. `z @ B.T.contiguous()` is ~8x
            # faster on CPU than F.linear(z, B) for such a small inner dimension.
            dtype = torch.float64 if z_a.dtype == torch.float64 else torch.float32
            abs_a = z_a64.abs()
            abs_b = (z_a.to(dtype) @ B.to(dtype).T.contiguous()).abs_()
            if "l1" in self._base:
                sums_a["l1"] = abs_a.sum()
                sums_b["l1"] = abs_b.sum().to(torch.float64)  # sum(dtype=f64) is slow
            if "max" in self._base:
                sums_a["max"] = abs_a.amax(-1).sum()
                sums_b["max"] = abs_b.amax(-1).sum().to(torch.float64)
        rows = [torch.stack([sums_a[b] for b in self._base]), torch.stack([sums_b[b] for b in self._base])]
        if self.inputs:  # NaN (not recorded) for adapters without an input vector (embeddings)
            rows.append(self._input_sums(x) if x is not None else torch.full_like(rows[0], math.nan))
        part = torch.stack(rows)
        site.acc = part if site.acc is None else site.acc + part
        site.count += z_a.shape[0]

    def _input_sums(self, x: torch.Tensor) -> torch.Tensor:
        """Sums over vectors of the base norms of the input x (float64 accumulation)."""
        x = x.reshape(-1, x.shape[-1])
        out = []
        for base in self._base:
            if base == "l2":
                out.append(torch.linalg.vector_norm(x, dim=-1, dtype=torch.float64).sum())
            elif base == "l1":
                out.append(x.abs().sum(-1, dtype=torch.float64).sum())
            else:
                out.append(x.abs().amax(-1).to(torch.float64).sum())
        return torch.stack(out)

    # --- records ---------------------------------------------------------------------------
    def _lora_out_factor(self, handle: LoraHandle) -> float:
        factor = abs(handle.scaling)
        if handle.kind == "embedding":
            # scaled embeddings (Gemma-style) scale the adapter output too, in PEFT and loradyn
            embed_scale = getattr(handle.base_layer, "embed_scale", None)
            if isinstance(embed_scale, (int, float)) or (
                isinstance(embed_scale, torch.Tensor) and embed_scale.numel() == 1
            ):
                factor *= abs(float(embed_scale))
        return factor

    def _pending_rows(self) -> list[tuple[int, str, str, str, float]]:
        live = [s for s in self._sites if s.acc is not None and s.count > 0]
        if not live:
            return []
        # one device→host transfer for the whole step
        sums = torch.stack([s.acc.to("cpu") for s in live]).tolist()
        rows = []
        for site, (za, zb, *xs) in zip(live, sums):
            h = site.handle
            dims = {"z_a": h.rank, "z_b": h.out_features, "lora_out": h.out_features, "x": h.in_features}
            base_sums = {
                "z_a": za,
                "z_b": zb,
                "lora_out": [v * self._lora_out_factor(h) for v in zb],
            }
            if xs and not math.isnan(xs[0][0]):
                base_sums["x"] = xs[0]
            for feature in self.features:
                if feature not in base_sums:
                    continue
                for stat in self.stats:
                    value = base_sums[feature][self._base.index(_BASE_OF[stat])] / site.count
                    if stat == "rms":
                        value /= math.sqrt(dims[feature])
                    rows.append((self.current_step, h.qualname, feature, stat, value))
        return rows

    def _flush(self) -> None:
        self._rows.extend(self._pending_rows())
        for site in self._sites:
            site.reset()

    def take_rows(self) -> list[tuple[int, str, str, str, float]]:
        """The records of the steps closed so far as ``(step, module, feature, stat, value)`` tuples,
        removed from the probe (a loop that reads every step keeps memory flat)."""
        rows, self._rows = self._rows, []
        return rows

    @property
    def records(self) -> list[dict[str, Any]]:
        """All records so far (including the step in progress) as dicts with the frame's columns."""
        return [dict(zip(COLUMNS, row)) for row in (*self._rows, *self._pending_rows())]

    def to_frame(self):
        """Records as a tidy DataFrame with columns ``step, module, feature, stat, value``."""
        import pandas as pd

        rows = [*self._rows, *self._pending_rows()]
        frame = pd.DataFrame(rows, columns=COLUMNS)
        return frame.astype({"step": "int64", "value": "float64"})

    def summary(self, stat: str | None = None):
        """Wide view: one row per (module, feature), one column per step, values of ``stat``."""
        stat = self._default_stat(stat)
        frame = self.to_frame()
        frame = frame[frame["stat"] == stat]
        return frame.pivot_table(
            index=["module", "feature"], columns="step", values="value", dropna=False
        )

    def _default_stat(self, stat: str | None) -> str:
        if stat is None:
            return "rms" if "rms" in self.stats else self.stats[0]
        if stat not in self.stats:
            raise LoradynError(
                f"stat {stat!r} was not recorded: choose from {', '.join(self.stats)}"
            )
        return stat

    def latest(self, stat: str | None = None):
        """Records of the most recently recorded step only (cheap at any run length), as a tidy
        DataFrame; with ``stat``, only that stat's rows."""
        import pandas as pd

        if stat is not None:
            self._default_stat(stat)  # a stat that was not recorded is an error, not an empty table
        rows = self._pending_rows()
        last = rows[-1][0] if rows else self._rows[-1][0] if self._rows else None
        i = len(self._rows)
        while i and self._rows[i - 1][0] == last:  # records are appended in step order
            i -= 1
        rows = [r for r in (*self._rows[i:], *rows) if stat is None or r[3] == stat]
        frame = pd.DataFrame(rows, columns=COLUMNS)
        return frame.astype({"step": "int64", "value": "float64"})

    def instability_report(self, stat: str | None = None) -> dict[str, Any]:
        """Which (module, feature) grew fastest, and where the first non-finite value appeared.

        :func:`loradyn.probe_tables.instability_report` on :meth:`to_frame` (see there for the
        returned dict: ``module``, ``feature``, ``growth``, ``stat``, ``growth_by_feature``,
        ``first_nonfinite``).

        Args:
            stat: which recorded stat to use (default ``"rms"`` if recorded).
        """
        return instability_report(self.to_frame(), self._default_stat(stat))

    def __repr__(self) -> str:
        state = "attached" if self._hooks else "detached"
        return (
            f"FeatureNormProbe({len(self._sites)} pairs, every={self.every}, stats={self.stats}, "
            f"step={self.current_step}, {state})"
        )
