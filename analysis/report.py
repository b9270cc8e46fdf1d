"""One self-contained HTML report of a sweep: the figures a researcher would put in a paper, opening offline.

    python -m analysis.report SWEEP_DIR [--out report.html]        # default: SWEEP_DIR/report.html

Sections: the tables and paired tests of analysis.tables; per-class comparison with the paper; the layer ablation
(metric against layer set, error bars over seeds, one trace per boundary, the paper's Table VII where it exists);
per-layer CDFs of test scores, normal against anomalous, multi-layer model against last-layer-only (the paper's
Fig. 5); the Optuna search history and parameter importances per class; training curves; cost. A section without
data says so. plotly.js is embedded once in <head>; every figure is a <div class="plotly-graph-div">.

Parameter importances: fANOVA (optuna.importance.FanovaImportanceEvaluator, seed 0) on an Optuna study rebuilt per
class from the sweep's search rows with optuna.trial.create_trial (value = validation AUC; distributions = the
observed range of each searched parameter, log scale for positive numbers spanning more than a factor 10;
parameters that never vary are left out). With few trials the importances are noisy: the figure says how many
trials each class had.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from analysis.runs import METRICS, Sweep, label_order, method_label, open_sweep, reported_runs
from analysis.tables import DATASET_NAMES, TABLE_CSS, Table, build_tables, html_fragment
from results import StoreError
from results.store import join_uri, open_filesystem

CDF_POINTS = 200  # a CDF is drawn through this many quantiles, whatever the test set's size
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")
BOUNDARY_COLORS = {"soft": "#1f77b4", "hard": "#d62728"}
PHASES = ("data_s", "autoencoder_s", "one_class_s", "fit_s", "score_s")
# Records the page's JavaScript errors in a visible box (and for headless checks), before plotly.js loads.
ERROR_HOOK = """<script>window.reportErrors=[];
function showReportErrors(){var d=document.getElementById('report-errors');
if(d&&window.reportErrors.length){d.textContent='JavaScript errors: '+window.reportErrors.join(' | ');d.hidden=false;}}
window.addEventListener('error',function(e){window.reportErrors.push(String(e.message));showReportErrors();});
window.addEventListener('unhandledrejection',function(e){window.reportErrors.push(String(e.reason));showReportErrors();});
document.addEventListener('DOMContentLoaded',showReportErrors);</script>"""


@dataclass
class Section:
    title: str
    intro: str = ""
    figures: list[go.Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    empty: str = ""  # shown instead of content when there are no figures and no tables


def _style(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    # a white look by hand: template="plotly_white" costs ~0.1 s per figure (plotly deep-copies the template)
    fig.update_layout(title=title, height=height, plot_bgcolor="white", margin=dict(t=60, l=60, r=20, b=50))
    fig.update_xaxes(showgrid=True, gridcolor="#e5e5e5", zerolinecolor="#ccc", linecolor="#999")
    fig.update_yaxes(showgrid=True, gridcolor="#e5e5e5", zerolinecolor="#ccc", linecolor="#999")
    return fig


# -- per-class comparison ---------------------------------------------------------------------------------------------
def comparison_figure(table: Table, labels: list[str]) -> go.Figure:
    """Bars of our per-class metric (error bars = std over seeds) beside the paper's MOCCA and DeepSVDD markers."""
    data, fig = table.data, go.Figure()
    classes = [str(c) for c in data.index]
    for i, label in enumerate(labels):
        if ("ours", label, "mean") not in data:
            continue
        fig.add_bar(
            name=f"ours: {label}", x=classes, y=data[("ours", label, "mean")],
            error_y=dict(type="data", array=data[("ours", label, "std")].fillna(0)),
            marker_color=PALETTE[i % len(PALETTE)],
        )  # fmt: skip
    for j, method in enumerate(dict.fromkeys(c[1] for c in data.columns if c[0] == "paper")):
        if not method.startswith(("MOCCA", "DeepSVDD")):
            continue  # the other published methods are in the table; the figure keeps to MOCCA and DeepSVDD
        fig.add_scatter(
            name=f"paper: {method}", x=classes, y=data[("paper", method, "mean")], mode="markers",
            marker=dict(symbol="diamond" if "MOCCA" in method else "x", size=10, color=PALETTE[j % len(PALETTE)],
                        line=dict(width=1, color="black")),
        )  # fmt: skip
    fig.update_layout(barmode="group", yaxis_title=f"test {METRICS[table.metric]}", xaxis_title="normal class")
    fig.update_xaxes(type="category")  # digits' classes are "0".."9": keep them categories, not numbers
    return _style(fig, table.title)


