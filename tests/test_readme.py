"""Every Python snippet of the README runs (tiny models stand in for ``base_model`` and the other
placeholders it names), and every CLI line of the README runs in its --quick form (smaller grids,
fewer steps and seeds: the arguments below), with exit code 0 (1 allowed where a verdict may fail)."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from real_tasks import require_task_wheels

require_task_wheels()
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)
pytestmark = pytest.mark.filterwarnings("ignore")


def _blocks() -> list[tuple[str, str]]:
    return BLOCK.findall((ROOT / "README.md").read_text())


# --- the placeholders the snippets name --------------------------------------------------------

def _tiny_llama(seed: int = 0):
    import torch

    from loradyn.tasks.models import load_model

    torch.manual_seed(seed)
    return load_model("tiny-llama", kind="causal", dtype=torch.float32)


def _batches(n: int = 3):
    import torch

    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(5, 200, (4, 12), generator=gen)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    return out


def _split(batch):
    """Gradient accumulation in the probe snippet: the batch in two micro-batches."""
    half = batch["input_ids"].shape[0] // 2
    return [{k: v[:half] for k, v in batch.items()}, {k: v[half:] for k, v in batch.items()}]


def _trainer_placeholders(tmp_path):
    import transformers
    from peft import LoraConfig, get_peft_model

    rows = [{k: v[i] for k, v in b.items()} for b in _batches(2) for i in range(4)]
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "trainer"), max_steps=2, report_to=[],
                                          per_device_train_batch_size=4, use_cpu=True)
    peft_model = get_peft_model(_tiny_llama(3), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    return {"transformers": transformers, "peft_model": peft_model, "args": args, "ds": rows}


def _user_package(tmp_path):
    """mypkg/data.py: the user's model folder and tokenized datasets the Trainer snippet imports."""
    from transformers import AutoModelForSequenceClassification

    from loradyn.tasks.models import load_model, load_tokenizer

    folder = tmp_path / "tiny-classifier"
    if not folder.exists():
        model = load_model("tiny-bert", kind="classify", num_labels=2)
        assert isinstance(model, AutoModelForSequenceClassification._model_mapping[type(model.config)])
        model.save_pretrained(folder)
        load_tokenizer("tiny-bert").save_pretrained(folder)
    pkg = tmp_path / "mypkg"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data.py").write_text(
        "from transformers import AutoTokenizer\n"
        f"MODEL = {str(folder)!r}\n"
        "_tok = AutoTokenizer.from_pretrained(MODEL)\n"
        "def _rows(n, offset):\n"
        "    texts = [f'{\"good\" if i % 2 else \"bad\"} film {i}' for i in range(offset, offset + n)]\n"
        "    enc = _tok(texts, padding='max_length', max_length=12, truncation=True)\n"
        "    return [{'input_ids': enc['input_ids'][i], 'attention_mask': enc['attention_mask'][i], 'labels': i % 2}\n"
        "            for i in range(n)]\n"
        "train_ds, eval_ds = _rows(16, 0), _rows(8, 100)\n")
    return folder


# --- Python snippets ---------------------------------------------------------------------------

def test_every_python_snippet_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    _user_package(tmp_path)
    namespace: dict = {"loader": _batches(), "split": _split, **_trainer_placeholders(tmp_path)}
    ran = 0
    for i, (lang, body) in enumerate(_blocks()):
        if lang != "python":
            continue
        module = re.match(r"#\s*([\w/]+\.py)\b", body)
        if module:  # a file of the user's: written where Python imports it from
            (tmp_path / module.group(1)).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / module.group(1)).write_text(body)
            continue
        namespace.update(base_model=_tiny_llama(1), fresh_base_model=_tiny_llama(2))
        exec(compile(body, f"README.md python block {i}", "exec"), namespace)  # noqa: S102
        ran += 1
    assert ran >= 7
    # the snippets did what they say
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()
    assert len(namespace["results"]) == 8 and namespace["trainer"] is not None
    namespace["trainer"].train()  # the Trainer set up by loradyn.hf.setup trains
    # the user's Trainer script, as the python kind calls it
    sys.modules.pop("mypkg.train", None)
    from mypkg.train import run_trial

    curves = []
    metrics = run_trial({"lora": {"rank": 2, "init": "B"}, "optim": {"lr_a": 1e-3, "lr_ratio": 4},
                         "train": {"steps": 2}, "seed": 0}, lambda step, **m: curves.append(m))
    assert "eval_loss" in metrics


# --- CLI lines ---------------------------------------------------------------------------------

