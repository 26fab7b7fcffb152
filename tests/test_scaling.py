"""Learning-rate transfer rules (loradyn.scaling): exact exponents, identities, composition, errors."""

from __future__ import annotations

import math

import pytest

import loradyn
from loradyn.errors import LoradynError
from loradyn.scaling import (
    ALPHA_RULES,
    canonical_alpha_rule,
    lr_exponents,
    lr_rules_table,
    suggest_lr,
    suggest_lr_ratio,
)

LR = 3e-4
REL = 1e-12  # the rules are closed-form powers: only rounding error is allowed


# --- width ------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha_rule", sorted(ALPHA_RULES))
def test_init_a_width_4x_halves_lr(alpha_rule: str) -> None:
    # Init[A]: lr ∝ n^-1/2 whatever the multiplier (docs/theory.md §2)
    assert suggest_lr(LR, width=(256, 1024), init="A", alpha_rule=alpha_rule) == pytest.approx(LR / 2, rel=REL)
    assert suggest_lr(LR, width=(1024, 256), init="A", alpha_rule=alpha_rule) == pytest.approx(LR * 2, rel=REL)


@pytest.mark.parametrize("alpha_rule", sorted(ALPHA_RULES))
def test_init_b_width_4x_quarters_lr(alpha_rule: str) -> None:
    # Init[B]: lr ∝ n^-1 (docs/theory.md §2)
    assert suggest_lr(LR, width=(256, 1024), init="B", alpha_rule=alpha_rule) == pytest.approx(LR / 4, rel=REL)
    assert suggest_lr(LR, width=(1024, 256), init="B", alpha_rule=alpha_rule) == pytest.approx(LR * 4, rel=REL)


def test_exact_powers_of_two_are_exact() -> None:
    assert suggest_lr(1e-3, width=(1024, 4096)) == 5e-4
    assert suggest_lr(1e-3, width=(1024, 4096), init="B") == 2.5e-4


# --- rank -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("alpha_rule", "factor"),
    [("1", 1 / 2), ("rslora", 1 / math.sqrt(2)), ("alpha/r", 1.0)],
)
def test_init_a_rank_4x(alpha_rule: str, factor: float) -> None:
    # μA (docs/theory.md §4): lr ∝ r^-(1-γ)/2 with γ = 0, 1/2, 1
    got = suggest_lr(LR, rank=(8, 32), init="A", alpha_rule=alpha_rule)
    assert got == pytest.approx(LR * factor, rel=REL)


def test_init_b_alpha_one_is_rank_invariant() -> None:
    for r0, r1 in [(1, 64), (8, 32), (256, 4)]:
        assert suggest_lr(LR, rank=(r0, r1), init="B", alpha_rule="1") == pytest.approx(LR, rel=REL)


@pytest.mark.parametrize(("alpha_rule", "factor"), [("alpha/r", 4.0), ("rslora", 2.0)])
def test_init_b_other_alpha_uses_derived_one_over_alpha_n(alpha_rule: str, factor: float) -> None:
    # derived rule lr ~ 1/(α n): α ∝ r^-γ, so 4x rank multiplies lr by 4^γ
    assert suggest_lr(LR, rank=(8, 32), init="B", alpha_rule=alpha_rule) == pytest.approx(LR * factor, rel=REL)
    table = lr_rules_table()
    row = table[(table.quantity == "lr") & (table.init == "B") & (table.alpha_rule == canonical_alpha_rule(alpha_rule))]
    assert not bool(row.published.iloc[0]) and "derived here" in row.source.iloc[0]


@pytest.mark.parametrize("init", ["A", "B"])
@pytest.mark.parametrize("alpha_rule", sorted(ALPHA_RULES))
def test_general_formula_matches_naive_reference(init: str, alpha_rule: str) -> None:
    gamma = ALPHA_RULES[alpha_rule]
    n0, n1, r0, r1 = 96, 1000, 3, 50
    if init == "A":
        expected = LR * (n1 / n0) ** -0.5 * (r1 / r0) ** (-(1 - gamma) / 2)
    else:
        expected = LR * (n0 / n1) * (r1 / r0) ** gamma
    got = suggest_lr(LR, width=(n0, n1), rank=(r0, r1), init=init, alpha_rule=alpha_rule)
    assert got == pytest.approx(expected, rel=1e-12)


