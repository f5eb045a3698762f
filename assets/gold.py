"""Gold: aggregates of Silver (or, for a rollup, of a finer Gold table) per table of the stream spec, gated by
their contracts."""


import contextlib
from dataclasses import dataclass
from datetime import datetime, timezone

import dagster as dg
import polars as pl

from assets import keys
from assets.automation import FOLLOW_PARENTS, FOLLOW_PARENTS_ALLOW_GAPS
from assets.bronze import empty_bronze
from assets.contracts.gate import apply_contract
from assets.partitions import window
from assets.promotion import check_result, contract_check_spec, lake_metadata, sample_markdown
from assets.silver import derive_silver_rows
from assets.spec import GoldTable, SilverContext, StreamSpec
from assets.gold_windows import KEPT, KeptPartition, kept_windows, recompute
from assets.silver import BLOCKED, DEFERRED, PUBLISHED
from resources.faults import failpoint
from resources.locks import LockBusy
from resources.lake import CommitConflict, LakeResource, LakeTable
from resources.spark import SparkEngine
from resources.pii import pii_key
from resources.settings import PIPELINE_VERSION


def source_gold(spec: StreamSpec, table: GoldTable) -> GoldTable | None:
    """The Gold table a rollup folds (None: it is built from Silver)."""
    return next(t for t in spec.gold if t.name == table.source) if table.source else None


def source_table(spec: StreamSpec, table: GoldTable) -> LakeTable:
    """What a Gold table is built from: Silver, or for a rollup the Gold table it folds."""
    return LakeTable("gold", spec.name, table.source) if table.source else LakeTable("silver", spec.name, "silver")


def source_name(table: GoldTable) -> str:
    """How metadata names a Gold table's source ("silver", or the Gold table a rollup folds)."""
    return table.source or "silver"


def silver_keys_for(spec: StreamSpec, table: GoldTable, partition_key: str) -> list[str]:
    """The Silver partitions inside a Gold partition's time window (one for same-grain, 24 for daily over hourly)."""
    start, end = window(table.partitions, partition_key)
    return spec.partitions.get_partition_keys_in_time_window(dg.TimeWindow(start, end))


def source_keys_for(spec: StreamSpec, table: GoldTable, partition_key: str) -> list[str]:
    """The partitions of its source inside a Gold partition's time window."""
    source = source_gold(spec, table)
    if source is None:
        return silver_keys_for(spec, table, partition_key)
    start, end = window(table.partitions, partition_key)
    return source.partitions.get_partition_keys_in_time_window(dg.TimeWindow(start, end))


def gold_lock(lake: LakeResource, spec: StreamSpec, table: GoldTable, partition_key: str, wait_s: float | None = None):
    """Held while a Gold partition is derived from Silver and published (materializations and erasures)."""
    return lake.stream_lock(spec.name, f"gold-{table.name}-{partition_key.replace(':', '')}", wait_s=wait_s)


def silver_rows_for(spec: StreamSpec, table: GoldTable, lake: LakeResource, partition_key: str, version: int | None = None, columns: tuple[str, ...] = ()) -> tuple[list[str], pl.DataFrame]:
    """(the Silver partitions inside a Gold partition's window, their rows in Silver `version` (default: the
    latest); an empty Silver frame if none). `columns`: only these (default: every column)."""
    source_keys = silver_keys_for(spec, table, partition_key)
    silver_rows = lake.read("silver", spec.name, "silver", source_keys, version=version, columns=list(columns) or None)
    if silver_rows is None:
        silver_rows = empty_silver(spec, partition_key)
        silver_rows = silver_rows.select(columns) if columns else silver_rows
    return source_keys, silver_rows


def empty_silver(spec: StreamSpec, partition_key: str) -> pl.DataFrame:
    ctx = SilverContext(partition_key, datetime.now(timezone.utc), PIPELINE_VERSION, pii_key=pii_key() if spec.pii_fields else None)
    return derive_silver_rows(spec, empty_bronze(spec), None, ctx)


def gold_source(spec: StreamSpec, table: GoldTable, lake: LakeResource, partition_key: str, version: int | None = None, columns: tuple[str, ...] = ()) -> tuple[list[str], pl.DataFrame]:
    """(the source partitions a Gold partition reads, their rows in the source's `version` (default: the
    latest)): Silver's, or a rollup's source Gold table's (built from no Silver rows if it has none)."""
    source = source_gold(spec, table)
    if source is None:
        return silver_rows_for(spec, table, lake, partition_key, version, columns)
    source_keys = source_keys_for(spec, table, partition_key)
    rows = lake.read("gold", spec.name, source.name, source_keys, version=version, columns=list(columns) or None)
    if rows is None:
        rows = source.build(empty_silver(spec, source_keys[0]))
        rows = rows.select(columns) if columns else rows
    return source_keys, rows


