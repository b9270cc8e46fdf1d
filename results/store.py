"""The results store of one sweep: a folder (local path or any URI pyarrow opens, e.g. s3://bucket/sweeps/x).

    <root>/
      runs/<run_key>.parquet     one row per finished run (results.schema.RUN_SCHEMA); its presence = run done
      scores/<run_key>.parquet   per-sample scores: split, item, label, score, layer_<k>
      curves/<run_key>.parquet   per-epoch curves: stage, epoch, loss, lr, radius_<k>
      selected/<name>.json       the configuration a sweep chose for a class (written by the search phase)
      sweep.json                 the command line, code version, start time
      tune/                      Ray Tune's experiment folders (written by Ray, used to restore)

Every file is written under a temporary dot-name and renamed, scores and curves before the run row, so a run is
visible only when all of it is there and a killed writer leaves nothing that a reader picks up.

    >>> store = ResultsStore("/tmp/sweeps/demo")         # doctest: +SKIP
    >>> store.load()[["class_name", "test_auc"]]         # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import PurePosixPath

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from results.schema import RUN_SCHEMA, run_table

MANIFEST = "sweep.json"


class StoreError(RuntimeError):
    """A problem with a results folder that the user can fix; the message says how."""


def join_uri(root: str, *parts: str) -> str:
    """`root` with path parts appended; a URI keeps its query, which pyarrow reads as filesystem options:

    >>> join_uri("s3://bucket/sweeps?endpoint_override=127.0.0.1:9000&scheme=http", "digits")
    's3://bucket/sweeps/digits?endpoint_override=127.0.0.1:9000&scheme=http'
    >>> join_uri("sweeps/", "digits")
    'sweeps/digits'
    """
    base, sep, query = root.partition("?") if "://" in root else (root, "", "")
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)]) + sep + query


def open_filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI such as s3://bucket/prefix."""
    if "://" in root and not root.startswith("file://"):
        try:
            return pafs.FileSystem.from_uri(root)
        except (pa.ArrowInvalid, OSError) as exc:
            raise StoreError(f"cannot open storage {root!r} ({exc}): check the URI and credentials") from exc
    path = root.removeprefix("file://")
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


