"""Task kinds as records in one registry (loradyn.tasks.registry): built-ins, third-party kinds
through the ``loradyn.tasks`` entry-point group, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from loradyn.errors import LoradynError
from loradyn.tasks.registry import TaskKind, TrialResult, get_task, register_task, task_kinds


def test_builtin_kinds_are_records_with_metric_directions():
    assert {"synthetic", "sentiment", "trec6", "wiki-lm", "gsm"} <= set(task_kinds())
    for kind in ("synthetic", "sentiment", "trec6", "wiki-lm", "gsm"):
        record = get_task(kind)
        assert isinstance(record, TaskKind) and record.kind == kind
        assert record.metrics and set(record.metrics.values()) <= {"min", "max"}
    assert get_task("trec6").spec_cls.__name__ == "Trec6Trial"
    assert get_task("sentiment").default_metric == "val_accuracy"
    assert get_task("synthetic").metrics["final_train_loss"] == "min"


def test_unknown_kind_is_one_line_listing_the_kinds():
    with pytest.raises(LoradynError, match="unknown task 'sentimnt'; valid tasks: .*sentiment") as err:
        get_task("sentimnt")
    assert "\n" not in str(err.value)


def test_records_are_checked():
    with pytest.raises(LoradynError, match="TaskKind"):
        register_task(object())
    with pytest.raises(LoradynError, match="'min' or 'max'"):
        TaskKind(kind="x", spec_cls=dict, run_pack=list, metrics={"loss": "lower"})
    with pytest.raises(LoradynError, match="non-empty name"):
        TaskKind(kind="", spec_cls=dict, run_pack=list)


def test_defaults_put_every_trial_in_its_own_pack():
    record = TaskKind(kind="solo-only", spec_cls=dict, run_pack=lambda cs: [TrialResult("done") for _ in cs])
    assert record.max_pack_size({"a": 1}) == 1
    assert record.pack_key({"a": 1}) != record.pack_key({"a": 2})
    assert record.default_metric is None


def test_importing_the_registry_is_light():
    code = "import sys, loradyn.tasks; print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


_PACKAGE = textwrap.dedent('''
    """A user's package that adds the task kind 'quadratic' to loradyn, without editing loradyn."""
    from dataclasses import dataclass, field

    from loradyn.specs import OptimSpec
    from loradyn.tasks import TaskKind, TrialResult


    @dataclass(frozen=True)
    class Section:
        kind: str = "quadratic"
        target: float = 0.25


    @dataclass(frozen=True)
    class Trial:
        task: Section = field(default_factory=Section)
        optim: OptimSpec = field(default_factory=OptimSpec)
        seed: int = 0


    def run_pack(configs):
        out = []
        for c in configs:
            w = 0.0
            for _ in range(20):
                w -= c.optim.lr_a * 2 * (w - c.task.target)
            out.append(TrialResult("done", {"loss": (w - c.task.target) ** 2 + 1e-3 * c.seed}))
        return out


    KIND = TaskKind(kind="quadratic", spec_cls=Trial, run_pack=run_pack, metrics={"loss": "min"},
                    pack_key=lambda c: "all", max_pack_size=lambda c: 4)
''')


def test_a_third_party_kind_registers_through_the_entry_point_group_and_sweeps(tmp_path):
    site = tmp_path / "site"
    (site / "quadkind").mkdir(parents=True)
    (site / "quadkind" / "__init__.py").write_text(_PACKAGE)
    meta = site / "quadkind-0.1.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: quadkind\nVersion: 0.1\n")
    (meta / "entry_points.txt").write_text("[loradyn.tasks]\nquadratic = quadkind:KIND\n")
    spec = tmp_path / "quad.yaml"
    spec.write_text("name: quad\nbase:\n  task: {kind: quadratic}\ngrid:\n  optim.lr_a: {log2: [-4, -1, 1]}\n"
                    "seeds: 2\nmetric: loss\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("LORADYN_TASK_MODULES", None)
    out = tmp_path / "out"
    for executor in ("serial", "process"):
        run = subprocess.run([sys.executable, "-m", "loradyn", "sweep", str(spec), "--out", str(out / executor),
                              "--executor", executor, "--workers", "2", "--quiet"],
                             capture_output=True, text=True, env=env, timeout=300)
        assert run.returncode == 0, run.stderr
        assert "8 trials (8 done)" in run.stdout
    csv = subprocess.run([sys.executable, "-m", "loradyn", "results", str(out / "process"), "--format", "csv"],
                         capture_output=True, text=True, env=env, check=True).stdout
    header, *rows = csv.strip().splitlines()
    assert "task.kind" in header and "loss" in header and len(rows) == 8
    # the same kind through the Python API needs no registration call either
    code = ("from loradyn.tasks import get_task; import json; k = get_task('quadratic'); "
            "print(json.dumps([k.kind, k.metrics]))")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert json.loads(shown) == ["quadratic", {"loss": "min"}]
