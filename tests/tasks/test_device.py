"""Devices, precision and gradient accumulation of the real-model tasks (loradyn.tasks.device, the loop
in loradyn.tasks.train): one-line errors for a device or precision this machine lacks (simulated by
monkeypatching torch), grad_accum against one large batch, fp16/bf16 autocast on the CPU, and a
CUDA out-of-memory error that fails its pack in one line while the sweep goes on."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from loradyn.errors import LoradynError, SpecError
from loradyn.serialize import spec_from_dict, spec_to_dict
from loradyn.tasks import device as dev
from loradyn.tasks.spec import TrainSpec
from real_tasks import require_task_wheels, tiny_sentiment

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

RTOL_ACCUM = 1e-10  # float64 causal LM: the two paths differ only in summation order
RTOL_ACCUM_CE32 = 1e-5  # classification: its cross-entropy runs in float32 even on a float64 model


def _machine(monkeypatch, *, cuda: int = 0, bf16: bool = True, mps: bool = False) -> None:
    """Simulate a machine with ``cuda`` CUDA devices (bf16-capable or not) and maybe MPS."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(dev, "_mps_available", lambda: mps)


# --- the spec: syntax only ---------------------------------------------------------------------

@pytest.mark.parametrize("value", ["gpu", "CUDA", "cuda:", "cuda:x", "cuda0", "tpu", ""])
def test_device_syntax_is_one_line(value):
    with pytest.raises(SpecError, match=r"^train\.device must be one of auto \| cpu \| cuda \| cuda:N \| mps, got"):
        spec_from_dict(TrainSpec, {"device": value})


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:0", "cuda:7", "mps"])
def test_device_values_are_data_not_hardware(value, monkeypatch):
    _machine(monkeypatch, cuda=0)  # no CUDA here: the spec is still valid (validate decides)
    assert spec_from_dict(TrainSpec, {"device": value}).device == value


def test_precision_grad_accum_and_the_older_bf16_spelling():
    with pytest.raises(SpecError, match="precision: 'fp8' is not one of 'fp32', 'bf16', 'fp16'"):
        spec_from_dict(TrainSpec, {"precision": "fp8"})
    with pytest.raises(SpecError, match=r"train.grad_accum must be an integer >= 1, got 0"):
        spec_from_dict(TrainSpec, {"grad_accum": 0})
    with pytest.raises(SpecError, match="^train.bf16=true contradicts train.precision=fp16: drop train.bf16"):
        spec_from_dict(TrainSpec, {"bf16": True, "precision": "fp16"})
    old, new = spec_from_dict(TrainSpec, {"bf16": True}), spec_from_dict(TrainSpec, {"precision": "bf16"})
    assert old == new and old.precision == "bf16" and new.bf16  # one canonical form: the same trial id
    assert spec_to_dict(old) == spec_to_dict(new)
    assert spec_from_dict(TrainSpec, spec_to_dict(old)) == old
    assert not spec_from_dict(TrainSpec, {"precision": "fp16"}).bf16
    default = TrainSpec()
    assert (default.device, default.precision, default.grad_accum, default.bf16) == ("auto", "fp32", 1, False)


# --- the machine: validate-time checks ---------------------------------------------------------

def test_cuda_requested_without_cuda(monkeypatch):
    _machine(monkeypatch, cuda=0)
    for value in ("cuda", "cuda:1"):
        with pytest.raises(LoradynError, match=rf"^train.device={value}, but this machine has no CUDA device .*: "
                                               "use train.device=auto or cpu$"):
            dev.check_device(value)
    assert dev.check_device("auto") == torch.device("cpu")
    assert dev.check_device("cpu", "bf16") == torch.device("cpu")


