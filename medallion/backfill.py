"""Backfill a time range: every selected partitioned asset, partition by partition, in dependency order.

Each run is an ordinary Dagster run (visible in the UI), so contracts, checks and locks apply exactly as for
automation-launched runs. Inputs come from the lake only. Where a stream's Silver, same-grain Gold and
warehouse loads are all selected over several partitions, they go in one catch-up run (assets/catch_up.py).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timezone

import dagster as dg

from assets import catch_up
from assets.catch_up import carried_keys, catch_up_job_name, catch_up_run_config
from assets.streams import STREAMS
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


def backfill(defs: dg.Definitions, instance: dg.DagsterInstance, start: str, end: str, selection: list[str] | None = None, say=lambda _: None, streams=STREAMS):
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
    tags = {"medallion/backfill": f"{start}...{end}", **owner_tags()}
    results = []
    # Finer partitions first: hourly Silver/Gold feed daily rollups.
    for pid in sorted(groups, key=lambda i: _width(pdefs[i])):
        pdef, selected = pdefs[pid], groups[pid]
        keys_in_range = pdef.get_partition_keys_in_time_window(dg.TimeWindow(lo.astimezone(timezone.utc), hi.astimezone(timezone.utc)))
        for spec in streams:
            # A stream's Silver with its same-grain Gold and loads, over several partitions: one catch-up run.
            carried = carried_keys(spec)
            if spec.partitions != pdef or not carried <= set(selected) or len(keys_in_range) < catch_up.CATCH_UP_FROM:
                continue
            result = defs.resolve_job_def(catch_up_job_name(spec)).execute_in_process(
                run_config=catch_up_run_config(spec, keys_in_range), instance=instance, tags=tags, raise_on_error=False
            )
            say(f"{keys_in_range[0]} … {keys_in_range[-1]}: {'ok' if result.success else 'FAILED'} ({len(keys_in_range)} partitions of "
                f"{', '.join(sorted(k.to_user_string() for k in carried))} in one run)")  # fmt: skip
            results.append(result)
            selected = [k for k in selected if k not in carried]
        for pk in keys_in_range if selected else []:
            result = job.execute_in_process(instance=instance, partition_key=pk, asset_selection=selected, tags=tags, raise_on_error=False)
            say(f"{pk}: {'ok' if result.success else 'FAILED'} ({', '.join(k.to_user_string() for k in selected)})")
            results.append(result)
    return results


def _width(pdef: dg.TimeWindowPartitionsDefinition) -> float:
    first = pdef.get_first_partition_window()
    return (first.end - first.start).total_seconds()
