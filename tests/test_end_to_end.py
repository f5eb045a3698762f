"""Produced Kafka messages -> warehouse rows, driven by the real sensor and automation; and the CLI."""

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from deltalake import DeltaTable

from medallion.driver import drive
from assets.simulation.iot import SimulatorConfig, produce
from medallion.summary import platform_summary
from resources.config import lake_resource
from resources.embedded_broker import running_broker
from resources.kafka import KafkaResource
from tests.helpers import definitions


@pytest.mark.slow
def test_simulated_stream_end_to_end_reconciles(spec, resources, instance, kafka):
    cfg = SimulatorConfig(events=30_000, seed=11, sensors=40, malformed_share=0.01, end=datetime.now(timezone.utc))
    stats = produce(kafka.producer(), spec.topic, cfg)
    assert stats.produced == 30_000 and stats.malformed > 0 and stats.duplicates > 0 and stats.late > 0

    log = drive(definitions(spec, resources), instance, (spec,), timeout_s=600)
    assert not log.failed_runs
    s = platform_summary((spec,), resources["lake"], resources["warehouse"], kafka, instance)

    assert s["consumed"] == 30_000
    assert s["consumed"] == s["bronze_rows"] + s["dead_letter_rows"]
    assert s["dead_letter_rows"] > 0 and s["quarantined_rows"] > 0
    # Silver = Bronze - quarantined - duplicates (exact copies and same sensor/instant)
    assert s["silver_rows"] <= s["bronze_rows"] - s["quarantined_rows"]
    assert s["silver_rows"] >= s["bronze_rows"] - s["quarantined_rows"] - stats.duplicates - 50
    assert all(n > 0 for n in s["gold_rows"].values())
    assert s["gold_rows"] == s["warehouse_rows"]
    assert all(s["checks"].values()) and s["reconciled"]
    # Every Silver row is counted once in the daily rollup in the warehouse.
    total = resources["warehouse"].query_arrow("SELECT sum(count) AS n FROM iot_type_daily").column("n")[0].as_py()
    assert total == s["silver_rows"]


