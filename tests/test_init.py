"""Init[A] / Init[B] (loradyn.init): distributions, PEFT and loradyn layers, DoRA, guards, determinism.

Statistical checks use fixed seeds and enough samples that the stated tolerance is many standard
errors wide: the relative standard error of a sample variance is sqrt((kurtosis - 1) / N), i.e.
sqrt(0.8 / N) for uniform and sqrt(2 / N) for Gaussian draws.
"""

from __future__ import annotations

import copy
import importlib.util
import math

import pytest
import torch
from torch import nn

import loradyn
from loradyn.discover import iter_lora_layers
from loradyn.errors import LoradynError
from loradyn.init import InitScheme, default_std, draw_, init_lora_, init_pair_, make_generator

DISTRIBUTIONS = ("kaiming_uniform", "gaussian")
SCHEMES = ("A", "B")
VAR_RTOL_BIG = 0.02  # >= 10 standard errors at N = 2^21 samples
VAR_RTOL_MODEL = 0.06  # >= 4 standard errors at the pooled sample sizes of the small models below


# --- naive float64 reference ------------------------------------------------------------------
def expected_var(fan_in: int, distribution: str) -> float:
    """Variance of the default draw: U(±1/sqrt(fan_in)) -> 1/(3 fan_in); N(0, 1/fan_in) -> 1/fan_in."""
    return 1.0 / (3.0 * fan_in) if distribution == "kaiming_uniform" else 1.0 / fan_in


def moments(x: torch.Tensor) -> tuple[float, float, float]:
    """(mean, second moment, kurtosis) in float64 (the mean is zero by construction)."""
    x = x.detach().double().flatten()
    m2 = float((x * x).mean())
    return float(x.mean()), m2, float((x**4).mean()) / m2**2


def check_draw(x: torch.Tensor, var: float, distribution: str, rtol: float) -> None:
    """Zero mean, variance ``var`` within ``rtol``, and the right family (bound or kurtosis)."""
    n = x.numel()
    mean, m2, kurt = moments(x)
    assert m2 == pytest.approx(var, rel=rtol)
    assert abs(mean) < 6 * math.sqrt(var / n)
    if distribution == "kaiming_uniform":
        bound = math.sqrt(3.0 * var)
        amax = float(x.detach().abs().max())
        assert amax <= bound * (1 + 1e-6)
        if n >= 100_000:  # the top 1% of the range is then hit with certainty
            assert amax >= 0.99 * bound
        assert kurt == pytest.approx(1.8, abs=0.15)
    else:
        assert kurt == pytest.approx(3.0, abs=0.3 if n >= 100_000 else 0.6)


# --- raw tensors: large sizes, tight tolerances -------------------------------------------------
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_init_a_raw_tensor_variance(distribution: str) -> None:
    in_features, rank = 4096, 512  # 2^21 draws
    A = torch.full((rank, in_features), 7.0)
    B = torch.full((1024, rank), 7.0)
    init_pair_(A, B, "A", distribution=distribution, generator=torch.Generator().manual_seed(0))
    assert not B.any()  # exactly zero
    check_draw(A, expected_var(in_features, distribution), distribution, VAR_RTOL_BIG)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_init_b_raw_tensor_variance(distribution: str) -> None:
    out_features, rank = 65536, 32  # 2^21 draws; fan_in of B is the rank
    A = torch.full((rank, 64), 7.0)
    B = torch.full((out_features, rank), 7.0)
    init_pair_(A, B, "B", distribution=distribution, generator=torch.Generator().manual_seed(1))
    assert not A.any()
    check_draw(B, expected_var(rank, distribution), distribution, VAR_RTOL_BIG)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_explicit_std_overrides_default(scheme: str, distribution: str) -> None:
    A, B = torch.empty(256, 4096), torch.empty(8192, 256)  # 2^20 / 2^21 draws
    init_pair_(A, B, scheme, std_a=0.02, std_b=0.3, distribution=distribution, generator=2)
    drawn, zero = (A, B) if scheme == "A" else (B, A)
    assert not zero.any()
    check_draw(drawn, (0.02 if scheme == "A" else 0.3) ** 2, distribution, VAR_RTOL_BIG)


