"""Throughput and peak memory of the MVTec residual autoencoder (with selectors, code 128), both stages.

    python -m bench.mvtec_throughput                       # 128 px objects and 64 px texture patches, CPU
    python -m bench.mvtec_throughput --device cuda --steps 20 --batch-size 32

Each (size, stage) runs in its own process, so its peak resident memory (getrusage maxrss) is its own. A step is
what training does per batch: stage 1 = augmentation + autoencoder forward + reconstruction loss + backward +
Adam; stage 2 = augmentation + all seven layers' features (selectors included) + soft-boundary loss + backward +
Adam. The 128 px case is an object category (128 px images, rotation -45..45); the 64 px case is a texture
(512 px images, random 64 px patches, rotation 0..45). Images are random (decoding is not timed). One warm-up
step, then `--steps` timed steps. On a shared CPU the wall-clock rate depends on the other load (the 1-minute
load average is recorded); images per CPU-second (all threads) is the steadier number. Writes
bench/results/mvtec_throughput.json with its provenance.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch

from bench.provenance import script_provenance, write_json

RESULTS = Path(__file__).resolve().parent / "results" / "mvtec_throughput.json"
CASES = {128: dict(image_size=128, patch_size=None, rotation=(-45.0, 45.0)),  # an object category
         64: dict(image_size=512, patch_size=64, rotation=(0.0, 45.0))}  # a texture category  # fmt: skip


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(size: int, stage: str, batch_size: int, steps: int, device: str) -> dict:
    """One (size, stage) measurement in this process."""
    from engine.data.base import OneClassSplit
    from engine.data.mvtec import augment
    from engine.models import create_model
    from engine.objective import one_class_loss, squared_distances
    from engine.training import reconstruction_loss, training_batch

    case = CASES[size]
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    n = batch_size * (steps + 1)
    s = case["image_size"]
    x = (torch.rand(n, 3, s, s, generator=gen) * 2 - 1).to(dev)
    empty = torch.zeros(0, 3, s, s, device=dev)
    transform = partial(augment, rotation=case["rotation"], patch_size=case["patch_size"])
    no_labels = torch.zeros(0, dtype=torch.long)
    split = OneClassSplit("mvtec", 0, "bench", x, empty, no_labels, empty, no_labels, train_transform=transform)
    rss_before_model = _maxrss_mib()
    model = create_model("resae_mvtec", input_size=size, code_size=128).to(dev).train()
    layers = tuple(range(model.encoder.num_layers))
    params = model.parameters() if stage == "autoencoder" else model.encoder.parameters()
    opt = torch.optim.Adam(params, lr=1e-4, weight_decay=0.5e-6)
    centroids = [torch.full((d,), 0.1, device=dev) for d in model.encoder.layer_dims]
    radii = torch.zeros(len(layers), device=dev)

    def step(idx: torch.Tensor) -> None:
        batch = training_batch(split, idx, gen)
        if stage == "autoencoder":
            loss = reconstruction_loss(model(batch), batch)
        else:
            dist = squared_distances(model.encoder.features(batch, layers), centroids)
            loss = one_class_loss(dist, radii, 0.1, "soft")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    batches = torch.arange(n, device=dev).split(batch_size)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    step(batches[0])  # warm-up: allocator, kernels, Adam state
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    load_before = os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), time.process_time()
    for idx in batches[1:]:
        step(idx)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    row = {
        "input_size": size,
        "stage": stage,
        "case": "object 128 px" if size == 128 else "texture 512 px, 64 px patches",
        "batch_size": batch_size,
        "timed_steps": steps,
        "images_per_s": steps * batch_size / elapsed,
        "seconds_per_step": elapsed / steps,
        "images_per_cpu_s": steps * batch_size / cpu,  # CPU seconds of all threads: steadier on a shared machine
        "threads": torch.get_num_threads(),
        "load_average_1min_before": load_before,
        "peak_rss_mib": _maxrss_mib(),
        "peak_rss_over_data_mib": _maxrss_mib() - rss_before_model,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if dev.type == "cuda":
        row["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.mvtec_throughput", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="128,64", help="network input sides to measure (128 and/or 64)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("--one", nargs=2, metavar=("SIZE", "STAGE"), help=argparse.SUPPRESS)  # child process mode
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.one[1], args.batch_size, args.steps, args.device)))
        return 0

    rows = []
    for size in (int(v) for v in args.sizes.split(",")):
        for stage in ("autoencoder", "one_class"):
            cmd = [sys.executable, "-m", "bench.mvtec_throughput", "--one", str(size), stage, "--device", args.device,
                   "--batch-size", str(args.batch_size), "--steps", str(args.steps)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            rates = f"{row['images_per_s']:6.2f} img/s  {row['images_per_cpu_s']:6.2f} img/cpu-s"
            memory = f"peak RSS {row['peak_rss_mib']:6.0f} MiB  load {row['load_average_1min_before']:.1f}"
            print(f"{size:>4} px {stage:<12} {rates}  {memory}", flush=True)
    result = {
        "benchmark": "mvtec_throughput",
        "model": "resae_mvtec (selectors, code 128)",
        "rows": rows,
        "provenance": script_provenance(args.device, torch.get_num_threads()),
    }
    write_json(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
