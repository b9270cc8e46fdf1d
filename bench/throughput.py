"""Images/s of the two MOCCA stages: the engine's loops against a minimal bare PyTorch loop (the ceiling).

"Ours" is engine.training's `train_autoencoder` / `train_one_class` as a run calls them (per-epoch loss on the
device, divergence check, lr schedule, curves; stage 2 with the soft boundary, every layer, radius updated after
every step). "Bare" is the least a PyTorch loop can do for the same work: the same model, batch, layout, precision,
objective functions and Adam, a randperm per epoch and nothing else (stage 2 still computes its centroids first,
as ours does). Both run on the same resident tensor, alternately, after a warm-up; the medians and the median of
the per-repetition ratios are reported, wall-clock and per CPU second (steadier when other jobs share the cores).

Also here: K packed models (engine.models.packed) against the same K models stepped one after the other, and the
per-epoch times of k concurrent CIFAR-10 runs on one GPU that give completed runs per GPU-hour.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import torch

from engine.data.base import OneClassSplit
from engine.models import create_model
from engine.models.packed import pack, pack_inputs, unpack
from engine.objective import centroids_from_mean, soft_boundary_loss, squared_distances, updated_radii
from engine.training import (
    Feed,
    OneClassModel,
    StageConfig,
    _autocast,
    reconstruction_loss,
    reconstruction_losses,
    test_distances,
    train_autoencoders,
    train_one_class_models,
    with_memory_format,
)

LR, WEIGHT_DECAY, NU = 1e-4, 0.5e-6, 0.1
STAGES = ("autoencoder", "one_class")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_split(shape: tuple[int, ...], n: int, device: torch.device, seed: int = 0) -> OneClassSplit:
    """A split of n random images resident on `device` (only x_train is used for training throughput)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=gen).to(device)
    y = torch.zeros(n, dtype=torch.int64, device=device)
    return OneClassSplit("random", 0, "random", x_train=x, x_val=x[:2], y_val=y[:2], x_test=x, y_test=y)


def trained_images(n: int, batch_size: int) -> int:
    """Images one epoch trains on: all but a trailing batch of one (engine.training.batch_indices drops it)."""
    return n - 1 if n % batch_size == 1 and n > batch_size else n


# -- the two loops of each stage -------------------------------------------------------------------------------------
def ours(stage: str, model, split: OneClassSplit, epochs: int, batch: int, precision: str, k: int = 1) -> None:
    """The engine's loop of one stage; k > 1: `model` packs k models, each with its own shuffle (engine.packing)."""
    cfg = StageConfig(epochs, LR, WEIGHT_DECAY, (), batch)
    gens = [torch.Generator().manual_seed(seed) for seed in range(k)]
    feed = Feed.packed_models(gens) if k > 1 else Feed.single(gens[0])
    if stage == "autoencoder":
        train_autoencoders(model, split, cfg, feed, precision)
    else:
        layers = tuple(range(model.encoder.num_layers))
        train_one_class_models(model.encoder, split, layers, "soft", NU, cfg, feed, warmup_epochs=0,
                               precision=precision)  # fmt: skip


def bare(stage: str, model, split: OneClassSplit, epochs: int, batch: int, precision: str) -> None:
    x, device = split.x_train, split.x_train.device
    net = model if stage == "autoencoder" else model.encoder
    layers = tuple(range(model.encoder.num_layers))
    if stage == "one_class":
        with torch.no_grad():
            net.eval()
            sums = [f.float().sum(0) for f in net.features(x[:batch], layers)]
            for chunk in x[batch:].split(batch):
                sums = [s + f.float().sum(0) for s, f in zip(sums, net.features(chunk, layers), strict=True)]
            centroids = centroids_from_mean([s / len(x) for s in sums])
        radii = torch.zeros(len(layers), device=device)
    opt = torch.optim.Adam(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), device=device).split(batch):
            if len(idx) < 2:
                continue
            xb = x[idx]
            with _autocast(device, precision):
                if stage == "autoencoder":
                    loss = reconstruction_loss(net(xb), xb)
                else:
                    dist = squared_distances([f.float() for f in net.features(xb, layers)], centroids)
                    loss = soft_boundary_loss(dist, radii, NU)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if stage == "one_class":
                radii = updated_radii(dist, NU)
    sync(device)


