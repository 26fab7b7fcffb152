"""Where examples come from (loradyn.tasks.presets): the built-in presets and the user's rows."""

from __future__ import annotations

import pandas as pd
import pytest

from real_tasks import require_task_wheels, tiny_gsm, tiny_sentiment

require_task_wheels()

from loradyn.errors import LoradynError  # noqa: E402
from loradyn.serialize import spec_from_dict  # noqa: E402
from loradyn.tasks import data  # noqa: E402
from loradyn.tasks.hf_spec import HFSFTSpec  # noqa: E402
from loradyn.tasks.presets import classify_data, pair_data  # noqa: E402


def test_the_sentiment_preset_is_the_seeded_split_of_the_wheel_rows():
    task = tiny_sentiment().task
    examples = classify_data(task)
    train, val, test = data.split_examples(data.rt_snippets(task.min_abs_score), n_val=task.n_val,
                                           n_test=task.n_test, seed=task.split_seed, n_train=task.n_train)
    assert [(t, y) for t, _, y in examples.train] == train and [(t, y) for t, _, y in examples.test] == test
    assert examples.label_names == ("negative", "positive") and len(examples.val) == len(val)


def test_the_gsm_preset_grades_with_reasoning_gym():
    pairs = pair_data(tiny_gsm().task)
    assert pairs.metric == "exact_match" and pairs.plain_prompt("q") == "Question: q\nAnswer:"
    first = pairs.val[0]
    assert pairs.grade(first.completion, first) == 1.0 and pairs.grade("nonsense", first) == 0.0


def test_user_messages_must_end_with_the_assistant_answer(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"yo {i}"}]}
            for i in range(10)]
    pd.DataFrame(rows).to_json(tmp_path / "chat.jsonl", orient="records", lines=True)
    task = spec_from_dict(HFSFTSpec, {"model": "tiny-llama", "data": str(tmp_path / "chat.jsonl")})
    pairs = pair_data(task)
    assert pairs.train[0].prompt[-1]["role"] == "user" and pairs.train[0].completion.startswith("yo")
    assert pairs.grade is None
    rows[3]["messages"] = rows[3]["messages"][:1]
    pd.DataFrame(rows).to_json(tmp_path / "bad.jsonl", orient="records", lines=True)
    with pytest.raises(LoradynError, match="must end with an assistant message"):
        pair_data(spec_from_dict(HFSFTSpec, {"model": "tiny-llama", "data": str(tmp_path / "bad.jsonl")}))
