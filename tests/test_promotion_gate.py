"""A bad batch is not promoted: Silver not published, blocking check fails with metadata, Gold and the
warehouse keep the previous good data."""

from datetime import datetime, timedelta, timezone

import dagster as dg
import polars as pl

from medallion.driver import drive
from tests.conftest import produce, reading
from tests.helpers import content_hash, definitions

H = datetime(2026, 11, 20, 7, 0, tzinfo=timezone.utc)
PK = "2026-11-20-07:00"


def test_bad_batch_blocks_promotion_and_last_good_keeps_serving(spec, resources, instance, kafka):
    defs = definitions(spec, resources)
    lake, warehouse = resources["lake"], resources["warehouse"]
    good = [reading(i, H + timedelta(seconds=i), sensor=i % 4) for i in range(200)]
    produce(kafka, spec.topic, good)
    log = drive(defs, instance, (spec,), timeout_s=300)
    assert not log.failed_runs

    silver_before = lake.read("silver", spec.name, "silver", [PK])
    gold_before = lake.read("gold", spec.name, "sensor_5m", [PK])
    wh_before = warehouse.query_arrow("SELECT * FROM iot_sensor_5m ORDER BY sensor_id, window_start")
    assert silver_before.height == 200 and gold_before.height > 0 and wh_before.num_rows == gold_before.height

    # A micro-batch of 60 readings far outside the physical range: all of it fails, over the 5% threshold.
    bad = [reading(1000 + i, H + timedelta(seconds=300 + i), sensor=i % 4, value=900.0) for i in range(60)]
    produce(kafka, spec.topic, bad)
    log = drive(defs, instance, (spec,), timeout_s=300)
    assert any("silver_iot" in f and PK in f for f in log.failed_runs)

    # Silver, Gold and the warehouse still serve the previous good version.
    assert content_hash(lake.read("silver", spec.name, "silver", [PK])) == content_hash(silver_before)
    assert content_hash(lake.read("gold", spec.name, "sensor_5m", [PK])) == content_hash(gold_before)
    assert warehouse.query_arrow("SELECT * FROM iot_sensor_5m ORDER BY sensor_id, window_start").equals(wh_before)

    # The failing rows are quarantined with the check that failed.
    quarantine = lake.read("quarantine", spec.name, "silver", [PK])
    assert quarantine.height == 60
    assert set(quarantine["check"]) == {"value_within_physical_range"}

    # The blocking check failed, with counts and a sample as metadata.
    check_key = dg.AssetCheckKey(dg.AssetKey("silver_iot"), "contract")
    record = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=1)[0]
    evaluation = record.event.dagster_event.event_specific_data
    assert evaluation.passed is False
    meta = evaluation.metadata
    assert meta["failed_rows"].value == 60 and meta["rows_checked"].value == 60  # the micro-batch's rows
    assert meta["failures_by_check"].value == {"value_within_physical_range": 60}
    assert meta["published"].value is False
    assert "900.0" in meta["failed_rows_sample"].value

    # Gold never ran for the blocked partition.
    gold_runs = instance.fetch_materializations(dg.AssetKey("gold_iot_sensor_5m"), limit=100).records
    assert len([r for r in gold_runs if r.partition_key == PK]) == 1

    # Good readings after it do not slip past the bad batch: the partition is derived in full, and the whole
    # hour (60 / 360 = 17%) still fails its contract.
    produce(kafka, spec.topic, [reading(2000 + i, H + timedelta(seconds=400 + i), sensor=i % 4) for i in range(100)])
    log = drive(defs, instance, (spec,), timeout_s=300)
    assert any("silver_iot" in f and PK in f for f in log.failed_runs)
    assert content_hash(lake.read("silver", spec.name, "silver", [PK])) == content_hash(silver_before)
    record = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=1)[0]
    assert record.event.dagster_event.event_specific_data.metadata["rows_checked"].value == 360
    assert lake.read("quarantine", spec.name, "silver", [PK]).height == 60


def test_a_few_bad_rows_are_quarantined_and_the_rest_published(spec, resources, instance, kafka):
    defs = definitions(spec, resources)
    rows = [reading(i, H + timedelta(seconds=i), sensor=i % 4) for i in range(200)]
    rows += [reading(500, H, value=900.0), reading(501, H, value="warm")]
    produce(kafka, spec.topic, rows)
    assert not drive(defs, instance, (spec,), timeout_s=300).failed_runs
    lake = resources["lake"]
    assert lake.read("silver", spec.name, "silver", [PK]).height == 200
    q = lake.read("quarantine", spec.name, "silver", [PK]).sort("check")
    assert q["check"].to_list() == ["fields_present_and_typed", "value_within_physical_range"]
    assert "must be a number, got string" in q["reason"][0]
    assert q.filter(pl.col("check") == "value_within_physical_range")["payload"].str.contains("900").all()
