"""CIFAR-10 as one-class splits, read from the official python-version folder (METHOD.md 2.1 and 7.1).

The module reads `<root>/cifar-10-batches-py/` itself instead of through torchvision's `CIFAR10`: that class
unpickles with the stock unpickler (which runs whatever code a pickle names) and insists on the official MD5s,
so it can read neither an untrusted folder safely nor a custom set in the same format. Here the pickles go through
an unpickler that admits only the globals the format contains (numpy array reconstruction), the official MD5s are
checked unless `custom=True`, and the decoded uint8 arrays are cached per process so that a worker running many
classes and seeds pays the read once.

Preprocessing (METHOD.md 2.1): ToTensor (uint8 / 255, CHW float32), per-image L1 global contrast normalisation,
then min-max scaling with the normal class's constants: the published table for the official release, the min
and max after GCN over the normal class's training images for a custom set (the published constants are exactly
that for the real data). Train = the normal class's training images; test = all test images, label 1 = anomaly;
the validation split is carved out of the test part, stratified on the original class labels.

    >>> split = load(3, data_root="~/data")            # doctest: +SKIP  (~/data/cifar-10-batches-py/ must exist)
    >>> split.x_train.shape                             # doctest: +SKIP
    torch.Size([5000, 3, 32, 32])
"""

from __future__ import annotations

import hashlib
import importlib
import pickle
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from engine.data.base import DatasetError, OneClassSplit, global_contrast_normalize_l1, min_max_split

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DEFAULT_MODEL = "lenet_cifar10"

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
FILES = (*TRAIN_FILES, TEST_FILE, META_FILE)
LAYOUT = f"<root>/{FOLDER}/{{data_batch_1..5,test_batch,batches.meta}}"
IMAGE_SHAPE = (3, 32, 32)  # each row of 'data' is 1024 R, then 1024 G, then 1024 B values, row-major 32x32

# METHOD.md 7.1: the official release's checksums (the same ones torchvision checks)
OFFICIAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}

# METHOD.md 2.1: (min, max) after L1 GCN over each class's 5000 training images, as published (Deep SVDD, MOCCA)
PUBLISHED_MIN_MAX = (
    (-28.94083453598571, 13.802961825439636),
    (-6.681770233365245, 9.158067708230273),
    (-34.924463588638204, 14.419298165027628),
    (-10.599172931391799, 11.093187820377565),
    (-11.945022995801637, 10.628045447867583),
    (-9.691969487694928, 8.948326776180823),
    (-9.174940012342555, 13.847014686472365),
    (-6.876682005899029, 12.282371383343161),
    (-15.603507135507172, 15.2464923804279),
    (-6.132882973622672, 8.046098172351265),
)


def _numpy_global(module: str, name: str) -> object:
    """numpy's own object for a global a pickle names; `numpy.core` (numpy 1.x pickles) resolves to `numpy._core`
    first, so reading old files does not import the deprecated package on numpy 2."""
    for prefix in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{prefix}.{module}"), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {module}.{name}")