def build_from_silver(spec: StreamSpec, table: GoldTable, silver_rows: pl.DataFrame) -> pl.DataFrame:
    """A Gold table's rows from Silver rows (a rollup through the table it folds): what its partition holds
    once the tables before it are derived from the same rows."""
    source = source_gold(spec, table)
    return table.build(source.build(silver_rows) if source is not None else silver_rows)


def gold_manifest(partition_key: str, source_keys: list[str], source_rows: int, source: str = "silver") -> dict:
    return {"partition": partition_key, f"{source}_partitions": source_keys, f"{source}_rows": source_rows}


ATTEMPTS = 3


@dataclass
class _Derived:
    source: LakeTable
    source_version: int | None
    source_files: set[str]
    source_keys: list[str]
    source_rows: int
    gold_snapshot: object  # DeltaTable | None: Gold as it was when the derivation began
    rows: pl.DataFrame
    engine: str
    read_from: str
    windows: dict | None = None  # the Silver rows of its newest windows, when a stream run keeps them


def _derive_windows(spec: StreamSpec, table: GoldTable, lake: LakeResource, pk: str, appended) -> "_Derived | None":
    """The partition with only the windows `appended` falls in computed again (None if it cannot be)."""
    if appended is None or appended.added is None or not (table.window and table.reads) or table.partitions != spec.partitions:
        return None
    gold_table = LakeTable("gold", spec.name, table.name)
    kept = KEPT.get((lake.table_uri(gold_table), pk))
    silver = LakeTable("silver", spec.name, "silver")
    gold_snapshot = lake.open(gold_table)
    silver_version = lake.version(silver)
    silver_files = lake.partition_files(silver, silver_version, [pk])
    if kept is None or silver_files != kept.silver_files | appended.added_files or not appended.added_files.isdisjoint(kept.silver_files):
        return None
    if gold_snapshot is None or lake.partition_files(gold_table, gold_snapshot.version(), [pk]) != kept.gold_files:
        return None
    done = recompute(table, kept, appended.added)
    if done is None:
        return None
    rows, windows, touched = done
    height = lake.partition_rows("silver", spec.name, "silver").get(pk, 0)
    failpoint("gold.after_read")
    return _Derived(silver, silver_version, silver_files, [pk], height, gold_snapshot, rows, "polars", f"{touched} windows recomputed from rows in memory", windows)


def _keep(lake: LakeResource, spec: StreamSpec, table: GoldTable, pk: str, derived: "_Derived", version: int) -> None:
    """Remember what was published, for the next micro-batch (stream runs only)."""
    gold_table = LakeTable("gold", spec.name, table.name)
    if derived.windows is None:
        KEPT.drop((lake.table_uri(gold_table), pk))
        return
    gold_files = lake.partition_files(gold_table, version, [pk])
    KEPT.put((lake.table_uri(gold_table), pk), KeptPartition(frozenset(derived.source_files), frozenset(gold_files), derived.rows, derived.windows))


def _derive(spec: StreamSpec, table: GoldTable, lake: LakeResource, spark: SparkEngine, pk: str, keep: bool = False) -> _Derived:
    """Build one Gold partition from one snapshot of its source (recorded), on the engine its size calls for."""
    source = source_table(spec, table)
    gold_snapshot = lake.open(LakeTable("gold", spec.name, table.name))
    source_version = lake.version(source)
    source_keys = source_keys_for(spec, table, pk)
    windows = None
    source_files = lake.partition_files(source, source_version, source_keys)
    counts = lake.partition_rows(source.layer, source.stream, source.table)
    source_rows = sum(counts.get(k, 0) for k in source_keys)  # from the log: only the engine that runs reads
    engine = "spark" if spec.uses_spark(table.spark_build, source_rows, spark.min_rows) else "polars"
    files = lake.file_uris(source, source_version, source_keys) if engine == "spark" and lake.local_root is not None else []
    read_from = f"{len(files)} data files of {source.name} v{source_version}" if files else "polars"
    if files:
        # Spark reads the snapshot's own data files; what it builds is published through delta-rs.
        rows = table.spark_build(spark.session(), spark.session().read.parquet(*files))
    else:
        # Only the columns the build reads (the hourly tables read ~40% of Silver's bytes).
        source_keys, rows_in = gold_source(spec, table, lake, pk, source_version, table.reads)
        source_rows = rows_in.height
        rows = table.spark_build(spark.session(), rows_in) if engine == "spark" else table.build(rows_in)
        if keep and table.window and table.reads and table.partitions == spec.partitions:
            windows = kept_windows(table, rows_in)
    failpoint("gold.after_read")
    return _Derived(source, source_version, source_files, source_keys, source_rows, gold_snapshot, rows, engine, read_from, windows)