def test_fan_in_override_for_embeddings() -> None:
    A, B = torch.empty(16, 65536), torch.empty(32, 16)
    init_pair_(A, B, "A", fan_in=1, generator=3)
    check_draw(A, 1.0 / 3.0, "kaiming_uniform", VAR_RTOL_BIG)


def test_default_std_formula() -> None:
    for fan_in in (1, 3, 8, 4096):
        assert default_std(fan_in) == pytest.approx(1 / math.sqrt(3 * fan_in), rel=1e-15)
        assert default_std(fan_in, "gaussian") == pytest.approx(1 / math.sqrt(fan_in), rel=1e-15)
    with pytest.raises(LoradynError, match="fan_in must be >= 1"):
        default_std(0)


def test_uniform_bound_is_sqrt3_std() -> None:
    x = torch.empty(1 << 20)
    draw_(x, 0.5, "kaiming_uniform", torch.Generator().manual_seed(4))
    bound = math.sqrt(3) * 0.5
    assert float(x.abs().max()) <= bound and float(x.abs().max()) > 0.999 * bound


def test_draw_is_dtype_independent() -> None:
    ref = draw_(torch.empty(64, 64), 0.1, "gaussian", torch.Generator().manual_seed(5))
    for dtype in (torch.bfloat16, torch.float16):
        got = draw_(torch.empty(64, 64, dtype=dtype), 0.1, "gaussian", torch.Generator().manual_seed(5))
        assert torch.equal(got, ref.to(dtype))
    f64 = draw_(torch.empty(64, 64, dtype=torch.float64), 0.1, "gaussian", torch.Generator().manual_seed(5))
    assert f64.dtype == torch.float64 and not torch.equal(f64, ref.double())  # drawn natively in float64


def test_public_exports() -> None:
    assert loradyn.init_lora_ is init_lora_ and loradyn.InitScheme is InitScheme


def test_scheme_accepts_enum_and_lowercase() -> None:
    for scheme in (InitScheme.B, "b", "B"):
        A, B = torch.ones(4, 8), torch.ones(8, 4)
        init_pair_(A, B, scheme, generator=0)
        assert not A.any() and B.abs().min() > 0


# --- argument errors ------------------------------------------------------------------------
def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


def test_make_generator() -> None:
    assert make_generator(None) is None
    g = torch.Generator()
    assert make_generator(g) is g
    assert torch.equal(torch.rand(3, generator=make_generator(7)), torch.rand(3, generator=torch.Generator().manual_seed(7)))
    for bad in (1.5, "0", True):
        with pytest.raises(LoradynError, match="generator must be") as err:
            make_generator(bad)
        _one_line(err)


@pytest.mark.parametrize("std", [0.0, -1.0, float("nan"), float("inf")])
def test_draw_rejects_bad_std(std: float) -> None:
    with pytest.raises(LoradynError, match="std must be a finite number > 0") as err:
        draw_(torch.empty(3), std)
    _one_line(err)


# --- a tiny model with loradyn-independent PEFT-like layers: the guards ----------------------------
_HAS_HF = all(importlib.util.find_spec(m) is not None for m in ("peft", "transformers"))
needs_hf = pytest.mark.skipif(not _HAS_HF, reason="needs the hf extra (peft, transformers)")
if _HAS_HF:
    import peft
    import transformers


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model: nn.Module, snap: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert now.keys() == snap.keys()
    for k, v in snap.items():
        assert torch.equal(now[k], v), k


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(300, 24)
        self.q_proj = nn.Linear(24, 24)
        self.v_proj = nn.Linear(24, 16)
        self.out = nn.Linear(16, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        return self.out(torch.tanh(self.v_proj(torch.tanh(self.q_proj(h)))))


def _toy_peft(dtype: torch.dtype = torch.float32, **kw) -> nn.Module:
    torch.manual_seed(0)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["emb", "q_proj", "v_proj"], **kw)
    return peft.get_peft_model(_Toy().to(dtype), cfg).eval()


