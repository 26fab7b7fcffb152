"""loradyn for ``transformers.Trainer`` users: Init[A]/Init[B], LoRA+ and feature-norm probes in two lines.

    >>> trainer = Trainer(model=peft_model, args=args, train_dataset=ds)   # doctest: +SKIP
    >>> loradyn.hf.setup(trainer, init="A", lr_ratio=16, seed=0)           # doctest: +SKIP
    >>> trainer.train()                                                      # doctest: +SKIP

* **LoRA+** goes through a ``create_optimizer`` override (:class:`LoraPlusTrainerMixin`,
  :class:`LoradynTrainer`, or :func:`enable_loraplus` on an existing Trainer). This is the path
  that also works under FSDP and DeepSpeed, where Trainer refuses a pre-built ``optimizers=``
  tuple. The optimizer class and its keyword arguments (betas, eps, fused...) are still the ones
  ``TrainingArguments.optim`` selects; only the param groups are LoRA+'s
  (:func:`loradyn.loraplus_param_groups`: ``lr_b = lr_ratio * learning_rate``, and
  ``args.weight_decay`` honoured).
* **Init** is :func:`loradyn.init_lora_` on ``trainer.model`` with a seed, so every DDP rank draws
  the same adapters.
* **Probes**: :class:`FeatureNormCallback` hooks a :class:`loradyn.FeatureNormProbe` on the model,
  steps it with the optimizer and, at every logging step, adds ``loradyn/z_a_rms``,
  ``loradyn/z_b_rms`` (means over LoRA layers), ``loradyn/z_a_rms_max`` and the per-layer
  ``loradyn/z_a_rms/<module>``, ``loradyn/z_b_rms/<module>`` (``max_layers=`` limits them) to the
  logs, so the ``report_to`` backends (TensorBoard, W&B, ...) and ``trainer.state.log_history``
  get them. :func:`enable_probes` puts it first among the callbacks so the reporting integrations
  see the keys. At every save and at the end of training the per-layer table is written
  atomically to ``<output_dir>/feature_norms.csv`` (or ``.parquet``). Forward passes of
  evaluations that run inside training are recorded with the current step.
* **Alarm**: :func:`setup` adds :class:`loradyn.hf_alarm.AlarmCallback` (``alarm=True``): when the
  instability alarm (:mod:`loradyn.alarm`) fires it logs one line naming the layer, the feature and
  the likely fix, and with ``stop_on_alarm=True`` it stops training.
* **Checkpoints** of a model prepared with :func:`loradyn.apply_lora` are adapter-only, as PEFT
  models get: ``adapter_config.json`` + ``adapter_model.safetensors`` (:func:`loradyn.save_adapter`,
  ``modules_to_save`` included) next to Trainer's optimizer/scheduler/state files, so
  ``PeftModel.from_pretrained(base, checkpoint)`` loads them, and
  ``trainer.train(resume_from_checkpoint=...)`` restores the adapter (:func:`loradyn.load_adapter`)
  and the optimizer state. :class:`AdapterCheckpointMixin` / :class:`LoradynTrainer`, or
  :func:`enable_adapter_checkpoints` (part of :func:`setup`) on an existing Trainer. Under FSDP or
  DeepSpeed the stock full checkpoint is kept (the parameters are sharded there).
"""

from __future__ import annotations

import os
import types
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from .adapter_io import WEIGHTS_NAME, load_adapter, save_adapter
from .errors import LoradynError
from .init import init_lora_
from .inject import lora_layers
from .optim import loraplus_param_groups
from .probe_tables import COLUMNS, check_table_format, read_table, write_table
from .probes import FeatureNormProbe

__all__ = [
    "AdapterCheckpointMixin",
    "FeatureNormCallback",
    "LoraPlusTrainerMixin",
    "LoradynTrainer",
    "enable_adapter_checkpoints",
    "enable_loraplus",
    "enable_probes",
    "loraplus_create_optimizer",
    "setup",
]


