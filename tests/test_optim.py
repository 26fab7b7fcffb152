"""LoRA+ groups: parameter-by-parameter parity with peft's create_loraplus_optimizer, honest weight
decay, bitwise equality with a plain optimizer at lr_ratio=1, describe_param_groups, bad input."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from loradyn.errors import LoradynError
from loradyn.optim import create_loraplus_optimizer, describe_param_groups, loraplus_param_groups

LR = 1e-3
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


# --- tiny models ---------------------------------------------------------------------------------


def _bert(**lora):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    base = transformers.BertForSequenceClassification(cfg)
    kw = dict(
        task_type="SEQ_CLS",
        r=4,
        target_modules=["query", "value"],
        bias="lora_only",
        modules_to_save=["classifier", "LayerNorm"],
    )
    kw.update(lora)
    return peft.get_peft_model(base, peft.LoraConfig(**kw))


def _llama(**lora):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    base = transformers.LlamaForCausalLM(cfg)
    # modules_to_save "norm" matches every RMSNorm: 1-D, and decays (it is not an nn.LayerNorm)
    kw = dict(
        r=4,
        target_modules="all-linear",
        modules_to_save=["norm"],
    )
    kw.update(lora)
    return peft.get_peft_model(base, peft.LoraConfig(**kw))


def _gpt2():
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=50,
        n_positions=32,
        n_embd=16,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    base = transformers.GPT2LMHeadModel(cfg)
    cfg = peft.LoraConfig(
        r=4,
        target_modules=["c_attn", "wte"],
        fan_in_fan_out=True,
        bias="lora_only",
        modules_to_save=["ln_f"],
    )
    return peft.get_peft_model(base, cfg)


def _unfreeze_embedding_base(model):
    model.get_submodule("base_model.model.model.embed_tokens.base_layer").weight.requires_grad_(
        True
    )
    return model


MODELS = {
    # model -> groups it must populate, so each parity case exercises what it claims to
    "bert_cls_head": (_bert, {"A", "B", "B_no_decay"}),
    "bert_all_bias_emb": (
        lambda: _bert(bias="all", target_modules=["query", "value", "word_embeddings"]),
        {"A", "embedding", "B", "B_no_decay"},
    ),
    "llama": (_llama, {"A", "B"}),
    "llama_embedding": (
        lambda: _llama(target_modules=["q_proj", "v_proj", "embed_tokens"]),
        {"A", "embedding", "B"},
    ),
    "llama_dora": (lambda: _llama(use_dora=True, modules_to_save=None), {"A", "B"}),
    # PEFT puts anything trainable two levels below a LoRA Embedding layer in the embedding group
    "llama_embedding_base_unfrozen": (
        lambda: _unfreeze_embedding_base(_llama(target_modules=["embed_tokens"])),
        {"embedding", "B"},
    ),
    "gpt2_conv1d_emb": (_gpt2, {"A", "embedding", "B", "B_no_decay"}),
}


def _by_param(groups) -> dict[int, tuple[float, float]]:
    out = {}
    for g in groups:
        for p in g["params"]:
            assert id(p) not in out, "a parameter is in two groups"
            out[id(p)] = (g["lr"], g["weight_decay"])
    return out


# --- parity with PEFT ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(MODELS))
@pytest.mark.parametrize(("weight_decay", "lr_embedding"), [(0.0, None), (0.1, 3e-4)])
def test_groups_equal_peft_param_by_param(case, weight_decay, lr_embedding):
    peft_optim = pytest.importorskip("peft.optimizers")
    build, expected_groups = MODELS[case]
    model = build()
    kw = {"loraplus_weight_decay": weight_decay}
    if lr_embedding is not None:
        kw["loraplus_lr_embedding"] = lr_embedding
    theirs = peft_optim.create_loraplus_optimizer(
        model, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=16.0, **kw
    )
    groups = loraplus_param_groups(
        model, lr=LR, lr_ratio=16.0, weight_decay=weight_decay, lr_embedding=lr_embedding
    )
    ours = _by_param(groups)
    assert ours == _by_param(theirs.param_groups)
    assert {g["name"] for g in groups} == expected_groups
    # the embedding group holds both embedding tensors (the fixed semantics of huggingface/peft#3503)
    emb = [n.split(".")[-2] for g in groups if g["name"] == "embedding" for n in g["param_names"]]
    assert emb.count("lora_embedding_A") == emb.count("lora_embedding_B")


def test_every_trainable_param_in_exactly_one_group_and_frozen_excluded():
    model = _bert(bias="all", target_modules=["query", "value", "word_embeddings"])
    groups = loraplus_param_groups(model, lr=LR)
    seen = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert len(seen) == len(set(seen))
    assert set(seen) == set(trainable)
    assert any(not p.requires_grad for p in model.parameters())
    for g in groups:  # names and tensors line up
        named = dict(model.named_parameters())
        assert [id(named[n]) for n in g["param_names"]] == [id(p) for p in g["params"]]


@pytest.mark.parametrize("lr_ratio", [1.0, 4.0, 16.0, 0.5])
def test_lr_b_is_ratio_times_lr_a(lr_ratio):
    groups = {g["name"]: g for g in loraplus_param_groups(_bert(), lr=LR, lr_ratio=lr_ratio)}
    assert groups["A"]["lr"] == LR
    assert groups["B"]["lr"] == groups["B_no_decay"]["lr"] == LR * lr_ratio
    assert all(
        "lora_B" in n or "magnitude" in n or "bias" in n or "LayerNorm" in n
        for n in groups["B"]["param_names"] + groups["B_no_decay"]["param_names"]
    )
    assert all("lora_A" in n or "classifier" in n for n in groups["A"]["param_names"])


def test_decay_rule_equals_transformers_get_parameter_names():
    transformers = pytest.importorskip("transformers")
    from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS
    from transformers.trainer_pt_utils import get_parameter_names

    from loradyn.optim import _decays

    verdicts = []
    for build, _ in MODELS.values():
        model = build()
        decay = {n for n in get_parameter_names(model, ALL_LAYERNORM_LAYERS) if "bias" not in n}
        names = [n for n, _ in model.named_parameters()]
        assert [_decays(model, n) for n in names] == [n in decay for n in names]
        verdicts += [n in decay for n in names]
    assert any(verdicts) and not all(verdicts)
    # the rule _decays hard-codes
    assert transformers.pytorch_utils.ALL_LAYERNORM_LAYERS == [nn.LayerNorm]


# --- weight decay is honoured --------------------------------------------------------------------


def test_weight_decay_applies_where_peft_silently_drops_it():
    """Zero gradients: one AdamW step only decays, p <- p * (1 - lr_g * wd) in decay groups."""
    peft_optim = pytest.importorskip("peft.optimizers")
    wd = 0.1
    ours_model, peft_model = _bert(), _bert()
    ours = create_loraplus_optimizer(ours_model, lr=LR, lr_ratio=16.0, weight_decay=wd)
    # the usual call that axolotl#4010 made: weight_decay= reaches AdamW, but every group overrides it with 0
    theirs = peft_optim.create_loraplus_optimizer(
        peft_model, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=16.0, weight_decay=wd
    )
    for opt in (ours, theirs):
        for g in opt.param_groups:
            for p in g["params"]:
                p.grad = torch.zeros_like(p)
    before = {g["name"]: [p.detach().clone() for p in g["params"]] for g in ours.param_groups}
    peft_before = [p.detach().clone() for p in peft_model.parameters() if p.requires_grad]
    ours.step()
    theirs.step()
    for g in ours.param_groups:
        expected_wd = 0.0 if g["name"] == "B_no_decay" else wd
        assert g["weight_decay"] == expected_wd
        for p, p0 in zip(g["params"], before[g["name"]], strict=True):
            torch.testing.assert_close(p.detach(), p0 * (1 - g["lr"] * expected_wd), rtol=0, atol=0)
            if expected_wd:
                assert not torch.equal(p.detach(), p0) or not p0.any()
    peft_after = [p.detach() for p in peft_model.parameters() if p.requires_grad]
    assert all(torch.equal(a, b) for a, b in zip(peft_after, peft_before, strict=True))


# --- bitwise equality with a plain optimizer at lr_ratio=1 ---------------------------------------


def _train(model, opt, steps=5):
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        ids = torch.randint(0, 50, (4, 7), generator=gen)
        labels = torch.randint(0, 3, (4,), generator=gen)
        loss = nn.functional.cross_entropy(model(input_ids=ids).logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


IMPLS = {
    "single_tensor": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_ratio_one_is_bitwise_plain_adamw(impl, weight_decay):
    """4 groups at one lr train exactly like AdamW over the same tensors (decay split as transformers)."""

    def build():
        return _bert(bias="all", target_modules=["query", "value", "word_embeddings"]).eval()

    m1, m2 = build(), build()
    opt1 = create_loraplus_optimizer(
        m1,
        torch.optim.AdamW,
        lr=LR,
        lr_ratio=1.0,
        lr_embedding=LR,
        weight_decay=weight_decay,
        **IMPLS[impl],
    )
    assert len(opt1.param_groups) == 4
    train = [(n, p) for n, p in m2.named_parameters() if p.requires_grad]
    no_decay = {g["name"]: set(g["param_names"]) for g in opt1.param_groups}["B_no_decay"]
    if weight_decay:
        plain_groups = [
            {"params": [p for n, p in train if n not in no_decay], "weight_decay": weight_decay},
            {"params": [p for n, p in train if n in no_decay], "weight_decay": 0.0},
        ]
    else:
        plain_groups = [p for _, p in train]  # one group: the plain call
    opt2 = torch.optim.AdamW(plain_groups, lr=LR, weight_decay=weight_decay, **IMPLS[impl])
    l1, l2 = _train(m1, opt1), _train(m2, opt2)
    assert l1 == l2
    changed = 0
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters(), strict=True):
        assert torch.equal(p1, p2), n
        changed += p1.requires_grad
    assert changed == len(train)
    # and the run did move every trainable tensor (otherwise equality would be vacuous)
    fresh = dict(build().named_parameters())
    assert all(not torch.equal(p, fresh[n]) for n, p in train)


def test_ratio_one_bitwise_on_plain_model():
    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 3))

    m1, m2 = build(), build()
    opt1 = create_loraplus_optimizer(m1, lr=LR, lr_ratio=1.0)
    opt2 = torch.optim.AdamW(m2.parameters(), lr=LR, weight_decay=0.0)
    assert [g["name"] for g in opt1.param_groups] == ["A", "B_no_decay"]
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(0))
    for _ in range(5):
        for m, opt in ((m1, opt1), (m2, opt2)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters(), strict=True))


# --- optimizers, description, bad input ----------------------------------------------------------


@pytest.mark.parametrize("optimizer_cls", [torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW])
def test_works_with_sgd_adam_adamw(optimizer_cls):
    model = _bert()
    opt = create_loraplus_optimizer(model, optimizer_cls, lr=LR, lr_ratio=8.0)
    assert isinstance(opt, optimizer_cls)
    ids = torch.randint(0, 50, (4, 7), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids).logits.square().mean().backward()
    before = [[p.detach().clone() for p in g["params"]] for g in opt.param_groups]
    grads = [[p.grad.clone() for p in g["params"]] for g in opt.param_groups]
    opt.step()
    if optimizer_cls is torch.optim.SGD:  # plain SGD: the step is exactly lr_g * grad, per group
        for g, p0s, gs in zip(opt.param_groups, before, grads, strict=True):
            for p, p0, gr in zip(g["params"], p0s, gs, strict=True):
                torch.testing.assert_close(p.detach(), p0 - g["lr"] * gr, rtol=1e-6, atol=1e-9)
        lrs = {g["name"]: g["lr"] for g in opt.param_groups}
        assert lrs["B"] == 8.0 * lrs["A"]
    else:
        moved = [
            not torch.equal(p, p0)
            for g, p0s, gs in zip(opt.param_groups, before, grads, strict=True)
            for p, p0, gr in zip(g["params"], p0s, gs, strict=True)
            if gr.any()
        ]
        assert moved and all(moved)


def test_state_dict_round_trip_keeps_names():
    model = _bert()
    opt = create_loraplus_optimizer(model, lr=LR)
    state = opt.state_dict()
    assert [g["name"] for g in state["param_groups"]] == [g["name"] for g in opt.param_groups]
    opt2 = create_loraplus_optimizer(model, lr=LR)
    opt2.load_state_dict(state)
    assert opt2.param_groups[0]["param_names"] == opt.param_groups[0]["param_names"]


def test_describe_param_groups():
    model = _bert(bias="all", target_modules=["query", "value", "word_embeddings"])
    opt = create_loraplus_optimizer(
        model, lr=LR, lr_ratio=16.0, weight_decay=0.01, lr_embedding=1e-5
    )
    df = describe_param_groups(opt)
    assert list(df.columns) == [
        "group",
        "lr",
        "weight_decay",
        "n_params",
        "n_elements",
        "example_names",
    ]
    assert list(df["group"]) == ["A", "embedding", "B", "B_no_decay"]
    assert list(df["lr"]) == [LR, 1e-5, 16 * LR, 16 * LR]
    assert list(df["weight_decay"]) == [0.01, 0.01, 0.01, 0.0]
    assert df["n_elements"].sum() == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert df["n_params"].sum() == sum(1 for p in model.parameters() if p.requires_grad)
    assert "lora_embedding_A" in df.set_index("group").loc["embedding", "example_names"]
    # names from the model for plain groups without names; same table otherwise
    plain = [
        {"params": g["params"], "lr": g["lr"], "weight_decay": g["weight_decay"]}
        for g in opt.param_groups
    ]
    by_model = describe_param_groups(plain, model)
    assert list(by_model["group"]) == [0, 1, 2, 3]
    assert list(by_model["example_names"]) == list(df["example_names"])
    assert "more" in df["example_names"].iloc[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 0.0}, "lr must be"),
        ({"lr": -1e-3}, "lr must be"),
        ({"lr": float("nan")}, "lr must be"),
        ({"lr": float("inf")}, "lr must be"),
        ({"lr": "1e-3"}, "lr must be"),
        ({"lr": True}, "lr must be"),
        ({"lr": LR, "lr_ratio": 0}, "lr_ratio must be"),
        ({"lr": LR, "lr_ratio": float("nan")}, "lr_ratio must be"),
        ({"lr": LR, "weight_decay": -0.1}, "weight_decay must be"),
        ({"lr": LR, "lr_embedding": float("inf")}, "lr_embedding must be"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(LoradynError, match=match) as err:
        loraplus_param_groups(nn.Linear(2, 2), **kwargs)
    assert "\n" not in str(err.value)


def test_no_trainable_params():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(LoradynError, match="no trainable parameter"):
        loraplus_param_groups(model, lr=LR)


def test_peft_keyword_names_point_to_ours():
    with pytest.raises(LoradynError, match="lr_ratio="):
        create_loraplus_optimizer(nn.Linear(2, 2), lr=LR, loraplus_lr_ratio=16)


NAMED = [("adamw_torch", torch.optim.AdamW, None), ("adamw_torch_fused", torch.optim.AdamW, True),
         ("adamw", torch.optim.AdamW, None), ("AdamW", torch.optim.AdamW, None), ("adam", torch.optim.Adam, None),
         ("sgd", torch.optim.SGD, None), ("adagrad", torch.optim.Adagrad, None),
         ("rmsprop", torch.optim.RMSprop, None), ("nadam", torch.optim.NAdam, None)]


@pytest.mark.parametrize(("name", "cls", "fused"), NAMED, ids=[n for n, _, _ in NAMED])
def test_optimizer_names_from_training_arguments(name, cls, fused):
    """Before: a string optimizer_cls was called like a class (TypeError)."""
    model = nn.Linear(4, 3)
    opt = create_loraplus_optimizer(model, name, lr=LR, lr_ratio=4.0)
    assert type(opt) is cls and [g["name"] for g in opt.param_groups] == ["A", "B_no_decay"]  # weight, bias
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([LR, 4 * LR])
    assert opt.defaults.get("fused") is fused
    model(torch.ones(2, 4)).sum().backward()
    opt.step()  # the fused AdamW kernel runs on CPU too
    same = create_loraplus_optimizer(nn.Linear(4, 3), cls, lr=LR, lr_ratio=4.0, **({"fused": True} if fused else {}))
    assert type(same) is cls and same.defaults.get("fused") is fused


def test_unknown_optimizer_name_lists_the_accepted_names():
    for bad in ("adamw_8bit", "lion", 3):
        with pytest.raises(LoradynError) as err:
            create_loraplus_optimizer(nn.Linear(2, 2), bad, lr=LR)
        msg = str(err.value)
        assert "\n" not in msg and "adamw_torch, adamw_torch_fused, adamw, adam, sgd, adagrad, rmsprop" in msg


def test_missing_lr_is_one_line():
    with pytest.raises(LoradynError, match="needs lr="):
        create_loraplus_optimizer(nn.Linear(2, 2), "adamw")


def test_weight_decay_with_optimizer_without_decay_is_refused():
    with pytest.raises(LoradynError, match="no weight decay"):
        create_loraplus_optimizer(nn.Linear(2, 2), torch.optim.Rprop, lr=LR, weight_decay=0.1)
    assert create_loraplus_optimizer(nn.Linear(2, 2), torch.optim.Rprop, lr=LR) is not None


# --- loradyn's own layers ------------------------------------------------------------------------


class _StubLoRALinear(nn.Module):
    """Just enough of the own-layer contract for discover: A/B found by identity, not by name."""

    _loradyn_layer = True
    kind = "linear"

    def __init__(self, base: nn.Linear, rank: int = 2):
        super().__init__()
        self.base_layer = base.requires_grad_(False)
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        self.scaling, self.merged, self.disabled = 1.0, False, False


class _StubLoRAEmbedding(nn.Module):
    _loradyn_layer = True
    kind = "embedding"

    def __init__(self, base: nn.Embedding, rank: int = 2):
        super().__init__()
        self.base_layer = base.requires_grad_(False)
        self.lora_embedding_A = nn.Parameter(torch.zeros(rank, base.num_embeddings))
        self.lora_embedding_B = nn.Parameter(torch.randn(base.embedding_dim, rank))
        self.scaling, self.merged, self.disabled = 1.0, False, False


def _check_own_model(model, emb, lin, head):
    groups = {
        g["name"]: g for g in loraplus_param_groups(model, lr=LR, lr_ratio=4.0, lr_embedding=2e-4)
    }
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert ids["embedding"] == {id(emb.lora_embedding_A), id(emb.lora_embedding_B)}
    assert ids["A"] == {id(lin.lora_A.weight), id(head.weight)}
    assert ids["B"] == {id(lin.lora_B.weight)}
    assert ids["B_no_decay"] == {id(head.bias), id(model.norm.weight), id(model.norm.bias)}
    assert groups["embedding"]["lr"] == 2e-4 and groups["B"]["lr"] == 4 * LR


def test_hand_rolled_lora_b_parameter_is_boosted_by_name():
    """loralib-style layers (lora_A/lora_B as bare Parameters) are not discovered; PEFT's name rule still applies."""

    class LoralibLinear(nn.Linear):
        def __init__(self):
            super().__init__(6, 4)
            self.weight.requires_grad_(False)
            self.lora_A = nn.Parameter(torch.randn(2, 6))
            self.lora_B = nn.Parameter(torch.zeros(4, 2))

    model = nn.Sequential(LoralibLinear())
    groups = {g["name"]: g["param_names"] for g in loraplus_param_groups(model, lr=LR)}
    assert groups == {"A": ["0.lora_A"], "B_no_decay": ["0.bias"], "B": ["0.lora_B"]}


def test_stub_own_layers_grouped_by_identity():
    model = nn.Module()
    model.emb = _StubLoRAEmbedding(nn.Embedding(10, 6))
    model.lin = _StubLoRALinear(nn.Linear(6, 6))
    model.norm = nn.LayerNorm(6)
    model.head = nn.Linear(6, 3)
    _check_own_model(model, model.emb, model.lin, model.head)


@pytest.mark.skipif(
    importlib.util.find_spec("loradyn.layers") is None, reason="loradyn.layers not written yet"
)
def test_real_own_layers_grouped_by_identity():
    layers = pytest.importorskip("loradyn.layers")
    model = nn.Module()
    try:
        model.emb = layers.LoRAEmbedding(nn.Embedding(10, 6), rank=2, alpha=2.0)
        model.lin = layers.LoRALinear(nn.Linear(6, 6), rank=2, alpha=2.0)
    except TypeError as exc:  # constructor signature differs from the guess: fail loudly, not skip
        pytest.fail(f"update this test to the LoRALinear/LoRAEmbedding constructor: {exc}")
    model.norm = nn.LayerNorm(6)
    model.head = nn.Linear(6, 3)
    _check_own_model(model, model.emb, model.lin, model.head)
