"""K runs that differ only in their seed, trained together as one packed model: `run_packed(specs)`.

A CIFAR-10 run is too small to fill a GPU: kernel launches, not arithmetic, set its pace. Packing K runs into one
module with grouped convolutions (engine/models/packed.py) makes every kernel K times wider for the same number of
launches, so K runs cost far less than K times one (bench/: `packed`). It changes how runs are computed, not what
they are: `run_packed(specs)` gives what `[run_trial(s) for s in specs]` gives, up to float rounding, under the
same run keys:

- model k starts from the weights spec k's own run would create (its seed, set just before building it);
- model k draws its shuffles (and augmentations) from its own generator, seeded by spec k, so it sees exactly
  the batches of its own run; Adam acts elementwise, so one Adam over the packed parameters steps each model as
  its own Adam would;
- after training each model is unpacked and scored alone, like any single run.

A model whose loss stops being finite ends `diverged`, and the others train on undisturbed: grouped convolutions,
per-channel BatchNorm and per-model matrices never mix one model's numbers into another's. Rows record
`pack_size` = K and the pack's shared durations; their throughput columns count the images of all K models.
"""

from __future__ import annotations

import time
from functools import lru_cache

from engine.data import dataset_module
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
    run_trial,
    score_mocca,
    seed_everything,
    split_for,
    stage_configs,
)


@lru_cache(maxsize=16)
def packable_model(name: str) -> bool:
    """Whether the registered model `name` can be packed (engine/models/packed.py packs LeNet autoencoders)."""
    try:
        return isinstance(create_model(name), LeNetAutoencoder)
    except (TypeError, ValueError):  # a factory that needs arguments the default cannot give is not a LeNet
        return False


def packing_problem(spec: TrialSpec) -> str | None:
    """Why the run cannot train in a pack, as a sentence; None when it can."""
    if spec.method != "mocca":
        return f"{spec.method} is a scikit-learn baseline, not a network"
    if getattr(dataset_module(spec.dataset), "VIDEO", False) or not packable_model(spec.model_name):
        return f"model {spec.model_name} cannot be packed: only the LeNet models (digits, cifar10) can"
    if spec.compile:
        return "compiled runs are not packed: drop --compile or --pack"
    return None


def run_packed(specs: list[TrialSpec]) -> list[TrialResult]:
    """Train and evaluate runs of one configuration (any seeds) as one packed model; one TrialResult per spec, in
    order. A run that diverges gets status `diverged`; any other error propagates (the caller stores it)."""
    for spec in specs:
        spec.validate()
        problem = packing_problem(spec)
        if problem:
            raise ValueError(problem)
    if len({config_key(s) for s in specs}) != 1 or len({s.seed for s in specs}) != len(specs):
        raise ValueError("packed runs must share every setting and differ in their seeds")
    if len(specs) == 1:
        return [run_trial(specs[0])]
    first, k = specs[0], len(specs)
    device = resolve_device(first.device)
    rows = [base_row(s) for s in specs]
    start = time.perf_counter()
    split = split_for(first, device)
    timings = {"data_s": time.perf_counter() - start}
    for row in rows:
        row.update(device=str(device), n_train=len(split.x_train), n_val=len(split.y_val), n_test=len(split.y_test),
                   pack_size=k)  # fmt: skip

    model_kwargs = model_kwargs_for(first, split)
    models, generators = [], []
    for spec in specs:  # each model's weights and generator exactly as its own run would create them
        generators.append(seed_everything(spec.seed))
        models.append(create_model(first.model_name, **model_kwargs))
    memory_format = resolve_memory_format(first.memory_format, device)
    packed, split = with_memory_format(pack(models).to(device), split, memory_format)
    feed = Feed.packed_models(generators)
    ae_cfg, oc_cfg = stage_configs(first)
    layers = first.resolved_layers()

    results: list[TrialResult | None] = [None] * k
    try:
        t = time.perf_counter()
        curves = train_autoencoders(packed, split, ae_cfg, feed, first.precision)
        timings["autoencoder_s"] = time.perf_counter() - t
        t = time.perf_counter()
        states = train_one_class_models(
            packed.encoder, split, layers, first.boundary, first.nu, oc_cfg, feed,
            warmup_epochs=first.warmup_epochs, centroid_eps=first.centroid_eps, precision=first.precision,
        )  # fmt: skip
        timings["one_class_s"] = time.perf_counter() - t
    except Diverged:  # every model diverged: feed.diverged says how each did
        states = []
    for i, spec in enumerate(specs):
        row, run_timings = rows[i], dict(timings)
        try:
            if i in feed.diverged:
                raise Diverged(feed.diverged[i])
            encoder = unpack(packed, i).encoder.to(memory_format=memory_format)
            result = score_mocca(spec, split, encoder, states[i], curves[i], run_timings, models_trained=k)
            row["status"] = "ok"
        except Diverged as exc:
            result = TrialResult(row={})
            row.update(status="diverged", error=str(exc))
        results[i] = finish(row, result, run_timings, start)
    return results
