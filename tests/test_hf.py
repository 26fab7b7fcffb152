"""loradyn.hf: LoRA+ through create_optimizer, init, probe logging, and 2-process CPU DDP via accelerate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import loradyn  # noqa: E402
from loradyn.errors import LoradynError  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
HERE = Path(__file__).parent


def _model():
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return get_peft_model(BertForSequenceClassification(cfg),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS"))


def _args(tmp_path, **kw):
    from transformers import TrainingArguments

    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=4, learning_rate=1e-2,
                weight_decay=0.05, logging_steps=2, report_to=[], save_strategy="no", use_cpu=True,
                disable_tqdm=True, lr_scheduler_type="constant")
    base.update(kw)
    return TrainingArguments(**base)


def _dataset():
    sys.path.insert(0, str(HERE))
    from hf_ddp_script import Rows

    return Rows(16, 8, 64)


def _lr_by_name(trainer, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in trainer.optimizer.param_groups for p in g["params"]}


def test_loradyn_trainer_builds_loraplus_groups_like_loraplus_param_groups(tmp_path):
    from loradyn.hf import LoradynTrainer

    model = _model()
    trainer = LoradynTrainer(model=model, args=_args(tmp_path), train_dataset=_dataset(), lr_ratio=8.0)
    trainer.create_optimizer()
    got = _lr_by_name(trainer, model)
    want = {n: (g["lr"], g["weight_decay"]) for g in loradyn.loraplus_param_groups(model, lr=1e-2, lr_ratio=8.0, weight_decay=0.05)
            for n in g["param_names"]}
    assert got == want
    assert any("lora_B" in n and lr == pytest.approx(8e-2) for n, (lr, _) in got.items())
    assert any("lora_A" in n and lr == pytest.approx(1e-2) and wd == 0.05 for n, (lr, wd) in got.items())
    assert isinstance(trainer.optimizer, torch.optim.AdamW)


def test_setup_patches_an_existing_trainer_inits_and_logs_probes(tmp_path):
    from transformers import Trainer

    import loradyn.hf

    model = _model()
    trainer = Trainer(model=model, args=_args(tmp_path), train_dataset=_dataset())
    callback = loradyn.hf.setup(trainer, init="B", lr_ratio=4.0, seed=1)
    a = [h.lora_A for h in loradyn.iter_lora_layers(model)]
    assert all(not bool(t.any()) for t in a)  # Init[B]: A = 0
    trainer.train()
    lrs = sorted({round(g["lr"], 12) for g in trainer.optimizer.param_groups})
    assert lrs == pytest.approx([1e-2, 4e-2])
    logged = [rec for rec in trainer.state.log_history if "loss" in rec]
    assert logged and all({"loradyn/z_a_rms", "loradyn/z_b_rms", "loradyn/z_a_rms_max"} <= set(rec) for rec in logged)
    frame = callback.probe.to_frame()
    assert set(frame["step"]) == {0, 1, 2, 3}
    assert frame[(frame["feature"] == "z_a") & (frame["step"] == 3)]["value"].gt(0).all()


def test_setup_defaults_to_seeded_init_a(tmp_path):
    from transformers import Trainer

    import loradyn.hf

    draws = []
    for i in range(2):
        model = _model()
        torch.manual_seed(100 + i)  # a different global RNG state: only the seed may decide the draw
        trainer = Trainer(model=model, args=_args(tmp_path), train_dataset=_dataset())
        assert loradyn.hf.setup(trainer, lr_ratio=None, probes=False, seed=3) is None
        handles = list(loradyn.iter_lora_layers(model))
        assert handles and all(not bool(h.lora_B.any()) and bool(h.lora_A.any()) for h in handles)  # Init[A]
        draws.append(torch.cat([h.lora_A.detach().flatten() for h in handles]))
    assert torch.equal(draws[0], draws[1])  # the seed fixes the draw


def test_enable_loraplus_refuses_an_existing_optimizer(tmp_path):
    from transformers import Trainer

    from loradyn.hf import enable_loraplus

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model=model, args=_args(tmp_path), train_dataset=_dataset(), optimizers=(opt, None))
    with pytest.raises(LoradynError, match="already has an optimizer"):
        enable_loraplus(trainer, lr_ratio=16)


def test_two_process_ddp_gloo_via_accelerate_ends_with_identical_adapters(tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("accelerate CLI not found")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    # --multi_gpu on a machine without GPUs runs torch.distributed with the gloo backend on CPU
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(29500 + os.getpid() % 1000),
           str(HERE / "hf_ddp_script.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0.keys() == r1.keys() and any("lora_B" in k for k in r0)
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
    assert any(bool(v.any()) for k, v in r0.items() if "lora_A" in k)  # trained away from Init[B]'s A = 0
    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert info[0]["world_size"] == info[1]["world_size"] == 2
    assert info[0]["lrs"] == pytest.approx([1e-2, 8e-2])
    assert "loradyn/z_a_rms" in info[0]["log_keys"] and info[0]["probe_rows"] > 0


# --- adapter-only checkpoints for apply_lora models, and resuming from them --------------------------
def _bert_base():
    """Tiny BertForSequenceClassification, the same weights every call."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg)


