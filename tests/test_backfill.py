"""Backfills re-derive Silver/Gold/warehouse from Bronze alone, and reruns give identical rows."""

from datetime import datetime, timedelta, timezone

import dagster as dg

from resources.kafka import KafkaResource
from tests.conftest import ON_BOTH_LAKES, produce, reading
from tests.helpers import content_hash, definitions, materialize, run_ingest


pytestmark = ON_BOTH_LAKES

START = datetime(2026, 11, 18, 22, 0, tzinfo=timezone.utc)
GOLD = ["gold_iot_sensor_5m", "gold_iot_location_hourly"]
LOADS = ["warehouse_iot_sensor_5m", "warehouse_iot_location_hourly"]


def snapshot(resources, spec, keys):
    lake, wh = resources["lake"], resources["warehouse"]
    return {
        "silver": content_hash(lake.read("silver", spec.name, "silver", keys)),
        "gold": content_hash(lake.read("gold", spec.name, "sensor_5m", keys)),
        "hourly": content_hash(lake.read("gold", spec.name, "location_hourly", keys)),
        "daily": content_hash(lake.read("gold", spec.name, "type_daily", ["2026-11-18", "2026-11-19"])),
        "warehouse": wh.query_arrow("SELECT * FROM iot_sensor_5m ORDER BY sensor_id, window_start"),
    }


def test_backfill_range_from_bronze_is_repeatable_without_kafka(spec, resources, instance, kafka):
    # Three hours across midnight, so the daily rollup and two warehouse days are involved.
    records = [reading(i, START + timedelta(seconds=40 * i), sensor=i % 5) for i in range(270)]
    produce(kafka, spec.topic, records)
    assert run_ingest(definitions(spec, resources), spec, instance).success

    offline = {**resources, "kafka": KafkaResource(bootstrap_servers="127.0.0.1:1", timeout_s=1.0)}
    defs = definitions(spec, offline)  # a backfill never touches Kafka
    hours = spec.partitions.get_partition_keys_in_range(dg.PartitionKeyRange("2026-11-18-22:00", "2026-11-19-00:00"))
    assert hours == ["2026-11-18-22:00", "2026-11-18-23:00", "2026-11-19-00:00"]

    def backfill():
        for pk in hours:
            assert materialize(defs, ["silver_iot", *GOLD, *LOADS], pk, instance).success
        for day in ("2026-11-18", "2026-11-19"):
            assert materialize(defs, ["gold_iot_type_daily", "warehouse_iot_type_daily"], day, instance).success

    backfill()
    first = snapshot(resources, spec, hours)
    assert resources["lake"].read("silver", spec.name, "silver", hours).height == 270
    backfill()
    second = snapshot(resources, spec, hours)
    assert first == second
    assert resources["warehouse"].count("iot_type_daily") == 2 * 1  # one sensor type, two days


def test_backfill_of_an_hour_without_data_publishes_an_empty_partition(spec, resources, instance):
    defs = definitions(spec, resources)
    result = materialize(defs, ["silver_iot", "gold_iot_sensor_5m", "warehouse_iot_sensor_5m"], "2026-11-10-03:00", instance)
    assert result.success
    assert resources["lake"].read("silver", spec.name, "silver", ["2026-11-10-03:00"]).height == 0
    assert resources["warehouse"].count("iot_sensor_5m") == 0
