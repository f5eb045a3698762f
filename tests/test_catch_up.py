"""A backlog of many hours goes through Silver, Gold and the warehouse in one catch-up run (assets/catch_up.py):
the same data as a run per partition, every partition reported as its own runs report it, and an hour that
fails its contract is not published while the others are."""

from datetime import datetime, timedelta, timezone

import dagster as dg
import polars as pl

from assets import catch_up
from medallion import driver
from medallion.driver import drive
from resources.lake import LakeResource, LakeTable
from resources.warehouse import WarehouseResource
from tests.conftest import produce, reading
from tests.helpers import definitions

H0 = datetime(2026, 11, 18, 3, 0, tzinfo=timezone.utc)
HOURS = [H0 + timedelta(hours=h) for h in range(6)]
KEYS = [h.strftime("%Y-%m-%d-%H:00") for h in HOURS]
RUN_DEPENDENT = ("processed_at", "ingested_at", "loaded_at")  # when it ran, not what it holds


def backlog(bad_hour: int | None = None) -> list:
    """40 readings an hour from 4 sensors, each hour sent out of order, with a duplicate of every tenth."""
    records = []
    for h, start in enumerate(HOURS):
        hour = [reading(h * 100 + i, start + timedelta(seconds=59 * i), sensor=i % 4, value=900.0 if h == bad_hour else None) for i in range(40)]
        records += list(reversed(hour)) + hour[::10]
    return records


def drive_into(spec, kafka, root, catch_up_from: int, monkeypatch):
    """`drive` on a lake, warehouse and instance of its own: (resources, log, runs, job per reported partition, Silver check records)."""
    monkeypatch.setattr(catch_up, "CATCH_UP_FROM", catch_up_from)
    resources = {"kafka": kafka, "lake": LakeResource(uri=str(root / "lake")), "warehouse": WarehouseResource(chdb_path=str(root / "warehouse"))}
    with dg.instance_for_test() as instance:
        log = drive(definitions(spec, resources), instance, (spec,), timeout_s=300)
        runs = instance.get_runs()
        reported = {}
        for key in ("silver_iot", "gold_iot_sensor_5m", "gold_iot_location_hourly", "warehouse_iot_sensor_5m"):
            records = instance.fetch_materializations(dg.AssetKey(key), limit=1000).records
            reported[key] = {r.partition_key: instance.get_run_by_id(r.run_id).job_name for r in records}
        checks = instance.event_log_storage.get_asset_check_execution_history(dg.AssetCheckKey(dg.AssetKey("silver_iot"), "contract"), limit=100)
    return resources, log, runs, reported, checks


def table(resources, layer: str, name: str) -> pl.DataFrame:
    rows = resources["lake"].read_table(LakeTable(layer, "iot", name), None)
    assert rows is not None, (layer, name, resources["lake"].uri)
    rows = rows.drop([c for c in rows.columns if c in RUN_DEPENDENT])
    return rows.sort(rows.columns)


def test_a_backlog_goes_in_one_run_with_the_data_of_a_run_per_partition(spec, kafka, tmp_path, monkeypatch):
    produce(kafka, spec.topic, backlog())
    batched, log, runs, reported, _ = drive_into(spec, kafka, tmp_path / "batched", catch_up.CATCH_UP_FROM, monkeypatch)
    assert not log.failed_runs
    assert [r.job_name for r in runs].count("catch_up_iot") == 1
    per_hour_jobs = [r for r in runs if r.tags.get("dagster/partition") in KEYS]
    assert per_hour_jobs == []  # no hour had a run of its own
    # Each hour is reported as its own run would report it: one materialization per asset and hour.
    for key in ("silver_iot", "gold_iot_sensor_5m", "gold_iot_location_hourly", "warehouse_iot_sensor_5m"):
        assert {pk: job for pk, job in reported[key].items() if pk in KEYS} == dict.fromkeys(KEYS, "catch_up_iot"), key

    one_by_one, log, runs, _, _ = drive_into(spec, kafka, tmp_path / "per-partition", 10**6, monkeypatch)
    assert not log.failed_runs and "catch_up_iot" not in [r.job_name for r in runs]
    for layer, name in (("silver", "silver"), ("quarantine", "silver"), ("gold", "sensor_5m"), ("gold", "location_hourly"), ("gold", "type_daily")):
        assert table(batched, layer, name).equals(table(one_by_one, layer, name)), (layer, name)
    assert table(batched, "silver", "silver").height == 6 * 40  # duplicates dropped, nothing lost
    for wh in ("iot_sensor_5m", "iot_location_hourly", "iot_type_daily"):
        query = f"SELECT * FROM {wh} ORDER BY ALL"
        assert batched["warehouse"].query_arrow(query).equals(one_by_one["warehouse"].query_arrow(query)), wh


