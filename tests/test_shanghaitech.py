"""ShanghaiTech end to end on a generated raw fixture: preparation, loading, the causal model, training, scoring."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("cv2")

from engine.data import load_split, shanghaitech  # noqa: E402
from engine.data.base import DatasetError  # noqa: E402
from engine.data.shanghaitech import (  # noqa: E402
    FRAMES_DIR,
    main,
    prepare,
    sliding_clips,
    validation_videos,
    window_starts,
)
from engine.models import create_model  # noqa: E402
from engine.trial import TrialSpec, run_key, run_trial  # noqa: E402
from engine.video import frame_metrics, frame_scores, normalise_per_video  # noqa: E402
from tests.fixtures.shanghaitech import write_corrupt_video, write_shanghaitech  # noqa: E402

SIZE = (32, 64)  # prepared frame size: the smallest the model takes (5 spatial stride-2 stages)
CLIP = 8
SMOKE_OPTIONS = (("clip_length", CLIP), ("clips_per_epoch", 4), ("lstm_hidden", 8), ("score_batch", 32))


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("shanghaitech_raw")
    return root, write_shanghaitech(root)


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
    dest = tmp_path_factory.mktemp("shanghaitech_prepared")
    report = prepare(raw[0], dest, frame_size=SIZE, workers=2)
    assert not report.failed and len(report.done) == 5
    return dest


def test_prepare_writes_the_training_layout_with_background_removed(raw, prepared):
    import cv2

    info = raw[1]
    for part, names in (("training", info["train"]), ("testing", info["test"])):
        for name in names:
            frames = sorted((prepared / part / FRAMES_DIR / name).glob("*.jpg"))
            expected = 24 if part == "training" else len(info["masks"][name])
            assert len(frames) == expected
            image = cv2.imread(str(frames[12]))
            assert image.shape == (*SIZE, 3)
            # the static scene (grey ~90) is gone, the moving pedestrian (white) stays
            assert np.median(image) == 0 and image.max() > 200
    for name, mask in info["masks"].items():
        np.testing.assert_array_equal(np.load(prepared / "testing" / "test_frame_mask" / f"{name}.npy"), mask)
    # the anomalous "vehicle" is red and foreground in an anomalous test frame
    name = info["test"][0]
    t = int(np.argmax(info["masks"][name]))
    frame = cv2.imread(str(prepared / "testing" / FRAMES_DIR / name / f"{t + 2:06d}.jpg")).astype(int)
    assert ((frame[..., 2] > 150) & (frame[..., 1] < 80)).sum() > 10


def test_prepare_rerun_skips_finished_videos_and_replaces_partial_ones(raw, tmp_path, capsys):
    dest = tmp_path / "prep"
    shutil.copytree(raw[0] / "testing", tmp_path / "raw" / "testing")
    assert main(["prepare", "--source", str(tmp_path / "raw"), "--dest", str(dest), "--frame-size", "32x64"]) == 0
    folder = dest / "testing" / FRAMES_DIR
    first = {p: p.stat().st_mtime_ns for p in folder.rglob("*.jpg")}
    # a killed run leaves a dot-folder and no finished folder for the video it was writing
    victim = sorted(folder.iterdir())[0]
    shutil.move(victim, folder / f".{victim.name}.partial")
    (folder / f".{victim.name}.partial" / "000000.jpg").unlink()
    capsys.readouterr()
    assert main(["prepare", "--source", str(tmp_path / "raw"), "--dest", str(dest), "--frame-size", "32x64"]) == 0
    out = capsys.readouterr().out
    assert "2 already prepared, 1 to do" in out
    assert not (folder / f".{victim.name}.partial").exists()
    assert (victim / "000000.jpg").is_file()
    untouched = {p: t for p, t in first.items() if victim not in p.parents}
    assert all(p.stat().st_mtime_ns == t for p, t in untouched.items())


def test_prepare_names_and_skips_a_corrupt_video(raw, tmp_path, capsys):
    source = tmp_path / "raw"
    shutil.copytree(raw[0] / "training", source / "training")
    write_corrupt_video(source, "01_999")
    code = main(["prepare", "--source", str(source), "--dest", str(tmp_path / "prep"), "--frame-size", "32x64"])
    captured = capsys.readouterr()
    assert code == 1
    assert "training/01_999" in captured.out + captured.err
    done = sorted(p.name for p in (tmp_path / "prep" / "training" / FRAMES_DIR).iterdir())
    assert done == raw[1]["train"]


def test_prepare_does_not_hang_after_the_caller_used_opencv_threads(raw, tmp_path):
    # a forked worker inherits the locks of the caller's OpenCV thread pool but not its threads
    shutil.copytree(raw[0] / "testing", tmp_path / "raw" / "testing")
    script = (
        "import sys, numpy as np, cv2\n"
        "from engine.data.shanghaitech import prepare\n"
        "if __name__ == '__main__':\n"
        "    cv2.setNumThreads(4)\n"
        "    cv2.resize(np.zeros((480, 856, 3), np.uint8), (512, 256))  # the pool's threads start\n"
        "    sys.exit(len(prepare(sys.argv[1], sys.argv[2], frame_size=(32, 64), workers=2).done) != 3)\n"
    )
    args = [sys.executable, "-c", script, str(tmp_path / "raw"), str(tmp_path / "prep")]
    child = subprocess.Popen(args, cwd=Path(__file__).parents[1], start_new_session=True)
    try:
        assert child.wait(timeout=120) == 0
    finally:  # a hung run leaves forked workers: end its whole process group
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def test_load_gives_windows_inside_videos_and_a_fixed_validation_split(prepared, raw):
    split = load_split("shanghaitech", 0, data_root=str(prepared), clip_length=CLIP)
    assert split.meta["frames"] == split.x_train.kind == "resident"  # tiny: under the default decoded budget
    assert split.x_train.frames.dtype == torch.uint8 and tuple(split.x_train.frames.shape) == (48, 3, *SIZE)
    # windows never straddle the two 24-frame training videos
    assert split.train_starts.tolist() == list(range(0, 17)) + list(range(24, 41))
    clips = split.clips(split.x_train, split.train_starts[:2])
    assert clips.shape == (2, 3, CLIP, *SIZE) and 0 <= clips.min() and clips.max() <= 1 and clips.max() > 0.5
    assert split.videos == tuple(raw[1]["test"])
    assert set(split.val_videos).isdisjoint(split.test_videos)
    assert set(split.val_videos) | set(split.test_videos) == {0, 1, 2}
    np.testing.assert_array_equal(split.video_labels(1).numpy(), raw[1]["masks"][split.videos[1]])
    assert validation_videos(3, "val") == (split.val_videos, split.test_videos)  # no seed anywhere
    everything = load_split("shanghaitech", 0, data_root=str(prepared), clip_length=CLIP, selection="test")
    assert everything.val_videos == everything.test_videos == (0, 1, 2)
    resized = load_split("shanghaitech", 0, data_root=str(prepared), clip_length=CLIP, frame_size=(32, 32))
    assert resized.x_eval.frame_size == (32, 32) and resized.x_eval.read(0, 1).shape == (1, 3, 32, 32)


def test_window_starts_skips_videos_shorter_than_a_clip():
    assert window_starts((0, 3, 10), 4).tolist() == [3, 4, 5, 6]


def test_a_mask_of_the_wrong_length_is_an_error_naming_the_video(prepared, tmp_path):
    root = tmp_path / "prep"
    shutil.copytree(prepared, root)
    name = sorted((root / "testing" / "test_frame_mask").iterdir())[1]
    np.save(name, np.load(name)[:-3])
    with pytest.raises(DatasetError, match=name.stem):
        load_split("shanghaitech", 0, data_root=str(root), clip_length=CLIP)


def test_missing_data_root_points_to_prepare(raw):
    with pytest.raises(DatasetError, match="prepare"):
        load_split("shanghaitech", 0, data_root=str(raw[0]))


def test_frame_score_is_the_mean_over_the_clips_containing_the_frame():
    # 4 clips of 3 frames over 6 frames: frame f lies in clips max(0, f-2)..min(f, 3)
    got = frame_scores(np.array([1.0, 2.0, 3.0, 4.0]), 3)
    np.testing.assert_allclose(got, [1.0, 1.5, 2.0, 3.0, 3.5, 4.0])
    layers = frame_scores(np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 6.0, 0.0]]), 3)
    np.testing.assert_allclose(layers[1], [0.0, 0.0, 2.0, 2.0, 3.0, 0.0])
    np.testing.assert_allclose(frame_scores(np.array([5.0]), 4), [5.0] * 4)


def test_per_video_normalisation_and_the_final_score():
    np.testing.assert_allclose(normalise_per_video(np.array([2.0, 4.0, 6.0, 3.0])), [0.0, 0.5, 1.0, 0.25])
    np.testing.assert_array_equal(normalise_per_video(np.array([7.0, 7.0, 7.0])), [0.0, 0.0, 0.0])  # no NaN
    # two videos on different scales: after per-video normalisation both peaks are 1, so the micro AUC is perfect
    table = pd.DataFrame({"video": ["a"] * 4 + ["b"] * 4, "label": [0, 0, 1, 0, 0, 1, 1, 0]})
    raw_oc = [np.array([1.0, 2.0, 9.0, 1.0]), np.array([100.0, 300.0, 300.0, 200.0])]
    table["score_oc"] = np.concatenate([normalise_per_video(s) for s in raw_oc])
    table["score_rec"] = 0.0
    table["score"] = table["score_oc"] + table["score_rec"]
    table["layer_0"] = table["score_oc"]
    metrics = frame_metrics(table, (0,))
    assert metrics["auc"] == 1.0 and metrics["video_auc"] == {"a": 1.0, "b": 1.0}
    assert np.concatenate(raw_oc)[[2, 5, 6]].min() < np.concatenate(raw_oc)[[0, 1, 3, 4, 7]].max()  # raw would not


def test_video_model_is_causal_and_reconstructs_the_clip_shape():
    torch.manual_seed(0)
    model = create_model("causal3d_lstm", clip_length=CLIP, frame_size=SIZE, code_size=16, lstm_hidden=8).eval()
    x = torch.rand(2, 3, CLIP, *SIZE)
    recon, feats = model.reconstruct(x, (0, 3, 6))
    assert recon.shape == x.shape and [f.shape for f in feats] == [(2, 8)] * 3
    changed = x.clone()
    changed[:, :, 4] = torch.rand_like(changed[:, :, 4])  # only frame 4 differs
    h1, h2 = x, changed
    for block, stride in zip(model.encoder.blocks, (1, 1, 2, 2, 4), strict=True):
        h1, h2 = block(h1), block(h2)
        # output step j of a block with cumulative temporal stride s has seen input frames up to j * s only
        first = 4 // stride
        torch.testing.assert_close(h1[:, :, :first], h2[:, :, :first])
        assert not torch.allclose(h1[:, :, first], h2[:, :, first])


def test_selectors_are_an_option_with_a_hidden_size_setting():
    def count(m):
        return sum(p.numel() for p in m.parameters())

    kw = dict(clip_length=CLIP, frame_size=SIZE, code_size=16, lstm_hidden=8)
    plain = create_model("causal3d_lstm", **kw)
    small, big = (create_model("causal3d_lstm", selectors=True, selector_hidden=h, **kw) for h in (4, 32))
    assert plain.encoder.selectors is None and count(plain) < count(small) < count(big)
    feats = big.encoder.features(torch.rand(2, 3, CLIP, *SIZE), tuple(range(7)))
    assert all(f.shape == (2, 8) for f in feats)


def test_training_smoke_run_through_run_trial(prepared):
    spec = TrialSpec(
        dataset="shanghaitech", data_root=str(prepared), oc_epochs=2, warmup_epochs=1, batch_size=2, code_size=16,
        oc_lr=1e-3, layers=(0, 4, 6), data_options=SMOKE_OPTIONS,
    )  # fmt: skip
    result = run_trial(spec)
    row = result.row
    assert row["status"] == "ok", row["error"]
    assert 0 <= row["test_auc"] <= 1 and 0 <= row["val_auc"] <= 1 and len(row["layer_test_auc"]) == 3
    assert row["n_train"] == 48 and row["n_val"] + row["n_test"] == 24 + 25 + 26
    assert all(r > 0 for r in row["final_radii"])  # updated after the one warm-up epoch
    scores = result.scores
    assert len(scores) == row["n_val"] + row["n_test"]  # one row per frame
    test = scores[scores["split"] == "test"]
    np.testing.assert_allclose(test["score"], test["score_oc"] + test["score_rec"])
    assert frame_metrics(test, (0, 4, 6))["auc"] == pytest.approx(row["test_auc"])
    for _, video in test.groupby("video"):  # normalised per video
        assert video["score_oc"].min() == 0 and video["score_oc"].max() == pytest.approx(1)
    curves = result.curves
    assert curves["epoch"].tolist() == [0, 1] and (curves["stage"] == "end_to_end").all()
    assert {"oc_loss", "rec_loss", "radius_6"} <= set(curves.columns)
    with pytest.raises(ValueError, match="unknown video data option"):
        run_trial(replace(spec, data_options=(*SMOKE_OPTIONS, ("oops", 1))))


def test_default_and_reference_parameter_counts():
    def count(**kw):
        with torch.device("meta"):  # sizes only: nothing is allocated
            return sum(p.numel() for p in create_model("causal3d_lstm", **kw).parameters())

    assert count() == 12_731_627  # 16 x 256 x 512, code 1024, no selectors
    # the reference's selectors (hidden 256): 143.4 M in all, 130.7 M of them in the selectors (METHOD.md 4.3)
    assert round(count(selectors=True, selector_hidden=256) / 1e6, 1) == 143.4
    assert round((count(selectors=True, selector_hidden=256) - count()) / 1e6, 1) == 130.7


def test_search_space_smoke_budget_runs_on_the_fixture(prepared):
    import optuna

    from search_spaces import get_space, params_to_fields

    space = get_space("shanghaitech")
    assert space.CLASSES == ("all",) and all(max(s) < space.NUM_LAYERS for s in space.LAYER_SETS)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    space.define_search(trial)
    spec = TrialSpec(**space.fixed("smoke", 0), **params_to_fields(trial.params), data_root=str(prepared))
    assert run_trial(spec.validate()).row["status"] == "ok"
    TrialSpec(**space.fixed("paper", 0), **params_to_fields(trial.params)).validate()


# -- resident and encoded frames -----------------------------------------------------------------------------------


def _both_paths(root, **options):
    resident = load_split("shanghaitech", 0, data_root=str(root), clip_length=CLIP, **options)
    encoded = load_split("shanghaitech", 0, data_root=str(root), clip_length=CLIP, decoded_budget_gb=0, **options)
    assert (resident.meta["frames"], encoded.meta["frames"]) == ("resident", "encoded")
    return resident, encoded


@pytest.mark.parametrize("frame_size", [None, (32, 32)])
def test_encoded_path_gives_the_same_clips_as_the_resident_path(prepared, monkeypatch, frame_size):
    options = {} if frame_size is None else {"frame_size": frame_size}
    resident, encoded = _both_paths(prepared, **options)
    assert encoded.x_train.nbytes < resident.x_train.nbytes / 3  # JPEG bytes, not pixels
    assert encoded.meta["encoded_gib"] < encoded.meta["decoded_gib"] == resident.meta["decoded_gib"]
    assert len(encoded.x_train) == len(resident.x_train) == 48 and encoded.frame_size == resident.frame_size
    torch.testing.assert_close(encoded.clips(encoded.x_train, encoded.train_starts),
                               resident.clips(resident.x_train, resident.train_starts), rtol=0, atol=0)  # fmt: skip
    for i in range(len(encoded.videos)):
        for batch in (3, 100):  # several batches per video, and one
            got = torch.cat(list(sliding_clips(encoded.video_frames(i), CLIP, batch)))
            want = torch.cat(list(sliding_clips(resident.video_frames(i), CLIP, batch)))
            assert len(got) == encoded.offsets[i + 1] - encoded.offsets[i] - CLIP + 1
            assert torch.equal(got, want)
    # the windows a batch gathers overlap: each distinct frame is decoded once, and a scored video once in all
    decoded, real = [], shanghaitech._decode_jpegs

    def counting(chunks, device):
        decoded.append(len(chunks))
        return real(chunks, device)

    monkeypatch.setattr(shanghaitech, "_decode_jpegs", counting)
    starts = torch.tensor([0, 1, 2, 30, 3])  # frames 0..10 and 30..37
    assert torch.equal(encoded.clips(encoded.x_train, starts), resident.clips(resident.x_train, starts))
    assert decoded == [11 + CLIP]
    decoded.clear()
    n_clips = sum(len(x) for x in sliding_clips(encoded.video_frames(1), CLIP, 4))
    assert sum(decoded) == n_clips + CLIP - 1 == encoded.offsets[2] - encoded.offsets[1]


def test_smoke_training_gives_the_same_run_on_both_paths(prepared):
    spec = TrialSpec(
        dataset="shanghaitech", data_root=str(prepared), oc_epochs=2, warmup_epochs=1, batch_size=2, code_size=16,
        oc_lr=1e-3, layers=(0, 4, 6), data_options=SMOKE_OPTIONS, device="cpu",
    )  # fmt: skip
    encoded_spec = replace(spec, data_options=(*SMOKE_OPTIONS, ("decoded_budget_gb", 0)))
    assert run_key(encoded_spec) == run_key(spec)  # how frames are held does not change what the run is
    resident, encoded = run_trial(spec), run_trial(encoded_spec)
    assert resident.row["status"] == encoded.row["status"] == "ok"
    for name in ("test_auc", "val_auc", "layer_test_auc", "final_radii"):
        assert encoded.row[name] == resident.row[name], name
    pd.testing.assert_frame_equal(encoded.scores, resident.scores)  # every frame's score, bit for bit
    pd.testing.assert_frame_equal(encoded.curves, resident.curves)


def test_the_path_follows_the_host_memory_and_the_guard_only_refuses_what_even_encoded_cannot_hold(
    prepared, tmp_path, monkeypatch
):
    root = tmp_path / "prep"
    shutil.copytree(prepared, root)  # a root of its own: the per-process caches are keyed by root
    encoded_bytes = sum(p.stat().st_size for p in root.rglob("*.jpg"))
    monkeypatch.setattr(shanghaitech, "_host_memory", lambda: 2 * encoded_bytes)
    # the decoded frames would exceed half of this host: encoded, however large the budget
    split = load_split("shanghaitech", 0, data_root=str(root), clip_length=CLIP, decoded_budget_gb=1000)
    assert split.meta["frames"] == "encoded" and "encoded frames" in split.summary()
    shanghaitech._encoded_part.cache_clear()
    monkeypatch.setattr(shanghaitech, "_host_memory", lambda: encoded_bytes // 2)
    with pytest.raises(DatasetError, match="even as JPEG bytes.*--frame-size"):
        load_split("shanghaitech", 0, data_root=str(root), clip_length=CLIP)
    with pytest.raises(DatasetError, match="decoded_budget_gb"):
        load_split("shanghaitech", 0, data_root=str(root), clip_length=CLIP, decoded_budget_gb=-1)


def test_a_frame_that_does_not_decode_is_named_on_both_paths(prepared, tmp_path):
    root = tmp_path / "prep"
    shutil.copytree(prepared, root)
    video = sorted((root / "training" / FRAMES_DIR).iterdir())[1]
    bad = video / "000005.jpg"
    bad.write_bytes(b"\xff\xd8" + np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    # encoded: loading reads bytes only, so the error comes with the first batch that holds the frame
    split = load_split("shanghaitech", 0, data_root=str(root), clip_length=CLIP, decoded_budget_gb=0)
    split.clips(split.x_train, torch.tensor([0]))  # video 0 is fine
    with pytest.raises(DatasetError, match=f"frame 5 of video {video.name}"):
        split.clips(split.x_train, torch.tensor([24 + 2]))
    with pytest.raises(DatasetError, match=f"frame 5 of video {video.name}"):  # resident: while loading
        load_split("shanghaitech", 0, data_root=str(root), clip_length=CLIP)
    bad.write_bytes(b"not a jpeg at all")
    shanghaitech._encoded_part.cache_clear()  # read the files again
    with pytest.raises(DatasetError, match="000005.jpg is not a JPEG"):
        load_split("shanghaitech", 0, data_root=str(root), clip_length=CLIP, decoded_budget_gb=0)
