"""The paper's tables from a sweep's results store, with the paper's numbers beside ours.

    python -m analysis.tables SWEEP_DIR [--dataset cifar10] [--format markdown|csv|latex|html] [--out FILE]

For each dataset in the sweep: CIFAR-10 Tables I (AUC per class) and II (mean over classes); MVTec AD Tables III
(maxBA per category), IV (AUC) and V (means); ShanghaiTech Table VI; any other dataset (the digits demo) gets the
same per-class AUC and maxBA tables and their means, without paper columns (the paper has none). Then the chosen
configurations, the layer ablation (Table VII) wherever the sweep ran one, and the paired tests of analysis.stats.

Building and rendering are separate: the `*_table` builders return `Table`s whose `data` is numeric (cells as
columns `(..., stat)` with stat in mean, std, n, failed, diverged, ...), and `render(tables, fmt)` prints them.
A cell without runs is NaN with n = 0 and prints as "—"; nothing is ever filled in. Works on a sweep that is still
running (it reads whatever runs have finished) and with failed runs (counted in their cell, never averaged).
"""

from __future__ import annotations

import argparse
import html
import math
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import stats
from analysis.paper import paper_table
from analysis.runs import (
    METRICS,
    Sweep,
    class_average,
    config_note,
    label_order,
    open_sweep,
    protocol_note,
    reported_runs,
    summarize,
)
from results import StoreError

MISSING = "—"
FORMATS = ("markdown", "csv", "latex", "html")
CELL_STATS = ("mean", "std", "n", "n_min", "n_max", "classes", "failed", "diverged")
DATASET_NAMES = {"cifar10": "CIFAR-10", "mvtec": "MVTec AD", "shanghaitech": "ShanghaiTech", "digits": "digits"}
PAPER_REF = "Massoli et al., IEEE TNNLS 2022; the paper selected on the test set"
PAPER_NONE = "The paper publishes no numbers for this dataset (digits is the project's embedded demo data)."
CELL_NOTE = (
    "Cells: mean ± std over seeds (sample std), n = seeds that finished ok; failed or diverged runs are counted, "
    "never averaged; — = no finished runs."
)
# per dataset: ("per_class", metric, paper table) or ("means", metrics, paper table)
PLANS = {
    "cifar10": [("per_class", "auc", "I"), ("means", ("auc",), "II")],
    "mvtec": [("per_class", "max_ba", "III"), ("per_class", "auc", "IV"), ("means", ("max_ba", "auc"), "V")],
    "shanghaitech": [("means", ("auc",), "VI")],
}
# the columns the cell tables read: filtering a narrow frame is much cheaper than the full run rows
NARROW = ["dataset", "normal_class", "class_name", "method", "boundary", "label", "source", "config_key", "seed",
          "status", "selection", "test_auc", "test_max_ba", "val_auc"]  # fmt: skip
DEFAULT_PLAN = [("per_class", "auc", None), ("per_class", "max_ba", None), ("means", ("auc", "max_ba"), None)]


@dataclass
class Table:
    """One table: `data` holds numbers (cells=True: columns end in a stat level) or plain values (cells=False)."""

    key: str
    title: str
    caption: str
    data: pd.DataFrame
    cells: bool = True
    kind: str = ""  # per_class, means, ablation, ... (the report draws figures from the first and the third)
    dataset: str = ""
    metric: str = ""


def _cell_frame(columns: dict[tuple, dict[str, float]], index: list[str], index_name: str) -> pd.DataFrame:
    """{(group..., row): {stat: value}} -> DataFrame with one row per index entry and (group..., stat) columns."""
    groups = list(dict.fromkeys(k[:-1] for k in columns))
    data = {}
    for group in groups:
        stats_here = [s for s in CELL_STATS if any(s in columns[(*group, r)] for r in index if (*group, r) in columns)]
        for stat in stats_here:
            data[(*group, stat)] = [columns.get((*group, r), {}).get(stat, math.nan) for r in index]
    frame = pd.DataFrame(data, index=pd.Index(index, name=index_name))
    frame.columns = pd.MultiIndex.from_tuples(list(data)) if data else frame.columns
    return frame


def _paper_rows(key: str | None, metric: str | None = None) -> pd.DataFrame:
    if key is None:
        return pd.DataFrame(columns=["method", "class_name", "metric", "value", "std", "layers"])
    rows = paper_table(key)
    return rows if metric is None else rows[rows["metric"] == metric]


