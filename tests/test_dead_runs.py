"""A run whose process died (real SIGKILL) is found at the next sensor tick, marked failed with the reason,
and what it had not materialized is requested again: ingest, automation and backfill runs alike."""

import os
import signal
import socket
import subprocess
from datetime import datetime, timedelta, timezone

import dagster as dg
import polars as pl
import pytest

from sensors.dead_runs import OWNER_HOST_TAG, OWNER_PID_TAG, OWNER_STARTED_TAG, RunProcess, owner_tags, process_started, run_process
from tests.conftest import produce, reading, run_child, start_held_child
from tests.helpers import definitions, run_ingest, sensor_tick

T = datetime(2026, 11, 20, 5, 10, tzinfo=timezone.utc)
PK = "2026-11-20-05:00"
A = dg.AssetKey


def tick(defs, instance, name="recover_dead_runs"):
    ctx = dg.build_sensor_context(instance=instance, resources=defs.resources, definitions=defs)
    return defs.resolve_sensor_def(name).evaluate_tick(ctx)


def execute(defs, instance, request: dg.RunRequest):
    job = defs.resolve_job_def(request.job_name)
    return job.execute_in_process(instance=instance, partition_key=request.partition_key, asset_selection=list(request.asset_selection), tags=request.tags)


def started_runs(instance):
    return instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))


def assert_marked_dead(instance, run_id: str):
    run = instance.get_run_by_id(run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert run.tags["medallion/died"] == "true"
    assert run.tags["dagster/will_retry"] == "false"  # Dagster's run retries (on in this instance) do not redo it too
    [failure] = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert "died without reporting an end" in failure.message and "pid" in failure.message


def warehouse_count(wh, table="iot_sensor_5m") -> int:
    return wh.query_arrow(f"SELECT sum(count) AS n FROM {table}").column("n")[0].as_py() or 0


def test_a_process_is_alive_only_while_its_pid_and_start_match():
    me = owner_tags()
    assert RunProcess(os.getpid(), me[OWNER_STARTED_TAG], None).alive()
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert process_started(gone.pid) is None
    assert "no live process" in RunProcess(gone.pid, None, None).why_dead()
    # Our pid, but another process's start: the pid was reused, the run's process is gone.
    boot, ticks = me[OWNER_STARTED_TAG].split("/")
    assert "another process" in RunProcess(os.getpid(), f"{boot}/{int(ticks) - 100}", None).why_dead()
    assert "another process" in RunProcess(os.getpid(), f"another-boot/{ticks}", None).why_dead()
    # A pid the engine reported long before this process existed is not this process; a clock stepped by
    # a minute is not mistaken for that.
    started = process_started(os.getpid())
    assert "started 600 s after" in RunProcess(os.getpid(), None, started - 600).why_dead()
    assert RunProcess(os.getpid(), None, started - 60).alive()


def test_runs_of_another_host_or_container_are_never_judged(instance):
    job = dg.GraphDefinition("noop", node_defs=[]).to_job()
    ours = owner_tags()[OWNER_HOST_TAG]
    for host in (f"not-{socket.gethostname()}/{ours.split('/', 1)[1]}", f"{socket.gethostname()}/pid:[1]"):
        run = instance.create_run_for_job(job, tags={OWNER_PID_TAG: "1", OWNER_HOST_TAG: host})
        assert run_process(instance, run) is None, host
    assert run_process(instance, instance.create_run_for_job(job, tags={**owner_tags()})) is not None


@pytest.mark.slow
def test_killed_automation_run_is_failed_and_its_unfinished_partitions_requested(spec, resources, broker, shared_instance, kafka):
    instance = shared_instance
    lake, wh = resources["lake"], resources["warehouse"]
    defs = definitions(spec, resources)
    produce(kafka, spec.topic, [reading(i, T + timedelta(seconds=i), sensor=i % 3) for i in range(90)])
    assert run_ingest(defs, spec, instance).success
    chain = "silver_iot,gold_iot_sensor_5m,warehouse_iot_sensor_5m"
    crashed = run_child(spec, resources, broker, "assets", chain, PK, failpoint="publish.gold.before_replace")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    [dead] = started_runs(instance)  # stuck: nothing else would ever end it
    cursor = dg.evaluate_automation_conditions(defs=defs, instance=instance).cursor
    assert not dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor).get_requested_partitions(A("gold_iot_sensor_5m"))

    result = tick(defs, instance)
    assert_marked_dead(instance, dead.run_id)
    [request] = result.run_requests  # Silver was materialized before the kill: only Gold and its load again
    assert request.partition_key == PK and request.job_name == "rederive_hourly"
    assert set(request.asset_selection) == {A("gold_iot_sensor_5m"), A("warehouse_iot_sensor_5m")}
    assert request.tags["medallion/recovers"] == dead.run_id
    assert execute(defs, instance, request).success
    assert lake.read("gold", spec.name, "sensor_5m", [PK])["count"].sum() == 90 == warehouse_count(wh)
    assert not tick(defs, instance).run_requests  # requested once


