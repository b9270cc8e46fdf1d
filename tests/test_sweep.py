"""The sweep through a real local Ray (2 CPUs): runs land in the store with the documented schema, a SIGKILLed
sweep resumes with every run exactly once and no stored run trained again, failures are recorded, bad input
exits 2 and writes nothing, and no Ray process outlives a test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from engine.plan import INJECT_FAILURE, TRAINING_LOG, SweepContext, seeds_plan, unique_pending
from results import RUN_SCHEMA, ResultsStore

pytestmark = pytest.mark.slow

SWEEP = ["--classes", "0", "--boundaries", "soft", "--trials", "2", "--seeds", "0,1", "--num-cpus", "2"]


@pytest.fixture
def ray_env(tmp_path_factory):
    """Environment for sweep subprocesses: Ray's files in a private temp dir (so we can find and end exactly the
    processes a test started), a training log, and a check that nothing is left running afterwards."""
    short = Path(f"/tmp/rt{os.getpid()}-{time.monotonic_ns() % 10**6}")  # unix socket paths must stay short
    short.mkdir()
    env = {**os.environ, "RAY_TMPDIR": str(short), TRAINING_LOG: str(short / "trainings.log")}
    env.pop("RAY_ADDRESS", None)
    yield env
    leftovers = _wait_gone(short)
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not leftovers, f"Ray processes left behind: {leftovers}"


def _ray_processes(marker: Path) -> list[int]:
    """Live processes started under this test's RAY_TMPDIR (found by environment: Ray renames its processes)."""
    needle = f"RAY_TMPDIR={marker}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0") and b"Z" not in _state(proc):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _wait_gone(marker: Path, timeout: float = 20.0) -> list[int]:
    """Ray workers run in sessions of their own and exit a moment after their raylet: give them that moment."""
    deadline = time.monotonic() + timeout
    while (left := _ray_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def _state(proc: Path) -> bytes:
    return (proc / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]


def _sweep(env, storage, *extra, check=True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "engine.sweep", "digits", "--storage", str(storage), *SWEEP, *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, start_new_session=True)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _expected_keys(store: ResultsStore) -> set[str]:
    """The run keys a finished `paper` sweep must hold, derived from the plan, not from the sweep's own output."""
    runs = store.load()
    ctx = SweepContext(dataset="digits", store_uri=store.uri, sweep="digits")
    selection = store.read_json("selected/digits-0-soft.json")
    selections = {(0, "soft"): selection["params"]} if selection else {}
    pending, _ = unique_pending(ctx, seeds_plan("digits", [0], ["soft"], [0, 1], selections), set())
    from engine.plan import spec_from_config
    from engine.trial import run_key

    search_keys = set(runs.loc[runs["mode"] == "search", "run_key"])
    return search_keys | {run_key(spec_from_config(ctx, c)) for c in pending}


def _trainings(env) -> list[tuple[str, float]]:
    path = Path(env[TRAINING_LOG])
    if not path.exists():
        return []
    return [(line.split()[0], float(line.split()[2])) for line in path.read_text().splitlines()]


def test_smoke_sweep_writes_expected_runs_and_resumes_without_training(ray_env, tmp_path):
    proc = _sweep(ray_env, tmp_path)
    assert "[search]" in proc.stdout and "[seeds]" in proc.stdout and "left ~" in proc.stdout
    store = ResultsStore(str(tmp_path / "digits"))
    runs = store.load()
    assert list(runs.columns) == RUN_SCHEMA.names
    assert set(runs["run_key"]) == _expected_keys(store)
    assert len(runs) == runs["run_key"].nunique()
    assert (runs["mode"] == "search").sum() == 2  # exactly --trials search runs
    assert set(runs["status"]) == {"ok"}
    assert set(runs["method"]) == {"mocca", "ocsvm", "iforest"}
    assert runs["node_id"].str.len().gt(0).all() and runs["trial_id"].str.len().gt(0).all()
    assert runs.loc[runs["method"] == "mocca", "layer_test_auc"].map(len).gt(0).all()
    # per-sample scores and per-epoch curves of every MOCCA run
    mocca = runs.loc[runs["method"] == "mocca", "run_key"]
    assert set(store.load_scores()["run_key"]) == set(runs["run_key"])
    assert set(store.load_curves()["run_key"]) == set(mocca)
    # plain pandas reads the store without this project
    assert len(pd.read_parquet(tmp_path / "digits" / "runs")) == len(runs)
    manifest = json.loads((tmp_path / "digits" / "sweep.json").read_text())
    assert manifest["dataset"] == "digits" and len(manifest["history"]) == 1
    # the summary table and the results path are printed
    assert "OC-SVM" in proc.stdout and f"results: {tmp_path}" in proc.stdout

    trained_before = len(_trainings(ray_env))
    assert trained_before == len(runs)
    again = _sweep(ray_env, tmp_path)
    assert "nothing to train" in again.stdout
    assert len(_trainings(ray_env)) == trained_before
    assert len(store.load()) == len(runs)


def test_sigkill_then_resume_completes_every_run_exactly_once(ray_env, tmp_path):
    store = ResultsStore(str(tmp_path / "digits"))
    cmd = [sys.executable, "-m", "engine.sweep", "digits", "--storage", str(tmp_path), *SWEEP, "--quiet"]
    proc = subprocess.Popen(cmd, env=ray_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while len(store.done_keys()) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep finished before it could be killed: make it longer"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and every Ray process it started
    proc.wait()
    killed_at = time.time()
    done_at_kill = store.done_keys()
    assert 3 <= len(done_at_kill)
    assert not _wait_gone(Path(ray_env["RAY_TMPDIR"]))  # killing the process group ends all of Ray

    _sweep(ray_env, tmp_path)
    runs = store.load()
    assert set(runs["run_key"]) == _expected_keys(store)
    assert len(runs) == runs["run_key"].nunique()
    assert (runs["mode"] == "search").sum() == 2
    retrained = [key for key, t in _trainings(ray_env) if t > killed_at and key in done_at_kill]
    assert retrained == [], f"runs stored before the kill were trained again: {retrained}"
    # every stored run was trained exactly once after its last interrupted attempt
    assert set(runs["run_key"]) <= {key for key, _ in _trainings(ray_env)}
    assert not list((tmp_path / "digits" / "runs").glob(".tmp-*"))  # nothing partial is visible


def test_failing_run_is_recorded_and_sweep_completes(ray_env, tmp_path):
    env = {**ray_env, INJECT_FAILURE: "0:1"}
    proc = _sweep(env, tmp_path)
    runs = ResultsStore(str(tmp_path / "digits")).load()
    failed = runs[runs["status"] == "failed"]
    assert len(failed) >= 1 and (failed["seed"] == 1).all()
    assert failed["error"].str.contains("injected failure").all()
    assert failed["test_auc"].isna().all()
    assert (runs["status"] == "ok").sum() == len(runs) - len(failed)
    assert "did not finish ok" in proc.stdout


def test_runs_trained_together_store_the_same_runs_one_row_each_and_resume(ray_env, tmp_path):
    seeds = ["--mode", "seeds", "--seeds", "0,1,2", "--pack", "3"]
    proc = _sweep(ray_env, tmp_path, *seeds)
    assert "[seeds] 12/12 runs" in proc.stdout  # progress counts runs, not trials
    store = ResultsStore(str(tmp_path / "digits"))
    runs = store.load()
    ctx = SweepContext(dataset="digits", store_uri=store.uri, sweep="digits")
    pending, _ = unique_pending(ctx, seeds_plan("digits", [0], ["soft"], [0, 1, 2], {}), set())
    from engine.plan import spec_from_config
    from engine.trial import run_key

    assert set(runs["run_key"]) == {run_key(spec_from_config(ctx, c)) for c in pending}  # the runs of no packing
    assert len(runs) == runs["run_key"].nunique() == 12 and set(runs["status"]) == {"ok"}
    mocca, baselines = runs[runs["method"] == "mocca"], runs[runs["method"] != "mocca"]
    # the default config and its last-layer twin share stage 1: one trial, 3 seeds side by side, 6 runs
    assert mocca["trial_id"].nunique() == 1 and len(mocca) == 6
    assert (mocca["pack_size"] == 3).all() and (mocca["stage1_shared_by"] == 6).all()
    assert (baselines["pack_size"] == 1).all() and baselines["trial_id"].nunique() == len(baselines)
    assert mocca["autoencoder_s"].nunique() == 1  # trained once
    assert set(store.load_curves()["run_key"]) == set(mocca["run_key"])

    # a group cut short before storing one of its runs: only that run trains again, alone
    lost = mocca.iloc[0]["run_key"]
    (tmp_path / "digits" / "runs" / f"{lost}.parquet").unlink()
    before = len(_trainings(ray_env))
    _sweep(ray_env, tmp_path, *seeds)
    assert [key for key, _ in _trainings(ray_env)[before:]] == [lost]
    again = store.load().set_index("run_key")
    assert len(again) == 12 and again.loc[lost, "pack_size"] == 1 and again.loc[lost, "stage1_shared_by"] == 1


def _main_exit(argv, capsys) -> tuple[int, str]:
    from engine.sweep import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--classes", "12"], "unknown digits class '12'"),
        (["--seeds", "a,b"], "--seeds takes comma-separated integers"),
        (["--trials", "0"], "--trials must be at least 1"),
        (["--boundaries", "round"], "--boundaries takes soft"),
        (["--name", "../up"], "--name must be a plain folder name"),
        (["--cpus-per-run", "0"], "--cpus-per-run must be positive"),
        (["--data-option", "novalue"], "--data-option takes KEY=VALUE"),
        (["--mode", "everything"], "invalid choice: 'everything'"),
        (["--pack", "0"], "--pack and --max-concurrent must be at least 1"),
        (["--pack", "2", "--workers-per-run", "2"], "use --pack or --workers-per-run, not both"),
        (["--pack", "2", "--compile"], "--pack 2: compiled runs are trained alone"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, args, message):
    code, err = _main_exit(["digits", "--storage", str(tmp_path / "s"), *args], capsys)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()[-1]) < 300
    assert not (tmp_path / "s").exists()


def test_missing_dataset_exits_2_and_writes_nothing(tmp_path, capsys):
    argv = ["cifar10", "--data-root", str(tmp_path / "nope"), "--storage", str(tmp_path / "s")]
    code, err = _main_exit(argv, capsys)
    assert code == 2 and "cifar-10-batches-py" in err
    assert not (tmp_path / "s").exists()


def test_a_folder_that_is_not_a_sweep_is_never_touched(tmp_path, capsys):
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "thesis.tex").write_text("precious")
    for extra in (["--fresh"], []):
        code, err = _main_exit(["digits", "--storage", str(tmp_path), *extra], capsys)
        assert code == 2 and "not a sweep folder" in err
    assert [p.name for p in (tmp_path / "digits").iterdir()] == ["thesis.tex"]