def _randomize_b(handle) -> None:
    with torch.no_grad():
        handle.lora_B.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(9))


@needs_hf
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scheme": "C"}, "unknown init scheme 'C'"),
        ({"scheme": "A", "distribution": "normal"}, "unknown distribution 'normal'"),
        ({"scheme": "A", "std_a": 0.0}, "std_a must be a finite number > 0"),
        ({"scheme": "B", "std_b": -1.0}, "std_b must be a finite number > 0"),
        ({"scheme": "B", "std_b": float("nan")}, "std_b must be a finite number > 0"),
        ({"scheme": "A", "std_a": "0.1"}, "std_a must be a finite number > 0"),
        ({"scheme": "A", "generator": "seed"}, "generator must be"),
    ],
)
def test_bad_arguments_are_one_line_and_touch_nothing(kwargs: dict, match: str) -> None:
    model = _toy_peft()
    snap = _snapshot(model)
    with pytest.raises(LoradynError, match=match) as err:
        init_lora_(model, **kwargs)
    _one_line(err)
    _assert_unchanged(model, snap)


@needs_hf
def test_no_lora_layers() -> None:
    with pytest.raises(LoradynError, match="no LoRA layers found") as err:
        init_lora_(_Toy(), "A")
    _one_line(err)


@needs_hf
@pytest.mark.parametrize("which", [0, 1, 2])
def test_refuses_nonzero_delta_and_touches_nothing(which: int) -> None:
    model = _toy_peft()
    handles = list(iter_lora_layers(model))
    assert [h.kind for h in handles] == ["embedding", "linear", "linear"]
    if handles[which].kind == "embedding":  # PEFT's own embedding init is A = 0, B random
        with torch.no_grad():
            handles[which].lora_A.normal_(generator=torch.Generator().manual_seed(8))
    else:
        _randomize_b(handles[which])
    snap = _snapshot(model)
    with pytest.raises(LoradynError, match=r"B @ A != 0 .*force=True") as err:
        init_lora_(model, "A", generator=0)
    assert handles[which].qualname in _one_line(err)
    _assert_unchanged(model, snap)  # checked before anything is drawn

    assert init_lora_(model, "A", generator=0, force=True) == 3
    assert all(h.delta_is_zero() for h in iter_lora_layers(model))


@needs_hf
def test_refuses_merged_nonzero_delta_even_with_force() -> None:
    model = _toy_peft()
    _randomize_b(list(iter_lora_layers(model))[1])
    model.merge_adapter()
    snap = _snapshot(model)
    with pytest.raises(LoradynError, match="merged into its base weight.*unmerge") as err:
        init_lora_(model, "B", force=True)
    _one_line(err)
    _assert_unchanged(model, snap)


@needs_hf
def test_same_seed_same_tensors_and_global_rng_untouched() -> None:
    m1, m2, m3, m4 = (_toy_peft() for _ in range(4))
    state = torch.get_rng_state()
    init_lora_(m1, "A", generator=123)
    init_lora_(m2, "A", generator=torch.Generator().manual_seed(123))
    init_lora_(m3, "A", generator=124)
    assert torch.equal(torch.get_rng_state(), state)  # a given generator never touches the global RNG
    s1, s2, s3 = (_snapshot(m) for m in (m1, m2, m3))
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert any(not torch.equal(s1[k], s3[k]) for k in s1 if "lora_" in k)
    torch.manual_seed(5)
    init_lora_(m3, "B", generator=None)
    torch.manual_seed(5)
    init_lora_(m4, "B")
    s3, s4 = _snapshot(m3), _snapshot(m4)
    assert all(torch.equal(s3[k], s4[k]) for k in s3)


# --- PEFT models built from transformers configs (no downloads) -----------------------------------
def _bert():
    cfg = transformers.BertConfig(
        vocab_size=128, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=512, max_position_embeddings=32,
    )
    torch.manual_seed(0)
    return transformers.BertModel(cfg, add_pooling_layer=False).eval()