class ResultsStore:
    def __init__(self, root: str):
        self.uri = root
        self.fs, self.root = open_filesystem(root)

    # -- paths -------------------------------------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return str(PurePosixPath(self.root, *parts))

    def _list(self, folder: str, suffix: str) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(self._path(folder), allow_not_found=True)
        infos = self.fs.get_file_info(selector)
        return sorted(
            (
                i
                for i in infos
                if i.type == pafs.FileType.File and i.base_name.endswith(suffix) and i.base_name[0] != "."
            ),
            key=lambda i: i.base_name,
        )

    def exists(self) -> bool:
        return self.fs.get_file_info(self.root).type == pafs.FileType.Directory

    def check_reachable(self) -> None:
        """Raise StoreError when the storage cannot be reached (endpoint, credentials) or its bucket is missing, so a
        sweep fails in one sentence before it starts anything instead of in every worker."""
        try:
            kind = self.fs.get_file_info(self.root).type
            if kind == pafs.FileType.File:
                raise StoreError(f"storage {self.uri!r} is a file, not a folder: pass another --storage or --name")
            if self.fs.type_name == "local":
                folder = self.root  # the folder itself or the nearest existing one above it, where it will be made
                while not os.path.exists(folder):
                    folder = os.path.dirname(folder)
                if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
                    raise StoreError(f"cannot write storage {self.uri!r} in {folder}: pass a --storage folder you own")
            elif kind == pafs.FileType.NotFound and self.fs.type_name in ("s3", "gcs"):
                bucket = self.root.split("/", 1)[0]
                if self.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                    raise StoreError(f"bucket {bucket!r} of storage {self.uri!r} does not exist: create it first")
        except OSError as exc:
            reason = str(exc).splitlines()[0][:200]
            raise StoreError(
                f"cannot reach storage {self.uri!r} ({reason}): check the URI, its endpoint and your credentials"
            ) from exc

    # -- atomic writes -------------------------------------------------------------------------------------------
    def _write_bytes(self, relative: str, payload: bytes) -> None:
        final = self._path(relative)
        parent = str(PurePosixPath(final).parent)
        self.fs.create_dir(parent, recursive=True)
        tmp = str(PurePosixPath(parent, f".tmp-{uuid.uuid4().hex}-{PurePosixPath(final).name}"))
        with self.fs.open_output_stream(tmp) as out:
            out.write(payload)
        self.fs.move(tmp, final)

    @staticmethod
    def _parquet_bytes(table: pa.Table) -> bytes:
        sink = io.BytesIO()
        pq.write_table(table, sink)
        return sink.getvalue()

    def write_run(self, row: dict, scores: pd.DataFrame | None = None, curves: pd.DataFrame | None = None) -> bool:
        """Store one finished run; returns False (and writes nothing) when its key is already stored."""
        key = row["run_key"]
        if self.has_run(key):
            return False
        for folder, frame in (("scores", scores), ("curves", curves)):
            if frame is not None and not frame.empty:
                table = pa.Table.from_pandas(frame, preserve_index=False)
                self._write_bytes(f"{folder}/{key}.parquet", self._parquet_bytes(table))
        self._write_bytes(f"runs/{key}.parquet", self._parquet_bytes(run_table(row)))
        return True

    def write_json(self, relative: str, payload: dict) -> None:
        self._write_bytes(relative, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, relative: str) -> dict | None:
        path = self._path(relative)
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as f:
            try:
                return json.loads(f.read().decode())
            except ValueError as exc:
                raise StoreError(f"{path} is not valid JSON ({exc}): delete it and run the command again") from exc

    # -- reads -----------------------------------------------------------------------------------------------------
    def has_run(self, key: str) -> bool:
        return self.fs.get_file_info(self._path("runs", f"{key}.parquet")).type == pafs.FileType.File

    def read_run(self, key: str) -> dict | None:
        """The stored row of run `key`, or None when it is not in the store."""
        if not self.has_run(key):
            return None
        return self._conform(self._path("runs", f"{key}.parquet")).to_pylist()[0]

    def done_keys(self) -> set[str]:
        return {i.base_name.removesuffix(".parquet") for i in self._list("runs", ".parquet")}

    def _read_table(self, path: str) -> pa.Table:
        try:
            with self.fs.open_input_file(path) as f:
                return pq.read_table(f)
        except (pa.ArrowInvalid, OSError) as exc:
            raise StoreError(
                f"{path} is not a readable Parquet file ({exc}): delete it and re-run the sweep to recompute that run"
            ) from exc

    def _conform(self, path: str) -> pa.Table:
        """A stored run row with RUN_SCHEMA's columns: a column added to the schema after the file was written is
        filled with nulls, so sweeps written by older versions stay readable."""
        table = self._read_table(path)
        for field in RUN_SCHEMA:
            if field.name not in table.column_names:
                table = table.append_column(field, pa.nulls(len(table), field.type))
        try:
            return table.select(RUN_SCHEMA.names).cast(RUN_SCHEMA)
        except (pa.ArrowException, ValueError) as exc:
            raise StoreError(f"{path} does not match the run schema ({exc}): delete it and re-run the sweep") from exc

    def load(self) -> pd.DataFrame:
        """Every run of the sweep as one DataFrame with RUN_SCHEMA's columns (empty when there are none)."""
        tables = [self._conform(i.path) for i in self._list("runs", ".parquet")]
        table = pa.concat_tables(tables) if tables else RUN_SCHEMA.empty_table()
        return table.to_pandas()

    def _load_per_run(self, folder: str, keys) -> pd.DataFrame:
        wanted = None if keys is None else set(keys)
        frames = [
            self._read_table(i.path).to_pandas()
            for i in self._list(folder, ".parquet")
            if wanted is None or i.base_name.removesuffix(".parquet") in wanted
        ]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def load_scores(self, keys=None) -> pd.DataFrame:
        """Per-sample scores of the given run keys (all runs when None)."""
        return self._load_per_run("scores", keys)

    def load_curves(self, keys=None) -> pd.DataFrame:
        return self._load_per_run("curves", keys)

    def selections(self) -> list[dict]:
        """The configurations the sweep's search phases chose, one per (dataset, class, boundary)."""
        found = [self.read_json(f"selected/{i.base_name}") for i in self._list("selected", ".json")]
        return [s for s in found if s]

    def manifest(self) -> dict | None:
        return self.read_json(MANIFEST)

    def delete(self) -> None:
        """Remove the whole sweep folder; refuses a folder that is not a sweep (no sweep.json)."""
        if not self.exists():
            return
        if self.manifest() is None:
            raise StoreError(f"{self.root} exists but is not a sweep folder (no {MANIFEST}): choose another --name")
        self.fs.delete_dir(self.root)


def load(root: str) -> pd.DataFrame:
    """All runs of the sweep at `root` as one pandas DataFrame."""
    store = ResultsStore(root)
    if not store.exists():
        raise StoreError(f"no sweep at {root}: run `python -m engine.sweep DATASET` first or check the path")
    return store.load()
