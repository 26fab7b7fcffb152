"""The ``loradyn`` command line: each verb is one call into the public API.

Verbs: ``sweep``, ``reproduce``, ``results``, ``report``, ``validate``, ``suggest-lr``, ``tune``, ``demo``.
Exit codes: 0 success; 1 a run failed (a trial ``failed``) or a verdict did not hold; 2 bad input
(a :class:`~loradyn.errors.LoradynError`, an unreadable file or a usage error), always reported
as ONE line ``loradyn: error: ...`` on stderr, never a traceback; 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import LoradynError

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``loradyn: error: ...``) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{message} (see {self.prog} --help)")


def _say(*parts: Any) -> None:
    print(*parts, flush=True)


def _add_max_trials(p: argparse.ArgumentParser) -> None:
    from .sweep.spec import DEFAULT_MAX_TRIALS

    p.add_argument("--max-trials", type=int, default=DEFAULT_MAX_TRIALS, metavar="N",
                   help=f"refuse a sweep of more trials, counted before expanding (default: {DEFAULT_MAX_TRIALS:,})")


def _add_run_options(p: argparse.ArgumentParser, *, default_executor: str = "process") -> None:
    p.add_argument("--executor", choices=("serial", "process", "ray"), default=default_executor,
                   help=f"where packs run (default: {default_executor})")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="parallel packs (default: the CPU count)")
    p.add_argument("--quiet", action="store_true", help="no progress output (for logs)")
    p.add_argument("--gpus", default=None, metavar="all|0,1",
                   help="process executor: one worker per GPU, each seeing only its own (CUDA_VISIBLE_DEVICES)")


def _experiment_listing() -> str:
    from .experiments import experiments

    found = experiments()
    width = max(len(e) for e in found)
    lines = [f"  {e.id.ljust(width)}  {e.description}" for e in found.values()]
    lines.append(f"  {'all'.ljust(width)}  every experiment above that runs in 'all' (the synthetic ones), in order")
    return "experiments:\n" + "\n".join(lines)


def _build_parser(list_experiments: bool = False) -> argparse.ArgumentParser:
    parser = _Parser(prog="loradyn", description="LoRA learning dynamics: sweeps, reproductions, reports.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"loradyn {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("sweep", help="run or resume a sweep", description="Run (or resume) a sweep "
                       "into DIR; finished trials are never re-run.")
    p.add_argument("spec", help="sweep YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr_ratio=4")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep directory (created or resumed)")
    _add_run_options(p)
    p.add_argument("--ray-address", default=None, metavar="ADDR", help="Ray cluster (with --executor ray)")
    p.add_argument("--retry-failed", action="store_true", help="run previously failed trials again")
    _add_max_trials(p)

    p = sub.add_parser("reproduce", help="reproduce a paper experiment with verdicts",
                       description="Reproduce one of the papers' experiments and print whether each claim held.",
                       epilog=_experiment_listing() if list_experiments else None,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", metavar="ID", help="experiment id, or 'all'")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. lora.rank=8")
    p.add_argument("--quick", action="store_true", help="reduced grid (minutes)")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (default: runs/<ID>)")
    p.add_argument("--seeds", type=int, default=None, metavar="N", help="number of seeds")
    _add_run_options(p)

    p = sub.add_parser("results", help="print or export a sweep's results table")
    p.add_argument("dir", metavar="DIR", help="sweep directory (or a parent of several)")
    p.add_argument("--format", choices=("table", "csv", "parquet"), default="table")
    p.add_argument("--output", default=None, metavar="FILE", help="write to FILE instead of stdout")

    p = sub.add_parser("report", help="write report.html and report.md for a sweep or reproduction")
    p.add_argument("dir", metavar="DIR", help="sweep directory, or a parent of several")
    p.add_argument("--out", default=None, metavar="OUT", help="write the report into OUT (default: DIR)")

    p = sub.add_parser("validate", help="check a sweep spec and print it resolved (no run)")
    p.add_argument("spec", help="sweep YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    _add_max_trials(p)

    p = sub.add_parser("suggest-lr", help="transfer a learning rate across width and rank")
    p.add_argument("--lr", type=float, required=True, help="learning rate tuned at (n0, r0)")
    p.add_argument("--width", type=int, nargs=2, default=None, metavar=("N0", "N1"))
    p.add_argument("--rank", type=int, nargs=2, default=None, metavar=("R0", "R1"))
    p.add_argument("--init", default="A", help="A (Init[A]) or B (Init[B])")
    p.add_argument("--alpha-rule", default="1/r",
                   help="how the multiplier moves with the rank: 1/r (fixed lora_alpha, PEFT's default; alias "
                        "alpha/r), 1/sqrt(r) (rsLoRA; alias rslora) or 1 (lora_alpha proportional to r)")
    p.add_argument("--lr-ratio", type=float, default=None, help="also transfer a LoRA+ ratio lr_b/lr_a")

    from .tuning.cli import add_parser as add_tune_parser

    add_tune_parser(sub)  # loradyn tune: its options live with it (loradyn.tuning.cli)

    p = sub.add_parser("demo", help="reproduce all --quick, then write the report")
    p.add_argument("--out", default="runs/demo", metavar="DIR")
    _add_run_options(p)
    return parser


# ---- verbs ------------------------------------------------------------------------------------
def _cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import run_sweep

    df = run_sweep(args.spec, args.out, overrides=args.overrides, executor=args.executor,
                   workers=args.workers, quiet=args.quiet, ray_address=args.ray_address,
                   retry_failed=args.retry_failed, max_trials=args.max_trials, gpus=args.gpus)
    counts = df["status"].value_counts().to_dict()
    summary = ", ".join(f"{counts[s]} {s}" for s in ("done", "diverged", "failed", "pending", "running") if counts.get(s))
    _say(f"sweep {df.attrs.get('name', '')}: {len(df)} trials ({summary or 'none'})")
    _say(f"wrote {Path(args.out) / 'sweep.db'} (results: loradyn results {args.out})")
    failed = df[df["status"] == "failed"]
    for _, row in failed.head(5).iterrows():
        print(f"failed {row['trial_id']}: {row['error']}", file=sys.stderr)
    return EXIT_FAILED if len(failed) else EXIT_OK


def _verdicts(obj: Any) -> list[dict[str, Any]]:
    """The summary's ``verdicts``; without a top-level list, those of its nested summaries."""
    if isinstance(obj, dict):
        if isinstance(obj.get("verdicts"), list):
            return [v for v in obj["verdicts"] if isinstance(v, dict)]
        return [v for value in obj.values() for v in _verdicts(value)]
    if isinstance(obj, list):
        return [v for value in obj for v in _verdicts(value)]
    return []


