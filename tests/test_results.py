"""The results store: atomic one-file-per-run writes, idempotence, schema, and clear errors on bad files."""

import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.trial import TrialSpec, failed_row, run_trial
from results import RUN_SCHEMA, ResultsStore, StoreError, load, run_table


@pytest.fixture(scope="module")
def result():
    return run_trial(TrialSpec(dataset="digits", normal_class=2, ae_epochs=1, oc_epochs=1, batch_size=64))


def test_write_is_atomic_idempotent_and_readable_without_the_project(tmp_path, result):
    store = ResultsStore(str(tmp_path / "sweep"))
    assert store.write_run(result.row, result.scores, result.curves)
    assert not store.write_run(result.row, result.scores, result.curves)  # the same key is stored once
    key = result.row["run_key"]
    assert store.done_keys() == {key} and store.has_run(key)
    assert sorted(p.name for p in (tmp_path / "sweep").rglob("*") if p.is_file()) == [f"{key}.parquet"] * 3
    df = store.load()
    assert list(df.columns) == RUN_SCHEMA.names and df.loc[0, "test_auc"] == result.row["test_auc"]
    assert list(pd.read_parquet(tmp_path / "sweep" / "runs")["run_key"]) == [key]
    assert store.read_run(key)["layers"] == [0, 1, 2, 3]
    assert len(store.load_scores([key])) == len(result.scores)
    assert store.load_curves(["other"]).empty


def test_a_killed_writer_leaves_nothing_a_reader_sees(tmp_path, result):
    store = ResultsStore(str(tmp_path))
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / f".tmp-123-{result.row['run_key']}.parquet").write_bytes(b"half a file")
    assert store.done_keys() == set() and store.load().empty


def test_old_files_without_new_columns_still_load(tmp_path):
    os.makedirs(tmp_path / "runs")
    old = run_table({"run_key": "a", "status": "ok"}).drop_columns(["params", "config_key"])
    pq.write_table(old, tmp_path / "runs" / "a.parquet")
    df = ResultsStore(str(tmp_path)).load()
    assert list(df.columns) == RUN_SCHEMA.names and df.loc[0, "run_key"] == "a" and pd.isna(df.loc[0, "params"])


@pytest.mark.parametrize(
    "payload, message",
    [(b"garbage", "not a readable Parquet file"), (None, "does not match the run schema")],
)
def test_a_corrupt_run_file_is_a_one_sentence_error(tmp_path, payload, message):
    os.makedirs(tmp_path / "runs")
    path = tmp_path / "runs" / "bad.parquet"
    if payload is None:
        pq.write_table(pa.table({"run_key": ["b"], "layers": ["not a list"]}), path)
    else:
        path.write_bytes(payload)
    with pytest.raises(StoreError, match=message) as exc:
        ResultsStore(str(tmp_path)).load()
    assert "delete it and re-run" in str(exc.value)


def test_schema_refuses_unknown_columns_and_statuses(result):
    with pytest.raises(AssertionError, match="missing from RUN_SCHEMA"):
        run_table({**result.row, "surprise": 1})
    with pytest.raises(AssertionError, match="status must be one of"):
        run_table({**result.row, "status": "running"})
    row = failed_row(TrialSpec(normal_class=1), RuntimeError("boom"))
    table = run_table(row)
    assert table.column("status")[0].as_py() == "failed" and "boom" in table.column("error")[0].as_py()


def test_delete_refuses_a_folder_that_is_not_a_sweep(tmp_path):
    (tmp_path / "notes.txt").write_text("keep")
    with pytest.raises(StoreError, match="not a sweep folder"):
        ResultsStore(str(tmp_path)).delete()
    assert (tmp_path / "notes.txt").exists()
    with pytest.raises(StoreError, match="no sweep at"):
        load(str(tmp_path / "missing"))
