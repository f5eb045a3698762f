"""Late events (hours old) land in their own event-time partition and flow to Gold and the warehouse by
automation alone."""

from datetime import datetime, timedelta, timezone

import dagster as dg

from medallion.driver import drive
from tests.conftest import produce, reading
from tests.helpers import definitions


def test_late_events_reach_their_partition_and_gold_automatically(spec, resources, instance, kafka):
    defs = definitions(spec, resources)
    lake, warehouse = resources["lake"], resources["warehouse"]
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=1)
    produce(kafka, spec.topic, [reading(i, now - timedelta(seconds=i), sensor=i % 3) for i in range(60)])
    assert not drive(defs, instance, (spec,), timeout_s=300).failed_runs

    late_ts = now - timedelta(hours=4)
    late_pk = spec.partitions.get_partition_key_for_timestamp(late_ts.timestamp())
    assert late_pk not in lake.published_keys("gold", spec.name, "sensor_5m")
    produce(kafka, spec.topic, [reading(1000 + i, late_ts + timedelta(seconds=i), sensor=i % 3) for i in range(30)])
    log = drive(defs, instance, (spec,), timeout_s=300)
    assert not log.failed_runs and log.ingest_runs == 1 and log.automation_runs >= 1

    assert lake.read_bronze(spec.name, late_pk).height == 30
    assert lake.read("silver", spec.name, "silver", [late_pk]).height == 30
    gold = lake.read("gold", spec.name, "sensor_5m", [late_pk])
    assert gold["count"].sum() == 30
    loaded = warehouse.query_arrow(
        f"SELECT sum(count) AS n FROM iot_sensor_5m WHERE window_start >= toDateTime64('{late_ts.replace(minute=0):%Y-%m-%d %H:%M:%S}', 6, 'UTC') "
        f"AND window_start < toDateTime64('{late_ts.replace(minute=0) + timedelta(hours=1):%Y-%m-%d %H:%M:%S}', 6, 'UTC')"
    )
    assert loaded.column("n")[0].as_py() == 30
    # The older partition was materialized by automation, not by anyone asking for it.
    silver_events = instance.fetch_materializations(dg.AssetKey("silver_iot"), limit=100).records
    run = instance.get_run_by_id(next(r.run_id for r in silver_events if r.partition_key == late_pk))
    assert run.tags.get("dagster/from_automation_condition") == "true"
