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
    assert not after_silver.get_requested_partitions(A("silver_iot"))  # handled: no repeat

    # The daily rollup folds the 5-minute table: it follows that one's hour (its first check passed).
    materialize(defs, ["gold_iot_sensor_5m"], "2026-11-19-03:00", instance)
    after_gold = evaluate(defs, instance, after_silver.cursor)
    assert after_gold.get_requested_partitions(A("gold_iot_type_daily")) == {"2026-11-19"}
    assert not after_gold.get_requested_partitions(A("gold_iot_sensor_5m"))


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


def test_older_partitions_follow_in_waves_of_the_late_data_cron(instance):
    """Late data reaches old partitions with nearly every micro-batch: they are asked for at most once per
    tick of the cron, taking their changes together."""
    from datetime import timedelta

    from assets.automation import follow_parents
    from assets.partitions import HOURLY

    @dg.asset(partitions_def=HOURLY)
    def up():
        pass

    @dg.asset(partitions_def=HOURLY, deps=[up], automation_condition=follow_parents("*/2 * * * *"))
    def down():
        pass

    defs, pk = dg.Definitions(assets=[up, down]), "2026-11-19-03:00"
    t0 = datetime(2026, 12, 1, 10, 0, 30, tzinfo=timezone.utc)

    def at(seconds, cursor):
        return dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor, evaluation_time=t0 + timedelta(seconds=seconds))

    def update(key):
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=pk))

    cursor = at(0, None).cursor
    update("up")
    before_tick = at(10, cursor)
    assert not before_tick.get_requested_partitions(A("down"))  # waits for the 10:02 tick
    wave = at(95, before_tick.cursor)
    assert wave.get_requested_partitions(A("down")) == {pk}
    update("down")
    done = at(97, wave.cursor)
    update("up")  # more late data right after the wave
    quiet = at(100, done.cursor)
    assert not quiet.get_requested_partitions(A("down"))
    assert at(215, quiet.cursor).get_requested_partitions(A("down")) == {pk}  # the 10:04 tick
