"""Search space for CIFAR-10 (the paper's Tables I-II).

Where the values come from:
- Model `lenet_cifar10`, code 128, batch 256, Adam with weight decay 0.5e-6 in both stages: the paper and the
  reference code (the Deep SVDD CIFAR-10 recipe).
- Epochs at the `paper` budget: the paper does not publish them; we take Deep SVDD's CIFAR-10 recipe (autoencoder
  350 epochs with the lr dropped 10x at 250, one-class 150 epochs dropped at 50), as METHOD.md directs.
- Learning rates: the paper searches a small set around 1e-4 (Deep SVDD's value); we search {1e-4, 5e-4, 1e-3}.
- nu in (0, 0.1] (paper), warm-up 10 epochs (reference code).
- Layer sets: every subset of the four layers (conv1, conv2, conv3, code) that contains the code layer (our
  choice); the ablation trains every non-empty subset.
- Seeds 0..9 (reference code's GitHub issue #2; ten seeds per class in the paper); 2 at the smoke budget.
- Smoke budget (our choice): 2 + 2 epochs, enough to exercise the code path on a CPU.
"""

from __future__ import annotations

from search_spaces import subsets, suggest_categorical_lrs

DATASET = "cifar10"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NUM_LAYERS = 4
SEEDS = {"smoke": (0, 1), "paper": tuple(range(10))}
DEFAULT_TRIALS = {"smoke": 2, "paper": 20}
LAYER_SETS = subsets(NUM_LAYERS, must_include=NUM_LAYERS - 1)
ABLATION_LAYER_SETS = subsets(NUM_LAYERS)
LEARNING_RATES = (1e-4, 5e-4, 1e-3)

BUDGETS = {
    "smoke": dict(ae_epochs=2, oc_epochs=2, batch_size=256, warmup_epochs=1),
    "paper": dict(ae_epochs=350, oc_epochs=150, ae_milestones=(250,), oc_milestones=(50,), batch_size=256,
                  warmup_epochs=10),
}  # fmt: skip


def fixed(budget: str, normal_class: int) -> dict:
    return {"dataset": DATASET, "model": "lenet_cifar10", "code_size": 128, **BUDGETS[budget]}


def define_search(trial, boundary: str | None = None) -> None:
    suggest_categorical_lrs(trial, LEARNING_RATES, LAYER_SETS, boundary)
