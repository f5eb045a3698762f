"""Delta Lake plumbing shared by every lake table: data files first, then one commit that makes them visible.

A writer puts Parquet files into the table's location (`DataFiles`), then `commit` adds them in one Delta
commit (an append, or an overwrite of the partitions it names), optionally with app transactions (Kafka
offsets) and commit metadata. A writer that dies before its commit leaves files no version references:
readers never see them and vacuum removes them. Concurrent commits are checked by delta-rs: an app
transaction another writer moved, or a partition replaced meanwhile, fails the commit (`CommitConflict`);
non-conflicting ones are retried on a fresh snapshot.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import quote

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Transaction
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.transaction import AddAction, RemoveAction

PARTITION_COLUMN = "partition_key"
COMMIT_KEY = "medallion"  # commit metadata: what a commit did, as the writer tells it (JSON)


# No min/max statistics in the log: they would copy values (a subject's id) into log files that an erasure
# cannot rewrite. Partitions prune reads instead.
# The log is kept for years: Bronze's ingest commits carry the stream's totals and continuity marks, and
# `medallion lake history` reads it (checkpoints keep loading it cheap).
# A checkpoint every 10 commits, not delta-rs's 100: opening a table replays every JSON commit since the last
# one (~0.35 ms each here), and a stream run opens its tables ~15 times per micro-batch (measured: 48% of a
# stream run's time under load was opening tables; an open at 1,000 files is 6-10 ms instead of up to 42 ms).
TABLE_PROPERTIES = {
    "delta.dataSkippingNumIndexedCols": "0",
    "delta.logRetentionDuration": "interval 3650 days",
    "delta.checkpointInterval": "10",
}


class CommitConflict(RuntimeError):
    """Another writer committed what this commit depended on (same Kafka range, same partition) first."""


def delta_frame(df: pl.DataFrame) -> pl.DataFrame:
    """`df` with types Delta can hold: unsigned ints widened to signed, categoricals and views as strings,
    all-null columns as strings."""
    casts = {}
    for name, dtype in df.schema.items():
        if dtype in (pl.UInt8, pl.UInt16):
            casts[name] = pl.Int32
        elif dtype in (pl.UInt32, pl.UInt64):
            casts[name] = pl.Int64
        elif dtype == pl.Null or isinstance(dtype, (pl.Categorical, pl.Enum)):
            casts[name] = pl.String
    return df.cast(casts) if casts else df


def arrow_table(df: pl.DataFrame) -> pa.Table:
    table = delta_frame(df).to_arrow()
    # polars may hand out string views; Parquet readers of every engine take plain large strings.
    fields = [pa.field(f.name, pa.large_string() if f.type == pa.string_view() else f.type, f.nullable) for f in table.schema]
    return table.cast(pa.schema(fields))


def partition_dir(value: str) -> str:
    """The Hive-style directory of a partition, escaped as delta-rs does (`:` -> `%3A`)."""
    return f"{PARTITION_COLUMN}={quote(value, safe='-_.')}"


@dataclass
class DataFiles:
    """Parquet files written into one table's location, waiting for the commit that adds them."""

    filesystem: pafs.FileSystem
    base: str  # the table's location as `filesystem` names it
    adds: list[AddAction] = field(default_factory=list)
    removes: list[RemoveAction] = field(default_factory=list)  # files this commit replaces (a rewrite)
    schema: pa.Schema | None = None

    def path_for(self, partition: str | None) -> tuple[str, str]:
        """(where to write, the path the commit names) of a new file in `partition`."""
        name = f"part-{uuid.uuid4().hex}.zstd.parquet"
        rel = f"{partition_dir(partition)}/{name}" if partition is not None else name
        return f"{self.base}/{rel}", rel

    def write(self, df: pl.DataFrame, partition: str | None) -> None:
        table = arrow_table(df.drop(PARTITION_COLUMN, strict=False))
        path, rel = self.path_for(partition)
        self.make_parent(path)
        pq.write_table(table, path, filesystem=self.filesystem, compression="zstd", compression_level=1)
        self.add(path, rel, partition, table.schema, table.num_rows)

    def open_writer(self, schema: pa.Schema, partition: str | None) -> "StreamingFile":
        path, rel = self.path_for(partition)
        self.make_parent(path)
        return StreamingFile(self, path, rel, partition, schema)

    def make_parent(self, path: str) -> None:
        # Object stores have no directories (on S3 this would leave empty marker objects in the table).
        if not isinstance(self.filesystem, pafs.S3FileSystem):
            self.filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)

    def add(self, path: str, rel: str, partition: str | None, schema: pa.Schema, rows: int) -> None:
        size = self.filesystem.get_file_info(path).size
        values = {PARTITION_COLUMN: partition} if partition is not None else {}
        # Only the row count: wrong min/max statistics would make readers skip rows; none makes them read all.
        # The path as it is on disk: delta-rs escapes it for the log itself.
        self.adds.append(AddAction(rel, size, values, int(time.time() * 1000), True, json.dumps({"numRecords": rows})))
        self.schema = self.schema or schema

    def remove(self, path: str, size: int, partition: str | None) -> None:
        """Take a committed file (its path as the log names it) out of the table in this commit."""
        values = {PARTITION_COLUMN: partition} if partition is not None else None
        self.removes.append(RemoveAction(path, True, int(time.time() * 1000), size, values))

    def discard(self) -> None:
        """Remove the files after a failure (best effort: vacuum removes any left behind)."""
        for a in self.adds:
            try:
                self.filesystem.delete_file(f"{self.base}/{a.path}")
            except OSError:
                pass
        self.adds.clear()


