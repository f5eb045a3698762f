"""A stream run consumes continuously and carries every micro-batch to the warehouse itself: rows become
visible while it runs, every layer reports one materialization per micro-batch, and the books balance."""

import threading
import time
from datetime import datetime, timedelta, timezone

import dagster as dg
import polars as pl

from assets.bronze import ingest_totals
from tests.conftest import produce, reading
from tests.helpers import definitions


def _stream_run(defs, spec, instance, seconds: float, holder: dict, partition_key: str | None = None) -> threading.Thread:
    job = defs.resolve_job_def(f"ingest_{spec.name}")
    config = {"ops": {f"bronze_{spec.name}": {"config": {"stream_for_s": seconds}}}}
    partition_key = partition_key or spec.partitions.get_last_partition_key()

    def run():
        holder["result"] = job.execute_in_process(run_config=config, instance=instance, tags={"medallion/stream": spec.name}, partition_key=partition_key, raise_on_error=False)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _visible(warehouse) -> int:
    try:
        return int(warehouse.query_arrow("SELECT sum(count) AS n FROM iot_sensor_5m").column("n")[0].as_py() or 0)
    except Exception:  # noqa: BLE001 - the table appears with the first load
        return 0


def _wait_for(predicate, timeout: float) -> float:
    began = time.monotonic()
    while not predicate():
        assert time.monotonic() - began < timeout, "not visible in time"
        time.sleep(0.1)
    return time.monotonic() - began


def test_a_stream_run_makes_each_micro_batch_visible_while_it_runs(spec, resources, instance, kafka):
    now = datetime.now(timezone.utc)
    if now.minute == 59 and now.second > 15:  # a stream run ends with its hour: start in the next one
        time.sleep(61 - now.second)
    defs, lake, warehouse = definitions(spec, resources), resources["lake"], resources["warehouse"]
    holder: dict = {}
    thread = _stream_run(defs, spec, instance, 25, holder)
    now = datetime.now(timezone.utc)
    start = max(now - timedelta(seconds=30), now.replace(minute=0, second=0, microsecond=0))  # inside the current hour
    produced = 0
    for batch in range(3):
        rows = [reading(batch * 1000 + i, start + timedelta(seconds=batch * 10 + i * 0.05), sensor=i % 4) for i in range(100)]
        produced += produce(kafka, spec.topic, rows)
        waited = _wait_for(lambda: _visible(warehouse) >= produced, timeout=15)
        assert thread.is_alive(), "the stream run ended early"
        assert waited < 10, f"batch {batch} took {waited:.1f} s to reach the warehouse"
    produce(kafka, spec.topic, [(b"sensor-0", b"not json")])
    thread.join(60)
    assert holder["result"].success

    pk = spec.partitions.get_last_partition_key()
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("silver_iot"), asset_partitions=[pk]), limit=50).records
    modes = [r.asset_materialization.metadata["mode"].value for r in records]
    assert len(records) >= 3 and modes.count("extended") >= 2, modes
    assert all(r.run_id == holder["result"].run_id for r in records)
    newest = records[0].asset_materialization.metadata
    assert newest["dagster/row_count"].value == produced and newest["freshness_s"].value >= 0
    for key in ("gold_iot_sensor_5m", "warehouse_iot_sensor_5m", "gold_iot_location_hourly"):
        assert len(instance.fetch_materializations(dg.AssetKey(key), limit=50).records) >= 3, key
    loads = instance.fetch_materializations(dg.AssetKey("warehouse_iot_sensor_5m"), limit=50).records
    assert all(0 <= r.asset_materialization.metadata["freshness_s"].value < 10 for r in loads)  # Kafka -> ClickHouse
    # Each load says how far into the topic the warehouse is (the bad record, a dead letter, loads nothing).
    offsets = [sum(r.asset_materialization.metadata["kafka_offsets"].value.values()) for r in loads]
    assert offsets == sorted(offsets, reverse=True) and offsets[0] == produced, offsets
    # One contract check per micro-batch in the run's log; the check's latest execution passed (automation
    # reads that one: a skipped or failed one would hold back what follows Silver).
    evaluations = [e for e in holder["result"].get_asset_check_evaluations() if e.asset_key == dg.AssetKey("silver_iot")]
    assert len(evaluations) >= 3 and all(e.passed for e in evaluations), [e.description for e in evaluations]
    [latest] = instance.event_log_storage.get_asset_check_execution_history(dg.AssetCheckKey(dg.AssetKey("silver_iot"), "contract"), limit=1)
    assert latest.status.value == "SUCCEEDED"

    totals = ingest_totals(lake, spec)
    assert totals["consumed"] == produced + 1 == totals["ingested"] + totals["dead_letter"]
    silver = lake.read("silver", spec.name, "silver", [pk])
    assert silver.height == produced and silver["event_id"].n_unique() == produced
    assert _visible(warehouse) == produced
    # Gold recomputed only the windows each micro-batch fell in, and equals a build from all of Silver.
    from assets.streams.iot import IOT
    from resources.delta import delta_frame

    for table in [t for t in IOT.gold if t.partitions == spec.partitions]:
        gold = lake.read("gold", spec.name, table.name, [pk])
        expected = delta_frame(table.build(silver))
        cols = [c for c in gold.columns if c not in ("avg", "stddev")]
        assert gold.select(cols).equals(expected.select(cols)), table.name
        assert ((gold["avg"] - expected["avg"]).abs() < 1e-9).all()
        assert gold["stddev"].is_null().equals(expected["stddev"].is_null()) and ((gold["stddev"] - expected["stddev"]).abs() < 1e-9).all()
        read_by = [r.asset_materialization.metadata["silver_read_by"].value for r in instance.fetch_materializations(dg.AssetKey(f"gold_iot_{table.name}"), limit=50).records]
        assert any("windows recomputed from rows in memory" in r for r in read_by), read_by
    # The daily rollup followed each micro-batch in the run (folded from the day's 5-minute rows), equal to
    # one built from the day's Silver, and is in the warehouse.
    from assets.gold import build_from_silver

    daily = IOT.gold[[t.name for t in IOT.gold].index("type_daily")]
    rollups = instance.fetch_materializations(dg.AssetKey("gold_iot_type_daily"), limit=50).records
    assert len(rollups) >= 3 and all(r.run_id == holder["result"].run_id for r in rollups)
    day = pk[:10]
    day_silver = lake.read("silver", spec.name, "silver", [k for k in lake.partition_rows("silver", spec.name, "silver") if k.startswith(day)])
    expected = delta_frame(build_from_silver(IOT, daily, day_silver))
    assert lake.read("gold", spec.name, "type_daily", [day]).equals(expected)
    assert warehouse.query_arrow("SELECT sum(count) AS n FROM iot_type_daily").column("n")[0].as_py() == produced
    assert lake.read_dead_letter(spec.name).filter(pl.col("payload") == "not json").height == 1