def _llama():
    cfg = transformers.LlamaConfig(
        vocab_size=2048, hidden_size=128, intermediate_size=320, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=128, n_embd=128, n_layer=2, n_head=4, n_positions=32)
    torch.manual_seed(0)
    return transformers.GPT2Model(cfg).eval()


def _ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(0))


def _peft(base, **kw):
    return peft.get_peft_model(base, peft.LoraConfig(**kw)).eval()


def _true_in_features(handle) -> int:
    """Input dimension from the base weight itself (independent of discover.py)."""
    base = handle.base_layer
    if isinstance(base, nn.Embedding):
        return base.num_embeddings
    w = base.weight
    return int(w.shape[0] if handle.fan_in_fan_out else w.shape[1])


def _count_peft_pairs(model: nn.Module) -> int:
    from peft.tuners.lora import LoraLayer

    return sum(
        len(m.lora_A) + len(m.lora_embedding_A) for m in model.modules() if isinstance(m, LoraLayer)
    )


def _check_model_init(model, scheme: str, distribution: str, *, std: float | None = None) -> None:
    """Per layer: the zero factor is exactly zero; pooled over layers, the drawn one has the right law."""
    normalised = []
    for h in iter_lora_layers(model):
        drawn, zero = (h.lora_A, h.lora_B) if scheme == "A" else (h.lora_B, h.lora_A)
        assert not zero.any(), h.qualname
        if std is not None:
            var = std**2
        elif scheme == "A":
            var = expected_var(1 if h.kind == "embedding" else _true_in_features(h), distribution)
        else:
            var = expected_var(h.rank, distribution)
        normalised.append(drawn.detach().double().flatten() / math.sqrt(var))
    pooled = torch.cat(normalised)
    assert pooled.numel() >= 20_000
    check_draw(pooled, 1.0, distribution, VAR_RTOL_MODEL)


@needs_hf
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_bert_like(scheme: str, distribution: str) -> None:
    model = _peft(_bert(), r=16, lora_alpha=16, target_modules=["query", "value", "dense"])
    ids = _ids(128)
    with torch.no_grad(), model.disable_adapter():
        base = model(input_ids=ids).last_hidden_state
    n = init_lora_(model, scheme, distribution=distribution, generator=0)
    assert n == _count_peft_pairs(model) == 2 * 5  # query, value, attention.output.dense, intermediate.dense, output.dense
    _check_model_init(model, scheme, distribution)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).last_hidden_state, base)


@needs_hf
@pytest.mark.parametrize("scheme", SCHEMES)
def test_llama_like_two_adapters_and_embedding(scheme: str) -> None:
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens"]
    model = _peft(_llama(), r=8, lora_alpha=16, target_modules=targets)
    model.add_adapter("second", peft.LoraConfig(r=4, lora_alpha=4, target_modules=targets))
    ids = _ids(2048)
    with torch.no_grad(), model.disable_adapter():
        base = model(input_ids=ids).logits
    n = init_lora_(model, scheme, generator=0)
    handles = list(iter_lora_layers(model))
    assert n == len(handles) == _count_peft_pairs(model) == 2 * (2 * 7 + 1)
    assert {h.adapter for h in handles} == {"default", "second"}
    assert sum(h.kind == "embedding" for h in handles) == 2
    # PEFT's own init is the mirror image for embeddings (A = 0, B random), so a touched adapter
    # is visible in both schemes; check each adapter separately.
    for adapter in ("default", "second"):
        sub = [h for h in handles if h.adapter == adapter]
        for h in sub:
            zero = h.lora_B if scheme == "A" else h.lora_A
            assert not zero.any(), h.qualname
        if scheme == "A":
            emb = next(h for h in sub if h.kind == "embedding")
            check_draw(emb.lora_A, 1.0 / 3.0, "kaiming_uniform", VAR_RTOL_MODEL)  # fan_in = 1 (one-hot input)
    _check_model_init(model, scheme, "kaiming_uniform")
    for adapter in ("default", "second"):
        model.set_adapter(adapter)
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, base)