@pytest.mark.slow
def assert_lake_matches(cli, env, summary: dict, home) -> None:
    """`medallion lake --json` lists every table; each opens with a plain DeltaTable and holds the rows the
    summary reports; Bronze's transaction versions are the topics' end offsets."""
    listed = subprocess.run([*cli, "lake", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    tables = {t["name"]: t for t in json.loads(listed.stdout)}
    expected_names = {f"{layer}_{s}" for layer in ("bronze", "dead_letter", "silver", "quarantine", "history") for s in ("iot", "ads")}
    expected_names |= {"gold_iot_sensor_5m", "gold_iot_location_hourly", "gold_iot_type_daily", "gold_ads_campaign_daily"}
    assert set(tables) == expected_names
    storage = {k: v for k, v in lake_resource().process_config_and_initialize().storage_options.items()}
    rows = {name: DeltaTable(t["uri"], storage_options=storage).to_pyarrow_table().num_rows for name, t in tables.items()}
    assert {n: t["rows"] for n, t in tables.items()} == rows
    for s, per in summary["streams"].items():
        assert rows[f"bronze_{s}"] == per["bronze_rows"] and rows[f"dead_letter_{s}"] == per["dead_letter_rows"]
        assert rows[f"silver_{s}"] == per["silver_rows"] and rows[f"quarantine_{s}"] == per["quarantined_rows"]
    for t, n in summary["gold_rows"].items():
        assert rows[f"gold_{t}"] == n
    assert all(t["partition_by"] == (["partition_key"] if not n.startswith("dead_letter") else []) for n, t in tables.items())
    broker = running_broker(Path(home) / "run")
    kafka = KafkaResource(bootstrap_servers=f"127.0.0.1:{broker.port}")
    from assets.streams import STREAMS

    for spec in STREAMS:
        table = DeltaTable(tables[f"bronze_{spec.name}"]["uri"], storage_options=storage)
        ends = kafka.log_ends(spec.topic, {p: 0 for p in kafka.partitions(spec.topic)})
        assert {p: table.transaction_version(f"{spec.topic}:{p}") or 0 for p in ends} == ends


def test_cli_demo_json_reconciles_and_sql_reads_the_warehouse(tmp_path):
    env = {**os.environ, "MEDALLION_HOME": str(tmp_path / "cli-home")}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    env.pop("MEDALLION_LATE_DATA_CRON", None)  # as a user runs it: the daemon's late-data cron must not hold a headless pass
    cli = [sys.executable, "-m", "medallion.cli"]
    try:
        done = subprocess.run([*cli, "demo", "--events", "5000", "--json"], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        for key in ("produced", "consumed", "bronze_rows", "dead_letter_rows", "silver_rows", "quarantined_rows",
                    "gold_rows", "warehouse_rows", "checks", "reconciled", "elapsed_s"):  # fmt: skip
            assert key in summary
        # Both streams: 5,000 events each.
        assert summary["produced"] == 10000 and summary["consumed"] == 10000 and summary["reconciled"] is True
        assert summary["consumed"] == summary["bronze_rows"] + summary["dead_letter_rows"]
        assert summary["gold_rows"] == summary["warehouse_rows"] and set(summary["gold_rows"]) == {
            "iot_sensor_5m", "iot_location_hourly", "iot_type_daily", "ads_campaign_daily"
        }
        assert all(s["reconciled"] for s in summary["streams"].values()) and set(summary["streams"]) == {"iot", "ads"}
        # Late events (1-6 hours) landed in older hours: each of them was derived too.
        assert all(len(s["underived_partitions"]) == 0 for s in summary["streams"].values())

        tables = subprocess.run(
            [*cli, "sql", "SELECT name, engine FROM system.tables WHERE database = currentDatabase()", "--format", "json"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        engines = {r["name"]: r["engine"] for r in json.loads(tables.stdout)}
        assert engines["ads_campaign_monthly"] == "AggregatingMergeTree" and engines["ads_campaign_monthly_mv"] == "MaterializedView"

        q = subprocess.run([*cli, "sql", "SELECT count() AS n FROM iot_sensor_5m", "--format", "json"], env=env, capture_output=True, text=True, timeout=120)
        assert q.returncode == 0, q.stderr[-2000:]
        assert json.loads(q.stdout) == [{"n": summary["warehouse_rows"]["iot_sensor_5m"]}]
        csv_out = subprocess.run([*cli, "sql", "SELECT 1 AS a, 'x' AS b", "--format", "csv"], env=env, capture_output=True, text=True, timeout=120)
        assert csv_out.stdout.splitlines() == ["a,b", "1,x"]

        hour = datetime.now(timezone.utc).strftime("%Y-%m-%d-%H:00")
        bf = subprocess.run([*cli, "backfill", hour, hour], env=env, capture_output=True, text=True, timeout=600)
        assert bf.returncode == 0, bf.stdout[-2000:] + bf.stderr[-2000:]
        assert f"{hour}: ok" in bf.stdout and "0 failed" in bf.stdout

        again = subprocess.run([*cli, "run", "--json"], env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        rerun = json.loads(again.stdout.strip().splitlines()[-1])
        assert rerun["consumed"] == 10000 and rerun["ingest_runs"] == 0 and rerun["reconciled"]
        assert rerun["warehouse_rows"] == summary["warehouse_rows"]  # the backfill changed nothing
        assert_lake_matches(cli, env, rerun, tmp_path / "cli-home")

        # Every engine reads the lake: ClickHouse SQL over the Delta table itself.
        delta_sql = subprocess.run(
            [*cli, "sql", f"SELECT count() AS n FROM deltaLakeLocal('{tmp_path / 'cli-home' / 'lake' / 'silver' / 'iot' / 'silver'}')", "--format", "json"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert delta_sql.returncode == 0, delta_sql.stderr[-2000:]
        assert json.loads(delta_sql.stdout) == [{"n": rerun["streams"]["iot"]["silver_rows"]}]
    finally:
        subprocess.run([*cli, "broker", "stop"], env=env, capture_output=True, timeout=60)


@pytest.mark.slow
def test_cli_demo_and_run_on_the_s3_lake_reconcile(tmp_path, s3_server, monkeypatch):
    """The same `medallion demo` and `medallion run` with MEDALLION_LAKE_URI=s3://... (a real S3 server)."""
    for k, v in s3_server.env(prefix=f"e2e-{os.getpid()}").items():
        monkeypatch.setenv(k, v)
    env = {**os.environ, "MEDALLION_HOME": str(tmp_path / "s3-home")}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    cli = [sys.executable, "-m", "medallion.cli"]
    try:
        done = subprocess.run([*cli, "demo", "--events", "3000", "--json"], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert summary["reconciled"] is True and summary["consumed"] == 6000
        assert not (tmp_path / "s3-home" / "lake").exists()  # nothing of the lake on local disk
        again = subprocess.run([*cli, "run", "--json"], env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        rerun = json.loads(again.stdout.strip().splitlines()[-1])
        assert rerun["reconciled"] and rerun["consumed"] == 6000 and rerun["ingest_runs"] == 0
        assert_lake_matches(cli, env, rerun, tmp_path / "s3-home")
        assert all(t["uri"].startswith("s3://") for t in json.loads(subprocess.run([*cli, "lake", "--json"], env=env, capture_output=True, text=True).stdout))
    finally:
        subprocess.run([*cli, "broker", "stop"], env=env, capture_output=True, timeout=60)
