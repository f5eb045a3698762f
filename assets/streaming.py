"""What a stream run does with each micro-batch once Bronze has committed it: Silver, Gold and the warehouse
for the partitions it touched, in the same process, reported as the same materializations and checks the
assets' own runs report.

The run's own partition (the open hour, or the hour current when it took over) is carried through whatever
it takes. Other partitions (late data) are carried only if Silver can extend them; one that needs a full
derivation, or that another process is deriving right now, is left to declarative automation, which sees
its Bronze materialization like any other.
A rollup of a Gold table (the day folded from its 5-minute rows) follows that table's partitions in the same
micro-batch: its cost is the day's 5-minute rows, not the day's readings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator

import dagster as dg

from assets.gold import gold_partition
from assets.promotion import freshness_metadata
from assets.silver import DEFERRED, PUBLISHED, SilverConfig, silver_partition
from assets.spec import GoldTable, StreamSpec
from assets.warehouse import ensure_warehouse_tables, load_locked, warehouse_lock, warehouse_partition
from resources.locks import LockBusy


def as_event(result, partition: str):
    """A result an asset's own run would report, as an event any step may log for that asset and partition."""
    if isinstance(result, dg.MaterializeResult):
        return dg.AssetMaterialization(asset_key=result.asset_key, partition=partition, metadata=result.metadata)
    if isinstance(result, dg.AssetCheckResult):
        return dg.AssetCheckEvaluation(
            asset_key=result.asset_key, check_name=result.check_name, passed=result.passed, metadata=result.metadata,
            severity=result.severity, description=result.description, blocking=True,
        )  # fmt: skip
    return result


def _relay(results, partition: str):
    """Yield the events of a partition generator (silver_partition, gold_partition); return its outcome."""
    while True:
        try:
            result = next(results)
        except StopIteration as done:
            return done.value
        yield as_event(result, partition)


def gold_partition_of(spec: StreamSpec, table: GoldTable, silver_partition_key: str) -> str:
    """The Gold partition a Silver partition falls in (itself, or its day for a daily rollup)."""
    if table.partitions == spec.partitions:
        return silver_partition_key
    start = spec.partitions.time_window_for_partition_key(silver_partition_key).start
    return table.partitions.get_partition_key_for_timestamp(start.timestamp())


def carry_to_gold(context, spec: StreamSpec, lake, spark, touched: list[str], in_full: Collection[str], *, wait: bool = False, rollups: bool = True):
    """Carry `touched` (oldest first: each partition's history is the one before it) through Silver and
    same-grain Gold, and (with `rollups`) the rollups of those Gold tables; those in `in_full` are derived in
    full if they cannot be extended. Without `wait`, a partition another process is deriving is left to
    automation. Yields their events; returns the Gold partitions published ((table, key), ...) and the
    newest Kafka timestamp they carry."""
    published: list[tuple[GoldTable, str]] = []
    newest = None
    for pk in touched:
        outcome = yield from _relay(silver_partition(context, spec, SilverConfig(), lake, spark, pk, in_full=pk in in_full, wait=wait), pk)
        if outcome.status == DEFERRED:
            context.log.info(f"silver {pk}: left to automation (it needs a full derivation, or another run is deriving it)")
        if outcome.status != PUBLISHED:
            continue
        if outcome.newest_kafka_time is not None:
            newest = max(newest or outcome.newest_kafka_time, outcome.newest_kafka_time)
        for table in spec.gold:
            if table.source is not None or table.partitions != spec.partitions:
                # A rollup of a Gold table follows it below. A rollup of Silver over many partitions (a day)
                # costs what the day holds: inline it would stall the stream as the day fills; automation
                # follows it (at most once a minute).
                continue
            gpk = gold_partition_of(spec, table, pk)
            if (yield from _relay(gold_partition(context, spec, table, lake, spark, gpk, wait=wait, appended=outcome), gpk)) == PUBLISHED:
                published.append((table, gpk))
    for table in spec.gold if rollups else ():
        if table.source is None:
            continue
        # Each of its partitions once, whatever number of its source's partitions this batch published.
        for gpk in dict.fromkeys(gold_partition_of(spec, table, spk) for t, spk in published if t.name == table.source):
            if (yield from _relay(gold_partition(context, spec, table, lake, spark, gpk, wait=wait), gpk)) == PUBLISHED:
                published.append((table, gpk))
    return published, newest


LOADS_PER_SESSION = 24  # a day of hours


def load_warehouse(spec: StreamSpec, lake, warehouse, published: list[tuple[GoldTable, str]], newest, *, wait: bool = False, offsets: dict[int, int] | None = None) -> Iterator:
    """Load the warehouse partitions of published Gold partitions, each once, and report a load of each Gold
    partition; without `wait`, one another process is loading is left to automation. `offsets` (a stream
    run's): Bronze's committed Kafka offsets after the batch, reported as `kafka_offsets`: every record of a
    loaded partition below them is in its load."""
    parts: dict[tuple[str, str], list[tuple[GoldTable, str]]] = {}
    for table, gpk in published:
        parts.setdefault((table.name, warehouse_partition(table, gpk)[0]), []).append((table, gpk))
    if not parts:
        return
    for table in {t.name: t for t, _ in published}.values():
        ensure_warehouse_tables(spec, table, lake, warehouse)
    # Partitions' locks first (in one order: the stream's tables, then partition ids, as an erasure takes
    # them), then one warehouse session for their loads, so chDB opens once per chunk: a load holds its lock
    # before the warehouse, and waiting for a lock while holding the warehouse would invert that order. In
    # chunks, so a backfill of months holds neither thousands of locks nor the warehouse for minutes.
    order = {t.name: i for i, t in enumerate(spec.gold)}
    todo = sorted(parts.items(), key=lambda kv: (order[kv[0][0]], kv[0][1]))
    loaded = []
    for chunk in (todo[i : i + LOADS_PER_SESSION] for i in range(0, len(todo), LOADS_PER_SESSION)):
        with contextlib.ExitStack() as held:
            ready = []
            for (_, partition_id), group in chunk:
                try:
                    held.enter_context(warehouse_lock(lake, spec, group[0][0], partition_id, wait_s=None if wait else 0))
                except LockBusy:
                    continue  # another process is loading it: left to automation
                ready.append(group)
            if ready:
                with warehouse.client():
                    loaded += [(group, load_locked(spec, group[0][0], lake, warehouse, group[0][1])) for group in ready]
    for group, result in loaded:
        for _, gpk in dict.fromkeys(group):
            # Kafka -> visible in ClickHouse, for the newest record carried.
            metadata = {**result.metadata, **freshness_metadata(newest)}
            if offsets is not None:
                metadata["kafka_offsets"] = dg.MetadataValue.json({str(kp): o for kp, o in sorted(offsets.items())})
            yield as_event(dg.MaterializeResult(asset_key=result.asset_key, metadata=metadata), gpk)


def follower(spec: StreamSpec):
    """`follow` for `build_bronze(spec, follow)`: carries the partitions a micro-batch touched downstream."""

    def follow(context, lake, warehouse, spark, touched: list[str], in_full: Collection[str], offsets: dict[int, int]) -> Iterator:
        published, newest = yield from carry_to_gold(context, spec, lake, spark, touched, in_full)
        yield from load_warehouse(spec, lake, warehouse, published, newest, offsets=offsets)

    return follow
