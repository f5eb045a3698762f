"""A stream is declared by one `StreamSpec`; the factories in `assets.factory` build everything else from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import dagster as dg
import pandera.polars as pa
import polars as pl


@dataclass(frozen=True)
class FieldSpec:
    """A field of the wire format. Bronze extracts it from the JSON payload with its type checked."""

    name: str
    kind: Literal["string", "number"]
    required: bool = True


@dataclass(frozen=True)
class GoldTable:
    """One Gold aggregate: how to build it from Silver, its contract, and its ClickHouse table."""

    name: str
    description: str
    partitions: dg.TimeWindowPartitionsDefinition
    build: Callable[[pl.DataFrame], pl.DataFrame]
    contract: type[pa.DataFrameModel]
    time_column: str  # the column ClickHouse partitions by (at the grain of `partitions`: hour or day)
    columns_ddl: str  # ClickHouse column list (may end with INDEX clauses)
    order_by: str
    spark_build: Callable | None = None  # (spark session, silver rows) -> the same rows as `build`
    rollups: tuple["Rollup", ...] = ()  # AggregatingMergeTree tables fed from this one by materialized views
    ttl: str | None = None  # ClickHouse TTL expression, e.g. "day + INTERVAL 400 DAY"
    # Shown in the UI (Gold and its warehouse table): FAIL when not updated for 15 minutes, WARN after 5.
    freshness: dg.FreshnessPolicy | None = dg.FreshnessPolicy.time_window(fail_window=timedelta(minutes=15), warn_window=timedelta(minutes=5))
    # The time windows its rows aggregate (a polars duration: "5m", "1h"; `time_column` holds each window's
    # start) and the Silver columns `build` reads. With both, a stream run recomputes only the windows a
    # micro-batch falls in, from Silver rows it keeps in memory (`assets/gold_windows.py`).
    window: str | None = None
    reads: tuple[str, ...] = ()
    # Optional, with `window`: (state or None, a window's new Silver rows) -> (state, the window's Gold rows as
    # `build` gives them for all its rows). A stream run then keeps each window's state instead of its rows
    # and never aggregates a window again (an hour's window would otherwise be the whole partition).
    extend_window: Callable | None = None
    # A rollup of another Gold table of the stream (its `name`, of a finer grain), built from that table's rows
    # in its time window instead of Silver's: a day of 5-minute rows, not a day of readings. `reads` then
    # names the source table's columns.
    source: str | None = None


@dataclass(frozen=True)
class Rollup:
    """An AggregatingMergeTree table fed from a Gold table by a materialized view.

    `select` reads `{source}` and must return the rollup's columns with `*State` aggregates, grouped by its
    key. The view keeps the rollup current for plain INSERTs into the source; the platform's loads swap whole
    partitions (which fire no view), so each load re-runs the same `select` for the swapped partition.
    """

    name: str
    columns_ddl: str
    order_by: str
    time_column: str
    select: str


@dataclass(frozen=True)
class SubjectSpec:
    """Whose data a stream's records are, for erasure requests (`medallion erase --subject <kind>:<id>`).

    `field` is the wire field holding the subject's identifier (raw in Bronze and dead-letter). Silver,
    Gold and the quarantine hold it in `silver_column` (the same name unless the transform renames it), as
    its keyed pseudonym when `field` is one of the stream's `pii_fields`, else as the raw value.
    """

    kind: str  # what the subject is called on the command line: "user", "sensor"
    field: str
    silver_column: str | None = None  # defaults to `field`

    @property
    def column(self) -> str:
        return self.silver_column or self.field


@dataclass(frozen=True)
class History:
    """What a Silver partition hands to the partitions after it, for rules that look back in time (a rolling
    z-score over each sensor's previous readings, attribution to an earlier impression).

    `carry(previous, silver_rows, partition_end)` returns the history as of the end of a partition from the
    history before it (None if there is none) and the partition's published Silver rows, e.g. each sensor's
    last 100 readings. The platform stores it beside each Silver partition and hands the latest one before a
    partition to the Silver transform as its `context`. A partition looks back at most `lookback` for it;
    when a re-derivation changes a partition's history, the next partition with data is re-derived by the
    `history_<stream>` sensor, and so on until a history comes out unchanged.
    """

    carry: Callable[[pl.DataFrame | None, pl.DataFrame, datetime], pl.DataFrame]
    lookback: timedelta  # at least one partition long
    columns: tuple[str, ...]  # the history's columns (subject erasure filters them like Silver)
    # Silver columns the look-back is grouped by (each sensor; each user and ad), in event-time order: a new
    # row after every published row of its group changes none of them, so a micro-batch of such rows
    # extends the partition instead of re-deriving it (`assets.transforms.increment`).
    group: tuple[str, ...] = ()


@dataclass(frozen=True)
class SilverOutput:
    """What a stream's Silver transform returns: the rows to publish and the rows it set aside."""

    rows: pl.DataFrame
    rejected: pl.DataFrame  # same columns as the input + `check`, `reason`
    duplicates_dropped: int


@dataclass(frozen=True)
class StreamSpec:
    name: str
    description: str
    topic: str
    kafka_partitions: int
    fields: tuple[FieldSpec, ...]
    event_time_field: str
    key_field: str  # what the Kafka message key must equal
    dedup_key: str  # one Silver row per value: the first by Kafka partition/offset
    partitions: dg.TimeWindowPartitionsDefinition
    row_contract: type[pa.DataFrameModel]  # row-level checks: failing rows are quarantined
    silver_contract: type[pa.DataFrameModel]  # the published Silver frame's invariants (all-or-nothing)
    # (deduplicated valid rows, context, ctx) -> SilverOutput; the platform has already deduplicated on `dedup_key`.
    silver_transform: Callable[[pl.DataFrame, pl.DataFrame | None, "SilverContext"], SilverOutput]
    gold: tuple[GoldTable, ...]
    max_failure_rate: float = 0.05  # above this share of quarantined rows, the partition is not published
    history: History | None = None  # carried from partition to partition; the transform's `context`
    max_message_bytes: int = 64 * 1024
    future_tolerance: timedelta = timedelta(minutes=5)
    owners: tuple[str, ...] = ("team:data-platform",)
    # (spark session, valid rows, context, ctx) -> the same SilverOutput as `silver_transform`. Used for
    # partitions of at least `SparkEngine.min_rows` Bronze rows, or always/never with engine="spark"/"polars".
    spark_silver_transform: Callable | None = None
    engine: Literal["auto", "polars", "spark"] = "auto"
    pii_fields: tuple[str, ...] = ()  # raw values stay in Bronze; Silver/quarantine see keyed pseudonyms
    subject: SubjectSpec | None = None  # the data subject of each record: what `medallion erase` removes
    # Events for `medallion demo` / `simulate`: (config, stats) -> iterator of (key, value) bytes.
    simulator: Callable | None = None
    # The bad-input corpus for `medallion demo --bad-input N`: (tag, max_message_bytes) -> list of BadInput.
    bad_input: Callable | None = None

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.topic}.dlq"

    @property
    def extends_incrementally(self) -> bool:
        """Silver partitions grow by micro-batches (else every new batch re-derives its partition)."""
        return self.history is None or bool(self.history.group)

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    def uses_spark(self, spark_transform: Callable | None, rows: int, min_rows: int) -> bool:
        if spark_transform is None or self.engine == "polars":
            return False
        return self.engine == "spark" or rows >= min_rows


@dataclass(frozen=True)
class SilverContext:
    partition_key: str
    processed_at: object  # datetime
    pipeline_version: str
    pii_key: bytes | None = None  # the HMAC key for `StreamSpec.pii_fields`
