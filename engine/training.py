"""The two MOCCA stages as plain PyTorch loops: no I/O, no Ray (METHOD.md 2.3, section 5).

Stage 1 trains the autoencoder on reconstruction. Stage 2 keeps the *trained* encoder (the reference never copies
the weights over: bug 1) and trains it, in train mode so BatchNorm uses batch statistics (the reference leaves it in
eval mode: bug 3), to pull each selected layer towards its centroid. Data stays on the device and batches are taken
by index; the loop synchronises with the host once per epoch (loss, radii, divergence check), never per step:
the running loss is summed on the device and the soft boundary's radius quantile is computed there too.

Speed options, none of which changes what a run is (bench/ measures each): `precision` bf16 autocast;
`memory_format` channels_last for the model and the resident data (`with_memory_format`); a compiled forward for
stage 1 (pass the compiled module as `model`) and a compiled feature function for stage 2 (`features`), see
engine/compiled.py; and packing: the loops step a `Feed`, one model or K models packed into one
(engine/models/packed.py), each drawing its own run's batches (engine/packing.py trains runs that way).

Data-parallel runs (several processes under a torch.distributed process group) shard every batch over the ranks
and agree on centroids, radii and losses through engine/distributed.py; without a process group those helpers
return their inputs untouched, so a single-process run is unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from engine import distributed
from engine.data.base import OneClassSplit
from engine.models.packed import pack_inputs
from engine.objective import centroids_from_mean, one_class_loss, squared_distances, updated_radii

PRECISIONS = ("fp32", "bf16")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
# what "auto" means per device type. CPU: channels_last, measured by `make bench` on a 2-core AMD EPYC (oneDNN):
# stage 1, which dominates a run, 1.06-1.19x (lenet_cifar10) and 1.05-1.15x (lenet_digits) the images/s of
# contiguous; stage 2 within noise (0.93-1.08x); see bench/results/README.md. CUDA: channels_last (cuDNN's layout
# for tensor-core convolutions), not measured here: the GPU section of `make bench` measures both.
AUTO_MEMORY_FORMAT = {"cpu": "channels_last", "cuda": "channels_last"}


class Diverged(RuntimeError):
    """The loss became NaN or infinite; the run ends with status `diverged`."""


@dataclass(frozen=True)
class StageConfig:
    """Optimiser settings of one stage: Adam with L2 weight decay, lr x0.1 at each milestone epoch."""

    epochs: int
    lr: float
    weight_decay: float = 0.5e-6
    milestones: tuple[int, ...] = ()
    batch_size: int = 256


@dataclass
class OneClassModel:
    """What stage 2 leaves besides the encoder weights: one centroid and one radius per selected layer."""

    layers: tuple[int, ...]
    centroids: list[torch.Tensor]
    radii: torch.Tensor  # (L,)
    curves: list[dict] = field(default_factory=list)


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    assert precision == "fp32", precision
    return contextlib.nullcontext()


def resolve_memory_format(option: str, device: torch.device) -> torch.memory_format:
    """The memory format of an option in MEMORY_FORMATS on a device ("auto": AUTO_MEMORY_FORMAT, else contiguous)."""
    assert option in MEMORY_FORMATS, option
    if option == "auto":
        option = AUTO_MEMORY_FORMAT.get(device.type, "contiguous")
    return torch.channels_last if option == "channels_last" else torch.contiguous_format


def with_memory_format(
    model: nn.Module, split: OneClassSplit, memory_format: torch.memory_format
) -> tuple[nn.Module, OneClassSplit]:
    """The model (converted in place) and a split whose 4-D image tensors are in `memory_format`; batches taken by
    index keep the layout, so the conversion is paid once per run, not per step. A no-op for contiguous data."""
    model = model.to(memory_format=memory_format)

    def convert(x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=memory_format) if x.dim() == 4 else x

    split = replace(split, x_train=convert(split.x_train), x_val=convert(split.x_val), x_test=convert(split.x_test))
    return model, split


def batch_indices(n: int, batch_size: int, generator: torch.Generator, device: torch.device) -> list[torch.Tensor]:
    """A shuffled epoch as index tensors on `device`; a trailing batch too small to give every rank two samples
    is dropped (BatchNorm needs two; one process: a trailing batch of one)."""
    perm = torch.randperm(n, generator=generator).to(device, non_blocking=True)
    batches = list(perm.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2 * distributed.world_size():
        batches.pop()
    return batches


def training_batch(split: OneClassSplit, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    x = split.x_train[idx]
    return split.train_transform(x, generator) if split.train_transform is not None else x


class Feed:
    """The models one training loop steps together, and their batches: one model (`Feed.single`), or K models of
    one architecture packed into one module (engine/models/packed.py) with a generator each (`Feed.packed`), so
    model k draws exactly the shuffles and augmentations its own run would. Packed, the inputs are the K batches
    side by side along channels and losses, radii and centroids carry a trailing model axis (engine/objective.py).
    `diverged` maps a model to why its loss stopped being finite; the others train on, untouched (their channels
    and parameters never mix with its), and the loop raises `Diverged` only when every model has diverged."""

    def __init__(self, generators: list[torch.Generator], packed: bool):
        assert packed or len(generators) == 1, "one generator per model"
        assert not (packed and distributed.active()), "packed models train in one process"
        self.generators, self.packed = list(generators), packed
        self.augment = self.generators
        self.diverged: dict[int, str] = {}

    @classmethod
    def single(cls, generator: torch.Generator) -> Feed:
        return cls([generator], packed=False)

    @classmethod
    def packed_models(cls, generators: list[torch.Generator]) -> Feed:
        return cls(generators, packed=True)

    @property
    def k(self) -> int:
        return len(self.generators)

    @property
    def model_shape(self) -> tuple[int, ...]:
        """The trailing model axis of per-model tensors: () for one model, (K,) packed."""
        return (self.k,) if self.packed else ()

    def start_stage(self) -> None:
        """Generators for augmentation in this stage (a data-parallel rank's own; the shuffling ones otherwise)."""
        self.augment = [distributed.rank_generator(g) for g in self.generators]

    def epoch(self, n: int, batch_size: int, device: torch.device) -> list[torch.Tensor]:
        """A shuffled epoch of index batches: (B,) each, or (K, B) packed (row k: model k's batch)."""
        per_model = [batch_indices(n, batch_size, g, device) for g in self.generators]
        return [torch.stack(b) for b in zip(*per_model, strict=True)] if self.packed else per_model[0]

    def batch(self, split: OneClassSplit, idx: torch.Tensor) -> torch.Tensor:
        """The input of a batch of training indices: (B, C, H, W), or (B, K*C, H, W) packed, where 1-D indices
        give every model the same items."""
        if not self.packed:
            return training_batch(split, idx, self.augment[0])
        if idx.dim() == 1:
            idx = idx.expand(self.k, -1)
        if split.train_transform is None:
            return pack_inputs(split.x_train[idx])
        return pack_inputs(torch.stack([training_batch(split, i, g) for i, g in zip(idx, self.augment, strict=True)]))

    def end_epoch(self, stage: str, epoch: int, losses: list[float]) -> None:
        """Note the models whose epoch loss is not finite; raise `Diverged` once every model has."""
        for k, value in enumerate(losses):
            if k not in self.diverged and not math.isfinite(value):
                self.diverged[k] = f"{stage} loss became {value} at epoch {epoch}"
        if len(self.diverged) == self.k:
            raise Diverged(self.diverged[min(self.diverged)])


def _optimiser(params, cfg: StageConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.MultiStepLR]:
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=0.1)


