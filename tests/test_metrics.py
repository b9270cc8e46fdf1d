"""AUC and maxBA against scikit-learn on random and heavily tied scores."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from engine.metrics import max_balanced_accuracy, roc_auc


def _sk_max_ba(y, s):
    fpr, tpr, _ = roc_curve(y, s)
    return np.max((tpr + 1 - fpr) / 2)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("levels", [None, 3, 10])
def test_against_sklearn(seed, levels):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = rng.normal(size=300) + y * 0.7
    if levels:  # many ties
        s = np.round(s * levels / 4) / levels
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert max_balanced_accuracy(y, s) == pytest.approx(_sk_max_ba(y, s), abs=1e-12)


def test_edge_cases():
    assert roc_auc([0, 1], [0.0, 1.0]) == 1.0
    assert roc_auc([0, 1], [1.0, 0.0]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5] * 4) == 0.5
    assert max_balanced_accuracy([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    with pytest.raises(ValueError, match="both"):
        roc_auc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [0.1, float("nan")])