def _class_rows(reported: pd.DataFrame, paper: pd.DataFrame) -> list[str]:
    """Class names in the paper's order, then ours by class index."""
    ours = reported.drop_duplicates("normal_class").sort_values("normal_class")["class_name"].tolist()
    return list(dict.fromkeys([*paper["class_name"].tolist(), *ours]))


def _table_name(dataset: str, paper_key: str | None) -> str:
    """The table's name: "Table I (CIFAR-10)" where the paper has that table, else the dataset's name."""
    name = DATASET_NAMES.get(dataset, dataset)
    return f"Table {paper_key} ({name})" if paper_key else name


def _captions(reported: pd.DataFrame, paper_key: str | None, extra: str = "") -> str:
    paper = f"Paper columns: Table {paper_key} ({PAPER_REF})." if paper_key else PAPER_NONE
    twin = (
        "'last layer' = the same hyperparameters with only the last encoder layer, our counterpart of DeepSVDD."
        if reported["label"].str.endswith("last layer").any()
        else ""
    )
    parts = [extra, CELL_NOTE, f"{protocol_note(reported)}; {config_note(reported)}.", twin, paper]
    return " ".join(p for p in parts if p)


def per_class_table(reported: pd.DataFrame, dataset: str, metric: str, paper_key: str | None = None) -> Table:
    """Test metric per class: the paper's methods (their numbers) then ours (mean ± std over seeds)."""
    rows = reported.loc[reported["dataset"] == dataset, NARROW]
    paper = _paper_rows(paper_key, metric)
    classes = _class_rows(rows, paper)
    cells: dict[tuple, dict[str, float]] = {}
    for r in paper.itertuples():
        cells[("paper", r.method, r.class_name)] = {"mean": r.value, "std": r.std}
    groups = dict(list(rows.groupby(["label", "class_name"])))
    for label in label_order(rows["label"]):
        for name in classes:
            cells[("ours", label, name)] = summarize(groups.get((label, name), rows.iloc[:0]), f"test_{metric}")
    title = f"{_table_name(dataset, paper_key)}: test {METRICS[metric]} per class"
    key = f"{dataset}/{paper_key or metric + '-per-class'}"
    frame = _cell_frame(cells, classes, "class")
    return Table(key, title, _captions(rows, paper_key), frame, kind="per_class", dataset=dataset, metric=metric)


def means_table(reported: pd.DataFrame, dataset: str, metrics: tuple[str, ...], paper_key: str | None = None) -> Table:
    """Mean over classes per method: ours is the mean of per-class means ± its standard error over classes."""
    rows = reported.loc[reported["dataset"] == dataset, NARROW]
    paper = _paper_rows(paper_key)
    methods = list(dict.fromkeys([*paper["method"].tolist(), *label_order(rows["label"])]))
    cells: dict[tuple, dict[str, float]] = {}
    for metric in metrics:
        name = METRICS[metric]
        for r in paper[paper["metric"] == metric].itertuples():
            cells[(name, "paper", r.method)] = {"mean": r.value, "std": r.std}
        for label in label_order(rows["label"]):
            per_class = [
                summarize(g, f"test_{metric}") for _, g in rows[rows["label"] == label].groupby("normal_class")
            ]
            mean, se = class_average([c["mean"] for c in per_class])
            seeds = [c["n"] for c in per_class if c["n"] > 0]
            cells[(name, "ours", label)] = {
                "mean": mean, "std": se, "classes": float(len(seeds)),
                "n_min": min(seeds, default=math.nan), "n_max": max(seeds, default=math.nan),
                "failed": sum(c["failed"] for c in per_class), "diverged": sum(c["diverged"] for c in per_class),
            }  # fmt: skip
    names = " and ".join(METRICS[m] for m in metrics)
    title = f"{_table_name(dataset, paper_key)}: mean test {names} over classes"
    extra = (
        "Ours: mean over the classes that have results of the per-class mean, ± its standard error over classes "
        "(std with ddof 0 / sqrt(classes), the convention that reproduces the paper's Table II from its Table I); "
        "compare with the paper only where the class count is complete."
    )
    key = f"{dataset}/{paper_key or 'means'}"
    frame = _cell_frame(cells, methods, "method")
    return Table(key, title, _captions(rows, paper_key, extra), frame, kind="means", dataset=dataset)


