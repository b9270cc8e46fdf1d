"""Running on a Ray cluster: the shipped cluster configs pass Ray's own autoscaler validation and broken copies fail
it; a sweep spreads its runs over two Ray nodes started on this machine; a sweep keeps its results and Tune's state
in an S3-compatible object store (moto on 127.0.0.1) and resumes from there; an unreachable cluster or storage fails
fast with one sentence. Every process a test starts is ended by pid and checked gone."""

from __future__ import annotations

import copy
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

import results
from engine.plan import TRAINING_LOG, SweepContext, seeds_plan, spec_from_config, unique_pending
from engine.sweep import main
from engine.trial import run_key
from results.store import join_uri
from tests.fixtures.ray_cluster import LocalRayCluster, free_port, processes_under

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(ROOT.glob("cluster*.yaml"))
# the smallest sweep with several runs: one class, one boundary, two seeds -> MOCCA and both baselines per seed
SWEEP = ["digits", "--mode", "seeds", "--classes", "0", "--boundaries", "soft", "--seeds", "0,1", "--quiet"]


# -- cluster configs -------------------------------------------------------------------------------------------------
def check_cluster_config(config: dict) -> dict:
    """What `ray up` checks before it touches a cloud (defaults, the JSON schema, worker counts), plus the check Ray
    skips: a node type's min_workers above its max_workers, which Ray silently clamps. Returns the prepared config."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    for name, node_type in prepared["available_node_types"].items():
        if node_type.get("min_workers", 0) > node_type.get("max_workers", prepared["max_workers"]):
            raise ValueError(f"node type {name}: min_workers {node_type['min_workers']} > max_workers")
    return prepared


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_both_cluster_configs_are_shipped():
    assert {p.name for p in CONFIGS} >= {"cluster.yaml", "cluster-onprem.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_cluster_config_passes_ray_validation(path):
    prepared = check_cluster_config(_load(path))
    assert prepared["max_workers"] >= 1  # a cluster, not a lone head
    assert any("pip install" in cmd and "~/mocca" in cmd for cmd in prepared["setup_commands"])
    if prepared["provider"]["type"] != "local":  # the cloud cluster: a head without GPUs, autoscaling GPU workers
        types = dict(prepared["available_node_types"])
        head = types.pop(prepared["head_node_type"])
        assert head["resources"].get("GPU", 0) == 0 and types
        assert all(v["resources"].get("GPU", 0) >= 1 and v["min_workers"] < v["max_workers"] for v in types.values())


def _typo_top_level(config: dict) -> None:
    config["setup_comands"] = config.pop("setup_commands")


def _typo_in_auth(config: dict) -> None:
    config["auth"]["ssh_usr"] = config["auth"].pop("ssh_user")


def _more_min_than_max(config: dict) -> None:
    if "available_node_types" in config:  # cloud: a worker type wanting more machines than it may have
        worker = next(v for k, v in config["available_node_types"].items() if k != config["head_node_type"])
        worker["min_workers"] = worker["max_workers"] + 1
        config["max_workers"] = 100  # so only the per-type check can object
    else:  # local provider: more workers kept than allowed
        config["min_workers"], config["max_workers"] = 2, 1


def _min_above_cluster_max(config: dict) -> None:
    if "available_node_types" in config:
        worker = next(v for k, v in config["available_node_types"].items() if k != config["head_node_type"])
        worker["min_workers"] = worker["max_workers"] = config["max_workers"] + 1
    else:
        config["max_workers"] = 0


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize(
    ("break_it", "why"),
    [
        (_typo_top_level, "'setup_comands' was unexpected"),
        (_typo_in_auth, "'ssh_usr' was unexpected"),
        (_more_min_than_max, "max_workers"),
        (_min_above_cluster_max, "max_workers"),
    ],
)
def test_broken_cluster_config_fails_validation(path, break_it, why):
    import jsonschema

    config = _load(path)
    break_it(config)
    with pytest.raises((jsonschema.ValidationError, ValueError), match=why):
        check_cluster_config(config)


# -- join_uri and fast failures ----------------------------------------------------------------------------------
def test_join_uri_keeps_the_query_of_a_uri():
    uri = "s3://bucket/sweeps/?endpoint_override=127.0.0.1:9000&scheme=http"
    assert join_uri(uri, "digits") == "s3://bucket/sweeps/digits?endpoint_override=127.0.0.1:9000&scheme=http"
    assert join_uri("/tmp/sweeps/", "digits", "runs") == "/tmp/sweeps/digits/runs"
    assert join_uri("s3://bucket", "x") == "s3://bucket/x"


def _closed_port() -> int:
    return free_port()  # bound and released at once: nothing listens there


def _main_exit(argv: list[str], capsys) -> tuple[int, str, float]:
    start = time.monotonic()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err, time.monotonic() - start


def test_unreachable_cluster_fails_fast_in_one_sentence(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    argv = [*SWEEP, "--storage", str(tmp_path), "--address", f"127.0.0.1:{_closed_port()}"]
    code, err, seconds = _main_exit(argv, capsys)
    assert code == 2
    assert err.startswith("error: no Ray cluster answers at 127.0.0.1:") and err.count("\n") == 1, err
    assert seconds < 30  # ray.init alone would wait for minutes


def test_bad_address_is_a_usage_error(tmp_path, capsys):
    code, err, _ = _main_exit([*SWEEP, "--storage", str(tmp_path), "--address", "headnode"], capsys)
    assert code == 2 and "--address takes 'auto' or host:port" in err and err.count("\n") == 1, err


def test_unreachable_object_store_fails_in_one_sentence(capsys, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    uri = f"s3://mocca/sweeps?endpoint_override=127.0.0.1:{_closed_port()}&scheme=http&region=us-east-1"
    code, err, seconds = _main_exit([*SWEEP, "--storage", uri], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: cannot reach storage 's3://mocca/sweeps/digits?endpoint_override=")
    assert seconds < 60


def test_storage_under_a_file_fails_in_one_sentence(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    code, err, _ = _main_exit([*SWEEP, "--storage", str(tmp_path / "file" / "sweeps")], capsys)
    assert code == 2 and "cannot write storage" in err and err.count("\n") == 1, err
    assert (tmp_path / "file").read_text() == "not a folder"


def test_autoscaling_cluster_takes_max_concurrent_as_given(monkeypatch):
    """An autoscaling cluster starts without GPU workers: with --max-concurrent the sweep queues that many runs (the
    demand that makes the autoscaler add nodes) instead of refusing for lack of GPUs."""
    import ray

    from engine.sweep import UsageError, build_parser, capacity

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 0.0})  # a head with CPU 0 and no worker yet
    args = build_parser().parse_args(["digits", "--address", "10.0.0.5:6379", "--gpus-per-run", "0.25"])
    with pytest.raises(UsageError, match="has none: use 0, or pass --max-concurrent"):
        capacity(args)
    args.max_concurrent = 32
    assert capacity(args) == (0.25, 32)


# -- S3-compatible object store ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3():
    """An S3 server (moto) on 127.0.0.1 with an empty bucket `mocca`, and the credentials it accepts."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not one line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    port = server.get_host_and_port()[1]
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true"}
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    client.create_bucket(Bucket="mocca")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in creds.items():
            mp.setenv(key, value)
        yield SimpleNamespace(
            client=client,
            creds=creds,
            uri=f"s3://mocca/sweeps?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1",
        )
    server.stop()


