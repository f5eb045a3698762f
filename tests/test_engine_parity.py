"""Spark and polars give the same Silver and Gold rows for the same Bronze partition."""

import functools
import json
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest
from confluent_kafka import Message
from polars.testing import assert_frame_equal

from assets.bronze import bronze_rules
from assets.contracts.gate import apply_contract
from assets.engines import spark_iot
from resources.delta import delta_frame
from assets.spec import SilverContext
from assets.streams.iot import IOT
from assets.transforms import iot
from assets.transforms.bronze import parse_messages
from assets.transforms.dedup import derive_silver
from assets.simulation.iot import SimulatorConfig, SimulatorStats, generate

END = datetime(2026, 11, 20, 5, 50, tzinfo=timezone.utc)
CTX = SilverContext("2026-11-20-05:00", datetime(2026, 11, 20, 6, 1, tzinfo=timezone.utc), "parity")
FLOAT_TOLERANCE = 1e-9  # relative; sums in a different order differ in the last bits


@pytest.fixture(scope="module")
def spark():
    from resources.spark import SparkEngine

    engine = SparkEngine()
    yield engine.session()
    engine.stop()


def valid_bronze(seed: int, end: datetime, events: int = 4000) -> pl.DataFrame:
    cfg = SimulatorConfig(events=events, seed=seed, sensors=24, malformed_share=0.0, duplicate_share=0.02, late_share=0.0, anomaly_share=0.03, end=end)
    pairs = list(generate(cfg, SimulatorStats()))
    # A repeated event_id with other content, and a second reading of a sensor at the same instant.
    first = json.loads(pairs[10][1])
    pairs.append((pairs[10][0], json.dumps({**first, "value": first["value"] + 1}).encode()))
    twin = json.loads(pairs[20][1])
    pairs.append((pairs[20][0], json.dumps({**twin, "event_id": twin["event_id"] + "-twin"}).encode()))
    msgs = [Message(topic="t", partition=n % 3, offset=n // 3, key=k, value=v, timestamp=(1, 0)) for n, (k, v) in enumerate(pairs)]
    bronze = parse_messages(msgs, bronze_rules(IOT), end + timedelta(minutes=1)).bronze
    return apply_contract(bronze, IOT.row_contract).passed.sort("kafka_partition", "kafka_offset")


def same(left: pl.DataFrame, right: pl.DataFrame, keys: list[str]) -> None:
    assert_frame_equal(left.sort(keys), right.sort(keys).select(left.columns), check_exact=False, rel_tol=FLOAT_TOLERANCE, abs_tol=1e-12)


def test_silver_and_gold_match_between_polars_and_spark(spark):
    context = derive_silver(IOT, valid_bronze(1, END - timedelta(hours=1)), None, CTX).rows
    valid = valid_bronze(2, END)
    by_polars = derive_silver(IOT, valid, context, CTX)
    by_spark = derive_silver(IOT, valid, context, CTX, functools.partial(spark_iot.silver, spark))
    assert by_polars.rows.height > 3000 and by_polars.rejected.height == 1 and by_polars.rows["z_score"].is_not_null().sum() > 1000
    same(by_polars.rows, by_spark.rows, ["event_id"])
    assert by_polars.duplicates_dropped == by_spark.duplicates_dropped > 0
    rows = by_polars.rows
    same(iot.gold_sensor_5m(rows), spark_iot.gold_sensor_5m(spark, rows), ["window_start", "sensor_id"])
    same(iot.gold_location_hourly(rows), spark_iot.gold_location_hourly(spark, rows), ["hour_start", "location", "sensor_type"])
    five_minute = iot.gold_sensor_5m(rows)  # what the daily rollup folds
    same(iot.gold_type_daily(five_minute), spark_iot.gold_type_daily(spark, five_minute), ["day", "sensor_type"])


def test_a_stream_configured_for_spark_publishes_spark_rows_through_dagster(spark, spec, resources, instance, kafka):
    """engine="spark": the ingest run's Silver and Gold steps run on Spark and publish the same lake format."""
    import dataclasses

    from tests.conftest import reading
    from tests.helpers import definitions, run_ingest, sensor_tick

    spark_spec = dataclasses.replace(spec, engine="spark")
    pk = spark_spec.partitions.get_last_partition_key()
    start = datetime.strptime(pk, "%Y-%m-%d-%H:%M").replace(tzinfo=timezone.utc)
    at = max(start, datetime.now(timezone.utc) - timedelta(minutes=3))
    p = kafka.producer()
    for n in range(120):
        r = reading(n, at + timedelta(seconds=n % 40), sensor=n % 3)
        p.produce(spark_spec.topic, key=r["sensor_id"].encode(), value=json.dumps(r).encode())
    p.flush(10)
    defs = definitions(spark_spec, resources)
    result = run_ingest(defs, spark_spec, instance, sensor_tick(defs, spark_spec, instance).run_requests[0])
    assert result.success
    engines = {
        m.asset_key.to_user_string(): m.metadata["engine"].value
        for m in result.asset_materializations_for_node("silver_iot") + result.asset_materializations_for_node("gold_iot_sensor_5m")
    }
    assert engines == {"silver_iot": "spark", "gold_iot_sensor_5m": "spark"}
    lake = resources["lake"]
    published = lake.read("silver", spark_spec.name, "silver", [pk])
    valid = apply_contract(lake.read_bronze(spark_spec.name, pk, exclude=["payload"]), IOT.row_contract).passed
    expected = derive_silver(IOT, valid, None, CTX).rows
    same(expected.drop("processed_at", "pipeline_version"), published.drop("processed_at", "pipeline_version"), ["event_id"])
    assert resources["warehouse"].query_arrow("SELECT sum(count) AS n FROM iot_sensor_5m").to_pylist() == [{"n": published.height}]
    # Gold on Spark read the Silver snapshot's own data files (DeltaTable.file_uris) and published through
    # delta-rs: the same rows polars builds from that Silver.
    [gold_event] = result.asset_materializations_for_node("gold_iot_sensor_5m")
    assert "data files of silver_iot" in gold_event.metadata["silver_read_by"].value
    gold = lake.read("gold", spark_spec.name, "sensor_5m", [pk])
    same(delta_frame(iot.gold_sensor_5m(published)), gold, ["window_start", "sensor_id"])