# -- ablation ---------------------------------------------------------------------------------------------------------
def ablation_figure(table: Table) -> go.Figure:
    """Metric against layer set, error bars over seeds, one trace per boundary; the paper's values dashed."""
    data = table.data
    metrics = list(dict.fromkeys(c[0] for c in data.columns))
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[f"test {m}" for m in metrics])
    x = [str(i) for i in data.index]
    for col, metric in enumerate(metrics, start=1):
        for boundary in dict.fromkeys(c[1] for c in data.columns if c[0] == metric):
            color = BOUNDARY_COLORS.get(boundary, "#555")
            if (metric, boundary, "ours", "mean") in data:
                fig.add_scatter(
                    row=1, col=col, x=x, y=data[(metric, boundary, "ours", "mean")], mode="lines+markers",
                    name=f"ours: {boundary}", legendgroup=f"ours-{boundary}", showlegend=col == 1,
                    error_y=dict(type="data", array=data[(metric, boundary, "ours", "std")].fillna(0)),
                    line=dict(color=color),
                )  # fmt: skip
            if (metric, boundary, "paper", "mean") in data:
                fig.add_scatter(
                    row=1, col=col, x=x, y=data[(metric, boundary, "paper", "mean")], mode="lines+markers",
                    name=f"paper: {boundary}", legendgroup=f"paper-{boundary}", line=dict(color=color, dash="dash"),
                    error_y=dict(type="data", array=data[(metric, boundary, "paper", "std")].fillna(0)),
                )  # fmt: skip
        fig.update_xaxes(title_text="encoder layers", type="category", row=1, col=col)
    return _style(fig, table.title)


# -- per-layer CDFs (Fig. 5) ------------------------------------------------------------------------------------------
def _cdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, F(x)) at CDF_POINTS quantiles: small whatever the test set's size."""
    probs = np.linspace(0, 1, CDF_POINTS)
    return np.quantile(values, probs), probs


def _cdf_pair(reported: pd.DataFrame, dataset: str, boundary: str) -> tuple[pd.Series, pd.Series] | None:
    """(multi-layer run, last-layer run) of the lowest class and seed where both finished ok as different configs."""
    ok = reported[(reported["dataset"] == dataset) & (reported["status"] == "ok")]
    multi = ok[ok["label"] == method_label("mocca", boundary)]
    last = ok[ok["label"] == method_label("mocca", boundary, True)]
    pairs = multi.merge(last, on=["normal_class", "seed"], suffixes=("", "_last"))
    pairs = pairs[pairs["config_key"] != pairs["config_key_last"]].sort_values(["normal_class", "seed"])
    if pairs.empty:
        return None
    first = pairs.iloc[0]
    runs = ok.set_index("run_key")
    return runs.loc[first["run_key"]], runs.loc[first["run_key_last"]]


