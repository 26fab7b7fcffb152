"""LoraSpec (loradyn.specs): YAML round-trip, unknown keys, invalid values, overrides, scaling."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import yaml

from loradyn import LoraSpec
from loradyn.errors import LoradynError, SpecError
from loradyn.init import InitScheme

VALID_KEYS = "alpha, distribution, dropout, init, modules_to_save, rank, rslora, std_a, std_b, target_modules"


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


CUSTOM = LoraSpec(
    rank=16,
    alpha=32.5,
    init="B",
    distribution="gaussian",
    std_a=0.01,
    std_b=None,
    rslora=True,
    dropout=0.1,
    target_modules=("q_proj", "k_proj", "v_proj"),
)


# --- round trips ------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [LoraSpec(), CUSTOM], ids=["default", "custom"])
def test_yaml_round_trip(spec: LoraSpec, tmp_path: Path) -> None:
    path = spec.to_yaml(tmp_path / "sub" / "lora.yaml")  # parent directories are created
    assert path.exists()
    back = LoraSpec.from_yaml(path)
    assert back == spec
    assert isinstance(back.target_modules, tuple)
    # the file is plain YAML with every field, in declaration order
    data = yaml.safe_load(path.read_text())
    assert list(data) == [f.name for f in dataclasses.fields(LoraSpec)]
    assert data["target_modules"] == list(spec.target_modules)


def test_dict_round_trip() -> None:
    d = CUSTOM.to_dict()
    assert d["target_modules"] == ["q_proj", "k_proj", "v_proj"] and d["std_b"] is None
    assert LoraSpec.from_dict(d) == CUSTOM
    assert LoraSpec.from_dict({}) == LoraSpec()
    assert LoraSpec.from_dict(None) == LoraSpec()


def test_enum_init_serialises_as_its_value(tmp_path: Path) -> None:
    spec = LoraSpec(init=InitScheme.B)
    assert spec.to_dict()["init"] == "B"
    assert LoraSpec.from_yaml(spec.to_yaml(tmp_path / "s.yaml")).init == "B"


@pytest.mark.parametrize("init", ["A", "B", "AB", "gaussian", "pissa", "pissa_niter_4", "olora", "orthogonal"])
def test_every_init_method_round_trips_through_yaml(init: str, tmp_path: Path) -> None:
    spec = LoraSpec(rank=4, init=init)
    assert LoraSpec.from_yaml(spec.to_yaml(tmp_path / "s.yaml")) == spec
    assert LoraSpec.from_yaml(LoraSpec().to_yaml(tmp_path / "d.yaml"), [f"init={init}", "rank=4"]).init == init
    assert LoraSpec().init == "A"


def test_yaml_values_are_coerced(tmp_path: Path) -> None:
    path = tmp_path / "lora.yaml"
    path.write_text("rank: '8'\nalpha: 16\nrslora: yes\ndropout: 0\nstd_b: 1e-2\ntarget_modules: [c_attn]\n")
    spec = LoraSpec.from_yaml(path)
    assert spec.rank == 8 and isinstance(spec.rank, int)
    assert spec.alpha == 16.0 and isinstance(spec.alpha, float)
    assert spec.rslora is True and spec.dropout == 0.0
    assert spec.std_b == pytest.approx(0.01)  # YAML 1.1 reads 1e-2 as a string; coerced to float
    assert spec.target_modules == ("c_attn",)


def test_from_yaml_with_overrides(tmp_path: Path) -> None:
    path = LoraSpec().to_yaml(tmp_path / "lora.yaml")
    spec = LoraSpec.from_yaml(path, ["rank=32", "init=B", "alpha=64", "target_modules=[all-linear]", "std_a=null"])
    assert (spec.rank, spec.init, spec.alpha, spec.target_modules) == (32, "B", 64.0, ("all-linear",))
    with pytest.raises(SpecError, match="unknown key ranks in LoraSpec") as err:
        LoraSpec.from_yaml(path, ["ranks=32"])
    _one_line(err)
    with pytest.raises(SpecError, match="rank must be an integer >= 1, got 0"):
        LoraSpec.from_yaml(path, ["rank=0"])


# --- unknown keys -------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["ranks", "lora_alphas", "use_dora", "R"])
def test_unknown_key_lists_valid_keys(key: str) -> None:
    with pytest.raises(SpecError) as err:
        LoraSpec.from_dict({"rank": 4, key: 1})
    assert _one_line(err) == f"unknown key {key} in LoraSpec; valid keys: {VALID_KEYS}"


def test_unknown_key_in_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "lora.yaml"
    path.write_text("rank: 4\nlora_dropouts: 0.1\n")
    with pytest.raises(SpecError, match=f"unknown key lora_dropouts in LoraSpec; valid keys: {VALID_KEYS}") as err:
        LoraSpec.from_yaml(path)
    _one_line(err)


# --- invalid values -------------------------------------------------------------------------------
INVALID = [
    ({"rank": 0}, "rank must be an integer >= 1"),
    ({"rank": -4}, "rank must be an integer >= 1"),
    ({"rank": 2.5}, "rank: expected an integer"),
    ({"rank": True}, "rank: expected an integer"),
    ({"alpha": 0}, "alpha must be a finite number > 0"),
    ({"alpha": -1.0}, "alpha must be a finite number > 0"),
    ({"alpha": float("nan")}, "alpha must be a finite number > 0"),
    ({"alpha": float("inf")}, "alpha must be a finite number > 0"),
    ({"alpha": True}, "alpha: expected a number"),
    ({"dropout": 1}, "dropout must satisfy 0 <= dropout < 1"),
    ({"dropout": 1.5}, "dropout must satisfy 0 <= dropout < 1"),
    ({"dropout": -0.1}, "dropout must satisfy 0 <= dropout < 1"),
    ({"init": "C"}, "init: unknown init method 'C': use A, B, AB, gaussian, pissa, pissa_niter_<K>"),
    ({"init": "a"}, "init: unknown init method 'a'"),
    ({"init": "pissa_niter_0"}, "init: unknown init method 'pissa_niter_0'"),
    ({"init": "pissa_niter_x"}, "init: unknown init method 'pissa_niter_x'"),
    ({"init": "pissa", "std_a": 0.1}, "init='pissa' is PEFT's, with its own distribution"),
    ({"init": "olora", "distribution": "gaussian"}, "init='olora' is PEFT's, with its own distribution"),
    ({"init": "orthogonal", "rank": 3}, "init='orthogonal' needs an even rank"),
    ({"distribution": "normal"}, "distribution: 'normal' is not one of 'kaiming_uniform', 'gaussian'"),
    ({"std_a": 0}, "std_a must be a finite number > 0"),
    ({"std_a": -0.1}, "std_a must be a finite number > 0"),
    ({"std_b": float("nan")}, "std_b must be a finite number > 0"),
    ({"std_b": "wide"}, "std_b: expected float | None"),
    ({"rslora": "maybe"}, "rslora: expected true or false"),
    ({"target_modules": []}, "target_modules must be a non-empty list"),
    ({"target_modules": "q_proj"}, "target_modules: expected a list"),
    ({"target_modules": ["q_proj", ""]}, "target_modules must be a non-empty list"),
    ({"modules_to_save": ["classifier", ""]}, "modules_to_save must be a list of module names"),
    ({"modules_to_save": "classifier"}, "modules_to_save: expected tuple[str, ...] | None"),
]


@pytest.mark.parametrize(("data", "match"), INVALID, ids=[str(d) for d, _ in INVALID])
def test_invalid_values_from_dict(data: dict, match: str) -> None:
    with pytest.raises(SpecError) as err:
        LoraSpec.from_dict(data)
    assert match in _one_line(err)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rank": 0}, {"rank": 8.0}, {"rank": True}, {"alpha": 0.0}, {"alpha": True}, {"dropout": 1.0},
        {"dropout": "0.1"}, {"init": "C"}, {"distribution": "uniform"}, {"std_a": 0.0}, {"std_b": -1.0},
        {"std_a": "0.1"}, {"std_b": True}, {"rslora": "yes"}, {"target_modules": ()},
    ],
)
def test_invalid_values_direct_construction(kwargs: dict) -> None:
    with pytest.raises(SpecError) as err:
        LoraSpec(**kwargs)
    _one_line(err)


def test_spec_error_is_a_loradyn_error() -> None:
    assert issubclass(SpecError, LoradynError) and issubclass(LoradynError, ValueError)


# --- behaviour ----------------------------------------------------------------------------------
def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        LoraSpec().rank = 4  # type: ignore[misc]


def test_target_modules_string_becomes_tuple() -> None:
    assert LoraSpec(target_modules="all-linear").target_modules == ("all-linear",)
    assert LoraSpec(target_modules=["a", "b"]).target_modules == ("a", "b")
    assert LoraSpec(target_modules=["a"]) == LoraSpec(target_modules=("a",))  # hashable & comparable
    hash(LoraSpec(target_modules=["a"]))


@pytest.mark.parametrize("rank", [1, 4, 8, 64])
def test_scaling(rank: int) -> None:
    assert LoraSpec(rank=rank, alpha=16).scaling == pytest.approx(16 / rank, rel=1e-15)
    assert LoraSpec(rank=rank, alpha=16, rslora=True).scaling == pytest.approx(16 / math.sqrt(rank), rel=1e-15)


# --- OptimSpec (the LoRA+ optimizer spec, also in loradyn.specs) ---------------------------------
def test_optim_spec_round_trip(tmp_path: Path) -> None:
    from loradyn.specs import OptimSpec

    spec = OptimSpec(name="adamw", lr_a=2e-4, lr_ratio=16, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01)
    assert spec.lr_b == pytest.approx(3.2e-3, rel=1e-15)
    path = tmp_path / "optim.yaml"
    from loradyn.serialize import load_spec, save_spec

    assert load_spec(OptimSpec, save_spec(spec, path)) == spec
    assert load_spec(OptimSpec, path, ["lr_ratio=1"]).lr_b == pytest.approx(2e-4, rel=1e-15)


OPTIM_INVALID = [
    ({"lr_a": 0}, "optim.lr_a must be a finite number > 0"),
    ({"lr_a": float("nan")}, "optim.lr_a must be a finite number > 0"),
    ({"lr_ratio": -1}, "optim.lr_ratio must be a finite number > 0"),
    ({"lr_ratio": float("inf")}, "optim.lr_ratio must be a finite number > 0"),
    ({"betas": [0.9, 1.0]}, "optim.betas must lie in [0, 1)"),
    ({"betas": [0.9]}, "betas: expected 2 items, got 1"),
    ({"eps": -1e-8}, "optim.eps must be a finite number >= 0"),
    ({"weight_decay": -0.1}, "optim.weight_decay must be >= 0"),
    ({"name": "sgd"}, "name: 'sgd' is not one of 'adam', 'adamw'"),
    ({"lr": 1e-3}, "unknown key lr in OptimSpec; valid keys: betas, eps, lr_a, lr_ratio, name, weight_decay"),
]


@pytest.mark.parametrize(("data", "match"), OPTIM_INVALID, ids=[str(d) for d, _ in OPTIM_INVALID])
def test_optim_spec_invalid(data: dict, match: str) -> None:
    from loradyn.serialize import spec_from_dict
    from loradyn.specs import OptimSpec

    with pytest.raises(SpecError) as err:
        spec_from_dict(OptimSpec, data)
    assert match in _one_line(err)


# --- PEFT names (r, lora_alpha, lora_dropout, use_rslora) and LoraSpec.from_peft ---------------------
PEFT_KEYS = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "use_rslora": True,
             "target_modules": ["q_proj", "k_proj"], "modules_to_save": ["classifier"]}
def _ours() -> LoraSpec:
    return LoraSpec(rank=16, alpha=32.0, dropout=0.05, rslora=True, target_modules=("q_proj", "k_proj"),
                    modules_to_save=("classifier",))


def test_peft_names_in_from_dict_yaml_and_constructor(tmp_path: Path) -> None:
    assert LoraSpec.from_dict(PEFT_KEYS) == _ours()
    path = tmp_path / "peft.yaml"
    path.write_text(yaml.safe_dump(PEFT_KEYS))
    assert LoraSpec.from_yaml(path) == _ours()
    assert LoraSpec.from_yaml(path, ["r=4", "lora_alpha=8"]) == dataclasses.replace(_ours(), rank=4, alpha=8.0)
    assert LoraSpec.from_yaml(path, ["rank=4"]).rank == 4  # loradyn's name overrides a PEFT-named key
    assert LoraSpec(**PEFT_KEYS) == _ours()
    assert dataclasses.replace(_ours(), rank=2).rank == 2  # replace() still takes loradyn's names


@pytest.mark.parametrize(("ours", "theirs"), [("rank", "r"), ("alpha", "lora_alpha"),
                                              ("dropout", "lora_dropout"), ("rslora", "use_rslora")])
def test_both_names_of_one_field_are_rejected(ours: str, theirs: str, tmp_path: Path) -> None:
    value = getattr(_ours(), ours)
    for build in (lambda: LoraSpec.from_dict({ours: value, theirs: value}),
                  lambda: LoraSpec(**{ours: value, theirs: value})):
        with pytest.raises(SpecError, match=f"both {ours} and PEFT's name for it, {theirs}") as err:
            build()
        _one_line(err)
    path = tmp_path / "both.yaml"
    path.write_text(f"{ours}: {value}\n{theirs}: {value}\n")
    with pytest.raises(SpecError, match="give one") as err:
        LoraSpec.from_yaml(path)
    _one_line(err)


def test_modules_to_save_field() -> None:
    assert LoraSpec().modules_to_save is None  # the default: a classification model's head
    assert LoraSpec(modules_to_save=["classifier", "pooler"]).modules_to_save == ("classifier", "pooler")
    assert LoraSpec(modules_to_save="score").modules_to_save == ("score",)
    assert LoraSpec.from_dict({"modules_to_save": []}).modules_to_save == ()
    assert LoraSpec.from_dict(_ours().to_dict()) == _ours()


def test_from_peft_converts_names_and_init() -> None:
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, use_rslora=True,
                             target_modules=["q_proj", "k_proj"], modules_to_save=["classifier"])
    assert LoraSpec.from_peft(config) == dataclasses.replace(_ours(), target_modules=("k_proj", "q_proj"))
    assert LoraSpec.from_peft(config, init="B", std_b=0.01).init == "B"
    gauss = LoraSpec.from_peft(peft.LoraConfig(r=4, target_modules=["q"], init_lora_weights="gaussian"))
    assert (gauss.distribution, gauss.std_a, gauss.alpha) == ("gaussian", 0.25, 8.0)  # PEFT: A ~ N(0, 1/r)
    assert LoraSpec.from_peft(peft.LoraConfig(target_modules="all-linear")).target_modules == ("all-linear",)
    seq = LoraSpec.from_peft(peft.LoraConfig(target_modules=["q"], task_type="SEQ_CLS"))
    assert seq.modules_to_save is None  # loradyn's default trains the head, as SEQ_CLS does
    causal = LoraSpec.from_peft(peft.LoraConfig(target_modules=["q"], task_type="CAUSAL_LM"))
    assert causal.modules_to_save == ()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"use_dora": True}, "LoraConfig.use_dora=True has no loradyn equivalent"),
    ({"bias": "all"}, "LoraConfig.bias='all' has no loradyn equivalent"),
    ({"rank_pattern": {"q": 2}}, "LoraConfig.rank_pattern="),
    ({"layers_to_transform": [0]}, "LoraConfig.layers_to_transform="),
    ({"target_modules": r".*\.q"}, "is a regex; loradyn matches name suffixes"),
    ({"target_modules": None}, "target_modules is None"),
    ({"init_lora_weights": "pissa"}, "init_lora_weights='pissa' has no loradyn equivalent"),
    ({"init_lora_weights": False}, "init_lora_weights=False has no loradyn equivalent"),
    ({"task_type": "SEQ_CLS", "modules_to_save": ["pooler"]}, "also trains the 'classifier'/'score' head"),
])
def test_from_peft_refuses_what_loradyn_cannot_honour(kwargs: dict, match: str) -> None:
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(**{"target_modules": ["q"], **kwargs})
    with pytest.raises(LoradynError, match=match) as err:
        LoraSpec.from_peft(config)
    _one_line(err)
    with pytest.raises(LoradynError, match="takes a peft.LoraConfig"):
        LoraSpec.from_peft({"r": 8})
