"""One run, no Ray: `run_trial(spec) -> TrialResult`. The one function every driver (train.py, sweep.py) calls.

A `TrialSpec` fixes everything that determines a run; `run_key(spec)` hashes exactly that, so a results store
can tell whether a run is already done. `run_trial` seeds, loads the split (cached per process and device),
builds the model, runs both MOCCA stages (or a scikit-learn baseline), scores validation and test, and returns a
flat row (config + metrics + durations + provenance) with per-sample scores and per-epoch curves.

    >>> spec = TrialSpec(dataset="digits", normal_class=0, ae_epochs=1, oc_epochs=1)
    >>> result = run_trial(spec)                      # doctest: +SKIP
    >>> result.row["test_auc"]                        # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import random
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from engine import __version__, distributed
from engine.compiled import compiled_model
from engine.data import OneClassSplit, class_names, dataset_module, load_split
from engine.metrics import max_balanced_accuracy, roc_auc
from engine.models import create_model, model_options
from engine.objective import BOUNDARIES, layer_scores
from engine.training import (
    MEMORY_FORMATS,
    PRECISIONS,
    Diverged,
    OneClassModel,
    StageConfig,
    resolve_memory_format,
    test_distances,
    train_autoencoder,
    train_one_class,
    with_memory_format,
)

METHODS = ("mocca", "ocsvm", "iforest")
BASELINES = ("ocsvm", "iforest")
KEY_VERSION = "1"  # bump when a change makes old results incomparable; it is part of every run key
# where the data lives, where it runs and how fast (layout, compilation) do not change what the run is
NOT_IN_KEY = ("data_root", "device", "memory_format", "compile")
# what only stage 2 reads: runs that agree on everything else train the same autoencoder in stage 1
STAGE2_ONLY = ("boundary", "layers", "nu", "oc_epochs", "oc_lr", "oc_weight_decay", "oc_milestones", "warmup_epochs",
               "centroid_eps", "squared_scores")  # fmt: skip


@dataclass(frozen=True)
class TrialSpec:
    """Everything that determines one run. `None` for model, code size or layers means the dataset's default."""

    dataset: str = "digits"
    normal_class: int = 0
    method: str = "mocca"
    boundary: str = "soft"
    layers: tuple[int, ...] | None = None  # encoder layer indices, 0 = closest to the input; None = all
    nu: float = 0.1
    model: str | None = None
    code_size: int | None = None
    ae_epochs: int = 10
    ae_lr: float = 1e-4
    ae_weight_decay: float = 0.5e-6
    ae_milestones: tuple[int, ...] = ()
    oc_epochs: int = 10
    oc_lr: float = 1e-4
    oc_weight_decay: float = 0.5e-6
    oc_milestones: tuple[int, ...] = ()
    batch_size: int = 256
    warmup_epochs: int = 10
    centroid_eps: float = 0.1
    squared_scores: bool = True
    precision: str = "fp32"
    selection: str = "val"
    seed: int = 0
    data_options: tuple[tuple[str, object], ...] = ()  # dataset-specific settings, e.g. (("image_size", 64),)
    data_root: str | None = None
    device: str = "auto"
    memory_format: str = "auto"  # auto (per device type, engine.training.AUTO_MEMORY_FORMAT), contiguous, channels_last
    compile: bool = False  # torch.compile the training steps, compiled once per process (engine/compiled.py)

    def validate(self) -> TrialSpec:
        """Raise ValueError with a one-sentence fix for a value out of range; returns self for chaining."""
        module = dataset_module(self.dataset)
        if not 0 <= self.normal_class < len(module.CLASSES):
            raise ValueError(f"normal class {self.normal_class} is out of range for {self.dataset}")
        checks = [
            (self.method in METHODS, f"method must be one of {', '.join(METHODS)}"),
            (self.boundary in BOUNDARIES, f"boundary must be one of {', '.join(BOUNDARIES)}"),
            (0 < self.nu <= 1, f"nu must lie in (0, 1], got {self.nu}"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (self.memory_format in MEMORY_FORMATS, f"memory format must be one of {', '.join(MEMORY_FORMATS)}"),
            (self.selection in ("val", "test"), "selection must be 'val' or 'test'"),
            (self.batch_size >= 2, "batch size must be at least 2"),
            (self.ae_epochs >= 0 and self.oc_epochs >= 0, "epochs cannot be negative"),
            (self.ae_lr > 0 and self.oc_lr > 0, "learning rates must be positive"),
            (self.code_size is None or self.code_size > 0, "code size must be positive"),
            (self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"), "device: auto, cpu or cuda"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.layers is not None:
            n = self.model_kwargs_num_layers()
            if not self.layers or any(not 0 <= k < n for k in self.layers) or len(set(self.layers)) != len(self.layers):
                raise ValueError(f"layers must be distinct indices in 0..{n - 1} for model {self.model_name}")
        return self

    @property
    def model_name(self) -> str:
        return self.model or dataset_module(self.dataset).DEFAULT_MODEL

    def model_kwargs(self) -> dict:
        return {} if self.code_size is None else {"code_size": self.code_size}

    def model_kwargs_num_layers(self) -> int:
        return _num_layers(self.model_name, json.dumps(self.model_kwargs(), sort_keys=True))

    def resolved_layers(self) -> tuple[int, ...]:
        return tuple(self.layers) if self.layers is not None else tuple(range(self.model_kwargs_num_layers()))

    def key_fields(self) -> dict:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in NOT_IN_KEY}
        fields["layers"] = self.resolved_layers()
        fields["model"] = self.model_name
        skip = getattr(dataset_module(self.dataset), "OPTIONS_NOT_IN_KEY", ())  # e.g. how frames are held in memory
        fields["data_options"] = tuple((k, v) for k, v in self.data_options if k not in skip)
        if self.method in BASELINES:  # a baseline ignores the deep-model settings: one key per (class, seed, nu)
            keep = ("dataset", "normal_class", "method", "nu", "selection", "seed", "data_options")
            fields = {k: fields[k] for k in keep}
        return fields


@lru_cache(maxsize=16)
def _num_layers(model: str, kwargs_json: str) -> int:
    return create_model(model, **json.loads(kwargs_json)).encoder.num_layers


def _hash(fields: dict) -> str:
    payload = json.dumps({"v": KEY_VERSION, **fields}, sort_keys=True, default=list)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def run_key(spec: TrialSpec) -> str:
    """Stable 16-hex hash of everything that determines the run (not where its data lives or which device runs it)."""
    return _hash(spec.key_fields())


def config_key(spec: TrialSpec) -> str:
    """Like `run_key` without the seed: runs of one configuration under several seeds share it."""
    return _hash({k: v for k, v in spec.key_fields().items() if k != "seed"})


def stage1_key(spec: TrialSpec) -> str:
    """Like `config_key`, of stage 1 alone: runs that share it and a seed train the same autoencoder (a
    configuration and its last-layer twin, the layer sets of an ablation), so it can be trained once for them."""
    return _hash({k: v for k, v in spec.key_fields().items() if k not in (*STAGE2_ONLY, "seed")})


@dataclass
class TrialResult:
    row: dict  # one flat record: config, metrics, durations, provenance (the results store's run schema)
    scores: pd.DataFrame = field(default_factory=pd.DataFrame)  # per sample: split, item, label, score, layer_<k>
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)  # per epoch: stage, epoch, loss, lr, radius_<k>


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@lru_cache(maxsize=4)
def _cached_split(dataset, normal_class, data_root, selection, data_options, device) -> OneClassSplit:
    split = load_split(dataset, normal_class, data_root=data_root, selection=selection, **dict(data_options))
    return split.to(device)


def split_for(spec: TrialSpec, device: torch.device) -> OneClassSplit:
    """The run's split on `device`; loaded and moved once per process for all runs that share it."""
    return _cached_split(spec.dataset, spec.normal_class, spec.data_root, spec.selection, spec.data_options, device)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@lru_cache(maxsize=1)
def code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0 and out.stdout.strip():
            return f"{__version__}+{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def base_row(spec: TrialSpec) -> dict:
    """Config and provenance columns of a run, before it has metrics."""
    names = class_names(spec.dataset)
    return {
        "run_key": run_key(spec),
        "config_key": config_key(spec),
        "dataset": spec.dataset,
        "normal_class": spec.normal_class,
        "class_name": names[spec.normal_class] if spec.normal_class < len(names) else "",
        "method": spec.method,
        "boundary": spec.boundary if spec.method == "mocca" else "",
        "layers": list(spec.resolved_layers()) if spec.method == "mocca" else [],
        "nu": spec.nu,
        "model": spec.model_name if spec.method == "mocca" else spec.method,
        "code_size": spec.code_size or 0,
        "ae_epochs": spec.ae_epochs,
        "ae_lr": spec.ae_lr,
        "ae_weight_decay": spec.ae_weight_decay,
        "ae_milestones": list(spec.ae_milestones),
        "oc_epochs": spec.oc_epochs,
        "oc_lr": spec.oc_lr,
        "oc_weight_decay": spec.oc_weight_decay,
        "oc_milestones": list(spec.oc_milestones),
        "batch_size": spec.batch_size,
        "warmup_epochs": spec.warmup_epochs,
        "centroid_eps": spec.centroid_eps,
        "squared_scores": spec.squared_scores,
        "precision": spec.precision,
        "selection": spec.selection,
        "seed": spec.seed,
        "data_options": json.dumps(dict(spec.data_options), sort_keys=True),
        "status": "running",
        "error": "",
        "hostname": platform.node(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "",
        "code_version": code_version(),
        "started_at": _now(),
    }


def failed_row(spec: TrialSpec, error: BaseException, status: str = "failed") -> dict:
    row = base_row(spec)
    row.update(status=status, error=f"{type(error).__name__}: {error}"[:2000], ended_at=_now())
    return row


def _evaluate(split: OneClassSplit, combined: dict, per_layer: dict) -> dict:
    """AUC and maxBA of the combined scores (N,) and AUC of each layer's scores (L, N), on validation and test."""
    labels = {"val": split.y_val.cpu().numpy(), "test": split.y_test.cpu().numpy()}
    metrics = {}
    for name, y in labels.items():
        metrics[f"{name}_auc"] = roc_auc(y, combined[name])
        metrics[f"{name}_max_ba"] = max_balanced_accuracy(y, combined[name])
        metrics[f"layer_{name}_auc"] = [roc_auc(y, s) for s in per_layer[name]]
    return metrics


def _score_table(layers, parts: dict[str, tuple]) -> pd.DataFrame:
    """Long table of per-sample scores: one row per (split, item), per-layer score terms as layer_<k>."""
    frames = []
    for name, (labels, per_layer, combined) in parts.items():
        frame = pd.DataFrame({"split": name, "item": np.arange(len(labels)), "label": labels, "score": combined})
        for k, values in zip(layers, per_layer, strict=True):
            frame[f"layer_{k}"] = values
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def model_kwargs_for(spec: TrialSpec, split: OneClassSplit) -> dict:
    """The model factory's arguments of a run: the spec's, plus what the data decides (channels, input side)."""
    kwargs = {"in_channels": split.x_train.shape[1], **spec.model_kwargs()}
    if "input_size" in model_options(spec.model_name):  # sized by the data (MVTec: image or texture patch side)
        kwargs["input_size"] = split.input_shape[-1]
    return kwargs


def stage_configs(spec: TrialSpec) -> tuple[StageConfig, StageConfig]:
    """The optimiser settings of stage 1 (autoencoder) and stage 2 (one-class)."""
    return (
        StageConfig(spec.ae_epochs, spec.ae_lr, spec.ae_weight_decay, spec.ae_milestones, spec.batch_size),
        StageConfig(spec.oc_epochs, spec.oc_lr, spec.oc_weight_decay, spec.oc_milestones, spec.batch_size),
    )


def _mocca(spec: TrialSpec, split: OneClassSplit, generator: torch.Generator, timings: dict) -> TrialResult:
    layers = spec.resolved_layers()
    model_kwargs = model_kwargs_for(spec, split)
    device = split.x_train.device
    memory_format = resolve_memory_format(spec.memory_format, device)
    ae, split = with_memory_format(create_model(spec.model_name, **model_kwargs).to(device), split, memory_format)
    forward, features = ae, None  # what the training steps call: eager unless compiled
    if spec.compile:  # one compiled instance per architecture and process, given this run's fresh weights
        compiled = compiled_model(ae, (spec.model_name, model_kwargs), device, memory_format)
        ae, forward, features = compiled.model, compiled.forward, compiled.features(layers)
    ae_cfg, oc_cfg = stage_configs(spec)

    t = time.perf_counter()
    curves = train_autoencoder(forward, split, ae_cfg, generator, spec.precision)
    timings["autoencoder_s"] = time.perf_counter() - t

    t = time.perf_counter()
    encoder = ae.encoder  # stage 2 continues from exactly the stage-1 encoder weights (METHOD.md 5, bug 1)
    state: OneClassModel = train_one_class(
        encoder, split, layers, spec.boundary, spec.nu, oc_cfg, generator,
        warmup_epochs=spec.warmup_epochs, centroid_eps=spec.centroid_eps, precision=spec.precision,
        features=features,
    )  # fmt: skip
    timings["one_class_s"] = time.perf_counter() - t
    if not distributed.is_main_process():  # a data-parallel run: rank 0 alone scores it and stores the row
        return TrialResult(row={})
    return score_mocca(spec, split, encoder, state, curves, timings)


def score_mocca(
    spec: TrialSpec, split: OneClassSplit, encoder: torch.nn.Module, state: OneClassModel, curves: list[dict],
    timings: dict, models: tuple[int, int] = (1, 1),
) -> TrialResult:  # fmt: skip
    """Score a trained encoder on validation and test: metrics, per-sample scores and curves. `timings` holds the
    stages' durations (`score_s` is added); `models` = how many models stage 1 and stage 2 trained side by side
    in them (engine/packing.py), whose images the throughput columns count."""
    layers = state.layers
    t = time.perf_counter()
    per_layer = {}
    for name, x in (("val", split.x_val), ("test", split.x_test)):
        dist = test_distances(encoder, state, x, spec.batch_size, split, spec.precision)  # (L, N, P)
        terms = layer_scores(dist.flatten(1), state.radii, spec.boundary, spec.squared_scores).view(dist.shape)
        per_layer[name] = terms  # image score = max over views of the mean over layers; per layer: max over views
    combined = {name: terms.mean(dim=0).amax(dim=-1).cpu().numpy() for name, terms in per_layer.items()}
    per_layer = {name: terms.amax(dim=-1).cpu().numpy() for name, terms in per_layer.items()}
    for name, scores in combined.items():
        if not np.isfinite(scores).all():
            raise Diverged(f"{name} scores contain NaN or infinity")
    metrics = _evaluate(split, combined, per_layer)
    timings["score_s"] = time.perf_counter() - t

    n = len(split.x_train)
    metrics["ae_images_per_s"] = models[0] * spec.ae_epochs * n / max(timings["autoencoder_s"], 1e-9)
    metrics["oc_images_per_s"] = models[1] * spec.oc_epochs * n / max(timings["one_class_s"], 1e-9)
    metrics["final_radii"] = [float(r) for r in state.radii.tolist()]
    metrics["code_size"] = encoder.layer_dims[-1]
    labels = {"val": split.y_val.cpu().numpy(), "test": split.y_test.cpu().numpy()}
    scores = _score_table(layers, {k: (labels[k], per_layer[k], combined[k]) for k in labels})
    return TrialResult(row=metrics, scores=scores, curves=pd.DataFrame(curves + state.curves))


def _flat_inputs(split: OneClassSplit, x: torch.Tensor) -> np.ndarray:
    inputs = split.test_view(x) if split.test_view is not None else x
    return inputs.flatten(1).cpu().numpy().astype(np.float64)


def _baseline(spec: TrialSpec, split: OneClassSplit, generator: torch.Generator, timings: dict) -> TrialResult:
    """OC-SVM (RBF, gamma 'scale', nu = spec.nu) or Isolation Forest on raw pixels of the same split."""
    from sklearn.ensemble import IsolationForest
    from sklearn.svm import OneClassSVM

    x_train = split.x_train
    if split.train_transform is not None:
        x_train = split.train_transform(x_train, generator)
    t = time.perf_counter()
    if spec.method == "ocsvm":
        model = OneClassSVM(kernel="rbf", gamma="scale", nu=spec.nu)
    else:
        model = IsolationForest(n_estimators=100, random_state=spec.seed)
    model.fit(x_train.flatten(1).cpu().numpy().astype(np.float64))
    timings["fit_s"] = time.perf_counter() - t

    t = time.perf_counter()
    per_item = split.views_per_test_item
    combined = {}
    for name, x in (("val", split.x_val), ("test", split.x_test)):
        raw = -model.score_samples(_flat_inputs(split, x))  # higher = more anomalous
        combined[name] = raw.reshape(len(x), per_item).max(axis=1)
    metrics = _evaluate(split, combined, {"val": [], "test": []})
    timings["score_s"] = time.perf_counter() - t
    labels = {"val": split.y_val.cpu().numpy(), "test": split.y_test.cpu().numpy()}
    scores = _score_table((), {k: (labels[k], [], combined[k]) for k in labels})
    return TrialResult(row=metrics, scores=scores)


def _video(spec: TrialSpec, split, generator: torch.Generator, timings: dict) -> TrialResult:
    """The end-to-end video recipe (METHOD.md 4.4-4.5); imported here so image runs never load it."""
    from engine.video import run_video

    return run_video(spec, split, generator, timings)


def run_trial(spec: TrialSpec) -> TrialResult:
    """Train and evaluate one run. Divergence gives status `diverged`; any other error propagates (the caller
    decides whether it is the user's to fix or a failed run to record, see `failed_row`)."""
    spec.validate()
    device = resolve_device(spec.device)
    row = base_row(spec)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    t = time.perf_counter()
    split = split_for(spec, device)
    timings["data_s"] = time.perf_counter() - t
    generator = seed_everything(spec.seed)
    row.update(device=str(device), n_train=len(split.x_train), n_val=len(split.y_val), n_test=len(split.y_test),
               pack_size=1, stage1_shared_by=1)  # fmt: skip
    try:
        if getattr(dataset_module(spec.dataset), "VIDEO", False):
            result = _video(spec, split, generator, timings)
        else:
            result = (_mocca if spec.method == "mocca" else _baseline)(spec, split, generator, timings)
    except Diverged as exc:
        result = TrialResult(row={})
        row.update(status="diverged", error=str(exc))
    else:
        row["status"] = "ok"
    return finish(row, result, timings, start)


def finish(row: dict, result: TrialResult, timings: dict, start: float | None) -> TrialResult:
    """The run's complete result: `row` (config, provenance, status) with the result's metrics, the durations and
    the end time; per-sample scores and curves keyed by the run. `total_s` is the time since `start`, or (None:
    runs trained together) the sum of the run's phases, shared ones included."""
    row.update(result.row)
    row.update(timings)
    row["total_s"] = time.perf_counter() - start if start is not None else sum(timings.values())
    row["ended_at"] = _now()
    result.row = row
    for frame in (result.scores, result.curves):
        if not frame.empty:
            frame.insert(0, "run_key", row["run_key"])
    return result
