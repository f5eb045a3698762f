"""Asset keys and group names of a stream, in one place (sensors and the CLI use them too)."""

from __future__ import annotations

import dagster as dg

from assets.spec import GoldTable, StreamSpec


def topic_key(spec: StreamSpec) -> dg.AssetKey:
    return dg.AssetKey(f"topic_{spec.name}")


def bronze_key(spec: StreamSpec) -> dg.AssetKey:
    return dg.AssetKey(f"bronze_{spec.name}")


def silver_key(spec: StreamSpec) -> dg.AssetKey:
    return dg.AssetKey(f"silver_{spec.name}")


def gold_key(spec: StreamSpec, table: GoldTable) -> dg.AssetKey:
    return dg.AssetKey(f"gold_{spec.name}_{table.name}")


def warehouse_key(spec: StreamSpec, table: GoldTable) -> dg.AssetKey:
    return dg.AssetKey(f"warehouse_{spec.name}_{table.name}")


def warehouse_table(spec: StreamSpec, table: GoldTable) -> str:
    return f"{spec.name}_{table.name}"


def group(spec: StreamSpec, layer: str) -> str:
    return f"{spec.name}_{layer}"


def ingest_job_name(spec: StreamSpec) -> str:
    return f"ingest_{spec.name}"