def cdf_figure(sweep: Sweep, reported: pd.DataFrame, dataset: str, boundary: str) -> go.Figure | None:
    found = _cdf_pair(reported, dataset, boundary)
    if found is None or sweep.store is None:
        return None
    multi, last = found
    scores = sweep.store.load_scores([multi.name, last.name])
    if scores.empty:
        return None
    scores = scores[scores["split"] == "test"]
    panels = [(multi.name, k, f"multi-layer: layer {k}") for k in multi["layers"]]
    panels += [(last.name, k, f"last layer only: layer {k}") for k in last["layers"]]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[2] for p in panels], shared_yaxes=True)
    for col, (key, k, _) in enumerate(panels, start=1):
        run = scores[scores["run_key"] == key]
        for label, name, color in ((0, "normal", "#2ca02c"), (1, "anomalous", "#d62728")):
            values = run.loc[run["label"] == label, f"layer_{int(k)}"].dropna().to_numpy()
            if len(values) == 0:
                continue
            x, y = _cdf(values)
            fig.add_scatter(row=1, col=col, x=x, y=y, mode="lines", name=name, legendgroup=name,
                            showlegend=col == 1, line=dict(color=color))  # fmt: skip
    fig.update_yaxes(title_text="CDF", row=1, col=1)
    title = (
        f"{DATASET_NAMES.get(dataset, dataset)} class {multi['class_name']}, MOCCA ({boundary}), seed "
        f"{multi['seed']}: per-layer test scores (distance{' − R²' if boundary == 'soft' else ''})"
    )
    return _style(fig, title, height=360)


# -- search history and parameter importances -------------------------------------------------------------------------
def search_params(rows: pd.DataFrame) -> pd.DataFrame:
    """The searched parameters of each search row: the `params` JSON when the sweep wrote it, else the usual columns;
    only parameters that vary are kept."""
    if "params" in rows and rows["params"].fillna("").str.len().gt(0).all():
        frame = pd.DataFrame([json.loads(p) for p in rows["params"]], index=rows.index)
    else:
        frame = rows[["ae_lr", "oc_lr", "nu", "boundary", "layer_set"]].rename(columns={"layer_set": "layers"})
    frame = frame.drop(columns=[c for c in ("method", "normal_class", "seed", "mode") if c in frame])
    return frame.loc[:, [c for c in frame if frame[c].astype(str).nunique() > 1]]


def _distribution(values: pd.Series):
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all() and not values.map(lambda v: isinstance(v, bool | str)).any():
        lo, hi = float(numeric.min()), float(numeric.max())
        return FloatDistribution(lo, hi, log=lo > 0 and hi / lo > 10)
    return CategoricalDistribution(sorted(values.astype(str).unique()))


