"""The Prometheus exporter on real parts: its figures equal the lake's, lag counts what is waiting in Kafka,
and it still answers with the broker down or chDB busy."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from medallion.driver import drive
from medallion.metrics import MedallionCollector, exposed_names, make_registry, render, serve
from resources.embedded_broker import start_broker, stop_broker
from resources.kafka import KafkaResource
from resources.locks import exclusive_lock
from assets.bronze import ingest_totals
from tests.conftest import produce, reading
from tests.helpers import definitions

H = datetime(2026, 11, 20, 6, 0, tzinfo=timezone.utc)
PK = "2026-11-20-06:00"
NOW = datetime(2026, 11, 20, 6, 30, tzinfo=timezone.utc).timestamp()


def scrape(text: str) -> dict:
    """{(sample name, sorted label items): value} of one exposition."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples[("medallion_" + name, tuple(sorted(labels.items())))]


def series(samples: dict, name: str) -> dict:
    return {dict(k[1]).get("partition", ""): v for k, v in samples.items() if k[0] == "medallion_" + name}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 30) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        assert r.status == 200
        return r.read().decode()


def test_figures_equal_the_lake_and_lag_counts_new_events(spec, resources, instance, kafka):
    lake, warehouse = resources["lake"], resources["warehouse"]
    good = [reading(i, H + timedelta(seconds=i), sensor=i % 4) for i in range(200)]
    impossible = [reading(500 + i, H + timedelta(seconds=250 + i), sensor=i % 4, value=900.0) for i in range(4)]
    unplaceable = [(b"sensor-0", b"{broken"), (b"sensor-1", b"\xff\xfe")]
    produce(kafka, spec.topic, good + impossible + unplaceable)
    log = drive(definitions(spec, resources), instance, (spec,), timeout_s=300)
    assert not log.failed_runs

    collector = MedallionCollector((spec,), lake, kafka, warehouse, instance, clock=lambda: NOW)
    registry = make_registry(collector)
    m = scrape(render(registry))
    s = {"stream": "iot"}

    consumed = ingest_totals(lake, spec)["consumed"]
    assert value(m, "records_consumed_total", **s) == consumed == 206
    assert value(m, "records_ingested_total", **s) == lake.count_bronze(spec.name) == 204
    assert value(m, "records_dead_lettered_total", **s) == lake.count_dead_letter(spec.name) == 2
    assert value(m, "quarantined_rows", **s) == lake.count_rows("quarantine", spec.name, "silver") == 4
    assert value(m, "silver_rows", **s) == lake.count_rows("silver", spec.name, "silver") == 200
    assert value(m, "dead_letter_ratio", **s) == pytest.approx(2 / 206)
    assert value(m, "quarantine_ratio", **s) == pytest.approx(4 / 204)

    assert value(m, "kafka_up") == 1
    committed = lake.committed_offsets(spec.name, spec.topic, [0, 1, 2])
    assert series(m, "kafka_committed_offset") == {str(p): float(o) for p, o in committed.items()}
    assert series(m, "kafka_log_end_offset") == {str(p): float(o) for p, o in committed.items()}
    assert set(series(m, "kafka_consumer_lag").values()) == {0.0}

    for asset in ("silver_iot", "gold_iot_sensor_5m", "gold_iot_location_hourly"):
        labels = {"stream": "iot", "asset": asset, "check": "contract"}
        assert value(m, "check_pass_ratio", **labels) == 1.0
        assert value(m, "check_evaluated_partitions", **labels) >= 1
        assert value(m, "check_failed_partitions", **labels) == 0

    newest = lake.read("silver", spec.name, "silver", [PK])["event_time"].max().timestamp()
    assert newest == (H + timedelta(seconds=199)).timestamp()
    assert value(m, "gold_newest_event_timestamp_seconds", **s) == newest
    assert value(m, "end_to_end_freshness_seconds", **s) == pytest.approx(NOW - newest)
    for table in ("iot_sensor_5m", "iot_location_hourly"):
        assert value(m, "warehouse_rows", stream="iot", table=table) == warehouse.count(table) == lake.count_rows("gold", spec.name, table[4:])
        assert value(m, "gold_last_materialization_timestamp_seconds", stream="iot", table=table) > 0
        assert value(m, "warehouse_last_load_timestamp_seconds", stream="iot", table=table) > 0
    assert value(m, "warehouse_newest_timestamp_seconds", stream="iot", table="iot_location_hourly") == H.timestamp()
    assert not [k for k in m if k[0] == "medallion_scrape_error"]
    assert {k[0] for k in m} == exposed_names() - {"medallion_scrape_error"}  # every declared figure, and only those

    # Seven more events after the ingest: the lag is exactly seven, per partition log end minus committed.
    produce(kafka, spec.topic, [reading(1000 + i, H + timedelta(minutes=20, seconds=i), sensor=i % 3) for i in range(7)])
    m = scrape(render(registry))
    lag = series(m, "kafka_consumer_lag")
    assert sum(lag.values()) == 7
    ends = series(m, "kafka_log_end_offset")
    assert {p: ends[str(p)] - c for p, c in committed.items()} == {int(p): v for p, v in lag.items()}
    assert value(m, "records_consumed_total", **s) == 206  # nothing ingested yet

    # The same figures over HTTP, from the real server on a free port.
    port = free_port()
    server, thread = serve(registry, port)
    try:
        over_http = scrape(get(f"http://127.0.0.1:{port}/metrics"))
    finally:
        server.shutdown()
        thread.join(10)
    drop = {"medallion_scrape_duration_seconds"}
    assert {k: v for k, v in over_http.items() if k[0] not in drop} == {k: v for k, v in m.items() if k[0] not in drop}


