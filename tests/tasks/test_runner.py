"""How the real-model kinds run (loradyn.tasks.runner): pack keys, run_pack, the measured pack-or-solo
decision, and bad input rejected by validate before any training."""

from __future__ import annotations

import json

import pytest

from real_tasks import require_task_wheels, tiny_sentiment

require_task_wheels()

from loradyn.errors import LoradynError  # noqa: E402
from loradyn.serialize import spec_from_dict  # noqa: E402
from loradyn.tasks import runner  # noqa: E402
from loradyn.tasks.registry import get_task  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_pack_key_ignores_adapter_fields_only():
    task = get_task("sentiment")
    a = tiny_sentiment(optim__lr_a=1e-3, lora__init="A")
    b = tiny_sentiment(optim__lr_a=1e-2, optim__lr_ratio=16.0, lora__init="B")
    assert task.pack_key(a) == task.pack_key(b)
    assert task.pack_key(a) != task.pack_key(tiny_sentiment(lora__rank=4))
    # without a fixed batch order the seed decides the batches, so it is part of the key
    c = spec_from_dict(task.spec_cls, {"seed": 1, "task": {"kind": "sentiment"}})
    d = spec_from_dict(task.spec_cls, {"seed": 2, "task": {"kind": "sentiment"}})
    assert task.pack_key(c) != task.pack_key(d)
    assert task.pack_key(tiny_sentiment(seed=1)) == task.pack_key(tiny_sentiment(seed=2))


def test_pack_key_gives_base_rewriting_inits_a_pack_each():
    """pissa/olora rewrite the base weights: adapters sharing one base cannot each do it."""
    task = get_task("sentiment")
    ab = tiny_sentiment(optim__lr_a=1e-3, lora__init="AB")
    assert task.pack_key(ab) == task.pack_key(tiny_sentiment(optim__lr_a=1e-2, lora__init="orthogonal"))
    assert task.pack_key(ab) == task.pack_key(tiny_sentiment(optim__lr_a=3e-3, lora__init="gaussian", seed=3))
    for init in ("pissa", "pissa_niter_2", "olora"):
        p1 = tiny_sentiment(optim__lr_a=1e-3, lora__init=init)
        assert task.pack_key(p1) == task.pack_key(tiny_sentiment(optim__lr_a=1e-3, lora__init=init))
        assert task.pack_key(p1) != task.pack_key(tiny_sentiment(optim__lr_a=1e-2, lora__init=init))
        assert task.pack_key(p1) != task.pack_key(tiny_sentiment(optim__lr_a=1e-3, lora__init=init, seed=1))
        assert task.pack_key(p1) != task.pack_key(tiny_sentiment(optim__lr_a=1e-3, lora__init="A"))


def test_run_pack_returns_one_result_per_trial(tmp_path, monkeypatch):
    monkeypatch.setenv("LORADYN_CACHE", str(tmp_path))
    task = get_task("sentiment")
    configs = [tiny_sentiment(lora__init=i, seed=s) for i, s in (("A", 0), ("B", 1))]
    results = task.run_pack(configs)
    assert [r.status for r in results] == ["done", "done"]
    for r in results:
        assert {"final_train_loss", "val_accuracy", "test_accuracy", "val_loss"} <= set(r.metrics)
        assert any(c["metric"] == "train_loss" for c in r.curves)


def test_decide_pack_measures_once_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("LORADYN_CACHE", str(tmp_path))
    configs = [tiny_sentiment(lora__init=i, train__pack="auto", seed=s) for i, s in (("A", 0), ("B", 1))]
    recipe = runner.recipe_for(configs[0].task)
    first = runner.decide_pack(recipe, configs, steps=1)
    table = json.loads((tmp_path / "pack-calibration.json").read_text())
    [entry] = table.values()
    assert entry["k"] == 2 and entry["pack_faster"] == first
    assert entry["solo_step_s"] > 0 and entry["pack_step_s"] > 0
    monkeypatch.setattr(runner, "calibrate", lambda *a, **k: pytest.fail("calibrated twice"))
    assert runner.decide_pack(recipe, configs) == first
    assert runner.decide_pack(recipe, [tiny_sentiment(train__pack="solo", seed=s) for s in (0, 1)]) is False
    monkeypatch.undo()
    monkeypatch.setenv("LORADYN_CACHE", str(tmp_path))
    (tmp_path / "pack-calibration.json").write_text("{not json")  # a corrupt cache is measured again and rewritten
    again = runner.decide_pack(recipe, configs, steps=1)
    [entry] = json.loads((tmp_path / "pack-calibration.json").read_text()).values()
    assert entry["k"] == 2 and entry["pack_faster"] == again


