"""MVTec AD end to end: the loader on a generated release-format tree, augmentation, the texture patch grid and
max-over-patches score, the residual AE with selectors, bad inputs, and smoke runs through run_trial and the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn
from torchvision.transforms import InterpolationMode

from engine import training
from engine.data import DatasetError, load_split
from engine.data import mvtec as data
from engine.models import create_model
from engine.models.mvtec import encoder_parameters
from engine.objective import layer_scores
from engine.trial import TrialSpec, run_trial
from search_spaces import get_space
from tests.fixtures.mvtec import CONSTANT_RGB, DEFECTS, GRAY_VALUE, N_GOOD, N_TRAIN, write_mvtec

TINY_TEXTURE = (("image_size", 32), ("patch_size", 16))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_mvtec(tmp_path_factory.mktemp("mvtec"), categories=("leather", "bottle", "cable"))


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


# --- reading ------------------------------------------------------------------------------------------------------


def test_reads_labels_shapes_and_values(root):
    split = load_split("mvtec", "leather", data_root=str(root), selection="test", **dict(TINY_TEXTURE))
    n_test = N_GOOD + sum(DEFECTS["leather"].values())
    assert split.class_name == "leather" and split.normal_class == data.CLASSES.index("leather")
    assert split.x_train.shape == (N_TRAIN, 3, 32, 32) and split.x_train.dtype == torch.float32
    assert split.x_test.shape == (n_test, 3, 32, 32)
    files = split.meta["test_files"]
    expected = [0 if f.startswith("test/good/") else 1 for f in files]
    assert split.y_test.tolist() == expected and sum(expected) == sum(DEFECTS["leather"].values())
    assert split.x_train.min() >= -1 and split.x_train.max() <= 1
    constant = split.x_test[files.index("test/good/000.png")]
    want = torch.tensor(CONSTANT_RGB, dtype=torch.float32) / 127.5 - 1  # ToTensor then Normalize(0.5, 0.5)
    assert torch.allclose(constant, want.view(3, 1, 1).expand(3, 32, 32))
    gray = split.x_test[files.index("test/good/001.png")]  # a grayscale PNG reads as three equal channels
    assert torch.allclose(gray, torch.full_like(gray, GRAY_VALUE / 127.5 - 1))
    assert split.meta["texture"] and split.meta["rotation"] == (0.0, 45.0)


def test_validation_split_is_stratified_on_defect_type_and_disjoint(root):
    split = load_split("mvtec", "bottle", data_root=str(root), image_size=16)
    val, test = split.meta["val_files"], split.meta["test_files"]
    assert not set(val) & set(test) and len(val) + len(test) == N_GOOD + sum(DEFECTS["bottle"].values())
    assert {f.split("/")[1] for f in val} == {"good", *DEFECTS["bottle"]}  # every stratum is represented
    assert split.y_val.tolist() == [0 if f.startswith("test/good/") else 1 for f in val]
    again = load_split("mvtec", "bottle", data_root=str(root), image_size=16)
    assert again.meta["val_files"] == val  # fixed, seed-independent


def test_category_rules_follow_the_reference():
    assert data.CLASSES[:5] == ("carpet", "grid", "leather", "tile", "wood") and len(data.CLASSES) == 15
    assert data.category_rules("carpet") == data.CategoryRules(True, 512, (0.0, 45.0))
    assert data.category_rules("metal_nut") == data.CategoryRules(False, 128, (-45.0, 45.0))
    assert data.category_rules("toothbrush") == data.CategoryRules(False, 128, (0.0, 0.0))


# --- augmentation ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("angle", [0.0, 30.0, -45.0, 90.0])
def test_rotate_crop_matches_torchvision_pipeline(angle):
    """pad by S/4 (reflect) -> rotate (nearest) -> centre crop -> patch, as the reference's torchvision cache."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    full = TF.pad(x, [8], padding_mode="reflect")
    full = TF.center_crop(TF.rotate(full, angle, interpolation=InterpolationMode.NEAREST), [32, 32])
    corners = torch.tensor([[0, 0], [5, 11]])
    mine = data.rotate_crop(x, torch.full((2,), angle), corners, 16)
    assert torch.equal(mine[0], full[0, :, 0:16, 0:16])
    assert torch.equal(mine[1], full[1, :, 5:21, 11:27])


