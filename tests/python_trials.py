"""Training functions of a "user" for the tests of the ``python`` kind (task.entry: "python_trials:...")."""

from __future__ import annotations

import math


def quadratic(config, report):
    """Gradient descent on (w - 0.3)^2 at optim.lr_a for train.steps steps; reports every step."""
    lr, steps = config["optim"]["lr_a"], config["train"]["steps"]
    w = 0.1 * config["seed"]
    for step in range(1, steps + 1):
        w -= lr * 2 * (w - 0.3)
        report(step, loss=(w - 0.3) ** 2)
    return {"loss": (w - 0.3) ** 2, "w": w, "scale": config.get("extra", {}).get("scale", 1.0)}


def blows_up(config, report):
    return {"loss": math.inf}


def returns_a_list(config, report):
    return [1.0]


def raises(config, report):
    raise RuntimeError("the user's training crashed\nwith a second line")


NOT_CALLABLE = 3


def length_score(generated, row):
    """A user's scoring function for hf-sft: 1 when the generated text is as long as the answer."""
    return float(len(generated.strip()) == len(str(row["completion"])))