def test_cuda_index_past_the_visible_devices(monkeypatch):
    _machine(monkeypatch, cuda=2)
    assert dev.check_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(LoradynError, match=r"train.device=cuda:2, but only 2 CUDA device\(s\) are visible"):
        dev.check_device("cuda:2")


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    _machine(monkeypatch, cuda=1, mps=True)
    assert dev.resolve_device("auto") == torch.device("cuda")
    _machine(monkeypatch, cuda=0, mps=True)
    assert dev.resolve_device("auto") == torch.device("mps")
    _machine(monkeypatch, cuda=0, mps=False)
    assert dev.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(LoradynError, match="^train.device=mps, but MPS is not available on this machine"):
        dev.check_device("mps")


def test_a_precision_the_device_cannot_run(monkeypatch):
    _machine(monkeypatch, cuda=1, bf16=False)
    assert dev.check_device("cuda", "fp16") == torch.device("cuda")
    with pytest.raises(LoradynError, match=r"^train.precision=bf16, but cuda\S* cannot run bf16 .*: "
                                           "use train.precision=fp16 or fp32$"):
        dev.check_device("cuda", "bf16")
    _machine(monkeypatch, cuda=0)
    monkeypatch.setattr(dev, "_autocast_works", lambda device_type, dtype: dtype != torch.float16)
    with pytest.raises(LoradynError, match="^train.precision=fp16, but cpu cannot run fp16 .*: use train.precision=fp32$"):
        dev.check_device("auto", "fp16")


def test_validate_and_the_cli_refuse_a_missing_device_before_training(tmp_path, monkeypatch, capsys):
    require_task_wheels()
    from loradyn.cli import main
    from loradyn.tasks.registry import get_task

    _machine(monkeypatch, cuda=0)
    with pytest.raises(LoradynError, match="^train.device=cuda, but this machine has no CUDA device"):
        get_task("sentiment").validate(tiny_sentiment(train__device="cuda"))
    spec = tmp_path / "s.yaml"
    spec.write_text(json.dumps({"base": {"task": {"kind": "sentiment", "model": "tiny-bert"},
                                         "train": {"device": "cuda:0", "precision": "bf16"}},
                                "grid": {"optim.lr_a": [1e-3]}}))
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--quiet", "--executor", "serial"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.device=cuda:0, but this machine has no CUDA device" in err[0], err
    assert not (tmp_path / "out" / "sweep.db").exists()


# --- the loop ----------------------------------------------------------------------------------

def _lora_params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _accum_vs_one_batch(configs_of, n_train: int):
    """Train ``configs_of(accum, batch)`` as a pack for (1, 8) and (2, 4) in float64; results and LoRA weights."""
    from loradyn.tasks.runner import recipe_for
    from loradyn.tasks.train import train_trials

    out = {}
    for accum, batch in ((1, 8), (2, 4)):
        configs = configs_of(accum, batch)
        recipe = recipe_for(configs[0].task)
        assert len(recipe.train_rows) == n_train
        res, [model] = train_trials(recipe, configs, pack=True, base=recipe.base_model(torch.float64), keep_model=True)
        out[accum] = (res, _lora_params(model))
    return out


def _assert_equal_runs(out, rtol: float, steps: int) -> None:
    (res1, params1), (res2, params2) = out[1], out[2]
    curve = lambda r: [c["value"] for c in r.curves if c["metric"] == "train_loss"]  # noqa: E731
    for one, acc in zip(res1, res2):
        assert one.status == acc.status == "done", (one.error, acc.error)
        assert len(curve(one)) == steps
        for a, b in zip(curve(one), curve(acc)):
            assert abs(a - b) <= rtol * abs(a), (a, b)
        for key in ("val_loss", "test_loss"):
            assert abs(one.metrics[key] - acc.metrics[key]) <= rtol * abs(one.metrics[key])
    assert params1.keys() == params2.keys() and len(params1) > 0
    moved = 0
    for name, p in params1.items():
        torch.testing.assert_close(params2[name], p, rtol=rtol, atol=rtol * 1e-3, msg=name)
        moved += int(p.abs().sum() > 0)
    assert moved > 0