def loraplus_create_optimizer(trainer: Trainer, model=None, *, lr_ratio: float, lr_embedding: float | None = None):
    """What :meth:`LoraPlusTrainerMixin.create_optimizer` does, for any Trainer instance."""
    opt_model = trainer.model if model is None else model
    if trainer.optimizer is None:
        if getattr(trainer, "optimizer_cls_and_kwargs", None) is not None:
            optimizer_cls, kwargs = trainer.optimizer_cls_and_kwargs
        else:
            optimizer_cls, kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, opt_model)
        kwargs = dict(kwargs)
        if any(k in kwargs for k in ("params", "model", "optimizer_dict")):
            raise LoradynError(
                f"LoRA+ needs a plain torch optimizer; TrainingArguments.optim={trainer.args.optim!r} builds its own groups"
            )
        lr = kwargs.pop("lr", trainer.args.learning_rate)
        kwargs.pop("weight_decay", None)
        groups = loraplus_param_groups(
            opt_model, lr=lr, lr_ratio=lr_ratio, weight_decay=trainer.args.weight_decay, lr_embedding=lr_embedding
        )
        for group in groups:
            group.pop("param_names", None)  # some optimizers (bnb, apex) reject unknown group keys
        trainer.optimizer = optimizer_cls(groups, lr=lr, **kwargs)
    return trainer.optimizer


class LoraPlusTrainerMixin:
    """Mix into a ``Trainer`` subclass to get LoRA+ param groups from ``create_optimizer``.

    Set ``loraplus_lr_ratio`` (default 16) and ``loraplus_lr_embedding`` (default PEFT's 1e-6) as
    class attributes or keyword arguments of :class:`LoradynTrainer`.
    """

    loraplus_lr_ratio: float = 16.0
    loraplus_lr_embedding: float | None = None

    def create_optimizer(self, model=None):
        return loraplus_create_optimizer(
            self, model, lr_ratio=self.loraplus_lr_ratio, lr_embedding=self.loraplus_lr_embedding
        )


def _loradyn_model(trainer: Trainer, model=None):
    """The trainer's model when it holds loradyn layers and is not sharded (FSDP/DeepSpeed), else None."""
    if getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False):
        return None
    model = trainer.model if model is None else model
    accelerator = getattr(trainer, "accelerator", None)
    if accelerator is not None:
        model = accelerator.unwrap_model(model)
    return model if next(lora_layers(model), None) is not None else None


