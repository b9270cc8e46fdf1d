"""Runs trained together: `run_packed(specs)` gives what `[run_trial(s) for s in specs]` gives, for less work.

Two kinds of work are shared, and a group of runs may use both:

- **Seeds side by side.** A CIFAR-10 run is too small to fill a GPU: kernel launches, not arithmetic, set its
  pace. K runs of different seeds become one module with grouped convolutions (engine/models/packed.py), so every
  kernel is K times wider for the same number of launches. Model k starts from the weights spec k's own run would
  create (its seed, set just before building it) and draws its shuffles and augmentations from its own generator,
  so it sees exactly its own run's batches; Adam acts elementwise, so one Adam over the packed parameters steps
  each model as its own Adam would. LeNet models only (digits, CIFAR-10).
- **One stage 1 for several configurations.** Stage 1 (the autoencoder) reads none of the stage-2 settings
  (boundary, layers, nu, the one-class optimiser: `engine.trial.STAGE2_ONLY`), so a configuration and its
  last-layer twin, or the layer sets of an ablation, train the same autoencoder for a given seed. It is trained
  once; every configuration's stage 2 starts from a copy of it and from the generator state stage 1 left, exactly
  where its own run would be. Stage 1 is most of a run (350 of CIFAR-10's 500 epochs, each 1.23 times a stage-2
  epoch on a CPU), so a configuration and its last-layer twin cost about a third less together, and an ablation
  over L layer sets trains one autoencoder instead of L. Any model whose training is two stages (LeNet, MVTec's).

What differs from runs trained alone is float rounding only where kernels differ (grouped convolutions); sharing
stage 1 alone repeats the same operations, so its runs match their lone twins exactly on a CPU. Each run keeps
its run key, is scored alone and becomes its own row, with `pack_size` (models in its packed stage 2) and
`stage1_shared_by` (runs that used its stage 1); its durations are the shared phases in full plus its own, and
analysis.report counts each run's share of device time. A model whose loss stops being finite ends `diverged`
and the others train on undisturbed: grouped convolutions, per-channel BatchNorm and per-model matrices never mix
one model's numbers into another's.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from engine.data import OneClassSplit, dataset_module
from engine.models import create_model
from engine.models.lenet import LeNetAutoencoder
from engine.models.packed import pack, unpack
from engine.training import (
    Diverged,
    Feed,
    resolve_memory_format,
    train_autoencoders,
    train_one_class_models,
    with_memory_format,
)
from engine.trial import (
    TrialResult,
    TrialSpec,
    base_row,
    config_key,
    finish,
    model_kwargs_for,
    resolve_device,
    run_key,
    run_trial,
    score_mocca,
    seed_everything,
    split_for,
    stage1_key,
    stage_configs,
)


@lru_cache(maxsize=16)
def packable_model(name: str) -> bool:
    """Whether the registered model `name` can be packed (engine/models/packed.py packs LeNet autoencoders)."""
    try:
        return isinstance(create_model(name), LeNetAutoencoder)
    except (TypeError, ValueError):  # a factory that needs arguments the default cannot give is not a LeNet
        return False


def sharing_problem(spec: TrialSpec) -> str | None:
    """Why the run cannot share its stage 1 with other runs, as a sentence; None when it can."""
    if spec.method != "mocca":
        return f"{spec.method} is a scikit-learn baseline, not a network"
    if getattr(dataset_module(spec.dataset), "VIDEO", False):
        return f"{spec.dataset} runs train end to end, in one stage"
    if spec.compile:
        return "compiled runs are trained alone: drop --compile to train runs together"
    return None


def packing_problem(spec: TrialSpec) -> str | None:
    """Why the run cannot train side by side with other seeds in one packed model, as a sentence; None if it can."""
    problem = sharing_problem(spec)
    if problem is None and not packable_model(spec.model_name):
        problem = f"model {spec.model_name} cannot be packed: only the LeNet models (digits, cifar10) can"
    return problem


def _check_group(specs: list[TrialSpec]) -> None:
    for spec in specs:
        spec.validate()
        problem = sharing_problem(spec) if len(specs) > 1 else None
        if problem:
            raise ValueError(problem)
    if len({stage1_key(s) for s in specs}) != 1:
        raise ValueError("runs trained together must agree on every setting but the seed and the stage-2 ones")
    if len({run_key(s) for s in specs}) != len(specs):
        raise ValueError("the same run appears twice in a group of runs trained together")
    if len({s.seed for s in specs}) > 1 and packing_problem(specs[0]):
        raise ValueError(packing_problem(specs[0]))


@dataclass
class _Autoencoders:
    """What stage 1 leaves a group: one trained autoencoder per seed (packed when several), each seed's curves,
    the generator state its run continues from, and why a seed's model diverged."""

    model: nn.Module
    seeds: list[int]
    curves: list[list[dict]]
    after: list[torch.Tensor]
    diverged: dict[int, str]

    def divergence(self, seed: int) -> str | None:
        return self.diverged.get(self.seeds.index(seed))

    def copies(self, seeds: list[int], memory_format: torch.memory_format) -> tuple[nn.Module, Feed]:
        """Copies of the autoencoders of `seeds` (packed when several), and a feed whose generators continue where
        stage 1 left each seed's: what stage 2 of one configuration starts from."""
        index = [self.seeds.index(s) for s in seeds]
        if len(self.seeds) == 1:
            model = copy.deepcopy(self.model)
        else:
            chosen = [unpack(self.model, i) for i in index]
            model = pack(chosen) if len(chosen) > 1 else chosen[0]
        generators = []
        for i in index:
            generators.append(torch.Generator())
            generators[-1].set_state(self.after[i])
        feed = Feed.packed_models(generators) if len(generators) > 1 else Feed.single(generators[0])
        return model.to(memory_format=memory_format), feed


