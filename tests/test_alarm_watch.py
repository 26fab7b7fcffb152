"""loradyn.alarm_watch: update sizes and the probe's input norms against naive float64 recomputations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import loradyn
from loradyn.alarm import AlarmSpec
from loradyn.alarm_watch import ModelWatch, UpdateSizes, layer_features, split_module


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(12, 10)
        self.v = nn.Linear(10, 6)
        self.emb = nn.Embedding(20, 12)

    def forward(self, ids):
        return self.v(torch.tanh(self.q(self.emb(ids))))


def _peft(init_weights=True, adapters=("default",)):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=3, lora_alpha=5, target_modules=["q", "v", "emb"], init_lora_weights=init_weights)
    model = get_peft_model(Net().double(), config, adapter_name=adapters[0])
    for name in adapters[1:]:
        model.add_adapter(name, config)
    return model


def _naive_ratio(module, adapter):
    """|scaling| ||B A - B0 A0||_F / ||W0||_F with the (out, in) product formed explicitly."""
    if hasattr(module, "lora_embedding_A") and adapter in module.lora_embedding_A:
        a, b = module.lora_embedding_A[adapter], module.lora_embedding_B[adapter]
    else:
        a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
    return a.detach().double().clone(), b.detach().double().clone(), module.scaling[adapter], module.base_layer.weight.double()


def _perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


@pytest.mark.parametrize("init_weights", [True, False])  # False: PEFT's random B, so B0 A0 != 0
def test_update_sizes_match_the_explicit_product(init_weights):
    pytest.importorskip("peft")
    model = _peft(init_weights)
    start = {n: _naive_ratio(m, "default") for n, m in model.named_modules() if hasattr(m, "scaling") and hasattr(m, "base_layer")}
    sizes = UpdateSizes(model)
    assert len(sizes) == 3
    before = sizes.ratios()["default"]
    assert all(value == pytest.approx(0.0, abs=1e-12) for value in before.values())  # nothing trained yet
    _perturb(model, 1)
    got = sizes.ratios()["default"]
    assert set(got) == {n for n in start}
    for name, module in model.named_modules():
        if name not in got:
            continue
        a, b, scaling, w0 = _naive_ratio(module, "default")
        a0, b0, _, _ = start[name]
        want = abs(scaling) * float(torch.linalg.matrix_norm(b @ a - b0 @ a0)) / float(torch.linalg.matrix_norm(w0))
        assert got[name] == pytest.approx(want, rel=1e-10), name
        assert want > 0


def test_update_sizes_per_adapter_and_loradyn_layers():
    pytest.importorskip("peft")
    model = _peft(adapters=("t0", "t1"))
    sizes = UpdateSizes(model, ["t1"])
    _perturb(model, 2)
    assert set(sizes.ratios()) == {"t1"} and set(sizes.ratios(["t0"])) == set()
    own = loradyn.apply_lora(Net(), loradyn.LoraSpec(rank=2, alpha=4, target_modules=("q", "v")), generator=0)
    own_sizes = UpdateSizes(own)
    handles = {h.name: h for h in loradyn.iter_lora_layers(own)}
    with torch.no_grad():
        handles["q"].lora_B.fill_(0.1)
    r = own_sizes.ratios()["default"]
    a, b = handles["q"].lora_A.detach().double(), handles["q"].lora_B.detach().double()
    w0 = handles["q"].base_layer.weight.double()
    want = 2.0 * float(torch.linalg.matrix_norm(b @ a)) / float(torch.linalg.matrix_norm(w0))
    assert r["q"] == pytest.approx(want, rel=1e-6) and r["v"] == 0.0


def test_probe_inputs_are_the_naive_input_norms():
    pytest.importorskip("peft")
    model = _peft()
    _perturb(model, 3)
    ids = torch.randint(0, 20, (4, 7), generator=torch.Generator().manual_seed(0))
    seen = {}
    hook = model.base_model.model.q.register_forward_pre_hook(lambda m, args: seen.setdefault("q", args[0].detach()))
    with loradyn.FeatureNormProbe(model, stats=("rms", "l2", "l1", "max"), inputs=True) as probe:
        model(ids)
        probe.step()
    hook.remove()
    frame = probe.to_frame()
    x = seen["q"].reshape(-1, 12).double()
    rows = frame[(frame["feature"] == "x") & frame["module"].str.endswith("q[default]")].set_index("stat")["value"]
    assert rows["l2"] == pytest.approx(float(x.norm(dim=1).mean()), rel=1e-12)
    assert rows["rms"] == pytest.approx(float(x.norm(dim=1).mean()) / math.sqrt(12), rel=1e-12)
    assert rows["l1"] == pytest.approx(float(x.abs().sum(1).mean()), rel=1e-12)
    assert rows["max"] == pytest.approx(float(x.abs().amax(1).mean()), rel=1e-12)
    assert not frame[(frame["feature"] == "x") & frame["module"].str.contains("emb")].shape[0]  # embeddings: none
    assert set(frame["feature"]) == {"z_a", "z_b", "lora_out", "x"}
    plain = loradyn.FeatureNormProbe(model)
    assert "x" not in plain.features  # off by default: tables unchanged


def test_model_watch_feeds_one_monitor_per_adapter():
    pytest.importorskip("peft")
    model = _peft(adapters=("t0", "t1"))
    watch = ModelWatch(model, ["t0", "t1"], AlarmSpec(update_ratio=0.5, loss_growth=None))
    assert watch.observe(0, {"t0": 1.0, "t1": 1.0}) == {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".t1." in name and "lora_B" in name:
                p.fill_(3.0)
    fired = watch.observe(1, {"t0": 1.0, "t1": 1.0})
    assert list(fired) == ["t1"] and fired["t1"].reason == "update" and fired["t1"].step == 1
    assert watch.observe(2, {}, live=["t0"]) == {}
    rows = [(0, "base_model.model.q[t0]", "x", "rms", 2.0), (0, "base_model.model.q[t0]", "lora_out", "rms", 1.0),
            (0, "q", "z_a", "rms", 5.0), (0, "q", "z_a", "l2", 9.0)]
    assert layer_features(rows) == {"t0": {"base_model.model.q": {"x": 2.0, "lora_out": 1.0}}, "default": {"q": {"z_a": 5.0}}}
    assert split_module("a.b[t3]") == ("a.b", "t3") and split_module("a.b") == ("a.b", "default")
