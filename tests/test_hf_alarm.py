"""loradyn.hf_alarm: one log line naming layer, feature and fix; a stop only when asked; nothing at a sane lr."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("transformers")

from loradyn.errors import LoradynError  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
HERE = Path(__file__).parent


def _model(rslora=False, r=4):
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return get_peft_model(BertForSequenceClassification(cfg),
                          LoraConfig(r=r, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS",
                                     use_rslora=rslora))


def _trainer(tmp_path, lr, steps=12, model=None):
    from transformers import Trainer, TrainingArguments

    sys.path.insert(0, str(HERE))
    from hf_ddp_script import Rows

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=steps,
                             learning_rate=lr, logging_steps=2, report_to=[], save_strategy="no", use_cpu=True,
                             disable_tqdm=True, lr_scheduler_type="constant")
    return Trainer(model=model if model is not None else _model(), args=args, train_dataset=Rows(48, 8, 64))


def _alarm_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "loradyn.alarm"]


@pytest.mark.parametrize("stop", [True, False])
def test_huge_lr_logs_one_line_and_stops_only_when_asked(tmp_path, caplog, stop):
    import loradyn.hf

    trainer = _trainer(tmp_path, lr=5.0)
    loradyn.hf.setup(trainer, init="B", lr_ratio=16, probes=False, stop_on_alarm=stop)
    with caplog.at_level(logging.WARNING, logger="loradyn.alarm"):
        trainer.train()
    lines = _alarm_lines(caplog)
    assert len(lines) == 1, lines
    alarm = trainer.loradyn_alarm.alarm
    assert alarm is not None and alarm.layer and alarm.layer in lines[0] and alarm.feature in lines[0]
    assert "likely fix: lower lr_a" in lines[0]
    assert "Init[B]" in lines[0] and "switch to Init[A]" in lines[0] and "smaller lr_ratio than 16" in lines[0]
    if stop:
        assert trainer.state.global_step == alarm.step < 12
    else:
        assert trainer.state.global_step == 12
    assert any(rec.get("loradyn/alarm_step") == alarm.step for rec in trainer.state.log_history)


def test_sane_lr_fires_nothing(tmp_path, caplog):
    import loradyn.hf

    trainer = _trainer(tmp_path, lr=1e-3, steps=24)
    loradyn.hf.setup(trainer, init="A", lr_ratio=16, probes=False, stop_on_alarm=True)
    with caplog.at_level(logging.WARNING, logger="loradyn.alarm"):
        trainer.train()
    assert _alarm_lines(caplog) == []
    assert trainer.loradyn_alarm.alarm is None and trainer.state.global_step == 24
    peaks = trainer.loradyn_alarm.watch.monitors["default"].peaks
    spec = trainer.loradyn_alarm.spec  # measured, and below the thresholds
    assert 0 < peaks["update"] < spec.update_ratio and 0 < peaks["z_b"] < spec.z_b_ratio


def test_rslora_at_high_rank_is_named_in_the_fix(tmp_path, caplog):
    from loradyn.hf_alarm import enable_alarm

    trainer = _trainer(tmp_path, lr=5.0, steps=6, model=_model(rslora=True, r=32))
    callback = enable_alarm(trainer, {"loss_growth": None}, init="A", lr_ratio=1.0)
    with caplog.at_level(logging.WARNING, logger="loradyn.alarm"):
        trainer.train()
    (line,) = _alarm_lines(caplog)
    assert "rsLoRA at rank 32" in line and "Init[B]" not in line and "lr_ratio" not in line
    assert callback.alarm.reason in ("update", "z_b", "nonfinite")


def test_bad_alarm_arguments_are_one_line(tmp_path):
    import loradyn.hf

    trainer = _trainer(tmp_path, lr=1e-3)
    with pytest.raises(LoradynError, match="unknown key train.alarm.z_b"):
        loradyn.hf.setup(trainer, alarm={"z_b": 3})
    with pytest.raises(LoradynError, match="alarm must be True, an AlarmSpec"):
        loradyn.hf.setup(_trainer(tmp_path, lr=1e-3), alarm="yes")
    assert loradyn.hf.setup(_trainer(tmp_path, lr=1e-3), alarm=False, probes=False) is None