def param_importances(rows: pd.DataFrame) -> dict[str, float] | None:
    """fANOVA importances of one class's search rows (None when there are too few ok trials or nothing varies)."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    rows = rows[(rows["status"] == "ok") & rows["val_auc"].notna()]
    params = search_params(rows)
    if len(rows) < 3 or params.shape[1] == 0:
        return None
    dists = {c: _distribution(params[c]) for c in params}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for idx, value in rows["val_auc"].items():
        values = {
            c: str(params.at[idx, c]) if isinstance(d, CategoricalDistribution) else float(params.at[idx, c])
            for c, d in dists.items()
        }
        study.add_trial(optuna.trial.create_trial(params=values, distributions=dists, value=float(value)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0)))
    except (ValueError, RuntimeError):
        return None


def search_figures(sweep: Sweep, dataset: str) -> list[go.Figure]:
    rows = sweep.runs[(sweep.runs["dataset"] == dataset) & (sweep.runs["mode"] == "search")]
    if rows.empty:
        return []
    classes = rows.drop_duplicates("normal_class").sort_values("normal_class")
    cols = min(5, len(classes))
    n_rows = math.ceil(len(classes) / cols)
    titles = [f"class {c}" for c in classes["class_name"]]
    history = make_subplots(rows=n_rows, cols=cols, subplot_titles=titles, shared_yaxes=True)
    importance = go.Figure()
    for i, (cls, name) in enumerate(zip(classes["normal_class"], classes["class_name"], strict=True)):
        r, c = divmod(i, cols)
        class_rows = rows[rows["normal_class"] == cls].sort_values(["started_at", "ended_at"], kind="stable")
        for boundary, g in class_rows.groupby("boundary"):
            order = np.arange(1, len(g) + 1)
            color = BOUNDARY_COLORS.get(boundary, "#555")
            fig_args = dict(row=r + 1, col=c + 1)
            history.add_scatter(x=order, y=g["val_auc"], mode="markers", name=f"{boundary}: trial",
                                legendgroup=f"{boundary}-t", showlegend=i == 0, marker=dict(color=color),
                                text=g["layer_set"], **fig_args)  # fmt: skip
            history.add_scatter(x=order, y=g["val_auc"].cummax(), mode="lines", name=f"{boundary}: best so far",
                                legendgroup=f"{boundary}-b", showlegend=i == 0, line=dict(color=color, dash="dot"),
                                **fig_args)  # fmt: skip
        found = param_importances(class_rows)
        if found:
            importance.add_bar(name=f"class {name} ({len(class_rows)} trials)", x=list(found), y=list(found.values()))
    history.update_yaxes(title_text="validation AUC", col=1)
    history.update_xaxes(title_text="trial (run order)", row=n_rows)
    history.update_xaxes(tickformat="d")
    label = DATASET_NAMES.get(dataset, dataset)
    figures = [_style(history, f"{label}: Optuna search history per class", height=300 * n_rows + 100)]
    if importance.data:
        importance.update_layout(barmode="group", yaxis_title="fANOVA importance", xaxis_title="parameter")
        figures.append(_style(importance, f"{label}: parameter importances per class (fANOVA on the search rows)"))
    return figures


# -- training curves --------------------------------------------------------------------------------------------------
def curve_figure(sweep: Sweep, reported: pd.DataFrame, dataset: str) -> go.Figure | None:
    """Per-epoch losses of both stages and the radius per layer, mean over seeds, per (class, reported config)."""
    rows = reported[(reported["dataset"] == dataset) & (reported["method"] == "mocca") & (reported["status"] == "ok")]
    if rows.empty or sweep.store is None:
        return None
    curves = sweep.store.load_curves(rows["run_key"].tolist())
    if curves.empty:
        return None
    curves = curves.merge(rows[["run_key", "class_name", "label"]], on="run_key")
    fig = make_subplots(rows=1, cols=3, subplot_titles=["autoencoder loss", "one-class loss", "radius per layer"])
    radius_cols = sorted((c for c in curves if c.startswith("radius_")), key=lambda c: int(c.split("_")[1]))
    for i, ((name, label), g) in enumerate(curves.groupby(["class_name", "label"], sort=True)):
        color = PALETTE[i % len(PALETTE)]
        tag = f"{name} · {label}"
        for col, stage in ((1, "autoencoder"), (2, "one_class")):
            mean = g[g["stage"] == stage].groupby("epoch")["loss"].mean()
            if len(mean):
                fig.add_scatter(row=1, col=col, x=mean.index, y=mean.values, mode="lines", name=tag, legendgroup=tag,
                                showlegend=col == 1, line=dict(color=color))  # fmt: skip
        one_class = g[g["stage"] == "one_class"]
        for rc in radius_cols:
            mean = one_class.groupby("epoch")[rc].mean().dropna()
            if len(mean) and (mean != 0).any():  # the hard boundary keeps R = 0
                name = f"{tag} R{rc.split('_')[1]}"
                fig.add_scatter(row=1, col=3, x=mean.index, y=mean.values, mode="lines", legendgroup=tag, name=name,
                                showlegend=False, line=dict(color=color))  # fmt: skip
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(type="log", row=1, col=2)
    return _style(fig, f"{DATASET_NAMES.get(dataset, dataset)}: training curves (mean over seeds)", height=420)


# -- cost -------------------------------------------------------------------------------------------------------------
def _count(runs: pd.DataFrame, column: str) -> pd.Series:
    """A count column of the run rows, 1 where a row predates it."""
    if column not in runs:
        return pd.Series(1, index=runs.index)
    return runs[column].fillna(1).clip(lower=1).astype(int)


def pack_sizes(runs: pd.DataFrame) -> pd.Series:
    """How many runs trained side by side with each run in stage 2 (engine/packing.py); 1 alone."""
    return _count(runs, "pack_size")


def device_shares(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs with durations cut to each run's share of what it shared (engine/packing.py): the data load and
    stage 1 with the `stage1_shared_by` runs of its group, stage 2 with the `pack_size` runs of its pack; its own
    scoring in full. Summed, they count every device-second once."""
    stage1, stage2 = _count(runs, "stage1_shared_by"), pack_sizes(runs)
    out = runs.copy()
    for col, n in (("data_s", stage1), ("autoencoder_s", stage1), ("one_class_s", stage2)):
        if col in runs:
            cut = runs[col] - runs[col] / n
            out[col] = runs[col] - cut
            out["total_s"] = out["total_s"] - cut.fillna(0)
    return out


