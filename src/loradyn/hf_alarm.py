"""The instability alarm in ``transformers.Trainer``: one log line naming the layer, the feature and the
likely fix, and (when asked) a stop.

    >>> loradyn.hf.setup(trainer, init="A", lr_ratio=16, alarm=True, stop_on_alarm=True)   # doctest: +SKIP

:class:`AlarmCallback` hooks its own :class:`loradyn.FeatureNormProbe` (rms of Z_A, Z_B, the LoRA
output and the adapter's input, every ``spec.every`` steps), reads the update sizes of every LoRA
layer (:class:`loradyn.alarm_watch.UpdateSizes`) after each optimizer step and the training loss
at every logging step (Trainer averages it over the logging interval), and feeds them to one
:class:`loradyn.alarm.AlarmMonitor` per active adapter. When it fires, the main process logs ONE
line (logger ``loradyn.alarm``, level WARNING: ``loradyn alarm: step 12: z_b of <layer>: ...;
likely fix: ...``; steps counted as Trainer's ``global_step``), the alarm is kept in :attr:`AlarmCallback.alarm` and in the logs as
``loradyn/alarm_step``, and with ``stop=True`` it sets ``control.should_training_stop``. Under
DDP the stop is agreed across ranks (one all-reduce per check) so that every rank stops at the
same step.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from .alarm import Alarm, AlarmSpec, alarm_line, likely_fix
from .alarm_watch import ModelWatch
from .discover import iter_lora_layers
from .errors import LoradynError
from .probes import FeatureNormProbe

__all__ = ["AlarmCallback", "enable_alarm"]

logger = logging.getLogger("loradyn.alarm")


def _as_spec(spec: AlarmSpec | Mapping[str, Any] | bool | None) -> AlarmSpec:
    if spec is None or spec is True:
        return AlarmSpec()
    if isinstance(spec, AlarmSpec):
        return spec
    if isinstance(spec, Mapping):
        return AlarmSpec.from_dict(spec)
    raise LoradynError(f"alarm must be True, an AlarmSpec or a mapping of its fields, got {spec!r}")


def _alpha_rule(model) -> str | None:
    """``1/sqrt(r)`` for rsLoRA adapters, ``1/r`` for a fixed lora_alpha (PEFT's usage)."""
    config = getattr(model, "peft_config", None)
    if isinstance(config, Mapping) and config:
        return "1/sqrt(r)" if getattr(next(iter(config.values())), "use_rslora", False) else "1/r"
    return None


class AlarmCallback(TrainerCallback):
    """Watch training for instability (:mod:`loradyn.alarm`); log one line, optionally stop.

    Args:
        spec: the thresholds (:class:`loradyn.alarm.AlarmSpec`, a mapping of its fields, or None
            for the defaults).
        stop: set ``control.should_training_stop`` when the alarm fires.
        init, lr_ratio: the trial's init (``"A"``/``"B"``) and LoRA+ ratio, for the fix text
            (:func:`loradyn.hf.setup` passes its own).
        model: the model to watch; default: the one the Trainer passes.
    """

    def __init__(self, spec: AlarmSpec | Mapping[str, Any] | None = None, *, stop: bool = False,
                 init: str | None = None, lr_ratio: float | None = None, model=None) -> None:
        self.spec = _as_spec(spec)
        self.stop, self.init, self.lr_ratio, self.model = bool(stop), init, lr_ratio, model
        self.alarm: Alarm | None = None
        self.line: str | None = None
        self.probe: FeatureNormProbe | None = None
        self.watch: ModelWatch | None = None
        self._adapters: list[str] = []
        self._fix_args: dict[str, Any] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.spec.enabled:
            return
        target = self.model if self.model is not None else model
        self.alarm = self.line = None  # a new train() call watches afresh
        handles = [h for h in iter_lora_layers(target) if h.is_active()]
        if not handles:
            raise LoradynError("the alarm needs active LoRA adapters on the model: add them with "
                               "peft.get_peft_model or loradyn.apply_lora before training")
        self._adapters = list(dict.fromkeys(h.adapter for h in handles))
        self._fix_args = {"init": self.init, "lr_ratio": self.lr_ratio, "rank": handles[0].rank,
                          "alpha_rule": _alpha_rule(target)}
        self.watch = ModelWatch(target, self._adapters, self.spec)
        self.probe = FeatureNormProbe(target, every=self.spec.every, stats=("rms",), inputs=True).attach()
        self.probe.set_step(state.global_step)

    def _fire(self, fired: Mapping[str, Alarm], args, state, control) -> None:
        alarm = next(iter(fired.values()), None)
        if self.alarm is None and alarm is not None:
            self.alarm = alarm
            self.line = alarm_line(alarm, likely_fix(alarm, **self._fix_args))
            if state.is_world_process_zero:
                logger.warning(self.line)
        if self.stop and self._any_rank(self.alarm is not None):
            control.should_training_stop = True

    def _any_rank(self, flag: bool) -> bool:
        """``flag`` or'ed over DDP ranks (every rank must stop at the same step)."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return flag
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def on_step_end(self, args, state, control, **kwargs):
        if self.probe is None:
            return
        step = state.global_step  # Trainer's count: the alarm's step is the one Trainer logs
        self.probe.set_step(step)
        rows = self.probe.take_rows()
        if self.spec.checks(step):
            self._fire(self.watch.observe(step, {}, rows, self._adapters), args, state, control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.watch is None or not logs:
            return
        if "loss" in logs and isinstance(logs["loss"], (int, float)):
            loss = float(logs["loss"])
            fired = self.watch.observe(state.global_step, dict.fromkeys(self._adapters, loss), (), self._adapters)
            self._fire(fired, args, state, control)
        if self.alarm is not None:
            logs["loradyn/alarm_step"] = self.alarm.step
            if state.log_history:
                state.log_history[-1]["loradyn/alarm_step"] = self.alarm.step

    def on_train_end(self, args, state, control, **kwargs):
        if self.probe is not None:
            self.probe.detach()
            self.probe.take_rows()


def enable_alarm(trainer: Trainer, spec: AlarmSpec | Mapping[str, Any] | bool | None = None, *,
                 stop: bool = False, init: str | None = None, lr_ratio: float | None = None) -> AlarmCallback:
    """Add an :class:`AlarmCallback` to an existing Trainer; returns it."""
    callback = AlarmCallback(_as_spec(spec), stop=stop, init=init, lr_ratio=lr_ratio)
    trainer.add_callback(callback)
    return callback
