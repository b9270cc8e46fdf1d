"""What a sweep searches, per dataset: one module each, all with the same module-level names.

Every module defines:
    DATASET            the engine.data name
    CLASSES            class names (index = class id)
    SEEDS              seeds of the `seeds` and `ablation` phases
    BUDGETS            {"smoke": {...}, "paper": {...}}: TrialSpec fields fixed at that budget (epochs, batch, ...)
    DEFAULT_TRIALS     {"smoke": n, "paper": n}: Optuna trials per (class, boundary)
    LAYER_SETS         the layer subsets the search may pick (tuples of encoder layer indices)
    ABLATION_LAYER_SETS the layer subsets the ablation trains (the paper's Table VII for MVTec)
    NUM_LAYERS         encoder layers of the dataset's model; the last one is the "last layer only" twin
    BASELINES          (optional) classic baselines the seeds phase trains; default ("ocsvm", "iforest")
    def fixed(budget, normal_class) -> dict      TrialSpec fields fixed for this class at this budget
    def define_search(trial, boundary=None) -> None   Optuna define-by-run: suggests ae_lr, oc_lr, nu, layers
                                                      (and boundary when it is None); module level so Ray can pickle it

`params_to_fields` turns Optuna's flat parameters into TrialSpec fields.
"""

from __future__ import annotations

import importlib
from itertools import combinations
from types import ModuleType

SPACES = {
    "digits": "search_spaces.digits",
    "cifar10": "search_spaces.cifar10",
    "mvtec": "search_spaces.mvtec",
    "shanghaitech": "search_spaces.shanghaitech",
}


def get_space(dataset: str) -> ModuleType:
    if dataset not in SPACES:
        raise ValueError(f"no search space for dataset {dataset!r}: choose one of {', '.join(sorted(SPACES))}")
    return importlib.import_module(SPACES[dataset])


def layers_to_str(layers: tuple[int, ...]) -> str:
    return ",".join(str(k) for k in layers)


def str_to_layers(text: str) -> tuple[int, ...]:
    return tuple(int(k) for k in str(text).split(","))


def subsets(num_layers: int, must_include: int | None = None) -> list[tuple[int, ...]]:
    """Every non-empty subset of range(num_layers), optionally only those containing `must_include`."""
    out = [c for r in range(1, num_layers + 1) for c in combinations(range(num_layers), r)]
    return [c for c in out if must_include is None or must_include in c]


def suggest_categorical_lrs(trial, learning_rates, layer_sets, boundary: str | None, nu=(1e-3, 0.1)) -> None:
    """The define-by-run space shared by datasets whose learning rates come from a small set (the paper's way):
    ae_lr and oc_lr from `learning_rates`, nu log-uniform in `nu`, one of `layer_sets`, and the boundary when
    the experiment does not fix it."""
    trial.suggest_categorical("ae_lr", learning_rates)
    trial.suggest_categorical("oc_lr", learning_rates)
    trial.suggest_float("nu", *nu, log=True)
    trial.suggest_categorical("layers", [layers_to_str(s) for s in layer_sets])
    if boundary is None:
        trial.suggest_categorical("boundary", ["soft", "hard"])


def params_to_fields(params: dict) -> dict:
    """Optuna's flat parameters -> TrialSpec fields (layers travel as "0,1,3" strings: Optuna needs scalars)."""
    fields = dict(params)
    if "layers" in fields:
        fields["layers"] = str_to_layers(fields["layers"])
    return fields
