"""The synthetic student as an nn.Module (``loradyn.synthetic.module``) follows the engine's trajectory."""

from __future__ import annotations

import pytest

import loradyn
from loradyn.errors import SpecError
from loradyn.synthetic import SyntheticSpec, run_pack
from loradyn.synthetic.module import make_model, student_loss

RTOL = 1e-9  # float64; measured ~1e-15


@pytest.mark.parametrize("task,lora,ratio", [
    ({"form": "hidden"}, {"init": "A"}, 1.0),
    ({"form": "residual", "d_out": 2, "readout": "mup", "teacher_readout": "independent"}, {"init": "B"}, 4.0),
    ({"form": "residual"}, {"init": "A", "alpha_rule": "1/sqrt(r)"}, 2.0),
])
def test_adam_on_the_module_equals_the_engine(task, lora, ratio):
    cfg = SyntheticSpec.from_dict({"task": {"width": 48, "n_train": 64, **task}, "lora": lora,
                                   "optim": {"lr_a": 0.01, "lr_ratio": ratio},
                                   "train": {"steps": 8, "dtype": "float64", "curve_every": 1}, "seed": 2})
    (res,), ((a, b),) = run_pack([cfg], return_params=True)
    engine = [c["value"] for c in res.curves if c["metric"] == "train_loss"]
    build = make_model(cfg)
    table = loradyn.coord_check(build, [48], lr=0.01, lr_ratio=ratio, steps=8, seeds=[2], loss=student_loss)
    module = table[table["feature"] == "loss"].sort_values("step")["value"].tolist()
    assert module == pytest.approx(engine, rel=RTOL)
    model, batch = build(48, 2)
    assert model.hidden.scaling == cfg.lora.alpha
    assert student_loss(model, batch).item() == pytest.approx(engine[0], rel=RTOL)
    assert engine[-1] < engine[0]


def test_the_module_is_an_ordinary_lora_pair():
    cfg = SyntheticSpec.from_dict({"task": {"width": 32, "n_train": 16}, "train": {"steps": 2}})
    model, batch = make_model(cfg)(32, 0)
    (handle,) = loradyn.iter_lora_layers(model)
    assert handle.lora_A.shape == (4, 32) and handle.lora_B.shape == (32, 4) and handle.source == "loradyn"
    with loradyn.FeatureNormProbe(model) as probe:
        student_loss(model, batch)
    assert set(probe.to_frame()["feature"]) == {"z_a", "z_b", "lora_out"}
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["hidden.lora_A.weight", "hidden.lora_B.weight"]


def test_full_finetuning_has_no_module():
    with pytest.raises(SpecError, match="lora.method"):
        make_model({"lora": {"method": "full"}})
