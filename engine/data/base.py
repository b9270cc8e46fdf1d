"""The one-class split every dataset module produces, and the helpers they share.

A dataset module (`engine/data/<name>.py`) reads its own on-disk format, applies the paper's preprocessing and
returns a `OneClassSplit`: training images of the normal class only, and a test part with label 1 = anomaly,
divided into a validation split (for selecting hyperparameters) and the reported test split (DESIGN.md,
Protocols). Everything is a tensor, so a split moves to the training device once and batches are taken by index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from sklearn.model_selection import train_test_split

SELECTIONS = ("val", "test")
VAL_FRACTION = 0.2
VAL_SPLIT_SEED = 20221  # fixed: the validation split never depends on the run's seed


class DatasetError(ValueError):
    """A problem with the user's data (missing folder, bad format, unknown class): the message says what to do."""


@dataclass
class OneClassSplit:
    """Tensors of one (dataset, normal class) problem. Labels: 0 = normal, 1 = anomaly.

    `train_transform`, when set, maps a batch of training images to the network's input on the fly (random
    rotations and patches for MVTec). `test_patches`, when set, cuts each test image into that many network inputs
    whose scores are max-reduced to the image score (MVTec textures).
    """

    dataset: str
    normal_class: int
    class_name: str
    x_train: torch.Tensor  # (N, C, H, W) float32, normal class only
    x_val: torch.Tensor
    y_val: torch.Tensor  # (N_val,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    selection: str = "val"
    train_transform: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None
    test_view: Callable[[torch.Tensor], torch.Tensor] | None = None
    views_per_test_item: int = 1
    meta: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one training input (after augmentation: MVTec's textures train on patches). The
        augmentation draws from a throwaway generator: asking a shape must not move the global RNG, from which the
        model's weights are drawn next."""
        x = self.x_train[:1]
        if self.train_transform is not None:
            x = self.train_transform(x, torch.Generator(device=x.device).manual_seed(0))
        return tuple(x.shape[1:])

    def to(self, device: torch.device | str) -> OneClassSplit:
        """Move every tensor to `device` (once per process, not per batch)."""
        return replace(
            self,
            x_train=self.x_train.to(device),
            x_val=self.x_val.to(device),
            y_val=self.y_val.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )

    def summary(self) -> str:
        n_anom = int(self.y_test.sum())
        return (
            f"{self.dataset} class {self.normal_class} ({self.class_name}): train {len(self.x_train)} normal, "
            f"validation {len(self.y_val)}, test {len(self.y_test)} ({n_anom} anomalous), "
            f"selection on {self.selection}"
        )


def carve_validation(
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    strata: np.ndarray,
    selection: str,
    fraction: float = VAL_FRACTION,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split the test part into (x_val, y_val, x_test, y_test).

    `selection="val"`: a stratified `fraction` of the test part (stratified on `strata`, usually the original class
    labels) becomes the validation split and the rest is the reported test split; fixed seed, so the same for every
    run seed. `selection="test"`: the paper's protocol, validation = test = the whole test part.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if selection == "test":
        return x_test, y_test, x_test, y_test
    idx = np.arange(len(y_test))
    counts = np.unique(strata, return_counts=True)[1]
    stratify = strata if counts.min() >= 2 else y_test.numpy()
    val_idx, test_idx = train_test_split(idx, test_size=1 - fraction, stratify=stratify, random_state=VAL_SPLIT_SEED)
    val_idx, test_idx = torch.from_numpy(np.sort(val_idx)), torch.from_numpy(np.sort(test_idx))
    return x_test[val_idx], y_test[val_idx], x_test[test_idx], y_test[test_idx]


def min_max_split(
    dataset: str,
    classes: tuple[str, ...],
    normal_class: int,
    x_normal: torch.Tensor,
    x_test: torch.Tensor,
    test_classes: np.ndarray,
    lo: float,
    hi: float,
    selection: str,
    meta: dict,
) -> OneClassSplit:
    """The CIFAR-10-style split (digits uses it too): min-max scale train and test with the normal class's
    constants, label test samples of other classes 1, carve the validation split stratified on the classes."""
    labels = torch.from_numpy((test_classes != normal_class).astype(np.int64))  # 1 = anomaly
    x_val, y_val, x_rest, y_rest = carve_validation(min_max_scale(x_test, lo, hi), labels, test_classes, selection)
    return OneClassSplit(
        dataset=dataset,
        normal_class=normal_class,
        class_name=classes[normal_class],
        x_train=min_max_scale(x_normal, lo, hi),
        x_val=x_val,
        y_val=y_val,
        x_test=x_rest,
        y_test=y_rest,
        selection=selection,
        meta={"min": lo, "max": hi, **meta},
    )


def global_contrast_normalize_l1(x: torch.Tensor) -> torch.Tensor:
    """Per-sample L1 global contrast normalisation (METHOD.md 2.1), batched over dim 0.

    x <- (x - mean(x)) / mean(|x - mean(x)|). A constant image has a zero scale: it maps to all zeros (the value
    an epsilon-guarded normalisation gives) instead of the reference's NaN; every other image is unchanged.
    """
    flat = x.reshape(len(x), -1)
    centred = flat - flat.mean(dim=1, keepdim=True)
    scale = centred.abs().mean(dim=1, keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (centred / scale).reshape(x.shape)


def min_max_scale(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """(x - lo) / (hi - lo) with the normal class's constants; other classes may leave [0, 1]."""
    return (x - lo) / (hi - lo)


def resolve_class(name_or_index: str | int, classes: tuple[str, ...], dataset: str) -> int:
    """Accept a class index ("3", 3) or a name ("cat"); raise DatasetError naming the valid choices otherwise."""
    text = str(name_or_index).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if 0 <= index < len(classes):
            return index
    elif text in classes:
        return classes.index(text)
    choices = ", ".join(f"{i}:{c}" for i, c in enumerate(classes))
    raise DatasetError(f"unknown {dataset} class {text!r}: choose an index or name among {choices}")