@needs_hf
@pytest.mark.parametrize("scheme", SCHEMES)
def test_explicit_std_on_model(scheme: str) -> None:
    model = _peft(_llama(), r=16, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])
    init_lora_(model, scheme, std_a=0.05, std_b=0.2, distribution="gaussian", generator=1)
    _check_model_init(model, scheme, "gaussian", std=0.05 if scheme == "A" else 0.2)


@needs_hf
@pytest.mark.parametrize("scheme", SCHEMES)
def test_gpt2_conv1d_fan_in_fan_out(scheme: str) -> None:
    model = _peft(
        _gpt2(), r=16, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc", "wte"], fan_in_fan_out=True
    )
    handles = list(iter_lora_layers(model))
    linear = [h for h in handles if h.kind == "linear"]
    assert all(h.fan_in_fan_out for h in linear)
    assert {_true_in_features(h) for h in linear} == {128, 512}  # mlp.c_proj reads the 4n hidden layer
    assert all(h.in_features == _true_in_features(h) for h in handles)
    ids = _ids(128)
    with torch.no_grad(), model.disable_adapter():
        base = model(input_ids=ids).last_hidden_state
    assert init_lora_(model, scheme, generator=0) == len(handles) == 2 * 4 + 1
    _check_model_init(model, scheme, "kaiming_uniform")
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).last_hidden_state, base)


# --- DoRA -----------------------------------------------------------------------------------------
def _naive_dora_norm(handle) -> torch.Tensor:
    """||W||, float64, per output (linear: rows of the (out, in) weight) or per embedding dimension."""
    w = handle.base_layer.weight.detach().double()
    if handle.kind == "embedding":
        return torch.linalg.norm(w, dim=0)  # (num_embeddings, dim) -> (dim,)
    if handle.fan_in_fan_out:
        w = w.T
    return torch.linalg.norm(w, dim=1)


@needs_hf
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("arch", ["llama", "gpt2", "toy"])
def test_dora_magnitude_consistent(arch: str, scheme: str) -> None:
    if arch == "llama":
        base = _llama().double()
        model = _peft(base, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], use_dora=True)
        vocab, run = 2048, lambda m, ids: m(input_ids=ids).logits
    elif arch == "gpt2":
        base = _gpt2().double()
        model = _peft(base, r=8, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, use_dora=True)
        vocab, run = 128, lambda m, ids: m(input_ids=ids).last_hidden_state
    else:  # includes an embedding DoRA adapter (magnitude per embedding dimension)
        model = _toy_peft(torch.float64, use_dora=True)
        vocab, run = 300, lambda m, ids: m(ids)
    handles = list(iter_lora_layers(model))
    assert all(h.magnitude is not None for h in handles)
    fresh = {h.qualname: h.magnitude.detach().clone() for h in handles}  # PEFT's own norm at B@A = 0
    with torch.no_grad():
        for h in handles:  # pretend the magnitude was trained: init must reset it
            h.magnitude.mul_(1.5)
    ids = _ids(vocab)
    with torch.no_grad(), model.disable_adapter():
        expected = run(model, ids)
    init_lora_(model, scheme, generator=0)
    for h in handles:
        torch.testing.assert_close(h.magnitude.detach(), fresh[h.qualname], rtol=1e-12, atol=0)
        torch.testing.assert_close(h.magnitude.detach(), _naive_dora_norm(h), rtol=1e-12, atol=0)
        assert h.delta_is_zero()
    with torch.no_grad():
        torch.testing.assert_close(run(model, ids), expected, rtol=1e-10, atol=1e-12)


# --- loradyn's own layers (loradyn.layers) -------------------------------------------------------
# Skipped only when the module does not exist; an import error inside it fails the tests.
_HAS_LAYERS = importlib.util.find_spec("loradyn.layers") is not None
needs_layers = pytest.mark.skipif(not _HAS_LAYERS, reason="loradyn.layers is missing")