def _loradyn_bert(adapter_seed: int = 0):
    """:func:`_bert_base` with loradyn LoRA (Init[B]) and a head, both drawn from ``adapter_seed``."""
    model = _bert_base()
    torch.nn.init.normal_(model.classifier.weight, generator=torch.Generator().manual_seed(adapter_seed))
    spec = loradyn.LoraSpec(rank=2, alpha=4.0, init="B", target_modules=("query", "value"))
    return loradyn.apply_lora(model, spec, generator=adapter_seed)


def _trained(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _adam_steps(optimizer) -> list[int]:
    return sorted(int(state["step"]) for state in optimizer.state.values())


def _checkpoint_args(tmp_path, **kw):
    return _args(tmp_path, save_strategy="steps", save_steps=2, weight_decay=0.0, seed=7, **kw)


def test_loradyn_trainer_saves_adapter_only_checkpoints_and_resumes_them(tmp_path):
    """Before: checkpoints held the full state dict (base_layer keys) and no adapter files."""
    from peft import PeftModel

    from loradyn.hf import LoradynTrainer

    model = _loradyn_bert()
    full = LoradynTrainer(model=model, args=_checkpoint_args(tmp_path / "full"), train_dataset=_dataset(), lr_ratio=4.0)
    full.train()
    want = _trained(model)
    ckpt = tmp_path / "full" / "checkpoint-2"
    files = {p.name for p in ckpt.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "trainer_state.json"} <= files
    assert not files & {"model.safetensors", "pytorch_model.bin", "config.json"}
    config = json.loads((ckpt / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["classifier"] and config["task_type"] == "SEQ_CLS"

    # stock PEFT and loradyn read the checkpoint alike
    ids = torch.randint(1, 64, (3, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        via_peft = PeftModel.from_pretrained(_bert_base(), str(ckpt)).eval()(input_ids=ids).logits
        via_loradyn = loradyn.load_adapter(_loradyn_bert(adapter_seed=4), ckpt).eval()(input_ids=ids).logits
    torch.testing.assert_close(via_peft, via_loradyn, rtol=0, atol=1e-6)

    # resume on a model with other adapters and another head: the checkpoint's win, and Adam's state too
    other = _loradyn_bert(adapter_seed=5)
    assert not torch.equal(other.classifier.weight, model.classifier.weight)
    resumed = LoradynTrainer(model=other, args=_checkpoint_args(tmp_path / "resumed"), train_dataset=_dataset(),
                             lr_ratio=4.0)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.state.global_step == 4
    got = _trained(other)
    assert got.keys() == want.keys() and any("classifier" in k for k in got)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6, msg=name)
    assert _adam_steps(resumed.optimizer) == _adam_steps(full.optimizer) == [4] * len(want)  # resumed at 2


def test_setup_gives_an_existing_trainer_adapter_checkpoints(tmp_path):
    from transformers import Trainer

    import loradyn.hf

    model = _loradyn_bert()
    trainer = Trainer(model=model, args=_checkpoint_args(tmp_path, max_steps=2), train_dataset=_dataset())
    loradyn.hf.setup(trainer, init=None, lr_ratio=4.0, probes=False)
    trainer.train()
    files = {p.name for p in (tmp_path / "checkpoint-2").iterdir()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    trainer.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / "adapter_config.json").is_file()
    assert not (tmp_path / "final" / "model.safetensors").exists()


# --- the probe callback: per-layer log keys and the table file in output_dir ----------------------
class _TableAtSave:
    """Runs after FeatureNormCallback: the steps in feature_norms.csv at each save."""

    def __init__(self, path: Path):
        from transformers import TrainerCallback

        self.path, self.seen = path, []
        self.callback = type("Spy", (TrainerCallback,), {"on_save": lambda _, args, state, control, **kw: self.read(state)})()

    def read(self, state):
        import pandas as pd

        frame = pd.read_csv(self.path)
        self.seen.append((state.global_step, sorted(set(frame["step"]))))


def test_probe_callback_logs_every_layer_and_writes_the_table_at_each_save(tmp_path):
    """Before: only layer means were logged, and no table file was written."""
    import pandas as pd
    from transformers import Trainer

    from loradyn.hf import enable_probes

    model = _model()
    spy = _TableAtSave(tmp_path / "feature_norms.csv")
    trainer = Trainer(model=model, args=_args(tmp_path, save_strategy="steps", save_steps=2), train_dataset=_dataset(),
                      callbacks=[spy.callback])
    callback = enable_probes(trainer)
    trainer.train()
    modules = [h.qualname for h in loradyn.iter_lora_layers(model)]
    assert len(modules) == 4
    logged = [rec for rec in trainer.state.log_history if "loss" in rec]
    assert len(logged) == 2
    for rec in logged:
        for feature in ("z_a", "z_b"):
            per_layer = [rec[f"loradyn/{feature}_rms/{m}"] for m in modules]
            assert rec[f"loradyn/{feature}_rms"] == pytest.approx(sum(per_layer) / len(per_layer))
        assert rec["loradyn/z_a_rms_max"] == pytest.approx(max(rec[f"loradyn/z_a_rms/{m}"] for m in modules))
    # written at each save (global steps 2 and 4) with every step recorded so far (record k: the
    # forward passes of optimizer step k + 1), and at the end
    assert spy.seen == [(2, [0, 1]), (4, [0, 1, 2, 3])]
    table = pd.read_csv(tmp_path / "feature_norms.csv")
    assert list(table.columns) == ["step", "module", "feature", "stat", "value"]
    pd.testing.assert_frame_equal(table, callback.probe.to_frame(), check_dtype=False)
    assert set(table["module"]) == set(modules) and set(table["stat"]) == {"rms", "l2"}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".feature_norms")]  # no temp files


@pytest.mark.parametrize("max_layers, picked", [(2, [0, 3]), (3, [0, 2, 3]), (0, [])])
def test_probe_callback_max_layers_spreads_the_logged_layers_over_depth(tmp_path, max_layers, picked):
    from transformers import Trainer

    from loradyn.hf import enable_probes

    model = _model()
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=2), train_dataset=_dataset())
    enable_probes(trainer, max_layers=max_layers, table_format=None)
    trainer.train()
    modules = [h.qualname for h in loradyn.iter_lora_layers(model)]
    rec = next(r for r in trainer.state.log_history if "loss" in r)
    got = sorted(k for k in rec if k.startswith("loradyn/z_a_rms/"))
    assert got == sorted(f"loradyn/z_a_rms/{modules[i]}" for i in picked)
    assert "loradyn/z_a_rms" in rec and "loradyn/z_b_rms" in rec
    assert not (tmp_path / "feature_norms.csv").exists()  # table_format=None writes nothing