COMMON = {"steps": 4, "max_grad_norm": 0.05, "warmup_steps": 2, "schedule": "linear", "data_order_seed": 0,
          "pack": "pack"}
ADAPTERS = (("A", 0, 2e-2), ("B", 1, 5e-3))


def test_grad_accum_2_of_4_equals_one_batch_of_8_float64(tmp_path, monkeypatch):
    """Causal LM on chunks of equal length (so the mean of two micro-batch means is the mean over
    the 8 chunks), float64, a pack of two adapters with clipping and a warm-up; the 4 steps use the
    first 32 of 41 chunks, the same 8 per step in both runs."""
    require_task_wheels()
    pytest.importorskip("datasets")
    from loradyn.tasks.registry import get_task

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    with open(tmp_path / "docs.jsonl", "w") as fh:
        for i in range(12):
            fh.write(json.dumps({"text": " ".join(words[(i * 7 + j * 3) % 10] for j in range(60))}) + "\n")
    spec_cls = get_task("hf-causal-lm").spec_cls

    def configs_of(accum, batch):
        return [spec_from_dict(spec_cls, {
            "task": {"kind": "hf-causal-lm", "model": "tiny-llama", "data": str(tmp_path / "docs.jsonl"),
                     "max_length": 16, "n_val": 1, "n_test": 1},
            "lora": {"rank": 2, "init": init}, "optim": {"lr_a": lr}, "seed": seed,
            "train": {**COMMON, "batch_size": batch, "grad_accum": accum}}) for init, seed, lr in ADAPTERS]

    out = _accum_vs_one_batch(configs_of, n_train=41)
    _assert_equal_runs(out, RTOL_ACCUM, steps=4)


def test_grad_accum_2_of_4_equals_one_batch_of_8_classification(monkeypatch):
    """The classification recipe (32 rows: the epochs of batches of 4 and of 8 line up), within its
    float32 cross-entropy."""
    require_task_wheels()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def configs_of(accum, batch):
        return [tiny_sentiment(lora__init=i, seed=s, optim__lr_a=lr, train={**COMMON, "steps": 5, "batch_size": batch,
                                                                             "grad_accum": accum})
                for i, s, lr in ADAPTERS]

    _assert_equal_runs(_accum_vs_one_batch(configs_of, n_train=32), RTOL_ACCUM_CE32, steps=5)