def ablation_tables(sweep: Sweep, dataset: str) -> list[Table]:
    """Table VII: metric per layer set and boundary, one table per class the ablation ran on.

    An ablation configuration is the hyperparameters of the mode == "ablation" runs; every run with those
    hyperparameters counts, whatever phase first trained it (a run key is trained once)."""
    runs = sweep.runs[(sweep.runs["dataset"] == dataset) & (sweep.runs["method"] == "mocca")]
    signatures = set(runs.loc[runs["mode"] == "ablation", "signature"])
    runs = runs[runs["signature"].isin(signatures)]
    paper_all = paper_table("VII")
    tables = []
    for (cls, name), rows in runs.groupby(["normal_class", "class_name"]):
        paper = paper_all[(paper_all["dataset"] == dataset) & (paper_all["class_name"] == name)]
        ours = sorted(set(rows["layer_set"]), key=lambda s: (s.count(","), [int(k) for k in s.split(",")]))
        layer_sets = list(dict.fromkeys([*paper["layers"].tolist(), *ours]))
        boundaries = [b for b in ("soft", "hard") if b in set(rows["boundary"])]
        cells: dict[tuple, dict[str, float]] = {}
        for metric, metric_name in METRICS.items():
            for boundary in boundaries:
                for r in paper[(paper["metric"] == metric) & (paper["method"] == f"MOCCA ({boundary})")].itertuples():
                    cells[(metric_name, boundary, "paper", r.layers)] = {"mean": r.value, "std": r.std}
                for ls in layer_sets:
                    subset = rows[(rows["boundary"] == boundary) & (rows["layer_set"] == ls)]
                    cells[(metric_name, boundary, "ours", ls)] = summarize(subset, f"test_{metric}")
        paper_note = (
            f"Paper columns: Table VII ({PAPER_REF}; MVTec encoder layers numbered 0..6)."
            if len(paper)
            else "The paper's ablation (Table VII) is on MVTec 'leather' only: no paper numbers for this class."
        )
        caption = " ".join([
            "Test metric per encoder layer set (0 = the layer closest to the input) and boundary, one fixed",
            f"configuration per boundary. {CELL_NOTE} {protocol_note(rows)}. {paper_note}",
        ])  # fmt: skip
        title = f"Table VII ({DATASET_NAMES.get(dataset, dataset)}, class {name}): layer ablation"
        frame = _cell_frame(cells, layer_sets, "layers")
        tables.append(Table(f"{dataset}/VII/{cls}", title, caption, frame, kind="ablation", dataset=dataset))
    return tables


def configs_table(reported: pd.DataFrame, dataset: str) -> Table:
    """The configuration behind each reported cell: how it was chosen, its layers, hyperparameters and seeds."""
    rows = reported[reported["dataset"] == dataset]
    records = []
    for (cls, label), g in rows.groupby(["normal_class", "label"]):
        first = g.iloc[0]
        ok = g[g["status"] == "ok"]
        records.append({
            "class": first["class_name"], "label": label, "source": first["source"], "layers": first["layer_set"],
            "nu": first["nu"], "ae_lr": first["ae_lr"] if first["method"] == "mocca" else math.nan,
            "oc_lr": first["oc_lr"] if first["method"] == "mocca" else math.nan, "seeds ok": len(ok),
            "not ok": len(g) - len(ok), "val AUC": ok["val_auc"].mean() if len(ok) else math.nan,
            "config_key": first["config_key"], "_order": (cls, label_order(rows["label"]).index(label)),
        })  # fmt: skip
    frame = pd.DataFrame(records)
    if len(frame):
        frame = frame.sort_values("_order").drop(columns="_order").set_index("class")
    caption = (
        f"source: 'selected' = the search's selection, 'most seeds' = no selection yet, 'twin' = the last-layer-only "
        f"partner. {protocol_note(rows)}."
    )
    return Table(f"{dataset}/configs", f"Reported configurations ({DATASET_NAMES.get(dataset, dataset)})", caption,
                 frame, cells=False)  # fmt: skip


def comparison_table(reported: pd.DataFrame, dataset: str) -> Table:
    frame = stats.compare(reported, dataset).set_index("claim")
    caption = (
        f"{stats.TEST_NAME}, pooled over classes, over the reported configurations; difference = a − b (positive "
        "favours a). n_pairs counts (class, seed) pairs where both finished ok; p is NaN where nothing can be ranked."
    )
    title = f"Paired comparisons ({DATASET_NAMES.get(dataset, dataset)})"
    return Table(f"{dataset}/stats", title, caption, frame, cells=False)


