"""The 8x8 handwritten digits that ship inside scikit-learn (1797 images, real data, no download).

The project's embedded default. One fixed stratified train/test split of the whole set (70/30, seed fixed), the
same for every class and seed; train = the normal class of the train part; test = the whole test part, label 1 =
anomaly; the validation split is carved out of the test part (engine.data.base.carve_validation). Preprocessing
follows CIFAR-10's (METHOD.md 2.1): L1 global contrast normalisation, then min-max scaling with constants computed
on the normal class's training images.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from engine.data.base import OneClassSplit, global_contrast_normalize_l1, min_max_split

CLASSES = tuple(str(d) for d in range(10))
DEFAULT_MODEL = "lenet_digits"
TEST_FRACTION = 0.3
SPLIT_SEED = 0


@lru_cache(maxsize=1)
def _raw() -> tuple[torch.Tensor, np.ndarray, torch.Tensor, np.ndarray]:
    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # (1797, 1, 8, 8) in [0, 1]
    y = bunch.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    x = global_contrast_normalize_l1(x)
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def load(normal_class: int, data_root: str | None = None, selection: str = "val", **_: object) -> OneClassSplit:
    x_tr, y_tr, x_te, y_te = _raw()
    x_normal = x_tr[torch.from_numpy(y_tr == normal_class)]
    lo, hi = float(x_normal.min()), float(x_normal.max())
    return min_max_split("digits", CLASSES, normal_class, x_normal, x_te, y_te, lo, hi, selection, meta={})
