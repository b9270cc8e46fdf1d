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

Loading (`load`) decodes every prepared frame once per process into one uint8 tensor (frames, 3, H, W) per part
with per-video offsets; clips of `clip_length` frames are gathered by index and scaled to [0, 1] on the fly
(METHOD.md 4.1: no mean/std normalisation). Training draws from every stride-1 window inside a video; scoring
visits every window of every test video. The validation split is a fixed, seed-independent subset of the test
videos (whole videos, so frame scores keep their temporal context); `selection="test"` makes it the whole test set.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

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


@dataclass
class VideoPart:
    """All frames of one part (training or testing), decoded once per process."""

    frames: torch.Tensor  # (F, 3, H, W) uint8, videos back to back
    names: tuple[str, ...]
    offsets: tuple[int, ...]  # video i is frames[offsets[i]:offsets[i + 1]]

    def length(self, i: int) -> int:
        return self.offsets[i + 1] - self.offsets[i]


def _decode(files: list[Path], frame_size: tuple[int, int] | None) -> torch.Tensor:
    """(n, 3, H, W) uint8 RGB frames; resized (bilinear, anti-aliased) when `frame_size` differs."""
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in files]
    frames = torch.stack(decode_jpeg(data, mode=ImageReadMode.RGB))
    if frame_size is not None and tuple(frames.shape[-2:]) != tuple(frame_size):
        resized = F.interpolate(frames.float(), size=tuple(frame_size), mode="bilinear", antialias=True)
        frames = resized.round().clamp(0, 255).to(torch.uint8)
    return frames


def _check_memory(n_frames: int, shape: tuple[int, int], what: str) -> None:
    need = n_frames * 3 * shape[0] * shape[1]
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > 0.8 * total:
        raise DatasetError(
            f"{what} needs {need / 2**30:.1f} GiB as uint8 frames but this machine has {total / 2**30:.1f} GiB: "
            "pass a smaller frame_size in the data options (e.g. 128x256)"
        )


@lru_cache(maxsize=4)
def _load_part(root: str, part: str, frame_size: tuple[int, int] | None) -> VideoPart:
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
    first = _decode(files[0][:1], frame_size)
    shape = tuple(first.shape[-2:])
    offsets = np.r_[0, np.cumsum([len(f) for f in files])].tolist()
    _check_memory(offsets[-1], shape, f"{part} ({offsets[-1]} frames at {shape[0]}x{shape[1]})")
    frames = torch.empty((offsets[-1], 3, *shape), dtype=torch.uint8)

    def fill(i: int) -> None:
        for start in range(0, len(files[i]), 256):
            chunk = _decode(files[i][start : start + 256], frame_size)
            if tuple(chunk.shape[-2:]) != shape:
                raise DatasetError(
                    f"video {videos[i].name} has {chunk.shape[-2]}x{chunk.shape[-1]} frames but {videos[0].name} has "
                    f"{shape[0]}x{shape[1]}: prepare every video at one size or pass frame_size"
                )
            frames[offsets[i] + start : offsets[i] + start + len(chunk)] = chunk

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(fill, range(len(videos))))  # list(): re-raise the first error
    return VideoPart(frames, tuple(v.name for v in videos), tuple(offsets))


