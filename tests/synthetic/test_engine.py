"""The synthetic engine against a naive float64 reference (autograd + torch.optim.Adam), one config at a time."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from loradyn.errors import SpecError
from loradyn.synthetic import SyntheticSpec, init_student, run_pack, teacher_weights
from loradyn.tasks.registry import get_task
from synthetic_specs import small_spec

RTOL = 1e-5  # the bound; measured ~1e-12 in float64


def spec(**sections) -> SyntheticSpec:
    return small_spec({"width": 48, "n_train": 64, "n_test": 16}, 15, **sections)


def naive_run(cfg: SyntheticSpec):
    """Independent reference: recompute everything each step, autograd, torch.optim.Adam."""
    w = teacher_weights(cfg.task, cfg.data_seed)
    x, x_test = w["x_train"], w["x_test"]
    w_star = w["w_star"]  # the other forms and readouts: tests/synthetic/test_forms.py
    teacher = w_star + w["b_star"] @ w["a_star"]

    def net(xx, hidden):
        return torch.relu(torch.relu(xx @ w["w_in"].T) @ hidden.T) @ w["w_out"].T

    y, y_test = net(x, teacher), net(x_test, teacher)
    a0, b0 = init_student(cfg)
    a, b = torch.nn.Parameter(a0.clone()), torch.nn.Parameter(b0.clone())
    alpha = cfg.lora.alpha
    opt_cls = torch.optim.AdamW if cfg.optim.name == "adamw" else torch.optim.Adam
    opt = opt_cls(
        [{"params": [a], "lr": cfg.optim.lr_a}, {"params": [b], "lr": cfg.optim.lr_a * cfg.optim.lr_ratio}],
        betas=cfg.optim.betas, eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay,
    )
    losses = []
    for _ in range(cfg.train.steps):
        loss = (net(x, w_star + alpha * b @ a) - y).square().mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        losses.append((net(x, w_star + alpha * b @ a) - y).square().mean().item())
        test = (net(x_test, w_star + alpha * b @ a) - y_test).square().mean().item()
    return losses, test, a.detach(), b.detach()


def rel(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


MIXES = {
    1: [dict(lora={"init": "A"}, optim={"lr_a": 2e-2, "lr_ratio": 4.0})],
    3: [
        dict(lora={"init": "A"}, optim={"lr_a": 1e-2, "lr_ratio": 8.0}),
        dict(lora={"init": "B"}, optim={"lr_a": 3e-3, "lr_ratio": 0.5}, seed=1),
        dict(lora={"init": "A", "alpha_rule": "1/r"}, optim={"lr_a": 5e-2}, seed=2),
    ],
    6: [
        dict(lora={"init": i, "alpha_rule": rule, "distribution": dist}, optim={"lr_a": lr, "lr_ratio": ratio}, seed=s)
        for i, rule, dist, lr, ratio, s in [
            ("A", "1", "gaussian", 1e-2, 16.0, 0),
            ("B", "1", "gaussian", 1e-2, 2.0, 0),
            ("A", "1/sqrt(r)", "kaiming_uniform", 3e-2, 1.0, 3),
            ("B", "1/r", "kaiming_uniform", 4e-3, 32.0, 0),
            ("A", "1", "gaussian", 1e-3, 0.25, 1),
            ("B", "1/sqrt(r)", "gaussian", 2e-2, 3.0, 3),
        ]
    ],
}


@pytest.mark.parametrize("k", sorted(MIXES))
def test_pack_matches_independent_torch_adam(k, blocks):
    cfgs = [spec(train={"curve_every": 1}, **m) for m in MIXES[k]]
    results, params = run_pack(cfgs, return_params=True)
    for cfg, res, (a, b) in zip(cfgs, results, params):
        losses, test, a_ref, b_ref = naive_run(cfg)
        assert res.status == "done"
        curve = [c["value"] for c in res.curves if c["metric"] == "train_loss"]
        assert len(curve) == cfg.train.steps + 1
        assert rel(curve, losses) < RTOL
        assert rel(a, a_ref) < RTOL and rel(b, b_ref) < RTOL
        assert res.metrics["final_train_loss"] == pytest.approx(losses[-1], rel=RTOL)
        assert res.metrics["test_loss"] == pytest.approx(test, rel=RTOL)
        assert losses[-1] < losses[0]  # it learned something (the comparison is not vacuous)


@pytest.mark.parametrize("name,wd", [("adam", 1e-2), ("adamw", 0.1)])
def test_weight_decay_variants_match_torch(name, wd):
    cfgs = [
        spec(lora={"init": i}, optim={"name": name, "lr_a": 1e-2, "lr_ratio": 4.0, "weight_decay": wd})
        for i in "AB"
    ]
    _, params = run_pack(cfgs, return_params=True)
    for cfg, (a, b) in zip(cfgs, params):
        _, _, a_ref, b_ref = naive_run(cfg)
        assert rel(a, a_ref) < RTOL and rel(b, b_ref) < RTOL


def test_full_finetuning_matches_torch_adam():
    cfg = spec(lora={"method": "full"}, optim={"lr_a": 1e-3}, train={"curve_every": 1})
    (res,) = run_pack([cfg])
    w = teacher_weights(cfg.task, cfg.data_seed)
    hidden = torch.nn.Parameter(w["w_star"].clone())
    teacher = w["w_star"] + w["b_star"] @ w["a_star"]

    def net(xx, m):
        return torch.relu(torch.relu(xx @ w["w_in"].T) @ m.T) @ w["w_out"].T

    y = net(w["x_train"], teacher)
    opt = torch.optim.Adam([hidden], lr=1e-3)
    ref = []
    for _ in range(cfg.train.steps):
        loss = (net(w["x_train"], hidden) - y).square().mean()
        ref.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    ref.append((net(w["x_train"], hidden) - y).square().mean().item())
    curve = [c["value"] for c in res.curves if c["metric"] == "train_loss"]
    assert res.status == "done" and rel(curve, ref) < RTOL


def _bad_mix():
    good = [
        dict(lora={"init": "A"}, optim={"lr_a": 1e-2, "lr_ratio": 4.0}),
        dict(lora={"init": "B"}, optim={"lr_a": 3e-3}),
        dict(lora={"init": "A"}, optim={"lr_a": 2e-3, "lr_ratio": 2.0}, seed=1),
    ]
    bad = dict(lora={"init": "B"}, optim={"lr_a": 50.0, "lr_ratio": 10.0})
    return good, bad


@pytest.fixture(params=["one block", "many blocks"])
def blocks(request, monkeypatch):
    """Run with all data rows in one block, and with 8-row blocks (the large-width code path)."""
    import loradyn.synthetic.engine as engine

    if request.param == "many blocks":
        monkeypatch.setattr(engine, "BLOCK_BYTES", 8 * 48 * 8)
        monkeypatch.setattr(engine, "MIN_ROWS", 8)
    return request.param


@pytest.mark.parametrize("position", [0, 2, 3])
def test_divergence_freezes_config_and_leaves_others_bit_identical(position, blocks):
    good, bad = _bad_mix()
    mixes = good[:position] + [bad] + good[position:]
    with_bad, params_bad = run_pack([spec(train={"curve_every": 1, "record_every": 5}, **m) for m in mixes], return_params=True)
    without, params_ok = run_pack([spec(train={"curve_every": 1, "record_every": 5}, **m) for m in good], return_params=True)
    diverged = with_bad.pop(position)
    params_bad.pop(position)
    assert diverged.status == "diverged"
    step = int(diverged.metrics["diverged_step"])
    curve = [c["value"] for c in diverged.curves if c["metric"] == "train_loss"]
    # frozen at the first step whose loss is non-finite or above the threshold, and not after
    threshold = 100.0 * curve[0]
    first_bad = next(i for i, v in enumerate(curve) if not math.isfinite(v) or v > threshold)
    assert step == first_bad == len(curve) - 1
    for r1, r2, p1, p2 in zip(with_bad, without, params_bad, params_ok):
        assert r1.status == r2.status == "done"
        assert r1.metrics == r2.metrics
        assert r1.curves == r2.curves and r1.probes == r2.probes
        assert torch.equal(p1[0], p2[0]) and torch.equal(p1[1], p2[1])


def test_nonfinite_params_freeze_within_one_step(monkeypatch):
    import loradyn.synthetic.engine as engine

    real = engine.init_student

    def poisoned(cfg):
        a, b = real(cfg)
        if cfg.seed == 5:  # this config's adapter holds a NaN from the start
            a[0, 0] = math.nan
        return a, b

    good = [spec(lora={"init": "A"}, optim={"lr_a": 1e-2}), spec(lora={"init": "B"}, optim={"lr_a": 1e-3})]
    ref = run_pack(good)
    monkeypatch.setattr(engine, "init_student", poisoned)
    res = run_pack([good[0], spec(lora={"init": "A"}, optim={"lr_a": 1e-2}, seed=5), good[1]])
    assert res[1].status == "diverged"
    assert res[1].metrics["diverged_step"] == 0 and res[1].metrics["final_train_loss"] == math.inf
    assert [r.metrics for r in (res[0], res[2])] == [r.metrics for r in ref]


def test_mixed_seeds_in_one_pack_equal_separate_packs():
    mixes = [dict(lora={"init": "A"}, optim={"lr_a": 1e-2}, seed=s) for s in (0, 1, 2)]
    together = run_pack([spec(**m) for m in mixes])
    for m, r in zip(mixes, together):
        (alone,) = run_pack([spec(**m)])
        assert alone.metrics == r.metrics


SUBPROCESS = """
import json, sys, torch
from loradyn.synthetic import SyntheticSpec, teacher_weights, init_student, run_pack
cfg = SyntheticSpec.from_dict(json.loads(sys.argv[1]))
w = teacher_weights(cfg.task, cfg.data_seed)
a, b = init_student(cfg)
(res,) = run_pack([cfg])
print(json.dumps({"w": {k: v.sum().item() for k, v in w.items()}, "w0": w["w_in"].flatten()[:5].tolist(),
                  "a": a.sum().item(), "b": b.sum().item(), "loss": res.metrics["final_train_loss"]}))