def test_fp16_and_bf16_autocast_run_on_the_cpu(tmp_path, monkeypatch):
    require_task_wheels()
    from loradyn.tasks import runner

    monkeypatch.setenv("LORADYN_CACHE", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if not dev._autocast_works("cpu", torch.float16):
        pytest.skip(f"torch {torch.__version__} has no fp16 CPU autocast")
    [fp32] = runner.run_pack([tiny_sentiment(train__pack="solo")])
    [fp16] = runner.run_pack([tiny_sentiment(train__precision="fp16", train__pack="solo")])
    assert fp32.status == fp16.status == "done", fp16.error
    assert fp16.metrics["skipped_steps"] == 0 and "skipped_steps" not in fp32.metrics
    assert math.isclose(fp16.metrics["val_loss"], fp32.metrics["val_loss"], rel_tol=1e-2)
    [old] = runner.run_pack([tiny_sentiment(train__bf16=True, train__pack="solo")])
    [new] = runner.run_pack([tiny_sentiment(train__precision="bf16", train__pack="solo")])
    assert old.status == "done" and old.metrics == new.metrics
    assert math.isclose(new.metrics["val_loss"], fp32.metrics["val_loss"], rel_tol=2e-2)


def test_fp16_steps_the_scaler_skips_are_not_divergences(monkeypatch):
    """A loss scale of 2^120 overflows the fp16 backward: every step is skipped (the adapters do not
    move), none is a divergence, and the count is reported."""
    require_task_wheels()
    from loradyn.tasks import train as train_mod
    from loradyn.tasks.runner import recipe_for

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if not dev._autocast_works("cpu", torch.float16):
        pytest.skip(f"torch {torch.__version__} has no fp16 CPU autocast")
    monkeypatch.setattr(train_mod, "grad_scaler", lambda device, precision: torch.amp.GradScaler(
        device.type, init_scale=2.0**120, growth_interval=1000))
    config = tiny_sentiment(train__precision="fp16", lora__init="B")
    recipe = recipe_for(config.task)
    base = recipe.base_model()
    before, _ = train_mod.build_model(recipe, [config], copy.deepcopy(base))
    before = _lora_params(before)
    [result], [model] = train_mod.train_trials(recipe, [config], pack=False, base=base, keep_model=True)
    assert result.status == "done" and result.metrics["skipped_steps"] == 3 and result.metrics["steps_done"] == 3
    assert all(math.isfinite(c["value"]) for c in result.curves)
    after = _lora_params(model)
    assert all(torch.equal(before[n], after[n]) for n in before)


# --- out of memory -----------------------------------------------------------------------------

def _oom_on_batch(monkeypatch, batch_size: int, error: BaseException) -> None:
    """Make the model of every trial with ``train.batch_size == batch_size`` raise ``error`` in forward."""
    from loradyn.tasks import train as train_mod

    build = train_mod.build_model

    def build_model(recipe, configs, base=None, **kw):
        model, names = build(recipe, configs, base, **kw)
        if configs[0].train.batch_size == batch_size:
            def forward(*args, **kwargs):
                raise error

            model.forward = forward
        return model, names

    monkeypatch.setattr(train_mod, "build_model", build_model)


@pytest.mark.parametrize("error", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.11 GiB total)"),
    RuntimeError("MPS backend out of memory (MPS allocated: 8.00 GB)\nmore details"),
])
def test_out_of_memory_fails_the_pack_in_one_line(monkeypatch, tmp_path, error):
    require_task_wheels()
    from loradyn.tasks import runner

    monkeypatch.setenv("LORADYN_CACHE", str(tmp_path))
    _machine(monkeypatch, cuda=0)
    _oom_on_batch(monkeypatch, 8, error)
    results = runner.run_pack([tiny_sentiment(lora__init=i, seed=s) for i, s in (("A", 0), ("B", 1))])
    assert [r.status for r in results] == ["failed", "failed"]
    assert results[0].error == ("out of memory at batch 8 × 64 on cpu; lower train.batch_size or raise "
                                "train.grad_accum")
    [other] = runner.run_pack([tiny_sentiment(train__batch_size=4)])
    assert other.status == "done"


def test_a_sweep_goes_on_after_an_out_of_memory_pack(monkeypatch, tmp_path):
    require_task_wheels()
    from loradyn.sweep import run_sweep

    monkeypatch.setenv("LORADYN_CACHE", str(tmp_path / "cache"))
    _machine(monkeypatch, cuda=0)
    _oom_on_batch(monkeypatch, 8, torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    spec = {"name": "oom", "base": {"task": {"kind": "sentiment", "model": "tiny-bert", "n_train": 32, "n_val": 16,
                                             "n_test": 16},
                                    "lora": {"rank": 2, "target_modules": ["query", "value"]},
                                    "train": {"steps": 2, "data_order_seed": 0, "grad_accum": 2}},
            "grid": {"train.batch_size": [8, 4], "optim.lr_a": [1e-3, 1e-2]}}
    df = run_sweep(spec, tmp_path / "out", executor="serial", quiet=True)
    by_batch = {b: group for b, group in df.groupby("train.batch_size")}
    assert set(by_batch[8]["status"]) == {"failed"} and set(by_batch[4]["status"]) == {"done"}
    assert set(by_batch[8]["error"]) == {"out of memory at batch 8 × 64 on cpu; lower train.batch_size or raise "
                                         "train.grad_accum"}
