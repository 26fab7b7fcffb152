"""Model forms and readouts of the synthetic family (``task.form``, ``task.readout``,
``task.teacher_readout``, ``d_out > 1``) against a naive float64 reference: the forward written out
from the raw draws, autograd for the backward, ``torch.optim.Adam`` for the steps."""

from __future__ import annotations

import pytest
import torch

from loradyn.errors import SpecError
from loradyn.serialize import identity_dict
from loradyn.synthetic import SyntheticSpec, frozen_parts, init_student, run_pack, teacher_weights
from loradyn.synthetic.engine import _Pass
from synthetic_specs import small_spec

RTOL = 1e-9  # float64 throughout; measured ~1e-13


def spec(**sections) -> SyntheticSpec:
    return small_spec({"width": 40, "n_train": 48, "n_test": 12}, 12, **sections)


def naive_net(cfg: SyntheticSpec, w: dict, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float,
              teacher: bool = False) -> torch.Tensor:
    """The model written out: ``hidden``: W_out φ((W* + α B A) φ(W_in x)); ``residual``:
    z = W_in x, W_out φ(z + α B A φ(z)). The teacher uses B*, A*, α = 1 and its own readout."""
    z = x @ w["w_in"].T
    h = torch.relu(z)
    base = h @ w["w_star"].T if cfg.task.form == "hidden" else z
    pre = base + alpha * (h @ a.T) @ b.T
    readout = w["w_out_teacher"] if teacher else w["w_out"]
    return torch.relu(pre) @ readout.T


def naive_run(cfg: SyntheticSpec):
    w = teacher_weights(cfg.task, cfg.data_seed)
    y = naive_net(cfg, w, w["x_train"], w["a_star"], w["b_star"], 1.0, teacher=True)
    a0, b0 = init_student(cfg)
    a, b = torch.nn.Parameter(a0.clone()), torch.nn.Parameter(b0.clone())
    opt = torch.optim.Adam([{"params": [a], "lr": cfg.optim.lr_a}, {"params": [b], "lr": cfg.optim.lr_b}],
                           betas=cfg.optim.betas, eps=cfg.optim.eps)
    losses = []
    for _ in range(cfg.train.steps):
        loss = (naive_net(cfg, w, w["x_train"], a, b, cfg.lora.alpha) - y).square().mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        losses.append((naive_net(cfg, w, w["x_train"], a, b, cfg.lora.alpha) - y).square().mean().item())
    return losses, a.detach(), b.detach()


