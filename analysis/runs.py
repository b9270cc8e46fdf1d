"""Which runs a table reports, and their mean +- std over seeds. Shared by analysis.tables, .stats and .report.

The rules (the sweep engine writes by them, see engine/sweep.py):
- The reported configuration of (dataset, class, method, boundary) is the search phase's selection
  (`selected/<dataset>-<class>-<boundary>.json`) when one exists; otherwise (single runs, a sweep still searching)
  the configuration with the most seeds that finished ok, ties broken by the best mean validation AUC. Ablation runs
  are never candidates. A last-layer-only twin (same hyperparameters, layers = (last layer,)) is the comparison
  partner of its multi-layer configuration, not a candidate of its own.
- Once chosen, every run of that configuration counts, whatever phase first asked for it: a run key is trained once,
  so a seed the ablation trained first carries mode "ablation" and still belongs to the selected configuration.
- "MOCCA (soft), last layer" is the twin of the reported MOCCA (soft) configuration: the paper's multi-layer against
  last-layer-only comparison, and our counterpart of the paper's DeepSVDD rows.
- Runs with status failed or diverged have NaN metrics: they are counted, never averaged in. Std is the sample
  standard deviation over seeds (ddof = 1); one seed has no std.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from results import ResultsStore, StoreError
from results.store import MANIFEST

METRICS = {"auc": "AUC", "max_ba": "maxBA"}
BASELINE_LABELS = {"ocsvm": "OC-SVM", "iforest": "Isolation Forest"}
LAST_LAYER = ", last layer"
PROTOCOLS = {
    "val": "val (hyperparameters and layer set chosen on a validation split carved from the test set; metrics on the "
    "rest of the test set)",
    "test": "test (the paper's protocol: chosen on the test set itself)",
}
# Columns that fix a configuration apart from its layer set (and the seed): a last-layer twin matches on all of them.
# code_size is left out on purpose: a failed run records 0 (the model was never built), an ok run the built size.
SIGNATURE_COLUMNS = (
    "dataset", "normal_class", "method", "boundary", "nu", "model", "ae_epochs", "ae_lr", "ae_weight_decay",
    "ae_milestones", "oc_epochs", "oc_lr", "oc_weight_decay", "oc_milestones", "batch_size", "warmup_epochs",
    "centroid_eps", "squared_scores", "precision", "selection", "data_options",
)  # fmt: skip


def method_label(method: str, boundary: str = "", last_layer: bool = False) -> str:
    """The name a table prints: "MOCCA (soft)", "MOCCA (hard), last layer", "OC-SVM", "Isolation Forest"."""
    if method != "mocca":
        return BASELINE_LABELS.get(method, method)
    return f"MOCCA ({boundary})" + (LAST_LAYER if last_layer else "")


def label_order(labels) -> list[str]:
    """MOCCA soft, its last-layer twin, hard, its twin, then the baselines, then anything else."""
    fixed = [method_label("mocca", b, last) for b in ("soft", "hard") for last in (False, True)]
    fixed += list(BASELINE_LABELS.values())
    present = set(labels)
    return [x for x in fixed if x in present] + sorted(present - set(fixed))


def layer_set(layers) -> str:
    """[0, 1, 3] -> "0,1,3" (baselines: "")."""
    return ",".join(str(int(k)) for k in layers) if layers is not None else ""


def _plain(value):
    if isinstance(value, np.ndarray | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value.item() if isinstance(value, np.generic) else value


@dataclass
class Sweep:
    """A sweep folder read once: every run row (plus derived columns), the selections and the manifest."""

    path: str
    runs: pd.DataFrame
    selections: list[dict] = field(default_factory=list)
    manifest: dict | None = None
    store: ResultsStore | None = None

    @property
    def datasets(self) -> list[str]:
        return sorted(self.runs["dataset"].unique()) if len(self.runs) else []

    @property
    def name(self) -> str:
        return (self.manifest or {}).get("name") or self.path.rstrip("/").rsplit("/", 1)[-1]


def prepare_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Add the derived columns the analysis uses: layer_set ("0,1,3"), signature (config apart from layers)."""
    runs = runs.copy()
    runs["layer_set"] = [layer_set(v) for v in runs["layers"]]
    runs["signature"] = [json.dumps(_plain(list(r))) for r in runs[list(SIGNATURE_COLUMNS)].itertuples(index=False)]
    return runs


def open_sweep(path: str) -> Sweep:
    """Read a sweep folder; StoreError (one sentence, what to do) when it does not exist or is not a sweep."""
    store = ResultsStore(path)
    if not store.exists():
        raise StoreError(f"no sweep folder at {path}: check the path or run `python -m engine.sweep DATASET` first")
    manifest = store.manifest()
    if manifest is None and not store.done_keys():
        raise StoreError(f"{path} is not a sweep folder (it has neither {MANIFEST} nor runs/): pass a sweep's folder")
    return Sweep(path=path, runs=prepare_runs(store.load()), selections=store.selections(), manifest=manifest,
                 store=store)  # fmt: skip


def _rank_configs(rows: pd.DataFrame) -> list[str]:
    """Config keys, best first: most ok seeds, then best mean val_auc (NaN last), then key (for determinism)."""
    ok = rows[rows["status"] == "ok"]
    seeds = ok.groupby("config_key")["seed"].nunique()
    val = ok.groupby("config_key")["val_auc"].mean()
    keys = sorted(rows["config_key"].unique())
    score = {k: (-int(seeds.get(k, 0)), -float(np.nan_to_num(val.get(k, np.nan), nan=-np.inf)), k) for k in keys}
    return sorted(keys, key=score.__getitem__)