class StreamingFile:
    """One Parquet file written a block at a time (Bronze ingest holds one block in memory, not all)."""

    def __init__(self, files: DataFiles, path: str, rel: str, partition: str | None, schema: pa.Schema):
        self.files, self.path, self.rel, self.partition = files, path, rel, partition
        self.rows = 0
        self._writer = pq.ParquetWriter(path, schema, filesystem=files.filesystem, compression="zstd", compression_level=1)

    def write(self, df: pl.DataFrame) -> None:
        table = arrow_table(df.drop(PARTITION_COLUMN, strict=False)).cast(self._writer.schema)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        self._writer.close()
        self.files.add(self.path, self.rel, self.partition, self._writer.schema, self.rows)

    def abort(self) -> None:
        try:
            self._writer.close()
            self.files.filesystem.delete_file(self.path)
        except Exception:  # noqa: BLE001 - best effort while an earlier error propagates (vacuum removes leftovers)
            pass


def table_schema(file_schema: pa.Schema, partitioned: bool) -> pa.Schema:
    return file_schema.append(pa.field(PARTITION_COLUMN, pa.large_string())) if partitioned else file_schema


def commit(
    uri: str,
    storage_options: dict,
    files: DataFiles,
    *,
    partitioned: bool,
    snapshot: DeltaTable | None = None,
    replace: list[str] | None = None,
    transactions: dict[str, int] | None = None,
    metadata: dict | None = None,
    empty_schema: pa.Schema | None = None,
) -> int:
    """One commit adding `files` (replacing the partitions in `replace`, if given) with the app
    `transactions` and `metadata`. `snapshot` is the table as the writer read it: a commit another writer's
    commit conflicts with since then raises CommitConflict. Returns the new version."""
    schema = files.schema or empty_schema
    if schema is None:
        raise ValueError("a commit without files needs the table schema")
    # An id of this commit attempt: after any error, the log tells whether the commit landed all the same
    # (an S3 write that timed out but succeeded, an interrupt right after) so its files are never discarded.
    commit_id = uuid.uuid4().hex
    props = CommitProperties(
        custom_metadata={COMMIT_KEY: json.dumps({**(metadata or {}), "commit_id": commit_id}, default=str, sort_keys=True)},
        app_transactions=[Transaction(app_id, version) for app_id, version in sorted((transactions or {}).items())] or None,
    )
    full_schema = table_schema(schema, partitioned)
    partition_by = [PARTITION_COLUMN] if partitioned else None
    table = snapshot if snapshot is not None else open_table(uri, storage_options)
    if table is None:
        table = create_table(uri, storage_options, full_schema, partition_by)
    try:
        if replace is None:
            table.create_write_transaction([*files.adds, *files.removes], mode="append", schema=full_schema, partition_by=partition_by, commit_properties=props)
        else:
            # One replaced partition is a predicate overwrite: readers see the old rows or the new, never both.
            filters = [(PARTITION_COLUMN, "in", replace)] if len(replace) > 1 else [(PARTITION_COLUMN, "=", replace[0])]
            table.create_write_transaction(files.adds, mode="overwrite", schema=full_schema, partition_by=partition_by, partition_filters=filters, commit_properties=props)
    except BaseException as exc:
        landed = _landed(uri, storage_options, commit_id)
        if landed is not None:
            return landed
        if isinstance(exc, CommitFailedError):
            raise CommitConflict(f"{uri}: {exc}") from exc
        raise
    landed = _landed(uri, storage_options, commit_id)
    if landed is None:
        raise RuntimeError(f"{uri}: commit {commit_id} reported success but is not in the log")
    return landed


def _landed(uri: str, storage_options: dict, commit_id: str) -> int | None:
    """The version of commit `commit_id` if it is in the log (the newest entries first), else None."""
    table = open_table(uri, storage_options)
    if table is None:
        return None
    limit = 4
    while True:
        history = table.history(limit=limit)
        for entry in history:
            if (commit_metadata(entry) or {}).get("commit_id") == commit_id:
                return entry["version"]
        if len(history) < limit or limit >= 4096:
            return None
        limit *= 8


def create_table(uri: str, storage_options: dict, schema: pa.Schema, partition_by: list[str] | None) -> DeltaTable:
    try:
        return DeltaTable.create(uri, schema, partition_by=partition_by, mode="ignore", storage_options=storage_options, configuration=TABLE_PROPERTIES)
    except Exception:  # noqa: BLE001 - another writer created it at the same moment: use theirs
        table = open_table(uri, storage_options)
        if table is None:
            raise
        return table


def add_actions(dt: DeltaTable) -> pl.DataFrame:
    """The snapshot's data files: path (as the log names it), size_bytes, modification_time, num_records,
    and `partition.<column>`."""
    return pl.DataFrame(pa.table(dt.get_add_actions(flatten=True)))


def open_table(uri: str, storage_options: dict, version: int | None = None) -> DeltaTable | None:
    try:
        return DeltaTable(uri, version=version, storage_options=storage_options)
    except TableNotFoundError:
        return None


def commit_metadata(entry: dict) -> dict | None:
    """What `commit` recorded under COMMIT_KEY in one `DeltaTable.history()` entry (None if another writer's)."""
    raw = entry.get(COMMIT_KEY)
    if raw is None:
        return None
    return json.loads(raw) if isinstance(raw, str) else raw
