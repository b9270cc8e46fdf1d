"""MVTec AD (METHOD.md 3.1-3.2, 7.2): the 15 categories as one-class splits, augmented on the fly.

On-disk layout (the unpacked official release; `data_root` is the folder that holds the category folders):

    <root>/<category>/train/good/*.png         normal training images
    <root>/<category>/test/good/*.png          normal test images    -> label 0
    <root>/<category>/test/<defect>/*.png      anomalous test images -> label 1 (every folder but `good`)
    <root>/<category>/ground_truth/...         pixel masks, never read (MOCCA scores whole images)

Category rules (METHOD.md 3.1, from the reference code):

    textures  carpet grid leather tile wood               resize 512, train on random 64x64 patches, rotation 0..45
    objects   bottle hazelnut metal_nut screw              resize 128, whole image, rotation -45..45
    objects   cable capsule pill toothbrush transistor zipper  resize 128, whole image, no rotation

Every image is converted to RGB (grid, screw and zipper are grayscale), resized to image_size x image_size
(bilinear, as torchvision's Resize does on the square MVTec images) and scaled to [-1, 1]. Decoded, resized images
are cached per process (`_read_category`, uint8), so a worker pays the PNG decoding once for many runs.

Training augmentation is the reference's offline recipe (reflect-pad by size/4, random rotation, centre crop, for
textures a random patch) done on the fly, batched, on the device that holds the images (`augment`), with the run's
torch.Generator, so no 10 GB cache is written anywhere: this module never writes into the dataset folder. The
rotation, centre crop and patch crop are one `grid_sample` that computes only the output pixels; nearest
interpolation, as torchvision's RandomRotation. Textures are tested on the grid of non-overlapping patches
(8 x 8 of 64 px on 512 px; generally (image_size / patch_size)^2, `patch_grid`); `engine.trial` scores an image
with the max over its patches of the mean over layers.

Settings (`TrialSpec.data_options`): image_size, patch_size (textures only; objects ignore it), rotation_min and
rotation_max in degrees; the defaults are the rules above. Small values let tests run on tiny images.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine.data.base import DatasetError, OneClassSplit, carve_validation

TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
OBJECTS = ("bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper")
CLASSES = TEXTURES + OBJECTS  # the order of the paper's Tables III-IV
DEFAULT_MODEL = "resae_mvtec"
ROTATED_OBJECTS = ("bottle", "hazelnut", "metal_nut", "screw")
TEXTURE_SIZE, OBJECT_SIZE, PATCH_SIZE = 512, 128, 64
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")  # as ImageFolder
AUGMENT_CHUNK = 64  # images padded at once: bounds the padded copy's memory when a whole set is augmented


@dataclass(frozen=True)
class CategoryRules:
    texture: bool
    image_size: int
    rotation: tuple[float, float]  # degrees, counter-clockwise, drawn uniformly per training sample


def category_rules(category: str) -> CategoryRules:
    """The reference code's per-category settings (METHOD.md 3.1)."""
    if category in TEXTURES:
        return CategoryRules(texture=True, image_size=TEXTURE_SIZE, rotation=(0.0, 45.0))
    assert category in OBJECTS, category
    rotation = (-45.0, 45.0) if category in ROTATED_OBJECTS else (0.0, 0.0)
    return CategoryRules(texture=False, image_size=OBJECT_SIZE, rotation=rotation)


# --- reading -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Category:
    train: torch.Tensor  # (N_train, 3, S, S) uint8
    test: torch.Tensor  # (N_test, 3, S, S) uint8
    labels: np.ndarray  # (N_test,) int64, 1 = anomaly
    defects: np.ndarray  # (N_test,) str, "good" or the defect folder: the validation split's strata
    test_files: tuple[str, ...]  # relative to the category folder


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"{folder} is missing: an MVTec AD category needs train/good, test/good and defect folders")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not files:
        raise DatasetError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}): restore it from the release")
    return files


