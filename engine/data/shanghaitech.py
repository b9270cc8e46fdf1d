"""ShanghaiTech Campus (video anomaly detection, METHOD.md 4.1 and 7.3): offline preparation and clip splits.

Preparation (OpenCV, once per dataset) turns the official release into what training reads:

    python -m engine.data.shanghaitech prepare --source RAW --dest DIR [--frame-size 256x512] [--workers 4]

    RAW/training/videos/<vid>.avi              ->  DIR/training/nobackground_frames_resized/<vid>/000000.jpg ...
    RAW/testing/frames/<vid>/*.jpg             ->  DIR/testing/nobackground_frames_resized/<vid>/000000.jpg ...
    RAW/testing/test_frame_mask/<vid>.npy      ->  DIR/testing/test_frame_mask/<vid>.npy

Background removal follows LSA's recipe, the best guess behind MOCCA's frames (METHOD.md 4.1, open question 4): a
per-video background image from OpenCV's MOG2 (fed every frame, then `getBackgroundImage`); a pixel is foreground
when the sum over its three channels of |frame - background| exceeds a threshold (128); the foreground mask is
dilated 5 times with a 3x3 cross (scipy's `binary_dilation` default structure); background pixels are set to 0.
The masked frame is then resized (INTER_AREA, the anti-aliased downscale closest to skimage's `resize`). Each
video is written into a dot-folder and renamed when complete, so a killed run leaves no half video and a re-run
skips finished ones.

Loading (`load`) reads every prepared frame file once per process and holds the frames in one of two forms, chosen
automatically and recorded in `split.meta["frames"]`:

- resident: decoded once into one uint8 tensor (F, 3, H, W) per part with per-video offsets; a batch is gathered
  by index. At 256x512 a frame is 384 KiB decoded, so ShanghaiTech's 274,515 training + 42,883 test frames would
  take 116 GiB on the host and again on a GPU: this path is for small frame sizes.
- encoded: each part's JPEG files back to back in one uint8 byte buffer with per-frame byte offsets, decoded on the
  fly. Background-removed frames are mostly zeros and compress well: 21.5 kB a 256x512 frame (18x) on a synthetic
  release with textured pedestrians over 16% of the frame, so 6.4 GiB on the host for the full dataset, and only a
  batch's frames decoded on the device (bench/shanghaitech_throughput.py). A training batch decodes each distinct
  frame of its overlapping stride-1 clips once (`EncodedFrames.gather`); scoring walks each test video with a
  sliding window of decoded frames (`sliding_clips`), so every test frame is decoded once.

The frames stay resident when train + test decoded take at most `decoded_budget_gb` GiB (a data option, default
DECODED_BUDGET_GB = 8, which holds the whole dataset up to about 64x128) and half of the host's memory; else they
are encoded (`decoded_budget_gb=0` forces that). Resident frames save little time: decoding costs 1.4 ms a 256x512
frame on one CPU core, 45 ms for a batch of two 16-frame clips against a 19 s CPU training step, while every worker
process holds its own decoded copy. The memory guard refuses a part only when even its JPEG bytes exceed 80% of the
host's memory.

Decoding is torchvision's `decode_jpeg` on both paths, through one function (`_decode`): libjpeg-turbo on the CPU,
nvjpeg's batched decoder on CUDA (frames land on the GPU; the bytes stay on the host; our stream is drained first,
pytorch/vision#9606). Resident frames moved to a GPU are decoded there from the bytes, not copied, unless they would
take over half of its free memory: then the split switches to the encoded path. So on one device both paths see the
same pixels and give the same run (tested bit for bit on the CPU), and `decoded_budget_gb` stays out of the run key.
nvjpeg and libjpeg-turbo are not bit-exact with each other (their IDCT and chroma upsampling differ; not yet
measured here), so a GPU run may see slightly different frames than a CPU run, whichever path. (torchvision 0.29
deprecates its image decoders in favour of TorchCodec's; pyproject caps torchvision at 0.29.1.)

Clips are scaled to [0, 1] on the fly (METHOD.md 4.1: no mean/std normalisation). Training draws from every
stride-1 window inside a video; scoring visits every window of every test video. The validation split is a fixed,
seed-independent subset of the test videos (whole videos, so frame scores keep their temporal context);
`selection="test"` makes it the whole test set.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from engine.data.base import SELECTIONS, VAL_FRACTION, VAL_SPLIT_SEED, DatasetError

CLASSES = ("all",)  # the whole dataset is one normal class: anomalies are frames, not classes
DEFAULT_MODEL = "causal3d_lstm"
VIDEO = True  # engine.trial runs the end-to-end video recipe (engine.video) for this dataset
FRAMES_DIR = "nobackground_frames_resized"
MASK_DIR = "test_frame_mask"
DEFAULT_FRAME_SIZE = (256, 512)  # (H, W), METHOD.md 4.1
BACKGROUND_THRESHOLD = 128
DILATION_ITERATIONS = 5
PARTS = ("training", "testing")
DECODED_BUDGET_GB = 8.0  # decoded train + test frames up to this size stay resident; above it, encoded (see above)
OPTIONS_NOT_IN_KEY = ("decoded_budget_gb",)  # engine.trial keeps it out of run keys: both paths give the same run
DECODE_CHUNK = 256  # frames per decode call when the resident path decodes a whole part


# -- preparation --------------------------------------------------------------------------------------------------


class VideoDecodeError(RuntimeError):
    """One video could not be read or converted; preparation names it, skips it and goes on."""


@dataclass(frozen=True)
class VideoJob:
    """One video to prepare: `source` is an .avi file (training) or a folder of jpg frames (testing)."""

    part: str
    name: str
    source: Path
    frames_dest: Path  # the finished folder; its existence means "done"
    mask_source: Path | None = None
    mask_dest: Path | None = None

    @property
    def label(self) -> str:
        return f"{self.part}/{self.name}"

    def is_done(self) -> bool:
        return self.frames_dest.is_dir() and (self.mask_dest is None or self.mask_dest.is_file())


def natural_key(name: str) -> list:
    """Sort "9.jpg" before "10.jpg": digit runs compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _jpgs(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg") and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.name))


def find_jobs(source: Path, dest: Path) -> list[VideoJob]:
    """Every video of the official layout under `source`, with where its prepared frames go under `dest`."""
    videos, frames, masks = source / "training" / "videos", source / "testing" / "frames", source / "testing" / MASK_DIR
    if not videos.is_dir() and not frames.is_dir():
        raise DatasetError(
            f"{source} has neither training/videos nor testing/frames: point --source at the official ShanghaiTech "
            "release (the folder holding training/ and testing/)"
        )
    jobs = []
    if videos.is_dir():
        for avi in sorted(videos.glob("*.avi"), key=lambda p: natural_key(p.name)):
            jobs.append(VideoJob("training", avi.stem, avi, dest / "training" / FRAMES_DIR / avi.stem))
    if frames.is_dir():
        for folder in sorted((p for p in frames.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
            mask, mask_dest = masks / f"{folder.name}.npy", dest / "testing" / MASK_DIR / f"{folder.name}.npy"
            frames_dest = dest / "testing" / FRAMES_DIR / folder.name
            jobs.append(VideoJob("testing", folder.name, folder, frames_dest, mask, mask_dest))
    return jobs


def _read_frames(job: VideoJob) -> Iterator[np.ndarray]:
    """The video's frames as (H, W, 3) uint8 BGR arrays, in temporal order; raises VideoDecodeError."""
    import cv2

    if job.source.is_dir():
        files = _jpgs(job.source)
        if not files:
            raise VideoDecodeError(f"no jpg frames in {job.source}")
        for path in files:
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is None:
                raise VideoDecodeError(f"cannot decode frame {path.name}")
            yield frame
        return
    capture = cv2.VideoCapture(str(job.source))
    try:
        if not capture.isOpened():
            raise VideoDecodeError(f"OpenCV cannot open {job.source.name}")
        n = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            n += 1
            yield frame
        if n == 0:
            raise VideoDecodeError(f"no frame could be decoded from {job.source.name}")
    finally:
        capture.release()


def background_image(frames: Iterator[np.ndarray]) -> tuple[np.ndarray, int]:
    """MOG2's background estimate after seeing every frame (LSA's recipe), and the number of frames."""
    import cv2

    subtractor = cv2.createBackgroundSubtractorMOG2()
    n, shape = 0, None
    for frame in frames:
        if shape is not None and frame.shape != shape:
            raise VideoDecodeError(f"frame {n} is {frame.shape[:2]} but earlier frames are {shape[:2]}")
        shape = frame.shape
        subtractor.apply(frame)
        n += 1
    return subtractor.getBackgroundImage(), n


def remove_background(
    frame: np.ndarray,
    background: np.ndarray,
    threshold: int = BACKGROUND_THRESHOLD,
    iterations: int = DILATION_ITERATIONS,
) -> np.ndarray:
    """Zero the pixels whose summed |frame - background| over the channels is <= threshold, after dilating the
    foreground mask `iterations` times with a 3x3 cross (scipy binary_dilation's default structure)."""
    import cv2

    diff = np.abs(frame.astype(np.int16) - background.astype(np.int16)).sum(axis=2)  # (H, W)
    mask = (diff > threshold).astype(np.uint8)
    if iterations:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)), iterations=iterations)
    return frame * mask[:, :, None]