class _OwnModel(nn.Module):
    """Embedding -> Linear -> Conv1D-style Linear, each wrapped in a loradyn LoRA layer."""

    def __init__(self, scheme: str = "A", conv1d: bool = False) -> None:
        super().__init__()
        from loradyn.layers import LoRAEmbedding, LoRALinear

        torch.manual_seed(0)
        self.emb = LoRAEmbedding(nn.Embedding(4096, 64), rank=8, alpha=8, init=scheme, generator=1)
        self.up = LoRALinear(nn.Linear(64, 1024), rank=16, alpha=16, init=scheme, generator=2)
        if conv1d:
            from transformers.pytorch_utils import Conv1D

            down = Conv1D(64, 1024)  # nf = out, nx = in; weight (in, out)
            nn.init.normal_(down.weight, std=0.02)
        else:
            down = nn.Linear(1024, 64)
        self.down = LoRALinear(down, rank=32, alpha=16, init=scheme, generator=3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.down(torch.tanh(self.up(self.emb(ids))))

    def base_forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.down.base_layer(torch.tanh(self.up.base_layer(self.emb.base_layer(ids))))


def _own(scheme: str = "A", conv1d: bool = False) -> _OwnModel:
    if conv1d and importlib.util.find_spec("transformers") is None:
        pytest.skip("needs transformers for Conv1D")
    return _OwnModel(scheme, conv1d).eval()


@needs_layers
@pytest.mark.parametrize("conv1d", [False, True], ids=["linear", "conv1d"])
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_own_layers(scheme: str, distribution: str, conv1d: bool) -> None:
    model = _own("B" if scheme == "A" else "A", conv1d)  # start from the other scheme
    handles = list(iter_lora_layers(model))
    assert [(h.source, h.kind) for h in handles] == [("loradyn", "embedding"), ("loradyn", "linear"), ("loradyn", "linear")]
    assert handles[2].fan_in_fan_out is conv1d and handles[2].in_features == 1024
    ids = _ids(4096)
    assert init_lora_(model, scheme, distribution=distribution, generator=0) == 3
    normalised = []
    for h in handles:
        drawn, zero = (h.lora_A, h.lora_B) if scheme == "A" else (h.lora_B, h.lora_A)
        assert not zero.any(), h.qualname
        if scheme == "A":
            var = expected_var(1 if h.kind == "embedding" else h.in_features, distribution)
        else:
            var = expected_var(h.rank, distribution)
        assert drawn.numel() >= 512
        # per layer, loose (>= 4 standard errors at 512 draws): catches a wrong fan-in (factor >= 2)
        assert moments(drawn)[1] == pytest.approx(var, rel=0.25), h.qualname
        normalised.append(drawn.detach().double().flatten() / math.sqrt(var))
    check_draw(torch.cat(normalised), 1.0, distribution, VAR_RTOL_MODEL)  # pooled: tight
    with torch.no_grad():
        assert torch.equal(model(ids), model.base_forward(ids))


@needs_layers
@pytest.mark.parametrize("scheme", SCHEMES)
def test_own_layer_constructor_init_matches_init_lora(scheme: str) -> None:
    from loradyn.layers import LoRALinear

    torch.manual_seed(0)
    built = LoRALinear(nn.Linear(32, 48), rank=4, alpha=4, init=scheme, generator=7)
    again = copy.deepcopy(built)
    init_lora_(nn.Sequential(again), scheme, generator=7)
    assert torch.equal(built.lora_A.weight, again.lora_A.weight)
    assert torch.equal(built.lora_B.weight, again.lora_B.weight)


@needs_layers
def test_own_layers_refuse_nonzero_delta_and_merged() -> None:
    model = _own("A")
    with torch.no_grad():
        model.up.lora_B.weight.normal_(generator=torch.Generator().manual_seed(0))
    snap = _snapshot(model)
    with pytest.raises(LoradynError, match=r"'up' has B @ A != 0") as err:
        init_lora_(model, "B")
    _one_line(err)
    _assert_unchanged(model, snap)
    model.up.merge()
    snap = _snapshot(model)
    with pytest.raises(LoradynError, match=r"'up' is merged into its base weight") as err:
        init_lora_(model, "B", force=True)
    _one_line(err)
    _assert_unchanged(model, snap)
    model.up.unmerge()
    assert init_lora_(model, "B", force=True, generator=0) == 3
    assert all(h.delta_is_zero() for h in iter_lora_layers(model))
