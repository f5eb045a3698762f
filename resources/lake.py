"""The lake: one Delta Lake table per layer and stream (and per Gold table), written and read with delta-rs.

Tables, by the name `medallion lake` shows, under the lake URI (a local directory or `s3://bucket/prefix`):
    bronze_<stream>          bronze/<stream>                 raw records; Kafka offsets in app transactions
    dead_letter_<stream>     dead_letter/<stream>            records that could not be parsed, with why
    silver_<stream>          silver/<stream>/silver
    quarantine_<stream>      quarantine/<stream>/silver      rows set aside by the contracts, with why
    history_<stream>         silver/<stream>/history         what each Silver partition hands to the next
    gold_<stream>_<table>    gold/<stream>/<table>
Every table but dead-letter is partitioned by `partition_key` (the Dagster partition key). Beside them:
`_audit/<log>/` (one JSON object per entry) and `_erasure_requests/`.

Every write is data files first, then one commit (`resources/delta.py`): a partition is published by one
commit that replaces exactly that partition, so readers see the old or the new rows, and "the last good
partition keeps serving" is the previous version. Bronze commits carry each Kafka partition's next offset as
an app transaction `<topic>:<partition>`: the table's transaction versions are the committed offsets.
"""

from __future__ import annotations

import functools
import json
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional
from urllib.parse import unquote

import backoff
import dagster as dg
import polars as pl
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import DeltaTable
from pydantic import Field

from resources import delta
from resources.delta import COMMIT_KEY, PARTITION_COLUMN, CommitConflict, DataFiles, commit_metadata
from resources.faults import failpoint
from resources.recent import Recent
from resources.locks import exclusive_lock, shared_lock
from resources.settings import load_settings

@dataclass
class RowDelete:
    """Rows found for deletion in one table, their replacement files written, waiting for `commit`."""

    lake: "LakeResource"
    table: LakeTable
    snapshot: DeltaTable
    files: DataFiles
    removed: dict[str, int]  # partition ("" if unpartitioned) -> rows removed
    rows: pl.DataFrame  # the rows removed (without the partition column)

    def commit(self, metadata: dict) -> int:
        """One commit: the old files out, their remaining rows in. A concurrent rewrite of one of these files
        (compaction, another erasure) makes it fail with CommitConflict, changing nothing."""
        try:
            return self.lake.commit(self.table, self.files, snapshot=self.snapshot, metadata=metadata, empty_schema=delta.arrow_table(self.rows.head(0)).schema)
        except BaseException:
            self.files.discard()
            raise


class LakeUnavailableError(RuntimeError):
    """The object store did not answer within the retry budget; nothing was committed."""


_OUTAGE_SIGNS = ("NETWORK_CONNECTION", "Generic S3 error", "error sending request", "Connection refused", "connection refused",
                 "curlCode", "dns error", "timed out", "Couldn't connect")  # fmt: skip


# (table uri, version) -> that snapshot's add actions. A version's files never change (a later commit makes
# a new version), so a snapshot once opened is not opened again to list a partition's files: a micro-batch
# asks for the version it just read several times, and an open costs more as the table gains files.
SNAPSHOT_FILES = Recent(size=32)


def _outage_as_error(fn):
    """On an s3:// lake: retry the call with exponential backoff within `retry_timeout_s`, then raise one
    clear LakeUnavailableError (the run fails, or its retry policy tries again; nothing half-published)."""

    @functools.wraps(fn)
    def call(self, *args, **kwargs):
        if not self.is_s3:
            return fn(self, *args, **kwargs)

        def is_outage(exc: BaseException) -> bool:
            return isinstance(exc, OSError) and any(sign in str(exc) for sign in _OUTAGE_SIGNS)

        retrying = backoff.on_exception(backoff.expo, OSError, max_time=self.retry_timeout_s, giveup=lambda e: not is_outage(e), factor=0.5, max_value=5, logger=None)
        try:
            return retrying(fn)(self, *args, **kwargs)
        except OSError as exc:
            if not is_outage(exc):
                raise
            first = str(exc).strip().splitlines()[0][:200]
            raise LakeUnavailableError(
                f"object store {self.aws_endpoint_url or 'S3'} unreachable for {self.uri} ({first}); retried for "
                f"{self.retry_timeout_s} s. Nothing was committed: readers keep the previous version. Retry once it is back."
            ) from exc

    return call