def test_with_the_broker_down_the_exporter_still_answers(tmp_path, resources, spec):
    run_dir = tmp_path / "own-broker"
    info = start_broker(run_dir)
    try:
        kafka = KafkaResource(bootstrap_servers=info.bootstrap, timeout_s=2.0)
        kafka.ensure_topics({spec.topic: 3})
        produce(kafka, spec.topic, [reading(i, H, sensor=i % 3) for i in range(9)])
        registry = make_registry(MedallionCollector((spec,), resources["lake"], kafka, resources["warehouse"]))
        up = scrape(render(registry))
        assert value(up, "kafka_up") == 1 and sum(series(up, "kafka_consumer_lag").values()) == 9
    finally:
        stop_broker(run_dir)

    port = free_port()
    server, thread = serve(registry, port)
    try:
        began = time.monotonic()
        down = scrape(get(f"http://127.0.0.1:{port}/metrics"))
        took = time.monotonic() - began
    finally:
        server.shutdown()
        thread.join(10)
    assert value(down, "kafka_up") == 0
    assert not series(down, "kafka_consumer_lag")
    assert value(down, "records_consumed_total", stream="iot") == 0  # the lake's figures are still there
    assert took < 8, f"a scrape with the broker down took {took:.1f}s"


def test_a_busy_warehouse_is_skipped_not_waited_for(spec, resources):
    warehouse = resources["warehouse"]
    warehouse.ensure_tables(["CREATE TABLE IF NOT EXISTS t (x Int64) ENGINE = MergeTree ORDER BY x"])
    path = Path(warehouse.chdb_path)
    registry = make_registry(MedallionCollector((spec,), resources["lake"], None, warehouse, warehouse_wait_s=0.3))
    with exclusive_lock(path.with_name(path.name + ".lock")):  # what a load holds while it swaps a partition
        began = time.monotonic()
        m = scrape(render(registry))
        assert time.monotonic() - began < 5
    assert value(m, "scrape_error", stream="iot", source="warehouse") == 1
    assert value(m, "records_consumed_total", stream="iot") == 0


@pytest.mark.slow
def test_cli_prints_once_and_serves(broker, kafka, spec, tmp_path):
    produce(kafka, spec.topic, [reading(i, H, sensor=i % 3) for i in range(5)])
    env = {**os.environ, "MEDALLION_HOME": str(tmp_path / "cli-home"), "KAFKA_BOOTSTRAP_SERVERS": broker, "MEDALLION_IOT_TOPIC": spec.topic}
    env.pop("DAGSTER_HOME", None)
    cli = [sys.executable, "-m", "medallion.cli", "metrics"]
    once = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=180)
    assert once.returncode == 0, once.stderr[-3000:]
    m = scrape(once.stdout)
    assert value(m, "kafka_up") == 1 and sum(series(m, "kafka_consumer_lag").values()) >= 5
    assert ("medallion_check_evaluated_partitions", (("asset", "silver_iot"), ("check", "contract"), ("stream", "iot"))) in m

    port = free_port()
    proc = subprocess.Popen([*cli, "--serve", "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                served = scrape(get(f"http://127.0.0.1:{port}/metrics"))
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()[-3000:]
                assert time.monotonic() < deadline, "the exporter did not start serving"
                time.sleep(0.5)
        assert value(served, "kafka_up") == 1
        assert value(served, "records_consumed_total", stream="ads") == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
