"""Duplicate delivery, replayed offsets, and runs racing on one partition: no duplicates, no torn files."""

import subprocess
import sys
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest

from deltalake import DeltaTable

from assets.bronze import ingest_totals
from assets.erasure import Subject, erase
from resources.delta import add_actions, delta_frame
from resources.lake import LakeTable, bronze_table
from tests.conftest import produce, reading, run_child, start_held_child
from tests.helpers import content_hash, definitions, materialize, run_ingest

T = datetime(2026, 11, 20, 11, 5, tzinfo=timezone.utc)
PK = "2026-11-20-11:00"
CHAIN = ["silver_iot", "gold_iot_sensor_5m", "gold_iot_location_hourly", "warehouse_iot_sensor_5m", "warehouse_iot_location_hourly"]


def test_producer_retries_give_no_duplicates(spec, resources, instance, kafka):
    defs = definitions(spec, resources)
    lake = resources["lake"]
    batch = [reading(i, T + timedelta(seconds=i), sensor=i % 4) for i in range(40)]
    produce(kafka, spec.topic, batch)
    produce(kafka, spec.topic, batch)  # the producer retried everything: same events, new offsets
    assert run_ingest(defs, spec, instance).success
    bronze = lake.read_bronze(spec.name, PK)
    assert bronze.height == 80
    assert bronze.select(pl.struct("kafka_partition", "kafka_offset").n_unique()).item() == 80

    assert materialize(defs, CHAIN, PK, instance).success
    silver = lake.read("silver", spec.name, "silver", [PK])
    assert silver.height == 40 and silver["event_id"].n_unique() == 40
    assert lake.read("gold", spec.name, "sensor_5m", [PK])["count"].sum() == 40
    assert resources["warehouse"].query_arrow("SELECT sum(count) AS n FROM iot_sensor_5m").column("n")[0].as_py() == 40


@pytest.mark.slow
def test_two_machines_reading_the_same_offsets_commit_them_once(spec, resources, broker, shared_instance, kafka, tmp_path):
    """Two ingests on two machines (each its own MEDALLION_HOME: no lock in common) read the same range. One
    is held inside its commit window (files written, nothing committed) while the other commits; let go,
    its commit fails on the moved Kafka offsets and it commits nothing."""
    lake = resources["lake"]
    produce(kafka, spec.topic, [reading(i, T + timedelta(seconds=i), sensor=i % 4) for i in range(60)] + [(b"k", b"{bad")])
    release = tmp_path / "release"
    held = start_held_child(spec, resources, broker, "ingest", point="ingest.before_commit", release=release, env_extra={"MEDALLION_HOME": str(tmp_path / "machine-a")})
    other = run_child(spec, resources, broker, "ingest", env_extra={"MEDALLION_HOME": str(tmp_path / "machine-b")})
    assert other.returncode == 0, other.stderr[-3000:]
    committed = lake.version(bronze_table(spec.name))
    release.touch()
    out, err = held.communicate(timeout=120)
    assert held.returncode == 0, err[-3000:]
    assert "another run committed" in err + out, (err + out)[-6000:]

    assert lake.version(bronze_table(spec.name)) == committed  # the held run made no commit
    bronze = lake.read_bronze(spec.name, PK)
    assert bronze.height == 60 and bronze.select(pl.struct("kafka_partition", "kafka_offset").n_unique()).item() == 60
    assert lake.count_dead_letter(spec.name) == 1
    assert ingest_totals(lake, spec)["consumed"] == 61
    # Its written files are referenced by no version: readers never saw them, and it removed them.
    table = DeltaTable(lake.table_uri(bronze_table(spec.name)))
    assert table.vacuum(retention_hours=0, enforce_retention_duration=False, full=True, dry_run=True) == []