def _frame_labels(root: str, part: VideoPart) -> torch.Tensor:
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

    Frames stay uint8 (4x smaller than float) wherever the split lives; `clips` gathers and scales a batch.
    `x_train` / `y_val` / `y_test` mirror OneClassSplit's names so run_trial's bookkeeping counts frames.
    """

    dataset: str
    normal_class: int
    class_name: str
    clip_length: int
    x_train: torch.Tensor  # (F_train, 3, H, W) uint8, training videos back to back
    train_starts: torch.Tensor  # (N_windows,) int64, first frame of every stride-1 training window
    x_eval: torch.Tensor  # (F_test, 3, H, W) uint8, all test videos back to back
    eval_labels: torch.Tensor  # (F_test,) int64, 1 = anomalous frame
    videos: tuple[str, ...]  # test video names
    offsets: tuple[int, ...]  # test video i is x_eval[offsets[i]:offsets[i + 1]]
    val_videos: tuple[int, ...]
    test_videos: tuple[int, ...]
    selection: str = "val"
    meta: dict = field(default_factory=dict)

    @property
    def frame_size(self) -> tuple[int, int]:
        return tuple(self.x_train.shape[-2:])

    def video_labels(self, i: int) -> torch.Tensor:
        return self.eval_labels[self.offsets[i] : self.offsets[i + 1]]

    def video_frames(self, i: int) -> torch.Tensor:
        return self.x_eval[self.offsets[i] : self.offsets[i + 1]]

    @property
    def y_val(self) -> torch.Tensor:
        return torch.cat([self.video_labels(i) for i in self.val_videos])

    @property
    def y_test(self) -> torch.Tensor:
        return torch.cat([self.video_labels(i) for i in self.test_videos])

    def clips(self, frames: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) float clips in [0, 1] starting at `starts` (indices into `frames`)."""
        idx = starts[:, None] + torch.arange(self.clip_length, device=starts.device)  # (B, T)
        return frames[idx].permute(0, 2, 1, 3, 4).float().div_(255)

    def to(self, device: torch.device | str) -> VideoSplit:
        """Move the frames to `device`; a process keeps one copy per device however many splits share them."""
        key = self.meta.get("cache_key")
        device = torch.device(device)
        if key is not None:
            x_train, x_eval = _on_device(key, device)
        else:
            x_train, x_eval = self.x_train.to(device), self.x_eval.to(device)
        return replace(
            self,
            x_train=x_train,
            x_eval=x_eval,
            train_starts=self.train_starts.to(device),
            eval_labels=self.eval_labels.to(device),
        )

    def summary(self) -> str:
        return (
            f"{self.dataset}: train {len(self.x_train)} frames ({len(self.train_starts)} windows of "
            f"{self.clip_length}), validation {len(self.val_videos)} videos / {len(self.y_val)} frames, test "
            f"{len(self.test_videos)} videos / {len(self.y_test)} frames ({int(self.y_test.sum())} anomalous), "
            f"{self.frame_size[0]}x{self.frame_size[1]}, selection on {self.selection}"
        )


@lru_cache(maxsize=2)
def _on_device(key: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    root, frame_size = key
    train, test = (_load_part(root, part, frame_size) for part in PARTS)
    if device.type == "cuda":
        need = train.frames.nbytes + test.frames.nbytes
        free = torch.cuda.mem_get_info(device)[0]
        if need > 0.8 * free:  # leave room for the model and its activations
            raise DatasetError(
                f"the frames need {need / 2**30:.1f} GiB on {device} but {free / 2**30:.1f} GiB are free: pass a "
                "smaller frame_size in the data options (e.g. 128x256)"
            )
    return train.frames.to(device), test.frames.to(device)


def load(
    normal_class: int = 0,
    data_root: str | None = None,
    selection: str = "val",
    clip_length: int = 16,
    frame_size: tuple[int, int] | list[int] | None = None,
    **_: object,
) -> VideoSplit:
    """The prepared dataset at `data_root` as a VideoSplit. `frame_size` (H, W) resizes at load time (None keeps
    the prepared size); the dataset is one class, so `normal_class` must be 0."""
    if normal_class != 0:
        raise DatasetError(f"ShanghaiTech has one class (0: all), got {normal_class}")
    if data_root is None:
        raise DatasetError(
            "ShanghaiTech needs --data-root: prepare it with `python -m engine.data.shanghaitech prepare --source RAW "
            "--dest DIR` and pass DIR"
        )
    if clip_length < 1:
        raise DatasetError(f"clip_length must be positive, got {clip_length}")
    root = str(Path(data_root).expanduser().resolve())
    size = tuple(int(s) for s in frame_size) if frame_size is not None else None
    train, test = _load_part(root, "training", size), _load_part(root, "testing", size)
    if tuple(train.frames.shape[-2:]) != tuple(test.frames.shape[-2:]):
        raise DatasetError(
            f"training frames are {tuple(train.frames.shape[-2:])} but test frames {tuple(test.frames.shape[-2:])}: "
            "prepare both parts at one size or pass frame_size"
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
    return VideoSplit(
        dataset="shanghaitech",
        normal_class=0,
        class_name=CLASSES[0],
        clip_length=clip_length,
        x_train=train.frames,
        train_starts=starts,
        x_eval=test.frames,
        eval_labels=labels,
        videos=test.names,
        offsets=test.offsets,
        val_videos=val_videos,
        test_videos=test_videos,
        selection=selection,
        meta={"cache_key": (root, size), "train_videos": train.names, "short_train_videos": skipped},
    )


if __name__ == "__main__":
    sys.exit(main())