def test_train_transform_shapes_and_reproducibility(root):
    texture = load_split("mvtec", "leather", data_root=str(root), **dict(TINY_TEXTURE))
    x = texture.x_train
    a = texture.train_transform(x, torch.Generator().manual_seed(1))
    b = texture.train_transform(x, torch.Generator().manual_seed(1))
    c = texture.train_transform(x, torch.Generator().manual_seed(2))
    assert a.shape == (N_TRAIN, 3, 16, 16) and texture.input_shape == (3, 16, 16)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1  # no black (zero-padded) corners: values stay inside the image's own

    bottle = load_split("mvtec", "bottle", data_root=str(root), image_size=16)
    assert bottle.train_transform(bottle.x_train, None).shape == (N_TRAIN, 3, 16, 16)
    # objects without rotation (cable) train on the images as they are
    assert load_split("mvtec", "cable", data_root=str(root), image_size=16).train_transform is None


def test_augment_draws_the_same_in_chunks(monkeypatch):
    x = torch.rand(10, 3, 16, 16)
    whole = data.augment(x, torch.Generator().manual_seed(0), (-45.0, 45.0), 8)
    monkeypatch.setattr(data, "AUGMENT_CHUNK", 3)
    assert torch.equal(data.augment(x, torch.Generator().manual_seed(0), (-45.0, 45.0), 8), whole)


# --- texture patches and the max-over-patches score -------------------------------------------------------------------


def test_patch_grid_cuts_non_overlapping_patches_row_by_row():
    x = torch.zeros(2, 3, 64, 64)
    for r in range(8):
        for c in range(8):
            x[0, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8] = r * 8 + c
    x[1] = -x[0]
    x[0, 1] += 0.5  # channels stay apart
    patches = data.patch_grid(x, 8)
    assert patches.shape == (128, 3, 8, 8)
    for k in range(64):
        assert torch.all(patches[k, 0] == k) and torch.all(patches[k, 1] == k + 0.5)
        assert torch.all(patches[64 + k] == -k)


class _PatchMean(nn.Module):
    """A stand-in encoder whose one layer is the mean of each input patch: distances are then known by hand."""

    num_layers, layer_dims = 1, (1,)

    def features(self, x, layers):
        return [x.mean(dim=(1, 2, 3)).unsqueeze(1)]


def test_image_score_is_the_max_over_patches_of_the_layer_mean(root):
    split = load_split("mvtec", "leather", data_root=str(root), selection="test", image_size=64, patch_size=8)
    assert split.views_per_test_item == 64  # the 8 x 8 grid
    x = torch.zeros(3, 3, 64, 64)
    x[0, :, 8:16, 40:48] = 0.5  # image 0: one odd patch (row 1, column 5)
    x[1, :, 56:64, 0:8] = -0.25  # image 1: the bottom-left patch
    state = training.OneClassModel(layers=(0,), centroids=[torch.zeros(1)], radii=torch.tensor([0.1]))
    dist = training.test_distances(_PatchMean(), state, x, batch_size=256, split=split)  # (L, N, P) squared
    assert dist.shape == (1, 3, 64)
    assert dist[0, 0, 13] == pytest.approx(0.25) and dist[0, 1, 56] == pytest.approx(0.0625)
    terms = layer_scores(dist.flatten(1), state.radii, "soft", squared=False).view(dist.shape)
    image = terms.mean(dim=0).amax(dim=-1)  # what run_trial reports per image
    assert image.tolist() == pytest.approx([0.5 - 0.1, 0.25 - 0.1, 0.0 - 0.1])


# --- the model ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resae_mvtec", "resae_mvtec_plain"])
def test_feature_shapes_every_layer_and_backward(name):
    torch.manual_seed(0)
    model = create_model(name, input_size=16, code_size=24)
    enc = model.encoder
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    expected = (128,) * 7 if name == "resae_mvtec" else (32, 32, 64, 128, 256, 256, 24)
    assert enc.num_layers == 7 and enc.layer_dims == expected
    feats = enc.features(x, tuple(range(7)))
    assert [tuple(f.shape) for f in feats] == [(4, d) for d in expected]
    for k in range(7):  # one layer at a time, and in the order asked
        assert torch.allclose(enc.features(x, (k,))[0], feats[k], atol=1e-6)
    assert torch.allclose(enc.features(x, (6, 1))[1], feats[1], atol=1e-6)
    rec = model(x)
    assert rec.shape == x.shape
    loss = (rec - x).square().mean() + sum(f.square().mean() for f in feats)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_selectors_belong_to_the_encoder_and_stage_one_leaves_them_alone():
    model = create_model("resae_mvtec", input_size=16)
    selector_params = {id(p) for p in model.encoder.selectors.parameters()}
    assert selector_params <= {id(p) for p in model.encoder.parameters()}  # stage 2 optimises encoder.parameters()
    x = torch.rand(4, 3, 16, 16)
    (model(x) - x).square().mean().backward()
    assert all(p.grad is None for p in model.encoder.selectors.parameters())


