"""FeatureNormProbe against a naive float64 reference, plus its lifecycle guarantees."""

from __future__ import annotations

import gc
import math
import weakref
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from loradyn import FeatureNormProbe, LoradynError
from loradyn.discover import iter_lora_layers

ALL_STATS = ("rms", "l2", "l1", "max")
# float64 throughout: the probe and the reference differ only in summation order
RTOL, ATOL = 1e-12, 1e-12


# --- naive reference ---------------------------------------------------------------------------
def _naive_stat(v: torch.Tensor, stat: str) -> float:
    """Norm of one 1-D float64 vector, written out."""
    if stat == "l2":
        return math.sqrt(sum(float(c) ** 2 for c in v))
    if stat == "rms":
        return math.sqrt(sum(float(c) ** 2 for c in v)) / math.sqrt(v.numel())
    if stat == "l1":
        return sum(abs(float(c)) for c in v)
    return max(abs(float(c)) for c in v)


class _InputRecorder:
    """Captures each LoRA layer's input on every forward call, for the reference computation."""

    def __init__(self, model: nn.Module) -> None:
        self.handles = list(iter_lora_layers(model))
        self.inputs: dict[str, list[torch.Tensor]] = {h.qualname: [] for h in self.handles}
        modules = {id(h.module): h.module for h in self.handles}
        self._hooks = [m.register_forward_pre_hook(self._pre(m)) for m in modules.values()]

    def _pre(self, module):
        def hook(mod, args):
            for h in self.handles:
                if h.module is mod and h.is_active():
                    self.inputs[h.qualname].append(args[0].detach().clone())

        return hook

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()

    def expected(self, stats=ALL_STATS) -> dict[tuple[str, str, str], float]:
        """(module, feature, stat) -> data-averaged norm, from the captured inputs."""
        out = {}
        for h in self.handles:
            xs = self.inputs[h.qualname]
            if not xs:
                continue
            A, B = h.lora_A.detach().double(), h.lora_B.detach().double()
            vectors = {"z_a": [], "z_b": [], "lora_out": []}
            for x in xs:
                if h.kind == "embedding":
                    z_a = A.T[x.reshape(-1)]
                else:
                    z_a = x.double().reshape(-1, x.shape[-1]) @ A.T
                z_b = z_a @ B.T
                for za, zb in zip(z_a, z_b):
                    vectors["z_a"].append(za)
                    vectors["z_b"].append(zb)
                    vectors["lora_out"].append(h.scaling * zb)
            for feature, vs in vectors.items():
                for stat in stats:
                    total = sum(_naive_stat(v, stat) for v in vs)
                    out[(h.qualname, feature, stat)] = total / len(vs)
        return out


def _as_dict(frame: pd.DataFrame, step: int) -> dict[tuple[str, str, str], float]:
    rows = frame[frame["step"] == step]
    return {(r.module, r.feature, r.stat): r.value for r in rows.itertuples()}


def _assert_matches(frame: pd.DataFrame, step: int, expected: dict) -> None:
    got = _as_dict(frame, step)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert math.isclose(got[key], value, rel_tol=RTOL, abs_tol=ATOL), (key, got[key], value)


def _randomize_lora_(model: nn.Module, seed: int) -> None:
    """Random A and B (a zero-product init would make z_b trivially 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for h in iter_lora_layers(model):
            for p in (h.lora_A, h.lora_B):
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * 0.5)


# --- models ------------------------------------------------------------------------------------
VOCAB = 40


def _tiny_bert_peft(two_adapters: bool = True, dropout: float = 0.0):
    pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from peft import LoraConfig, get_peft_model

    cfg = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    model = get_peft_model(
        transformers.BertModel(cfg),
        LoraConfig(
            r=4,
            lora_alpha=8,
            lora_dropout=dropout,
            target_modules=["query", "value", "word_embeddings"],
        ),
    )
    if two_adapters:
        model.add_adapter(
            "other",
            LoraConfig(r=2, lora_alpha=3, target_modules=["query", "dense", "word_embeddings"]),
        )
        model.base_model.set_adapter(["default", "other"])
    model.double()
    _randomize_lora_(model, seed=1)
    return model


def _ids(batch: int, seq: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _bert_loss(model, ids):
    return model(input_ids=ids).last_hidden_state.pow(2).mean()


class _TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 12)
        self.fc1 = nn.Linear(12, 16)
        self.fc2 = nn.Linear(16, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.emb(ids))))


def _tiny_own(embed_scale: float | None = None) -> nn.Module:
    """A small model with loradyn's own layers on every module (float64)."""
    from loradyn.layers import LoRAEmbedding, LoRALinear

    torch.manual_seed(0)
    model = _TinyNet().double()
    if embed_scale is not None:
        model.emb.embed_scale = embed_scale
    model.emb = LoRAEmbedding(model.emb, rank=3, alpha=6, generator=0)
    model.fc1 = LoRALinear(model.fc1, rank=4, alpha=4, generator=1)
    model.fc2 = LoRALinear(model.fc2, rank=2, alpha=8, rslora=True, generator=2)
    _randomize_lora_(model, seed=3)
    return model


