"""Headless orchestration: the real Kafka sensors and automation conditions decide, runs execute in process.

This is what the Dagster daemon does, in one loop, so `medallion demo`/`run` and the end-to-end tests
exercise the same decisions the UI shows, without a 5-second daemon interval.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import dagster as dg

from assets import keys
from assets import catch_up
from assets.catch_up import carried_keys, catch_up_job_name, catch_up_run_config
from assets.streams import STREAMS
from sensors.dead_runs import owner_tags


@dataclass
class DriveLog:
    ingest_runs: int = 0
    automation_runs: int = 0
    failed_runs: list[str] = field(default_factory=list)
    skip_reasons: list[str] = field(default_factory=list)


def _sensor_requests(sensor: dg.SensorDefinition, defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None, log: DriveLog):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources=defs.resources, definitions=defs)
    data = sensor.evaluate_tick(ctx)
    if data.skip_message:
        log.skip_reasons.append(f"{sensor.name}: {data.skip_message}")
    return data.run_requests or [], data.cursor


def _already_ran(instance: dg.DagsterInstance, sensor_name: str, run_key: str) -> bool:
    runs = instance.get_runs(
        filters=dg.RunsFilter(tags={"dagster/sensor_name": sensor_name, "dagster/run_key": run_key}), limit=1
    )
    return bool(runs)


def _execute(defs: dg.Definitions, instance: dg.DagsterInstance, sensor: dg.SensorDefinition, req: dg.RunRequest):
    """Run a sensor's request in this process, tagged like the daemon's launch (and with this process as owner)."""
    tags = {**req.tags, "dagster/sensor_name": sensor.name, "dagster/run_key": req.run_key, **owner_tags()}
    job = defs.resolve_job_def(req.job_name or sensor.job_name)
    return job.execute_in_process(
        run_config=_one_pass(req.run_config), instance=instance, tags=tags, partition_key=req.partition_key, raise_on_error=False,
        asset_selection=list(req.asset_selection) if req.asset_selection is not None else None,
    )  # fmt: skip


def _one_pass(run_config: dict) -> dict:
    """Requests run here one after another: a stream run would never hand back, so each ingest is one pass."""
    ops = {name: {**op, "config": {**op["config"], "stream_for_s": 0}} if "stream_for_s" in op.get("config", {}) else op for name, op in run_config.get("ops", {}).items()}
    return {**run_config, "ops": ops} if ops else run_config


def drive(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    streams=STREAMS,
    timeout_s: float = 600.0,
    settle_ticks: int = 2,
) -> DriveLog:
    """Tick sensors and automation until nothing is requested for `settle_ticks` rounds in a row."""
    log = DriveLog()
    automation_cursor = _stored_cursor(instance, CURSOR_KEY)
    if automation_cursor is None:
        # The first evaluation only establishes the cursor (as the daemon's first tick does): updates that
        # happen after it are what the conditions react to.
        automation_cursor = dg.evaluate_automation_conditions(defs=defs, instance=instance).cursor
        _store_cursor(instance, CURSOR_KEY, automation_cursor)
    quiet = 0
    deadline = time.monotonic() + timeout_s
    asset_job = defs.resolve_implicit_global_asset_job_def()
    partitions_of = {k: defs.resolve_assets_def(k).partitions_def for k in defs.resolve_asset_graph().materializable_asset_keys}
    # Dead runs first (their partitions would look in progress), then each stream's Kafka sensor, then the
    # history sensors (re-derivations a changed history calls for).
    names = ["recover_dead_runs", *(f"kafka_{s.name}" for s in streams), *(f"history_{s.name}" for s in streams if s.history is not None)]
    sensors = [defs.resolve_sensor_def(n) for n in names]
    stored = instance.run_storage.get_cursor_values({_sensor_key(s.name) for s in sensors})
    cursors = {s.name: stored.get(_sensor_key(s.name)) or None for s in sensors}
    while quiet < settle_ticks:
        if time.monotonic() > deadline:
            raise TimeoutError(f"pipeline did not settle within {timeout_s}s; last skip reasons: {log.skip_reasons[-3:]}")
        launched = 0
        moved = False  # a sensor that read on (a cursor that moved) may have more to read
        for sensor in sensors:
            requests, cursor = _sensor_requests(sensor, defs, instance, cursors.get(sensor.name), log)
            if cursor != cursors.get(sensor.name):
                moved = True
                cursors[sensor.name] = cursor
                instance.run_storage.set_cursor_values({_sensor_key(sensor.name): cursor or ""})
            for req in requests:
                if _already_ran(instance, sensor.name, req.run_key):
                    continue
                result = _execute(defs, instance, sensor, req)
                if sensor.name.startswith("kafka_"):
                    log.ingest_runs += 1
                else:
                    log.automation_runs += 1
                launched += 1
                if not result.success:
                    log.failed_runs.append(f"{sensor.name} {result.run_id}")

        evaluation = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=automation_cursor)
        automation_cursor = evaluation.cursor
        _store_cursor(instance, CURSOR_KEY, automation_cursor)
        # Like the daemon: one run per partition key, holding every asset requested for it (steps run in
        # dependency order, and a failed blocking check stops the steps below it).
        runs: dict[tuple, list[dg.AssetKey]] = defaultdict(list)
        for key, pdef in partitions_of.items():
            for pk in evaluation.get_requested_partitions(key):
                runs[(_grain_seconds(pdef), pk)].append(key)
        # A backlog of a stream's partitions goes in one run (assets/catch_up.py), before the rest.
        for spec in streams:
            result = _catch_up(defs, instance, spec, runs)
            if result is not None:
                log.automation_runs += 1
                launched += 1
                if not result.success:
                    log.failed_runs.append(f"{catch_up_job_name(spec)} {result.run_id}")
        # Finer partitions first: an hour's Silver before the day's rollup that reads it.
        for (_, pk), selection in sorted(runs.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
            result = asset_job.execute_in_process(
                instance=instance,
                partition_key=pk,
                asset_selection=selection,
                tags={"dagster/from_automation_condition": "true", "medallion/driver": "headless", **owner_tags()},
                raise_on_error=False,
            )
            log.automation_runs += 1
            launched += 1
            if not result.success:
                log.failed_runs.append(f"{[k.to_user_string() for k in selection]} {pk} {result.run_id}")
        quiet = quiet + 1 if launched == 0 and not moved else 0
    return log


def _catch_up(defs: dg.Definitions, instance: dg.DagsterInstance, spec, runs: dict[tuple, list[dg.AssetKey]]):
    """One run for every partition whose Silver automation asks for (with the same-grain Gold and warehouse
    loads asked for with it); they are taken out of `runs`. None if there are too few to be worth it."""
    silver, carried = keys.silver_key(spec), carried_keys(spec)
    backlog = [run for run, selection in runs.items() if silver in selection]
    if len(backlog) < catch_up.CATCH_UP_FROM:
        return None
    for run in backlog:
        runs[run] = [k for k in runs[run] if k not in carried]
        if not runs[run]:
            del runs[run]
    return defs.resolve_job_def(catch_up_job_name(spec)).execute_in_process(
        run_config=catch_up_run_config(spec, [pk for _, pk in backlog]),
        instance=instance,
        tags={"dagster/from_automation_condition": "true", "medallion/driver": "headless", **owner_tags()},
        raise_on_error=False,
    )


# Cursors are kept in the instance between runs of the driver, as the daemon keeps its own: updates made by
# a driver that was killed (a Bronze partition ingested, an hour's Silver published) are still followed by
# the next one, and a sensor reading an event log resumes where it stopped.
CURSOR_KEY = "medallion/headless_automation_cursor"


def _sensor_key(name: str) -> str:
    return f"medallion/headless_sensor_cursor/{name}"


def _stored_cursor(instance: dg.DagsterInstance, key: str):
    stored = instance.run_storage.get_cursor_values({key}).get(key)
    return dg.deserialize_value(stored) if stored else None


def _store_cursor(instance: dg.DagsterInstance, key: str, cursor) -> None:
    instance.run_storage.set_cursor_values({key: dg.serialize_value(cursor)})


def _grain_seconds(pdef) -> float:
    if not isinstance(pdef, dg.TimeWindowPartitionsDefinition):
        return 0.0
    first = pdef.get_first_partition_window()
    return (first.end - first.start).total_seconds()