def _decode(path: Path, size: int) -> np.ndarray:
    """(S, S, 3) uint8: RGB (grayscale and palette images too), resized bilinearly."""
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"cannot read image {path} ({exc}): replace it with the file from the release") from exc


def _decode_all(paths: list[Path], size: int) -> torch.Tensor:
    """(N, 3, S, S) uint8; PIL releases the GIL while decoding, so threads overlap the PNG work."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(partial(_decode, size=size), paths))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@lru_cache(maxsize=4)
def _read_category(root: str, category: str, image_size: int) -> _Category:
    """Decode and resize one category once per process (keyed by the resolved root, category and size)."""
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"MVTec AD folder {base} does not exist: pass --data-root, the folder holding carpet/ ...")
    folder = base / category
    if not folder.is_dir():
        raise DatasetError(
            f"no folder {category}/ in {base}: pass --data-root pointing at the unpacked MVTec AD release, whose "
            f"category folders are {', '.join(CLASSES)}"
        )
    train_files = _images_in(folder / "train" / "good")
    test_dir = folder / "test"
    good = _images_in(test_dir / "good")
    defect_dirs = (
        sorted(p for p in test_dir.iterdir() if p.is_dir() and p.name != "good" and not p.name.startswith("."))
        if test_dir.is_dir()
        else []
    )
    if not defect_dirs:
        raise DatasetError(f"{test_dir} has no defect folder besides good/: restore the anomalous test images")
    test_files = list(good)
    defects = ["good"] * len(good)
    for d in defect_dirs:
        files = _images_in(d)
        test_files += files
        defects += [d.name] * len(files)
    defects_arr = np.array(defects)
    return _Category(
        train=_decode_all(train_files, image_size),
        test=_decode_all(test_files, image_size),
        labels=(defects_arr != "good").astype(np.int64),
        defects=defects_arr,
        test_files=tuple(str(p.relative_to(folder)) for p in test_files),
    )


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]: ToTensor then Normalize(0.5, 0.5), as the reference."""
    return x.float() / 127.5 - 1.0


# --- augmentation and test patches -------------------------------------------------------------------------------