# --- values ------------------------------------------------------------------------------------
def test_peft_bert_two_adapters_and_embedding_match_naive_float64():
    model = _tiny_bert_peft()
    ref = _InputRecorder(model)
    with FeatureNormProbe(model, stats=ALL_STATS) as probe:
        _bert_loss(model, _ids(2, 5, seed=0)).backward()
    ref.remove()
    frame = probe.to_frame()
    assert list(frame.columns) == ["step", "module", "feature", "stat", "value"]
    modules = set(frame["module"])
    assert any("word_embeddings[other]" in m for m in modules)
    assert any("output.dense[other]" in m for m in modules)
    assert len(modules) == len(ref.handles)
    _assert_matches(frame, 0, ref.expected())


def test_gradient_accumulation_averages_over_all_data_points_of_the_step():
    model = _tiny_bert_peft()
    with FeatureNormProbe(model, stats=("rms", "l2")) as probe:
        ref = _InputRecorder(model)
        # two micro-batches of different sizes: a per-call mean of means would differ
        _bert_loss(model, _ids(1, 3, seed=1)).backward()
        _bert_loss(model, _ids(3, 6, seed=2)).backward()
        ref.remove()
        probe.step()
        ref2 = _InputRecorder(model)
        _bert_loss(model, _ids(2, 4, seed=3)).backward()
        ref2.remove()
    frame = probe.to_frame()
    assert sorted(set(frame["step"])) == [0, 1]
    _assert_matches(frame, 0, ref.expected(("rms", "l2")))
    _assert_matches(frame, 1, ref2.expected(("rms", "l2")))


def test_every_records_only_multiples_and_set_step_jumps():
    model = _tiny_bert_peft(two_adapters=False)
    calls = []
    with FeatureNormProbe(model, every=3, stats="rms") as probe:
        for _ in range(7):
            _bert_loss(model, _ids(1, 4, seed=len(calls))).backward()
            calls.append(probe.recording)
            probe.step()
        probe.set_step(30)
        _bert_loss(model, _ids(1, 4, seed=9)).backward()
    assert calls == [True, False, False, True, False, False, True]
    frame = probe.to_frame()
    assert sorted(set(frame["step"])) == [0, 3, 6, 30]
    assert set(frame["stat"]) == {"rms"}
    assert set(frame["feature"]) == {"z_a", "z_b", "lora_out"}


def test_records_include_step_in_progress_without_duplicating_it():
    model = _tiny_bert_peft(two_adapters=False)
    with FeatureNormProbe(model) as probe:
        _bert_loss(model, _ids(1, 4, seed=0))
        n = len(probe.records)
        assert n > 0 and len(probe.to_frame()) == n
        _bert_loss(model, _ids(1, 4, seed=1))
        assert len(probe.records) == n  # same step: updated, not appended
    assert len(probe.to_frame()) == n
    assert set(probe.records[0]) == {"step", "module", "feature", "stat", "value"}


def test_peft_llama_dora_values_and_lora_out_is_scaled_z_b():
    pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from peft import LoraConfig, get_peft_model

    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    model = get_peft_model(
        transformers.LlamaForCausalLM(cfg),
        LoraConfig(
            r=4,
            lora_alpha=16,
            use_rslora=True,
            use_dora=True,
            target_modules=["q_proj", "v_proj", "down_proj"],
        ),
    )
    model.double()
    _randomize_lora_(model, seed=2)
    ref = _InputRecorder(model)
    with FeatureNormProbe(model, stats=ALL_STATS) as probe:
        ids = _ids(2, 5, seed=4)
        model(input_ids=ids, labels=ids).loss.backward()
    ref.remove()
    frame = probe.to_frame()
    _assert_matches(frame, 0, ref.expected())
    scal = {h.qualname: h.scaling for h in iter_lora_layers(model)}
    assert all(s == 8.0 for s in scal.values())  # rsLoRA: 16 / sqrt(4)
    wide = frame.pivot_table(index=["module", "stat"], columns="feature", values="value")
    torch.testing.assert_close(
        torch.tensor(wide["lora_out"].to_numpy()),
        8.0 * torch.tensor(wide["z_b"].to_numpy()),
        rtol=1e-14,
        atol=0,
    )