__all__ = ["LakeResource", "LakeTable", "LakeUnavailableError", "CommitConflict", "PARTITION_COLUMN", "COMMIT_KEY"]


@dataclass(frozen=True)
class LakeTable:
    """One lake table: its layer, stream and table name (Silver's own table is named `silver`)."""

    layer: str
    stream: str
    table: str

    @property
    def name(self) -> str:
        if self.layer in ("bronze", "dead_letter"):
            return f"{self.layer}_{self.stream}"
        if self.layer == "gold":
            return f"gold_{self.stream}_{self.table}"
        if self.table == "silver":
            return f"{self.layer}_{self.stream}"
        return f"{self.table}_{self.stream}"

    @property
    def path(self) -> str:
        if self.layer in ("bronze", "dead_letter"):
            return f"{self.layer}/{self.stream}"
        return f"{self.layer}/{self.stream}/{self.table}"

    @property
    def partitioned(self) -> bool:
        return self.layer != "dead_letter"


def bronze_table(stream: str) -> LakeTable:
    return LakeTable("bronze", stream, "bronze")


def dead_letter_table(stream: str) -> LakeTable:
    return LakeTable("dead_letter", stream, "dead_letter")


def kafka_app_id(topic: str, kafka_partition: int) -> str:
    return f"{topic}:{kafka_partition}"


def source_app_id(source: LakeTable, partition_key: str) -> str:
    """A derived partition's app transaction: the version of `source` whose rows it holds all of."""
    return f"{source.name}@{partition_key}"