@pytest.mark.slow
def test_backfills_racing_a_sensor_run_are_serialized(spec, resources, broker, shared_instance, kafka):
    instance = shared_instance
    lake, wh = resources["lake"], resources["warehouse"]
    defs = definitions(spec, resources)
    produce(kafka, spec.topic, [reading(i, T + timedelta(seconds=i), sensor=i % 5) for i in range(100)])
    assert run_ingest(defs, spec, instance).success
    assert materialize(defs, CHAIN, PK, instance).success
    produce(kafka, spec.topic, [reading(500 + i, T + timedelta(seconds=200 + i), sensor=i % 5) for i in range(50)])

    base = [sys.executable, "-m", "tests.fault_child", spec.topic, lake.uri, wh.chdb_path, broker]
    procs = [
        subprocess.Popen([*base, "ingest"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
        subprocess.Popen([*base, "assets", ",".join(CHAIN), PK], stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
        subprocess.Popen([*base, "assets", ",".join(CHAIN), PK], stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
        subprocess.Popen([*base, "ingest"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
    ]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out.decode()[-3000:]

    # Whatever order they ran in, Silver holds each reading once: a full derivation, perhaps extended by
    # the 50 new ones, never two interleaved.
    silver = lake.read("silver", spec.name, "silver", [PK])
    assert silver.height in (100, 150)
    assert silver["event_id"].n_unique() == silver.height
    # Every Gold partition is one whole publish (one data file, the row count its commit recorded).
    for layer, name in (("gold", "sensor_5m"), ("gold", "location_hourly")):
        files = add_actions(lake.open(LakeTable(layer, spec.name, name))).filter(pl.col("partition.partition_key") == PK)
        assert files.height == 1, (layer, name, files)
        [(_, last)] = [c for c in lake.commits(LakeTable(layer, spec.name, name), operation="publish") if c[1]["partition"] == PK][-1:]
        assert last["rows"] == files["num_records"][0]
    assert lake.count_bronze(spec.name) == 150  # two racing ingests, each record once

    # The automation rerun that follows the ingest brings everything to the final state.
    assert materialize(defs, CHAIN, PK, instance).success
    assert lake.read("silver", spec.name, "silver", [PK]).height == 150
    assert wh.query_arrow("SELECT sum(count) AS n FROM iot_sensor_5m").column("n")[0].as_py() == 150


def four_sensors_through_the_warehouse(spec, resources, kafka, instance, monkeypatch):
    """120 readings of sensors 0-3 in PK, ingested and derived through every layer; (lake, warehouse)."""
    monkeypatch.setenv("MEDALLION_PII_KEY", "concurrency-test-key")
    defs = definitions(spec, resources)
    produce(kafka, spec.topic, [reading(i, T + timedelta(seconds=i), sensor=i % 4) for i in range(120)])
    assert run_ingest(defs, spec, instance).success
    assert materialize(defs, CHAIN, PK, instance).success
    return resources["lake"], resources["warehouse"]


@pytest.mark.slow
def test_an_erasure_on_another_machine_is_never_undone_by_a_gold_derivation_in_flight(spec, resources, broker, shared_instance, kafka, tmp_path, monkeypatch):
    """Machine A derives a Gold partition from Silver, held right after reading it; machine B (no lock in
    common) erases a sensor meanwhile. Let go, A's publish must not bring the erased sensor back: its commit
    conflicts (Silver's files changed, Gold's partition was rewritten) and it derives again."""
    lake, wh = four_sensors_through_the_warehouse(spec, resources, kafka, shared_instance, monkeypatch)
    assert "sensor-1" in lake.read("gold", spec.name, "sensor_5m", [PK])["sensor_id"].to_list()

    release = tmp_path / "release"
    held = start_held_child(spec, resources, broker, "assets", "gold_iot_sensor_5m", PK, point="gold.after_read", release=release,
                            env_extra={"MEDALLION_HOME": str(tmp_path / "machine-a"), "MEDALLION_PII_KEY": "concurrency-test-key"})  # fmt: skip
    removed = erase(Subject("sensor", "sensor-1"), lake, wh, (spec,))
    assert removed["removed"]["silver"][spec.name] == 30
    release.touch()
    out, err = held.communicate(timeout=180)
    assert held.returncode == 0, err[-3000:]
    assert "deriving again" in err + out, (err + out)[-3000:]

    gold = lake.read("gold", spec.name, "sensor_5m", [PK])
    assert "sensor-1" not in gold["sensor_id"].to_list()
    table = next(t for t in spec.gold if t.name == "sensor_5m")
    assert content_hash(gold, ignore=()) == content_hash(delta_frame(table.build(lake.read("silver", spec.name, "silver", [PK]))), ignore=())


@pytest.mark.slow
def test_an_erasure_on_another_machine_is_never_undone_by_a_silver_derivation_in_flight(spec, resources, broker, shared_instance, kafka, tmp_path, monkeypatch):
    """Machine A derives Silver, held right after reading Bronze; machine B erases a sensor meanwhile. Let go,
    A must not publish the sensor's rows again: its Bronze files are gone, so it fails and says so."""
    lake, wh = four_sensors_through_the_warehouse(spec, resources, kafka, shared_instance, monkeypatch)

    release = tmp_path / "release"
    held = start_held_child(spec, resources, broker, "assets", "silver_iot", PK, point="silver.after_context", release=release,
                            env_extra={"MEDALLION_HOME": str(tmp_path / "machine-a"), "MEDALLION_PII_KEY": "concurrency-test-key"})  # fmt: skip
    erase(Subject("sensor", "sensor-2"), lake, wh, (spec,))
    release.touch()
    out, err = held.communicate(timeout=180)
    assert held.returncode != 0 and "changed while Silver was derived" in err + out, (err + out)[-3000:]
    assert "sensor-2" not in lake.read("silver", spec.name, "silver", [PK])["sensor_id"].to_list()
    assert lake.read("silver", spec.name, "silver", [PK]).height == 90