def test_own_layers_match_naive_float64_and_lora_out_is_the_layer_delta():
    model = _tiny_own(embed_scale=1.5)
    ids_list = [_ids(2, 5, seed=0), _ids(3, 2, seed=1)]  # two forward calls, one step
    ref = _InputRecorder(model)
    deltas: dict[str, list[torch.Tensor]] = {}
    with FeatureNormProbe(model, stats=ALL_STATS) as probe:
        for ids in ids_list:
            model(ids).sum().backward()
    ref.remove()
    frame = probe.to_frame()
    expected = ref.expected()
    # independent reference for lora_out: what the layer adds to its base layer's output
    with torch.no_grad():
        for h in ref.handles:
            for x in ref.inputs[h.qualname]:
                d = h.module(x) - h.module.base_layer(x)
                deltas.setdefault(h.qualname, []).extend(d.reshape(-1, d.shape[-1]))
    for qualname, vs in deltas.items():
        for stat in ALL_STATS:
            direct = sum(_naive_stat(v, stat) for v in vs) / len(vs)
            if qualname == "emb":  # embed_scale applies to the adapter too
                expected[(qualname, "lora_out", stat)] *= 1.5
            assert math.isclose(expected[(qualname, "lora_out", stat)], direct, rel_tol=1e-10)
    assert set(frame["module"]) == {"emb", "fc1", "fc2"}
    _assert_matches(frame, 0, expected)


def test_own_layers_merged_and_disabled_record_nothing():
    from loradyn.inject import lora_disabled, merge, unmerge

    model = _tiny_own()
    ids = _ids(1, 4, seed=2)
    with FeatureNormProbe(model) as probe:
        with lora_disabled(model):
            model(ids)
        assert probe.records == []
        merge(model)
        model(ids)
        assert probe.records == []
        unmerge(model)
        model(ids)
        assert {r["module"] for r in probe.records} == {"emb", "fc1", "fc2"}


def test_float32_l2_path_is_accurate_and_zero_b_gives_exact_zero():
    """The default stats use the (r, r) Gram form for z_b; check it in float32 against float64."""
    model = _tiny_own().float()
    with torch.no_grad():
        model.fc2.lora_B.weight.zero_()  # Init[A]-like: z_b must be exactly 0, not a rounding residue
    ids = _ids(4, 8, seed=3)
    ref = _InputRecorder(model)
    with FeatureNormProbe(model) as probe:
        model(ids)
    ref.remove()
    got = _as_dict(probe.to_frame(), 0)
    expected = ref.expected(("rms", "l2"))
    assert set(got) == set(expected)
    for key, value in expected.items():
        # z_a is computed by the model in float32: relative error ~1e-7 * sqrt(fan_in)
        assert math.isclose(got[key], value, rel_tol=1e-5, abs_tol=0.0), (key, got[key], value)
    assert got[("fc2", "z_b", "l2")] == 0.0 and got[("fc2", "lora_out", "rms")] == 0.0


def test_forwards_under_inference_mode_are_recorded_like_any_other():
    model = _tiny_own()
    ids = _ids(2, 3, seed=4)
    with FeatureNormProbe(model) as probe:
        model(ids)
        probe.step()
        with torch.inference_mode():
            model(ids)
    frame = probe.to_frame()
    a, b = frame[frame["step"] == 0], frame[frame["step"] == 1]
    assert len(a) == len(b) > 0
    assert a["value"].tolist() == b["value"].tolist()


# --- guarantees --------------------------------------------------------------------------------
def _all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _no_hook_state_left(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._forward_hooks_with_kwargs
        for m in model.modules()
    )


def test_hooks_are_removed_on_exit_even_after_an_error():
    model = _tiny_bert_peft()
    assert _all_hooks(model) == 0
    probe = FeatureNormProbe(model)
    with probe:
        assert _all_hooks(model) == len(list(iter_lora_layers(model)))  # one hook per pair
        with pytest.raises(LoradynError, match="already attached"):
            probe.attach()
    assert _no_hook_state_left(model)
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureNormProbe(model):
            _bert_loss(model, _ids(1, 3, seed=0))
            raise RuntimeError("boom")
    assert _no_hook_state_left(model)