def test_a_run_that_waited_past_its_hour_streams_the_hour_current_now(spec, resources, instance, kafka):
    """The sensor queues the next run behind the current one for the hour current then; one that takes over
    after that hour has ended streams the new hour instead of ending after one pass (which left the new
    hour to a run not started yet)."""
    now = datetime.now(timezone.utc)
    if now.minute == 59 and now.second > 20:  # the whole test inside one hour
        time.sleep(61 - now.second)
        now = datetime.now(timezone.utc)
    defs, warehouse = definitions(spec, resources), resources["warehouse"]
    previous = spec.partitions.get_partition_key_for_timestamp((now - timedelta(hours=1)).timestamp())
    holder: dict = {}
    thread = _stream_run(defs, spec, instance, 15, holder, partition_key=previous)
    start = max(now - timedelta(seconds=30), now.replace(minute=0, second=0, microsecond=0))
    produced = 0
    for wave in range(2):  # the second after the first is visible: a run that ended after one pass misses it
        produced += produce(kafka, spec.topic, [reading(wave * 1000 + i, start + timedelta(seconds=wave * 10 + i * 0.05), sensor=i % 4) for i in range(100)])
        _wait_for(lambda: _visible(warehouse) >= produced, timeout=12)
    assert thread.is_alive(), "the run ended instead of streaming the current hour"
    thread.join(60)
    assert holder["result"].success
    current = spec.partitions.get_partition_key_for_timestamp(now.timestamp())
    loads = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("warehouse_iot_sensor_5m"), asset_partitions=[current]), limit=10).records
    assert len(loads) >= 2 and all(r.run_id == holder["result"].run_id for r in loads)


def test_a_stream_run_killed_between_its_quarantine_and_silver_commits_is_repaired(spec, resources, broker, shared_instance, kafka):
    """SIGKILL after a micro-batch's quarantine commit, before its Silver commit: the next run finds the two
    holding different Bronze versions, derives the hour in full, and nothing is lost or doubled."""
    import signal

    from assets.contracts.gate import apply_contract
    from assets.spec import SilverContext
    from assets.transforms.dedup import derive_silver
    from tests.conftest import run_child

    instance, lake, warehouse = shared_instance, resources["lake"], resources["warehouse"]
    defs = definitions(spec, resources)
    hour, pk = datetime(2026, 11, 20, 9, tzinfo=timezone.utc), "2026-11-20-09:00"
    job = defs.resolve_job_def(f"ingest_{spec.name}")
    config = {"ops": {f"bronze_{spec.name}": {"config": {"stream_for_s": 5}}}}

    produce(kafka, spec.topic, [reading(i, hour + timedelta(seconds=i), sensor=i % 4) for i in range(100)])
    assert job.execute_in_process(run_config=config, instance=instance, partition_key=pk, tags={"medallion/stream": spec.name}).success
    batch = [reading(i, hour + timedelta(seconds=i), sensor=i % 4) for i in range(100, 200)]
    batch += [reading(900, hour + timedelta(seconds=300), value=900.0), reading(5, hour + timedelta(seconds=5), sensor=1, value=30.0)]
    produce(kafka, spec.topic, batch)
    crashed = run_child(spec, resources, broker, "stream", pk, "5", failpoint="publish.silver.before_replace")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert lake.read("quarantine", spec.name, "silver", [pk]).height == 2  # committed; Silver was not
    assert lake.read("silver", spec.name, "silver", [pk]).height == 100

    # Its process is gone and nothing is left to read: the platform's sensors and automation (as the daemon
    # runs them) find the dead run and the partition Silver is behind on.
    from medallion.driver import drive

    assert not drive(defs, instance, (spec,), timeout_s=300).failed_runs
    [latest] = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("silver_iot"), asset_partitions=[pk]), limit=1).records
    assert latest.asset_materialization.metadata["mode"].value == "re-derived"
    bronze = lake.read_bronze(spec.name, pk)
    assert bronze.height == 202 and ingest_totals(lake, spec)["consumed"] == 202
    expected = derive_silver(spec, apply_contract(bronze, spec.row_contract).passed, None, SilverContext(pk, datetime.now(timezone.utc), "x"))
    silver = lake.read("silver", spec.name, "silver", [pk]).sort("source_partition", "source_offset")
    assert silver["event_id"].to_list() == expected.rows.sort("source_partition", "source_offset")["event_id"].to_list()
    quarantine = lake.read("quarantine", spec.name, "silver", [pk])
    assert sorted(quarantine["check"].to_list()) == ["event_id_unique_content", "value_within_physical_range"]
    assert _visible(warehouse) == 200
