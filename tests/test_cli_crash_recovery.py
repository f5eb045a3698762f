"""`medallion run` SIGKILLed twice mid-run, then run again: the dead runs are ended, their work is done again,
and the whole thing reconciles with nothing lost or doubled (the daily rollup included)."""

import json
import os
import signal
import subprocess
import sys
import uuid
from datetime import datetime, timezone

import dagster as dg
import polars as pl
import pytest

from assets.simulation.iot import SimulatorConfig, produce
from assets.simulation.ads import generate_ads
from resources.lake import LakeResource, LakeTable, bronze_table

CLI = [sys.executable, "-m", "medallion.cli"]


@pytest.mark.slow
def test_medallion_run_killed_twice_then_run_again_reconciles(broker, kafka, tmp_path):
    tag = uuid.uuid4().hex[:8]
    home = tmp_path / "home"
    env = {
        **os.environ,
        "MEDALLION_HOME": str(home),
        "KAFKA_BOOTSTRAP_SERVERS": broker,
        "MEDALLION_IOT_TOPIC": f"crash.iot.{tag}",
        "MEDALLION_ADS_TOPIC": f"crash.ads.{tag}",
    }
    env.pop("DAGSTER_HOME", None)
    env.pop("MEDALLION_FAILPOINT", None)
    kafka.ensure_topics({env["MEDALLION_IOT_TOPIC"]: 3, env["MEDALLION_ADS_TOPIC"]: 3})
    now = datetime.now(timezone.utc)
    iot = produce(kafka.producer({"linger.ms": 50}), env["MEDALLION_IOT_TOPIC"], SimulatorConfig(events=20_000, seed=21, sensors=40, end=now))
    ads = produce(kafka.producer({"linger.ms": 50}), env["MEDALLION_ADS_TOPIC"], SimulatorConfig(events=3_000, seed=22, end=now), events=generate_ads)
    assert iot.late > 0  # late readings: older hours run by automation, not only the ingest run

    # Killed inside the first ingest run's Silver publish, then inside the automation run of the daily rollup.
    for point in ("publish.silver.before_replace", "publish.gold.type_daily.before_replace"):
        killed = subprocess.run([*CLI, "run", "--json"], env={**env, "MEDALLION_FAILPOINT": point}, capture_output=True, text=True, timeout=600)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-3000:])

    done = subprocess.run([*CLI, "run", "--json"], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["reconciled"] is True and not summary["failed_runs"]
    assert summary["consumed"] == iot.produced + ads.produced == summary["bronze_rows"] + summary["dead_letter_rows"]
    assert all(n > 0 for n in summary["warehouse_rows"].values()) and summary["gold_rows"] == summary["warehouse_rows"], (summary["gold_rows"], summary["warehouse_rows"], summary["silver_rows"])
    assert all(summary["checks"].values()), summary["checks"]

    lake = LakeResource(uri=str(home / "lake"))
    bronze = lake.read_table(bronze_table("iot"), None, columns=["kafka_partition", "kafka_offset"])
    assert bronze.height == bronze.unique().height  # no record twice
    silver = lake.read_table(LakeTable("silver", "iot", "silver"), None)
    daily = lake.read_table(LakeTable("gold", "iot", "type_daily"), None)
    assert daily["count"].sum() == silver.height  # the daily rollup counts every Silver row once

    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    with dg.DagsterInstance.get() as instance:
        dead = instance.get_runs(filters=dg.RunsFilter(tags={"medallion/died": "true"}))
        assert len(dead) >= 2 and all(r.status == dg.DagsterRunStatus.FAILURE for r in dead)
        assert not instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING]))
        assert {r.job_name for r in dead} == {"ingest_iot", "__ASSET_JOB"}  # an ingest run and an automation run
        # The automation run's work was requested again by recover_dead_runs (the ingest run's by the Kafka sensor).
        automation_run = next(r for r in dead if r.job_name == "__ASSET_JOB")
        assert instance.get_runs(filters=dg.RunsFilter(tags={"medallion/recovers": automation_run.run_id}))