class LakeResource(dg.ConfigurableResource):
    """Delta Lake tables under `uri`: a local directory (embedded default) or `s3://bucket/prefix`."""

    uri: str = Field(default_factory=lambda: load_settings().lake_uri, description="lake location: a directory or s3://bucket/prefix")
    aws_endpoint_url: Optional[str] = Field(default=None, description="S3-compatible endpoint (MinIO, SeaweedFS); empty: AWS")
    aws_region: Optional[str] = None
    aws_access_key_id: Optional[str] = None
    aws_secret_access_key: Optional[str] = None
    aws_allow_http: bool = False
    retry_timeout_s: int = Field(default=30, description="object store: retry a failing request with backoff for this long, then fail")

    # -- where things are ---------------------------------------------------------------------------
    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    @property
    def storage_options(self) -> dict:
        if not self.is_s3:
            return {}
        opts = {
            "AWS_ENDPOINT_URL": self.aws_endpoint_url,
            "AWS_REGION": self.aws_region or "us-east-1",
            "AWS_ACCESS_KEY_ID": self.aws_access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.aws_secret_access_key,
            "AWS_SESSION_TOKEN": os.environ.get("AWS_SESSION_TOKEN") or None,  # temporary credentials (SSO, assumed roles)
            "AWS_ALLOW_HTTP": "true" if self.aws_allow_http else None,
            # Requests are retried with exponential backoff for a bounded time, then the operation fails.
            "retry_timeout": f"{self.retry_timeout_s}s",
            "backoff_config.init_backoff": "200ms",
            "backoff_config.max_backoff": "5s",
            "connect_timeout": "5s",
            # Commits are made safe by S3's conditional writes (put-if-absent), not by a lock service.
            "conditional_put": "etag",
        }
        return {k: v for k, v in opts.items() if v is not None}

    def scan(self, t: LakeTable, dt: DeltaTable) -> pl.LazyFrame:
        """A polars scan of snapshot `dt` of `t` (polars takes its own retry settings, as numbers)."""
        opts = {**self.storage_options, "max_retries": 10, "retry_timeout_ms": self.retry_timeout_s * 1000} if self.is_s3 else None
        return pl.scan_delta(self.table_uri(t), version=dt.version(), storage_options=opts)

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        """(pyarrow filesystem, the lake's root in it) for the data files, audit entries and requests."""
        if not self.is_s3:
            return pafs.LocalFileSystem(), self.uri.rstrip("/")
        endpoint = self.aws_endpoint_url or ""
        scheme = "http" if endpoint.startswith("http://") else "https"
        fs = pafs.S3FileSystem(
            access_key=self.aws_access_key_id,
            secret_key=self.aws_secret_access_key,
            session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
            region=self.aws_region or "us-east-1",
            endpoint_override=endpoint.split("://", 1)[-1] or None,
            scheme=scheme,
            allow_bucket_creation=False,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=max(2, self.retry_timeout_s // 3)),
            connect_timeout=5,
        )
        return fs, self.uri.removeprefix("s3://").rstrip("/")

    @property
    def local_root(self):
        """The lake directory of a local lake (None on object storage)."""
        from pathlib import Path

        return None if self.is_s3 else Path(self.uri)

    def table_uri(self, t: LakeTable) -> str:
        return f"{self.uri.rstrip('/')}/{t.path}"

    @_outage_as_error
    def open(self, t: LakeTable, version: int | None = None) -> DeltaTable | None:
        return delta.open_table(self.table_uri(t), self.storage_options, version)

    @_outage_as_error
    def ensure(self, t: LakeTable, file_schema) -> DeltaTable:
        """The table, created empty if missing: a writer that read "no table" could not tell another
        writer's first commit from its own."""
        return self.open(t) or delta.create_table(self.table_uri(t), self.storage_options, delta.table_schema(file_schema, t.partitioned), [PARTITION_COLUMN] if t.partitioned else None)

    def data_files(self, t: LakeTable) -> DataFiles:
        fs, root = self.filesystem()
        return DataFiles(fs, f"{root}/{t.path}")

    def commit(self, t: LakeTable, files: DataFiles, **kwargs) -> int:
        """One commit of `files` (see resources/delta.py). Not retried here: a commit that may have landed is
        checked in the log, never repeated blindly; an outage surfaces as LakeUnavailableError."""
        try:
            return self._commit(t, files, **kwargs)
        except OSError as exc:
            if self.is_s3 and any(sign in str(exc) for sign in _OUTAGE_SIGNS):
                raise LakeUnavailableError(
                    f"object store {self.aws_endpoint_url or 'S3'} unreachable for {self.uri} ({str(exc).strip().splitlines()[0][:200]}); "
                    "the commit was not made: readers keep the previous version. Retry once it is back."
                ) from exc
            raise

    def _commit(self, t: LakeTable, files: DataFiles, **kwargs) -> int:
        return delta.commit(self.table_uri(t), self.storage_options, files, partitioned=t.partitioned, **kwargs)

    def tables(self, streams) -> list[LakeTable]:
        """Every table the platform writes for `streams`, in layer order."""
        out = []
        for s in streams:
            out += [bronze_table(s.name), dead_letter_table(s.name), LakeTable("silver", s.name, "silver"), LakeTable("quarantine", s.name, "silver")]
            if s.history is not None:
                out.append(LakeTable("silver", s.name, "history"))
            out += [LakeTable("gold", s.name, g.name) for g in s.gold]
        return out

    # -- published partitions (Silver, quarantine, history, Gold) -----------------------------------
    @_outage_as_error
    def publish(
        self, layer: str, stream: str, table: str, partition_key: str, df: pl.DataFrame, manifest: dict,
        snapshot: DeltaTable | None = None, append: bool = False, transactions: dict[str, int] | None = None,
    ) -> int:  # fmt: skip
        """Replace one partition with `df` in one commit (its manifest in the commit metadata), or with
        `append` add `df` to it. Returns the Delta version that holds it. `snapshot`: the table as the writer
        saw it when it started deriving; a commit to that partition since then (an erasure elsewhere) fails
        this one with CommitConflict, and so does one that moved any of the same app `transactions`."""
        t = LakeTable(layer, stream, table)
        files = self.data_files(t)
        files.write(df, partition_key)
        failpoint(f"publish.{layer}.before_replace")
        failpoint(f"publish.{layer}.{table}.before_replace")  # one table only, e.g. publish.gold.type_daily.before_replace
        try:
            return self.commit(
                t, files, snapshot=snapshot, replace=None if append else [partition_key], transactions=transactions,
                metadata={"operation": "append" if append else "publish", **manifest, "partition": partition_key, "rows": df.height},
            )  # fmt: skip
        except BaseException:
            files.discard()
            raise

    def read(self, layer: str, stream: str, table: str, partition_keys: list[str], version: int | None = None, columns: list[str] | None = None) -> pl.DataFrame | None:
        """The rows of `partition_keys` (None if none of them is published)."""
        return self.read_table(LakeTable(layer, stream, table), partition_keys, version, columns)

    @_outage_as_error
    def read_table(self, t: LakeTable, partition_keys: list[str] | None, version: int | None = None, columns: list[str] | None = None, exclude: list[str] | None = None) -> pl.DataFrame | None:
        dt = self.open(t, version)
        if dt is None:
            return None
        if partition_keys is not None:
            present = set(self.partition_rows_of(dt))
            partition_keys = [k for k in partition_keys if k in present]
            if not partition_keys:
                return None
        frame = self.scan(t, dt)
        if partition_keys is not None:
            # Partition by partition, in the order asked for: the same rows always come in the same order
            # (a file order that changed with a rewrite would change float sums downstream in the last bit).
            frame = pl.concat([frame.filter(pl.col(PARTITION_COLUMN) == k) for k in partition_keys])
        if columns is not None:
            frame = frame.select(columns)
        else:
            frame = frame.drop([PARTITION_COLUMN, *(exclude or [])], strict=False)
        return frame.collect()

    @_outage_as_error
    def read_files(self, t: LakeTable, paths: list[str], exclude: list[str] | None = None) -> pl.DataFrame:
        """The rows of some of `t`'s data files (their paths as the log names them), in the order given."""
        opts = {**self.storage_options, "max_retries": 10} if self.is_s3 else None
        uris = [f"{self.table_uri(t)}/{p}" for p in paths]
        frame = pl.scan_parquet(uris, storage_options=opts, hive_partitioning=False)
        return frame.drop(exclude or [], strict=False).collect()

    @staticmethod
    def partition_rows_of(dt: DeltaTable) -> dict[str, int]:
        """Rows per partition of one snapshot, from the commit log (no data file is read)."""
        adds = delta.add_actions(dt)
        col = f"partition.{PARTITION_COLUMN}"
        if adds.height == 0 or col not in adds.columns:
            return {}
        return dict(adds.group_by(col).agg(pl.col("num_records").sum()).sort(col).iter_rows())

    @_outage_as_error
    def file_uris(self, t: LakeTable, version: int | None, partition_keys: list[str]) -> list[str]:
        """The data files of `partition_keys` in snapshot `version`: what an engine without a Delta reader
        (Spark here: the delta-spark jars cannot be fetched) reads to see exactly that snapshot."""
        dt = self.open(t, version)
        if dt is None or not partition_keys:
            return []
        return list(dt.file_uris([(PARTITION_COLUMN, "in", list(partition_keys))]))

    def _snapshot_files(self, t: LakeTable, dt: DeltaTable) -> pl.DataFrame:
        adds = delta.add_actions(dt)
        SNAPSHOT_FILES.put((self.table_uri(t), dt.version()), adds)
        return adds

    @_outage_as_error
    def partition_files(self, t: LakeTable, version: int | None, partition_keys: list[str]) -> set[str]:
        """The data files (log paths) of `partition_keys` in `version`: equal sets, same rows."""
        adds = None if version is None else SNAPSHOT_FILES.get((self.table_uri(t), version))
        if adds is None:
            dt = self.open(t, version)
            if dt is None:
                return set()
            adds = self._snapshot_files(t, dt)
        col = f"partition.{PARTITION_COLUMN}"
        if adds.height == 0 or col not in adds.columns:
            return set()
        return set(adds.filter(pl.col(col).is_in(list(partition_keys)))["path"].to_list())

    @_outage_as_error
    def partition_rows(self, layer: str, stream: str, table: str) -> dict[str, int]:
        dt = self.open(LakeTable(layer, stream, table))
        return {} if dt is None else self.partition_rows_of(dt)

    def published_keys(self, layer: str, stream: str, table: str) -> list[str]:
        """Partition keys holding a published partition, oldest first."""
        return sorted(self.partition_rows(layer, stream, table))

    def is_published(self, layer: str, stream: str, table: str, partition_key: str) -> bool:
        return partition_key in self.partition_rows(layer, stream, table)

    def count_rows(self, layer: str, stream: str, table: str) -> int:
        return self.count(LakeTable(layer, stream, table))

    @_outage_as_error
    def count(self, t: LakeTable) -> int:
        dt = self.open(t)
        if dt is None:
            return 0
        adds = delta.add_actions(dt)
        return int(adds["num_records"].sum()) if adds.height else 0

    @_outage_as_error
    def version(self, t: LakeTable) -> int | None:
        dt = self.open(t)
        if dt is None:
            return None
        self._snapshot_files(t, dt)  # the caller reads files of this version next, most often
        return dt.version()

    # -- Bronze ---------------------------------------------------------------------------------------
    def bronze_partition_keys(self, stream: str) -> list[str]:
        dt = self.open(bronze_table(stream))
        return [] if dt is None else sorted(self.partition_rows_of(dt))

    def read_bronze(self, stream: str, partition_key: str, exclude: list[str] | None = None, version: int | None = None) -> pl.DataFrame | None:
        return self.read_table(bronze_table(stream), [partition_key], version, exclude=exclude)

    @_outage_as_error
    def attach_bronze_payloads(self, stream: str, partition_key: str, rows: pl.DataFrame, version: int | None = None) -> pl.DataFrame:
        """`rows` (with kafka_partition/kafka_offset) plus their raw `payload`, read back from Bronze."""
        dt = self.open(bronze_table(stream), version)
        if dt is None or rows.height == 0:
            return rows.with_columns(pl.lit(None, pl.String).alias("payload"))
        wanted = rows.select("kafka_partition", "kafka_offset")
        payloads = (
            self.scan(bronze_table(stream), dt)
            .filter(pl.col(PARTITION_COLUMN) == partition_key)
            .select("kafka_partition", "kafka_offset", "payload")
            .join(wanted.lazy(), on=["kafka_partition", "kafka_offset"], how="semi")
            .unique(subset=["kafka_partition", "kafka_offset"], keep="first")
            .collect()
        )
        return rows.join(payloads, on=["kafka_partition", "kafka_offset"], how="left", maintain_order="left")

    def count_bronze(self, stream: str) -> int:
        return self.count(bronze_table(stream))

    def count_dead_letter(self, stream: str) -> int:
        return self.count(dead_letter_table(stream))

    def read_dead_letter(self, stream: str) -> pl.DataFrame | None:
        return self.read_table(dead_letter_table(stream), None)

    @_outage_as_error
    def committed_offsets(self, stream: str, topic: str, kafka_partitions: list[int], snapshot: DeltaTable | None = None) -> dict[int, int]:
        """Next offset to read per Kafka partition: Bronze's app transaction versions (0 if none)."""
        dt = snapshot if snapshot is not None else self.open(bronze_table(stream))
        out = {}
        for p in kafka_partitions:
            v = dt.transaction_version(kafka_app_id(topic, p)) if dt is not None else None
            out[p] = v or 0
        return out

    @_outage_as_error
    def commits(self, t: LakeTable, since_version: int = 0, operation: str | None = None) -> list[tuple[int, dict]]:
        """(version, metadata) of the platform's commits to `t` from `since_version` on, oldest first."""
        dt = self.open(t)
        if dt is None:
            return []
        out = []
        for entry in dt.history(limit=max(dt.version() - since_version + 1, 1)):
            meta = commit_metadata(entry)
            if meta is not None and entry["version"] >= since_version and (operation is None or meta.get("operation") == operation):
                out.append((entry["version"], meta))
        return sorted(out, key=lambda x: x[0])

    @_outage_as_error
    def latest_commit(self, t: LakeTable, operation: str, snapshot: DeltaTable | None = None) -> tuple[int, dict] | None:
        """The newest commit of `operation` (maintenance and erasures commit in between), newest pages first."""
        dt = snapshot if snapshot is not None else self.open(t)
        if dt is None:
            return None
        limit = 8
        while True:
            history = dt.history(limit=limit)  # newest first
            for entry in history:
                meta = commit_metadata(entry)
                if meta is not None and meta.get("operation") == operation:
                    return entry["version"], meta
            if len(history) < limit:
                return None
            limit *= 8

    @_outage_as_error
    def partition_times(self, t: LakeTable) -> dict[str, int]:
        """Per partition, when its newest data file was written (ms since the epoch, from the commit log)."""
        dt = self.open(t)
        if dt is None:
            return {}
        adds = delta.add_actions(dt)
        col = f"partition.{PARTITION_COLUMN}"
        if adds.height == 0 or col not in adds.columns:
            return {}
        stamp = adds["modification_time"]
        adds = adds.with_columns(stamp.cast(pl.Int64) if stamp.dtype.is_integer() else stamp.dt.epoch("ms"))
        return dict(adds.group_by(col).agg(pl.col("modification_time").max()).iter_rows())

    def remove(self, t: LakeTable) -> None:
        """Delete a table with its history (a reset of the embedded stack, never a normal operation)."""
        fs, root = self.filesystem()
        uri = self.table_uri(t)
        SNAPSHOT_FILES.drop_where(lambda key: key[0] == uri)  # a table created again reuses its versions
        try:
            fs.delete_dir(f"{root}/{t.path}")
        except (FileNotFoundError, OSError):
            pass

    # -- rewriting rows in place (erasure): one commit per table ------------------------------------
    @_outage_as_error
    def plan_delete(self, t: LakeTable, mask, columns: list[str] | None = None, prefilter: pl.Expr | None = None, partitions: set[str] | None = None) -> "RowDelete | None":
        """Write the files that replace every data file of `t` holding rows `mask(frame)` selects (the rest of
        their rows), without committing. Candidates: files in `partitions`, and files with a row matching
        `prefilter` (on `columns` only); every file when neither is given. None: no such row."""
        dt = self.open(t)
        if dt is None:
            return None
        fs, root = self.filesystem()
        base = f"{root}/{t.path}"
        adds = delta.add_actions(dt)
        col = f"partition.{PARTITION_COLUMN}"
        files = self.data_files(t)
        removed: dict[str, int] = {}
        hits: list[pl.DataFrame] = []
        for row in adds.iter_rows(named=True):
            partition = row.get(col)
            path = f"{base}/{unquote(row['path'])}"
            if prefilter is not None or partitions is not None:
                candidate = partitions is not None and partition in partitions
                if not candidate and prefilter is not None:
                    probe = pl.from_arrow(pq.read_table(path, columns=columns, filesystem=fs))
                    candidate = probe.filter(prefilter).height > 0
                if not candidate:
                    continue
            frame = pl.from_arrow(pq.read_table(path, filesystem=fs))
            hit = mask(frame)
            if not hit.any():
                continue
            keep = frame.filter(~hit)
            if keep.height:
                files.write(keep, partition)
            files.remove(unquote(row["path"]), row["size_bytes"], partition)  # as on disk, like an add
            removed[partition or ""] = removed.get(partition or "", 0) + frame.height - keep.height
            hits.append(frame.filter(hit))
        if not files.removes:
            return None
        return RowDelete(self, t, dt, files, removed, pl.concat(hits, how="vertical_relaxed"))

    @_outage_as_error
    def vacuum_all_versions(self, t: LakeTable) -> int:
        """Remove every file no longer in the latest version: earlier versions can no longer be read (time
        travel must not bring back erased rows). Returns the files removed."""
        dt = self.open(t)
        if dt is None:
            return 0
        return len(dt.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False))

    # -- small objects beside the tables: audit entries, requests, markers (local files or S3 objects) -
    @_outage_as_error
    def put_object(self, rel: str, body: bytes, private: bool = False) -> None:
        """Store `body` at `rel` under the lake, whole or not at all. `private`: owner-only on a local disk."""
        fs, root = self.filesystem()
        final = f"{root}/{rel}"
        if self.is_s3:
            with fs.open_output_stream(final) as f:  # an S3 PUT is atomic
                f.write(body)
            return
        fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
        tmp = f"{final.rsplit('/', 1)[0]}/.{uuid.uuid4().hex}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)

    @_outage_as_error
    def get_object(self, rel: str) -> bytes | None:
        fs, root = self.filesystem()
        try:
            with fs.open_input_stream(f"{root}/{rel}") as f:
                return f.read()
        except FileNotFoundError:
            return None

    @_outage_as_error
    def list_objects(self, prefix: str, suffix: str = ".json") -> list[str]:
        """Names (without the prefix) of the objects directly under `prefix`, sorted."""
        fs, root = self.filesystem()
        infos = fs.get_file_info(pafs.FileSelector(f"{root}/{prefix}", allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix) and not i.base_name.startswith("."))

    @_outage_as_error
    def delete_object(self, rel: str) -> None:
        fs, root = self.filesystem()
        try:
            fs.delete_file(f"{root}/{rel}")
        except FileNotFoundError:
            pass

    # -- audit logs: one object per entry (object storage has no appends) ---------------------------
    def append_audit(self, name: str, entry: dict) -> None:
        """Store one entry; durable once this returns (a new object, never a rewrite)."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        self.put_object(f"_audit/{name}/{stamp}-{uuid.uuid4().hex[:8]}.json", json.dumps(entry, sort_keys=True, default=str).encode())

    def read_audit(self, name: str) -> list[dict]:
        return [json.loads(self.get_object(f"_audit/{name}/{n}")) for n in self.list_objects(f"_audit/{name}")]

    # -- locks ------------------------------------------------------------------------------------------
    def lock_path(self, stream: str, name: str = "ingest"):
        """Locks are per machine (under MEDALLION_HOME), the lake may be shared: two machines never share a
        lock, so nothing may depend on one for correctness."""
        return load_settings().home / "locks" / _lock_name(self.uri) / f"{stream}.{name}.lock"

    def stream_lock(self, stream: str, name: str = "ingest", shared: bool = False, wait_s: float | None = None):
        """Serialize writers of one stream on this machine (e.g. a backfill racing a sensor-triggered run):
        they wait, not fail. It saves work a commit conflict would throw away; correctness rests on Delta's
        commit checks. `shared`: many holders at once, none while an exclusive holder works (e.g.
        derivations vs an erasure)."""
        path = self.lock_path(stream, name)
        return shared_lock(path) if shared else exclusive_lock(path, wait_s)


def _lock_name(uri: str) -> str:
    import hashlib

    return hashlib.sha256(uri.encode()).hexdigest()[:16]