def run_packed(
    specs: list[TrialSpec], on_result: Callable[[int, TrialResult], None] | None = None
) -> list[TrialResult]:
    """Train and evaluate runs that share their stage-1 settings (any seeds, any stage-2 settings) together; one
    TrialResult per spec, in order. `on_result(i, result)` is called as soon as run i is done (the sweep stores it
    then, so a group killed midway keeps its finished runs). A run that diverges gets status `diverged`; any other
    error propagates (the caller stores it)."""
    _check_group(specs)
    done = on_result or (lambda i, result: None)
    if len(specs) == 1:
        result = run_trial(specs[0])
        done(0, result)
        return [result]
    first = specs[0]
    device = resolve_device(first.device)
    rows = {id(s): base_row(s) for s in specs}
    start = time.perf_counter()
    split = split_for(first, device)
    shared = {"data_s": time.perf_counter() - start}
    for row in rows.values():
        row.update(device=str(device), n_train=len(split.x_train), n_val=len(split.y_val), n_test=len(split.y_test),
                   pack_size=1, stage1_shared_by=len(specs))  # fmt: skip
    memory_format = resolve_memory_format(first.memory_format, device)
    t = time.perf_counter()
    autoencoders, split = _stage1(first, list(dict.fromkeys(s.seed for s in specs)), split, memory_format)
    shared["autoencoder_s"] = time.perf_counter() - t

    results: dict[int, TrialResult] = {}
    by_config: dict[str, list[TrialSpec]] = {}
    for spec in specs:
        by_config.setdefault(config_key(spec), []).append(spec)
    position = {id(s): i for i, s in enumerate(specs)}
    for group in by_config.values():  # stage 2 per configuration, its seeds side by side
        finished = {}
        for spec in group:
            if autoencoders.divergence(spec.seed):
                finished[id(spec)] = _diverged(rows[id(spec)], autoencoders.divergence(spec.seed), shared)
        alive = [s for s in group if not autoencoders.divergence(s.seed)]
        if alive:
            finished.update(_stage2(alive, autoencoders, split, memory_format, rows, shared))
        for key, result in finished.items():
            done(position[key], result)
        results.update(finished)
    return [results[id(s)] for s in specs]


def _stage1(spec: TrialSpec, seeds: list[int], split, memory_format) -> tuple[_Autoencoders, OneClassSplit]:
    """Train one autoencoder per seed (side by side when several), each created and seeded as its runs would
    create it; the split comes back in `memory_format`."""
    model_kwargs = model_kwargs_for(spec, split)
    models, generators = [], []
    for seed in seeds:
        generators.append(seed_everything(seed))
        models.append(create_model(spec.model_name, **model_kwargs))
    device = split.x_train.device
    ae, split = with_memory_format((pack(models) if len(seeds) > 1 else models[0]).to(device), split, memory_format)
    feed = Feed.packed_models(generators) if len(seeds) > 1 else Feed.single(generators[0])
    try:
        curves = train_autoencoders(ae, split, stage_configs(spec)[0], feed, spec.precision)
    except Diverged:  # every model diverged: feed.diverged says how
        curves = []
    after = [g.get_state() for g in generators]
    return _Autoencoders(ae, seeds, curves, after, feed.diverged), split


def _stage2(
    specs: list[TrialSpec], autoencoders: _Autoencoders, split: OneClassSplit, memory_format: torch.memory_format,
    rows: dict[int, dict], shared: dict,
) -> dict[int, TrialResult]:  # fmt: skip
    """Stage 2 and scoring of runs of one configuration (distinct seeds), side by side from copies of their
    seeds' autoencoders: one result per run, keyed by id(spec)."""
    first, k = specs[0], len(specs)
    model, feed = autoencoders.copies([s.seed for s in specs], memory_format)
    t = time.perf_counter()
    try:
        states = train_one_class_models(
            model.encoder, split, first.resolved_layers(), first.boundary, first.nu, stage_configs(first)[1], feed,
            warmup_epochs=first.warmup_epochs, centroid_eps=first.centroid_eps, precision=first.precision,
        )  # fmt: skip
    except Diverged:  # every model diverged: feed.diverged says how
        states = []
    timings = {**shared, "one_class_s": time.perf_counter() - t}
    out = {}
    for j, spec in enumerate(specs):
        row = rows[id(spec)]
        row["pack_size"] = k
        if j in feed.diverged:
            out[id(spec)] = _diverged(row, feed.diverged[j], timings)
            continue
        encoder = (unpack(model, j).encoder if k > 1 else model.encoder).to(memory_format=memory_format)
        run_timings = dict(timings)
        curves = autoencoders.curves[autoencoders.seeds.index(spec.seed)]
        try:
            result = score_mocca(spec, split, encoder, states[j], curves, run_timings,
                                 models=(len(autoencoders.seeds), k))  # fmt: skip
            row["status"] = "ok"
        except Diverged as exc:
            out[id(spec)] = _diverged(row, str(exc), run_timings)
            continue
        out[id(spec)] = finish(row, result, run_timings, start=None)
    return out


def _diverged(row: dict, message: str, timings: dict) -> TrialResult:
    row.update(status="diverged", error=message)
    return finish(row, TrialResult(row={}), dict(timings), start=None)
