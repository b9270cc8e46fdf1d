"""Data-parallel runs: two gloo processes on the CPU agree on everything a run leaves (weights, centroids, radii,
curves) while each trains its own shard, and only rank 0 reads and writes the store; a process group of one changes
nothing; the sweep's `--workers-per-run 2` (a Ray Train TorchTrainer per run) stores its runs and leaves no Ray
process behind."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine import distributed
from engine.data import load_split
from engine.metrics import roc_auc
from engine.models import create_model
from engine.objective import layer_scores
from engine.plan import TRAINING_LOG, SweepContext, run_and_store
from engine.training import StageConfig, train_autoencoder, train_one_class
from engine.training import test_distances as layer_distances  # aliased: pytest would collect test_*
from results import ResultsStore

BATCH = 63  # odd: the two shards of a batch differ in size, so do the two ranks' augmentation draws
LAYERS = (0, 2)  # stage 2 leaves the last layer (fc) unused: DDP must allow it and Adam must leave it alone


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A stand-in augmentation that draws one number per sample (like MVTec's rotations)."""
    return x + 0.01 * torch.randn(x.shape, generator=generator)


def train_digits(seen: list[int] | None = None) -> dict:
    """Both stages on digits class 0 with a per-sample augmentation; what the run leaves, and its test AUC."""
    split = load_split("digits", 0)

    def augment(x, generator):
        if seen is not None:
            seen.append(len(x))
        return _noise(x, generator)

    split = dataclasses.replace(split, train_transform=augment)
    torch.manual_seed(0)
    ae = create_model("lenet_digits")
    gen = torch.Generator().manual_seed(0)
    train_autoencoder(ae, split, StageConfig(epochs=2, lr=3e-3, batch_size=BATCH), gen)
    fc_after_stage1 = ae.encoder.fc.weight.detach().clone()
    state = train_one_class(ae.encoder, split, LAYERS, "soft", 0.1, StageConfig(epochs=2, lr=1e-3, batch_size=BATCH),
                            gen, warmup_epochs=0)  # fmt: skip
    dist_test = layer_distances(ae.encoder, state, split.x_test, BATCH)[..., 0]  # (L, N)
    scores = layer_scores(dist_test, state.radii, "soft").mean(dim=0)
    return {
        "centroids": state.centroids,
        "radii": state.radii,
        "curves": state.curves,
        "weights": {k: v.clone() for k, v in ae.state_dict().items()},
        "fc_untouched": torch.equal(fc_after_stage1, ae.encoder.fc.weight),
        "generator": gen.get_state(),
        "auc": roc_auc(split.y_test.numpy(), scores.numpy()),
        "n_train": len(split.x_train),
    }


def _rank(rank: int, world: int, folder: str, store_uri: str) -> None:
    """One rank of the two-process test (run by torch.multiprocessing): trains, then stores a run; saves what
    it saw to `folder`/rank<r>.pt."""
    torch.set_num_threads(1)
    os.environ[TRAINING_LOG] = f"{folder}/trainings.log"
    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=world)
    try:
        seen: list[int] = []
        result = train_digits(seen)
        result["seen"] = seen
        ctx = SweepContext(dataset="digits", store_uri=store_uri, sweep="t", cpus_per_run=1.0)
        config = {"normal_class": 1, "seed": 0, "mode": "seeds", "ae_epochs": 1, "oc_epochs": 1}
        result["first"] = run_and_store(config, ctx)
        result["again"] = run_and_store(config, ctx)
        torch.save(result, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # ~20-30 s on 2 busy cores: two fresh interpreters import torch and the engine
def test_two_ranks_agree_train_their_shards_and_only_rank0_stores(tmp_path):
    store = ResultsStore(str(tmp_path / "store"))
    mp.start_processes(_rank, args=(2, str(tmp_path), store.uri), nprocs=2, join=True, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))

    # the ranks end with one model: weights, BatchNorm statistics, centroids, radii, curves, generator
    for key, value in r0["weights"].items():
        assert torch.equal(value, r1["weights"][key]), key
    assert all(torch.equal(a, b) for a, b in zip(r0["centroids"], r1["centroids"], strict=True))
    assert torch.equal(r0["radii"], r1["radii"]) and (r0["radii"] > 0).all()
    assert r0["curves"] == r1["curves"]
    assert torch.equal(r0["generator"], r1["generator"])  # the shared draws stayed in step despite the augmentation
    assert np.isfinite(r0["auc"]) and r0["auc"] > 0.5
    assert r0["fc_untouched"] and r1["fc_untouched"]
    # each rank trained on about half of every epoch (plus its half of the centroid pass), together on all of it
    epochs, n = 4, r0["n_train"]
    assert sum(r0["seen"]) + sum(r1["seen"]) == (epochs + 1) * n
    assert abs(sum(r0["seen"]) - sum(r1["seen"])) <= len(r0["seen"])

    # rank 0 alone wrote the row and logged the training; a second call trains nowhere
    (row, trained), (none, trained1) = r0["first"], r1["first"]
    assert trained and trained1 and none is None and row["status"] == "ok" and np.isfinite(row["test_auc"])
    assert len(store.load()) == 1 and store.load()["run_key"].tolist() == [row["run_key"]]
    assert r0["again"][1] is False and r1["again"][1] is False and r0["again"][0]["run_key"] == row["run_key"]
    assert len((tmp_path / "trainings.log").read_text().splitlines()) == 1


