"""``loradyn report DIR``: a self-contained ``report.html`` (plots as base64 PNG, tables) + ``report.md``.

For every sweep store at or below ``DIR`` (one sweep, or ``reproduce all``'s experiment folders)
the report shows: the status counts; the final metric vs learning rate per init with seed bands;
the optimal learning rate per init (seed-mean argmin, refined by a quadratic over the near-optimal
band in log2(lr), with its seed-bootstrap CI);
lr_a x lr_b heatmaps when the sweep varies ``optim.lr_ratio`` or ``optim.lr_b``; Z_A/Z_B curves
from the probe records; the verdict table from ``summary.json``; and the experiment's own PNG
figures. ``report.md`` references the same figures saved under ``DIR/report_files/``.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from .errors import LoradynError
from .sweep import figures
from .sweep.store import SweepStore
from .sweep.tables import find_stores, record_table, results_frame

__all__ = ["write_report"]

Block = tuple[str, Any]  # ("h2" | "h3" | "p", text), ("table", DataFrame), ("img", (name, png, caption))


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _experiment_dir(root: Path, sweep_dir: Path) -> Path:
    """The nearest folder at or above ``sweep_dir`` (within ``root``) holding ``summary.json``."""
    for folder in (sweep_dir, *sweep_dir.parents):
        if (folder / "summary.json").is_file():
            return folder
        if folder == root:
            break
    return sweep_dir


def _verdict_blocks(summary_path: Path) -> list[Block]:
    import pandas as pd

    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        return [("p", f"could not read {summary_path.name}")]
    verdicts = summary.get("verdicts") if isinstance(summary, dict) else None
    if not verdicts:
        return []
    table = pd.DataFrame(verdicts)
    if "status" not in table:  # a summary written before verdicts had three values
        table["status"] = table["holds"].map(lambda v: "holds" if v else "fails")
    if "ci" in table:  # the 95 % seed-bootstrap CI of the statistic a verdict was decided on
        from .verdicts import fmt_ci

        table["ci"] = table["ci"].map(lambda ci: fmt_ci(ci) if isinstance(ci, list) else "")
        table = table.rename(columns={"ci": "95% CI"})
    table = table[[c for c in ("status", "claim", "expected", "measured", "95% CI", "reason") if c in table]]
    counts = table["status"].value_counts()
    text = (f"{len(table)} claims: {counts.get('holds', 0)} hold, {counts.get('fails', 0)} fail, "
            f"{counts.get('undecided', 0)} undecided (the data cannot decide them; the reason column says why). "
            "A claim with a 95 % CI holds when its prediction lies inside the CI and the CI is within the "
            "tolerance, fails when the prediction lies outside it.")
    return [("h3", "Verdicts"), ("p", text), ("table", table)]


def _best_vs_best(view: figures.SweepView):
    """Per facet: (where, table, verdicts) of each method (init, LoRA+ ratio) at its own optimal lr."""
    from .comparison import best_vs_best

    for key, group in view.groups(view.facets):
        table, verdicts = best_vs_best(group, metric=view.metric, mode=view.mode)
        if not table.empty:
            yield ", ".join(f"{c}={v}" for c, v in zip(view.facets, key)), table, verdicts


def _best_vs_best_blocks(view: figures.SweepView) -> list[Block]:
    """Each method (init, LoRA+ ratio) at its own optimal lr, best first, with the verdicts."""
    blocks: list[Block] = []
    for where, table, verdicts in _best_vs_best(view):
        blocks += [("h3", "Best vs best" + (f" ({where})" if where else "")),
                   ("p", f"Each method at its own optimal learning rate (the grid lr with the best seed-mean "
                    f"{view.metric}), best first; a difference decides only beyond the seed std."),
                   ("table", table)]
        if verdicts:
            blocks.append(("table", _verdict_frame(verdicts)))
    return blocks


def _verdict_frame(verdicts) -> Any:
    import pandas as pd

    return pd.DataFrame([{k: v for k, v in d.to_dict().items() if k != "holds" and not (k == "ci" and v is None)}
                         for d in verdicts])


def analysis_tables(directory: str | Path) -> list[tuple[str, Any]]:
    """Titled tables for ``loradyn results``: per sweep at or below ``directory``, the optimal learning
    rate of each series and the best-vs-best comparison with its verdicts (as in the report)."""
    out: list[tuple[str, Any]] = []
    for sweep_dir in find_stores(directory):
        store = SweepStore.open(sweep_dir)
        try:
            df = results_frame(store)
        finally:
            store.close()
        spec = _load_yaml(sweep_dir / "spec.yaml")
        if df.empty:
            continue
        view = figures.SweepView.from_results(df, metric=spec.get("metric"), mode=spec.get("mode") or "min")
        name = spec.get("name") or sweep_dir.name
        if view.lr is None or view.metric is None:
            continue
        best = figures.optimal_lr_table(view)
        if not best.empty:
            out.append((f"{name}: optimal learning rate ({view.metric}, {view.mode})", best))
        if view.lr == "optim.lr_a":
            for where, table, verdicts in _best_vs_best(view):
                title = f"{name}: best vs best" + (f" ({where})" if where else "")
                out.append((title, table))
                if verdicts:
                    out.append((f"{title}: verdicts", _verdict_frame(verdicts)))
    return out


def _sweep_blocks(root: Path, sweep_dir: Path, counter: list[int]) -> list[Block]:
    store = SweepStore.open(sweep_dir)
    try:
        df = results_frame(store)
        probes = record_table(store, "probes")
        curves = record_table(store, "curves")
    finally:
        store.close()
    spec = _load_yaml(sweep_dir / "spec.yaml")
    name = spec.get("name") or sweep_dir.name
    blocks: list[Block] = [("h3", f"Sweep {name}"), ("p", f"Store: {sweep_dir / 'sweep.db'}")]
    counts = df["status"].value_counts()
    blocks.append(("p", f"{len(df)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items())))
    failed = df[df["status"] == "failed"]
    failures: list[Block] = []
    if len(failed):
        failures = [("h3", "Failed trials (one per distinct error)"),
                    ("table", failed[["trial_id", "error"]].drop_duplicates("error").head(10))]
    failures += _alarm_blocks(df)
    if df.empty:
        return blocks
    view = figures.SweepView.from_results(df, metric=spec.get("metric"), mode=spec.get("mode") or "min")
    if view.metric is None:
        blocks.append(("p", "No numeric metric recorded yet."))
        return blocks + failures

    def img(make, caption: str) -> None:
        try:
            fig = make()
        except ImportError:
            blocks.append(("p", "(figures need matplotlib: pip install 'loradyn[plot]')"))
            return
        if fig is not None:
            counter[0] += 1
            blocks.append(("img", (f"fig{counter[0]:02d}.png", figures.to_png(fig), caption)))

    if view.heatmap_axes() is not None:
        img(lambda: figures.lr_heatmaps(view), f"Seed-mean {view.metric} over lr_a x lr_b "
            "(dashed: the diagonal lr_b = lr_a; star: best cell; circles: within 1 % of it)")
        pairs = figures.best_pair_table(view)
        if not pairs.empty:
            blocks += [("h3", "Best (lr_a, lr_b)"),
                       ("p", "Best cell of the seed-mean grid and the best cell on the diagonal lr_b = lr_a "
                        "(gain = diagonal loss / best loss; edge: the optimum touches the grid's border)."),
                       ("table", pairs)]
    elif view.lr is not None:
        img(lambda: figures.metric_vs_lr(view), f"Final {view.metric} vs {view.lr} "
            "(line: seed mean; band: min-max over seeds; dotted: optimal lr)")
        best = figures.optimal_lr_table(view)
        if not best.empty:
            blocks += [("h3", "Optimal learning rate"),
                       ("p", f"Seed-mean {view.mode} of {view.metric} on the grid (lr_grid_opt); lr_opt is "
                        "refined by a quadratic in log2(lr) over the near-optimal band; log2_lr_lo and "
                        "log2_lr_hi are its 95 % seed-bootstrap CI; edge marks an optimum at the end of "
                        "the grid (or next to a diverged learning rate)."),
                       ("table", best)]
    if view.lr == "optim.lr_a":
        blocks += _best_vs_best_blocks(view)
    if not probes.empty:
        shown = len(blocks)
        img(lambda: figures.feature_norm_curves(view, probes, curves), "Z_A and Z_B norms (and the train "
            "loss) over training steps, at each series' best learning rate (line: mean over seeds and "
            "modules; band: min-max; y axis: log, or symlog when a panel holds zeros)")
        if len(blocks) == shown:
            blocks.append(("p", "No Z_A / Z_B records for the trials at the best learning rates."))
    return blocks + failures


def _alarm_blocks(df) -> list[Block]:
    """The trials the instability alarm stopped (docs/alarm.md): where, what, and one fix line each."""
    if "alarm_step" not in df or not df["alarm_step"].notna().any():
        return []
    alarmed = df[df["alarm_step"].notna()]
    cols = [c for c in ("lora.init", "optim.lr_a", "optim.lr_ratio", "lora.rank", "seed", "alarm_step", "alarm_layer",
                        "alarm_feature", "alarm_value", "alarm_threshold") if c in df]
    fixes = [("p", line) for line in alarmed["error"].dropna().str.partition("likely fix: ")[2].drop_duplicates().head(3)
             if line]
    return [("h3", f"Trials stopped by the instability alarm ({len(alarmed)})"),
            ("p", "Each was frozen at alarm_step and counts as diverged; the likely fixes:"), *fixes,
            ("table", alarmed[cols].head(20))]


def _created(sweep_dir: Path) -> float:
    store = SweepStore.open(sweep_dir)
    try:
        value = store.get_meta("created")
    finally:
        store.close()
    return float(value) if value else (sweep_dir / "sweep.db").stat().st_mtime


def _ordered(root: Path, stores: list[Path]) -> list[Path]:
    """Experiments in the order of the root summary's ``experiments`` (reproduce all), else by
    creation; the sweeps of one experiment in the order they were created."""
    order: list[str] = []
    try:
        summary = json.loads((root / "summary.json").read_text())
        if isinstance(summary, dict) and isinstance(summary.get("experiments"), dict):
            order = list(summary["experiments"])
    except (OSError, ValueError):
        pass
    created = {d: _created(d) for d in stores}
    first: dict[Path, float] = {}
    for d in stores:
        exp = _experiment_dir(root, d)
        first[exp] = min(first.get(exp, created[d]), created[d])

    def key(d: Path):
        exp = _experiment_dir(root, d)
        rank = order.index(exp.name) if exp.name in order else len(order)
        return (rank, first[exp], created[d])

    return sorted(stores, key=key)


def _collect(root: Path) -> list[Block]:
    stores = _ordered(root, find_stores(root))
    blocks: list[Block] = []
    counter = [0]
    experiments = {_experiment_dir(root, d) for d in stores}
    if (root / "summary.json").is_file() and root not in experiments:  # reproduce all's overall summary
        overall = _verdict_blocks(root / "summary.json")
        blocks += [(kind, "Verdicts (all experiments)" if kind == "h3" else value) for kind, value in overall]
    seen: set[Path] = set()
    for sweep_dir in stores:
        exp = _experiment_dir(root, sweep_dir)
        if exp not in seen:
            seen.add(exp)
            title = "." if exp == root else str(exp.relative_to(root))
            if exp != root:
                blocks.append(("h2", title))
            if (exp / "summary.json").is_file():
                blocks += _verdict_blocks(exp / "summary.json")
            for png in sorted(exp.glob("*.png")):
                name = f"{'' if exp == root else title.replace('/', '_') + '_'}{png.name}"
                blocks.append(("img", (name, png.read_bytes(), f"{png.name} (written by the experiment)")))
        blocks += _sweep_blocks(root, sweep_dir, counter)
    return blocks


def _fmt_table(table, fmt: str) -> str:
    import pandas as pd

    table = table.copy()
    for col in table.columns:
        if pd.api.types.is_float_dtype(table[col]):
            table[col] = table[col].map(lambda v: "" if pd.isna(v) else f"{v:.4g}")
    if fmt == "md":
        header = "| " + " | ".join(map(str, table.columns)) + " |"
        sep = "|" + "---|" * len(table.columns)
        rows = ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"
                for row in table.itertuples(index=False)]
        return "\n".join([header, sep, *rows])
    return table.to_html(index=False, escape=True, border=0, classes="t")


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #ccc}h2{margin-top:2em;border-bottom:1px solid #ddd}
table.t{border-collapse:collapse;margin:.5em 0;font-size:90%}table.t td,table.t th{border:1px solid #ccc;
padding:3px 8px;text-align:right}figure{margin:1em 0}img{max-width:100%}figcaption{color:#555;font-size:90%}"""


