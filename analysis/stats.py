"""Paired significance tests for the paper's claims, over the same (class, seed).

The paper claims that several layers beat the last layer alone (its DeepSVDD rows, Table VII) and compares the soft
and hard boundaries. Each claim here is a two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon, exact for small
n without ties) on the differences a - b of one metric, paired by (class, seed) over the reported configurations
(analysis.runs.reported_runs), pooled over classes. Only runs that finished ok pair up; a class whose two sides are
the same configuration (the search chose the last layer alone) adds no pairs. Zero differences are dropped by the
test (zero_method "wilcox"), so `n_pairs` can exceed the number of ranks used.
"""

from __future__ import annotations

import math
import warnings

import pandas as pd
from scipy.stats import wilcoxon

from analysis.runs import METRICS, method_label

TEST_NAME = "Wilcoxon signed-rank, two-sided, paired by (class, seed)"


def claims() -> list[tuple[str, str, str]]:
    """(claim, a, b): the comparisons the tables print, each as a - b."""
    out = [(f"multi-layer vs last layer ({b})", method_label("mocca", b), method_label("mocca", b, True))
           for b in ("soft", "hard")]  # fmt: skip
    out.append(("soft vs hard", method_label("mocca", "soft"), method_label("mocca", "hard")))
    out += [(f"MOCCA ({b}) vs {method_label(base)}", method_label("mocca", b), method_label(base))
            for b in ("soft", "hard") for base in ("ocsvm", "iforest")]  # fmt: skip
    return out


def paired_values(reported: pd.DataFrame, a: str, b: str, metric: str) -> pd.DataFrame:
    """One row per (dataset, class, seed) where both a and b finished ok: columns a, b (the metric's values)."""
    col = f"test_{metric}"
    ok = reported[reported["status"] == "ok"]
    frames = []
    for (_dataset, _cls), rows in ok.groupby(["dataset", "normal_class"]):
        left, right = rows[rows["label"] == a], rows[rows["label"] == b]
        if left.empty or right.empty or set(left["config_key"]) == set(right["config_key"]):
            continue
        merged = left[["dataset", "normal_class", "seed", col]].merge(
            right[["seed", col]], on="seed", suffixes=("_a", "_b")
        )
        frames.append(merged.rename(columns={f"{col}_a": "a", f"{col}_b": "b"}))
    if not frames:
        return pd.DataFrame(columns=["dataset", "normal_class", "seed", "a", "b"])
    return pd.concat(frames, ignore_index=True).dropna(subset=["a", "b"])


def wilcoxon_test(a, b) -> tuple[float, float]:
    """(statistic, p-value) of the signed-rank test of a - b; NaN when there is nothing to rank."""
    diff = pd.Series(a, dtype=float).to_numpy() - pd.Series(b, dtype=float).to_numpy()
    if len(diff) == 0 or (diff == 0).all():
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns that n is small; the table shows n
        result = wilcoxon(diff, zero_method="wilcox", alternative="two-sided")
    return float(result.statistic), float(result.pvalue)


def compare(reported: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Every claim for every metric of one dataset: n_pairs, n_classes, mean a, mean b, mean difference, p."""
    rows = []
    columns = ["dataset", "normal_class", "seed", "label", "config_key", "status", "test_auc", "test_max_ba"]
    subset = reported.loc[reported["dataset"] == dataset, columns]
    for claim, a, b in claims():
        for metric, metric_name in METRICS.items():
            pairs = paired_values(subset, a, b, metric)
            statistic, p = wilcoxon_test(pairs["a"], pairs["b"])
            rows.append({
                "claim": claim, "metric": metric_name, "a": a, "b": b, "n_pairs": len(pairs),
                "n_classes": pairs["normal_class"].nunique(), "mean_a": pairs["a"].mean() if len(pairs) else math.nan,
                "mean_b": pairs["b"].mean() if len(pairs) else math.nan,
                "mean_diff": (pairs["a"] - pairs["b"]).mean() if len(pairs) else math.nan,
                "statistic": statistic, "p_value": p,
            })  # fmt: skip
    return pd.DataFrame(rows)