def prepare_video(
    job: VideoJob, frame_size: tuple[int, int], threshold: int = BACKGROUND_THRESHOLD
) -> tuple[str, int, float]:
    """Convert one video (runs in a worker process). Returns (label, frames written, seconds)."""
    import cv2

    cv2.setNumThreads(1)  # parallelism comes from the process pool
    start = time.perf_counter()
    mask = None
    if job.mask_source is not None:
        if not job.mask_source.is_file():
            raise VideoDecodeError(f"its frame mask {job.mask_source} is missing")
        mask = np.load(job.mask_source).ravel()
    background, n = background_image(_read_frames(job))  # pass 1: the background estimate
    if mask is not None and len(mask) != n:
        raise VideoDecodeError(f"its mask has {len(mask)} entries but the video has {n} frames")
    tmp = job.frames_dest.parent / f".{job.name}.partial"
    if tmp.exists():  # left by a killed run
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    height, width = frame_size
    written = 0
    for i, frame in enumerate(_read_frames(job)):  # pass 2: mask, resize, write
        out = cv2.resize(remove_background(frame, background, threshold), (width, height), interpolation=cv2.INTER_AREA)
        if not cv2.imwrite(str(tmp / f"{i:06d}.jpg"), out):
            raise VideoDecodeError(f"cannot write {tmp / f'{i:06d}.jpg'}")
        written += 1
    if written != n:
        raise VideoDecodeError(f"decoded {n} frames on the first pass but {written} on the second")
    if mask is not None and job.mask_dest is not None:
        job.mask_dest.parent.mkdir(parents=True, exist_ok=True)
        part = job.mask_dest.with_name(f".{job.mask_dest.name}.partial.npy")
        np.save(part, mask.astype(np.uint8))
        os.replace(part, job.mask_dest)
    if job.frames_dest.exists():
        shutil.rmtree(job.frames_dest)
    os.replace(tmp, job.frames_dest)  # the video appears complete or not at all
    return job.label, written, time.perf_counter() - start