def test_first_layer_is_the_raw_unpadded_conv():
    model = create_model("resae_mvtec_plain", input_size=16)
    x = torch.rand(2, 3, 16, 16)
    conv = model.encoder.stages[0]
    assert conv(x).shape == (2, 32, 14, 14)
    assert torch.allclose(model.encoder.features(x, (0,))[0], conv(x).mean(dim=(2, 3)))


def test_parameter_counts_match_the_reference_at_128():
    trunk, selectors = encoder_parameters(create_model("resae_mvtec", input_size=128, code_size=128))
    assert trunk == 18_037_216  # the reference's 18.04 M (METHOD.md 3.3)
    # the reference's 18.52 M minus its index-7 selector (Linear 128->256, BN 256, Linear 256->128 = 66,432)
    assert trunk + selectors + 66_432 == 18_520_037


def test_input_size_must_be_a_multiple_of_8():
    with pytest.raises(ValueError, match="multiple of 8"):
        create_model("resae_mvtec", input_size=20)


# --- bad input -------------------------------------------------------------------------------------------------------


def _copy_category(root: Path, tmp_path: Path, category: str = "bottle") -> Path:
    import shutil

    shutil.copytree(root / category, tmp_path / category)
    return tmp_path


def test_missing_category_folder(root, tmp_path):
    with pytest.raises(DatasetError, match=r"no folder carpet/ in .*carpet, grid, leather"):
        load_split("mvtec", "carpet", data_root=str(root))


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_split("mvtec", "bottle", data_root=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="--data-root"):
        load_split("mvtec", "bottle")


def test_missing_train_good(root, tmp_path):
    import shutil

    base = _copy_category(root, tmp_path)
    shutil.rmtree(base / "bottle" / "train" / "good")
    with pytest.raises(DatasetError, match=r"train/good is missing"):
        load_split("mvtec", "bottle", data_root=str(base), image_size=16)


def test_empty_folder(root, tmp_path):
    base = _copy_category(root, tmp_path)
    for f in (base / "bottle" / "test" / "contamination").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match=r"contamination holds no images"):
        load_split("mvtec", "bottle", data_root=str(base), image_size=16)


def test_no_defect_folder(root, tmp_path):
    import shutil

    base = _copy_category(root, tmp_path)
    for d in DEFECTS["bottle"]:
        shutil.rmtree(base / "bottle" / "test" / d)
    with pytest.raises(DatasetError, match="no defect folder"):
        load_split("mvtec", "bottle", data_root=str(base), image_size=16)


