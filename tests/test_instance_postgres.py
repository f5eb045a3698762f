"""The PostgreSQL form of the Dagster instance, against a real PostgreSQL server the tests start.

MEDALLION_POSTGRES_URL switches `medallion dev`/`demo`/`run` to dagster-postgres storage; runs, event logs
and sensor cursors then survive a restart of the webserver and the daemon.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import dagster as dg
import psycopg2
import pytest

from assets.bronze import ingest_totals
from assets.streams import STREAMS
from medallion.instance import PostgresUrlError, postgres_db
from medallion.stack import prepare_dagster_home
from resources.settings import load_settings
from tests.dev_server import DevServer, free_port

CLI = [sys.executable, "-m", "medallion.cli"]


def test_postgres_url_becomes_psycopg2_storage_config():
    db = postgres_db("postgresql://ann:p%40ss@db.example:6543/dagster?sslmode=require")
    assert db == {
        "username": "ann",
        "password": "p@ss",
        "hostname": "db.example",
        "port": 6543,
        "db_name": "dagster",
        "scheme": "postgresql+psycopg2",
        "params": {"sslmode": "require"},
    }
    with pytest.raises(PostgresUrlError, match="must start with postgresql://"):
        postgres_db("mysql://a@b/c")
    with pytest.raises(PostgresUrlError, match="user\\[:password\\]@host"):
        postgres_db("postgresql://localhost")


def test_env_selects_postgres_instance_and_unset_returns_to_sqlite(postgres_url, monkeypatch):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    monkeypatch.setenv("MEDALLION_POSTGRES_URL", postgres_url)
    home = prepare_dagster_home(load_settings())
    yaml_file = home / "dagster.yaml"
    assert oct(yaml_file.stat().st_mode & 0o777) == "0o600"  # it holds the password
    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert instance.run_coordinator.__class__.__name__ == "QueuedRunCoordinator"  # the rest of the yaml kept

        @dg.asset
        def probe() -> int:
            return 1

        assert dg.materialize([probe], instance=instance).success
    with psycopg2.connect(postgres_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs")
        assert cur.fetchone()[0] == 1
    assert not (home / "history" / "runs.db").exists()

    monkeypatch.delenv("MEDALLION_POSTGRES_URL")
    prepare_dagster_home(load_settings())
    assert "postgres" not in yaml_file.read_text()
    with dg.DagsterInstance.get() as instance:
        assert instance.get_runs_count() == 0  # SQLite again, empty


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = json.loads(resp.read())
    assert "errors" not in body, body
    return body["data"]


RUNS = """{ runsOrError(filter: {pipelineName: "ingest_iot"}) { ... on Runs { results { runId status } } } }"""
SENSOR = """{ sensorOrError(sensorSelector: {repositoryLocationName: "medallion", repositoryName: "__repository__",
  sensorName: "kafka_iot"}) { ... on Sensor { sensorState { status ticks(limit: 200) { id }
  typeSpecificData { ... on SensorData { lastCursor } } } } } }"""
EVENTS = """query($runId: ID!) { logsForRun(runId: $runId) { ... on EventConnection { events { __typename } } } }"""


def _wait_for(fn, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(1)
    raise TimeoutError(what)


def _successful_runs(port: int) -> list[str]:
    results = _graphql(port, RUNS)["runsOrError"]["results"]
    return sorted(r["runId"] for r in results if r["status"] == "SUCCESS")


def test_dev_on_postgres_keeps_runs_events_and_cursors_across_restart(postgres_url, medallion_home, tmp_path):
    from assets.streams.iot import IOT
    from assets.simulation.iot import SimulatorConfig, produce
    from resources.embedded_broker import running_broker
    from resources.kafka import KafkaResource
    from resources.lake import LakeResource

    env = {"MEDALLION_POSTGRES_URL": postgres_url}
    port = free_port()
    began = time.monotonic()
    settings = load_settings()
    log = tmp_path / "dev.log"
    dev = DevServer(medallion_home, port=port, env=env, log_path=log)
    try:
        dev.wait_ready()
        print(f"{time.monotonic() - began:.1f}s dev up")
        kafka = KafkaResource(bootstrap_servers=running_broker(settings.run_dir).bootstrap)
        cfg = dict(seed=3, malformed_share=0.0, duplicate_share=0.0, late_share=0.0, anomaly_share=0.0)
        produce(kafka.producer(), IOT.topic, SimulatorConfig(events=400, **cfg))
        first = _wait_for(lambda: _successful_runs(port), 150, f"no ingest run succeeded; log tail: {log.read_text()[-2000:]}")
        print(f"{time.monotonic() - began:.1f}s first run done")
        sensor = _graphql(port, SENSOR)["sensorOrError"]["sensorState"]
        cursor, ticks = sensor["typeSpecificData"]["lastCursor"], len(sensor["ticks"])
        assert cursor and json.loads(cursor)
        events = len(_graphql(port, EVENTS, {"runId": first[0]})["logsForRun"]["events"])
        dev.kill()

        # Nothing of the instance is on local disk: it all lives in PostgreSQL.
        assert not (settings.dagster_home / "history" / "runs.db").exists()
        dev = DevServer(medallion_home, port=port, env=env, log_path=log)
        dev.wait_ready()
        print(f"{time.monotonic() - began:.1f}s dev up again")
        assert set(first) <= set(_successful_runs(port))
        again = _graphql(port, SENSOR)["sensorOrError"]["sensorState"]
        assert len(again["ticks"]) >= ticks
        assert len(_graphql(port, EVENTS, {"runId": first[0]})["logsForRun"]["events"]) == events
        # The daemon carries on from the stored cursor: new events are ingested once, old ones not again.
        produce(kafka.producer(), IOT.topic, SimulatorConfig(events=300, **{**cfg, "seed": 4}))
        lake = LakeResource(uri=str(settings.lake_root))
        _wait_for(lambda: ingest_totals(lake, STREAMS[0])["consumed"] >= 700, 150, "second batch not ingested")
        time.sleep(3)  # a duplicate ingest, if there were one, would land now
        assert lake.count_bronze("iot") + lake.count_dead_letter("iot") == 700
        assert ingest_totals(lake, STREAMS[0])["consumed"] == 700
    finally:
        dev.stop()


@pytest.mark.slow
def test_cli_demo_and_run_on_postgres_and_a_configured_kafka(postgres_url, broker, tmp_path):
    """The production forms together: Dagster on PostgreSQL, Kafka by bootstrap servers (the CLI reads EnvVars)."""
    import uuid

    tag = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "MEDALLION_HOME": str(tmp_path / "prod-home"),
        "MEDALLION_POSTGRES_URL": postgres_url,
        "KAFKA_BOOTSTRAP_SERVERS": broker,
        "MEDALLION_IOT_TOPIC": f"prod.iot.{tag}",
        "MEDALLION_ADS_TOPIC": f"prod.ads.{tag}",
    }
    env.pop("DAGSTER_HOME", None)
    demo = subprocess.run([*CLI, "demo", "--events", "1500", "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0, demo.stderr[-3000:]
    summary = json.loads(demo.stdout.strip().splitlines()[-1])
    assert summary["produced"] == summary["consumed"] == 3000 and summary["reconciled"] is True
    run = subprocess.run([*CLI, "run", "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    again = json.loads(run.stdout.strip().splitlines()[-1])
    assert again["consumed"] == 3000 and again["ingest_runs"] == 0 and again["reconciled"] is True
    with psycopg2.connect(postgres_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), count(*) FILTER (WHERE status = 'SUCCESS') FROM runs")
        total, ok = cur.fetchone()
    assert total == summary["ingest_runs"] + summary["automation_runs"] == ok
    assert not (tmp_path / "prod-home" / "dagster" / "history" / "runs.db").exists()