def test_missing_bucket_fails_in_one_sentence(s3, capsys):
    code, err, _ = _main_exit([*SWEEP, "--storage", s3.uri.replace("s3://mocca/", "s3://no-such-bucket/")], capsys)
    assert code == 2 and "bucket 'no-such-bucket'" in err and err.count("\n") == 1, err


def _short_tmp() -> Path:
    """A fresh short folder (Ray's unix socket paths must stay under ~100 characters), unique to this test."""
    path = Path(f"/tmp/rc{os.getpid()}-{time.monotonic_ns() % 10**9}")
    path.mkdir()
    return path


def _run_sweep(env: dict, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "engine.sweep", *SWEEP, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _expected_keys(uri: str) -> set[str]:
    """The run keys of SWEEP, derived from the plan (not from what the sweep reports)."""
    ctx = SweepContext(dataset="digits", store_uri=uri, sweep="digits")
    pending, _ = unique_pending(ctx, seeds_plan("digits", [0], ["soft"], [0, 1], {}), set())
    return {run_key(spec_from_config(ctx, c)) for c in pending}


def _trainings(env: dict) -> list[str]:
    log = Path(env[TRAINING_LOG])
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture(scope="module")
def s3_sweep(s3):
    """SWEEP run once through a local Ray with --storage on the S3 server; Ray's files in a private temp dir."""
    marker = _short_tmp()
    env = {**os.environ, **s3.creds, "RAY_TMPDIR": str(marker), TRAINING_LOG: str(marker / "trainings.log")}
    env.pop("RAY_ADDRESS", None)
    start = time.monotonic()
    try:
        proc = _run_sweep(env, "--storage", s3.uri, "--num-cpus", "2")
        yield SimpleNamespace(
            env=env, proc=proc, seconds=time.monotonic() - start, storage=s3.uri, uri=join_uri(s3.uri, "digits")
        )
    finally:
        left = processes_under(marker)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(marker, ignore_errors=True)
        assert not left, f"processes left behind: {left}"


@pytest.mark.slow
def test_sweep_on_object_storage_stores_runs_and_tune_state(s3, s3_sweep):
    print(f"\nS3-backed sweep: {s3_sweep.seconds:.1f} s")
    runs = results.load(s3_sweep.uri)  # read straight from the object store
    expected = _expected_keys(s3_sweep.uri)
    assert sorted(runs["run_key"]) == sorted(expected) and (runs["status"] == "ok").all()
    assert len(_trainings(s3_sweep.env)) == len(expected)
    keys = [o["Key"] for o in s3.client.list_objects_v2(Bucket="mocca", Prefix="sweeps/digits/")["Contents"]]
    assert "sweeps/digits/sweep.json" in keys
    assert {f"sweeps/digits/scores/{k}.parquet" for k in expected} <= set(keys)
    assert any(k.startswith("sweeps/digits/tune/seeds-") and "experiment_state" in k for k in keys), keys


@pytest.mark.slow
def test_analysis_reads_the_object_store_directly(s3_sweep, capsys):
    from analysis.tables import main as tables

    assert tables([s3_sweep.uri]) == 0
    assert "OC-SVM" in capsys.readouterr().out


@pytest.mark.slow
def test_sweep_on_object_storage_resumes_from_there(s3_sweep):
    before = results.load(s3_sweep.uri)
    trained_before = len(_trainings(s3_sweep.env))
    again = _run_sweep(s3_sweep.env, "--storage", s3_sweep.storage)
    assert "nothing to train" in again.stdout
    assert len(_trainings(s3_sweep.env)) == trained_before
    after = results.load(s3_sweep.uri)
    assert sorted(after["run_key"]) == sorted(before["run_key"])
    manifest = results.ResultsStore(s3_sweep.uri).manifest()
    assert len(manifest["history"]) == 2  # the resumed invocation was recorded on the object store too


# -- two Ray nodes on one machine --------------------------------------------------------------------------------
@pytest.mark.slow
def test_sweep_spreads_runs_over_two_nodes(tmp_path):
    storage = tmp_path / "sweeps"  # a folder both nodes reach (they share this machine's disk)
    root = _short_tmp()
    log = tmp_path / "trainings.log"
    try:
        with LocalRayCluster(root, env={TRAINING_LOG: str(log)}) as cluster:
            cluster.add_node(head=True, num_cpus=1, resources={"head_node": 1})
            cluster.add_node(num_cpus=1, resources={"second_node": 1})
            start = time.monotonic()
            _run_sweep(cluster.env, "--address", cluster.address, "--storage", str(storage))
            seconds = time.monotonic() - start
            names = dict(zip(cluster.node_ids(), ["head", "second node"], strict=False))
        assert not cluster.leftovers(), "processes of the test cluster are still running"
    finally:
        shutil.rmtree(root, ignore_errors=True)

    runs = results.load(str(storage / "digits"))
    expected = _expected_keys(str(storage / "digits"))
    assert sorted(runs["run_key"]) == sorted(expected) and (runs["status"] == "ok").all()
    assert len(log.read_text().splitlines()) == len(expected)  # every run trained exactly once
    assert runs["node_id"].nunique() == 2, runs["node_id"].value_counts()
    print(f"\ntwo-node sweep: {seconds:.1f} s")
    for node, group in runs.groupby("node_id"):
        done = sorted(f"{r.method} layers {','.join(map(str, r.layers))} seed {r.seed}" for r in group.itertuples())
        print(f"{names.get(node, '?')} {node[:12]}: {done}")
