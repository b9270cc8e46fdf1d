"""ShanghaiTech: JPEG compression of prepared frames, memory of the resident and encoded frame paths for the full
dataset, and clips/s of both paths (engine/data/shanghaitech.py) with the video model (engine/models/video.py).

    python -m bench.shanghaitech_throughput                   # 16 x 256 x 512 (paper) and 8 x 32 x 64 (tests), CPU
    python -m bench.shanghaitech_throughput --paper-train     # + end-to-end training at 256 x 512 (~1 min a step here)
    python -m bench.shanghaitech_throughput --device cuda --steps 20 --batch-size 4 --paper-train

Data: a synthetic raw release at ShanghaiTech's 480 x 856 (a photo as the static scene, photo-textured "pedestrians"
moving over it, sensor noise; one training .avi and one test video as jpg frames), run through the real `prepare`
(MOG2 background removal, resize to 256 x 512, JPEG at OpenCV's default quality 95); the test fixture
(tests/fixtures/shanghaitech.py) prepared at 32 x 64 gives the second compression ratio. Textured pedestrians
compress worse than real, blurrier ones, so the encoded sizes here err on the large side.

Memory for the full dataset (274,515 training + 42,883 test frames, Luo et al. ICCV 2017) = frames x measured bytes
per frame: the resident path holds decoded uint8 frames on the host (and again on a GPU); the encoded path holds
JPEG bytes on the host and only a batch's decoded frames on the device.

Phases, per (case, path), each (case, path) in its own process (its peak resident memory, getrusage maxrss, is its
own): `data` = assembling clips only (a training batch of random stride-1 windows: gather, or decode each distinct
frame once, then scale to float; scoring: the sliding windows over the test video, each frame read once), plus the
raw decode rate; `score` = engine.video.clip_scores end to end (the forward without gradients, distances and SSE);
`train` = one step of engine.video.train_end_to_end (clips, reconstruct + seven LSTM layers, loss, backward, Adam).
One warm-up step, then `--steps` timed steps. Paper-size training costs about a minute a step on this 2-core CPU,
so it runs only with --paper-train. Writes bench/results/shanghaitech_throughput.json with provenance. On a CPU that
other jobs also load, more torch threads than free cores can be many times slower, so the thread count is recorded
and settable (--threads).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.provenance import script_provenance, write_json

RESULTS = Path(__file__).resolve().parent / "results" / "shanghaitech_throughput.json"
CASES = {
    "paper": dict(clip_length=16, frame_size=(256, 512), model={}),
    "test": dict(clip_length=8, frame_size=(32, 64), model=dict(code_size=16, lstm_hidden=8)),
}
PATHS = ("resident", "encoded")
FULL_FRAMES = {"training": 274_515, "testing": 42_883}  # ShanghaiTech Campus (Luo et al., ICCV 2017)
RAW_SIZE = (480, 856)  # (H, W) of the official videos
SYNTHETIC_FRAMES = {"training": 160, "testing": 96}
PEDESTRIANS = 10  # per frame, 100 x 40 px at 480 x 856 (about 10% of the frame before the mask's dilation)


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# -- data ---------------------------------------------------------------------------------------------------------


def _synthetic_frames(n: int, seed: int) -> list[np.ndarray]:
    """`n` BGR 480 x 856 frames: a photo scene with PEDESTRIANS photo-textured boxes walking over it, plus noise."""
    import cv2
    from sklearn.datasets import load_sample_image

    rng = np.random.default_rng(seed)
    height, width = RAW_SIZE
    scene = cv2.resize(load_sample_image("china.jpg")[:, :, ::-1], (width, height), interpolation=cv2.INTER_LINEAR)
    texture = load_sample_image("flower.jpg")[:, :, ::-1]
    ph, pw = 100, 40
    corners = zip(rng.integers(0, 427 - ph, PEDESTRIANS), rng.integers(0, 640 - pw, PEDESTRIANS), strict=True)
    crops = [texture[y : y + ph, x : x + pw] for y, x in corners]
    start = rng.uniform((0, 0), (height - ph, width - pw), size=(PEDESTRIANS, 2))
    velocity = rng.uniform(-4, 4, size=(PEDESTRIANS, 2))  # px per frame
    frames = []
    for t in range(n):
        frame = scene.astype(np.int16) + rng.normal(0, 2, scene.shape).round().astype(np.int16)  # sensor noise
        for crop, (y, x) in zip(crops, start + t * velocity, strict=True):
            y, x = int(y) % (height - ph), int(x) % (width - pw)
            frame[y : y + ph, x : x + pw] = crop
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def write_synthetic_raw(root: Path) -> None:
    """A raw release in the official layout: one training .avi and one test video as jpg frames with its mask."""
    import cv2

    from tests.fixtures.shanghaitech import write_video

    (root / "training" / "videos").mkdir(parents=True)
    write_video(root / "training" / "videos" / "01_001.avi", _synthetic_frames(SYNTHETIC_FRAMES["training"], 0))
    frames = root / "testing" / "frames" / "01_0014"
    frames.mkdir(parents=True)
    for t, frame in enumerate(_synthetic_frames(SYNTHETIC_FRAMES["testing"], 1)):
        cv2.imwrite(str(frames / f"{t:03d}.jpg"), frame)
    mask = np.zeros(SYNTHETIC_FRAMES["testing"], dtype=np.uint8)
    mask[40:60] = 1  # labels only matter to the loader's checks here
    (root / "testing" / "test_frame_mask").mkdir(parents=True)
    np.save(root / "testing" / "test_frame_mask" / "01_0014.npy", mask)


def compression(prepared: Path) -> dict:
    """Bytes per prepared frame against its decoded uint8 size, and the share of foreground pixels."""
    import cv2

    from engine.data.shanghaitech import FRAMES_DIR

    files = sorted(prepared.glob(f"*/{FRAMES_DIR}/*/*.jpg"))
    sizes = np.array([p.stat().st_size for p in files])
    image = cv2.imread(str(files[0]))
    peaks = [cv2.imread(str(p)).max(axis=2) for p in files[:: max(1, len(files) // 20)]]  # (H, W) per sampled frame
    decoded = image.size  # H * W * 3 bytes as uint8
    return {
        "frame": f"{image.shape[0]} x {image.shape[1]}",
        "frames": len(files),
        "bytes_per_frame_mean": float(sizes.mean()),
        "bytes_per_frame_max": int(sizes.max()),
        "decoded_bytes_per_frame": decoded,
        "ratio": decoded / float(sizes.mean()),
        "nonzero_fraction": float(np.mean([(m > 0).mean() for m in peaks])),
        "foreground_fraction": float(np.mean([(m > 16).mean() for m in peaks])),  # not JPEG ringing near objects
    }


def full_dataset_memory(bytes_per_frame: float, frame_size: tuple[int, int], batch_size: int, clip_length: int) -> dict:
    """GiB each path holds for the whole dataset at `frame_size`, from measured JPEG bytes per frame."""
    n = sum(FULL_FRAMES.values())
    decoded = 3 * frame_size[0] * frame_size[1]
    batch = batch_size * clip_length * decoded * (1 + 4)  # distinct uint8 frames at most, plus the float clips
    gib = 2**-30
    return {
        "frames": dict(FULL_FRAMES),
        "resident": {"host_gib": n * decoded * gib, "gpu_gib": n * decoded * gib},
        "encoded": {"host_gib": n * bytes_per_frame * gib, "gpu_gib_per_batch": batch * gib},
    }


# -- throughput ---------------------------------------------------------------------------------------------------


def _timed(fn, steps: int, device: torch.device) -> float:
    """Seconds per call of `fn(step)` over `steps` calls after one warm-up call."""
    fn(0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        fn(step)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def measure(name: str, path: str, data_root: str, phases: list[str], batch_size: int, steps: int, device: str) -> dict:
    """Every phase of one (case, path) in this process."""
    from engine.data import load_split
    from engine.data.shanghaitech import sliding_clips
    from engine.models import create_model
    from engine.objective import one_class_loss, squared_distances, updated_radii
    from engine.training import OneClassModel, reconstruction_loss
    from engine.video import clip_scores, epoch_windows

    case, dev = CASES[name], torch.device(device)
    length, rss_start = case["clip_length"], _maxrss_mib()
    t = time.perf_counter()
    budget = 0 if path == "encoded" else 1e6
    split = load_split("shanghaitech", 0, data_root=data_root, selection="test", clip_length=length,
                       frame_size=case["frame_size"], decoded_budget_gb=budget).to(dev)  # fmt: skip
    assert split.meta["frames"] == path, split.meta["frames"]
    row = {
        "case": name,
        "path": path,
        "clip": f"{length} x {case['frame_size'][0]} x {case['frame_size'][1]}",
        "model_options": case["model"],
        "batch_size": batch_size,
        "timed_steps": steps,
        "load_s": time.perf_counter() - t,
        "held_frame_mib": (split.x_train.nbytes + split.x_eval.nbytes) / 2**20,
    }
    n_batches = max(steps, 10) + 1
    windows = epoch_windows(split, batch_size * n_batches, torch.Generator().manual_seed(0)).split(batch_size)

    if "data" in phases:
        seconds = _timed(lambda i: split.clips(split.x_train, windows[i]), n_batches - 1, dev)
        row["data_train_clips_per_s"] = batch_size / seconds
        video = split.video_frames(0)
        t = time.perf_counter()
        n_clips = sum(len(x) for x in sliding_clips(video, length, batch_size))
        row["data_score_clips_per_s"] = n_clips / (time.perf_counter() - t)
        t = time.perf_counter()
        video.read(0, len(video))
        row["read_frames_per_s"] = len(video) / (time.perf_counter() - t)  # decode rate (encoded), a slice (resident)

    if "score" in phases or "train" in phases:
        model = create_model("causal3d_lstm", clip_length=length, frame_size=case["frame_size"],
                             **case["model"]).to(dev)  # fmt: skip
        layers = tuple(range(model.encoder.num_layers))
        state = OneClassModel(layers, [torch.full((d,), 0.1, device=dev) for d in model.encoder.layer_dims],
                              torch.zeros(len(layers), device=dev))  # fmt: skip
        row["parameters"] = sum(p.numel() for p in model.parameters())
    if "score" in phases:
        model.eval()
        video = split.x_eval
        step_frames = batch_size + length - 1  # exactly batch_size windows a step

        def score_step(i: int) -> None:
            lo = (i * batch_size) % (len(video) - step_frames + 1)
            clip_scores(model, state, split, video.slice(lo, lo + step_frames), batch_size, "soft")

        seconds = _timed(score_step, steps, dev)
        row.update(score_clips_per_s=batch_size / seconds, score_seconds_per_step=seconds)
    if "train" in phases:
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=0.5e-6)

        def train_step(i: int) -> None:
            x = split.clips(split.x_train, windows[i])
            reconstruction, feats = model.reconstruct(x, layers)
            dist = squared_distances(feats, state.centroids)
            loss = one_class_loss(dist, state.radii, 0.1, "soft") + reconstruction_loss(reconstruction, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state.radii = updated_radii(dist, 0.1)

        seconds = _timed(train_step, steps, dev)
        row.update(train_clips_per_s=batch_size / seconds, train_seconds_per_step=seconds)
    row.update(peak_rss_mib=_maxrss_mib(), peak_rss_over_start_mib=_maxrss_mib() - rss_start)
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


def _prepare_data(tmp: Path) -> tuple[dict[str, Path], dict]:
    """Prepared data per case (the synthetic release at 256 x 512 for paper, the test fixture at 32 x 64 for
    test) and the compression of each."""
    from engine.data.shanghaitech import prepare
    from tests.fixtures.shanghaitech import write_shanghaitech

    write_synthetic_raw(tmp / "raw")
    prepare(tmp / "raw", tmp / "synthetic", frame_size=CASES["paper"]["frame_size"], workers=2)
    write_shanghaitech(tmp / "fixture_raw")
    prepare(tmp / "fixture_raw", tmp / "fixture", frame_size=CASES["test"]["frame_size"], workers=2)
    roots = {"paper": tmp / "synthetic", "test": tmp / "fixture"}
    return roots, {"synthetic": compression(roots["paper"]), "fixture": compression(roots["test"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.shanghaitech_throughput", description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="paper,test", help="which of paper (16x256x512), test (8x32x64)")
    p.add_argument("--paths", default="resident,encoded", help="which frame paths")
    p.add_argument("--paper-train", action="store_true", help="also time training at paper size (slow on a CPU)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=1, help="timed model steps after one warm-up step")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads (default: all)")
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("--one", nargs=4, metavar=("CASE", "PATH", "DATA_ROOT", "PHASES"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.one:  # child process mode
        name, path, root, phases = args.one
        print(json.dumps(measure(name, path, root, phases.split(","), args.batch_size, args.steps, args.device)))
        return 0

    started = time.perf_counter()
    cases = args.cases.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        roots, ratios = _prepare_data(Path(tmp))
        for name, c in ratios.items():
            print(f"{name:>9} {c['frame']:>9}: {c['bytes_per_frame_mean']:8.0f} B/frame (max "
                  f"{c['bytes_per_frame_max']}), {c['ratio']:5.1f}x smaller than decoded, "
                  f"{100 * c['foreground_fraction']:.1f}% foreground", flush=True)  # fmt: skip
        rows = []
        for name in cases:
            phases = ["data", "score"] + (["train"] if name != "paper" or args.paper_train else [])
            for path in args.paths.split(","):
                cmd = [sys.executable, "-m", "bench.shanghaitech_throughput", "--one", name, path, str(roots[name]),
                       ",".join(phases), "--threads", str(args.threads), "--batch-size", str(args.batch_size),
                       "--steps", str(args.steps), "--device", args.device]  # fmt: skip
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1])
                if out.returncode != 0:
                    print(out.stderr, file=sys.stderr)
                    return 1
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                timed = "  ".join(f"{k.removesuffix('_clips_per_s')} {row[k]:.3g}" for k in row
                                  if k.endswith("_clips_per_s"))  # fmt: skip
                print(f"{row['clip']:>13} {path:<8} clips/s: {timed}  decode/read {row['read_frames_per_s']:.0f} "
                      f"frames/s  peak RSS {row['peak_rss_mib']:.0f} MiB", flush=True)  # fmt: skip
    paper = CASES["paper"]
    memory = full_dataset_memory(ratios["synthetic"]["bytes_per_frame_mean"], paper["frame_size"], args.batch_size,
                                 paper["clip_length"])  # fmt: skip
    print(f"full dataset at 256 x 512: resident {memory['resident']['host_gib']:.1f} GiB on the host (and again on a "
          f"GPU), encoded {memory['encoded']['host_gib']:.2f} GiB on the host and "
          f"{1024 * memory['encoded']['gpu_gib_per_batch']:.0f} MiB per batch on the device")  # fmt: skip
    result = {
        "benchmark": "shanghaitech_throughput",
        "model": "causal3d_lstm",
        "compression": ratios,
        "full_dataset_memory_at_256x512": memory,
        "parameters": parameter_counts(),
        "gflop_per_clip": {name: gflop_per_clip(name) for name in cases},
        "rows": rows,
        "provenance": script_provenance(args.device, args.threads, wall_s=time.perf_counter() - started),
    }
    write_json(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
