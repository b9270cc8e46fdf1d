"""Datasets as one-class splits. One module per dataset; this registry maps names to them.

>>> from engine.data import load_split
>>> split = load_split("digits", normal_class=3)
>>> split.x_train.shape[1:]
torch.Size([1, 8, 8])
"""

from __future__ import annotations

import importlib
from types import ModuleType

from engine.data.base import DatasetError, OneClassSplit, resolve_class

# name -> module under engine.data; each module defines CLASSES, DEFAULT_MODEL and load(...)
DATASETS: dict[str, str] = {
    "digits": "engine.data.digits",
    "cifar10": "engine.data.cifar10",
    "mvtec": "engine.data.mvtec",
    "shanghaitech": "engine.data.shanghaitech",
}


def dataset_module(name: str) -> ModuleType:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}: choose one of {', '.join(sorted(DATASETS))}")
    return importlib.import_module(DATASETS[name])


def class_names(name: str) -> tuple[str, ...]:
    return tuple(dataset_module(name).CLASSES)


def load_split(
    dataset: str,
    normal_class: int | str,
    data_root: str | None = None,
    selection: str = "val",
    **options,
) -> OneClassSplit:
    """Load the one-class split of `dataset` with `normal_class` (index or name) as the normal data.

    Decoded data is cached per process by each module, so a worker pays the read once for many runs.
    """
    module = dataset_module(dataset)
    index = resolve_class(normal_class, tuple(module.CLASSES), dataset)
    return module.load(index, data_root=data_root, selection=selection, **options)


def clear_caches() -> None:
    """Drop every dataset module's per-process cache of decoded data (e.g. after a check in the sweep's driver,
    which trains nothing and should not hold a dataset in memory for hours)."""
    import sys

    for name in DATASETS.values():
        module = sys.modules.get(name)
        for value in vars(module).values() if module else ():
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()


__all__ = ["DATASETS", "DatasetError", "OneClassSplit", "class_names", "clear_caches", "dataset_module", "load_split"]
