"""loradyn.plots.plot_feature_norms on short runs: visible points, no log scale it cannot draw, no warnings."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from loradyn.plots import plot_feature_norms

pytest.importorskip("matplotlib")


def _table(rows, hue="A"):
    return pd.DataFrame([{"step": s, "feature": f, "stat": "rms", "value": v, "lora.init": hue, "seed": seed}
                         for s, f, v, seed in rows])


def _draw(probes, curves=None):
    """The figure, with every warning an error (matplotlib's log-scale warnings included)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plot_feature_norms(probes, curves, hue="lora.init")
        fig.canvas.draw()  # tick locators run here: a log axis over no positive data fails/warns here
    return fig


def _points(ax) -> list[tuple[list[float], list[float], str]]:
    return [(list(map(float, line.get_xdata())), list(map(float, line.get_ydata())), line.get_marker())
            for line in ax.get_lines()]


def _close(fig):
    from matplotlib import pyplot as plt

    plt.close(fig)


def test_a_single_recorded_step_is_drawn_as_a_marker():
    """Before: one point per series became a line without markers, an empty-looking panel."""
    fig = _draw(_table([(3, "z_a", 1.0, 0), (3, "z_a", 1.2, 1), (3, "z_b", 2.0, 0), (3, "z_b", 4.0, 1)]))
    za, zb = fig.axes
    assert _points(za) == [([3.0], [1.1], "o")] and _points(zb) == [([3.0], [3.0], "o")]
    assert za.get_yscale() == "log" and za.get_xlim()[0] < 3 < za.get_xlim()[1]
    assert len(za.collections) == 1  # the min-max bar over seeds
    _close(fig)


def test_zeros_at_step_zero_keep_their_points_without_a_warning():
    """Before: Z_B = 0 at step 0 (Init[A]) on a log axis: matplotlib warned "Data has no positive
    values" and the panel was empty."""
    only_zero = _table([(0, "z_a", 0.5, 0), (0, "z_b", 0.0, 0)])
    fig = _draw(only_zero)
    za, zb = fig.axes
    assert za.get_yscale() == "log" and zb.get_yscale() == "linear"
    assert _points(zb) == [([0.0], [0.0], "o")]
    _close(fig)
    grows = _table([(0, "z_b", 0.0, 0), (1, "z_b", 1e-3, 0), (2, "z_b", 1e-1, 0), (0, "z_a", 1.0, 0)])
    fig = _draw(grows)
    zb = fig.axes[1]
    assert zb.get_yscale() == "symlog" and _points(zb) == [([0.0, 1.0, 2.0], [0.0, 1e-3, 1e-1], "o")]
    _close(fig)


def test_non_finite_and_missing_values_leave_a_note_not_an_error():
    """Before: a panel of only inf/nan values raised "Data cannot be log-scaled"."""
    probes = _table([(0, "z_a", math.inf, 0), (1, "z_a", math.nan, 0)])
    curves = pd.DataFrame({"step": [0, 1], "metric": "train_loss", "value": [0.5, math.inf], "lora.init": "A"})
    fig = _draw(probes, curves)
    za, zb, loss = fig.axes
    assert [t.get_text() for t in za.texts] == ["no finite values"] and za.get_yscale() == "linear"
    assert [t.get_text() for t in zb.texts] == ["no records"]
    assert _points(loss) == [([0.0], [0.5], "o")] and loss.get_yscale() == "log"
    assert loss.get_legend() is not None  # the legend goes to the first panel with lines
    _close(fig)


def test_long_series_are_lines_without_markers():
    steps = np.arange(100)
    fig = _draw(_table([(int(s), f, 1.0 + s, 0) for s in steps for f in ("z_a", "z_b")]))
    assert all(marker in ("None", "", None) for *_, marker in _points(fig.axes[0]))
    assert fig.axes[0].get_yscale() == "log"
    _close(fig)
