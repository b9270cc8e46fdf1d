"""CIFAR-10 loader: exact read-back of the official format, preprocessing, splits, checksums, safe unpickling, errors.

Every test writes its own tiny folder (tests/fixtures/cifar10.py: 5 x 50 training and 50 test images); nothing is
downloaded.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import urllib.error

import numpy as np
import pytest
import torch

from engine.data import DatasetError, cifar10, load_split
from engine.trial import TrialSpec, run_trial
from tests.fixtures.cifar10 import (
    CONSTANT_TRAIN_INDEX,
    CONSTANT_VALUE,
    GRADIENT_INDEX,
    TRAIN_FILES,
    gradient_pixel,
    write_cifar10,
)

N_PER_BATCH = 50  # 5 images per class per batch: 25 training images per class, 5 test images per class


@pytest.fixture(autouse=True)
def _fresh_cache():
    cifar10._decoded.cache_clear()
    yield
    cifar10._decoded.cache_clear()


@pytest.fixture
def folder(tmp_path):
    return write_cifar10(tmp_path, n_per_batch=N_PER_BATCH, seed=1)


def _raw(folder, name):
    """A fixture file through the stock unpickler (trusted: the test wrote it)."""
    with (folder / name).open("rb") as f:
        return pickle.load(f, encoding="latin1")


def _reference_preprocess(images: np.ndarray) -> np.ndarray:
    """METHOD.md 2.1 written independently in float64: /255, then (x - mean) / mean|x - mean| per image."""
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    centred = x - x.mean(axis=1, keepdims=True)
    return (centred / np.abs(centred).mean(axis=1, keepdims=True)).reshape(images.shape)


def _raw_train(folder):
    batches = [_raw(folder, name) for name in TRAIN_FILES]
    return np.concatenate([b["data"] for b in batches]), np.concatenate([b["labels"] for b in batches])


# ---------------------------------------------------------------- reading the format


def test_folder_is_read_back_exactly_in_chw_order(folder):
    x_train, y_train, x_test, y_test = cifar10._decoded(str(folder), True)
    raw_x, raw_y = _raw_train(folder)
    test = _raw(folder, "test_batch")
    assert x_train.shape == (5 * N_PER_BATCH, 3, 32, 32) and x_train.dtype == np.uint8
    assert x_test.shape == (N_PER_BATCH, 3, 32, 32)
    np.testing.assert_array_equal(x_train.reshape(len(x_train), -1), raw_x)
    np.testing.assert_array_equal(x_test.reshape(len(x_test), -1), test["data"])
    np.testing.assert_array_equal(y_train, raw_y)
    np.testing.assert_array_equal(y_test, test["labels"])
    # the gradient image: channel c, row y, column x sits at flat index c*1024 + y*32 + x of the raw row
    image = x_train[GRADIENT_INDEX]
    assert image[1, 2, 5] == gradient_pixel(1, 2, 5) == raw_x[GRADIENT_INDEX][1 * 1024 + 2 * 32 + 5]
    assert image[2, 31, 0] == gradient_pixel(2, 31, 0) and image[0, 0, 31] == gradient_pixel(0, 0, 31)
    c, y, x = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    np.testing.assert_array_equal(image, gradient_pixel(c, y, x))


@pytest.mark.parametrize("protocol", [2, 4, 5, "numpy 1.x names"])
def test_batches_written_by_other_picklers_read_the_same(folder, protocol):
    """Protocol 5 rebuilds arrays through _frombuffer; numpy 1.x (and the official files) name numpy.core."""
    expected = cifar10._decoded(str(folder), True)[0][:N_PER_BATCH].copy()
    cifar10._decoded.cache_clear()
    batch = _raw(folder, "data_batch_1")
    blob = pickle.dumps(batch, protocol=2 if protocol == "numpy 1.x names" else protocol)
    if protocol == "numpy 1.x names":
        assert b"numpy._core.multiarray\n_reconstruct" in blob
        blob = blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    (folder / "data_batch_1").write_bytes(blob)
    np.testing.assert_array_equal(cifar10._decoded(str(folder), True)[0][:N_PER_BATCH], expected)


def test_data_root_may_be_the_batches_folder_itself(folder):
    via_parent = cifar10.load(4, data_root=str(folder.parent), custom=True)
    direct = cifar10.load(4, data_root=str(folder), custom=True)
    assert via_parent.meta["folder"] == direct.meta["folder"] == str(folder.resolve())
    assert torch.equal(via_parent.x_train, direct.x_train)


def test_decoded_once_per_process_for_many_classes(folder, monkeypatch):
    reads = []
    original = cifar10._unpickle
    monkeypatch.setattr(cifar10, "_unpickle", lambda path: reads.append(path.name) or original(path))
    for normal_class in (0, 5, 9):
        load_split("cifar10", normal_class, data_root=str(folder), custom=True)
    assert sorted(reads) == sorted([*TRAIN_FILES, "test_batch", "batches.meta"])


# ---------------------------------------------------------------- splits and preprocessing


@pytest.mark.parametrize("normal_class", [0, 7])
def test_split_holds_the_normal_class_and_the_whole_test_set(folder, normal_class):
    split = load_split("cifar10", cifar10.CLASSES[normal_class], data_root=str(folder), custom=True, selection="test")
    raw_x, raw_y = _raw_train(folder)
    assert split.normal_class == normal_class and split.class_name == cifar10.CLASSES[normal_class]
    assert split.x_train.shape == (25, 3, 32, 32) and split.x_train.dtype == torch.float32
    # train: exactly the normal class's images, in file order, preprocessed per METHOD.md 2.1
    gcn = _reference_preprocess(raw_x[raw_y == normal_class].reshape(-1, 3, 32, 32))
    lo, hi = gcn.min(), gcn.max()
    np.testing.assert_allclose(split.x_train.numpy(), (gcn - lo) / (hi - lo), rtol=1e-4, atol=1e-5)
    # test: every test image, label 1 = anomaly
    test_labels = np.asarray(_raw(folder, "test_batch")["labels"])
    assert len(split.y_test) == N_PER_BATCH and split.y_val is split.y_test
    np.testing.assert_array_equal(split.y_test.numpy(), (test_labels != normal_class).astype(np.int64))
    assert int(split.y_test.sum()) == 45


def test_validation_split_is_carved_from_the_test_set(folder):
    split = cifar10.load(2, data_root=str(folder), custom=True, selection="val")
    assert (len(split.y_val), len(split.y_test)) == (10, 40)
    assert (int((split.y_val == 0).sum()), int((split.y_test == 0).sum())) == (1, 4)  # stratified: 5 normal in all
    whole = cifar10.load(2, data_root=str(folder), custom=True, selection="test")
    rows = {tuple(x.flatten()[:8].tolist()) for x in torch.cat([split.x_val, split.x_test])}
    assert rows == {tuple(x.flatten()[:8].tolist()) for x in whole.x_test}


def test_custom_set_gets_min_max_of_its_normal_training_images(folder):
    split = cifar10.load(6, data_root=str(folder), custom=True)
    raw_x, raw_y = _raw_train(folder)
    gcn = _reference_preprocess(raw_x[raw_y == 6])
    assert split.meta["constants"] == "computed" and split.meta["custom"] is True
    assert split.meta["min"] == pytest.approx(gcn.min(), rel=1e-5)
    assert split.meta["max"] == pytest.approx(gcn.max(), rel=1e-5)
    assert float(split.x_train.min()) == pytest.approx(0.0, abs=1e-6)
    assert float(split.x_train.max()) == pytest.approx(1.0, abs=1e-6)


def test_constant_images_become_zeros_not_nan(folder):
    normal_class = CONSTANT_TRAIN_INDEX % 10  # the constant training image's class
    split = cifar10.load(normal_class, data_root=str(folder), custom=True, selection="test")
    lo, hi = split.meta["min"], split.meta["max"]
    zero_scaled = torch.tensor((0.0 - lo) / (hi - lo))
    for x in (split.x_train, split.x_test):
        assert torch.isfinite(x).all()
    assert (_raw(folder, "data_batch_1")["data"][CONSTANT_TRAIN_INDEX] == CONSTANT_VALUE).all()
    assert (_raw(folder, "test_batch")["data"][-1] == CONSTANT_VALUE).all()
    # the first image of this class in file order is the constant one; the last test image is constant too
    assert torch.allclose(split.x_train[0], zero_scaled.expand(3, 32, 32))
    assert torch.allclose(split.x_test[-1], zero_scaled.expand(3, 32, 32))


# ---------------------------------------------------------------- official release: checksums and constants


def test_md5_check_refuses_the_fixture_unless_custom(folder):
    with pytest.raises(DatasetError, match="not the official CIFAR-10 release") as info:
        cifar10.load(0, data_root=str(folder))
    assert "--custom-dataset" in str(info.value) and "download" in str(info.value)
    assert cifar10.load(0, data_root=str(folder), custom=True).meta["constants"] == "computed"


def test_official_path_applies_the_published_constants(folder, monkeypatch):
    for normal_class, (lo, hi) in enumerate(cifar10.PUBLISHED_MIN_MAX):
        got = cifar10._scaling_constants(normal_class, torch.zeros(2, 3, 32, 32), custom=False)
        assert got == (lo, hi, "published")
    assert cifar10.PUBLISHED_MIN_MAX[3] == (-10.599172931391799, 11.093187820377565)  # METHOD.md 2.1, cat
    # the whole official path, with the fixture's checksums standing in for the release's
    md5s = {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in cifar10.OFFICIAL_MD5}
    monkeypatch.setattr(cifar10, "OFFICIAL_MD5", md5s)
    split = cifar10.load(8, data_root=str(folder))
    lo, hi = cifar10.PUBLISHED_MIN_MAX[8]
    assert (split.meta["min"], split.meta["max"], split.meta["constants"]) == (lo, hi, "published")
    raw_x, raw_y = _raw_train(folder)
    expected = (_reference_preprocess(raw_x[raw_y == 8].reshape(-1, 3, 32, 32)) - lo) / (hi - lo)
    np.testing.assert_allclose(split.x_train.numpy(), expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- unpickling runs no code


class _ShellPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class _OpenPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("payload", [_ShellPayload, _OpenPayload])
@pytest.mark.parametrize("where", ["data", "whole file"])
def test_pickle_that_runs_code_is_refused(folder, tmp_path, payload, where):
    marker = tmp_path / "pwned"
    evil = payload(marker)
    obj = {"data": evil, "labels": [0] * N_PER_BATCH} if where == "data" else evil
    blob = pickle.dumps(obj, protocol=2)
    (folder / "data_batch_2").write_bytes(blob)
    with pytest.raises(DatasetError, match="data_batch_2") as info:
        cifar10.load(0, data_root=str(folder), custom=True)
    assert "never contains" in str(info.value)
    assert not marker.exists()
    pickle.loads(blob)  # the same bytes through the stock unpickler do run the payload: the test above means it
    assert marker.exists()


# ---------------------------------------------------------------- a missing or malformed folder


def _drop(folder, name):
    (folder / name).unlink()


def _rewrite(folder, name, **changes):
    batch = _raw(folder, name)
    batch.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del batch[key]
    (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


CORRUPTIONS = {
    "missing file": (lambda f: _drop(f, "data_batch_3"), "lacks data_batch_3"),
    "missing meta": (lambda f: _drop(f, "batches.meta"), "lacks batches.meta"),
    "not a pickle": (lambda f: (f / "test_batch").write_bytes(b"GIF89a not a pickle"), "not a readable pickle"),
    "truncated": (lambda f: (f / "data_batch_1").write_bytes((f / "data_batch_1").read_bytes()[:500]), "readable"),
    "wrong shape": (lambda f: _rewrite(f, "data_batch_4", data=np.zeros((50, 100), np.uint8)), "uint8 Nx3072"),
    "wrong dtype": (lambda f: _rewrite(f, "data_batch_4", data=np.zeros((50, 3072), np.float32)), "uint8 Nx3072"),
    "no labels": (lambda f: _rewrite(f, "test_batch", labels=None), "lacks the 'data' or 'labels' key"),
    "label 10": (lambda f: _rewrite(f, "data_batch_5", labels=[10] * 50), "labels outside 0..9"),
    "short labels": (lambda f: _rewrite(f, "data_batch_5", labels=[1] * 49), "list of 50 ints"),
    "bad meta": (lambda f: _rewrite(f, "batches.meta", label_names=["a", "b"]), "label_names"),
    "not a dict": (lambda f: (f / "test_batch").write_bytes(pickle.dumps([1, 2], protocol=2)), "not a dict"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_malformed_folder_names_the_expected_layout(folder, corruption):
    corrupt, detail = CORRUPTIONS[corruption]
    corrupt(folder)
    with pytest.raises(DatasetError) as info:
        cifar10.load(0, data_root=str(folder.parent), custom=True)
    message = str(info.value)
    assert cifar10.LAYOUT in message and detail in message
    assert "\n" not in message


def test_missing_folder_names_the_expected_layout(tmp_path):
    with pytest.raises(DatasetError, match="does not exist") as info:
        cifar10.load(0, data_root=str(tmp_path / "nowhere"))
    assert cifar10.LAYOUT in str(info.value) and "--download" in str(info.value)
    with pytest.raises(DatasetError, match="data root") as info:
        load_split("cifar10", 0)
    assert cifar10.LAYOUT in str(info.value)


# ---------------------------------------------------------------- download


def test_download_failure_tells_where_to_put_the_files(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", offline)
    with pytest.raises(DatasetError, match="could not download CIFAR-10") as info:
        cifar10.load(0, data_root=str(tmp_path / "data"), download=True)
    message = str(info.value)
    assert "by hand" in message and str((tmp_path / "data").resolve()) in message and "cifar-10-batches-py" in message


def test_download_fetches_only_when_missing(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, root, filename=None, md5=None):  # stands in for the real archive
        calls.append((url, root, md5))
        write_cifar10(root, n_per_batch=N_PER_BATCH)

    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", fake_download)
    split = cifar10.load(1, data_root=str(tmp_path), custom=True, download=True)
    assert len(calls) == 1 and calls[0][0].endswith("cifar-10-python.tar.gz") and calls[0][2]
    assert len(split.x_train) == 25
    cifar10.load(1, data_root=str(tmp_path), custom=True, download=True)
    assert len(calls) == 1  # the folder is complete now: no second download


# ---------------------------------------------------------------- end to end


def test_run_trial_on_a_custom_cifar10_folder(folder):
    spec = TrialSpec(
        dataset="cifar10",
        normal_class=3,
        data_root=str(folder.parent),
        data_options=(("custom", True),),
        ae_epochs=1,
        oc_epochs=1,
        batch_size=32,
    )
    result = run_trial(spec)
    assert result.row["status"] == "ok", result.row["error"]
    assert result.row["model"] == "lenet_cifar10"
    assert (result.row["n_train"], result.row["n_val"], result.row["n_test"]) == (25, 10, 40)
    assert math.isfinite(result.row["test_auc"]) and 0.0 <= result.row["test_auc"] <= 1.0