def test_a_process_group_of_one_changes_nothing(tmp_path):
    alone = train_digits()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        assert not distributed.active() and distributed.world_size() == 1
        grouped = train_digits()
    finally:
        dist.destroy_process_group()
    for key, value in alone["weights"].items():
        assert torch.equal(value, grouped["weights"][key]), key
    assert all(torch.equal(a, b) for a, b in zip(alone["centroids"], grouped["centroids"], strict=True))
    assert torch.equal(alone["radii"], grouped["radii"]) and alone["curves"] == grouped["curves"]
    assert alone["auc"] == grouped["auc"]


# -- the sweep's side ----------------------------------------------------------------------------------------------
def _main_exit(argv, capsys) -> tuple[int, str]:
    from engine.sweep import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["digits", "--workers-per-run", "3", "--num-cpus", "2"], "needs more CPUs than the local Ray's 2"),
        (["digits", "--workers-per-run", "0"], "--workers-per-run, --pack and --max-concurrent must be at least 1"),
        (["shanghaitech", "--data-root", "x", "--workers-per-run", "2"], "not data-parallel"),
    ],
)
def test_bad_worker_counts_exit_2_and_write_nothing(tmp_path, capsys, argv, message):
    code, err = _main_exit([*argv, "--storage", str(tmp_path / "s")], capsys)
    assert code == 2 and message in err, err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "resources, flags, expected",
    [
        ({"CPU": 8}, ["--workers-per-run", "2", "--cpus-per-run", "2"], (0.0, 2)),
        ({"CPU": 16, "GPU": 4}, ["--workers-per-run", "2"], (1.0, 2)),  # GPUs bound it: 2 runs of 2 GPUs
        ({"CPU": 2}, ["--workers-per-run", "2", "--cpus-per-run", "1.5"], "needs 3 CPUs"),
        ({"CPU": 16, "GPU": 2}, ["--workers-per-run", "4"], "needs 4 GPUs"),
        ({"CPU": 16, "GPU": 2}, ["--workers-per-run", "2", "--gpus-per-run", "0.5"], "NCCL refuses"),
    ],
)
def test_capacity_counts_every_worker_of_a_run(monkeypatch, resources, flags, expected):
    import ray

    from engine.sweep import UsageError, build_parser, capacity

    monkeypatch.setattr(ray, "cluster_resources", lambda: resources)
    args = build_parser().parse_args(["digits", *flags])
    if isinstance(expected, str):
        with pytest.raises(UsageError, match=expected):
            capacity(args)
    else:
        assert capacity(args) == expected


@pytest.mark.slow
def test_sweep_with_two_workers_per_run_stores_every_run_and_leaves_no_ray(tmp_path):
    from test_sweep import _wait_gone

    ray_tmp = Path(tempfile.mkdtemp(prefix="rtd", dir="/tmp"))  # unix socket paths must stay short
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), TRAINING_LOG: str(ray_tmp / "trainings.log")}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "engine.sweep", "digits", "--classes", "0", "--trials", "1", "--seeds", "0",
           "--boundaries", "soft", "--workers-per-run", "2", "--num-cpus", "2", "--budget", "smoke",
           "--storage", str(tmp_path)]  # fmt: skip
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, start_new_session=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs = ResultsStore(str(tmp_path / "digits")).load()
        # the search run, its last-layer twin and the two baselines, each once and trained once
        assert len(runs) == runs["run_key"].nunique() == 4 and set(runs["status"]) == {"ok"}
        assert sorted(runs["method"]) == ["iforest", "mocca", "mocca", "ocsvm"]
        assert runs["node_id"].str.len().gt(0).all() and runs["trial_id"].str.len().gt(0).all()
        trained = [line.split()[0] for line in (ray_tmp / "trainings.log").read_text().splitlines()]
        assert sorted(trained) == sorted(runs["run_key"])  # rank 0 alone logs; nothing was trained twice
        assert not list((tmp_path / "digits" / "tune" / "train").glob("*"))  # Ray Train's run folders are removed
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, start_new_session=True)
        assert again.returncode == 0 and "nothing to train" in again.stdout
    finally:
        leftovers = _wait_gone(ray_tmp)
        for pid in leftovers:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
    assert not leftovers, f"Ray processes left behind: {leftovers}"
    shutil.rmtree(ray_tmp, ignore_errors=True)