def test_outputs_gradients_and_dropout_rng_unchanged():
    model = _tiny_bert_peft(dropout=0.5)
    model.train()
    ids = _ids(2, 6, seed=5)

    def run():
        model.zero_grad()
        torch.manual_seed(123)
        out = model(input_ids=ids).last_hidden_state
        out.pow(2).mean().backward()
        after = torch.rand(())  # the RNG stream after the step
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return out.detach(), grads, after

    out0, grads0, rng0 = run()
    with FeatureNormProbe(model, stats=ALL_STATS) as probe:
        out1, grads1, rng1 = run()
    assert len(probe.records) > 0
    assert torch.equal(out0, out1) and torch.equal(rng0, rng1)
    assert len(grads0) == len(grads1) > 0
    assert all(torch.equal(a, b) for a, b in zip(grads0, grads1))


def test_no_autograd_graph_or_activation_is_kept():
    model = _tiny_bert_peft()
    first = next(h for h in iter_lora_layers(model) if h.kind == "linear")
    seen = []  # weak references to the Z_A tensors the model computes
    spy = first.a_module.register_forward_hook(lambda m, a, z: seen.append(weakref.ref(z)))
    with FeatureNormProbe(model, stats=ALL_STATS) as probe:
        out = model(input_ids=_ids(2, 5, seed=6)).last_hidden_state
        loss = out.pow(2).mean()
        ref_out = weakref.ref(out)
        # before backward: the probe's state holds only small detached tensors
        held = [s.acc for s in probe._sites]
        assert all(t is not None and not t.requires_grad and t.grad_fn is None for t in held)
        assert all(t.numel() <= 2 * 3 for t in held)  # (z_a, z_b) x (l2, l1, max) sums
        del out, loss, held
        gc.collect()
        # neither the output (which owns the graph) nor any activation survives
        assert ref_out() is None and seen and all(r() is None for r in seen)
    spy.remove()
    assert all(isinstance(r["value"], float) for r in probe.records)


def test_disabled_and_merged_adapters_record_nothing():
    model = _tiny_bert_peft()
    ids = _ids(1, 4, seed=7)
    with FeatureNormProbe(model) as probe:
        with model.disable_adapter():
            _bert_loss(model, ids)
        assert probe.records == []
        model.merge_adapter()
        _bert_loss(model, ids)
        assert probe.records == []
        model.unmerge_adapter()
        _bert_loss(model, ids)
        assert len(probe.records) > 0


def test_inactive_adapter_records_nothing():
    model = _tiny_bert_peft()
    model.base_model.set_adapter("default")
    with FeatureNormProbe(model) as probe:
        _bert_loss(model, _ids(1, 4, seed=8))
    modules = set(probe.to_frame()["module"])
    assert modules and all(m.endswith("[default]") for m in modules)


def test_paused_block_is_not_recorded():
    model = _tiny_bert_peft(two_adapters=False)
    with FeatureNormProbe(model) as probe:
        with probe.paused():
            _bert_loss(model, _ids(1, 4, seed=0))
        assert probe.records == []


# --- instability report ------------------------------------------------------------------------
def test_instability_report_names_fastest_growth_and_first_nan():
    model = _tiny_bert_peft(two_adapters=False)
    handles = list(iter_lora_layers(model))
    # the embedding adapter's input (token ids) does not depend on any other adapter, so its
    # z_b grows exactly x10 per step; a NaN in the last layer reaches no other adapter
    grower, victim = handles[0], handles[-1]
    assert grower.kind == "embedding"
    with FeatureNormProbe(model) as probe:
        for step in range(4):
            with torch.no_grad():
                grower.lora_B.mul_(10.0)
                if step == 2:
                    victim.lora_A[0, 0] = float("nan")
            _bert_loss(model, _ids(1, 4, seed=0))  # same batch every step
            probe.step()
    report = probe.instability_report()
    assert report["module"] == grower.qualname
    assert report["feature"] in {"z_b", "lora_out"}
    assert report["growth"] == pytest.approx(1000.0, rel=1e-9)
    assert report["first_nonfinite"]["step"] == 2
    assert report["first_nonfinite"]["module"] == victim.qualname
    assert report["first_nonfinite"]["feature"] == "z_a"
    assert math.isnan(report["first_nonfinite"]["value"])
    by_feature = report["growth_by_feature"]
    assert set(by_feature["feature"]) == {"z_a", "z_b", "lora_out"}
    summary = probe.summary()
    assert list(summary.columns) == [0, 1, 2, 3]