@dataclass
class PrepareReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # label -> reason


def _progress(total: int):
    """tqdm when installed (a bar on stderr), else None: the caller prints one line per video."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="video", file=sys.stderr, dynamic_ncols=True)


def prepare(
    source: str | Path,
    dest: str | Path,
    frame_size: tuple[int, int] = DEFAULT_FRAME_SIZE,
    threshold: int = BACKGROUND_THRESHOLD,
    workers: int | None = None,
) -> PrepareReport:
    """Prepare every unfinished video of `source` into `dest`, `workers` videos at a time."""
    jobs = find_jobs(Path(source), Path(dest))
    report = PrepareReport(skipped=[job.label for job in jobs if job.is_done()])
    todo = [job for job in jobs if not job.is_done()]
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    bar = _progress(len(todo))

    def say(text: str) -> None:
        (bar.write if bar is not None else print)(text)

    say(f"{len(jobs)} videos: {len(report.skipped)} already prepared, {len(todo)} to do with {workers} workers")
    import cv2

    # stop OpenCV's thread pool while workers fork: once the caller has used it (any cv2.resize), a forked worker
    # inherits its locks without its threads and hangs in its first OpenCV call
    opencv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(prepare_video, job, tuple(frame_size), threshold): job for job in todo}
            for i, future in enumerate(as_completed(futures), 1):
                job = futures[future]
                try:
                    label, n, seconds = future.result()
                except Exception as exc:  # one bad video must not stop the others
                    reason = str(exc) if isinstance(exc, VideoDecodeError) else f"{type(exc).__name__}: {exc}"
                    report.failed[job.label] = reason
                    say(f"skipped {job.label}: {report.failed[job.label]}")
                else:
                    report.done.append(label)
                    if bar is None:
                        print(f"[{i}/{len(todo)}] {label}: {n} frames in {seconds:.1f} s", flush=True)
                if bar is not None:
                    bar.update(1)
    finally:
        cv2.setNumThreads(opencv_threads)
    if bar is not None:
        bar.close()
    return report


def _frame_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"frame size must look like 256x512 (height x width), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.data.shanghaitech", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="official release -> background-free, resized frames")
    prep.add_argument("--source", required=True, help="the official release (holding training/ and testing/)")
    prep.add_argument("--dest", required=True, help="where the prepared dataset goes (the --data-root of training)")
    prep.add_argument("--frame-size", type=_frame_size, default=DEFAULT_FRAME_SIZE, help="HxW, default 256x512")
    prep.add_argument("--threshold", type=int, default=BACKGROUND_THRESHOLD, help="foreground: sum over RGB of |diff|")
    prep.add_argument("--workers", type=int, default=None, help="videos in parallel (default: all CPU cores)")
    args = parser.parse_args(argv)
    try:
        report = prepare(args.source, args.dest, args.frame_size, args.threshold, args.workers)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"prepared {len(report.done)}, already done {len(report.skipped)}, failed {len(report.failed)}")
    if report.failed:
        print(f"failed videos: {', '.join(sorted(report.failed))} (fix or remove them, then re-run)", file=sys.stderr)
        return 1
    return 0


# -- loading ------------------------------------------------------------------------------------------------------


def _host_memory() -> int | None:
    """Physical memory of this machine in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass(frozen=True, eq=False)