TINY_SYNTHETIC = ["task.n_train=48", "task.n_test=8", "experiment.steps=8"]
TINY_EXPERIMENT = {
    "width-lr": ["experiment.widths=[32,64]", "experiment.lr_step=1.0", "experiment.span=1.0",
                 "experiment.max_extend=1", "experiment.fit_min_width=32"],
    "feature-norms": ["experiment.widths=[32,64]", "experiment.record_every=4", "experiment.lr_A=0.01",
                      "experiment.lr_B=0.002"],
    "loraplus-heatmap": ["experiment.widths=[32,64]", "experiment.lr_a_span=1.0", "experiment.ratio_log2=[0,2]"],
    "rank-lr": ["experiment.width=32", "experiment.ranks=[1,4]", "experiment.lr_step=1.0", "experiment.span=1.0"],
    "coord-check": ["experiment.widths=[32,64]"],
}
TINY_REAL = ["task.model=tiny-bert", "task.n_train=32", "task.n_val=16", "task.n_test=16", "train.steps=2",
             "optim.lr_a=[0.001,0.01]", "optim.lr_ratio=[1.0]"]
TINY_SWEEP = {  # spec file -> overrides that shrink it
    "width-lr.yaml": ["task.width=[32]", "optim.lr_a=[0.001,0.01]", "seeds=1", "train.steps=5",
                      "task.n_train=48", "task.n_test=8"],
    "mine.yaml": ["train.steps=2", "seeds=1", "optim.lr_a=[0.001]", "task.n_train=32", "train.batch_size=4"],
    "trainer.yaml": ["train.steps=2", "seeds=1", "optim.lr_a=[0.0001]"],
}
PLACEHOLDERS = {"SPEC": "width-lr.yaml", "DIR": "runs/width-lr", "ID": "width-lr", "FILE": "results.txt", "N": "1"}


def _quick(argv: list[str]) -> tuple[list[str], set[int]]:
    """The --quick form of a README command line, and the exit codes it may end with."""
    verb = argv[0]
    if verb == "reproduce":
        eid = argv[1]
        extra = ["--quick", "--executor", "serial", "--quiet"]
        if eid in TINY_EXPERIMENT:
            extra += TINY_SYNTHETIC + TINY_EXPERIMENT[eid]
        elif eid == "all":
            extra += TINY_SYNTHETIC + [o for e in TINY_EXPERIMENT.values() for o in e if "width=" not in o]
            extra += ["experiment.width=32"]
        else:
            extra += TINY_REAL
        return argv + extra, {0, 1}  # 1: a verdict failed in a tiny run
    if verb in ("sweep", "validate", "tune"):
        extra = TINY_SWEEP.get(Path(argv[1]).name, [])
        return argv + extra + (["--executor", "serial", "--quiet"] if verb != "validate" else []), {0}
    if verb == "demo":
        return argv + ["--executor", "serial", "--quiet"], {0}
    return argv, {0}


def _commands() -> list[str]:
    """The README's CLI lines: YAML files' header commands first (they write what others use)."""
    headers, lines = [], []
    for lang, body in _blocks():
        if lang == "yaml" and body.startswith("# loradyn "):
            headers += [c.strip() for c in body.splitlines()[0][2:].split("&&")]
        elif lang in ("", "bash"):
            lines += [line.split("  #")[0].strip() for line in body.splitlines() if line.startswith("loradyn ")]
    return headers + lines


def _write_specs(tmp_path, classifier: Path) -> None:
    import pandas as pd

    for lang, body in _blocks():
        if lang == "yaml" and body.startswith("# loradyn sweep "):
            name = body.split()[3]
            (tmp_path / name).write_text(body.replace("path/to/model-folder", str(classifier)))
    rows = [{"review": f"{'great' if i % 2 else 'dull'} film number {i}", "sentiment": "pos" if i % 2 else "neg"}
            for i in range(80)]
    pd.DataFrame(rows).to_csv(tmp_path / "reviews.csv", index=False)


def test_every_cli_line_runs_in_quick_form(tmp_path, monkeypatch, capsys):
    from loradyn.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("LORADYN_CACHE", str(tmp_path / "cache"))
    classifier = _user_package(tmp_path)
    # the README's Trainer module, as a user would save it
    for lang, body in _blocks():
        if lang == "python" and body.startswith("# mypkg/train.py"):
            (tmp_path / "mypkg" / "train.py").write_text(body)
    _write_specs(tmp_path, classifier)
    commands = _commands()
    assert len(commands) >= 15 and any(c.startswith("loradyn demo") for c in commands)
    for command in commands:
        text = re.sub(r"\s*\[[^\]]*\]", "", command)  # optional parts of a synopsis
        argv = [PLACEHOLDERS.get(a, a) for a in shlex.split(text)[1:]]
        argv, allowed = _quick(argv)
        code = main(argv)
        err = capsys.readouterr().err
        assert code in allowed, f"{command!r} -> {argv} exited {code}: {err[-500:]}"
