"""Throughput and peak memory of the ShanghaiTech video model (engine/models/video.py), training and scoring.

    python -m bench.shanghaitech_throughput                 # 16 x 256 x 512 (paper) and 8 x 32 x 64 (tests), CPU
    python -m bench.shanghaitech_throughput --device cuda --steps 20 --batch-size 4
    python -m bench.shanghaitech_throughput --threads 1       # on a CPU shared with other jobs (see below)

Cases: `paper` = the default model (code 1024, LSTM hidden 100, no selectors) on 16-frame 256 x 512 clips;
`test` = what tests/test_shanghaitech.py trains (8-frame 32 x 64 clips, code 16, LSTM hidden 8). A training step is
what engine.video.train_end_to_end does per batch: gather the clips from uint8 frames, reconstruct + all seven LSTM
layers, reconstruction + soft-boundary loss, backward, Adam. A scoring step is what engine.video.clip_scores does:
the same forward without gradients, per-layer distances and per-clip SSE. Frames are random (decoding is not
timed). Each (case, phase) runs in its own process, so its peak resident memory (getrusage maxrss) is its own;
one warm-up step, then `--steps` timed steps. Writes bench/results/shanghaitech_throughput.json with provenance.
On a CPU that other jobs also load, more torch threads than free cores can be many times slower (OpenMP threads
wait on each other), so the thread count is recorded and settable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "shanghaitech_throughput.json"
CASES = {
    "paper": dict(clip_length=16, frame_size=(256, 512), model={}),
    "test": dict(clip_length=8, frame_size=(32, 64), model=dict(code_size=16, lstm_hidden=8)),
}


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _split(case: dict, n_frames: int, device: torch.device):
    from engine.data.shanghaitech import VideoSplit, window_starts

    frames = torch.randint(0, 256, (n_frames, 3, *case["frame_size"]), dtype=torch.uint8, device=device)
    labels = torch.zeros(n_frames, dtype=torch.int64, device=device)
    offsets = (0, n_frames)
    return VideoSplit("shanghaitech", 0, "all", case["clip_length"], frames,
                      window_starts(offsets, case["clip_length"]).to(device), frames, labels, ("bench",), offsets,
                      (0,), (0,))  # fmt: skip


def measure(name: str, phase: str, batch_size: int, steps: int, device: str) -> dict:
    """One (case, phase) measurement in this process."""
    from engine.models import create_model
    from engine.objective import one_class_loss, squared_distances, updated_radii
    from engine.training import OneClassModel, reconstruction_loss
    from engine.video import clip_scores

    case = CASES[name]
    dev = torch.device(device)
    n_frames = case["clip_length"] + batch_size * (steps + 1)
    split = _split(case, n_frames, dev)
    rss_before_model = _maxrss_mib()
    model = create_model("causal3d_lstm", clip_length=case["clip_length"], frame_size=case["frame_size"],
                         **case["model"]).to(dev)  # fmt: skip
    layers = tuple(range(model.encoder.num_layers))
    state = OneClassModel(layers, [torch.full((d,), 0.1, device=dev) for d in model.encoder.layer_dims],
                          torch.zeros(len(layers), device=dev))  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=0.5e-6)
    batches = split.train_starts[: batch_size * (steps + 1)].split(batch_size)

    def train_step(idx: torch.Tensor) -> None:
        x = split.clips(split.x_train, idx)
        reconstruction, feats = model.reconstruct(x, layers)
        dist = squared_distances(feats, state.centroids)
        loss = one_class_loss(dist, state.radii, 0.1, "soft") + reconstruction_loss(reconstruction, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state.radii = updated_radii(dist, 0.1)

    def score_step(idx: torch.Tensor) -> None:
        frames = split.x_eval[int(idx[0]) : int(idx[-1]) + case["clip_length"]]  # exactly len(idx) windows
        clip_scores(model, state, split, frames, batch_size, "soft")

    step = train_step if phase == "train" else score_step
    model.train(phase == "train")
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    step(batches[0])  # warm-up: allocator, kernels, Adam state
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    start = time.perf_counter()
    for idx in batches[1:]:
        step(idx)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elapsed = time.perf_counter() - start
    row = {
        "case": name,
        "phase": phase,
        "clip": f"{case['clip_length']} x {case['frame_size'][0]} x {case['frame_size'][1]}",
        "model_options": case["model"],
        "batch_size": batch_size,
        "timed_steps": steps,
        "clips_per_s": steps * batch_size / elapsed,
        "seconds_per_step": elapsed / steps,
        "peak_rss_mib": _maxrss_mib(),
        "peak_rss_over_data_mib": _maxrss_mib() - rss_before_model,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if dev.type == "cuda":
        row["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return row


def gflop_per_clip(name: str) -> dict:
    """Forward and forward + backward GFLOP of one clip of `name` (counted on the meta device: nothing runs)."""
    from torch.utils.flop_counter import FlopCounterMode

    from engine.models import create_model

    case = CASES[name]
    with torch.device("meta"):
        model = create_model("causal3d_lstm", clip_length=case["clip_length"], frame_size=case["frame_size"],
                             **case["model"])  # fmt: skip
        x = torch.empty(1, 3, case["clip_length"], *case["frame_size"])
        with FlopCounterMode(display=False) as forward:
            reconstruction, feats = model.reconstruct(x, tuple(range(model.encoder.num_layers)))
        with FlopCounterMode(display=False) as backward:
            (reconstruction.sum() + sum(f.sum() for f in feats)).backward()
    return {"forward": forward.get_total_flops() / 1e9, "train_step": (forward.get_total_flops() +
            backward.get_total_flops()) / 1e9}  # fmt: skip


def parameter_counts() -> dict:
    """Parameters of the 16 x 256 x 512 model, default and with selectors (counted on the meta device)."""
    from engine.models import create_model

    def count(**kw) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in create_model("causal3d_lstm", **kw).parameters())

    return {
        "default (no selectors, code 1024, LSTM hidden 100)": count(),
        "selectors, hidden 64 (our default when on)": count(selectors=True, selector_hidden=64),
        "selectors, hidden 256 (the reference)": count(selectors=True, selector_hidden=256),
    }


def _git_describe() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)  # fmt: skip
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.shanghaitech_throughput", description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="paper,test", help="which of paper (16x256x512), test (8x32x64)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads (default: all)")
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("--one", nargs=2, metavar=("CASE", "PHASE"), help=argparse.SUPPRESS)  # child process mode
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.batch_size, args.steps, args.device)))
        return 0

    rows = []
    for name in args.cases.split(","):
        for phase in ("train", "score"):
            cmd = [sys.executable, "-m", "bench.shanghaitech_throughput", "--one", name, phase, "--threads",
                   str(args.threads), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                   "--device", args.device]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{row['clip']:>13} {phase:<5} {row['clips_per_s']:8.2f} clips/s  {row['seconds_per_step']:6.2f} "
                  f"s/step  peak RSS {row['peak_rss_mib']:7.0f} MiB", flush=True)  # fmt: skip
    result = {
        "benchmark": "shanghaitech_throughput",
        "model": "causal3d_lstm",
        "parameters": parameter_counts(),
        "gflop_per_clip": {name: gflop_per_clip(name) for name in args.cases.split(",")},
        "rows": rows,
        "provenance": {
            "torch": torch.__version__,
            "device": args.device if args.device != "cpu" else f"cpu: {_cpu_name()}",
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
            "git_describe": _git_describe(),
            "hostname": platform.node(),
            "python": platform.python_version(),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