def build_gold(spec: StreamSpec, table: GoldTable) -> dg.AssetsDefinition:
    key = keys.gold_key(spec, table)
    source = source_gold(spec, table)
    source_partitions = source.partitions if source is not None else spec.partitions
    same_grain = table.partitions == source_partitions

    @dg.asset(
        key=key,
        # A day's rollup reads the hours so far: the day's later hours do not exist yet (automation batches
        # requests into backfills, which would otherwise refuse the dependency).
        deps=[
            dg.AssetDep(
                keys.gold_key(spec, source) if source is not None else keys.silver_key(spec),
                partition_mapping=None if same_grain else dg.TimeWindowPartitionMapping(allow_nonexistent_upstream_partitions=True),
            )
        ],
        partitions_def=table.partitions,
        automation_condition=FOLLOW_PARENTS if same_grain else FOLLOW_PARENTS_ALLOW_GAPS,
        check_specs=[contract_check_spec(key, f"pandera {table.contract.__name__}: all rows or nothing is published.")],
        output_required=False,
        group_name=keys.group(spec, "gold"),
        kinds={"polars", "delta", "pandera"},
        freshness_policy=table.freshness,
        owners=list(spec.owners),
        description=table.description,
    )
    def gold(context: dg.AssetExecutionContext, lake: LakeResource, spark: SparkEngine):
        yield from gold_partition(context, spec, table, lake, spark, context.partition_key)

    return gold


def gold_partition(context, spec: StreamSpec, table: GoldTable, lake: LakeResource, spark: SparkEngine, pk: str, *, wait: bool = True, appended=None):
    """Derive one Gold partition from one snapshot of its source and publish it if its contract passes. Yields its
    check result and materialization; returns PUBLISHED, BLOCKED, or DEFERRED (without `wait`, another
    process holds it). `appended`: what this process just appended to the Silver partition (a stream run's
    micro-batch, `assets.silver.Outcome`): then only the windows it falls in are computed again, if they can be."""
    key = keys.gold_key(spec, table)
    # Read Silver and publish under one lock, so an erasure (which rewrites Silver and re-derives this
    # partition under the same lock) is never overwritten by rows read before it.
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(gold_lock(lake, spec, table, pk, wait_s=None if wait else 0))
        except LockBusy:
            return DEFERRED
        for attempt in range(1, ATTEMPTS + 1):
            derived = (_derive_windows(spec, table, lake, pk, appended) if attempt == 1 else None) or _derive(spec, table, lake, spark, pk, keep=appended is not None)
            verdict = apply_contract(derived.rows, table.contract)
            if not verdict.ok:
                break
            failpoint("gold.before_publish")
            try:
                # Optimistic across tables (no lock is shared between machines): the source's files must be those
                # read, and the Gold partition must be unchanged since it began (Delta checks that one).
                if lake.partition_files(derived.source, None, derived.source_keys) != derived.source_files:
                    raise CommitConflict(f"{derived.source.name} changed while {key.to_user_string()} {pk} was derived")
                version = lake.publish(
                    "gold", spec.name, table.name, pk, derived.rows,
                    {**gold_manifest(pk, derived.source_keys, derived.source_rows, source_name(table)), f"{source_name(table)}_version": derived.source_version},
                    snapshot=derived.gold_snapshot,
                )  # fmt: skip
                _keep(lake, spec, table, pk, derived, version)
                break
            except CommitConflict as exc:
                if attempt == ATTEMPTS:
                    raise dg.Failure(f"{exc}; gave up after {ATTEMPTS} attempts (another writer keeps changing it)") from exc
                context.log.warning(f"{exc}: deriving again from the new snapshot (attempt {attempt + 1})")
        rows, engine = derived.rows, derived.engine
        yield check_result(
            key, verdict.ok, rows.height, verdict.failed.height, verdict.failure_counts, None,
            verdict.schema_errors, sample_markdown(verdict.failed, list(rows.columns) + ["check", "reason"]),
        )  # fmt: skip
        if not verdict.ok:
            context.log.error(f"{key.to_user_string()} {pk} NOT published: {verdict.failure_counts} {verdict.schema_errors}")
            return BLOCKED
        read_from, source_rows, source_keys, source_version = derived.read_from, derived.source_rows, derived.source_keys, derived.source_version
    yield dg.MaterializeResult(
        asset_key=key,
        metadata={
            "dagster/row_count": rows.height,
            f"{source_name(table)}_rows": source_rows,
            f"{source_name(table)}_partitions_read": len(source_keys),
            "engine": engine,
            f"{source_name(table)}_read_by": read_from,
            **lake_metadata(lake, LakeTable("gold", spec.name, table.name), version, {source_table(spec, table).name: source_version}),
        },
    )
    return PUBLISHED