def cost_section(sweep: Sweep) -> Section:
    runs = sweep.runs
    section = Section("Cost", "Run durations (a run trained with others: its share), training throughput and "
                      "device-hours, from the run rows.")  # fmt: skip
    if runs.empty or runs["total_s"].notna().sum() == 0:
        section.empty = "No run has a recorded duration yet."
        return section
    packs = runs["pack_size"].fillna(1).astype(int)
    device = (
        runs["device"].replace("", "not run").where(packs <= 1, runs["device"] + " · packs of " + packs.astype(str))
    )
    runs = device_shares(runs).assign(what=runs["mode"] + " · " + runs["method"], device=device)
    durations = go.Figure()
    for what, g in runs.groupby("what"):
        durations.add_box(y=g["total_s"], name=what, boxpoints="all", jitter=0.3)
    durations.update_layout(yaxis_title="seconds per run", yaxis_type="log", showlegend=False)
    section.figures.append(_style(durations, "Run duration by phase and method"))

    mocca = runs[runs["method"] == "mocca"]
    phases = go.Figure()
    for phase in PHASES:
        means = runs.groupby("method")[phase].mean()
        phases.add_bar(name=phase.removesuffix("_s"), x=list(means.index), y=means.fillna(0).values)
    phases.update_layout(barmode="stack", yaxis_title="mean seconds per run")
    section.figures.append(_style(phases, "Where a run's time goes (mean per method)"))
    if mocca[["ae_images_per_s", "oc_images_per_s"]].notna().any().any():
        throughput = go.Figure()
        for col, name in (("ae_images_per_s", "autoencoder"), ("oc_images_per_s", "one-class")):
            throughput.add_box(y=mocca[col], x=mocca["device"], name=name, boxpoints="all")
        throughput.update_layout(boxmode="group", yaxis_title="training images / s", xaxis_title="device")
        section.figures.append(_style(throughput, "Training throughput by device"))
    hours = runs.groupby(["dataset", "mode", "device"], dropna=False).agg(
        runs=("run_key", "size"), seconds_per_run=("total_s", "mean"), device_hours=("total_s", "sum")
    )
    hours["device_hours"] = hours["device_hours"] / 3600.0
    caption = ("device_hours = sum of run durations / 3600 (a fractional-GPU run counts its wall time in full, a "
               "run trained with others its share of what they shared).")  # fmt: skip
    section.tables.append(Table("cost", "Device-hours", caption, hours, cells=False))
    return section


