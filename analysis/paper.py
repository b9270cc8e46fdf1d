"""The MOCCA paper's published numbers (Tables I-VII), shipped as package data `analysis/paper_results.csv`.

One number a row: table, dataset, method (as the paper names it, "(soft)"/"(hard)" = boundary), cls, metric,
value, std (empty where the paper gives none), note (Table VII: `layers=...`). `load_paper()` adds two parsed
columns: `class_name` (CIFAR-10 "0:airplane" -> "airplane") and `layers` (Table VII's note -> "4,5,6").

    >>> paper = load_paper()
    >>> float(paper_value("II", "MOCCA (soft)", "mean", "auc"))
    0.676
"""

from __future__ import annotations

import io
from functools import lru_cache
from importlib import resources

import pandas as pd

PAPER_CSV = "paper_results.csv"


@lru_cache(maxsize=1)
def _read() -> pd.DataFrame:
    text = resources.files("analysis").joinpath(PAPER_CSV).read_text(encoding="utf-8")
    frame = pd.read_csv(io.StringIO(text), dtype={"cls": str, "note": str})
    frame["note"] = frame["note"].fillna("")
    frame["class_name"] = frame["cls"].str.split(":").str[-1]  # "0:airplane" -> "airplane"; "leather" stays
    frame["layers"] = frame["note"].str.extract(r"layers=([0-9,]+)", expand=False).fillna("")
    return frame


def load_paper() -> pd.DataFrame:
    """All published numbers (a copy: callers may modify it)."""
    return _read().copy()


def paper_table(table: str) -> pd.DataFrame:
    """The rows of one of the paper's tables ("I" ... "VII"), in the paper's order."""
    return load_paper().query("table == @table").reset_index(drop=True)


def paper_value(table: str, method: str, class_name: str, metric: str) -> float:
    """One published number; NaN when the paper does not give it."""
    rows = paper_table(table).query("method == @method and class_name == @class_name and metric == @metric")
    return float(rows["value"].iloc[0]) if len(rows) else float("nan")
