"""SIGKILL at every failpoint of ingestion and publishing; recovery leaves every record exactly once."""

import signal
from datetime import datetime, timedelta, timezone

import dagster as dg
import polars as pl
import pytest

from assets.bronze import ingest_totals, needs_announcing
from tests.conftest import ON_BOTH_LAKES, produce, reading, run_child
from tests.helpers import content_hash, definitions, materialize, run_ingest, sensor_tick


pytestmark = ON_BOTH_LAKES

T = datetime(2026, 11, 20, 4, 50, tzinfo=timezone.utc)  # spans hours 04 and 05
INGEST_FAILPOINTS = [
    "ingest.after_recover",
    "ingest.after_read",
    "ingest.mid_stage",
    "ingest.after_stage",  # Bronze files written, none committed
    "ingest.before_commit",  # dead-letter files written too
    "ingest.between_commits",  # dead-letter committed, Bronze not
    "ingest.after_commit",  # both committed, nothing announced
    "report.after_dead_letter_topic",
    "report.mid_events",
    "report.after_events",
    "report.after_group_offsets",
]
NOTHING_TO_RECOVER = {"report.after_events", "report.after_group_offsets"}  # every event out: only the lag mirror left


def workload():
    good = [reading(i, T + timedelta(seconds=3 * i), sensor=i % 6) for i in range(400)]
    bad = [(b"s1", b"{oops"), (b"s2", b""), (b"s3", b"\xff")]
    return good + bad


def bronze_snapshot(lake, spec):
    frames = [lake.read_bronze(spec.name, pk) for pk in ("2026-11-20-04:00", "2026-11-20-05:00")]
    bronze = pl.concat([f for f in frames if f is not None])
    return bronze, lake.read_dead_letter(spec.name)


@pytest.mark.slow
@pytest.mark.parametrize("point", INGEST_FAILPOINTS)
def test_sigkill_during_ingest_recovers_exactly_once(point, spec, resources, broker, shared_instance, kafka):
    instance = shared_instance
    produce(kafka, spec.topic, workload())
    crashed = run_child(spec, resources, broker, "ingest", failpoint=point)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]

    # The next sensor tick sees the dead run (it held the ingest lock), marks it failed, and asks again,
    # unless the crash came after everything but the consumer-group mirror (display only).
    defs = definitions(spec, resources)
    tick = sensor_tick(defs, spec, instance)
    dead = instance.get_runs(filters=dg.RunsFilter(job_name=f"ingest_{spec.name}"))
    assert all(r.status != dg.DagsterRunStatus.STARTED for r in dead)
    if point in NOTHING_TO_RECOVER:
        assert not tick.run_requests and "lag 0" in tick.skip_message
    else:
        assert tick.run_requests, tick.skip_message
        assert run_ingest(defs, spec, instance, tick.run_requests[0]).success

    lake = resources["lake"]
    bronze, dead_letter = bronze_snapshot(lake, spec)
    assert ingest_totals(lake, spec)["consumed"] == 403 == bronze.height + dead_letter.height
    assert bronze.select(pl.struct("kafka_partition", "kafka_offset").n_unique()).item() == bronze.height
    assert sorted(bronze["event_id"]) == sorted(f"evt-{i}" for i in range(400))
    assert dead_letter.height == 3 and dead_letter["kafka_offset"].n_unique() == 3
    assert not needs_announcing(instance, spec, lake)
    # Each partition got exactly one materialization event per commit that touched it, so downstream
    # automation reacts (and not twice).
    events = instance.fetch_materializations(dg.AssetKey("bronze_iot"), limit=100).records
    announced = [(r.partition_key, r.asset_materialization.metadata["lake/version"].value) for r in events]
    assert {pk for pk, _ in announced} == {"2026-11-20-04:00", "2026-11-20-05:00"}
    assert len(announced) == len(set(announced)), announced

    # And the result is the same as a run that never crashed.
    assert run_ingest(defs, spec, instance).success
    again, _ = bronze_snapshot(lake, spec)
    assert content_hash(again) == content_hash(bronze)


@pytest.mark.slow
@pytest.mark.parametrize(
    "point, keys",
    [
        ("publish.silver.before_replace", "silver_iot"),
        ("publish.silver.history.before_replace", "silver_iot"),
        ("publish.quarantine.before_replace", "silver_iot"),
        ("publish.gold.before_replace", "gold_iot_sensor_5m"),
        ("warehouse.before_replace", "warehouse_iot_sensor_5m"),
        ("warehouse.after_replace", "warehouse_iot_sensor_5m"),
    ],
)
def test_sigkill_mid_publish_never_shows_half_a_partition(point, keys, spec, resources, broker, shared_instance, kafka):
    instance = shared_instance
    lake, wh = resources["lake"], resources["warehouse"]
    pk = "2026-11-20-05:00"
    defs = definitions(spec, resources)
    chain = ["silver_iot", "gold_iot_sensor_5m", "warehouse_iot_sensor_5m"]
    produce(kafka, spec.topic, [reading(i, T + timedelta(minutes=10, seconds=i), sensor=i % 3) for i in range(90)])
    assert run_ingest(defs, spec, instance).success
    assert materialize(defs, chain, pk, instance).success
    before = {
        "silver": content_hash(lake.read("silver", spec.name, "silver", [pk])),
        "gold": content_hash(lake.read("gold", spec.name, "sensor_5m", [pk])),
        "warehouse": wh.query_arrow("SELECT * FROM iot_sensor_5m ORDER BY sensor_id, window_start"),
    }

    produce(kafka, spec.topic, [reading(1000 + i, T + timedelta(minutes=30, seconds=i), sensor=i % 3) for i in range(60)])
    assert run_ingest(defs, spec, instance).success
    crashed = run_child(spec, resources, broker, "assets", ",".join(chain[: chain.index(keys) + 1]), pk, failpoint=point)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]

    # Readers see the old version or the new one, whole (Parquet readable, row counts consistent).
    silver = lake.read("silver", spec.name, "silver", [pk])
    assert silver.height in (90, 150)
    gold = lake.read("gold", spec.name, "sensor_5m", [pk])
    assert gold["count"].sum() in (90, 150)
    assert wh.query_arrow("SELECT sum(count) AS n FROM iot_sensor_5m").column("n")[0].as_py() in (90, 150)
    if keys == "silver_iot" and point.startswith("publish.silver.before_replace"):
        assert content_hash(silver) == before["silver"]
    if keys == "gold_iot_sensor_5m":
        assert content_hash(gold) == before["gold"]
    if point == "warehouse.before_replace":
        assert wh.query_arrow("SELECT * FROM iot_sensor_5m ORDER BY sensor_id, window_start").equals(before["warehouse"])

    # The rerun completes it, and leaves no scratch tables or temp files behind.
    assert materialize(defs, chain, pk, instance).success
    assert lake.read("silver", spec.name, "silver", [pk]).height == 150
    assert wh.query_arrow("SELECT sum(count) AS n FROM iot_sensor_5m").column("n")[0].as_py() == 150
    tables = {r["name"] for r in wh.query_arrow("SELECT name FROM system.tables WHERE database = currentDatabase()").to_pylist()}
    assert tables == {"iot_sensor_5m"}
