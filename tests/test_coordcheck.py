"""``loradyn.coord_check`` on user-style models (loradyn's apply_lora, PEFT): every recorded value
against a naive float64 computation that materialises the vectors, the slopes and their CI, and
bad input in one line."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import loradyn
from loradyn import LoraSpec, apply_lora
from loradyn.coordcheck import COLUMNS, coord_slopes
from loradyn.errors import LoradynError

TOL = 1e-10  # float64 throughout


def mlp(width: int, seed: int, init: str = "A", dtype=torch.float64) -> nn.Module:
    """A user's model: two hidden layers, LoRA on both hidden-to-hidden and output layers."""
    torch.manual_seed(1000 + width)  # the frozen "pretrained" net depends on the width only
    net = nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4)).to(dtype)
    spec = LoraSpec(rank=3, alpha=6, init=init, distribution="gaussian", target_modules=("2", "4"))
    return apply_lora(net, spec, generator=seed)


def data(dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(20, 6, generator=gen, dtype=dtype), torch.randn(20, 4, generator=gen, dtype=dtype)


def mse(model, batch):
    x, y = batch
    return (model(x) - y).square().mean()


def rms(v: torch.Tensor) -> float:
    """Data mean of the per-vector RMS."""
    return float((v.norm(dim=-1) / math.sqrt(v.shape[-1])).mean())


def naive(width: int, seed: int, init: str, lr: float, ratio: float, steps: int) -> dict:
    """The expected rows: train a fresh copy with torch Adam, materialise every vector."""
    model = mlp(width, seed, init)
    batch = data()
    pairs = {name: m for name, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")}
    inputs = {}
    hooks = [m.lora_A.register_forward_hook(lambda mod, args, out, n=n: inputs.__setitem__(n, args[0].detach()))
             for n, m in pairs.items()]
    a_params = [m.lora_A.weight for m in pairs.values()]
    b_params = [m.lora_B.weight for m in pairs.values()]
    opt = torch.optim.Adam([{"params": a_params, "lr": lr}, {"params": b_params, "lr": lr * ratio}])
    out = {}
    for t in range(steps + 1):
        opt.zero_grad()
        loss = mse(model, batch)
        out[(t, "", "loss")] = loss.item()
        snap = {n: (inputs[n], m.lora_A.weight.detach().clone(), m.lora_B.weight.detach().clone()) for n, m in pairs.items()}
        for n, (x, a, b) in snap.items():
            out[(t, n, "z_a")] = rms(x @ a.T)
            out[(t, n, "z_b")] = rms(x @ a.T @ b.T)
        if t == steps:
            break
        loss.backward()
        opt.step()
        for n, m in pairs.items():
            x, a0, b0 = snap[n]
            a1, b1 = m.lora_A.weight.detach(), m.lora_B.weight.detach()
            da, db = a1 - a0, b1 - b0
            parts = {"dz_b_a": x @ da.T @ b0.T, "dz_b_b": x @ a0.T @ db.T, "dz_b_ab": x @ da.T @ db.T}
            total = x @ a1.T @ b1.T - x @ a0.T @ b0.T
            assert torch.allclose(total, sum(parts.values()), atol=1e-12)  # the split is exact
            out[(t + 1, n, "dz_b")] = rms(total)
            for f, v in parts.items():
                out[(t + 1, n, f)] = rms(v)
    for h in hooks:
        h.remove()
    return out


@pytest.mark.parametrize("init,ratio", [("A", 1.0), ("B", 4.0)])
def test_every_value_equals_the_materialised_computation(init, ratio):
    widths, lr, steps = [16, 32], {16: 0.02, 32: 0.01}, 4
    table = loradyn.coord_check(lambda n, s: mlp(n, s, init), widths, lr=lr, steps=steps, seeds=[0, 3],
                                lr_ratio=ratio, batch=data(), loss=mse)
    assert list(table.columns) == COLUMNS
    assert set(table["module"]) == {"", "2", "4"}
    for width in widths:
        for seed in (0, 3):
            expected = naive(width, seed, init, lr[width], ratio, steps)
            got = table[(table["width"] == width) & (table["seed"] == seed)]
            assert set(got["lr_b"]) == {lr[width] * ratio}
            assert len(got) == len(expected)
            for row in got.itertuples():
                want = expected[(row.step, row.module, row.feature)]
                assert row.value == pytest.approx(want, rel=TOL, abs=1e-14), (row.step, row.module, row.feature)
    moved = table[(table["feature"] == "dz_b") & (table["step"] >= 2)]["value"]
    assert (moved > 0).all()  # the adapters learn: the comparison is not vacuous


def test_peft_models_and_one_argument_factories():
    peft = pytest.importorskip("peft")

    def make(width):  # seeded by coord_check (torch.manual_seed(seed)) before the call
        net = nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4))
        cfg = peft.LoraConfig(r=2, lora_alpha=2, target_modules=["2"])
        return peft.get_peft_model(net, cfg)

    x, y = data(torch.float32)
    table = loradyn.coord_check(make, [16, 64], lr=lambda n: 0.01 * (n / 16) ** -0.5, steps=3, seeds=2,
                                batch=(x, y), loss=mse)
    modules = set(table["module"]) - {""}
    assert len(modules) == 1 and next(iter(modules)).endswith("[default]")
    za = table[(table["feature"] == "z_a") & (table["step"] == 0)].groupby("seed")["value"].first()
    assert za.nunique() == 2  # the seed reaches PEFT's init
    assert (table[(table["feature"] == "z_b") & (table["step"] == 0)]["value"] == 0).all()  # Init[A]: B = 0
    steps = table[table["feature"] == "dz_b_a"]["step"]
    assert steps.min() == 1 and steps.max() == 3


