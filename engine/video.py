"""The end-to-end MOCCA variant for video (METHOD.md 4.4-4.5): one training loop, frame-level scores, metrics.

Training (the reference's README recipe, `-ee`): the whole causal 3-D autoencoder with its LSTM heads is trained
from scratch on L = one-class loss + rec_weight * reconstruction loss (per-clip sum of squared errors, averaged over
the batch; rec_weight 1 is the reference's unweighted sum). The centroids come from the untrained network at the
start, in eval mode, over one epoch's worth of clips; the soft-boundary radii follow the per-batch
(1 - nu)-quantile from epoch `warmup_epochs` on; Adam with the lr dropped 10x at each milestone. An epoch is
`clips_per_epoch` clips (the reference fixes 10000) drawn from every stride-1 training window, without repeats
until all windows have been seen. The network ends in its last-epoch state (the image stages do the same; the
reference tests its lowest-loss epoch).

Scoring: every window of every test video gives a clip one-class score per layer (squared distance, minus R^2
under the soft boundary) and a clip reconstruction score (its sum of squared errors). A frame's score is the mean
over the clips that contain it; each curve is min-max normalised per video (a constant curve becomes zeros, for
the one-class curve too, where the reference would divide by zero); the frame score is normalised one-class (the
mean over the layers) + normalised reconstruction. AUCs are over all frames of the split together (the paper's
micro average); `frame_metrics` also gives the one-class-only and reconstruction-only AUCs and each video's AUC
from the per-frame table that a run stores.

Video settings travel in TrialSpec.data_options (VideoSettings below); the run's `oc_*` fields, batch size, nu,
boundary, layers and warm-up apply as for images, `ae_*` are unused.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from engine.data.shanghaitech import Frames, VideoSplit, sliding_clips
from engine.metrics import max_balanced_accuracy, roc_auc
from engine.models import create_model
from engine.objective import centroids_from_mean, layer_scores, one_class_loss, squared_distances, updated_radii
from engine.training import (
    Diverged,
    OneClassModel,
    StageConfig,
    _autocast,
    _check_finite,
    _optimiser,
    reconstruction_loss,
)
from engine.trial import TrialResult, TrialSpec


@dataclass(frozen=True)
class VideoSettings:
    """The video recipe's settings (TrialSpec.data_options keys); defaults follow the reference."""

    clip_length: int = 16  # frames per clip (the loader reads it too)
    frame_size: tuple[int, int] | None = None  # (H, W) to resize to at load time; None = as prepared
    decoded_budget_gb: float | None = None  # the loader's resident/encoded choice (not in the run key); None = default
    rec_weight: float = 1.0  # weight of the reconstruction loss against the one-class loss
    clips_per_epoch: int = 10000  # the reference's fixed epoch size
    score_batch: int = 16  # clips per forward pass when scoring
    lstm_hidden: int = 100
    lstm_layers: int = 1
    bidirectional: bool = False
    selectors: bool = False
    selector_hidden: int = 64

    @classmethod
    def from_options(cls, options: dict) -> VideoSettings:
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ValueError(f"unknown video data option(s) {', '.join(unknown)}: choose among {', '.join(names)}")
        settings = cls(**options)
        checks = [
            (settings.rec_weight >= 0, "rec_weight cannot be negative"),
            (settings.clips_per_epoch >= 2, "clips_per_epoch must be at least 2"),
            (settings.score_batch >= 1, "score_batch must be positive"),
            (settings.lstm_hidden >= 1 and settings.lstm_layers >= 1, "lstm_hidden and lstm_layers must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return settings

    def model_kwargs(self) -> dict:
        keys = ("clip_length", "lstm_hidden", "lstm_layers", "bidirectional", "selectors", "selector_hidden")
        return {k: getattr(self, k) for k in keys}


# -- training -----------------------------------------------------------------------------------------------------


def epoch_windows(split: VideoSplit, n: int, generator: torch.Generator) -> torch.Tensor:
    """(n,) start frames of `n` training clips: shuffled windows, each seen once before any repeats."""
    n_windows = len(split.train_starts)
    perms = [torch.randperm(n_windows, generator=generator) for _ in range(math.ceil(n / n_windows))]
    return split.train_starts[torch.cat(perms)[:n].to(split.train_starts.device)]


def _batches(starts: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    batches = list(starts.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2:  # BatchNorm and the radius quantile want two clips
        batches.pop()
    return batches


@torch.no_grad()
def clip_centroids(
    encoder: nn.Module, split: VideoSplit, layers: tuple[int, ...], n_clips: int, batch_size: int,
    generator: torch.Generator, eps: float | None, precision: str = "fp32",
) -> list[torch.Tensor]:  # fmt: skip
    """Centroid of each layer: the mean layer vector over `n_clips` random training clips, in eval mode."""
    encoder.eval()
    sums = [torch.zeros(d, device=split.device) for d in (encoder.layer_dims[k] for k in layers)]
    starts = epoch_windows(split, n_clips, generator)
    for idx in starts.split(batch_size):
        with _autocast(split.device, precision):
            feats = encoder.features(split.clips(split.x_train, idx), layers)
        sums = [s + f.float().sum(dim=0) for s, f in zip(sums, feats, strict=True)]
    return centroids_from_mean([s / len(starts) for s in sums], eps)


def train_end_to_end(
    model: nn.Module,
    split: VideoSplit,
    layers: tuple[int, ...],
    boundary: str,
    nu: float,
    cfg: StageConfig,
    settings: VideoSettings,
    generator: torch.Generator,
    warmup_epochs: int = 5,
    centroid_eps: float | None = 0.1,
    precision: str = "fp32",
) -> OneClassModel:
    """Train autoencoder, LSTM heads (and selectors) jointly; returns centroids, radii and per-epoch curves."""
    device = split.device
    centroids = clip_centroids(
        model.encoder, split, layers, settings.clips_per_epoch, cfg.batch_size, generator, centroid_eps, precision
    )
    radii = torch.zeros(len(layers), device=device)
    opt, sched = _optimiser(model.parameters(), cfg)
    model.train()
    curves = []
    for epoch in range(cfg.epochs):
        totals = torch.zeros(3, device=device)  # loss, one-class, reconstruction; read once per epoch
        batches = _batches(epoch_windows(split, settings.clips_per_epoch, generator), cfg.batch_size)
        update_radius = boundary == "soft" and epoch >= warmup_epochs
        for idx in batches:
            x = split.clips(split.x_train, idx)  # (B, 3, T, H, W)
            rec = torch.zeros((), device=device)
            with _autocast(device, precision):
                if settings.rec_weight > 0:
                    reconstruction, feats = model.reconstruct(x, layers)
                    rec = reconstruction_loss(reconstruction, x)
                else:  # no reconstruction term: the decoder is not run
                    feats = model.encoder.features(x, layers)
            dist = squared_distances([f.float() for f in feats], centroids)  # (L, B)
            oc = one_class_loss(dist, radii, nu, boundary)
            loss = oc + settings.rec_weight * rec
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if update_radius:
                radii = updated_radii(dist, nu)
            totals += torch.stack([loss.detach(), oc.detach(), rec.detach()])
        loss_mean, oc_mean, rec_mean = (totals / len(batches)).tolist()
        _check_finite(loss_mean, "end-to-end", epoch)
        row = {"stage": "end_to_end", "epoch": epoch, "loss": loss_mean, "oc_loss": oc_mean, "rec_loss": rec_mean}
        row["lr"] = sched.get_last_lr()[0]
        row.update({f"radius_{k}": float(r) for k, r in zip(layers, radii.tolist(), strict=True)})
        curves.append(row)
        sched.step()
    return OneClassModel(layers=tuple(layers), centroids=centroids, radii=radii, curves=curves)


# -- scoring ------------------------------------------------------------------------------------------------------


def frame_scores(clip_scores: np.ndarray, clip_length: int) -> np.ndarray:
    """(..., n_clips) scores of the stride-1 clips of one video -> (..., n_clips + clip_length - 1) frame scores:
    each frame gets the mean over the clips that contain it (edge frames are in fewer clips)."""
    c = np.asarray(clip_scores, dtype=np.float64)
    n_clips = c.shape[-1]
    frames = np.arange(n_clips + clip_length - 1)
    first = np.maximum(0, frames - clip_length + 1)  # first clip containing the frame
    last = np.minimum(frames, n_clips - 1)  # last clip containing it
    prefix = np.concatenate([np.zeros((*c.shape[:-1], 1)), np.cumsum(c, axis=-1)], axis=-1)
    return (prefix[..., last + 1] - prefix[..., first]) / (last - first + 1)


def normalise_per_video(scores: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] along the last axis (one video's frames); a constant curve becomes zeros."""
    s = np.asarray(scores, dtype=np.float64)
    lo, hi = s.min(axis=-1, keepdims=True), s.max(axis=-1, keepdims=True)
    span = hi - lo
    return np.where(span > 0, (s - lo) / np.where(span > 0, span, 1.0), 0.0)


@torch.no_grad()
def clip_scores(
    model: nn.Module,
    state: OneClassModel,
    split: VideoSplit,
    frames: Frames,
    batch_size: int,
    boundary: str,
    squared: bool = True,
    with_reconstruction: bool = True,
    precision: str = "fp32",
) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer one-class terms (L, n_clips) and reconstruction SSE (n_clips,) of every window of one video
    (`frames`: its frames, each read or decoded once)."""
    model.eval()
    terms, rec = [], []
    for x in sliding_clips(frames, split.clip_length, batch_size):  # (b, 3, T, H, W)
        with _autocast(frames.device, precision):
            if with_reconstruction:
                reconstruction, feats = model.reconstruct(x, state.layers)
            else:
                reconstruction, feats = None, model.encoder.features(x, state.layers)
        dist = squared_distances([f.float() for f in feats], state.centroids)  # (L, b)
        terms.append(layer_scores(dist, state.radii, boundary, squared))
        if reconstruction is not None:
            rec.append(((reconstruction.float() - x) ** 2).flatten(1).sum(dim=1))
        else:
            rec.append(torch.zeros(len(x), device=frames.device))
    return torch.cat(terms, dim=1).cpu().numpy(), torch.cat(rec).cpu().numpy()


def score_videos(
    model: nn.Module,
    state: OneClassModel,
    split: VideoSplit,
    videos: tuple[int, ...],
    name: str,
    batch_size: int,
    boundary: str,
    squared: bool = True,
    with_reconstruction: bool = True,
    precision: str = "fp32",
) -> pd.DataFrame:
    """Per-frame table of `videos`: split, item, label, score, layer_<k>, video, frame, score_oc, score_rec (every
    score column normalised per video; score = score_oc + score_rec)."""
    tables = []
    for i in videos:
        terms, rec = clip_scores(
            model, state, split, split.video_frames(i), batch_size, boundary, squared, with_reconstruction, precision
        )
        layer_frames = frame_scores(terms, split.clip_length)  # (L, n_frames)
        oc = normalise_per_video(layer_frames.mean(axis=0))
        rec_n = normalise_per_video(frame_scores(rec, split.clip_length))
        table = pd.DataFrame(
            {"label": split.video_labels(i).cpu().numpy(), "score": oc + rec_n, "video": split.videos[i]}
        )
        table["frame"] = np.arange(len(table))
        table["score_oc"], table["score_rec"] = oc, rec_n
        for k, values in zip(state.layers, normalise_per_video(layer_frames), strict=True):
            table[f"layer_{k}"] = values
        tables.append(table)
    out = pd.concat(tables, ignore_index=True)
    out.insert(0, "split", name)
    out.insert(1, "item", np.arange(len(out)))
    return out


def frame_metrics(table: pd.DataFrame, layers: tuple[int, ...]) -> dict:
    """Metrics of one split's per-frame table: micro AUC / maxBA of the final score, per-layer AUCs, one-class-only
    and reconstruction-only AUCs, and {video: AUC} for the videos that hold both normal and anomalous frames."""
    y = table["label"].to_numpy()
    per_video = {
        video: roc_auc(group["label"], group["score"])
        for video, group in table.groupby("video", sort=False)
        if 0 < group["label"].sum() < len(group)
    }
    return {
        "auc": roc_auc(y, table["score"]),
        "max_ba": max_balanced_accuracy(y, table["score"]),
        "layer_auc": [roc_auc(y, table[f"layer_{k}"]) for k in layers],
        "oc_auc": roc_auc(y, table["score_oc"]),
        "rec_auc": roc_auc(y, table["score_rec"]),
        "video_auc": per_video,
    }


# -- one run ------------------------------------------------------------------------------------------------------


def run_video(spec: TrialSpec, split: VideoSplit, generator: torch.Generator, timings: dict) -> TrialResult:
    """Train and score one end-to-end video run (called by engine.trial.run_trial for video datasets)."""
    if spec.method != "mocca":
        raise ValueError(f"video datasets support only method 'mocca', got {spec.method!r}")
    settings = VideoSettings.from_options(dict(spec.data_options))
    assert settings.clip_length == split.clip_length, "the split was loaded with another clip length"
    layers = spec.resolved_layers()
    device = split.device
    code = {} if spec.code_size is None else {"code_size": spec.code_size}
    model = create_model(spec.model_name, frame_size=split.frame_size, **code, **settings.model_kwargs()).to(device)
    cfg = StageConfig(spec.oc_epochs, spec.oc_lr, spec.oc_weight_decay, spec.oc_milestones, spec.batch_size)

    t = time.perf_counter()
    state = train_end_to_end(
        model, split, layers, spec.boundary, spec.nu, cfg, settings, generator,
        warmup_epochs=spec.warmup_epochs, centroid_eps=spec.centroid_eps, precision=spec.precision,
    )  # fmt: skip
    timings["one_class_s"] = time.perf_counter() - t

    t = time.perf_counter()
    score = dict(
        batch_size=settings.score_batch, boundary=spec.boundary, squared=spec.squared_scores,
        with_reconstruction=settings.rec_weight > 0, precision=spec.precision,
    )  # fmt: skip
    test = score_videos(model, state, split, split.test_videos, "test", **score)
    if split.val_videos == split.test_videos:  # selection on the test set: the same frames, scored once
        val = test.assign(split="val")
    else:
        val = score_videos(model, state, split, split.val_videos, "val", **score)
    for table in (val, test):
        if not np.isfinite(table.drop(columns=["split", "video"]).to_numpy(dtype=np.float64)).all():
            raise Diverged("frame scores contain NaN or infinity")
    metrics = {name: frame_metrics(table, layers) for name, table in (("val", val), ("test", test))}
    timings["score_s"] = time.perf_counter() - t

    row = {}
    for name, m in metrics.items():
        row.update({f"{name}_auc": m["auc"], f"{name}_max_ba": m["max_ba"], f"layer_{name}_auc": m["layer_auc"]})
    row["oc_images_per_s"] = spec.oc_epochs * settings.clips_per_epoch / max(timings["one_class_s"], 1e-9)  # clips/s
    row["final_radii"] = [float(r) for r in state.radii.tolist()]
    row["code_size"] = model.encoder.code_size
    return TrialResult(row=row, scores=pd.concat([val, test], ignore_index=True), curves=pd.DataFrame(state.curves))