def _check_finite(value: float, stage: str, epoch: int) -> None:
    if not torch.isfinite(torch.tensor(value)):
        raise Diverged(f"{stage} loss became {value} at epoch {epoch}")


def reconstruction_losses(reconstruction: torch.Tensor, x: torch.Tensor, k: int = 1) -> torch.Tensor:
    """(k,) per model: the mean over the batch of the per-sample sum of squared errors; k packed models own
    consecutive blocks of the channels."""
    return ((reconstruction.float() - x) ** 2).reshape(len(x), k, -1).sum(dim=2).mean(dim=0)


def reconstruction_loss(reconstruction: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the per-sample sum of squared errors (one model)."""
    return reconstruction_losses(reconstruction, x)[0]


def train_autoencoder(
    model: nn.Module,
    split: OneClassSplit,
    cfg: StageConfig,
    generator: torch.Generator,
    precision: str = "fp32",
) -> list[dict]:
    """Stage 1. Returns per-epoch curves [{stage, epoch, loss, lr}]."""
    return train_autoencoders(model, split, cfg, Feed.single(generator), precision)[0]


def train_autoencoders(
    model: nn.Module, split: OneClassSplit, cfg: StageConfig, feed: Feed, precision: str = "fp32"
) -> list[list[dict]]:
    """Stage 1 of the feed's models (one, or K packed in `model`); per-epoch curves of each model."""
    device = split.x_train.device
    opt, sched = _optimiser(model.parameters(), cfg)
    model.train()
    step_model = distributed.data_parallel(model)
    feed.start_stage()
    curves: list[list[dict]] = [[] for _ in range(feed.k)]
    for epoch in range(cfg.epochs):
        total = torch.zeros(feed.k, device=device)
        batches = feed.epoch(len(split.x_train), cfg.batch_size, device)
        for idx in batches:
            x = feed.batch(split, distributed.shard(idx))
            with _autocast(device, precision):
                losses = reconstruction_losses(step_model(x), x, feed.k)
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            opt.step()
            total += losses.detach()
        epoch_losses = [v / len(batches) for v in distributed.all_reduce_mean(total).tolist()]
        lr = sched.get_last_lr()[0]
        for model_curves, loss in zip(curves, epoch_losses, strict=True):
            model_curves.append({"stage": "autoencoder", "epoch": epoch, "loss": loss, "lr": lr})
        feed.end_epoch("autoencoder", epoch, epoch_losses)
        sched.step()
    distributed.broadcast_state(model)
    return curves


@torch.no_grad()
def layer_means(
    encoder: nn.Module, split: OneClassSplit, layers: tuple[int, ...], batch_size: int, feed: Feed
) -> list[torch.Tensor]:
    """Mean layer vector over all training data, in eval mode (the centroids before the near-zero rule): (D,) per
    layer, (K, D) packed. In a data-parallel run each rank sums its shard of the data and the sums are added up."""
    encoder.eval()
    sums: list[torch.Tensor] | None = None
    n = len(split.x_train)
    for idx in distributed.shard(torch.arange(n, device=split.x_train.device)).split(batch_size):
        feats = encoder.features(feed.batch(split, idx), layers)
        batch_sums = [f.float().sum(dim=0) for f in feats]
        sums = batch_sums if sums is None else [s + b for s, b in zip(sums, batch_sums, strict=True)]
    assert sums is not None, "no training data"
    return [distributed.all_reduce_sum(s) / n for s in sums]


def train_one_class(encoder, split, layers, boundary, nu, cfg, generator: torch.Generator, **options) -> OneClassModel:
    """Stage 2 of one model: `train_one_class_models` (which see, for the arguments) with one generator."""
    return train_one_class_models(encoder, split, layers, boundary, nu, cfg, Feed.single(generator), **options)[0]


def train_one_class_models(
    encoder: nn.Module,
    split: OneClassSplit,
    layers: tuple[int, ...],
    boundary: str,
    nu: float,
    cfg: StageConfig,
    feed: Feed,
    warmup_epochs: int = 10,
    centroid_eps: float | None = 0.1,
    precision: str = "fp32",
    features: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
) -> list[OneClassModel]:
    """Stage 2 of the feed's models (one, or K packed in `encoder`) on the encoder as given (carry the stage-1
    weights in before calling); one OneClassModel per model. Soft boundary: radii are the per-batch
    (1 - nu)-quantile of the layer distances after each step from epoch `warmup_epochs` on. `features(x)` gives
    the selected layers' vectors of a training batch (default `encoder.features(x, layers)`; a compiled twin of
    the same encoder when compiling)."""
    if features is None:
        features = functools.partial(encoder.features, layers=layers)
    device = split.x_train.device
    feed.start_stage()
    centroids = centroids_from_mean(layer_means(encoder, split, layers, cfg.batch_size, feed), centroid_eps)
    radii = torch.zeros(len(layers), *feed.model_shape, device=device)
    opt, sched = _optimiser(encoder.parameters(), cfg)
    encoder.train()
    step_features = distributed.data_parallel(encoder, features)
    curves: list[list[dict]] = [[] for _ in range(feed.k)]
    for epoch in range(cfg.epochs):
        total = torch.zeros(feed.model_shape, device=device)
        batches = feed.epoch(len(split.x_train), cfg.batch_size, device)
        update_radius = boundary == "soft" and epoch >= warmup_epochs
        for idx in batches:
            x = feed.batch(split, distributed.shard(idx))
            with _autocast(device, precision):
                feats = step_features(x)
            dist = squared_distances([f.float() for f in feats], centroids)  # (L, B), or (L, B, K) packed
            losses = one_class_loss(dist, radii, nu, boundary)  # (), or (K,) packed
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            opt.step()
            if update_radius:
                radii = updated_radii(distributed.gather_shards(dist, idx.shape[-1]), nu)  # the global batch's
            total += losses.detach()
        epoch_losses = [v / len(batches) for v in distributed.all_reduce_mean(total).reshape(-1).tolist()]
        lr = sched.get_last_lr()[0]
        per_model_radii = radii.reshape(len(layers), -1).T.tolist()  # K lists of L radii
        for model_curves, loss, model_radii in zip(curves, epoch_losses, per_model_radii, strict=True):
            row = {"stage": "one_class", "epoch": epoch, "loss": loss, "lr": lr}
            row.update({f"radius_{k}": r for k, r in zip(layers, model_radii, strict=True)})
            model_curves.append(row)
        feed.end_epoch("one-class", epoch, epoch_losses)
        sched.step()
    distributed.broadcast_state(encoder)
    if not feed.packed:
        return [OneClassModel(layers=tuple(layers), centroids=centroids, radii=radii, curves=curves[0])]
    return [
        OneClassModel(layers=tuple(layers), centroids=[c[k] for c in centroids], radii=radii[:, k], curves=curves[k])
        for k in range(feed.k)
    ]


@torch.no_grad()
def test_distances(
    encoder: nn.Module,
    state: OneClassModel,
    x: torch.Tensor,
    batch_size: int,
    split: OneClassSplit | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """(L, N, P) squared layer distances of N test items, each seen as P views (P = 1 unless the split cuts test
    images into patches through `test_view`)."""
    encoder.eval()
    view = split.test_view if split is not None else None
    per_item = split.views_per_test_item if split is not None else 1
    out = []
    for chunk in x.split(max(1, batch_size // per_item)):
        inputs = view(chunk) if view is not None else chunk  # (n * P, C, h, w)
        with _autocast(x.device, precision):
            feats = encoder.features(inputs, state.layers)
        dist = squared_distances([f.float() for f in feats], state.centroids)
        out.append(dist.view(len(state.layers), len(chunk), per_item))
    return torch.cat(out, dim=1)