LOOPS: dict[str, Callable] = {"ours": ours, "bare": bare}


def _timed(device: torch.device, fn: Callable, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of fn(*args)."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def _layout(memory_format: torch.memory_format) -> str:
    return "channels_last" if memory_format == torch.channels_last else "contiguous"


def loop_comparison(
    model_name: str,
    split: OneClassSplit,
    batch: int,
    epochs: int,
    reps: int,
    precision: str,
    variants: list[tuple[str, torch.memory_format]],
) -> list[dict]:
    """One row per (stage, loop, layout) of `variants`: median images/s over `reps` repetitions in rotating order,
    and for an "ours" row with a "bare" row of the same layout, the median of the per-repetition ratios."""
    device = split.x_train.device
    model_kwargs = {"in_channels": split.x_train.shape[1]}

    def setup(memory_format: torch.memory_format):
        torch.manual_seed(0)
        return with_memory_format(create_model(model_name, **model_kwargs).to(device), split, memory_format)

    rows = []
    images_per_epoch = trained_images(len(split.x_train), batch)
    for stage in STAGES:
        for loop, fmt in variants:  # warm-up: allocator, oneDNN/cuDNN primitives, Adam's code paths
            model, data = setup(fmt)
            LOOPS[loop](stage, model, dataclasses.replace(data, x_train=data.x_train[: 2 * batch]), 1, batch, precision)
        times: dict[int, list[tuple[float, float]]] = {i: [] for i in range(len(variants))}
        for rep in range(reps):
            order = list(range(len(variants)))
            for i in order[rep % len(order) :] + order[: rep % len(order)]:  # rotate: load drift hits every variant
                loop, fmt = variants[i]
                model, data = setup(fmt)
                times[i].append(_timed(device, LOOPS[loop], stage, model, data, epochs, batch, precision))
        images = epochs * images_per_epoch
        for i, (loop, fmt) in enumerate(variants):
            walls, cpus = zip(*times[i], strict=True)
            row = {
                "model": model_name, "stage": stage, "loop": loop, "memory_format": _layout(fmt),
                "precision": precision, "batch_size": batch, "images_per_epoch": images_per_epoch, "epochs": epochs,
                "reps": reps, "images_per_s": images / statistics.median(walls),
                "images_per_cpu_s": images / statistics.median(cpus), "wall_s_each": list(walls),
            }  # fmt: skip
            bare_i = next((j for j, v in enumerate(variants) if v == ("bare", fmt)), None)
            if loop != "bare" and bare_i is not None:
                bare_walls, bare_cpus = zip(*times[bare_i], strict=True)
                row["ratio_to_bare"] = statistics.median(b / w for w, b in zip(walls, bare_walls, strict=True))
                row["cpu_ratio_to_bare"] = statistics.median(b / c for c, b in zip(cpus, bare_cpus, strict=True))
            rows.append(row)
    return rows


# -- packing ---------------------------------------------------------------------------------------------------------
def packed_vs_sequential(model_name: str, k: int, batch: int, steps: int, device: torch.device, reps: int) -> dict:
    """Stage-1 images/s of K models stepped one after the other against the same K models packed into one."""
    torch.manual_seed(0)
    models = [create_model(model_name).to(device) for _ in range(k)]
    packed = pack(models)
    enc = models[0].encoder
    side = enc.final_size * 2 ** len(enc.convs)
    xs = torch.rand(k, batch, enc.convs[0].in_channels, side, side, device=device)  # (K, B, C, H, W)
    x_packed = pack_inputs(xs)
    opts = [torch.optim.Adam(m.parameters(), lr=LR) for m in models]
    opt_packed = torch.optim.Adam(packed.parameters(), lr=LR)

    def sequential(n: int) -> None:
        for _ in range(n):
            for m, opt, x in zip(models, opts, xs, strict=True):
                loss = reconstruction_loss(m(x), x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    def packed_steps(n: int) -> None:
        for _ in range(n):
            loss = reconstruction_losses(packed(x_packed), x_packed, k).sum()  # sum over models of each one's loss
            opt_packed.zero_grad(set_to_none=True)
            loss.backward()
            opt_packed.step()

    sequential(1), packed_steps(1)  # warm-up
    walls: dict[str, list[float]] = {"sequential": [], "packed": []}
    for rep in range(reps):
        for name, fn in (("sequential", sequential), ("packed", packed_steps))[:: 1 if rep % 2 == 0 else -1]:
            walls[name].append(_timed(device, fn, steps)[0])
    images = k * batch * steps
    seq, pk = (images / statistics.median(walls[n]) for n in ("sequential", "packed"))
    return {"model": model_name, "k": k, "batch_size": batch, "steps": steps, "reps": reps,
            "sequential_images_per_s": seq, "packed_images_per_s": pk, "speedup": pk / seq}  # fmt: skip


def runs_together_vs_alone(case: str, specs: list, reps: int) -> dict:
    """Whole runs (both stages and scoring) trained together (engine.packing.run_packed: seeds side by side, one
    stage 1 for runs that share it) against the same runs one after another (engine.trial.run_trial), alternating
    which goes first; and how far the two ways' test AUCs lie apart, run by run."""
    from engine.packing import run_packed
    from engine.trial import run_trial

    run_trial(dataclasses.replace(specs[0], ae_epochs=1, oc_epochs=1))  # warm-up: the split is cached per process
    walls: dict[str, list[float]] = {"alone": [], "together": []}
    aucs: dict[str, list[float]] = {}
    ways = (("alone", lambda: [run_trial(s) for s in specs]), ("together", lambda: run_packed(specs)))
    for rep in range(reps):
        for name, fn in ways[:: 1 if rep % 2 == 0 else -1]:
            start = time.perf_counter()
            results = fn()
            walls[name].append(time.perf_counter() - start)
            aucs[name] = [r.row["test_auc"] for r in results]
    alone, together = (statistics.median(walls[n]) for n in ("alone", "together"))
    gaps = [abs(a - b) for a, b in zip(aucs["alone"], aucs["together"], strict=True)]
    return {"case": case, "model": specs[0].model_name, "runs": len(specs), "epochs": specs[0].ae_epochs,
            "reps": reps, "alone_s_per_run": alone / len(specs), "together_s_per_run": together / len(specs),
            "speedup": alone / together, "max_auc_gap": max(gaps),
            "median_auc_gap": statistics.median(gaps)}  # fmt: skip


def together_cases(device: torch.device, quick: bool) -> list[tuple[str, list]]:
    """Digits runs at the smoke budget, class 0: K seeds of one configuration (packed side by side), and one seed's
    configuration with its last-layer twin or with every layer set of the digits ablation (one stage 1)."""
    from engine.trial import TrialSpec
    from search_spaces import digits

    fields = {**digits.fixed("smoke", 0), "device": str(device)}
    layer_sets = list(digits.ABLATION_LAYER_SETS)
    cases = [(f"{k} seeds side by side", [TrialSpec(**fields, seed=seed) for seed in range(k)])
             for k in ((2,) if quick else (3, 10))]  # fmt: skip
    cases.append(
        (
            "a config and its last-layer twin, one stage 1",
            [TrialSpec(**fields, layers=layers) for layers in (None, (digits.NUM_LAYERS - 1,))],
        )
    )
    if not quick:
        cases.append((f"{len(layer_sets)} ablation layer sets, one stage 1",
                      [TrialSpec(**fields, layers=layers) for layers in layer_sets]))  # fmt: skip
    return cases


# -- GPU: k concurrent runs, per-epoch times ---------------------------------------------------------------------------
def epoch_times(
    device: torch.device,
    n: int,
    batch: int,
    epochs: int,
    precision: str,
    memory_format: torch.memory_format,
    ready: Callable[[], None] = lambda: None,
    n_test: int = 10000,
) -> dict:
    """Seconds per stage-1 epoch, per stage-2 epoch and per scoring of n_test test images of one lenet_cifar10 run
    through the engine's loops, on n random images (CIFAR-10 has 5000 per class). `ready()` is called between the
    warm-up and the timed epochs (a barrier, so that k concurrent runs time the same stretch)."""
    split = random_split((3, 32, 32), n, device)
    torch.manual_seed(0)
    model, split = with_memory_format(create_model("lenet_cifar10").to(device), split, memory_format)
    warm = dataclasses.replace(split, x_train=split.x_train[: 2 * batch])
    for stage in STAGES:
        ours(stage, model, warm, 1, batch, precision)
    ready()
    out = {}
    for stage in STAGES:
        wall, _ = _timed(device, ours, stage, model, split, epochs, batch, precision)
        out[f"{stage}_epoch_s"] = wall / epochs
    out["score_s"] = score_seconds(model.encoder, n_test, batch, precision, memory_format)
    return out


def score_seconds(encoder, n_test: int, batch: int, precision: str, memory_format: torch.memory_format) -> float:
    """Seconds to score n_test random CIFAR-sized test images with a trained encoder, every layer selected."""
    device = next(encoder.parameters()).device
    layers = tuple(range(encoder.num_layers))
    state = OneClassModel(layers, [torch.zeros(d, device=device) for d in encoder.layer_dims],
                          torch.zeros(len(layers), device=device))  # fmt: skip
    test = torch.rand(n_test, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
    return _timed(device, test_distances, encoder, state, test, batch, None, precision)[0]


def _concurrent_worker(barrier, queue, kwargs: dict) -> None:
    fmt = torch.channels_last if kwargs.pop("memory_format") == "channels_last" else torch.contiguous_format
    try:
        queue.put(epoch_times(torch.device(kwargs.pop("device")), memory_format=fmt, ready=barrier.wait, **kwargs))
    except Exception as exc:  # reported, not hung on: the parent waits for one message per worker
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def concurrent_epoch_times(k: int, device: str, memory_format: str, timeout_s: float = 1800, **kwargs) -> list[dict]:
    """`epoch_times` of k runs in k processes sharing one device, timed over the same stretch."""
    ctx = torch.multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(k), ctx.Queue()
    args = {**kwargs, "device": device, "memory_format": memory_format}
    procs = [ctx.Process(target=_concurrent_worker, args=(barrier, queue, dict(args))) for _ in range(k)]
    for proc in procs:
        proc.start()
    try:
        return [queue.get(timeout=timeout_s) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()


def host_syncs_per_epoch(device: torch.device, batch: int) -> dict:
    """CUDA only: synchronisations torch reports (sync debug mode) during one epoch of each stage; the loops
    should sync about once per epoch, not once per step."""
    import warnings

    split = random_split((3, 32, 32), 8 * batch, device)
    model = create_model("lenet_cifar10").to(device)
    out = {"steps_per_epoch": 8}
    for stage in STAGES:
        ours(stage, model, split, 1, batch, "fp32")  # warm-up outside the counted region
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                ours(stage, model, split, 1, batch, "fp32")
            finally:
                torch.cuda.set_sync_debug_mode("default")
        out[f"{stage}_syncs"] = sum("synchroniz" in str(w.message) for w in caught)
    return out


def packed_epoch_times(
    k: int, device: torch.device, n: int, batch: int, epochs: int, precision: str, memory_format, n_test: int = 10000
) -> dict:
    """Seconds per epoch of both stages for K packed lenet_cifar10 models through the engine's loops (what
    `engine.sweep --pack K` runs), each model with its own shuffle, on n random images; and the seconds to score
    all K, each unpacked and scored alone on n_test images as engine.packing does."""
    split = random_split((3, 32, 32), n, device)
    torch.manual_seed(0)
    packed, split = with_memory_format(pack([create_model("lenet_cifar10") for _ in range(k)]).to(device), split,
                                       memory_format)  # fmt: skip
    out: dict = {"k": k}
    for stage in STAGES:
        ours(stage, packed, split, 1, batch, precision, k)  # warm-up
        wall, _ = _timed(device, ours, stage, packed, split, epochs, batch, precision, k)
        out[f"{stage}_epoch_s"] = wall / epochs
    encoder = unpack(packed, 0).encoder.to(memory_format=memory_format)
    out["score_s"] = k * score_seconds(encoder, n_test, batch, precision, memory_format)
    return out