@pytest.mark.slow
def test_killed_ingest_run_resumes_in_bronze_and_gets_its_silver_gold_and_loads_again(spec, resources, broker, shared_instance, kafka):
    instance = shared_instance
    lake, wh = resources["lake"], resources["warehouse"]
    defs = definitions(spec, resources)
    now = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=30)
    if now.minute == 0:
        now += timedelta(seconds=30)
    produce(kafka, spec.topic, [reading(i, now + timedelta(milliseconds=i), sensor=i % 3) for i in range(120)])
    crashed = run_child(spec, resources, broker, "ingest", failpoint="publish.silver.before_replace")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    [dead] = started_runs(instance)
    # Bronze committed everything before the kill: the Kafka sensor ends the dead run and sees no lag...
    kafka_tick = sensor_tick(defs, spec, instance)
    assert not kafka_tick.run_requests and "lag 0" in kafka_tick.skip_message
    assert_marked_dead(instance, dead.run_id)
    # ... and the rest of the run is requested again for its partition.
    [request] = tick(defs, instance).run_requests
    assert request.partition_key == dead.tags["dagster/partition"]
    assert set(request.asset_selection) == {A("silver_iot"), A("gold_iot_sensor_5m"), A("warehouse_iot_sensor_5m"), A("gold_iot_location_hourly"), A("warehouse_iot_location_hourly")}
    assert execute(defs, instance, request).success
    bronze = lake.read_bronze(spec.name, request.partition_key)
    assert bronze.height == 120 == bronze.select(pl.struct("kafka_partition", "kafka_offset").n_unique()).item()
    assert lake.read("silver", spec.name, "silver", [request.partition_key]).height == 120 == warehouse_count(wh)


@pytest.mark.slow
def test_killed_backfill_run_is_failed_and_its_partition_requested(spec, resources, broker, shared_instance, kafka):
    instance = shared_instance
    defs = definitions(spec, resources)
    produce(kafka, spec.topic, [reading(i, T + timedelta(seconds=i), sensor=i % 3) for i in range(60)])
    assert run_ingest(defs, spec, instance).success
    crashed = run_child(spec, resources, broker, "backfill", PK, PK, failpoint="publish.gold.before_replace")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    [dead] = started_runs(instance)
    assert dead.tags["medallion/backfill"] == f"{PK}...{PK}"
    requests = tick(defs, instance).run_requests
    assert_marked_dead(instance, dead.run_id)
    [request] = requests
    assert request.partition_key == PK and A("silver_iot") not in request.asset_selection and A("gold_iot_sensor_5m") in request.asset_selection
    assert execute(defs, instance, request).success
    assert warehouse_count(resources["warehouse"]) == 60


@pytest.mark.slow
def test_a_live_run_is_left_alone_however_long_it_takes(spec, resources, broker, shared_instance, kafka, tmp_path):
    instance = shared_instance
    defs = definitions(spec, resources)
    produce(kafka, spec.topic, [reading(i, T + timedelta(seconds=i), sensor=i % 3) for i in range(30)])
    release = tmp_path / "release"
    held = start_held_child(spec, resources, broker, "ingest", point="ingest.after_read", release=release)
    try:
        [live] = started_runs(instance)
        assert not tick(defs, instance).run_requests
        [behind] = sensor_tick(defs, spec, instance).run_requests
        assert behind.run_key.endswith("+1")  # the Kafka sensor counts it as in flight (one may start behind it)
        assert instance.get_run_by_id(live.run_id).status == dg.DagsterRunStatus.STARTED
    finally:
        release.touch()
    assert held.wait(120) == 0
    assert instance.get_run_by_id(live.run_id).status == dg.DagsterRunStatus.SUCCESS