def test_instability_report_without_records():
    model = _tiny_bert_peft(two_adapters=False)
    with FeatureNormProbe(model) as probe:
        pass
    report = probe.instability_report()
    assert report["module"] is None and report["first_nonfinite"] is None


def test_instability_report_is_a_function_of_the_tidy_table():
    from loradyn.probe_tables import instability_report

    table = pd.DataFrame({"step": [0, 1, 2, 0, 1, 2], "module": ["a"] * 3 + ["b"] * 3, "feature": "z_b",
                          "stat": "rms", "value": [0.0, 1.0, 8.0, 1.0, 2.0, math.inf]})
    report = instability_report(table, "rms")
    assert (report["module"], report["feature"], report["growth"]) == ("a", "z_b", 8.0)  # from the first value > 0
    assert report["first_nonfinite"] == {"step": 2, "module": "b", "feature": "z_b", "stat": "rms", "value": math.inf}


def test_latest_holds_only_the_last_recorded_step():
    model = _tiny_bert_peft(two_adapters=False)
    probe = FeatureNormProbe(model, stats=("rms", "l2"))
    assert probe.latest().empty and list(probe.latest().columns) == ["step", "module", "feature", "stat", "value"]
    with probe:
        for _ in range(3):
            _bert_loss(model, _ids(1, 4, seed=0))
            probe.step()
        last = probe.latest("rms")
        frame = probe.to_frame()
        want = frame[(frame["step"] == 2) & (frame["stat"] == "rms")].reset_index(drop=True)
        pd.testing.assert_frame_equal(last, want)
        _bert_loss(model, _ids(1, 4, seed=1))  # the step in progress counts
        assert set(probe.latest()["step"]) == {3} and set(probe.latest()["stat"]) == {"rms", "l2"}
    with pytest.raises(LoradynError, match="not recorded"):
        probe.latest("max")


# --- table files ---------------------------------------------------------------------------------
def test_write_table_is_atomic(tmp_path, monkeypatch):
    from loradyn.probe_tables import read_table, write_table

    table = pd.DataFrame({"step": [0, 1], "module": "m", "feature": "z_a", "stat": "rms", "value": [1.0, 2.0]})
    path = write_table(table, tmp_path / "sub" / "feature_norms.csv")
    pd.testing.assert_frame_equal(read_table(path), table)
    before = path.read_bytes()

    def crash(self, target, **kwargs):
        Path(target).write_text("step,module\n0,")  # half a file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", crash)
    with pytest.raises(KeyboardInterrupt):
        write_table(table.assign(value=[3.0, 4.0]), path)
    assert path.read_bytes() == before  # the old table is intact, and no temporary file is left
    assert [p.name for p in path.parent.iterdir()] == ["feature_norms.csv"]


# --- input validation --------------------------------------------------------------------------
def test_unknown_stat_is_a_one_line_error_listing_valid_stats():
    model = _tiny_bert_peft(two_adapters=False)
    with pytest.raises(LoradynError) as err:
        FeatureNormProbe(model, stats=("rms", "frobenius"))
    msg = str(err.value)
    assert "\n" not in msg and "frobenius" in msg
    assert all(s in msg for s in ALL_STATS)


@pytest.mark.parametrize("every", [0, -1, 1.5, True])
def test_bad_every_is_rejected(every):
    model = _tiny_bert_peft(two_adapters=False)
    with pytest.raises(LoradynError, match="every"):
        FeatureNormProbe(model, every=every)


def test_model_without_lora_is_rejected():
    with pytest.raises(LoradynError, match="no LoRA layers"):
        with FeatureNormProbe(nn.Linear(3, 3)):
            pass


def test_model_without_lora_is_rejected_at_construction():
    """Before: the constructor accepted it, and probe.step() without attach recorded nothing, silently."""
    for model in (nn.Linear(3, 3), nn.Sequential(nn.Linear(3, 3), nn.ReLU())):
        with pytest.raises(LoradynError) as err:
            FeatureNormProbe(model)
        msg = str(err.value)
        assert "\n" not in msg and "no LoRA layers" in msg
        assert "peft.get_peft_model" in msg and "loradyn.apply_lora" in msg


def test_stat_not_recorded_is_rejected_by_report():
    model = _tiny_bert_peft(two_adapters=False)
    with FeatureNormProbe(model, stats="l2") as probe:
        _bert_loss(model, _ids(1, 3, seed=0))
    assert probe.instability_report()["stat"] == "l2"
    with pytest.raises(LoradynError, match="not recorded"):
        probe.summary("rms")