def save_adapter_checkpoint(trainer: Trainer, output_dir: str | None = None) -> bool:
    """What :meth:`AdapterCheckpointMixin._save` does; False when the stock save should run."""
    model = _loradyn_model(trainer)
    if model is None:
        return False
    if not trainer.args.should_save:
        return True
    output_dir = output_dir if output_dir is not None else trainer.args.output_dir
    save_adapter(model, output_dir)
    tokenizer = trainer.processing_class
    if tokenizer is None:
        tokenizer = getattr(trainer.data_collator, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    torch.save(trainer.args, os.path.join(output_dir, "training_args.bin"))  # as Trainer._save does
    return True


def load_adapter_checkpoint(trainer: Trainer, checkpoint: str | None, model=None) -> bool:
    """Load an adapter-only checkpoint into a loradyn model; False when the stock load should run."""
    target = _loradyn_model(trainer, model)
    if target is None or checkpoint is None or not os.path.isfile(os.path.join(checkpoint, WEIGHTS_NAME)):
        return False
    load_adapter(target, checkpoint)
    return True


class AdapterCheckpointMixin:
    """Mix into a ``Trainer`` subclass: adapter-only checkpoints for :func:`loradyn.apply_lora` models.

    Saving writes :func:`loradyn.save_adapter`'s files instead of the full state dict; resuming
    and ``load_best_model_at_end`` read them with :func:`loradyn.load_adapter`. Models without
    loradyn layers (PEFT models included) and FSDP/DeepSpeed runs take the stock paths.
    """

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not save_adapter_checkpoint(self, output_dir):
            super()._save(output_dir, state_dict=state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if not load_adapter_checkpoint(self, resume_from_checkpoint, model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        if not load_adapter_checkpoint(self, self.state.best_model_checkpoint):
            super()._load_best_model()


def enable_adapter_checkpoints(trainer: Trainer) -> Trainer:
    """Give an existing Trainer :class:`AdapterCheckpointMixin`'s save and resume (patches 3 methods)."""
    save, load, best = trainer._save, trainer._load_from_checkpoint, trainer._load_best_model

    def _save(self, output_dir=None, state_dict=None):
        if not save_adapter_checkpoint(self, output_dir):
            save(output_dir, state_dict=state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not load_adapter_checkpoint(self, resume_from_checkpoint, model):
            load(resume_from_checkpoint, model)

    def _load_best_model(self):
        if not load_adapter_checkpoint(self, self.state.best_model_checkpoint):
            best()

    for fn in (_save, _load_from_checkpoint, _load_best_model):
        setattr(trainer, fn.__name__, types.MethodType(fn, trainer))
    return trainer


class LoradynTrainer(LoraPlusTrainerMixin, AdapterCheckpointMixin, Trainer):
    """``Trainer`` with LoRA+ (``lr_ratio=``), adapter-only checkpoints for :func:`loradyn.apply_lora`
    models, and, optionally, feature-norm probes (``probe_every=``)."""

    def __init__(self, *args: Any, lr_ratio: float = 16.0, lr_embedding: float | None = None,
                 probe_every: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loraplus_lr_ratio = float(lr_ratio)
        self.loraplus_lr_embedding = lr_embedding
        self.probe_callback = enable_probes(self, every=probe_every) if probe_every else None


def enable_loraplus(trainer: Trainer, *, lr_ratio: float = 16.0, lr_embedding: float | None = None) -> Trainer:
    """Make an existing Trainer build LoRA+ param groups (patches its ``create_optimizer``).

    Raises:
        LoradynError: the Trainer already has an optimizer (created, or passed as ``optimizers=``).
    """
    if trainer.optimizer is not None:
        raise LoradynError("the Trainer already has an optimizer: call enable_loraplus before trainer.train()")
    if not lr_ratio > 0:
        raise LoradynError(f"lr_ratio must be > 0, got {lr_ratio!r}")

    def create_optimizer(self, model=None):
        return loraplus_create_optimizer(self, model, lr_ratio=lr_ratio, lr_embedding=lr_embedding)

    trainer.create_optimizer = types.MethodType(create_optimizer, trainer)
    return trainer


class FeatureNormCallback(TrainerCallback):
    """Record Z_A / Z_B norms during ``Trainer.train``, add them to every log, and save the table.

    Args:
        every: record every this many optimizer steps.
        stats: norms recorded (``rms`` is the one logged).
        model: the model to probe; default: the model the Trainer passes to the callback.
        table_format: ``"csv"`` (default) or ``"parquet"`` (needs pyarrow): at every Trainer save
            and at the end of training the per-layer table (step, module, feature, stat, value) is
            written, atomically, to ``<output_dir>/feature_norms.csv`` (``.parquet``); ``None``
            writes nothing. Only the main process writes (under DDP: rank 0's own records).
        max_layers: how many LoRA layers get per-layer log keys (``loradyn/z_a_rms/<module>``,
            ``loradyn/z_b_rms/<module>``); ``None`` (default): all; fewer are spread evenly over
            the depth (first and last included), the same ones at every log.

    Every log gets ``loradyn/z_a_rms``, ``loradyn/z_b_rms`` (means over LoRA layers),
    ``loradyn/z_a_rms_max`` and the per-layer keys, all at the last recorded step. On resume the
    rows of the table already in ``output_dir`` before the resumed step are kept.
    :meth:`table` holds the full table, ``callback.probe.to_frame()`` this run's records.
    """

    def __init__(self, *, every: int = 1, stats=("rms", "l2"), model=None, table_format: str | None = "csv",
                 max_layers: int | None = None) -> None:
        self.every, self.stats, self.model = every, tuple(stats), model
        self.probe: FeatureNormProbe | None = None
        if "rms" not in self.stats:
            self.stats = ("rms", *self.stats)
        self.table_format = None if table_format is None else check_table_format(table_format)
        if max_layers is not None and (isinstance(max_layers, bool) or not isinstance(max_layers, int)
                                       or max_layers < 0):
            raise LoradynError(f"max_layers must be None (all layers) or an integer >= 0, got {max_layers!r}")
        self.max_layers = max_layers
        self._earlier = None  # rows of an earlier run's table before the resumed step

    def table_path(self, output_dir: str) -> str | None:
        """Where the table goes for this ``output_dir`` (None when ``table_format=None``)."""
        return None if self.table_format is None else os.path.join(output_dir, f"feature_norms.{self.table_format}")

    def table(self):
        """The per-layer table: rows kept from an earlier run's file on resume, then this run's."""
        import pandas as pd

        frame = self.probe.to_frame() if self.probe is not None else pd.DataFrame(columns=COLUMNS)
        return frame if self._earlier is None else pd.concat([self._earlier, frame], ignore_index=True)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        target = self.model if self.model is not None else model
        self.probe = FeatureNormProbe(target, every=self.every, stats=self.stats)
        self.probe.attach()
        self.probe.set_step(state.global_step)
        path = self.table_path(args.output_dir) if args.output_dir else None
        self._earlier = None
        if state.global_step > 0 and path is not None and os.path.isfile(path):  # resuming
            earlier = read_table(path)
            self._earlier = earlier[earlier["step"] < state.global_step].reset_index(drop=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.probe is not None:
            self.probe.set_step(state.global_step)

    def _write(self, args) -> None:
        path = self.table_path(args.output_dir) if args.output_dir else None
        if self.probe is not None and path is not None and args.should_save:
            write_table(self.table(), path)

    def on_save(self, args, state, control, **kwargs):
        self._write(args)

    def on_train_end(self, args, state, control, **kwargs):
        if self.probe is not None:
            self.probe.detach()
            self._write(args)

    def summary(self) -> dict[str, float]:
        """The log keys: means (over LoRA layers) of the rms of Z_A and Z_B, the largest Z_A rms,
        and the per-layer rms (``max_layers`` of them) at the last recorded step."""
        if self.probe is None:
            return {}
        last = self.probe.latest("rms")
        out: dict[str, float] = {}
        for feature in ("z_a", "z_b"):
            values = last.loc[last["feature"] == feature, "value"]
            if len(values):
                out[f"loradyn/{feature}_rms"] = float(values.mean())
                if feature == "z_a":
                    out["loradyn/z_a_rms_max"] = float(values.max())
        modules = list(dict.fromkeys(last["module"]))
        if self.max_layers is not None and len(modules) > self.max_layers:
            n = self.max_layers
            modules = [modules[round(i * (len(modules) - 1) / (n - 1))] for i in range(n)] if n > 1 else modules[:n]
        keep = last[last["module"].isin(modules) & last["feature"].isin(("z_a", "z_b"))]
        for module, feature, value in zip(keep["module"], keep["feature"], keep["value"]):
            out[f"loradyn/{feature}_rms/{module}"] = float(value)
        return out

    def on_log(self, args, state, control, logs=None, **kwargs):
        extra = self.summary()
        if logs is not None and extra:
            logs.update(extra)
            if state.log_history:
                state.log_history[-1].update(extra)


def enable_probes(trainer: Trainer, *, every: int = 1, stats=("rms", "l2"), **kwargs: Any) -> FeatureNormCallback:
    """Add a :class:`FeatureNormCallback` in front of the Trainer's callbacks; returns it.

    ``kwargs`` (``table_format``, ``max_layers``, ``model``) go to the callback.
    """
    callback = FeatureNormCallback(every=every, stats=stats, **kwargs)
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback


def setup(trainer: Trainer, *, init: str | None = "A", lr_ratio: float | None = 16.0, probes: bool | int = True,
          seed: int = 0, adapter_checkpoints: bool = True, alarm: Any = True, stop_on_alarm: bool = False,
          **init_kwargs: Any) -> FeatureNormCallback | None:
    """Init[A]/Init[B], LoRA+, probes and adapter-only checkpoints on an existing Trainer, in one call.

    Args:
        trainer: a Trainer whose model holds LoRA layers (PEFT or loradyn).
        init: ``"A"`` (default: Init[A], the init arXiv 2406.08447 finds better) or ``"B"`` to
            re-initialise every adapter with :func:`loradyn.init_lora_` (seeded, so every DDP
            rank draws the same adapters); ``None`` keeps the current init.
        lr_ratio: LoRA+ ``lr_b / lr_a``; ``None`` leaves the optimizer alone.
        probes: ``True`` (every step), an int (every that many steps) or ``False``.
        seed: the init seed.
        adapter_checkpoints: for :func:`loradyn.apply_lora` models, save and resume adapter-only
            checkpoints (:func:`enable_adapter_checkpoints`); PEFT models are unaffected.
        alarm: the instability alarm (:class:`loradyn.hf_alarm.AlarmCallback`): ``True`` (default
            thresholds), an :class:`loradyn.alarm.AlarmSpec` or a mapping of its fields, or
            ``False``. It logs one line naming the layer, the feature and the likely fix.
        stop_on_alarm: also stop training when the alarm fires (``control.should_training_stop``).
        **init_kwargs: ``std_a``, ``std_b``, ``distribution`` for ``init_lora_``.

    Returns:
        The probe callback (or None). The alarm callback is ``trainer.loradyn_alarm`` (None when off).
    """
    if init is not None:
        init_lora_(trainer.model, init, generator=seed, **init_kwargs)
    if lr_ratio is not None:
        enable_loraplus(trainer, lr_ratio=lr_ratio)
    if adapter_checkpoints:
        enable_adapter_checkpoints(trainer)
    trainer.loradyn_alarm = None
    if alarm is not False and alarm is not None:
        from .hf_alarm import enable_alarm

        trainer.loradyn_alarm = enable_alarm(trainer, alarm, stop=stop_on_alarm, init=init, lr_ratio=lr_ratio)
    if probes:
        return enable_probes(trainer, every=1 if probes is True else int(probes))
    return None
