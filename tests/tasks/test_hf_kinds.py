"""The generic kinds on the user's own files: hf-classify, hf-causal-lm, hf-sft (tiny random models,
files the tests write), and the built-in presets taking the same code path."""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest

from real_tasks import require_task_wheels

require_task_wheels()
pytest.importorskip("datasets")

from loradyn.errors import LoradynError  # noqa: E402
from loradyn.serialize import spec_from_dict  # noqa: E402
from loradyn.sweep import run_sweep  # noqa: E402
from loradyn.tasks import data, get_task  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
TRAIN = {"steps": 3, "batch_size": 4, "eval_batch_size": 8, "pack": "solo"}


def _trial(kind, task, **sections):
    record = get_task(kind)
    return spec_from_dict(record.spec_cls, {"task": {"kind": kind, **task}, "lora": {"rank": 2},
                                             "train": TRAIN, **sections})


def test_hf_classify_on_a_csv_with_string_labels_and_text_pairs(tmp_path):
    rows = [{"review": f"film {i} was {'great' if i % 3 else 'awful'}", "title": f"t{i}",
             "sentiment": "pos" if i % 3 else "neg"} for i in range(60)]
    pd.DataFrame(rows).to_csv(tmp_path / "reviews.csv", index=False)
    config = _trial("hf-classify", {"model": "tiny-bert", "data": str(tmp_path / "reviews.csv"),
                                    "columns": {"text": "review", "text_pair": "title", "label": "sentiment"},
                                    "n_val": 10, "n_test": 10})
    record = get_task("hf-classify")
    record.validate(config)
    assert "labels neg, pos" in record.describe(config) and "train 40" in record.describe(config)
    [result] = record.run_pack([config])
    assert result.status == "done", result.error
    assert 0 <= result.metrics["val_accuracy"] <= 1 and 0.5 <= result.metrics["val_chance_accuracy"] <= 1


def test_the_sentiment_preset_and_hf_classify_on_the_same_rows_give_the_same_metrics(tmp_path):
    examples = data.rt_snippets(0.5)
    pd.DataFrame([{"text": t, "label": y} for t, y in examples]).to_csv(tmp_path / "rt.csv", index=False)
    common = {"model": "tiny-bert", "n_train": 32, "n_val": 16, "n_test": 16, "split_seed": 3}
    lora = {"rank": 2, "target_modules": ["query", "value"]}
    preset = _trial("sentiment", common, lora=lora)
    generic = _trial("hf-classify", {**common, "data": str(tmp_path / "rt.csv")}, lora=lora)
    [a] = get_task("sentiment").run_pack([preset])
    [b] = get_task("hf-classify").run_pack([generic])
    assert a.status == b.status == "done"
    assert a.metrics == b.metrics  # bitwise: one code path, the data source is all that differs


def test_hf_causal_lm_on_jsonl_text(tmp_path):
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    with open(tmp_path / "docs.jsonl", "w") as fh:
        for i in range(40):
            fh.write(json.dumps({"body": " ".join(words[(i + j) % 10] for j in range(60))}) + "\n")
    config = _trial("hf-causal-lm", {"model": "tiny-llama", "data": str(tmp_path / "docs.jsonl"),
                                     "columns": {"text": "body"}, "max_length": 32})
    [result] = get_task("hf-causal-lm").run_pack([config])
    assert result.status == "done", result.error
    assert result.metrics["val_ppl"] > 1
    assert result.metrics["val_ppl"] == pytest.approx(math.exp(result.metrics["val_loss"]), rel=1e-12)


def test_hf_sft_prompt_completion_with_exact_match_and_a_score_function(tmp_path):
    rows = [{"q": f"what is {i} plus {i}?", "a": str(2 * i)} for i in range(30)]
    pd.DataFrame(rows).to_parquet(tmp_path / "qa.parquet")
    task = {"model": "tiny-llama", "data": str(tmp_path / "qa.parquet"), "columns": {"prompt": "q", "completion": "a"},
            "max_length": 48, "max_new_tokens": 3, "n_val": 5, "n_test": 5}
    [exact] = get_task("hf-sft").run_pack([_trial("hf-sft", {**task, "exact_match": True})])
    assert exact.status == "done", exact.error
    assert {"val_loss", "val_ppl", "val_exact_match", "test_exact_match"} <= set(exact.metrics)
    [scored] = get_task("hf-sft").run_pack([_trial("hf-sft", {**task, "score": "python_trials:length_score"})])
    assert scored.status == "done", scored.error
    assert "val_score" in scored.metrics and "val_exact_match" not in scored.metrics


