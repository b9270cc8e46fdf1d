"""The run table's Parquet schema: one row per finished run, the same columns in every file.

Readable without this project: `pandas.read_parquet("<sweep>/runs")`, `pyarrow.dataset.dataset(...)`,
DuckDB `SELECT * FROM '<sweep>/runs/*.parquet'` or Polars `pl.read_parquet(...)`.

| column | meaning |
|---|---|
| run_key | stable hash of everything that determines the run (engine.trial.run_key); the file name |
| config_key | the same hash without the seed: the runs of one configuration under several seeds share it |
| sweep, mode | the sweep's name and the phase that first asked for the run: search, seeds, ablation, single |
| dataset, normal_class, class_name | the one-class problem |
| method | mocca, ocsvm or iforest (the classic baselines) |
| boundary, layers, nu | MOCCA's boundary (soft/hard), encoder layer indices (0 = closest to the input), nu |
| model, code_size, ae_*, oc_*, batch_size, warmup_epochs, centroid_eps, squared_scores, precision | settings |
| selection | val (select on a validation split carved from the test set) or test (the paper's protocol) |
| seed, data_options | the run's seed; dataset settings as JSON |
| params | JSON of the parameters the sweep chose for this run (the searched ones: learning rates, nu, layers, ...) |
| val_auc, val_max_ba, test_auc, test_max_ba | metrics of the combined score (NaN unless status is ok) |
| layer_val_auc, layer_test_auc | AUC of each selected layer alone, aligned with `layers` |
| final_radii | radius per selected layer at the end of training (0 for the hard boundary) |
| status, error | ok, diverged or failed; the error message |
| data_s, autoencoder_s, one_class_s, fit_s, score_s | phase durations in seconds, shared ones in full |
| total_s | the run's duration: wall time alone, the sum of its phases when trained with others |
| ae_images_per_s, oc_images_per_s | training throughput of the two stages (images of every model of the pack) |
| pack_size | runs trained side by side in this run's stage 2 as one packed model (engine/packing.py): 1 alone |
| stage1_shared_by | runs whose stage 1 was this run's: one autoencoder trained once for them (engine/packing.py); |
| | both columns are 1 for a run trained alone and null in rows written before they existed |
| n_train, n_val, n_test | split sizes |
| device, hostname, node_id, trial_id | where it ran (Ray node id and Tune trial id when run by a sweep) |
| torch_version, cuda_version, code_version | provenance |
| started_at, ended_at | UTC ISO-8601 |
"""

from __future__ import annotations

import math

import pyarrow as pa

_LIST_INT = pa.list_(pa.int64())
_LIST_FLOAT = pa.list_(pa.float64())

RUN_SCHEMA = pa.schema(
    [
        ("run_key", pa.string()),
        ("config_key", pa.string()),
        ("sweep", pa.string()),
        ("mode", pa.string()),
        ("dataset", pa.string()),
        ("normal_class", pa.int64()),
        ("class_name", pa.string()),
        ("method", pa.string()),
        ("boundary", pa.string()),
        ("layers", _LIST_INT),
        ("nu", pa.float64()),
        ("model", pa.string()),
        ("code_size", pa.int64()),
        ("ae_epochs", pa.int64()),
        ("ae_lr", pa.float64()),
        ("ae_weight_decay", pa.float64()),
        ("ae_milestones", _LIST_INT),
        ("oc_epochs", pa.int64()),
        ("oc_lr", pa.float64()),
        ("oc_weight_decay", pa.float64()),
        ("oc_milestones", _LIST_INT),
        ("batch_size", pa.int64()),
        ("warmup_epochs", pa.int64()),
        ("centroid_eps", pa.float64()),
        ("squared_scores", pa.bool_()),
        ("precision", pa.string()),
        ("selection", pa.string()),
        ("seed", pa.int64()),
        ("data_options", pa.string()),
        ("params", pa.string()),
        ("val_auc", pa.float64()),
        ("val_max_ba", pa.float64()),
        ("test_auc", pa.float64()),
        ("test_max_ba", pa.float64()),
        ("layer_val_auc", _LIST_FLOAT),
        ("layer_test_auc", _LIST_FLOAT),
        ("final_radii", _LIST_FLOAT),
        ("status", pa.string()),
        ("error", pa.string()),
        ("data_s", pa.float64()),
        ("autoencoder_s", pa.float64()),
        ("one_class_s", pa.float64()),
        ("fit_s", pa.float64()),
        ("score_s", pa.float64()),
        ("total_s", pa.float64()),
        ("ae_images_per_s", pa.float64()),
        ("oc_images_per_s", pa.float64()),
        ("pack_size", pa.int64()),
        ("stage1_shared_by", pa.int64()),
        ("n_train", pa.int64()),
        ("n_val", pa.int64()),
        ("n_test", pa.int64()),
        ("device", pa.string()),
        ("hostname", pa.string()),
        ("node_id", pa.string()),
        ("trial_id", pa.string()),
        ("torch_version", pa.string()),
        ("cuda_version", pa.string()),
        ("code_version", pa.string()),
        ("started_at", pa.string()),
        ("ended_at", pa.string()),
    ]
)

STATUSES = ("ok", "diverged", "failed")


def _default(field: pa.Field):
    if pa.types.is_list(field.type):
        return []
    if pa.types.is_floating(field.type):
        return math.nan
    if pa.types.is_string(field.type):
        return ""
    return None


def run_table(row: dict) -> pa.Table:
    """One row as a table with exactly RUN_SCHEMA's columns; unknown keys are an error (schema drift is a bug)."""
    unknown = set(row) - set(RUN_SCHEMA.names)
    assert not unknown, f"columns missing from RUN_SCHEMA: {sorted(unknown)}"
    assert row.get("status") in STATUSES, f"status must be one of {STATUSES}, got {row.get('status')!r}"
    values = {f.name: [row.get(f.name, _default(f))] for f in RUN_SCHEMA}
    return pa.table(values, schema=RUN_SCHEMA)
