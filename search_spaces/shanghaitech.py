"""Search space for ShanghaiTech Campus (the paper's Table VI: frame-level AUC, MOCCA soft 0.730, hard 0.725).

Where the values come from:
- One class: the whole dataset is the normal data and anomalies are frames (`CLASSES = ("all",)`); the sweep runs
  one "class".
- Recipe: the reference README's end-to-end training (`-ee`): autoencoder, LSTM heads and one-class objective
  trained jointly from scratch (engine/video.py); `ae_*` settings are unused, so `ae_epochs` is fixed at 0.
- Model `causal3d_lstm` (METHOD.md 4.2): 16-frame clips of 256 x 512, code 1024 (the setting behind the reference's
  quoted parameter count), LSTM hidden 100, one layer, unidirectional (reference defaults), no selectors (the
  reference's default without `-use`; see engine/models/video.py for the selector size if switched on).
- Layers 0..6 are the reference's keys conv_lstm_o_0..4, tdl_lstm_o_0, tdl_lstm_o_1. The reference does not say
  which it used (METHOD.md open question 4); as for MVTec, the search and the ablation use the nested sets
  {6}, {5,6}, ..., {0..6} (our choice: seven sets a 12-trial search can cover).
- Loss: one-class + reconstruction with equal weights (`rec_weight` 1: the reference's unweighted sum); scores use
  squared distances (reference).
- Learning rates from the paper's small set {1e-2, 1e-3, 1e-4} (it reports 1e-2/1e-3 for ShanghaiTech); Adam with
  weight decay 0.5e-6 (reference default); nu in (0, 0.1] (paper; lower bound 1e-3 on a log scale: our choice).
- Batch 4 and radius warm-up 5 epochs: the reference's defaults. An epoch is 10000 random clips (the reference's
  fixed dataset length).
- Paper budget (our choice; the paper publishes no epochs): 30 epochs (300k clips, about 1.1 passes over the
  ~270k training windows), lr x0.1 at epoch 20.
- Smoke budget (our choice): 1 epoch of 8 clips of 8 frames at 32 x 64 (resized at load time), seconds on a CPU
  once the frames are decoded.
- Seeds: 3 at the paper budget (our choice: a run is GPU-hours and the paper gives no +- for this table), 1 at
  the smoke budget.
"""

from __future__ import annotations

from engine.data.shanghaitech import CLASSES  # noqa: F401  (part of the module contract: ("all",))
from search_spaces import layers_to_str

DATASET = "shanghaitech"
MODEL = "causal3d_lstm"
CODE_SIZE = 1024
NUM_LAYERS = 7
BASELINES = ()  # no pixel-level OC-SVM / Isolation Forest on 16-frame clips: the paper's Table VI cites methods instead
SEEDS = {"smoke": (0,), "paper": (0, 1, 2)}
DEFAULT_TRIALS = {"smoke": 2, "paper": 12}
ABLATION_LAYER_SETS = [tuple(range(first, NUM_LAYERS)) for first in range(NUM_LAYERS - 1, -1, -1)]
LAYER_SETS = list(ABLATION_LAYER_SETS)
LEARNING_RATES = (1e-2, 1e-3, 1e-4)

BUDGETS = {
    "smoke": dict(ae_epochs=0, oc_epochs=1, batch_size=2, warmup_epochs=0),
    "paper": dict(ae_epochs=0, oc_epochs=30, oc_milestones=(20,), batch_size=4, warmup_epochs=5),
}
DATA_OPTIONS = {
    "smoke": (("clip_length", 8), ("clips_per_epoch", 8), ("frame_size", (32, 64))),
    "paper": (("clip_length", 16), ("clips_per_epoch", 10000), ("rec_weight", 1.0)),
}


def fixed(budget: str, normal_class: int) -> dict:
    return {
        "dataset": DATASET,
        "model": MODEL,
        "code_size": CODE_SIZE,
        "data_options": DATA_OPTIONS[budget],
        **BUDGETS[budget],
    }


def define_search(trial, boundary: str | None = None) -> None:
    """oc_lr, nu and the layer set (no ae_lr: the end-to-end recipe has no separate autoencoder stage)."""
    trial.suggest_categorical("oc_lr", LEARNING_RATES)
    trial.suggest_float("nu", 1e-3, 0.1, log=True)
    trial.suggest_categorical("layers", [layers_to_str(s) for s in LAYER_SETS])
    if boundary is None:
        trial.suggest_categorical("boundary", ["soft", "hard"])