def _reproduce(args: argparse.Namespace, experiment: str, out: str, quick: bool) -> int:
    from .experiments import reproduce

    summary = reproduce(experiment, out=out, quick=quick, seeds=getattr(args, "seeds", None),
                        overrides=tuple(getattr(args, "overrides", ())), executor=args.executor,
                        workers=args.workers, quiet=args.quiet, gpus=args.gpus)
    verdicts = _verdicts(summary)
    # a verdict fails only when the data decided against it; "undecided" is reported, not failed
    failed = [v for v in verdicts if v.get("status", "holds" if v.get("holds") else "fails") == "fails"]
    undecided = sum(1 for v in verdicts if v.get("status") == "undecided")
    _say(f"reproduce {experiment}: {len(verdicts)} verdicts: {len(verdicts) - len(failed) - undecided} hold, "
         f"{len(failed)} fail, {undecided} undecided")
    _say(f"wrote {out}")
    return EXIT_FAILED if failed else EXIT_OK


def _cmd_reproduce(args: argparse.Namespace) -> int:
    out = args.out or str(Path("runs") / args.experiment)
    return _reproduce(args, args.experiment, out, args.quick)


def _cmd_results(args: argparse.Namespace) -> int:
    from .sweep import load_results

    df = load_results(args.dir)
    if args.format == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise LoradynError("--format parquet needs pyarrow: pip install pyarrow") from None
        target = args.output or str(Path(args.dir) / "results.parquet")
        df.to_parquet(target, index=False)
        _say(f"wrote {target} ({len(df)} trials)")
        return EXIT_OK
    if args.format == "csv":
        if args.output:
            df.to_csv(args.output, index=False)
            print(f"wrote {args.output} ({len(df)} trials)", file=sys.stderr)
        else:
            df.to_csv(sys.stdout, index=False)
        return EXIT_OK
    text = _table(df)
    from .report import analysis_tables

    for title, table in analysis_tables(args.dir):  # the one analysis: optima, best vs best, verdicts
        text += f"\n\n# {title}\n" + _table_text(table)
    if args.output:
        Path(args.output).write_text(text + "\n")
        _say(f"wrote {args.output} ({len(df)} trials)")
    else:
        _say(text)
    return EXIT_OK


def _table(df) -> str:
    """A readable view: the config columns that vary, seed, status, metrics, error."""
    cols = list(df.columns)
    seed_at = cols.index("seed")
    config = [c for c in cols[:seed_at] if c not in ("trial_id",)]
    varying = [c for c in config if df[c].astype(str).nunique() > 1]
    shown = varying + cols[seed_at:]
    shown = [c for c in shown if c != "seconds" and not (c == "error" and df[c].isna().all())]
    return _table_text(df[shown])


def _table_text(df) -> str:
    import pandas as pd

    with pd.option_context("display.max_rows", 500, "display.max_columns", 50, "display.width", 200,
                           "display.max_colwidth", 120):
        return df.to_string(index=False)


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    paths = write_report(args.dir, out=args.out)
    _say(f"wrote {paths['html']}")
    _say(f"wrote {paths['md']}")
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    import yaml

    from .sweep.runner import validate_inputs
    from .sweep.spec import count_line, expand, plan_packs, resolve_sweep
    from .tasks.registry import get_task

    sweep = resolve_sweep(args.spec, args.overrides, max_trials=args.max_trials)
    _say(f"# {count_line(sweep)}")  # before expanding: a large grid takes a while
    task = get_task(sweep.kind)
    trials = expand(sweep, task)
    packs = plan_packs(task, trials)
    validate_inputs(task, packs)  # data, model, device: bad input is one line here, before any training
    _say(yaml.safe_dump(sweep.to_dict(), sort_keys=False).rstrip())
    if task.describe is not None:  # what the task found: data, columns, split sizes, model, device
        seen: list[str] = []
        for pack in packs:
            text = task.describe(pack.trials[0].config)
            if text not in seen:
                seen.append(text)
                _say("\n".join(f"# {line}" for line in text.splitlines()))
    _say(f"# valid: {len(trials)} trials in {len(packs)} packs (task {sweep.kind!r}); nothing written")
    return EXIT_OK