def test_a_factory_may_return_its_own_batch_and_the_default_loss_reads_dot_loss():
    class WithLoss(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.net = mlp(width, 0)

        def forward(self, x, y):
            return {"loss": (self.net(x) - y).square().mean()}

    x, y = data()
    table = loradyn.coord_check(lambda n, s: (WithLoss(n), {"x": x, "y": y}), [8], lr=0.01, steps=2, seeds=1)
    assert table[table["feature"] == "loss"]["value"].is_monotonic_decreasing


def test_a_non_finite_loss_ends_the_run():
    table = loradyn.coord_check(lambda n, s: mlp(n, s), [8], lr=1e150, steps=6, seeds=1, batch=data(), loss=mse)
    loss = table[table["feature"] == "loss"]
    assert loss["step"].max() < 6 and not math.isfinite(loss["value"].iloc[-1])


def test_slopes_of_exact_power_laws_and_their_bootstrap_ci():
    rows = []
    rng = np.random.default_rng(0)
    for width in (128, 256, 512, 1024):
        for seed in range(6):
            noise = 1 + 0.05 * rng.standard_normal()
            for step in (1, 2):
                rows.append((width, seed, 0.1, 0.1, step, "m", "z_a", 3.0 * width**0.5))
                rows.append((width, seed, 0.1, 0.1, step, "m", "dz_b", 2.0 * width**-0.25 * noise))
    slopes = coord_slopes(pd.DataFrame(rows, columns=COLUMNS)).set_index(["feature", "step"])
    exact = slopes.loc[("z_a", 1)]
    assert exact["slope"] == pytest.approx(0.5) and exact["ci_low"] == pytest.approx(0.5)
    assert exact["ci_high"] == pytest.approx(0.5) and exact["n_widths"] == 4 and exact["n_seeds"] == 6
    noisy = slopes.loc[("dz_b", 2)]
    assert noisy["ci_low"] < -0.25 < noisy["ci_high"] and noisy["ci_high"] - noisy["ci_low"] < 0.1


@pytest.mark.parametrize("kwargs,match", [
    (dict(widths=[]), "widths"),
    (dict(widths=[0]), "widths"),
    (dict(lr=-1.0), "lr at width 8"),
    (dict(lr={16: 0.1}), "no entry for width 8"),
    (dict(seeds=0), "seeds"),
    (dict(steps=0), "steps"),
    (dict(optimizer="sgd"), "optimizer"),
    (dict(lr_ratio=0), "lr_ratio"),
    (dict(make_model=lambda n, s: nn.Linear(n, n)), "no linear LoRA layers"),
    (dict(batch=None), "no batch"),
    (dict(loss=None), "pass loss="),
])
def test_bad_input_is_one_line(kwargs, match):
    args = dict(make_model=lambda n, s: mlp(n, s), widths=[8], lr=0.01, steps=1, seeds=1, batch=data(), loss=mse)
    args.update(kwargs)
    with pytest.raises(LoradynError, match=match) as err:
        loradyn.coord_check(args.pop("make_model"), args.pop("widths"), **args)
    assert "\n" not in str(err.value)


def test_dora_is_refused_in_one_line():
    peft = pytest.importorskip("peft")
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    model = peft.get_peft_model(net, peft.LoraConfig(r=2, target_modules=["2"], use_dora=True))
    with pytest.raises(LoradynError, match="DoRA"):
        loradyn.coord_check(lambda n, s: model, [8], lr=0.01, steps=1, seeds=1, batch=data(torch.float32), loss=mse)


def test_the_figure_has_one_panel_per_feature_and_row_and_one_line_per_step():
    pytest.importorskip("matplotlib")
    from loradyn.plots import plot_coord_check

    table = loradyn.coord_check(lambda n, s: mlp(n, s), [8, 16], lr=0.01, steps=3, seeds=2, batch=data(), loss=mse)
    table = pd.concat([table.assign(gamma=-0.5), table.assign(gamma=-0.25)])
    fig = plot_coord_check(table, row="gamma", features=("z_a", "dz_b"), title="t")
    axes = fig.get_axes()
    assert len(axes) == 4 and axes[0].get_xscale() == "log" and axes[0].get_yscale() == "log"
    assert [line.get_label() for line in axes[0].get_lines()] == ["t=0", "t=1", "t=2", "t=3"]
    assert [line.get_label() for line in axes[1].get_lines()] == ["t=1", "t=2", "t=3"]  # changes start at step 1
    x, y = axes[1].get_lines()[0].get_data()
    assert list(x) == [8, 16] and len(y) == 2
