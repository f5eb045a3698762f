"""Warehouse: each Gold table loaded into ClickHouse, one whole day-partition swapped atomically per load."""


import re
from datetime import timedelta

import dagster as dg
import polars as pl
import pyarrow as pa

from assets import keys
from assets.automation import FOLLOW_GOLD
from assets.partitions import window
from assets.spec import GoldTable, StreamSpec
from resources.lake import LakeResource, LakeTable
from resources.locks import LockBusy
from resources.warehouse import WarehouseResource


def table_ddl(spec: StreamSpec, table: GoldTable) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {keys.warehouse_table(spec, table)} ({table.columns_ddl.strip()}\n) "
        f"ENGINE = MergeTree PARTITION BY toYYYYMMDD({table.time_column}) ORDER BY {table.order_by}"
        + (f" TTL {table.ttl}" if table.ttl else "")
    )


def rollup_ddl(spec: StreamSpec, table: GoldTable) -> list[str]:
    """Each rollup: its AggregatingMergeTree (monthly partitions) and the materialized view feeding it."""
    source = keys.warehouse_table(spec, table)
    out = []
    for r in table.rollups:
        out.append(
            f"CREATE TABLE IF NOT EXISTS {r.name} ({r.columns_ddl.strip()}\n) "
            f"ENGINE = AggregatingMergeTree PARTITION BY toYYYYMM({r.time_column}) ORDER BY {r.order_by}"
        )
        out.append(f"CREATE MATERIALIZED VIEW IF NOT EXISTS {r.name}_mv TO {r.name} AS {r.select.strip().format(source=source)}")
    return out


def all_ddl(spec: StreamSpec, table: GoldTable) -> list[str]:
    return [table_ddl(spec, table), *rollup_ddl(spec, table)]


def load_frame(table: GoldTable, rows: pl.DataFrame) -> pa.Table:
    """Gold rows as the Arrow table to insert: LowCardinality columns go over as dictionaries, which
    ClickHouse takes without re-hashing every string (measured ~2x faster inserts for the 5-minute table)."""
    low_card = [c for c in re.findall(r"(\w+)\s+LowCardinality\(String\)", table.columns_ddl) if c in rows.columns]
    if not low_card:
        return rows.to_arrow()
    # One chunk: an Arrow IPC stream allows a single dictionary per column, and a day's rows come from many files.
    return rows.with_columns(pl.col(low_card).cast(pl.Categorical)).to_arrow().combine_chunks()


def day_gold_keys(table: GoldTable, partition_key: str) -> tuple[str, list[str]]:
    """(ClickHouse partition id, the Gold partitions of that UTC day)."""
    start, _ = window(table.partitions, partition_key)
    day_start = start.replace(hour=0, minute=0, second=0, microsecond=0)
    day_keys = table.partitions.get_partition_keys_in_time_window(dg.TimeWindow(day_start, day_start + timedelta(days=1)))
    return day_start.strftime("%Y%m%d"), day_keys


def warehouse_lock(lake: LakeResource, spec: StreamSpec, table: GoldTable, day_id: str, wait_s: float | None = None):
    """Held while a day of a warehouse table is read from Gold and swapped (loads and erasures)."""
    return lake.stream_lock(spec.name, f"warehouse-{keys.warehouse_table(spec, table)}-{day_id}", wait_s=wait_s)


def load_day(spec: StreamSpec, table: GoldTable, lake: LakeResource, warehouse: WarehouseResource, day_id: str, gold_keys: list[str], gold_version: int | None = None) -> int:
    """Swap one day of the table for the Gold partitions of that day (as of Gold `gold_version`, default the
    latest), then refresh its rollups' month. The caller holds `warehouse_lock` for the day. Returns the rows loaded."""
    name = keys.warehouse_table(spec, table)
    warehouse.ensure_tables(all_ddl(spec, table))
    rows = lake.read("gold", spec.name, table.name, gold_keys, version=gold_version)
    loaded = warehouse.replace_partition(name, day_id, load_frame(table, rows)) if rows is not None else warehouse.drop_partition(name, day_id)
    # A partition swap fires no materialized view: re-run each rollup's view query for its month.
    month_id = day_id[:6]
    for r in table.rollups:
        month_rows = f"(SELECT * FROM {name} WHERE toYYYYMM({table.time_column}) = {month_id})"
        warehouse.replace_partition_from_query(r.name, month_id, r.select.strip().format(source=month_rows))
    return loaded


def build_warehouse_load(spec: StreamSpec, table: GoldTable) -> dg.AssetsDefinition:
    key = keys.warehouse_key(spec, table)
    name = keys.warehouse_table(spec, table)

    @dg.asset(
        key=key,
        deps=[keys.gold_key(spec, table)],
        partitions_def=table.partitions,
        automation_condition=FOLLOW_GOLD,
        group_name=keys.group(spec, "warehouse"),
        kinds={"clickhouse"},
        freshness_policy=table.freshness,
        owners=list(spec.owners),
        description=f"ClickHouse table `{name}` (MergeTree, partitioned by day): {table.description}",
        metadata={"table": name, "ddl": dg.MetadataValue.md("```sql\n" + ";\n\n".join(all_ddl(spec, table)) + "\n```")},
    )
    def load(context: dg.AssetExecutionContext, lake: LakeResource, warehouse: WarehouseResource):
        return load_partition(spec, table, lake, warehouse, context.partition_key)

    return load


def load_partition(spec: StreamSpec, table: GoldTable, lake: LakeResource, warehouse: WarehouseResource, partition_key: str, *, wait: bool = True) -> dg.MaterializeResult | None:
    """Load the day of a Gold partition into its warehouse table; None if (without `wait`) another process
    is loading that day."""
    day_id, gold_keys = day_gold_keys(table, partition_key)
    name = keys.warehouse_table(spec, table)
    # Read and swap under one lock: two hours of the same day loading at once must not lose either.
    gold = LakeTable("gold", spec.name, table.name)
    try:
        with warehouse_lock(lake, spec, table, day_id, wait_s=None if wait else 0):
            gold_version = lake.version(gold)  # one snapshot of Gold: recorded, so the load can be repeated
            loaded = load_day(spec, table, lake, warehouse, day_id, gold_keys, gold_version)
    except LockBusy:
        return None
    return dg.MaterializeResult(
        asset_key=keys.warehouse_key(spec, table),
        metadata={
            "dagster/row_count": loaded,
            "table": name,
            "clickhouse_partition": day_id,
            "gold_partitions_in_day": len(gold_keys),
            "warehouse": warehouse.mode,
            "lake/sources": dg.MetadataValue.json({gold.name: gold_version}),
        },
    )