def test_an_hour_that_fails_its_contract_in_a_catch_up_is_not_published_and_fails_the_run(spec, kafka, tmp_path, monkeypatch):
    produce(kafka, spec.topic, backlog(bad_hour=2))
    resources, log, runs, reported, checks = drive_into(spec, kafka, tmp_path / "lake-home", catch_up.CATCH_UP_FROM, monkeypatch)
    [carried] = [r for r in runs if r.job_name == "catch_up_iot"]
    assert carried.status == dg.DagsterRunStatus.FAILURE
    assert log.failed_runs == [f"catch_up_iot {carried.run_id}"]
    lake = resources["lake"]
    assert KEYS[2] not in lake.published_keys("silver", "iot", "silver")
    # Its 44 Bronze rows (40 readings and 4 producer duplicates) all fail the physical range, and are quarantined.
    quarantined = lake.read("quarantine", "iot", "silver", [KEYS[2]])
    assert quarantined.height == 44 and set(quarantined["check"]) == {"value_within_physical_range"}
    assert set(lake.published_keys("silver", "iot", "silver")) >= set(KEYS) - {KEYS[2]}
    assert KEYS[2] not in reported["silver_iot"] and KEYS[2] not in reported["gold_iot_sensor_5m"]
    # The run's check record ends on the failure (the UI and the alert sensor read it), not on a later hour.
    [failed] = [c for c in checks if c.status.value == "FAILED"]
    assert failed.run_id == carried.run_id
    assert failed.event.dagster_event.event_specific_data.metadata["failed_rows"].value == 44


def test_a_backfill_of_many_hours_is_one_catch_up_run_and_repeatable(spec, resources, instance, kafka):
    from medallion.backfill import backfill
    from tests.helpers import content_hash, run_ingest

    produce(kafka, spec.topic, backlog())
    defs = definitions(spec, resources)
    assert run_ingest(defs, spec, instance).success
    said = []
    runs = backfill(defs, instance, KEYS[0], KEYS[-1], streams=(spec,), say=said.append)
    assert all(r.success for r in runs)
    # The six hours of Silver, Gold and loads in one run (the day is not inside the range: no rollup run).
    assert [instance.get_run_by_id(r.run_id).job_name for r in runs] == ["catch_up_iot"]
    assert said[0].startswith(f"{KEYS[0]} … {KEYS[-1]}: ok (6 partitions of")
    lake = resources["lake"]
    names = {"silver": "silver", "sensor_5m": "gold", "location_hourly": "gold"}
    first = {name: content_hash(table(resources, layer, name)) for name, layer in names.items()}
    assert table(resources, "silver", "silver").height == 6 * 40
    assert resources["warehouse"].query_arrow("SELECT sum(count) AS n FROM iot_sensor_5m").column("n")[0].as_py() == 6 * 40
    assert all(r.success for r in backfill(defs, instance, KEYS[0], KEYS[-1], streams=(spec,)))
    assert {name: content_hash(table(resources, layer, name)) for name, layer in names.items()} == first
    assert lake.published_keys("silver", "iot", "silver") == KEYS
