"""Backfill a time range: every selected partitioned asset, partition by partition, in dependency order.

Each run is an ordinary Dagster run of the asset job (visible in the UI), so contracts, checks and
locks apply exactly as for automation-launched runs. Inputs come from the lake only.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timezone

import dagster as dg

from sensors.automation import LAYERS
from sensors.dead_runs import owner_tags


def _parse_bound(key: str) -> dg.TimeWindow:
    for fmt_defs in (dg.HourlyPartitionsDefinition(start_date="2000-01-01-00:00"), dg.DailyPartitionsDefinition(start_date="2000-01-01")):
        try:
            return fmt_defs.time_window_for_partition_key(key)
        except Exception:  # noqa: BLE001 - try the next key format
            continue
    raise ValueError(f"{key!r} is neither an hourly (YYYY-MM-DD-HH:00) nor a daily (YYYY-MM-DD) partition key")


def default_selection(defs: dg.Definitions) -> list[dg.AssetKey]:
    """Every asset in a Silver, Gold or warehouse group (the groups the automation sensors cover)."""
    graph = defs.resolve_asset_graph()
    return [k for k in graph.materializable_asset_keys if (graph.get(k).group_name or "").rsplit("_", 1)[-1] in LAYERS]


def backfill(defs: dg.Definitions, instance: dg.DagsterInstance, start: str, end: str, selection: list[str] | None = None, say=lambda _: None):
    lo, hi = _parse_bound(start).start, _parse_bound(end).end
    graph = defs.resolve_asset_graph()
    keys = [dg.AssetKey(k) for k in selection] if selection else default_selection(defs)
    pdefs: dict[int, dg.TimeWindowPartitionsDefinition] = {}
    groups: dict[int, list[dg.AssetKey]] = defaultdict(list)
    for k in keys:
        pdef = graph.get(k).partitions_def
        if not isinstance(pdef, dg.TimeWindowPartitionsDefinition):
            raise ValueError(f"{k.to_user_string()} is not time-partitioned")
        pdefs[id(pdef)] = pdef
        groups[id(pdef)].append(k)
    job = defs.resolve_implicit_global_asset_job_def()
    results = []
    # Finer partitions first: hourly Silver/Gold feed daily rollups.
    for pid in sorted(groups, key=lambda i: _width(pdefs[i])):
        pdef = pdefs[pid]
        keys_in_range = pdef.get_partition_keys_in_time_window(dg.TimeWindow(lo.astimezone(timezone.utc), hi.astimezone(timezone.utc)))
        for pk in keys_in_range:
            result = job.execute_in_process(
                instance=instance, partition_key=pk, asset_selection=groups[pid], tags={"medallion/backfill": f"{start}...{end}", **owner_tags()}, raise_on_error=False
            )
            say(f"{pk}: {'ok' if result.success else 'FAILED'} ({', '.join(k.to_user_string() for k in groups[pid])})")
            results.append(result)
    return results


def _width(pdef: dg.TimeWindowPartitionsDefinition) -> float:
    first = pdef.get_first_partition_window()
    return (first.end - first.start).total_seconds()
