"""What `medallion lake` shows and does: every lake table, a partition's history, and rolling a partition back."""

from __future__ import annotations

from datetime import datetime, timezone

import dagster as dg

from assets import keys
from assets.promotion import LAKE_VERSION
from resources.delta import commit_metadata
from resources.lake import LakeResource, LakeTable, bronze_table, source_app_id


class LakeCommandError(Exception):
    """A `medallion lake` request that cannot be done as asked; nothing was changed."""


def table_rows(lake: LakeResource, streams) -> list[dict]:
    """One entry per table: name, uri, version (None: not written yet), rows, partition_by."""
    out = []
    for t in lake.tables(streams):
        dt = lake.open(t)
        out.append(
            {
                "name": t.name,
                "uri": lake.table_uri(t),
                "version": None if dt is None else dt.version(),
                "rows": 0 if dt is None else lake.count(t),
                "partition_by": [] if dt is None else list(dt.metadata().partition_columns),
            }
        )
    return out


def find_table(lake: LakeResource, streams, name: str) -> LakeTable:
    tables = {t.name: t for t in lake.tables(streams)}
    if name not in tables:
        raise LakeCommandError(f"no lake table {name!r}; `medallion lake` lists them ({', '.join(sorted(tables))})")
    return tables[name]


def partition_history(lake: LakeResource, t: LakeTable, partition_key: str | None) -> list[dict]:
    """The table's commits, newest first; with `partition_key`, those that wrote that partition."""
    dt = lake.open(t)
    if dt is None:
        return []
    out = []
    for entry in dt.history():
        meta = commit_metadata(entry) or {}
        touched = _touched(meta)
        if partition_key is not None and touched is not None and partition_key not in touched:
            continue  # commits that do not say which partitions they touched (erasures, maintenance) stay listed
        out.append(
            {
                "version": entry["version"],
                "at": datetime.fromtimestamp(entry["timestamp"] / 1000, timezone.utc).isoformat(timespec="seconds"),
                "operation": meta.get("operation", entry["operation"].lower()),
                "rows": meta.get("rows"),
                "run_id": meta.get("run_id"),
                "detail": {k: v for k, v in meta.items() if k in ("erasure_id", "from_version", "removed", "bronze_rows", "quarantined", "silver_version")},
            }
        )
    return out


def _touched(meta: dict) -> set[str] | None:
    if "partition" in meta:
        return {meta["partition"]}
    if "partitions" in meta:
        return set(meta["partitions"])
    return None


def rollback(lake: LakeResource, instance: dg.DagsterInstance | None, streams, t: LakeTable, partition_key: str, to_version: int) -> dict:
    """Publish the rows `partition_key` had in version `to_version` as a new version (history stays), and
    report it as a materialization so automation re-derives what depends on it."""
    if t.layer not in ("silver", "gold") or t.table == "history":
        raise LakeCommandError(f"{t.name}: only Silver and Gold partitions are rolled back (Bronze is the source; re-derive the rest)")
    current = lake.open(t)
    if current is None or to_version < 0 or to_version > current.version():
        raise LakeCommandError(f"{t.name} has no version {to_version} (latest: {None if current is None else current.version()})")
    try:
        rows = lake.read(t.layer, t.stream, t.table, [partition_key], version=to_version)
    except Exception as exc:  # noqa: BLE001 - vacuumed files: say so in one line
        raise LakeCommandError(f"{t.name} version {to_version} can no longer be read (vacuumed): {exc}") from exc
    if rows is None:
        raise LakeCommandError(f"{t.name} had no partition {partition_key} in version {to_version}")
    # Which source version the old rows hold all of is not known: the next derivation of it is a full one.
    source = bronze_table(t.stream) if t.layer == "silver" else LakeTable("silver", t.stream, "silver")
    version = lake.publish(
        t.layer, t.stream, t.table, partition_key, rows, {"operation": "rollback", "from_version": to_version}, transactions={source_app_id(source, partition_key): -1}
    )
    asset = _asset_key(streams, t)
    if instance is not None and asset is not None:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key=asset, partition=partition_key, metadata={LAKE_VERSION: version, "rolled_back_to": to_version, "dagster/row_count": rows.height})
        )
    return {"table": t.name, "partition": partition_key, "rolled_back_to": to_version, "version": version, "rows": rows.height}


def _asset_key(streams, t: LakeTable) -> dg.AssetKey | None:
    for s in streams:
        if s.name != t.stream:
            continue
        if t.layer == "silver":
            return keys.silver_key(s)
        for g in s.gold:
            if g.name == t.table:
                return keys.gold_key(s, g)
    return None