def runs_table(sweep: Sweep, datasets: list[str]) -> Table:
    runs = sweep.runs[sweep.runs["dataset"].isin(datasets)] if datasets else sweep.runs
    counts = pd.crosstab([runs["dataset"], runs["mode"]], runs["status"]) if len(runs) else pd.DataFrame()
    for status in ("ok", "failed", "diverged"):
        if len(counts) and status not in counts:
            counts[status] = 0
    if len(counts):
        counts = counts[["ok", "failed", "diverged"]].assign(total=lambda f: f.sum(axis=1))
    state = "no finished runs yet" if runs.empty else f"{len(runs)} finished runs"
    caption = f"Sweep {sweep.name} at {sweep.path}: {state} (a sweep that is still running shows what has finished)."
    return Table("runs", "Runs in the store", caption, counts, cells=False)


def failures_table(sweep: Sweep, datasets: list[str]) -> Table | None:
    runs = sweep.runs[sweep.runs["dataset"].isin(datasets) & (sweep.runs["status"] != "ok")]
    if runs.empty:
        return None
    cols = ["run_key", "mode", "dataset", "class_name", "method", "boundary", "layer_set", "seed", "status", "error"]
    frame = runs[cols].assign(error=runs["error"].str.slice(0, 160)).set_index("run_key")
    return Table("failures", "Runs that did not finish ok", "Their metrics are NaN; tables count them per cell.", frame,
                 cells=False)  # fmt: skip


def build_tables(sweep: Sweep, dataset: str | None = None, reported: pd.DataFrame | None = None) -> list[Table]:
    """Every table for the sweep (or one dataset of it), in print order; `reported` = reported_runs(sweep)."""
    if dataset is not None and dataset not in sweep.datasets:
        present = ", ".join(sweep.datasets) or "none yet"
        raise StoreError(f"the sweep at {sweep.path} has no runs of dataset {dataset!r}: choose one of {present}")
    datasets = [dataset] if dataset else sweep.datasets
    tables = [runs_table(sweep, datasets)]
    failures = failures_table(sweep, datasets)
    if failures is not None:
        tables.append(failures)
    reported = reported_runs(sweep) if reported is None else reported
    for name in datasets:
        for kind, metric, paper_key in PLANS.get(name, DEFAULT_PLAN):
            builder = per_class_table if kind == "per_class" else means_table
            tables.append(builder(reported, name, metric, paper_key))
        tables.append(configs_table(reported, name))
        tables.extend(ablation_tables(sweep, name))
        tables.append(comparison_table(reported, name))
    return tables


# -- rendering --------------------------------------------------------------------------------------------------------
def format_cell(stats_: dict) -> str:
    """{"mean": .., "std": .., "n": .., ...} -> "0.912 ± 0.013 (n=3, 1 failed)"; a missing mean -> "—"."""
    mean, std = stats_.get("mean", math.nan), stats_.get("std", math.nan)
    text = MISSING if not _finite(mean) else f"{mean:.3f}" + (f" ± {std:.3f}" if _finite(std) else "")
    parts = []
    if _finite(stats_.get("classes")) and stats_["classes"] > 0:
        k = int(stats_["classes"])
        parts.append(f"{k} class" if k == 1 else f"{k} classes")
    if _finite(stats_.get("n")) and (stats_["n"] > 0 or _finite(mean)):
        parts.append(f"n={int(stats_['n'])}")
    lo, hi = stats_.get("n_min"), stats_.get("n_max")
    if _finite(lo) and _finite(hi):
        parts.append(f"n={int(lo)}" if lo == hi else f"n={int(lo)}–{int(hi)}")
    for status in ("failed", "diverged"):
        if _finite(stats_.get(status)) and stats_[status] > 0:
            parts.append(f"{int(stats_[status])} {status}")
    return text + (f" ({', '.join(parts)})" if parts else "")


def _finite(value) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool) and math.isfinite(value)


def _format_plain(value) -> str:
    """A plain table's value: counts as integers, small numbers (learning rates, p-values) in e-notation."""
    if isinstance(value, bool | np.bool_ | str):
        return str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        if not math.isfinite(value):
            return MISSING
        return "0" if value == 0 else f"{value:.2e}" if abs(value) < 1e-2 else f"{value:.3f}"
    return MISSING if value is None else str(value)


