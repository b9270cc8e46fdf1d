"""Image-level metrics: ROC AUC and maxBA (the best balanced accuracy over all thresholds). Label 1 = anomaly.

Both come from one sort of the scores with ties grouped, as scikit-learn's `roc_curve` does; tests check them
against scikit-learn on random and tied scores.

    >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
"""

from __future__ import annotations

import numpy as np


def roc_points(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct threshold, starting at (0, 0); tied scores form one point."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.all() or not y.any():
        raise ValueError("AUC needs both normal (0) and anomalous (1) samples")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]


def roc_auc(labels, scores) -> float:
    fpr, tpr = roc_points(labels, scores)
    return float(np.trapezoid(tpr, fpr))


def max_balanced_accuracy(labels, scores) -> float:
    """max over thresholds of (TPR + TNR) / 2."""
    fpr, tpr = roc_points(labels, scores)
    return float(np.max((tpr + 1 - fpr) / 2))