class EncodedPart:
    """Every frame of one part (training or testing) as the bytes of its JPEG file, read once per process."""

    data: torch.Tensor  # (total bytes,) uint8 on the CPU: the frames' files back to back
    frame_offsets: np.ndarray  # (F + 1,) int64: frame k is data[frame_offsets[k]:frame_offsets[k + 1]]
    names: tuple[str, ...]
    offsets: tuple[int, ...]  # video i is frames offsets[i]:offsets[i + 1]
    sizes: tuple[tuple[int, int], ...]  # (H, W) of each video's first frame, from its JPEG header

    def __len__(self) -> int:
        return len(self.frame_offsets) - 1

    @property
    def nbytes(self) -> int:
        return int(self.frame_offsets[-1])

    def length(self, i: int) -> int:
        return self.offsets[i + 1] - self.offsets[i]

    def jpeg(self, k: int) -> torch.Tensor:
        """(n_bytes,) uint8 view of frame k's JPEG file."""
        return self.data[int(self.frame_offsets[k]) : int(self.frame_offsets[k + 1])]

    def describe(self, k: int) -> str:
        i = int(np.searchsorted(self.offsets, k, side="right")) - 1
        return f"frame {k - self.offsets[i]} of video {self.names[i]}"


def _video_folders(root: str, part: str) -> tuple[list[Path], list[list[Path]]]:
    """The finished video folders of a prepared part and their frame files, in natural order."""
    folder = Path(root) / part / FRAMES_DIR
    if not folder.is_dir():
        hint = (
            " (it looks like the official release: run `python -m engine.data.shanghaitech prepare` first)"
            if (Path(root) / "training" / "videos").is_dir()
            else ""
        )
        raise DatasetError(f"no {part}/{FRAMES_DIR} under {root}{hint}: point --data-root at a prepared dataset")
    videos = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]  # dot: unfinished
    videos.sort(key=lambda p: natural_key(p.name))
    files = [_jpgs(v) for v in videos]
    if not videos or not any(files):
        raise DatasetError(f"{folder} holds no video folders with jpg frames: run the prepare step again")
    empty = [v.name for v, f in zip(videos, files, strict=True) if not f]
    if empty:
        raise DatasetError(f"video {empty[0]} in {folder} has no frames: delete its folder and run prepare again")
    return videos, files


@lru_cache(maxsize=4)
def _encoded_part(root: str, part: str) -> EncodedPart:
    """Read every frame file of `part` into one byte buffer; the memory guard refuses only when even that does not
    fit (80% of the host's memory)."""
    from PIL import Image

    videos, files = _video_folders(root, part)
    flat = [p for f in files for p in f]
    offsets = np.r_[0, np.cumsum([len(f) for f in files])].tolist()
    workers = min(8, os.cpu_count() or 1)  # file-system latency, not the CPU, bounds stat and read
    with ThreadPoolExecutor(max_workers=workers) as pool:
        sizes = np.concatenate(list(pool.map(lambda f: np.array([p.stat().st_size for p in f], np.int64), files)))
    if (sizes < 4).any():  # a JPEG holds at least its start and end markers
        raise DatasetError(f"{flat[int(np.argmax(sizes < 4))]} is empty: delete its video folder and run prepare again")
    frame_offsets = np.r_[0, np.cumsum(sizes)].astype(np.int64)
    total, host = int(frame_offsets[-1]), _host_memory()
    if host is not None and total > 0.8 * host:
        raise DatasetError(
            f"{part} needs {total / 2**30:.1f} GiB even as JPEG bytes but this machine has {host / 2**30:.1f} GiB: "
            "prepare the dataset at a smaller --frame-size (e.g. 128x256) or use a machine with more memory"
        )
    data = np.empty(total, dtype=np.uint8)

    def read(i: int) -> None:
        view = memoryview(data)
        for k in range(offsets[i], offsets[i + 1]):
            a, b = int(frame_offsets[k]), int(frame_offsets[k + 1])
            with open(flat[k], "rb") as handle:
                if handle.readinto(view[a:b]) != b - a:
                    raise DatasetError(f"{flat[k]} shrank while it was read: let prepare finish, then load again")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(read, range(len(videos))))  # list(): re-raise the first error
    soi = (data[frame_offsets[:-1]] == 0xFF) & (data[frame_offsets[:-1] + 1] == 0xD8)  # every JPEG starts FF D8
    if not soi.all():
        bad = flat[int(np.argmin(soi))]
        raise DatasetError(f"{bad} is not a JPEG file: delete its video folder and run prepare again")
    shapes = []
    for i in range(len(videos)):
        k = offsets[i]
        try:  # PIL reads only the header here: the frame size without decoding
            width, height = Image.open(io.BytesIO(data[frame_offsets[k] : frame_offsets[k + 1]])).size
        except OSError as exc:
            raise DatasetError(f"cannot read {flat[k]} ({exc}): delete its video folder and run prepare again") from exc
        shapes.append((height, width))
    return EncodedPart(torch.from_numpy(data), frame_offsets, tuple(v.name for v in videos), tuple(offsets),
                       tuple(shapes))  # fmt: skip