# --- identities and composition ---------------------------------------------------------------
@pytest.mark.parametrize("init", ["A", "B"])
@pytest.mark.parametrize("alpha_rule", sorted(ALPHA_RULES))
def test_identity_when_nothing_changes(init: str, alpha_rule: str) -> None:
    assert suggest_lr(LR, init=init, alpha_rule=alpha_rule) == LR
    assert suggest_lr(LR, width=(512, 512), rank=(16, 16), init=init, alpha_rule=alpha_rule) == LR
    assert suggest_lr_ratio(16.0, init=init) == 16.0
    assert suggest_lr_ratio(16.0, width=(512, 512), init=init) == 16.0


@pytest.mark.parametrize("init", ["A", "B"])
@pytest.mark.parametrize("alpha_rule", sorted(ALPHA_RULES))
def test_composition(init: str, alpha_rule: str) -> None:
    kw = {"init": init, "alpha_rule": alpha_rule}
    via = suggest_lr(suggest_lr(LR, width=(128, 768), rank=(4, 12), **kw), width=(768, 5120), rank=(12, 64), **kw)
    direct = suggest_lr(LR, width=(128, 5120), rank=(4, 64), **kw)
    assert via == pytest.approx(direct, rel=1e-12)
    # and there and back again
    back = suggest_lr(suggest_lr(LR, width=(128, 5120), rank=(4, 64), **kw), width=(5120, 128), rank=(64, 4), **kw)
    assert back == pytest.approx(LR, rel=1e-12)


def test_width_and_rank_factors_multiply() -> None:
    both = suggest_lr(LR, width=(256, 1024), rank=(8, 32), alpha_rule="1")
    assert both == pytest.approx(LR / 4, rel=REL)


# --- LoRA+ ratio ------------------------------------------------------------------------------
@pytest.mark.parametrize("init", ["A", "B"])
def test_lr_ratio_is_linear_in_width(init: str) -> None:
    assert suggest_lr_ratio(16, width=(768, 3072), init=init) == pytest.approx(64.0, rel=REL)
    assert suggest_lr_ratio(16, width=(3072, 768), init=init) == pytest.approx(4.0, rel=REL)
    via = suggest_lr_ratio(suggest_lr_ratio(2.0, width=(100, 300), init=init), width=(300, 4000), init=init)
    assert via == pytest.approx(suggest_lr_ratio(2.0, width=(100, 4000), init=init), rel=1e-12)


# --- exponents and table ----------------------------------------------------------------------
def test_lr_exponents_table_values() -> None:
    assert lr_exponents("A", "1") == (-0.5, -0.5)
    assert lr_exponents("A", "rslora") == (-0.5, -0.25)
    assert lr_exponents("A", "alpha/r") == (-0.5, 0.0)
    assert lr_exponents("B", "1") == (-1.0, 0.0)
    assert lr_exponents(loradyn.InitScheme.B, "1") == (-1.0, 0.0)
    assert lr_exponents("a", "1") == (-0.5, -0.5)  # case-insensitive, as init_lora_


def test_rules_table_is_tidy_and_consistent() -> None:
    table = lr_rules_table()
    assert list(table.columns) == [
        "quantity", "init", "alpha_rule", "peft_config", "gamma",
        "width_exponent", "rank_exponent", "rule", "published", "source",
    ]
    lr_rows = table[table.quantity == "lr"]
    assert len(lr_rows) == 6 and not lr_rows.duplicated(["init", "alpha_rule"]).any()
    for row in lr_rows.itertuples():
        assert (row.width_exponent, row.rank_exponent) == lr_exponents(row.init, row.alpha_rule)
        assert row.source.startswith("arXiv ") == row.published  # derived rows say so instead
    ratio = table[table.quantity == "lr_ratio"]
    assert set(ratio.init) == {"A", "B"} and (ratio.width_exponent == 1.0).all()
    assert table.loc[(table.init == "A") & (table.alpha_rule == "1/sqrt(r)"), "rule"].item() == "n^-1/2 · r^-1/4"
    assert set(lr_rows.loc[~lr_rows.published, "alpha_rule"]) == {"1/sqrt(r)", "1/r"}
    assert set(lr_rows.loc[~lr_rows.published, "init"]) == {"B"}