def last_layers(runs: pd.DataFrame) -> dict[str, int]:
    """model name -> index of its last encoder layer (the highest index any MOCCA run of that model used)."""
    mocca = runs[(runs["method"] == "mocca") & (runs["layer_set"] != "")]
    return {m: max(max(int(k) for k in ls) for ls in g["layers"]) for m, g in mocca.groupby("model")}


def _twin_key(runs: pd.DataFrame, rows: pd.DataFrame, last: dict[str, int]) -> str | None:
    """The last-layer-only configuration with the same hyperparameters as `rows` (one config), if it was run."""
    first = rows.iloc[0]
    if first["model"] not in last:
        return None
    candidates = runs[(runs["signature"] == first["signature"]) & (runs["layer_set"] == str(last[first["model"]]))]
    return _rank_configs(candidates)[0] if len(candidates) else None


def reported_runs(sweep: Sweep) -> pd.DataFrame:
    """Every run of every reported configuration, one row per run, with columns `label` (see method_label) and
    `source` (selected, most seeds, or twin). Empty when the sweep has no runs."""
    runs = sweep.runs
    if runs.empty:
        return runs.assign(label=pd.Series(dtype=str), source=pd.Series(dtype=str))
    selected = {(s["dataset"], int(s["normal_class"]), s["boundary"]): s["config_key"] for s in sweep.selections}
    candidates = runs[runs["mode"] != "ablation"]
    last = last_layers(runs)
    # twins: last-layer-only configs whose hyperparameters also ran with another layer set
    mocca = runs[runs["method"] == "mocca"]
    is_last = mocca["layer_set"] == mocca["model"].map(lambda m: str(last.get(m, "")))
    twins = set(mocca.loc[is_last & mocca["signature"].isin(set(mocca.loc[~is_last, "signature"])), "config_key"])

    groups = {tuple(g) for g in candidates[["dataset", "normal_class", "method", "boundary"]].itertuples(index=False)}
    groups |= {(d, c, "mocca", b) for d, c, b in selected}
    out = []
    for dataset, cls, method, boundary in sorted(groups):
        pool = candidates[
            (candidates["dataset"] == dataset)
            & (candidates["normal_class"] == cls)
            & (candidates["method"] == method)
            & (candidates["boundary"] == boundary)
        ]
        key = selected.get((dataset, cls, boundary)) if method == "mocca" else None
        source = "selected"
        if key is None:
            ranked = [k for k in _rank_configs(pool) if k not in twins] or _rank_configs(pool)
            key, source = ranked[0], "most seeds"
        rows = runs[runs["config_key"] == key]
        if rows.empty:
            continue  # selected but none of its runs has finished yet: the cell stays missing
        out.append(rows.assign(label=method_label(method, boundary), source=source))
        if method == "mocca":
            twin = _twin_key(runs, rows, last)
            if twin is not None:
                out.append(runs[runs["config_key"] == twin].assign(label=method_label(method, boundary, True),
                                                                    source="twin"))  # fmt: skip
    return pd.concat(out, ignore_index=True) if out else runs.iloc[:0].assign(label="", source="")


def summarize(rows: pd.DataFrame, metric: str) -> dict[str, float]:
    """mean, std (ddof 1), n (ok runs) of `metric` over the runs, and how many failed or diverged."""
    ok = rows.loc[rows["status"] == "ok", metric].dropna() if len(rows) else pd.Series(dtype=float)
    return {
        "mean": float(ok.mean()) if len(ok) else math.nan,
        "std": float(ok.std(ddof=1)) if len(ok) > 1 else math.nan,
        "n": float(len(ok)),
        "failed": float((rows["status"] == "failed").sum()) if len(rows) else 0.0,
        "diverged": float((rows["status"] == "diverged").sum()) if len(rows) else 0.0,
    }


def class_average(means) -> tuple[float, float]:
    """Mean over classes of per-class means, and its standard error std(ddof 0) / sqrt(k): the convention that
    reproduces the paper's Table II from its Table I (checked in tests)."""
    values = np.asarray([m for m in means if np.isfinite(m)], dtype=float)
    if len(values) == 0:
        return math.nan, math.nan
    se = float(values.std(ddof=0) / math.sqrt(len(values))) if len(values) > 1 else math.nan
    return float(values.mean()), se


def protocol_note(rows: pd.DataFrame) -> str:
    """The selection protocol of the runs, in words ("mixed" when a table mixes both, which it should not)."""
    found = sorted(set(rows["selection"].dropna())) if len(rows) else []
    if not found:
        return "selection protocol: none (no runs)"
    if len(found) > 1:
        return f"selection protocol: MIXED ({', '.join(found)}): these numbers are not comparable"
    return f"selection protocol: {PROTOCOLS.get(found[0], found[0])}"


def config_note(rows: pd.DataFrame) -> str:
    """How the reported configurations were chosen, counted over (class, boundary) cells."""
    mocca = rows[(rows["method"] == "mocca") & (rows["source"] != "twin")]
    cells = mocca.groupby(["normal_class", "boundary"])["source"].first()
    picked = int((cells == "selected").sum())
    text = f"configs: {picked} of {len(cells)} MOCCA (class, boundary) cells selected by the search"
    if picked < len(cells):
        text += ", the rest are the config with the most ok seeds (single runs or a sweep still searching)"
    return text
