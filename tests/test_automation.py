"""Declarative automation: Silver/Gold/warehouse follow their parents for any partition, gated by checks."""

from datetime import datetime, timezone

import dagster as dg

from tests.conftest import produce, reading
from tests.helpers import definitions, materialize, run_ingest

OLD = datetime(2026, 11, 19, 3, 15, tzinfo=timezone.utc)  # far from the latest window
A = dg.AssetKey


def evaluate(defs, instance, cursor):
    return dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)


def test_chain_follows_bronze_for_an_old_partition(spec, resources, instance, kafka):
    defs = definitions(spec, resources)
    first = evaluate(defs, instance, None)
    assert first.total_requested == 0  # nothing has data yet

    produce(kafka, spec.topic, [reading(i, OLD, sensor=i % 3) for i in range(30)])
    assert run_ingest(defs, spec, instance).success
    after_bronze = evaluate(defs, instance, first.cursor)
    assert after_bronze.get_requested_partitions(A("silver_iot")) == {"2026-11-19-03:00"}

    materialize(defs, ["silver_iot"], "2026-11-19-03:00", instance)
    after_silver = evaluate(defs, instance, after_bronze.cursor)
    assert after_silver.get_requested_partitions(A("gold_iot_sensor_5m")) == {"2026-11-19-03:00"}
    assert after_silver.get_requested_partitions(A("gold_iot_type_daily")) == {"2026-11-19"}
    assert not after_silver.get_requested_partitions(A("silver_iot"))  # handled: no repeat


def test_failed_blocking_check_stops_gold(spec, resources, instance, kafka):
    defs = definitions(spec, resources)
    cursor = evaluate(defs, instance, None).cursor
    bad = [reading(i, OLD, value=500.0) for i in range(10)]  # every row outside the physical range
    produce(kafka, spec.topic, bad)
    assert run_ingest(defs, spec, instance).success
    cursor = evaluate(defs, instance, cursor).cursor
    result = materialize(defs, ["silver_iot"], "2026-11-19-03:00", instance, raise_on_error=False)
    assert not result.success
    [evaluation] = result.get_asset_check_evaluations()
    assert not evaluation.passed
    after = evaluate(defs, instance, cursor)
    assert not after.get_requested_partitions(A("gold_iot_sensor_5m"))
    assert not after.get_requested_partitions(A("gold_iot_type_daily"))