def test_max_pack_size_follows_cached_calibration(tmp_path, monkeypatch):
    monkeypatch.setenv("LORADYN_CACHE", str(tmp_path))
    task = get_task("sentiment")
    cfg = tiny_sentiment(train__pack="auto", train__max_pack=3)
    assert runner.cached_pack_decision(cfg, 3) is None and task.max_pack_size(cfg) == 3  # not measured yet
    path = tmp_path / "pack-calibration.json"
    for faster, size in ((False, 1), (True, 3)):
        path.write_text(json.dumps({runner._calibration_key(cfg, 3): {"k": 3, "pack_faster": faster}}))
        assert runner.cached_pack_decision(cfg, 3) is faster and task.max_pack_size(cfg) == size
    forced = tiny_sentiment(train__pack="pack", train__max_pack=3)
    path.write_text(json.dumps({runner._calibration_key(forced, 3): {"k": 3, "pack_faster": False}}))
    assert task.max_pack_size(forced) == 3  # train.pack: pack is obeyed
    path.write_text("{not json")
    assert runner.cached_pack_decision(cfg, 3) is None and task.max_pack_size(cfg) == 3


def test_nonexistent_model_path_is_rejected_by_validate_not_by_the_spec():
    config = tiny_sentiment(task__model="/no/such/model")  # a spec is data: building it does no I/O
    with pytest.raises(LoradynError, match="existing model folder"):
        get_task("sentiment").validate(config)


def test_target_modules_matching_nothing():
    task = get_task("sentiment")
    with pytest.raises(LoradynError, match=r"match no Linear module .* choose from .*query"):
        task.validate(tiny_sentiment(lora__target_modules=["nope"]))


def test_dataset_too_small_for_the_split():
    task = get_task("sentiment")
    with pytest.raises(LoradynError, match="dataset too small for the split"):
        task.validate(tiny_sentiment(task__n_val=6000, task__n_test=6000))
    with pytest.raises(LoradynError, match="batch_size"):
        task.validate(tiny_sentiment(task__n_train=4))


def test_cli_sweep_bad_input_exit_code_2(tmp_path, capsys):
    cli = pytest.importorskip("loradyn.cli")
    spec = tmp_path / "s.yaml"
    spec.write_text("base:\n  task: {kind: sentiment, model: /no/such/model}\ngrid:\n  optim.lr_a: [0.001]\n")
    assert cli.main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "existing model folder" in err[0]
    spec.write_text("base:\n  task: {kind: sentimnt}\ngrid:\n  optim.lr_a: [0.001]\n")
    assert cli.main(["sweep", str(spec), "--out", str(tmp_path / "out2"), "--quiet"]) == 2


@pytest.mark.parametrize("base, message", [
    ("{task: {kind: sentiment, model: tiny-bert, n_train: 32, n_val: 16, n_test: 16}, lora: {target_modules: [nope]}}",
     "match no Linear module"),
    ("{task: {kind: sentiment, model: tiny-bert, n_train: 32, n_val: 6000, n_test: 6000}}", "split"),
])
def test_cli_sweep_rejects_unrunnable_input_before_training(tmp_path, capsys, base, message):
    cli = pytest.importorskip("loradyn.cli")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: bad\nbase: {base}\ngrid:\n  optim.lr_a: [0.001]\n")
    assert cli.main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--quiet", "--executor", "serial"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out" / "sweep.db").exists()


@pytest.mark.slow
def test_minilm_sentiment_learns_on_a_few_hundred_examples(tmp_path, monkeypatch):
    monkeypatch.setenv("LORADYN_CACHE", str(tmp_path))
    task = get_task("sentiment")
    cfg = spec_from_dict(task.spec_cls, {
        "task": {"kind": "sentiment", "n_train": 640, "n_val": 200, "n_test": 200},
        "optim": {"name": "adamw", "lr_a": 1e-3},
        "train": {"steps": 40, "batch_size": 16, "warmup_steps": 8, "pack": "solo"}})
    [result] = task.run_pack([cfg])
    assert result.status == "done"
    assert result.metrics["val_accuracy"] > 0.6  # chance is 0.5
