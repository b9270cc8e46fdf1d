"""Search space for the scikit-learn 8x8 digits (the embedded default dataset).

Where the values come from:
- Model `lenet_digits` (our choice): the paper's CIFAR-10 LeNet scaled to 8x8 inputs, layers 0..3 (three convs,
  the code), code 32.
- Optimiser: Adam with L2 weight decay 0.5e-6 in both stages (the paper and the reference code).
- Learning rates: the paper searches a small set and reports 1e-3/1e-4; we search the log range [1e-4, 1e-2]
  because an 8x8 model with few epochs needs larger steps (our choice).
- nu in (0, 0.1] as in the paper (lower bound 1e-3, log scale: our choice); warm-up 10 epochs at the paper budget
  as in the reference code, 5 at the smoke budget so the radius is updated at all.
- Layer sets: every subset that contains the code layer (our choice, so that "last layer only" is in the space);
  the ablation trains every non-empty subset.
- Budgets (our choice): smoke = 20 + 20 epochs, about a second per run on a CPU; paper = 100 + 100 epochs with the
  lr dropped 10x at epoch 70; the default lrs (3e-3 stage 1, 1e-3 stage 2) are the smoke budget's best on class 3.
- Seeds 0..9 as in the paper's reference (GitHub issue #2 of the reference code); 3 at the smoke budget.
"""

from __future__ import annotations

from search_spaces import layers_to_str, subsets

DATASET = "digits"
CLASSES = tuple(str(d) for d in range(10))
NUM_LAYERS = 4
SEEDS = {"smoke": (0, 1, 2), "paper": tuple(range(10))}
DEFAULT_TRIALS = {"smoke": 4, "paper": 30}
LAYER_SETS = subsets(NUM_LAYERS, must_include=NUM_LAYERS - 1)
ABLATION_LAYER_SETS = subsets(NUM_LAYERS)

BUDGETS = {
    "smoke": dict(ae_epochs=20, oc_epochs=20, ae_lr=3e-3, oc_lr=1e-3, batch_size=64, warmup_epochs=5),
    "paper": dict(ae_epochs=100, oc_epochs=100, ae_lr=3e-3, oc_lr=1e-3, ae_milestones=(70,), oc_milestones=(70,),
                  batch_size=64, warmup_epochs=10),
}  # fmt: skip


def fixed(budget: str, normal_class: int) -> dict:
    return {"dataset": DATASET, "model": "lenet_digits", **BUDGETS[budget]}


def define_search(trial, boundary: str | None = None) -> None:
    trial.suggest_float("ae_lr", 1e-4, 1e-2, log=True)
    trial.suggest_float("oc_lr", 1e-4, 1e-2, log=True)
    trial.suggest_float("nu", 1e-3, 0.1, log=True)
    trial.suggest_categorical("layers", [layers_to_str(s) for s in LAYER_SETS])
    if boundary is None:
        trial.suggest_categorical("boundary", ["soft", "hard"])
