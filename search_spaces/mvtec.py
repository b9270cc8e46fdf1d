"""Search space for MVTec AD (the paper's Tables III-V and the Table VII layer ablation).

Where the values come from:
- Categories and their rules (texture or object, image size, rotation range): the reference code, METHOD.md 3.1,
  kept in `engine.data.mvtec.category_rules`; `fixed()` writes them into the run's data_options so every stored
  row says what it trained on. Textures: 512 px images, random 64 px training patches, tested on the 8 x 8 patch
  grid, rotation 0..45 degrees; bottle, hazelnut, metal_nut, screw: 128 px, -45..45; the other objects: 128 px, no
  rotation.
- Model `resae_mvtec`, the residual AE with selector heads, code 128: the reference README's MVTec command
  (`-zl 128 --use-selector`). Layers 0..6 are the paper's Table VII numbering: 0 = the first conv, 1-4 = the
  four residual stages (Residual, Downsample x3), 5-6 = the two fully connected layers (fc1; fc2 = the code before
  its sigmoid). They are the reference encoder's indices 0..6; its index 7 (the sigmoid of index 6) is dropped
  (see engine/models/mvtec.py).
- Test scores use the plain L2 distance (`squared_scores=False`): the reference code's MVTec test (METHOD.md 3.5,
  section 5 bug 8); training uses squared distances as everywhere.
- Learning rates from the paper's small set {1e-2, 1e-3, 1e-4} (it reports 1e-2/1e-3 for MVTec); Adam with weight
  decay 0.5e-6 (reference default); nu in (0, 0.1] (paper; lower bound 1e-3 on a log scale: our choice).
- Layer sets: the paper selects one per category and its Table VII ablation trains the nested sets
  {6}, {5,6}, ..., {0..6} (paper_results.csv, table VII, note `layers=`). The search picks among these seven (our
  choice: a 64-way categorical over every subset is too sparse for 20 trials); the ablation trains exactly them.
- Paper budget (our choice; the paper publishes no epochs): the reference trains on a ~50k-sample augmentation
  cache per epoch, about 200 of our epochs (one pass over the ~200-400 training images, freshly augmented). We
  train the autoencoder 300 epochs (lr x0.1 at 200) and the one-class stage 150 epochs (x0.1 at 100), batch 32,
  radius updated from one-class epoch 20 on (the reference's 5 cache epochs would never end within 150).
- Smoke budget (our choice): 2 + 2 epochs on tiny images (textures 64 px cut into 16 px patches, objects 32 px),
  so a run takes seconds on a CPU once the images are decoded.
- Seeds: 5 per configuration at the paper budget (our choice; the paper's +- values do not say how many), 2 at
  the smoke budget.
"""

from __future__ import annotations

from engine.data.mvtec import CLASSES, category_rules
from search_spaces import suggest_categorical_lrs

DATASET = "mvtec"
MODEL = "resae_mvtec"
CODE_SIZE = 128
NUM_LAYERS = 7
SEEDS = {"smoke": (0, 1), "paper": tuple(range(5))}
DEFAULT_TRIALS = {"smoke": 2, "paper": 20}
ABLATION_LAYER_SETS = [tuple(range(first, NUM_LAYERS)) for first in range(NUM_LAYERS - 1, -1, -1)]  # Table VII
LAYER_SETS = list(ABLATION_LAYER_SETS)
LEARNING_RATES = (1e-2, 1e-3, 1e-4)

# image side per budget; textures also give the patch side (the network input) and are tested on the patch grid
IMAGE_SIZES = {
    "smoke": {"texture": (64, 16), "object": 32},
    "paper": {"texture": (512, 64), "object": 128},
}
BUDGETS = {
    "smoke": dict(ae_epochs=2, oc_epochs=2, batch_size=16, warmup_epochs=1),
    "paper": dict(ae_epochs=300, oc_epochs=150, ae_milestones=(200,), oc_milestones=(100,), batch_size=32,
                  warmup_epochs=20),
}  # fmt: skip


def data_options(budget: str, normal_class: int) -> tuple[tuple[str, object], ...]:
    """The category's image size, patch size (textures) and rotation range at `budget`, as TrialSpec.data_options."""
    rules = category_rules(CLASSES[normal_class])
    sizes = IMAGE_SIZES[budget]
    options: dict[str, object] = {"rotation_min": rules.rotation[0], "rotation_max": rules.rotation[1]}
    if rules.texture:
        options["image_size"], options["patch_size"] = sizes["texture"]
    else:
        options["image_size"] = sizes["object"]
    return tuple(sorted(options.items()))


def fixed(budget: str, normal_class: int) -> dict:
    return {
        "dataset": DATASET,
        "model": MODEL,
        "code_size": CODE_SIZE,
        "squared_scores": False,
        "data_options": data_options(budget, normal_class),
        **BUDGETS[budget],
    }


def define_search(trial, boundary: str | None = None) -> None:
    suggest_categorical_lrs(trial, LEARNING_RATES, LAYER_SETS, boundary)