# -- assembly ---------------------------------------------------------------------------------------------------------
def build_sections(sweep: Sweep) -> list[Section]:
    reported = reported_runs(sweep)
    all_tables = build_tables(sweep, reported=reported)
    comparison = Section(
        "Per-class comparison with the paper",
        "Our reported configurations (mean ± std over seeds) beside the paper's MOCCA and DeepSVDD.",
    )
    ablation = Section("Layer ablation (Table VII)", "Test metric against the encoder layer set, per boundary.")
    cdfs = Section("Per-layer score distributions (Fig. 5)",
                   "CDFs of each layer's test score, normal against anomalous test samples, for the multi-layer model "
                   "and its last-layer-only twin (same class, seed and hyperparameters).")  # fmt: skip
    search = Section("Optuna search", "Validation AUC of each search trial in run order, with the best so far; "
                     "fANOVA parameter importances per class (see the module docstring).")  # fmt: skip
    curves = Section("Training curves", "Per-epoch loss of both stages and the soft boundary's radius per layer.")
    for table in all_tables:
        if table.kind == "per_class":
            labels = label_order(reported.loc[reported["dataset"] == table.dataset, "label"])
            comparison.figures.append(comparison_figure(table, labels))
        elif table.kind == "ablation":
            ablation.figures.append(ablation_figure(table))
    for dataset in sweep.datasets:
        cdfs.figures += [f for b in ("soft", "hard") if (f := cdf_figure(sweep, reported, dataset, b)) is not None]
        search.figures += search_figures(sweep, dataset)
        if (fig := curve_figure(sweep, reported, dataset)) is not None:
            curves.figures.append(fig)
    comparison.empty = "No finished runs yet."
    ablation.empty = "No ablation runs in this sweep (run `python -m engine.sweep DATASET --mode ablation`)."
    cdfs.empty = "No class has both a multi-layer model and its last-layer twin with stored scores yet."
    search.empty = "No search runs in this sweep."
    curves.empty = "No training curves stored for the reported MOCCA runs."
    tables = Section("Tables and paired tests", tables=all_tables)
    return [tables, comparison, ablation, cdfs, search, curves, cost_section(sweep)]


def render_html(sweep: Sweep, sections: list[Section]) -> str:
    parts, n = [], 0
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.intro:
            parts.append(f'<p class="caption">{html.escape(section.intro)}</p>')
        if not section.figures and not section.tables:
            parts.append(f'<p class="empty">{html.escape(section.empty or "No data.")}</p>')
        parts += [html_fragment(t) for t in section.tables]
        for fig in section.figures:
            n += 1
            parts.append(fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{n}",
                                     config={"displaylogo": False, "responsive": True}))  # fmt: skip
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    title = f"MOCCA sweep report: {sweep.name}"
    head = (
        f'<meta charset="utf-8"><title>{html.escape(title)}</title><style>{TABLE_CSS}'
        f".empty{{color:#888;font-style:italic}}#report-errors{{color:#b00;white-space:pre-wrap}}</style>{ERROR_HOOK}"
        f'<script type="text/javascript">{get_plotlyjs()}</script>'
    )
    intro = f"<p>{html.escape(sweep.path)} · {len(sweep.runs)} runs · generated {stamp} · {n} figures</p>"
    body = f'<h1>{html.escape(title)}</h1>{intro}<pre id="report-errors" hidden></pre>' + "\n".join(parts)
    return f"<!DOCTYPE html>\n<html><head>{head}</head><body>{body}</body></html>\n"


def write_report(sweep_dir: str, out: str | None = None) -> tuple[str, int]:
    """Build the report of the sweep at `sweep_dir`; returns (path written, number of figures)."""
    sweep = open_sweep(sweep_dir)
    sections = build_sections(sweep)
    text = render_html(sweep, sections)
    path = out or join_uri(sweep.path, "report.html")
    fs, inner = open_filesystem(path)  # a local path or a URI such as s3://bucket/sweeps/x/report.html
    try:
        with fs.open_output_stream(inner) as f:
            f.write(text.encode("utf-8"))
    except OSError as exc:
        raise StoreError(f"cannot write {path} ({exc}): pass --out with a writable location") from exc
    return path, sum(len(s.figures) for s in sections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", help="the sweep's folder, e.g. sweeps/digits")
    parser.add_argument("--out", help="the HTML file to write (default: SWEEP_DIR/report.html)")
    args = parser.parse_args(argv)
    try:
        path, figures = write_report(args.sweep_dir, args.out)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({figures} figures)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
