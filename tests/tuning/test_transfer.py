"""loradyn.tuning.transfer against a naive float64 reference written out from docs/theory.md §6:
Init[A] lr ∝ n^-1/2 · r^-(1-γ)/2; Init[B] lr ∝ n^-1 · r^γ; LoRA+ lr_a ∝ n^-1 with λ ∝ n."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from loradyn.errors import SpecError
from loradyn.tuning.transfer import transfer

GAMMA = {"1": 0.0, "1/sqrt(r)": 0.5, "1/r": 1.0}


def reference(lr, init, rule, rank, width, ratio):
    """The rules, written out once more in float64 (tolerance: 1e-12 relative)."""
    lr, ratio = np.float64(lr), np.float64(ratio)
    g = GAMMA[rule]
    if rank is not None:
        r = np.float64(rank[1]) / np.float64(rank[0])
        lr = lr * (r ** (-(1.0 - g) / 2.0) if init == "A" else r ** g)
    if width is not None:
        n = np.float64(width[1]) / np.float64(width[0])
        if ratio == 1.0:
            lr = lr * (n ** -0.5 if init == "A" else n ** -1.0)
        else:
            lr, ratio = lr / n, ratio * n
    return float(lr), float(ratio)


CASES = list(itertools.product(["A", "B"], GAMMA, [None, (4, 64), (8, 2), (1, 1)], [None, (128, 512), (1024, 256)],
                               [1.0, 16.0]))


@pytest.mark.parametrize(("init", "rule", "rank", "width", "ratio"), CASES)
def test_transfer_matches_the_naive_reference(init, rule, rank, width, ratio):
    moved = transfer(3e-4, lr_ratio=ratio, init=init, alpha_rule=rule, rank=rank, width=width)
    lr, lam = reference(3e-4, init, rule, rank if rank and rank[0] != rank[1] else None, width, ratio)
    assert moved.lr_a == pytest.approx(lr, rel=1e-12)
    assert moved.lr_ratio == pytest.approx(lam, rel=1e-12)
    assert moved.lr_b == pytest.approx(lr * lam, rel=1e-12)
    assert moved.factor == pytest.approx(lr / 3e-4, rel=1e-12)
    if ratio != 1.0 and width is not None:  # LoRA+ across width keeps lr_b (arXiv 2402.12354)
        plain = reference(3e-4, init, rule, rank if rank and rank[0] != rank[1] else None, None, ratio)
        assert moved.lr_b == pytest.approx(plain[0] * plain[1], rel=1e-12)


def test_each_rule_says_whether_a_paper_states_it():
    published = transfer(1e-3, init="A", alpha_rule="1", rank=(4, 64))
    assert [r["status"] for r in published.rules] == ["published"] and not published.derived
    assert published.rules[0]["source"] == "arXiv 2602.06204"
    derived = transfer(1e-3, init="B", alpha_rule="1/r", rank=(4, 64))
    assert derived.derived and derived.rules[0]["status"].startswith("derived here")
    assert derived.lr_a == pytest.approx(1e-3 * 16)
    assumed = transfer(1e-3, lr_ratio=16, init="A", alpha_rule="1/r", rank=(4, 64))
    assert any(r["status"].startswith("assumed") for r in assumed.rules)
    same = transfer(1e-3, init="A", alpha_rule=None)
    assert same.lr_a == 1e-3 and same.rules[0]["step"] == "no rank or width change"


def test_full_finetuning_target():
    moved = transfer(2e-4, init="B", target_method="full", multiplier=1.0)
    assert moved.lr_a == 2e-4 and moved.rules[0]["source"] == "arXiv 2602.06204"
    assert transfer(2e-4, init="B", target_method="full", multiplier=1.0, width=(64, 256)).lr_a == pytest.approx(5e-5)
    with pytest.raises(SpecError, match="no rule moves Init\\[A\\]"):
        transfer(2e-4, init="A", target_method="full", multiplier=1.0)
    with pytest.raises(SpecError, match="Init\\[B\\] with alpha/r = 1"):
        transfer(2e-4, init="B", target_method="full", multiplier=0.25)
    with pytest.raises(SpecError, match="lr_ratio=1"):
        transfer(2e-4, init="B", lr_ratio=4, target_method="full", multiplier=1.0)


def test_rank_transfer_needs_a_convention():
    with pytest.raises(SpecError, match="alpha convention"):
        transfer(1e-3, init="A", alpha_rule=None, rank=(4, 64))