def write_report(directory: str | Path, *, title: str | None = None, out: str | Path | None = None) -> dict[str, Path]:
    """Write ``report.html`` and ``report.md`` for the sweep(s) at or below ``directory``, into
    ``out`` (default: ``directory``; a store on read-only media is read in place).

    Returns:
        ``{"html": path, "md": path}``.

    Raises:
        LoradynError: no sweep store at or below ``directory``; ``out`` cannot be written.
    """
    root = Path(directory)
    blocks = _collect(root)
    title = title or f"loradyn report: {root}"
    target = Path(out) if out is not None else root
    try:
        return _write(target, title, blocks)
    except OSError as err:
        why = err.strerror or str(err)
        raise LoradynError(f"cannot write the report into {str(target)!r} ({why}): give another folder, "
                           f"loradyn report {root} --out DIR") from None


def _write(root: Path, title: str, blocks: list[Block]) -> dict[str, Path]:
    files = root / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    out_html = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    out_md = [f"# {title}", ""]
    for kind, value in blocks:
        if kind in ("h2", "h3", "p"):
            out_html.append(f"<{kind}>{html.escape(value)}</{kind}>")
            out_md += [{"h2": "## ", "h3": "### ", "p": ""}[kind] + value, ""]
        elif kind == "table":
            out_html.append(_fmt_table(value, "html"))
            out_md += [_fmt_table(value, "md"), ""]
        elif kind == "img":
            name, png, caption = value
            (files / name).write_bytes(png)
            data = base64.b64encode(png).decode()
            out_html.append(f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(name)}'>"
                            f"<figcaption>{html.escape(caption)}</figcaption></figure>")
            out_md += [f"![{caption}](report_files/{name})", ""]
    out_html.append("</body></html>")
    paths = {"html": root / "report.html", "md": root / "report.md"}
    paths["html"].write_text("\n".join(out_html))
    paths["md"].write_text("\n".join(out_md))
    return paths