def rotate_crop(x: torch.Tensor, angles: torch.Tensor, corners: torch.Tensor, out_size: int) -> torch.Tensor:
    """Deterministic core of `augment`: (B, C, S, S) -> (B, C, out, out).

    Reflect-pad by S//4, rotate image b by angles[b] degrees counter-clockwise about its centre, centre-crop S,
    then crop out x out with its top-left corner at corners[b] = (row, col) inside that S x S crop. The three
    steps are one affine map from output pixels to padded-input pixels, so only output pixels are computed.
    """
    b, _, s, _ = x.shape
    pad = s // 4
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")  # (B, C, S + 2 pad, S + 2 pad)
    half = (s + 2 * pad) / 2  # padded half-side: pixel offsets from the centre / half = normalised coordinates
    rad = torch.deg2rad(angles.to(x.device, torch.float32))
    cos, sin = torch.cos(rad), torch.sin(rad)
    # Output pixel at offset (u, v) (x = column, y = row, from the window centre) sits at offset
    # (u, v) + shift in the rotated image, and comes from offset R (u + shift) in the unrotated padded image;
    # R = [[cos, -sin], [sin, cos]] gives a counter-clockwise turn on screen (y points down), as torchvision.
    rot = torch.stack([torch.stack([cos, -sin], dim=1), torch.stack([sin, cos], dim=1)], dim=1)  # (B, 2, 2)
    shift = corners.to(x.device, torch.float32).flip(1) + out_size / 2 - s / 2  # (B, 2) as (x, y)
    theta = torch.cat([rot * (out_size / 2 / half), (rot @ shift.unsqueeze(2)) / half], dim=2)  # (B, 2, 3)
    grid = F.affine_grid(theta, [b, x.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(padded, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def augment(
    x: torch.Tensor,
    generator: torch.Generator | None,
    rotation: tuple[float, float],
    patch_size: int | None,
) -> torch.Tensor:
    """A training batch (B, C, S, S) -> (B, C, P, P) (P = patch_size, or S for whole images), randomly rotated
    within `rotation` and, for patches, randomly placed; draws from `generator` (None: the global RNG)."""
    b, s = len(x), x.shape[-1]
    out = patch_size or s
    where = generator.device if generator is not None else torch.device("cpu")
    lo, hi = rotation
    angles = lo + (hi - lo) * torch.rand(b, generator=generator, device=where)
    corners = torch.randint(0, s - out + 1, (b, 2), generator=generator, device=where)
    chunks = zip(x.split(AUGMENT_CHUNK), angles.split(AUGMENT_CHUNK), corners.split(AUGMENT_CHUNK), strict=True)
    parts = [rotate_crop(xs, a, c, out) for xs, a, c in chunks]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def patch_grid(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, C, S, S) -> (N * G * G, C, P, P), G = S // P: each image's non-overlapping patches, row by row."""
    n, c, s, _ = x.shape
    g, p = s // patch_size, patch_size
    tiles = x.unfold(2, p, p).unfold(3, p, p)  # (N, C, G, G, P, P): grid row, grid column, patch row, patch column
    return tiles.permute(0, 2, 3, 1, 4, 5).reshape(n * g * g, c, p, p)


# --- the split ---------------------------------------------------------------------------------------------------


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"MVTec option {name} must be a positive integer, got {value!r}")
    return value


def load(
    normal_class: int,
    data_root: str | None = None,
    selection: str = "val",
    image_size: int | None = None,
    patch_size: int | None = None,
    rotation_min: float | None = None,
    rotation_max: float | None = None,
    **_: object,
) -> OneClassSplit:
    """The one-class split of category `CLASSES[normal_class]` (settings: see the module docstring)."""
    if data_root is None:
        raise DatasetError("MVTec AD needs --data-root: the unpacked release, the folder holding carpet/, bottle/ ...")
    category = CLASSES[normal_class]
    rules = category_rules(category)
    size = _positive_int("image_size", image_size if image_size is not None else rules.image_size)
    patch = None
    if rules.texture:
        patch = _positive_int("patch_size", patch_size if patch_size is not None else PATCH_SIZE)
        if size % patch:
            raise ValueError(f"image_size {size} must be a multiple of patch_size {patch} for the test patch grid")
    rotation = (
        float(rotation_min if rotation_min is not None else rules.rotation[0]),
        float(rotation_max if rotation_max is not None else rules.rotation[1]),
    )
    if rotation[0] > rotation[1] or max(abs(r) for r in rotation) > 45:
        raise ValueError(f"rotation range {rotation} must be ordered and within [-45, 45] (the padding's limit)")

    data = _read_category(str(Path(data_root).expanduser().resolve()), category, size)
    labels = torch.from_numpy(data.labels)
    idx_val, y_val, idx_test, y_test = carve_validation(torch.arange(len(labels)), labels, data.defects, selection)
    x_test_all = to_unit_range(data.test)  # (N_test, 3, S, S) in [-1, 1]

    whole_static = not rules.texture and rotation == (0.0, 0.0)  # pad, rotate by 0, crop = identity: skip
    train_transform = None if whole_static else partial(augment, rotation=rotation, patch_size=patch)
    cut = rules.texture and patch < size
    return OneClassSplit(
        dataset="mvtec",
        normal_class=normal_class,
        class_name=category,
        x_train=to_unit_range(data.train),
        x_val=x_test_all[idx_val],
        y_val=y_val,
        x_test=x_test_all[idx_test],
        y_test=y_test,
        selection=selection,
        train_transform=train_transform,
        test_view=partial(patch_grid, patch_size=patch) if cut else None,
        views_per_test_item=(size // patch) ** 2 if cut else 1,
        meta={
            "category": category,
            "texture": rules.texture,
            "image_size": size,
            "patch_size": patch,
            "rotation": rotation,
            "val_files": [data.test_files[i] for i in idx_val.tolist()],
            "test_files": [data.test_files[i] for i in idx_test.tolist()],
        },
    )