@pytest.mark.parametrize("content", [b"", b"not a png at all", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00"])
def test_corrupt_image_is_named(root, tmp_path, content):
    base = _copy_category(root, tmp_path)
    bad = base / "bottle" / "test" / "broken_large" / "002.png"
    bad.write_bytes(content)
    with pytest.raises(DatasetError, match=r"cannot read image .*broken_large/002\.png"):
        load_split("mvtec", "bottle", data_root=str(base), image_size=16)


def test_truncated_image_is_named(root, tmp_path):
    base = _copy_category(root, tmp_path)
    bad = base / "bottle" / "train" / "good" / "003.png"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    with pytest.raises(DatasetError, match=r"cannot read image .*train/good/003\.png"):
        load_split("mvtec", "bottle", data_root=str(base), image_size=16)


def test_unknown_category_lists_all_fifteen(root):
    with pytest.raises(DatasetError) as info:
        load_split("mvtec", "leathr", data_root=str(root))
    assert all(name in str(info.value) for name in data.CLASSES)


def test_bad_sizes(root):
    with pytest.raises(ValueError, match="multiple of patch_size"):
        load_split("mvtec", "leather", data_root=str(root), image_size=40, patch_size=16)
    with pytest.raises(ValueError, match="positive integer"):
        load_split("mvtec", "bottle", data_root=str(root), image_size=0)
    with pytest.raises(ValueError, match="within"):
        load_split("mvtec", "bottle", data_root=str(root), image_size=16, rotation_min=-90.0)


# --- search space and end to end ------------------------------------------------------------------------------------


def test_search_space_settings():
    space = get_space("mvtec")
    assert space.ABLATION_LAYER_SETS[0] == (6,) and space.ABLATION_LAYER_SETS[-1] == tuple(range(7))
    assert len(space.ABLATION_LAYER_SETS) == 7
    carpet = space.fixed("paper", data.CLASSES.index("carpet"))
    assert dict(carpet["data_options"]) == {"image_size": 512, "patch_size": 64, "rotation_min": 0.0,
                                            "rotation_max": 45.0}  # fmt: skip
    screw = space.fixed("paper", data.CLASSES.index("screw"))
    assert dict(screw["data_options"]) == {"image_size": 128, "rotation_min": -45.0, "rotation_max": 45.0}
    assert carpet["squared_scores"] is False and carpet["model"] == "resae_mvtec"
    for budget in ("smoke", "paper"):
        for c in range(15):
            TrialSpec(**space.fixed(budget, c), normal_class=c).validate()


@pytest.mark.parametrize("category", ["leather", "bottle"])
def test_smoke_run_end_to_end_writes_nothing_into_the_dataset(root, category):
    before = _tree_digest(root)
    c = data.CLASSES.index(category)
    fields = get_space("mvtec").fixed("smoke", c)
    fields.update(
        data_options=TINY_TEXTURE if category == "leather" else (("image_size", 16),),
        layers=(0, 3, 6), ae_lr=1e-3, oc_lr=1e-3, batch_size=4,
    )  # fmt: skip
    spec = TrialSpec(**fields, normal_class=c, data_root=str(root), boundary="soft", nu=0.1, device="cpu")
    row = run_trial(spec).row
    assert row["status"] == "ok", row["error"]
    assert np.isfinite(row["test_auc"]) and 0 <= row["test_auc"] <= 1 and np.isfinite(row["test_max_ba"])
    assert len(row["layer_test_auc"]) == 3 and row["squared_scores"] is False
    assert _tree_digest(root) == before


def test_asking_the_input_shape_leaves_the_global_rng_alone(root):
    split = load_split("mvtec", "leather", data_root=str(root), **dict(TINY_TEXTURE))
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    assert split.input_shape == (3, 16, 16)  # a texture trains on random patches: the shape runs the augmentation
    assert torch.equal(torch.random.get_rng_state(), before)  # the model's weights come from this RNG next


def test_layer_sets_sharing_one_stage1_are_exactly_their_lone_twins(root):
    """MVTec's stage 1 draws augmentations from the run's generator: stage 2 of each layer set continues from the
    generator state the shared stage 1 left, so each run is bit for bit the run trained alone (engine/packing.py)."""
    from engine.packing import run_packed

    c = data.CLASSES.index("leather")
    fields = get_space("mvtec").fixed("smoke", c)
    fields.update(data_options=TINY_TEXTURE, ae_lr=1e-3, oc_lr=1e-3, batch_size=4, ae_epochs=2, oc_epochs=2,
                  normal_class=c, data_root=str(root), device="cpu", seed=3)  # fmt: skip
    specs = [TrialSpec(**fields, layers=layers) for layers in ((0, 3, 6), (6,), (2, 4))]
    together = run_packed(specs)
    for spec, t in zip(specs, together, strict=True):
        alone = run_trial(spec)
        assert t.row["status"] == alone.row["status"] == "ok" and t.row["stage1_shared_by"] == 3
        assert t.row["test_auc"] == alone.row["test_auc"]
        np.testing.assert_array_equal(t.scores["score"], alone.scores["score"])
        np.testing.assert_array_equal(t.curves["loss"], alone.curves["loss"])
    assert len({t.row["test_auc"] for t in together}) > 1


def test_cli_smoke_run(root, capsys):
    from engine.train import main

    code = main(["--dataset", "mvtec", "--data-root", str(root), "--normal-class", "bottle", "--data-option",
                 "image_size=16", "--no-baselines", "--json", "--device", "cpu"])  # fmt: skip
    assert code == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["status"] == "ok" and row["class_name"] == "bottle" and np.isfinite(row["test_auc"])
    assert json.loads(row["data_options"])["image_size"] == 16
