"""Duplicate delivery, replayed offsets, and runs racing on one partition: no duplicates, no torn files."""

import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest

from tests.conftest import produce, reading
from tests.helpers import content_hash, definitions, materialize, run_ingest

T = datetime(2026, 11, 20, 11, 5, tzinfo=timezone.utc)
PK = "2026-11-20-11:00"
CHAIN = ["silver_iot", "gold_iot_sensor_5m", "gold_iot_location_hourly", "warehouse_iot_sensor_5m", "warehouse_iot_location_hourly"]


def test_producer_retries_and_replayed_offsets_give_no_duplicates(spec, resources, instance, kafka):
    defs = definitions(spec, resources)
    lake = resources["lake"]
    batch = [reading(i, T + timedelta(seconds=i), sensor=i % 4) for i in range(40)]
    produce(kafka, spec.topic, batch)
    produce(kafka, spec.topic, batch)  # the producer retried everything: same events, new offsets
    assert run_ingest(defs, spec, instance).success
    first = content_hash(lake.read_bronze(spec.name, PK))

    # Replay: the ledger is lost and the same offsets are read again; files keyed by offset range overwrite.
    shutil.rmtree(lake.ledger_dir(spec.name))
    assert run_ingest(defs, spec, instance).success
    bronze = lake.read_bronze(spec.name, PK)
    assert bronze.height == 80 and content_hash(bronze) == first
    assert bronze.select(pl.struct("kafka_partition", "kafka_offset").n_unique()).item() == 80

    assert materialize(defs, CHAIN, PK, instance).success
    silver = lake.read("silver", spec.name, "silver", [PK])
    assert silver.height == 40 and silver["event_id"].n_unique() == 40
    assert lake.read("gold", spec.name, "sensor_5m", [PK])["count"].sum() == 40
    assert resources["warehouse"].query_arrow("SELECT sum(count) AS n FROM iot_sensor_5m").column("n")[0].as_py() == 40


@pytest.mark.slow
def test_backfills_racing_a_sensor_run_are_serialized(spec, resources, broker, shared_instance, kafka):
    instance = shared_instance
    lake, wh = resources["lake"], resources["warehouse"]
    defs = definitions(spec, resources)
    produce(kafka, spec.topic, [reading(i, T + timedelta(seconds=i), sensor=i % 5) for i in range(100)])
    assert run_ingest(defs, spec, instance).success
    assert materialize(defs, CHAIN, PK, instance).success
    produce(kafka, spec.topic, [reading(500 + i, T + timedelta(seconds=200 + i), sensor=i % 5) for i in range(50)])

    base = [sys.executable, "-m", "tests.fault_child", spec.topic, lake.root, wh.chdb_path, broker]
    procs = [
        subprocess.Popen([*base, "ingest"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
        subprocess.Popen([*base, "assets", ",".join(CHAIN), PK], stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
        subprocess.Popen([*base, "assets", ",".join(CHAIN), PK], stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
        subprocess.Popen([*base, "ingest"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
    ]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out.decode()[-3000:]

    # Whatever order they ran in, every published partition is whole and agrees with its manifest.
    silver = lake.read("silver", spec.name, "silver", [PK])
    assert silver.height in (100, 150)
    assert lake.manifest("silver", spec.name, "silver", PK)["rows"] == silver.height
    for table in ("silver/silver", "gold/sensor_5m", "gold/location_hourly", "quarantine/silver"):
        layer, name = table.split("/")
        files = sorted(p.name for p in lake.partition_file(layer, spec.name, name, PK).parent.iterdir())
        assert files == ["_manifest.json", "data.parquet"], files  # no temp files, nothing interleaved
    assert lake.count_bronze(spec.name) == 150  # two racing ingests, each record once

    # The automation rerun that follows the ingest brings everything to the final state.
    assert materialize(defs, CHAIN, PK, instance).success
    assert lake.read("silver", spec.name, "silver", [PK]).height == 150
    assert wh.query_arrow("SELECT sum(count) AS n FROM iot_sensor_5m").column("n")[0].as_py() == 150