def display_frame(table: Table) -> pd.DataFrame:
    """The table as strings, one column per cell group (its levels joined by " · ")."""
    data = table.data
    if isinstance(data.index, pd.MultiIndex):
        index = pd.Index([" / ".join(map(str, i)) for i in data.index], name=" / ".join(map(str, data.index.names)))
    else:
        index = pd.Index([_format_plain(i) for i in data.index], name=data.index.name)
    if not table.cells:
        return pd.DataFrame({c: [_format_plain(v) for v in data[c]] for c in data.columns}, index=index, dtype=object)
    out = {}
    for group in dict.fromkeys(c[:-1] for c in data.columns):
        stats_cols = [c for c in data.columns if c[:-1] == group]
        out[" · ".join(map(str, group))] = [
            format_cell({c[-1]: data.iloc[i][c] for c in stats_cols}) for i in range(len(data))
        ]
    return pd.DataFrame(out, index=index, dtype=object)


def _markdown(table: Table) -> str:
    shown = display_frame(table)
    lines = [f"## {table.title}", "", table.caption, ""]
    if shown.empty:
        return "\n".join([*lines, "(no rows)", ""])
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    header = [shown.index.name or "", *map(str, shown.columns)]
    lines.append("| " + " | ".join(esc(h) for h in header) + " |")
    lines.append("|" + "|".join(["---"] * len(header)) + "|")
    for idx, row in shown.iterrows():
        lines.append("| " + " | ".join(esc(v) for v in [idx, *row.tolist()]) + " |")
    return "\n".join([*lines, ""])


def _csv(table: Table) -> str:
    data = table.data.copy()
    if isinstance(data.columns, pd.MultiIndex):
        data.columns = ["/".join(str(x) for x in c) for c in data.columns]
    return f"# {table.key}: {table.title}\n# {table.caption}\n" + data.to_csv()


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "—": "---", "–": "--",
          "·": r"$\cdot$", "−": "$-$"}  # fmt: skip


def _tex(text) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def _latex(table: Table) -> str:
    shown = display_frame(table)
    header = " & ".join(_tex(h) for h in [shown.index.name or "", *shown.columns]) + r" \\"
    lines = [r"\begin{table}[ht]", r"\centering", rf"\caption{{{_tex(table.title)}. {_tex(table.caption)}}}",
             rf"\label{{tab:{table.key.replace('/', '-')}}}", r"\begin{tabular}{l" + "l" * len(shown.columns) + "}",
             r"\hline", header, r"\hline"]  # fmt: skip
    lines += [" & ".join(_tex(v) for v in [idx, *row.tolist()]) + r" \\" for idx, row in shown.iterrows()]
    lines += [r"\hline", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def html_fragment(table: Table) -> str:
    """One table as an HTML <section> (used by the report as well)."""
    shown = display_frame(table)
    body = shown.to_html(escape=True, na_rep=MISSING, border=0, classes="results") if len(shown) else "<p>(no rows)</p>"
    return (
        f'<section class="table" id="{html.escape(table.key)}"><h3>{html.escape(table.title)}</h3>'
        f'<p class="caption">{html.escape(table.caption)}</p>{body}</section>'
    )


TABLE_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}"
    "table.results{border-collapse:collapse;font-size:13px;margin-bottom:1em}"
    "table.results td,table.results th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right}"
    ".caption{color:#444;font-size:13px;max-width:1100px}"
)


def render(tables: list[Table], fmt: str = "markdown") -> str:
    """All tables as one document in `fmt` (markdown, csv, latex or html)."""
    if fmt == "markdown":
        return "\n".join(_markdown(t) for t in tables)
    if fmt == "csv":
        return "\n".join(_csv(t) for t in tables)
    if fmt == "latex":
        return "% needs no extra packages\n" + "\n".join(_latex(t) for t in tables)
    if fmt == "html":
        body = "\n".join(html_fragment(t) for t in tables)
        return (
            f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>MOCCA tables</title><style>{TABLE_CSS}</style>'
            f"</head><body>{body}</body></html>\n"
        )
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.tables", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", help="the sweep's folder (local path or URI), e.g. sweeps/digits")
    parser.add_argument("--dataset", help="only this dataset's tables (default: every dataset in the sweep)")
    parser.add_argument("--format", choices=FORMATS, default="markdown")
    parser.add_argument("--out", help="write to this file instead of standard output")
    args = parser.parse_args(argv)
    try:
        text = render(build_tables(open_sweep(args.sweep_dir), args.dataset), args.format)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