def test_sft_rows_truncated_to_no_completion_are_refused(tmp_path):
    pd.DataFrame([{"prompt": "word " * 80, "completion": "x"}] * 12).to_csv(tmp_path / "long.csv", index=False)
    config = _trial("hf-sft", {"model": "tiny-llama", "data": str(tmp_path / "long.csv"), "max_length": 16})
    with pytest.raises(LoradynError, match="loses its whole completion to truncation at task.max_length=16"):
        get_task("hf-sft").validate(config)


@pytest.mark.parametrize("task, match", [
    ({"data": "/no/such/file.csv"}, "file.csv"),
    ({"data": "FILE", "columns": {"text": "nope"}}, "nope.*columns"),
    ({"data": "FILE", "model": "/no/model"}, "is neither a named model .* nor in the local Hugging Face cache"),
])
def test_bad_input_is_one_line_before_training(tmp_path, capsys, task, match):
    pd.DataFrame({"text": [f"t{i}" for i in range(20)], "label": [i % 2 for i in range(20)]}).to_csv(
        tmp_path / "d.csv", index=False)
    spec = tmp_path / "s.yaml"
    section = {"kind": "hf-classify", "model": "tiny-bert", **task}
    section["data"] = section["data"].replace("FILE", str(tmp_path / "d.csv"))
    spec.write_text(json.dumps({"base": {"task": section, "train": TRAIN}, "grid": {"optim.lr_a": [1e-3]}}))
    from loradyn.cli import main

    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--quiet", "--executor", "serial"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(match, err[0]), err
    assert not (tmp_path / "out" / "sweep.db").exists()


def test_a_sweep_of_inits_and_learning_rates_on_a_users_csv(tmp_path):
    rows = [{"text": f"{'good' if i % 2 else 'bad'} movie number {i}", "label": i % 2} for i in range(80)]
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    spec = {"name": "mine", "base": {"task": {"kind": "hf-classify", "model": "tiny-bert", "data": str(tmp_path / "d.csv")},
                                     "lora": {"rank": 2}, "train": {**TRAIN, "pack": "auto", "data_order_seed": 0}},
            "grid": {"lora.init": ["A", "B"], "optim.lr_a": [1e-3, 1e-2]}, "seeds": 2, "metric": "val_accuracy",
            "mode": "max"}
    df = run_sweep(spec, tmp_path / "out", executor="serial", quiet=True)
    assert len(df) == 8 and set(df["status"]) == {"done"}


def test_validate_shows_the_resolved_task_before_training(tmp_path, capsys):
    from loradyn.cli import main

    rows = [{"review": f"film {i}", "sentiment": "pos" if i % 2 else "neg", "extra": i} for i in range(50)]
    pd.DataFrame(rows).to_csv(tmp_path / "reviews.csv", index=False)
    spec = tmp_path / "s.yaml"
    spec.write_text(json.dumps({"base": {"task": {"kind": "hf-classify", "model": "tiny-bert",
                                                   "data": str(tmp_path / "reviews.csv"),
                                                   "columns": {"text": "review", "label": "sentiment"}},
                                          "train": TRAIN},
                                 "grid": {"optim.lr_a": [1e-3, 1e-2]}}))
    assert main(["validate", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "columns review, sentiment, extra" in out and "roles text=review, label=sentiment" in out
    assert "train 40, val 5, test 5" in out and "labels neg, pos" in out
    assert "model tiny-bert:" in out and "device cpu (auto), precision fp32" in out
    assert not list(tmp_path.glob("**/sweep.db"))  # nothing written