"""


def test_same_seed_same_teacher_data_init_across_processes():
    data = {"task": {"width": 40, "n_train": 32, "n_test": 8}, "lora": {"init": "B"}, "train": {"steps": 5, "dtype": "float64"}, "seed": 7}
    cfg = SyntheticSpec.from_dict(data)
    w = teacher_weights(cfg.task, cfg.data_seed)
    a, b = init_student(cfg)
    (res,) = run_pack([cfg])
    out = subprocess.run([sys.executable, "-c", SUBPROCESS, json.dumps(data)], capture_output=True, text=True, check=True)
    other = json.loads(out.stdout)
    assert other["w"] == {k: v.sum().item() for k, v in w.items()}
    assert other["w0"] == w["w_in"].flatten()[:5].tolist()
    assert (other["a"], other["b"]) == (a.sum().item(), b.sum().item())
    assert other["loss"] == res.metrics["final_train_loss"]
    # and a different seed gives a different teacher
    w2 = teacher_weights(cfg.task, 8)
    assert not torch.equal(w["w_in"], w2["w_in"])


def test_data_seed_fixes_teacher_while_seed_changes_init():
    c1 = spec(task={"data_seed": 3}, seed=0)
    c2 = spec(task={"data_seed": 3}, seed=1)
    assert c1.data_seed == c2.data_seed == 3
    assert not torch.equal(init_student(c1)[0], init_student(c2)[0])
    r1, r2 = run_pack([c1, c2])
    assert r1.metrics["initial_train_loss"] == r2.metrics["initial_train_loss"]


def test_spec_rejects_unknown_keys_and_bad_values_in_one_line():
    with pytest.raises(SpecError, match="unknown key task.widht") as err:
        SyntheticSpec.from_dict({"task": {"widht": 8}})
    assert "\n" not in str(err.value)
    for bad in (
        {"lora": {"alpha_rule": "2"}},
        {"lora": {"init": "C"}},
        {"task": {"width": 0}},
        {"optim": {"lr_a": -1}},
        {"train": {"steps": "many"}},
        {"train": {"blowup_factor": 0.5}},
    ):
        with pytest.raises(SpecError) as err:
            SyntheticSpec.from_dict(bad)
        assert "\n" not in str(err.value)


def test_registered_task_and_pack_keys():
    task = get_task("synthetic")
    assert task.spec_cls is SyntheticSpec
    a = spec(lora={"init": "A"}, optim={"lr_a": 1e-2})
    b = spec(lora={"init": "B", "alpha_rule": "1/r"}, optim={"lr_a": 1e-3, "lr_ratio": 8.0})
    assert task.pack_key(a) == task.pack_key(b)
    assert task.pack_key(a) != task.pack_key(spec(seed=1))
    assert task.pack_key(a) != task.pack_key(spec(lora={"rank": 8}))
    assert task.pack_key(a) != task.pack_key(spec(task={"width": 64}))
    assert task.max_pack_size(a) >= 1
    results = task.run_pack([a, b])
    assert [r.status for r in results] == ["done", "done"]
    assert {"final_train_loss", "test_loss"} <= set(results[0].metrics)


def _peft_model(cfg: SyntheticSpec):
    peft = pytest.importorskip("peft")
    w = teacher_weights(cfg.task, cfg.data_seed)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = torch.nn.Linear(cfg.task.width, cfg.task.width, bias=False, dtype=torch.float64)
            self.hidden.weight.data.copy_(w["w_star"])

        def forward(self, x):
            return torch.relu(self.hidden(torch.relu(x @ w["w_in"].T))) @ w["w_out"].T

    r = cfg.lora.rank
    model = peft.get_peft_model(Net(), peft.LoraConfig(r=r, lora_alpha=cfg.lora.alpha * r, target_modules=["hidden"]))
    a, b = init_student(cfg)
    layer = model.base_model.model.hidden
    layer.lora_A["default"].weight.data.copy_(a)
    layer.lora_B["default"].weight.data.copy_(b)
    teacher = w["w_star"] + w["b_star"] @ w["a_star"]
    y = torch.relu(torch.relu(w["x_train"] @ w["w_in"].T) @ teacher.T) @ w["w_out"].T
    return model, w["x_train"], y


@pytest.mark.parametrize("init,rule", [("A", "1"), ("B", "1/sqrt(r)")])
def test_norm_records_agree_with_feature_norm_probe(init, rule):
    from loradyn import FeatureNormProbe

    cfg = spec(lora={"init": init, "alpha_rule": rule}, optim={"lr_a": 1e-2, "lr_ratio": 4.0}, train={"record_every": 3})
    (res,) = run_pack([cfg])
    model, x, y = _peft_model(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    lr_of = {id(p): cfg.optim.lr_a * (cfg.optim.lr_ratio if "lora_B" in n else 1.0) for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.Adam([{"params": [p], "lr": lr_of[id(p)]} for p in params])
    with FeatureNormProbe(model, every=3, stats=("rms", "l2")) as probe:
        for _ in range(cfg.train.steps):
            loss = (model(x) - y).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            probe.step()
        with torch.no_grad():
            model(x)  # the forward after the last update (step T)
    ref = probe.to_frame()
    ours = {(p["step"], p["feature"], p["stat"]): p["value"] for p in res.probes}
    theirs = {(int(s), f, st): v for s, f, st, v in zip(ref["step"], ref["feature"], ref["stat"], ref["value"])}
    assert set(ours) == set(theirs)
    assert {k[1] for k in ours} == {"z_a", "z_b", "lora_out"} and len(ours) > 12
    for key, value in ours.items():
        assert value == pytest.approx(theirs[key], rel=1e-9, abs=1e-12), key