def test_one_vocabulary_of_alpha_rules_with_peft_aliases() -> None:
    from loradyn.scaling import alpha_value
    from loradyn.synthetic import SyntheticSpec

    assert [canonical_alpha_rule(r) for r in ("1", 1, "rslora", "1/sqrt(r)", "alpha/r", "1/r")] == [
        "1", "1", "1/sqrt(r)", "1/sqrt(r)", "1/r", "1/r"]
    for alias, rule in (("rslora", "1/sqrt(r)"), ("alpha/r", "1/r")):
        assert suggest_lr(LR, rank=(4, 64), alpha_rule=alias) == suggest_lr(LR, rank=(4, 64), alpha_rule=rule)
        spec = SyntheticSpec.from_dict({"lora": {"alpha_rule": alias, "rank": 16}})
        assert spec.lora.alpha_rule == rule and spec.lora.alpha == alpha_value(rule, 16)
    assert alpha_value("1/sqrt(r)", 16) == 0.25 and alpha_value("1/r", 16) == 1 / 16
    with pytest.raises(LoradynError, match="unknown alpha_rule 'fixed'"):
        canonical_alpha_rule("fixed")


def test_public_exports() -> None:
    assert loradyn.suggest_lr is suggest_lr
    assert loradyn.suggest_lr_ratio is suggest_lr_ratio


def test_accepts_numpy_scalars() -> None:
    np = pytest.importorskip("numpy")
    got = suggest_lr(np.float32(1e-3), width=(np.int64(256), np.int64(1024)))
    assert isinstance(got, float) and got == pytest.approx(5e-4, rel=1e-6)


# --- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("lr", [0, -1e-3, float("nan"), float("inf"), True, "1e-3", None])
def test_bad_lr(lr: object) -> None:
    with pytest.raises(LoradynError, match="lr must be a finite number > 0") as err:
        suggest_lr(lr, width=(1, 2))  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "width",
    [(0, 4), (4, -1), (2.5, 4), (True, 4), ("a", 4), (4,), (1, 2, 3), 1024, "1024", (None, 4)],
)
def test_bad_width_pair(width: object) -> None:
    with pytest.raises(LoradynError, match=r"width must .*width=\(n0, n1\)") as err:
        suggest_lr(LR, width=width)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
    with pytest.raises(LoradynError, match="width must"):
        suggest_lr_ratio(16, width=width)  # type: ignore[arg-type]


@pytest.mark.parametrize("rank", [(0, 4), (8, 0), (8, 1.5), 8])
def test_bad_rank_pair(rank: object) -> None:
    with pytest.raises(LoradynError, match=r"rank must .*rank=\(r0, r1\)"):
        suggest_lr(LR, rank=rank)  # type: ignore[arg-type]


def test_integral_floats_are_accepted() -> None:
    assert suggest_lr(LR, width=(256.0, 1024.0)) == pytest.approx(LR / 2, rel=REL)


@pytest.mark.parametrize("init", ["C", "", None, 1])
def test_bad_init(init: object) -> None:
    with pytest.raises(LoradynError, match="unknown init .*'A'.*'B'") as err:
        suggest_lr(LR, width=(1, 2), init=init)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
    with pytest.raises(LoradynError, match="unknown init"):
        suggest_lr_ratio(16, width=(1, 2), init=init)  # type: ignore[arg-type]


@pytest.mark.parametrize("alpha_rule", ["alpha", "sqrt", "", None, 2, "ALPHA/R"])
def test_bad_alpha_rule(alpha_rule: object) -> None:
    with pytest.raises(LoradynError, match=r"unknown alpha_rule .*'1'.*'1/sqrt\(r\)'.*'rslora'.*'1/r'.*'alpha/r'") as err:
        suggest_lr(LR, rank=(1, 2), alpha_rule=alpha_rule)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("ratio", [0, -16, float("nan"), float("inf"), False])
def test_bad_ratio(ratio: object) -> None:
    with pytest.raises(LoradynError, match="ratio must be a finite number > 0"):
        suggest_lr_ratio(ratio, width=(1, 2))  # type: ignore[arg-type]


def test_validation_happens_even_without_pairs() -> None:
    with pytest.raises(LoradynError):
        suggest_lr(LR, init="C")
    with pytest.raises(LoradynError):
        suggest_lr(LR, alpha_rule="nope")
    with pytest.raises(LoradynError):
        suggest_lr(-1.0)