# (module, name) a CIFAR batch may name -> how to resolve it. Array reconstruction (protocols 0-4 and 5), the dtype,
# and `_codecs.encode`, with which Python 3 writes bytes at protocol 2. Nothing here can run arbitrary code.
_ALLOWED_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_global("multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_global("multiarray", "_reconstruct"),
    ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_global("numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_global("numeric", "_frombuffer"),
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: importlib.import_module("_codecs").encode,
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that resolves only `_ALLOWED_GLOBALS` and refuses every other global (os.system, eval, ...)."""

    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # the official files were written by Python 2
        self.path = path

    def find_class(self, module: str, name: str) -> object:
        resolve = _ALLOWED_GLOBALS.get((module, name))
        if resolve is None:
            raise DatasetError(
                f"{self.path} refers to {module}.{name}, which a CIFAR-10 batch never contains, so it was not "
                "loaded: replace the file with one from the official release or your own set written with plain "
                "dicts, lists and numpy arrays"
            )
        return resolve()


def _malformed(what: str) -> DatasetError:
    return DatasetError(f"{what}: CIFAR-10 must be laid out as {LAYOUT} in the official python-version format")


def _unpickle(path: Path) -> dict:
    """One file as a dict with str keys; refused globals raise DatasetError naming the file."""
    try:
        with path.open("rb") as f:
            obj = _BatchUnpickler(f, path).load()
    except DatasetError:
        raise
    except Exception as exc:  # truncated or non-pickle bytes raise many types (UnpicklingError, EOFError, ...)
        raise _malformed(f"{path} is not a readable pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise _malformed(f"{path} holds a {type(obj).__name__}, not a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One data batch: images (N, 3, 32, 32) uint8 and labels (N,) int64, validated."""
    batch = _unpickle(path)
    if "data" not in batch or "labels" not in batch:
        raise _malformed(f"{path} lacks the 'data' or 'labels' key (it has {sorted(map(str, batch))})")
    data, labels = batch["data"], batch["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise _malformed(
            f"{path} 'data' is {type(data).__name__} {getattr(data, 'dtype', '')} {shape}, not uint8 Nx3072"
        )
    try:
        labels = np.asarray(labels)
    except Exception as exc:
        raise _malformed(f"{path} 'labels' is not a list of ints") from exc
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise _malformed(f"{path} 'labels' must be a list of {len(data)} ints, got shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise _malformed(f"{path} has labels outside 0..{len(CLASSES) - 1}")
    return data.reshape(-1, *IMAGE_SHAPE), labels.astype(np.int64)


def _check_meta(path: Path) -> None:
    names = _unpickle(path).get("label_names")
    if not isinstance(names, list | tuple) or len(names) != len(CLASSES):
        raise _malformed(f"{path} must hold 'label_names' with {len(CLASSES)} class names")


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_official(folder: Path) -> None:
    for name, expected in OFFICIAL_MD5.items():
        if _md5(folder / name) != expected:
            raise DatasetError(
                f"{folder / name} is not the official CIFAR-10 release (MD5 mismatch): pass custom=True "
                "(CLI: --custom-dataset) if it is your own set in the same format, or delete the folder and "
                "download it again"
            )


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES)


def _download(root: Path) -> None:
    """Fetch and extract the official archive into `root` through torchvision (checks the archive's MD5).

    torchvision's download helper is called directly rather than `CIFAR10(root, download=True)`: that class also
    unpickles every batch with the unrestricted unpickler, and this module reads the folder itself anyway.
    """
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
    except Exception as exc:  # no network, proxy refusal, truncated archive: the user fixes all of them the same way
        raise DatasetError(
            f"could not download CIFAR-10 ({type(exc).__name__}: {exc}): download {CIFAR10.url} by hand and "
            f"extract it into {root} so that it holds {FOLDER}/ with data_batch_1..5, test_batch and batches.meta"
        ) from exc


def find_folder(data_root: str | Path | None, download: bool = False) -> Path:
    """The `cifar-10-batches-py` folder under `data_root` (or `data_root` itself), downloading it if asked."""
    if data_root is None:
        raise DatasetError(f"CIFAR-10 needs a data root: pass data_root (CLI: --data-root DIR) laid out as {LAYOUT}")
    root = Path(data_root).expanduser().resolve()
    candidates = (root / FOLDER, root)
    for folder in candidates:
        if _is_complete(folder):
            return folder
    if download:
        target = root.parent if root.name == FOLDER else root  # the archive extracts into <target>/FOLDER
        target.mkdir(parents=True, exist_ok=True)
        _download(target)
        if _is_complete(target / FOLDER):
            return target / FOLDER
    # name the folder the user most likely meant: the subfolder if present, else data_root if it holds batch files
    folder = root / FOLDER
    if not folder.is_dir() and any((root / name).is_file() for name in FILES):
        folder = root
    missing = [name for name in FILES if not (folder / name).is_file()]
    what = f"{folder} lacks {', '.join(missing)}" if folder.is_dir() else f"{folder} does not exist"
    raise DatasetError(
        f"{what}: CIFAR-10 must be laid out as {LAYOUT} (pass download=True, CLI --download, to fetch it)"
    )


@lru_cache(maxsize=2)
def _decoded(folder: str, custom: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train (N, 3, 32, 32) uint8, y_train (N,), x_test, y_test) of one folder, read-only, decoded once per process.

    Keyed by the resolved folder and the custom flag, so an official read is never served from an unchecked one.
    The official release is 60000 x 3072 uint8 = 184 MB; floats are made only for the subsets a split needs.
    """
    path = Path(folder)
    if not custom:
        _verify_official(path)  # before unpickling: an official file cannot carry a payload
    _check_meta(path / META_FILE)
    train = [_read_batch(path / name) for name in TRAIN_FILES]
    x_test, y_test = _read_batch(path / TEST_FILE)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    arrays = (x_train, y_train, x_test, y_test)
    for array in arrays:
        array.setflags(write=False)  # shared by every split of this process
    return arrays


def _to_gcn_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 (N, 3, 32, 32) -> ToTensor's float32 in [0, 1] -> per-image L1 GCN; same shape."""
    x = torch.from_numpy(np.array(x, copy=True)).float().div_(255.0)  # copy: the cached array is read-only
    return global_contrast_normalize_l1(x)


def _scaling_constants(normal_class: int, x_normal: torch.Tensor, custom: bool) -> tuple[float, float, str]:
    """(min, max, source) for min-max scaling: the published table for the official release, otherwise the
    min and max of the normal class's GCN'd training images (which is how the published values were made)."""
    if not custom:
        lo, hi = PUBLISHED_MIN_MAX[normal_class]
        return lo, hi, "published"
    if len(x_normal) == 0:
        raise DatasetError(f"the custom CIFAR-10 set has no training images of class {normal_class}: choose another")
    lo, hi = float(x_normal.min()), float(x_normal.max())
    if not hi > lo:
        raise DatasetError(f"class {normal_class}'s training images are all constant after GCN: choose another class")
    return lo, hi, "computed"


def load(
    normal_class: int,
    data_root: str | None = None,
    selection: str = "val",
    custom: bool = False,
    download: bool = False,
    **_: object,
) -> OneClassSplit:
    """The one-class split of CIFAR-10 with `normal_class` as the normal data (METHOD.md 2.1).

    `custom=True` reads a set of your own in the official format: no MD5 check, min-max constants computed from
    the data. `download=True` fetches the official release into `data_root` when it is missing.
    """
    custom = bool(custom)
    folder = find_folder(data_root, download=bool(download))
    x_tr, y_tr, x_te, y_te = _decoded(str(folder), custom)
    x_normal = _to_gcn_tensor(x_tr[y_tr == normal_class])  # (N_c, 3, 32, 32)
    lo, hi, source = _scaling_constants(normal_class, x_normal, custom)
    meta = {"constants": source, "custom": custom, "folder": str(folder)}
    x_test = _to_gcn_tensor(x_te)
    return min_max_split("cifar10", CLASSES, normal_class, x_normal, x_test, y_te, lo, hi, selection, meta)