def rel(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


VARIANTS = [
    {"form": "residual"},
    {"form": "residual", "readout": "mup", "teacher_readout": "independent", "d_out": 3},
    {"form": "hidden", "readout": "mup", "teacher_readout": "independent"},
    {"form": "hidden", "teacher_readout": "independent", "d_out": 2},
    {"form": "residual", "readout": "mup"},
]


@pytest.mark.parametrize("task", VARIANTS, ids=lambda t: "-".join(f"{v}" for v in t.values()))
def test_engine_matches_the_naive_reference(task):
    cfgs = [spec(task=task, lora={"init": i, "alpha_rule": rule}, optim={"lr_a": lr, "lr_ratio": ratio},
                 train={"curve_every": 1}, seed=s)
            for i, rule, lr, ratio, s in [("A", "1", 1e-2, 4.0, 0), ("B", "1/sqrt(r)", 5e-3, 2.0, 1)]]
    results, params = run_pack(cfgs, return_params=True)
    for cfg, res, (a, b) in zip(cfgs, results, params):
        losses, a_ref, b_ref = naive_run(cfg)
        curve = [c["value"] for c in res.curves if c["metric"] == "train_loss"]
        assert res.status == "done"
        assert rel(curve, losses) < RTOL
        assert rel(a, a_ref) < RTOL and rel(b, b_ref) < RTOL


@pytest.mark.parametrize("form", ["hidden", "residual"])
@pytest.mark.parametrize("init", ["A", "B"])
def test_engine_gradients_equal_autograd(form, init):
    """The hand-written backward at a random point (B·A ≠ 0) and at the init, against autograd."""
    cfg = spec(task={"form": form, "d_out": 2, "teacher_readout": "independent"}, lora={"init": init})
    w = teacher_weights(cfg.task, cfg.data_seed)
    frozen = frozen_parts(cfg)
    y = naive_net(cfg, w, w["x_train"], w["a_star"], w["b_star"], 1.0, teacher=True)
    assert rel(frozen.y_train, y) < RTOL
    a0, b0 = init_student(cfg)
    gen = torch.Generator().manual_seed(3)
    random_point = (torch.randn(a0.shape, generator=gen, dtype=torch.float64) * 0.2,
                    torch.randn(b0.shape, generator=gen, dtype=torch.float64) * 0.2)
    for a_val, b_val in [(a0, b0), random_point]:
        a, b = a_val.clone().requires_grad_(), b_val.clone().requires_grad_()
        loss = (naive_net(cfg, w, w["x_train"], a, b, 0.7) - y).square().mean()
        loss.backward()
        engine = _Pass(frozen, 1, cfg.lora.rank)
        alpha = torch.full((1, 1, 1), 0.7, dtype=torch.float64)
        e_loss, g_a, g_bt = engine.run(a_val[None].clone(), b_val.T[None].contiguous(), alpha, backward=True)
        assert float(e_loss[0]) == pytest.approx(loss.item(), rel=RTOL)
        assert rel(g_a[0], a.grad) < RTOL and rel(g_bt[0].T, b.grad) < RTOL
        assert a.grad.abs().max() > 0 or b.grad.abs().max() > 0  # a gradient to compare


@pytest.mark.parametrize("init", ["A", "B"])
def test_both_inits_learn_in_the_residual_form(init):
    cfg = spec(task={"form": "residual", "width": 64, "n_train": 128}, lora={"init": init},
               optim={"lr_a": 2.0**-6}, train={"steps": 60})
    (res,), ((a, b),) = run_pack([cfg], return_params=True)
    a0, b0 = init_student(cfg)
    assert res.status == "done"
    assert res.metrics["final_train_loss"] < 0.3 * res.metrics["initial_train_loss"]
    assert (a - a0).abs().max() > 1e-3 and (b - b0).abs().max() > 1e-3  # both factors moved


def test_full_finetuning_in_the_residual_form_matches_torch_adam():
    cfg = spec(task={"form": "residual"}, lora={"method": "full"}, optim={"lr_a": 1e-3}, train={"curve_every": 1})
    (res,) = run_pack([cfg])
    w = teacher_weights(cfg.task, cfg.data_seed)
    z = w["x_train"] @ w["w_in"].T
    y = naive_net(cfg, w, w["x_train"], w["a_star"], w["b_star"], 1.0, teacher=True)
    dw = torch.nn.Parameter(torch.zeros(cfg.task.width, cfg.task.width, dtype=torch.float64))
    opt = torch.optim.Adam([dw], lr=1e-3)
    ref = []
    for t in range(cfg.train.steps + 1):
        loss = (torch.relu(z + torch.relu(z) @ dw.T) @ w["w_out"].T - y).square().mean()
        ref.append(loss.item())
        if t < cfg.train.steps:
            opt.zero_grad()
            loss.backward()
            opt.step()
    curve = [c["value"] for c in res.curves if c["metric"] == "train_loss"]
    assert res.status == "done" and rel(curve, ref) < RTOL and ref[-1] < ref[0]


def test_readouts_are_the_same_draw_rescaled_and_the_teacher_owns_its_own():
    sp = teacher_weights(spec(task={"width": 256}).task, 5)
    mup = teacher_weights(spec(task={"width": 256, "readout": "mup"}).task, 5)
    own = teacher_weights(spec(task={"width": 256, "teacher_readout": "independent"}).task, 5)
    assert torch.equal(mup["w_out"], sp["w_out"] * 256**-0.5)
    assert sp["w_out_teacher"] is sp["w_out"] and mup["w_out_teacher"] is mup["w_out"]
    assert torch.equal(own["w_out"], sp["w_out"]) and not torch.equal(own["w_out_teacher"], own["w_out"])
    assert 0.8 < float(own["w_out_teacher"].std() * 256**0.5) < 1.2
    assert 0.8 < float(sp["w_out"].std() * 256**0.5) < 1.2
    assert "w_star" in sp and "w_star" not in teacher_weights(spec(task={"form": "residual"}).task, 5)


def test_the_default_task_keeps_its_trial_identity_and_pack_key():
    from loradyn.synthetic import pack_key

    default = spec()
    ident = identity_dict(default)["task"]
    assert not {"form", "readout", "teacher_readout"} & set(ident)
    keys = {pack_key(spec(task=t)) for t in ({}, {"form": "residual"}, {"readout": "mup"},
                                              {"teacher_readout": "independent"})}
    assert len(keys) == 4  # each option is its own pack (its own frozen parts)


@pytest.mark.parametrize("task,match", [
    ({"with_w_star": False}, "task.form=residual"),
    ({"form": "resid"}, "task.form"),
    ({"readout": "ntk"}, "task.readout"),
    ({"teacher_readout": "own"}, "task.teacher_readout"),
])
def test_bad_task_options_are_one_line(task, match):
    with pytest.raises(SpecError, match=match) as err:
        spec(task=task)
    assert "\n" not in str(err.value)