@pytest.mark.parametrize("kwargs, match", [({"max_layers": -1}, "max_layers"), ({"max_layers": 1.5}, "max_layers"),
                                           ({"table_format": "xlsx"}, "table_format must be 'csv' or 'parquet'")])
def test_probe_callback_rejects_bad_options_in_one_line(kwargs, match):
    from loradyn.hf import FeatureNormCallback

    with pytest.raises(LoradynError, match=match) as err:
        FeatureNormCallback(**kwargs)
    assert "\n" not in str(err.value)


def test_probe_callback_parquet_table(tmp_path):
    from transformers import Trainer

    from loradyn.hf import enable_probes
    from loradyn.probe_tables import read_table

    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(LoradynError, match="pip install pyarrow") as err:
            enable_probes(Trainer(model=_model(), args=_args(tmp_path), train_dataset=_dataset()), table_format="parquet")
        assert "\n" not in str(err.value) and "table_format='csv'" in str(err.value)
        return
    trainer = Trainer(model=_model(), args=_args(tmp_path, max_steps=2), train_dataset=_dataset())
    callback = enable_probes(trainer, table_format="parquet")
    trainer.train()
    assert not (tmp_path / "feature_norms.csv").exists()
    import pandas as pd

    pd.testing.assert_frame_equal(read_table(tmp_path / "feature_norms.parquet"), callback.probe.to_frame())


def test_probe_callback_table_keeps_the_earlier_rows_on_resume(tmp_path):
    import pandas as pd
    from transformers import Trainer

    from loradyn.hf import enable_probes

    args = _args(tmp_path, save_strategy="steps", save_steps=2)
    full = Trainer(model=_model(), args=args, train_dataset=_dataset())
    enable_probes(full)
    full.train()
    before = pd.read_csv(tmp_path / "feature_norms.csv")
    resumed = Trainer(model=_model(), args=args, train_dataset=_dataset())
    callback = enable_probes(resumed)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert set(callback.probe.to_frame()["step"]) == {2, 3}
    after = pd.read_csv(tmp_path / "feature_norms.csv")
    assert sorted(set(after["step"])) == [0, 1, 2, 3] and len(after) == len(before)  # no step twice
    pd.testing.assert_frame_equal(after[after["step"] < 2], before[before["step"] < 2])
    pd.testing.assert_frame_equal(after, callback.table(), check_dtype=False)
