"""``loradyn tune SPEC --proxy KEY=VALUE… --target KEY=VALUE… --out DIR``: the command line of
:func:`loradyn.tune` (registered by :mod:`loradyn.cli`).

Exit codes: 0 a recommendation (its confirmation holds or is undecided, as printed); 1 no
recommendation (every confirmation trial diverged or failed); 2 bad input, one line — including a
target equal to the proxy, for which a plain sweep of the target runs instead.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_parser", "run"]

EPILOG = """\
Writes DIR/recommendation.json (init, lr_a, lr_ratio, lr_b, transferred_lr_a, confirm, compute_fraction),
DIR/peft_snippet.py (LoraConfig + TrainingArguments), DIR/evidence.csv and DIR/tune.png; the proxy and
confirmation sweeps live in DIR/proxy and DIR/confirm, so re-running resumes.

example:
  loradyn tune mine.yaml --proxy lora.rank=4 train.steps=50 --target lora.rank=64 --out runs/tune
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``tune`` verb to the CLI's subparsers."""
    p = sub.add_parser("tune", help="the learning rate for a target from a cheap proxy, transferred and confirmed",
                       description="Tune lr_a (and lora.init, optim.lr_ratio where the spec sweeps them) on a cheap "
                                   "proxy, move the optimum to the target with the muA / LoRA+ rules, confirm it with "
                                   "a short sweep at the target.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="sweep YAML file (any task kind)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides for both proxy and target")
    p.add_argument("--proxy", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides that make the proxy (default: loradyn picks rank r/4 (at most 4), one seed, "
                        "a one-octave lr grid)")
    p.add_argument("--target", nargs="+", default=[], metavar="KEY=VALUE", help="overrides that make the target")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created or resumed)")
    p.add_argument("--seeds", type=int, default=None, metavar="N", help="seeds of the confirmation (default: the spec's)")
    p.add_argument("--alpha-rule", default=None, metavar="RULE",
                   help="how the LoRA multiplier moves with the rank where the spec does not say: 1 (lora_alpha "
                        "proportional to r), 1/sqrt(r) (rsLoRA) or 1/r (fixed lora_alpha)")
    p.add_argument("--width", type=int, nargs=2, default=None, metavar=("N0", "N1"),
                   help="proxy and target width where the spec cannot say (e.g. a python trial)")
    p.add_argument("--search", choices=("bracket", "grid", "tpe"), default="bracket",
                   help="the proxy search: bracket (Optuna's grid sampler over 3 start points per column, then a walk "
                        "to the measured local optimum; default), grid (every coarse point) or tpe (--proxy-trials points)")
    p.add_argument("--proxy-trials", type=int, default=None, metavar="N", help="points the tpe search asks for")
    p.add_argument("--prune", action="store_true",
                   help="successive halving (Optuna's pruner): every proxy point first trains 1/3 of the steps, only "
                        "the promoted ones all of them; pays for long trials or large spaces (default: off)")
    p.add_argument("--budget", default=None, metavar="N|Ns|Nm|Nh",
                   help="at most N trials, or that many trial-seconds (600s, 10m, 1.5h)")
    p.add_argument("--executor", choices=("serial", "process", "ray"), default="process")
    p.add_argument("--workers", type=int, default=None, metavar="N")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``loradyn tune``; returns the exit code."""
    from .api import tune

    result = tune(args.spec, out=args.out, proxy=args.proxy, target=args.target, overrides=args.overrides,
                  seeds=args.seeds, alpha_rule=args.alpha_rule, width=args.width, search=args.search,
                  proxy_trials=args.proxy_trials, prune=args.prune, budget=args.budget,
                  executor=args.executor, workers=args.workers, quiet=args.quiet)
    if result.plain_sweep is not None:
        print(f"loradyn: error: {result.message}", file=sys.stderr, flush=True)
        return 2
    rec = result.recommendation
    return 0 if rec.get("lr_a") is not None else 1
