"""Specs of the generic kinds (loradyn.tasks.hf_spec): shapes, defaults, one-line errors, no I/O."""

from __future__ import annotations

import pytest

from loradyn.errors import SpecError
from loradyn.serialize import spec_from_dict, spec_to_dict
from loradyn.tasks.hf_spec import HFCausalLMTrial, HFClassifyTrial, HFSFTTrial


def test_the_issue_spec_shape_builds_without_touching_files():
    trial = spec_from_dict(HFClassifyTrial, {"task": {"kind": "hf-classify", "model": "path/to/model-folder",
                                                      "data": "path/to/all.csv",
                                                      "columns": {"text": "review", "label": "sentiment"},
                                                      "n_train": 2000}})
    assert trial.task.columns == {"text": "review", "label": "sentiment"} and trial.task.n_train == 2000
    assert trial.lora.target_modules == ("all-linear",)
    split = spec_from_dict(HFSFTTrial, {"task": {"kind": "hf-sft", "model": "m",
                                                 "data": {"train": "a.jsonl", "validation": "b.jsonl"}}})
    assert spec_from_dict(HFSFTTrial, spec_to_dict(split)) == split
    assert spec_from_dict(HFCausalLMTrial, {"task": {"kind": "hf-causal-lm", "model": "m", "data": "d"}}).task.max_length == 256


@pytest.mark.parametrize("task, match", [
    ({"kind": "hf-classify", "data": "d.csv"}, "task.model is required"),
    ({"kind": "hf-classify", "model": "m"}, "task.data is required"),
    ({"kind": "hf-classify", "model": "m", "data": {"validation": "v.csv"}}, "needs a 'train' file"),
    ({"kind": "hf-classify", "model": "m", "data": {"train": "t.csv", "dev": "v.csv"}}, "unknown split 'dev'"),
    ({"kind": "hf-classify", "model": "m", "data": "d", "columns": {"prompt": "q"}}, "unknown role 'prompt'"),
    ({"kind": "hf-classify", "model": "m", "data": "d", "n_val": -1}, "task.n_val"),
    ({"kind": "hf-sft", "model": "m", "data": "d", "score": "not-a-reference"}, "task.score"),
])
def test_bad_sections_are_one_line(task, match):
    cls = HFSFTTrial if task["kind"] == "hf-sft" else HFClassifyTrial
    with pytest.raises(SpecError, match=match) as err:
        spec_from_dict(cls, {"task": task})
    assert "\n" not in str(err.value)
