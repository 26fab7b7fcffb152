"""The instability alarm: when training has left the stable regime, which layer, and the likely fix.

The alarm reads what the feature-norm probe (:class:`loradyn.FeatureNormProbe`) and the loss give
at each step and fires on the first of (docs/alarm.md says why each one):

================ ===============================================================================
``nonfinite``    a loss, Z_A, Z_B, LoRA-output or update-size value is NaN or ±inf (always on)
``update``       the layer's update is large against its pretrained weight:
                 ``‖scaling·(B A − B₀ A₀)‖_F > update_ratio · ‖W₀‖_F``
``z_b``          the adapter's output is large against its input:
                 ``rms(scaling·Z_B) > z_b_ratio · rms(x)`` (data-averaged, as the probe records)
``loss``         the loss, averaged over the last ``window`` steps, exceeds ``loss_growth`` ×
                 its average over the first ``window`` steps
================ ===============================================================================

Growth of Z_A alone is *not* an alarm: under Init[A] Z_A = A·x grows ∝ width^1/2 at the optimal
learning rate (arXiv 2406.08447's internal instability) while the model learns well. Z_B is
measured against the layer's input rather than its own start because both zero-product inits
start from Z_B = 0.

* :class:`AlarmSpec`: the thresholds (a frozen spec, ``train.alarm`` of every sweep kind).
* :class:`AlarmMonitor`: consumes one trial's per-step records and returns an :class:`Alarm` once.
* :func:`likely_fix`: the fix to try, from the trial's init, LoRA+ ratio, rank and alpha rule.

The sensors on a torch model (probe with inputs, update sizes, per adapter of a pack) are in
:mod:`loradyn.alarm_watch`; the Trainer callback is :class:`loradyn.hf_alarm.AlarmCallback`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import SpecError
from .serialize import spec_from_dict, spec_to_dict

__all__ = ["CRITERIA", "Alarm", "AlarmMonitor", "AlarmSpec", "alarm_line", "alarm_metrics", "likely_fix"]

CRITERIA = ("nonfinite", "update", "z_b", "loss")  # the order in which one step's alarms are reported


def _threshold(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise SpecError(f"train.alarm.{name} must be a finite number > 0, or null to switch it off; got {value!r}")
    return float(value)


@dataclass(frozen=True)
class AlarmSpec:
    """When a trial counts as unstable (``train.alarm`` in a sweep spec; unknown keys rejected).

    Attributes:
        enabled: watch the trial (a non-finite loss stops a sweep trial even when off).
        every: check the probe and the update sizes every this many optimizer steps (the loss is
            watched at every step).
        window: steps averaged for the loss criterion.
        loss_growth: alarm when the mean loss of the last ``window`` steps exceeds this × the
            mean of the first ``window`` steps (``null``: off).
        z_b_ratio: alarm when a layer's ``rms(scaling·Z_B)`` exceeds this × ``rms(x)`` of its
            input (``null``: off).
        update_ratio: alarm when a layer's ``‖scaling·(B A − B₀ A₀)‖_F`` exceeds this ×
            ``‖W₀‖_F`` of its frozen weight (``null``: off).

    The defaults never fired on healthy training at good learning rates of loradyn's tasks
    (docs/alarm.md has the measurements) and fire within the first tens of steps where a
    learning rate makes Z_B run away.
    """

    enabled: bool = True
    every: int = 1
    window: int = 5
    loss_growth: float | None = 4.0
    z_b_ratio: float | None = 16.0
    update_ratio: float | None = 8.0

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise SpecError(f"train.alarm.enabled must be true or false, got {self.enabled!r}")
        for name in ("every", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(f"train.alarm.{name} must be an integer >= 1, got {value!r}")
        for name in ("loss_growth", "z_b_ratio", "update_ratio"):
            object.__setattr__(self, name, _threshold(getattr(self, name), name))
        if self.loss_growth is not None and self.loss_growth <= 1:
            raise SpecError(f"train.alarm.loss_growth must be > 1 (a loss above its start), got {self.loss_growth!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> AlarmSpec:
        return spec_from_dict(cls, data, _where="train.alarm")

    def to_dict(self) -> dict[str, Any]:
        return spec_to_dict(self)

    def checks(self, step: int) -> bool:
        """True when the probe and the update sizes are read at ``step``."""
        return self.enabled and step % self.every == 0


@dataclass(frozen=True)
class Alarm:
    """One alarm: at ``step``, ``feature`` of ``layer`` had ``value`` beyond ``threshold``.

    ``feature`` is ``loss``, ``z_a``, ``z_b``, ``lora_out``, ``x`` or ``update``; ``layer`` is
    ``None`` for the loss; ``reason`` is one of :data:`CRITERIA`.
    """

    step: int
    layer: str | None
    feature: str
    value: float
    threshold: float
    reason: str

    def describe(self) -> str:
        """What fired, in words (no fix): ``step 12: z_b of encoder.layer.0.query: ...``."""
        where = f" of {self.layer}" if self.layer else ""
        if self.reason == "nonfinite":
            what = f"{self.feature}{where} is {self.value}"
        elif self.reason == "update":
            what = f"update{where} is {self.value:.3g} x its pretrained weight (alarm above {self.threshold:g})"
        elif self.reason == "z_b":
            what = f"z_b{where}: rms(scaling*Z_B) is {self.value:.3g} x rms of its input (alarm above {self.threshold:g})"
        else:
            what = f"loss grew {self.value:.3g}x over its first steps (alarm above {self.threshold:g}x)"
        return f"step {self.step}: {what}"


def alarm_line(alarm: Alarm, fix: str | None = None) -> str:
    """The one line a user reads: ``loradyn alarm: <what fired>; likely fix: <fix>``."""
    line = f"loradyn alarm: {alarm.describe()}"
    return f"{line}; likely fix: {fix}" if fix else line


def alarm_metrics(alarm: Alarm) -> dict[str, Any]:
    """The results-table fields of an alarmed trial (``diverged_step`` and the ``alarm_*`` columns)."""
    return {
        "diverged_step": float(alarm.step),
        "alarm_step": float(alarm.step),
        "alarm_layer": alarm.layer or "",
        "alarm_feature": alarm.feature,
        "alarm_reason": alarm.reason,
        "alarm_value": float(alarm.value),
        "alarm_threshold": float(alarm.threshold),
    }


class AlarmMonitor:
    """Watch one trial (one adapter): feed each step's records, get an :class:`Alarm` once.

    A pure object (no torch): the sweep loops, the synthetic engine and the Trainer callback feed
    it the same kinds of numbers. After it has fired, :attr:`alarm` holds the alarm and
    :meth:`check` returns None.

    Args:
        spec: the thresholds.
    """

    def __init__(self, spec: AlarmSpec | None = None) -> None:
        self.spec = spec if spec is not None else AlarmSpec()
        self.alarm: Alarm | None = None
        self._first: list[float] = []
        self._recent: deque[float] = deque(maxlen=self.spec.window)
        self.peaks: dict[str, float] = {"loss": 0.0, "z_b": 0.0, "update": 0.0}  # the largest ratio seen

    def initial_loss(self) -> float | None:
        """The mean loss of the first ``window`` steps (None before that many steps)."""
        return sum(self._first) / len(self._first) if len(self._first) == self.spec.window else None

    def check(self, step: int, *, loss: float | None = None,
              features: Mapping[str, Mapping[str, float]] | None = None,
              updates: Mapping[str, float] | None = None) -> Alarm | None:
        """Feed step ``step``'s records; the alarm if one fires now (else None).

        Args:
            loss: the step's training loss.
            features: layer -> ``{"x": rms, "z_a": rms, "z_b": rms, "lora_out": rms}`` (the probe's
                rms values; any subset).
            updates: layer -> ``‖scaling·(B A − B₀ A₀)‖_F / ‖W₀‖_F``.
        """
        if self.alarm is not None or not self.spec.enabled:
            return None
        found = [a for a in (self._nonfinite(step, loss, features, updates), self._update(step, updates),
                             self._z_b(step, features), self._loss(step, loss)) if a is not None]
        if found:
            self.alarm = found[0]
        return self.alarm

    def _nonfinite(self, step, loss, features, updates) -> Alarm | None:
        if loss is not None and not math.isfinite(loss):
            return Alarm(step, None, "loss", float(loss), math.inf, "nonfinite")
        for layer, values in (features or {}).items():
            for feature, value in values.items():
                if not math.isfinite(value):
                    return Alarm(step, layer, feature, float(value), math.inf, "nonfinite")
        for layer, value in (updates or {}).items():
            if not math.isfinite(value):
                return Alarm(step, layer, "update", float(value), math.inf, "nonfinite")
        return None

    def _worst(self, step: int, ratios: Iterable[tuple[str, float]], key: str, threshold: float | None,
               feature: str) -> Alarm | None:
        worst = max(ratios, key=lambda kv: kv[1], default=None)
        if worst is None:
            return None
        self.peaks[key] = max(self.peaks[key], worst[1])
        if threshold is not None and worst[1] > threshold:
            return Alarm(step, worst[0], feature, worst[1], threshold, key)
        return None

    def _update(self, step, updates) -> Alarm | None:
        return self._worst(step, ((k, v) for k, v in (updates or {}).items() if math.isfinite(v)),
                           "update", self.spec.update_ratio, "update")

    def _z_b(self, step, features) -> Alarm | None:
        ratios = []
        for layer, values in (features or {}).items():
            x, out = values.get("x"), values.get("lora_out")
            if x is not None and out is not None and x > 0 and math.isfinite(out):
                ratios.append((layer, out / x))
        return self._worst(step, ratios, "z_b", self.spec.z_b_ratio, "z_b")

    def _loss(self, step, loss) -> Alarm | None:
        if loss is None or not math.isfinite(loss):
            return None
        if len(self._first) < self.spec.window:
            self._first.append(float(loss))
        self._recent.append(float(loss))
        start = self.initial_loss()
        if start is None or start <= 0:
            return None
        growth = (sum(self._recent) / len(self._recent)) / start
        self.peaks["loss"] = max(self.peaks["loss"], growth)
        if self.spec.loss_growth is not None and growth > self.spec.loss_growth:
            return Alarm(step, None, "loss", growth, self.spec.loss_growth, "loss")
        return None


_RANK_RULE = {  # alpha rule -> how the optimal lr_a moves with the rank under Init[A] (μA)
    "1/sqrt(r)": ("rsLoRA", "r^-1/4"),
    "1": ("lora_alpha proportional to r", "r^-1/2"),
}
HIGH_RANK = 32


def likely_fix(alarm: Alarm | None, init: str | None = None, lr_ratio: float | None = None,
               rank: int | None = None, alpha_rule: str | None = None) -> str:
    """The fix to try first, for a trial with this ``init``, LoRA+ ``lr_ratio``, ``rank`` and
    ``alpha_rule`` (``"1"``, ``"1/sqrt(r)"``/``"rslora"``, ``"1/r"``/``"alpha/r"``; None: unknown).

    Always: lower ``lr_a``. With Init[B]: a lower lr or Init[A] (Init[B] needs lr ∝ 1/width,
    arXiv 2406.08447). With LoRA+ (``lr_ratio > 1``): a smaller ratio (arXiv 2402.12354).
    With rsLoRA (or lora_alpha ∝ r) at a high rank (≥ :data:`HIGH_RANK`) under Init[A]: the optimal
    lr_a falls with the rank (μA, arXiv 2602.06204), so transfer it from a lower rank.
    """
    from .scaling import canonical_alpha_rule

    parts = ["lower lr_a (try 1/4 of it)"]
    if init == "B":
        parts.append("with Init[B] a lower lr, or switch to Init[A] (Init[B] needs lr ~ 1/width; arXiv 2406.08447)")
    if lr_ratio is not None and lr_ratio > 1:
        parts.append(f"with LoRA+ a smaller lr_ratio than {lr_ratio:g} (lr_b = ratio x lr_a runs away first; "
                     "arXiv 2402.12354)")
    try:
        rule = canonical_alpha_rule(alpha_rule) if alpha_rule is not None else None
    except ValueError:
        rule = None
    if rule in _RANK_RULE and rank is not None and rank >= HIGH_RANK and init != "B":  # μA's Init[A] rule
        name, law = _RANK_RULE[rule]
        parts.append(f"{name} at rank {rank}: the optimal lr_a falls as {law} (arXiv 2602.06204); transfer it "
                     f"from a lower rank (loradyn suggest-lr --rank R0 {rank}) or use a fixed lora_alpha")
    if alarm is not None and alarm.reason == "nonfinite" and alarm.feature == "loss":
        parts.append("or gradient clipping (train.max_grad_norm)")
    return "; ".join(parts)