@lru_cache(maxsize=8)
def _nvjpeg(device: torch.device) -> bool:
    """Whether torchvision decodes JPEGs on `device` with nvjpeg (a build without it cannot)."""
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

    probe = encode_jpeg(torch.zeros(3, 16, 16, dtype=torch.uint8))
    try:
        decode_jpeg([probe], mode=ImageReadMode.RGB, device=device)
    except Exception as exc:  # noqa: BLE001 - any failure means: decode on the CPU instead
        warnings.warn(f"nvjpeg cannot decode on {device} ({exc}); ShanghaiTech frames are decoded on the CPU",
                      stacklevel=2)  # fmt: skip
        return False
    return True


def _decode_jpegs(chunks: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """(3, h, w) uint8 RGB images from JPEG byte tensors: nvjpeg's batched decoder on CUDA (images on `device`),
    else torchvision's libjpeg-turbo (images on the CPU)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if device.type == "cuda" and _nvjpeg(device):
        # nvjpeg writes on a stream of its own without waiting for ours, so a block the caching allocator hands it
        # may still be read by queued kernels (pytorch/vision#9606): drain our stream first
        torch.cuda.current_stream(device).synchronize()
        return decode_jpeg(chunks, mode=ImageReadMode.RGB, device=device)
    return decode_jpeg(chunks, mode=ImageReadMode.RGB)


def _resize(frames: torch.Tensor, frame_size: tuple[int, int]) -> torch.Tensor:
    """(n, 3, h, w) uint8 -> (n, 3, H, W) uint8: bilinear with anti-aliasing, rounded (per frame: the result does
    not depend on which frames share the call)."""
    resized = F.interpolate(frames.float(), size=tuple(frame_size), mode="bilinear", antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)


def _decode(
    part: EncodedPart, frames: list[int], frame_size: tuple[int, int], resize: bool, device: torch.device
) -> torch.Tensor:
    """(n, 3, H, W) uint8 RGB frames `frames` (indices into `part`) on `device`, (H, W) = `frame_size`. Both paths
    decode through here, so they see the same pixels. A frame of another size is resized when `resize` (the
    user asked for this frame size), else it is an error."""
    try:
        images = _decode_jpegs([part.jpeg(k) for k in frames], device)
    except RuntimeError:
        for k in frames:  # name the first frame that does not decode
            try:
                _decode_jpegs([part.jpeg(k)], torch.device("cpu"))
            except RuntimeError as exc:
                raise DatasetError(
                    f"cannot decode {part.describe(k)} ({exc}): delete the video's folder and run prepare again"
                ) from exc
        raise
    shapes = {tuple(image.shape[-2:]) for image in images}
    if not resize and shapes != {tuple(frame_size)}:
        k = next(k for k, image in zip(frames, images, strict=True) if tuple(image.shape[-2:]) != tuple(frame_size))
        h, w = next(s for s in shapes if s != tuple(frame_size))
        raise DatasetError(
            f"{part.describe(k)} is {h}x{w} but the other frames are {frame_size[0]}x{frame_size[1]}: prepare every "
            "video at one size or pass frame_size"
        )
    if len(shapes) == 1:  # the usual case: one (n, 3, h, w) tensor, resized at once
        out = torch.stack(images).to(device)
        return out if shapes == {tuple(frame_size)} else _resize(out, frame_size)
    return torch.cat([_resize(image[None].to(device), frame_size) for image in images])


@dataclass(frozen=True, eq=False)
class ResidentFrames:
    """The resident path: frames decoded once, held as one (F, 3, H, W) uint8 tensor; reading is indexing."""

    frames: torch.Tensor  # (F, 3, H, W) uint8, videos back to back
    kind: ClassVar[str] = "resident"

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def device(self) -> torch.device:
        return self.frames.device

    @property
    def frame_size(self) -> tuple[int, int]:
        return tuple(self.frames.shape[-2:])

    @property
    def nbytes(self) -> int:
        return self.frames.nbytes

    def read(self, lo: int, hi: int) -> torch.Tensor:
        """(hi - lo, 3, H, W) uint8 frames lo..hi-1."""
        return self.frames[lo:hi]

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """(*idx.shape, 3, H, W) uint8 frames at `idx`."""
        return self.frames[idx]

    def slice(self, lo: int, hi: int) -> ResidentFrames:
        return ResidentFrames(self.frames[lo:hi])

    def to(self, device: torch.device | str) -> ResidentFrames:
        return ResidentFrames(self.frames.to(device))


@dataclass(frozen=True, eq=False)
class EncodedFrames:
    """The encoded path: frames lo..hi-1 of `part` kept as JPEG bytes on the host, decoded on `device` when read.

    `gather` decodes each distinct frame of a request once (stride-1 clips of a batch overlap); `read` decodes a
    contiguous run (sliding_clips keeps the overlap between scoring batches, so a video is decoded once).
    """

    part: EncodedPart
    requested: tuple[int, int] | None  # the frame size asked for (frames are resized to it); None = as prepared
    device: torch.device
    lo: int
    hi: int
    kind: ClassVar[str] = "encoded"

    def __len__(self) -> int:
        return self.hi - self.lo

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.requested or self.part.sizes[0]

    @property
    def nbytes(self) -> int:
        return int(self.part.frame_offsets[self.hi] - self.part.frame_offsets[self.lo])

    def _decode(self, frames: list[int]) -> torch.Tensor:
        return _decode(self.part, frames, self.frame_size, self.requested is not None, self.device)

    def read(self, lo: int, hi: int) -> torch.Tensor:
        """(hi - lo, 3, H, W) uint8 frames lo..hi-1, decoded."""
        if not 0 <= lo <= hi <= len(self):
            raise IndexError(f"frames {lo}..{hi} outside 0..{len(self)}")
        if lo == hi:
            return torch.empty((0, 3, *self.frame_size), dtype=torch.uint8, device=self.device)
        return self._decode(list(range(self.lo + lo, self.lo + hi)))

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """(*idx.shape, 3, H, W) uint8 frames at `idx`, each distinct frame decoded once."""
        distinct, inverse = torch.unique(idx.reshape(-1).cpu(), return_inverse=True)  # (U,) sorted, (n,)
        if len(distinct) and (distinct[0] < 0 or distinct[-1] >= len(self)):
            raise IndexError(f"frame index outside 0..{len(self) - 1}")
        decoded = self._decode((distinct + self.lo).tolist())  # (U, 3, H, W) on self.device
        return decoded[inverse.to(self.device)].view(*idx.shape, *decoded.shape[1:])

    def slice(self, lo: int, hi: int) -> EncodedFrames:
        return replace(self, lo=self.lo + lo, hi=self.lo + hi)

    def to(self, device: torch.device | str) -> EncodedFrames:
        return replace(self, device=torch.device(device))  # the bytes stay on the host; decoding targets `device`


Frames = ResidentFrames | EncodedFrames


def sliding_clips(frames: Frames, clip_length: int, batch_size: int) -> Iterator[torch.Tensor]:
    """(b, 3, T, H, W) float clips in [0, 1] of every stride-1 window of `frames` (one video), in order, at most
    `batch_size` per batch. Each frame is read once: a batch reuses the previous batch's frames it shares."""
    n_windows = len(frames) - clip_length + 1
    window, first = None, 0  # the read frames first..first + len(window) - 1
    for start in range(0, n_windows, batch_size):
        b = min(batch_size, n_windows - start)
        stop = start + b + clip_length - 1  # the batch needs frames start..stop-1
        if window is None:
            window = frames.read(start, stop)
        else:
            window = torch.cat([window[start - first :], frames.read(first + len(window), stop)])
        first = start
        idx = torch.arange(b, device=window.device)[:, None] + torch.arange(clip_length, device=window.device)
        yield window[idx].permute(0, 2, 1, 3, 4).float().div_(255)  # (b, T, 3, H, W) -> (b, 3, T, H, W)


@lru_cache(maxsize=4)
def _decoded(root: str, part: str, requested: tuple[int, int] | None, device: torch.device) -> torch.Tensor:
    """The resident path: every frame of `part` decoded once into one (F, 3, H, W) uint8 tensor on `device`, by
    that device's decoder (nvjpeg on CUDA)."""
    encoded = _encoded_part(root, part)
    frame_size = requested or encoded.sizes[0]
    frames = torch.empty((len(encoded), 3, *frame_size), dtype=torch.uint8, device=device)

    def fill(i: int) -> None:
        for start in range(encoded.offsets[i], encoded.offsets[i + 1], DECODE_CHUNK):
            stop = min(start + DECODE_CHUNK, encoded.offsets[i + 1])
            frames[start:stop] = _decode(encoded, list(range(start, stop)), frame_size, requested is not None, device)

    workers = min(8, os.cpu_count() or 1) if device.type == "cpu" else 1  # nvjpeg batches within a call
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(fill, range(len(encoded.names))))  # list(): re-raise the first error
    return frames