def _cmd_suggest_lr(args: argparse.Namespace) -> int:
    from .scaling import (
        canonical_alpha_rule,
        is_published,
        lr_exponents,
        suggest_lr,
        suggest_lr_ratio,
    )

    width = tuple(args.width) if args.width else None
    rank = tuple(args.rank) if args.rank else None
    lr = suggest_lr(args.lr, width=width, rank=rank, init=args.init, alpha_rule=args.alpha_rule)
    rule = canonical_alpha_rule(args.alpha_rule)
    w_exp, r_exp = lr_exponents(args.init, rule)
    moves = [f"{name} {a} -> {b}" for name, pair in (("width", width), ("rank", rank)) if pair
             for a, b in [pair]]
    derived = rank is not None and rank[0] != rank[1] and not is_published(args.init, rule)
    status = ("rank rule DERIVED HERE, NOT PUBLISHED (docs/theory.md §5.1): check it with a sweep"
              if derived else "published rule")
    _say(f"lr = {lr:.6g}   (from {args.lr:g}; Init[{args.init.upper()}], alpha_rule {rule}: "
         f"lr ∝ n^{w_exp:g} · r^{r_exp:g}; {', '.join(moves) or 'no change'}; {status})")
    if args.lr_ratio is not None:
        # LoRA+ (arXiv 2402.12354): lr_a ∝ n^-1 and lr_b = Θ(1), so the ratio grows ∝ n and lr_b
        # stays fixed. Here --lr is read as the tuned lr_a of a LoRA+ run.
        ratio = suggest_lr_ratio(args.lr_ratio, width=width, init=args.init)
        n0, n1 = width if width else (1, 1)
        lr_a = args.lr * n0 / n1
        _say(f"LoRA+: lr_a = {lr_a:.6g}, lr_ratio = {ratio:.6g}, lr_b = {lr_a * ratio:.6g}   "
             f"(lr_a ∝ n^-1, lr_b/lr_a ∝ n, lr_b width-independent; rank not modelled)")
    return EXIT_OK


def _cmd_tune(args: argparse.Namespace) -> int:
    from .tuning.cli import run

    return run(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .report import write_report

    code = _reproduce(args, "all", args.out, quick=True)
    paths = write_report(args.out)
    _say(f"report: {paths['html']}")
    # The demo is a showcase: verdicts that do not hold are printed above (and in the report),
    # but they do not make `make demo` fail. `loradyn reproduce` exits 1 on them.
    if code == EXIT_FAILED:
        _say("demo: some claims did not hold in the --quick reproduction (see the verdict table)")
    return EXIT_OK


_COMMANDS = {
    "sweep": _cmd_sweep,
    "reproduce": _cmd_reproduce,
    "results": _cmd_results,
    "report": _cmd_report,
    "validate": _cmd_validate,
    "suggest-lr": _cmd_suggest_lr,
    "tune": _cmd_tune,
    "demo": _cmd_demo,
}


def _error(message: Any) -> int:
    text = " ".join(str(message).split()) or "unknown error"
    print(f"loradyn: error: {text}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def _attach_negative_numbers(argv: list[str]) -> list[str]:
    """``--lr -1e-3`` -> ``--lr=-1e-3``: argparse would read a negative number in exponent form as
    an option and report a missing value instead of the value's own one-line error."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and arg.startswith("-"):
            try:
                float(arg)
            except ValueError:
                pass
            else:
                out[-1] = f"{out[-1]}={arg}"
                continue
        out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failed run or verdict, 2 bad input)."""
    argv = _attach_negative_numbers(list(argv) if argv is not None else sys.argv[1:])
    parser = _build_parser(list_experiments=argv[:1] == ["reproduce"])
    try:
        args, extra = parser.parse_known_args(argv)
        # dotted key=value overrides may come after options (`reproduce ID --quick lora.rank=8`)
        stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
        if stray:
            parser.error(f"unrecognized arguments: {' '.join(stray)}")
        if extra:
            args.overrides = [*args.overrides, *extra]
    except _UsageError as err:
        return _error(err)
    except SystemExit as exit_:  # --help, --version
        return int(exit_.code or 0)
    try:
        return _COMMANDS[args.verb](args)
    except LoradynError as err:
        return _error(err)
    except KeyboardInterrupt:
        print("loradyn: interrupted (re-run the same command to resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `loradyn results DIR | head`: the reader left; not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except OSError as err:  # unreadable or unwritable files, a full or read-only disk
        return _error(f"{err.strerror or err}: {err.filename}" if err.filename else err)