def _frame_labels(root: str, part: EncodedPart) -> torch.Tensor:
    """(F,) int64 0/1 labels of every test frame, from test_frame_mask/<vid>.npy."""
    labels = []
    for i, name in enumerate(part.names):
        path = Path(root) / "testing" / MASK_DIR / f"{name}.npy"
        if not path.is_file():
            raise DatasetError(f"test video {name} has no frame mask {path}: copy it from the official release")
        mask = np.load(path).ravel()
        if len(mask) != part.length(i):
            raise DatasetError(
                f"the frame mask of test video {name} has {len(mask)} entries but the video has {part.length(i)} "
                "frames: re-run prepare for this video or fix its mask"
            )
        labels.append((mask != 0).astype(np.int64))
    return torch.from_numpy(np.concatenate(labels))


def window_starts(offsets: tuple[int, ...], clip_length: int) -> torch.Tensor:
    """(N,) int64 global index of the first frame of every stride-1 window that lies inside one video."""
    starts = [torch.arange(a, b - clip_length + 1) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    return torch.cat(starts).long()


def validation_videos(n_videos: int, selection: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(validation, reported test) video indices: a fixed VAL_FRACTION of the videos (seed-independent), or every
    video for both with selection="test" (the paper's protocol)."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    everything = tuple(range(n_videos))
    if selection == "test":
        return everything, everything
    if n_videos < 2:
        raise DatasetError("a validation split needs at least 2 test videos: use selection 'test' with this dataset")
    n_val = min(n_videos - 1, max(1, round(VAL_FRACTION * n_videos)))
    order = np.random.default_rng(VAL_SPLIT_SEED).permutation(n_videos)
    return tuple(sorted(order[:n_val].tolist())), tuple(sorted(order[n_val:].tolist()))


@dataclass
class VideoSplit:
    """The one-class problem of a video dataset: normal training videos and labelled test videos (frame level).

    Frames stay uint8 (resident) or JPEG bytes (encoded) wherever the split lives; `clips` gathers and scales a
    batch. `x_train` / `y_val` / `y_test` mirror OneClassSplit's names so run_trial's bookkeeping counts frames.
    """

    dataset: str
    normal_class: int
    class_name: str
    clip_length: int
    x_train: Frames  # F_train frames, training videos back to back
    train_starts: torch.Tensor  # (N_windows,) int64, first frame of every stride-1 training window
    x_eval: Frames  # F_test frames, all test videos back to back
    eval_labels: torch.Tensor  # (F_test,) int64, 1 = anomalous frame
    videos: tuple[str, ...]  # test video names
    offsets: tuple[int, ...]  # test video i is x_eval frames offsets[i]:offsets[i + 1]
    val_videos: tuple[int, ...]
    test_videos: tuple[int, ...]
    selection: str = "val"
    meta: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.x_train.frame_size

    def video_labels(self, i: int) -> torch.Tensor:
        return self.eval_labels[self.offsets[i] : self.offsets[i + 1]]

    def video_frames(self, i: int) -> Frames:
        return self.x_eval.slice(self.offsets[i], self.offsets[i + 1])

    @property
    def y_val(self) -> torch.Tensor:
        return torch.cat([self.video_labels(i) for i in self.val_videos])

    @property
    def y_test(self) -> torch.Tensor:
        return torch.cat([self.video_labels(i) for i in self.test_videos])

    def clips(self, frames: Frames, starts: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) float clips in [0, 1] starting at `starts` (indices into `frames`)."""
        idx = starts[:, None] + torch.arange(self.clip_length, device=starts.device)  # (B, T)
        return frames.gather(idx).permute(0, 2, 1, 3, 4).float().div_(255)

    def to(self, device: torch.device | str) -> VideoSplit:
        """The split on `device`. Resident frames are decoded there once per process (however many splits share
        them) unless they would take over half of the device's free memory: then the split switches to the encoded
        path (meta["frames"] says which). Encoded frames stay on the host and are decoded on `device`."""
        device, key = torch.device(device), self.meta.get("cache_key")
        if key is not None and self.x_train.kind == "resident" and device != self.device:
            x_train, x_eval = _resident_on(*key, device)  # decoded there, not copied from the host
        else:
            x_train, x_eval = self.x_train.to(device), self.x_eval.to(device)
        meta = {**self.meta, "frames": x_train.kind}
        return replace(self, x_train=x_train, x_eval=x_eval, train_starts=self.train_starts.to(device),
                       eval_labels=self.eval_labels.to(device), meta=meta)  # fmt: skip

    def summary(self) -> str:
        return (
            f"{self.dataset}: train {len(self.x_train)} frames ({len(self.train_starts)} windows of "
            f"{self.clip_length}), validation {len(self.val_videos)} videos / {len(self.y_val)} frames, test "
            f"{len(self.test_videos)} videos / {len(self.y_test)} frames ({int(self.y_test.sum())} anomalous), "
            f"{self.frame_size[0]}x{self.frame_size[1]}, {self.x_train.kind} frames, selection on {self.selection}"
        )


def _resident_on(root: str, requested: tuple[int, int] | None, device: torch.device) -> tuple[Frames, Frames]:
    """Both parts resident on `device`, or encoded frames decoded on `device` when the resident ones would take
    more than half of its free memory (the rest is for the model and its activations)."""
    parts = [_encoded_part(root, p) for p in PARTS]
    if device.type == "cuda":
        height, width = requested or parts[0].sizes[0]
        need = sum(len(p) for p in parts) * 3 * height * width
        if need > 0.5 * torch.cuda.mem_get_info(device)[0]:
            return tuple(EncodedFrames(p, requested, device, 0, len(p)) for p in parts)
    return tuple(ResidentFrames(_decoded(root, p, requested, device)) for p in PARTS)


def load(
    normal_class: int = 0,
    data_root: str | None = None,
    selection: str = "val",
    clip_length: int = 16,
    frame_size: tuple[int, int] | list[int] | None = None,
    decoded_budget_gb: float | None = None,
    **_: object,
) -> VideoSplit:
    """The prepared dataset at `data_root` as a VideoSplit. `frame_size` (H, W) resizes at load time (None keeps
    the prepared size); the dataset is one class, so `normal_class` must be 0. The frames stay resident (decoded)
    when train + test decoded take at most `decoded_budget_gb` (default DECODED_BUDGET_GB) and half of the host's
    memory, else encoded (JPEG bytes decoded per batch); meta["frames"] records which."""
    if normal_class != 0:
        raise DatasetError(f"ShanghaiTech has one class (0: all), got {normal_class}")
    if data_root is None:
        raise DatasetError(
            "ShanghaiTech needs --data-root: prepare it with `python -m engine.data.shanghaitech prepare --source RAW "
            "--dest DIR` and pass DIR"
        )
    if clip_length < 1:
        raise DatasetError(f"clip_length must be positive, got {clip_length}")
    if decoded_budget_gb is not None and not decoded_budget_gb >= 0:
        raise DatasetError(f"decoded_budget_gb must be 0 or more (0 = always encoded), got {decoded_budget_gb}")
    root = str(Path(data_root).expanduser().resolve())
    requested = tuple(int(s) for s in frame_size) if frame_size is not None else None
    train, test = (_encoded_part(root, part) for part in PARTS)
    if requested is None:  # every video must then have the first training video's size
        for part in (train, test):
            for name, size in zip(part.names, part.sizes, strict=True):
                if size != train.sizes[0]:
                    raise DatasetError(
                        f"video {name} has {size[0]}x{size[1]} frames but {train.names[0]} has "
                        f"{train.sizes[0][0]}x{train.sizes[0][1]}: prepare every video at one size or pass frame_size"
                    )
    short = [n for i, n in enumerate(test.names) if test.length(i) < clip_length]
    if short:
        raise DatasetError(f"test video {short[0]} has fewer than {clip_length} frames: use a shorter clip_length")
    starts = window_starts(train.offsets, clip_length)
    if len(starts) == 0:
        raise DatasetError(f"no training video has {clip_length} frames: use a shorter clip_length")
    val_videos, test_videos = validation_videos(len(test.names), selection)
    skipped = [n for i, n in enumerate(train.names) if train.length(i) < clip_length]
    labels = _frame_labels(root, test)
    for what, ids in (("validation", val_videos), ("test", test_videos)):
        y = torch.cat([labels[test.offsets[i] : test.offsets[i + 1]] for i in ids])
        if y.min() == y.max():
            raise DatasetError(
                f"the {what} videos hold only {'anomalous' if y[0] else 'normal'} frames, so no AUC exists: "
                "use selection 'test' or add test videos with both kinds of frames"
            )
    height, width = requested or train.sizes[0]
    decoded = (len(train) + len(test)) * 3 * height * width
    budget = (DECODED_BUDGET_GB if decoded_budget_gb is None else decoded_budget_gb) * 2**30
    host = _host_memory()
    cpu = torch.device("cpu")
    if decoded <= (budget if host is None else min(budget, 0.5 * host)):
        x_train, x_eval = (ResidentFrames(_decoded(root, part, requested, cpu)) for part in PARTS)
    else:
        x_train, x_eval = (EncodedFrames(part, requested, cpu, 0, len(part)) for part in (train, test))
    meta = {
        "cache_key": (root, requested),
        "frames": x_train.kind,
        "decoded_gib": decoded / 2**30,  # what the resident path holds (on the host, and again on a GPU)
        "encoded_gib": (train.nbytes + test.nbytes) / 2**30,  # what the encoded path holds (on the host only)
        "train_videos": train.names,
        "short_train_videos": skipped,
    }
    return VideoSplit(
        dataset="shanghaitech",
        normal_class=0,
        class_name=CLASSES[0],
        clip_length=clip_length,
        x_train=x_train,
        train_starts=starts,
        x_eval=x_eval,
        eval_labels=labels,
        videos=test.names,
        offsets=test.offsets,
        val_videos=val_videos,
        test_videos=test_videos,
        selection=selection,
        meta=meta,
    )


if __name__ == "__main__":
    sys.exit(main())
