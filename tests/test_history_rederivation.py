"""Late data that changes a sensor's rolling history re-derives every later hour whose result depends on it,
and no other, by the platform's own sensors and automation; the outcome equals a from-scratch derivation.

The reference here is independent of the platform's code: each sensor's readings in event-time order,
z-scores against the previous 100 readings (sample standard deviation, at least 10), computed in Python.
"""

import random
import statistics
from datetime import datetime, timedelta, timezone

import dagster as dg
import polars as pl
import pytest

from assets.contracts.iot import EXPECTED_BAND
from assets.partitions import HOURLY
from assets.transforms import iot
from medallion.driver import drive
from tests.conftest import produce
from tests.helpers import definitions

DAY = datetime(2026, 11, 20, tzinfo=timezone.utc)
HOURS = [DAY + timedelta(hours=h) for h in range(6)]  # H0..H5
DENSE = [f"dense-{i}" for i in range(4)]  # one reading every 10 s: 360 an hour
SPARSE = "sparse-0"  # 40 an hour: its last 100 readings reach back over two and a half hours


def reading(event_id: str, sensor: str, ts: datetime, value: float) -> dict:
    return {"event_id": event_id, "sensor_id": sensor, "sensor_type": "temperature", "location": f"loc-{sensor[-1]}",
            "value": value, "unit": "°C", "ts": ts.isoformat()}  # fmt: skip


def stream(rng: random.Random) -> list[dict]:
    out = []
    for h, start in enumerate(HOURS):
        for sensor in DENSE:
            out += [reading(f"{sensor}-{h}-{i}", sensor, start + timedelta(seconds=10 * i + 3), round(rng.gauss(21, 1.5), 3)) for i in range(360)]
        out += [reading(f"{SPARSE}-{h}-{i}", SPARSE, start + timedelta(seconds=90 * i + 7), round(rng.gauss(40, 4), 3)) for i in range(40)]
    return out


def late_readings() -> list[dict]:
    h1 = HOURS[1]
    return [
        # dense-0, four minutes before the end of H1: part of the history H2's first readings look back on
        *[reading(f"late-d0-{i}", "dense-0", h1 + timedelta(minutes=56, seconds=i * 10 + 5), 84.0) for i in range(6)],
        # the sparse sensor, near the end of H1: the next 100 readings reach into H4
        reading("late-s0", SPARSE, h1 + timedelta(minutes=58, seconds=31), -39.0),
        # dense-1, early in H0: hundreds of its readings follow within H0, so no later hour depends on it
        reading("late-d1", "dense-1", HOURS[0] + timedelta(minutes=10, seconds=1), 60.5),
    ]


def reference_silver(bronze: pl.DataFrame) -> pl.DataFrame:
    """z-score and anomaly flag of every reading, from all the data at once."""
    out = []
    rows = sorted(bronze.select("event_id", "sensor_id", "sensor_type", "event_time", "value").iter_rows(named=True), key=lambda r: (r["sensor_id"], r["event_time"]))
    history: dict[str, list[float]] = {}
    for r in rows:
        prev = history.setdefault(r["sensor_id"], [])[-iot.ZSCORE_WINDOW :]
        z = None
        if len(prev) >= iot.ZSCORE_MIN_HISTORY and statistics.stdev(prev) > 0:
            z = (r["value"] - statistics.fmean(prev)) / statistics.stdev(prev)
        low, high = EXPECTED_BAND[r["sensor_type"]]
        out.append({"event_id": r["event_id"], "ref_z": z, "ref_anomaly": (z is not None and abs(z) > iot.ZSCORE_THRESHOLD) or not low <= r["value"] <= high})
        history[r["sensor_id"]].append(r["value"])
    return pl.DataFrame(out, schema={"event_id": pl.String, "ref_z": pl.Float64, "ref_anomaly": pl.Boolean})


def partition_keys() -> list[str]:
    return [HOURLY.get_partition_key_for_timestamp(h.timestamp()) for h in HOURS]


def silver_derivations(instance, pk: str) -> int:
    """How many times a Silver partition was derived (each derivation logs one observation)."""
    return len(instance.fetch_observations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("silver_iot"), asset_partitions=[pk]), limit=1000).records)


def assert_equals_from_scratch(lake, warehouse, spec):
    keys = partition_keys()
    silver = lake.read("silver", spec.name, "silver", keys)
    bronze = pl.concat([lake.read_bronze(spec.name, pk) for pk in keys])
    ref = reference_silver(bronze)
    assert silver.height == bronze.height == ref.height  # no duplicates, nothing quarantined in this data
    both = silver.join(ref, on="event_id", how="inner")
    assert both.height == ref.height
    wrong = both.filter(
        (pl.col("z_score").is_null() != pl.col("ref_z").is_null())
        | ((pl.col("z_score") - pl.col("ref_z")).abs() > 1e-9 * pl.col("ref_z").abs().clip(1, None))
        | (pl.col("is_anomaly") != pl.col("ref_anomaly"))
    )
    assert wrong.height == 0, wrong.select("event_id", "sensor_id", "event_time", "z_score", "ref_z", "is_anomaly", "ref_anomaly").head(10)

    # Gold from the from-scratch Silver, window by window, and the warehouse equal to Gold.
    scratch = silver.drop("z_score", "is_anomaly").join(ref.rename({"ref_z": "z_score", "ref_anomaly": "is_anomaly"}), on="event_id")
    for table, build, order in [
        ("sensor_5m", iot.gold_sensor_5m, ["sensor_id", "window_start"]),
        ("location_hourly", iot.gold_location_hourly, ["location", "sensor_type", "hour_start"]),
    ]:
        gold = lake.read("gold", spec.name, table, keys).sort(order)
        expected = build(scratch).sort(order)
        assert gold.select(order + ["count", "anomaly_count"]).equals(expected.select(order + ["count", "anomaly_count"])), table
        assert ((gold["avg"] - expected["avg"]).abs() < 1e-9).all()
        loaded = pl.from_arrow(warehouse.query_arrow(f"SELECT * FROM iot_{table}")).sort(order)
        assert loaded.select(order + ["count", "anomaly_count"]).with_columns(pl.col(order[-1]).cast(gold[order[-1]].dtype)).equals(
            gold.select(order + ["count", "anomaly_count"])
        ), table
    daily = lake.read("gold", spec.name, "type_daily", ["2026-11-20"])
    assert daily["anomaly_count"].to_list() == [int(ref["ref_anomaly"].sum())]


@pytest.mark.slow
def test_late_data_rederives_the_hours_that_depend_on_it_and_no_others(spec, resources, instance, kafka):
    lake, warehouse = resources["lake"], resources["warehouse"]
    defs = definitions(spec, resources)
    produce(kafka, spec.topic, stream(random.Random(5)))
    assert not drive(defs, instance, (spec,), timeout_s=600).failed_runs
    assert_equals_from_scratch(lake, warehouse, spec)
    keys = partition_keys()
    before = {pk: silver_derivations(instance, pk) for pk in keys}
    gold_before = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("gold_iot_sensor_5m"), asset_partitions=[keys[5]]), limit=100).records

    produce(kafka, spec.topic, late_readings())
    log = drive(defs, instance, (spec,), timeout_s=600)
    assert not log.failed_runs
    assert_equals_from_scratch(lake, warehouse, spec)

    # H0 and H1 got late data; H2..H4 depend on H1's history; H5 does not (no sensor's last 100 readings
    # before it changed), so it was not derived again, and nor was its Gold.
    after = {pk: silver_derivations(instance, pk) for pk in keys}
    assert [after[pk] - before[pk] > 0 for pk in keys] == [True, True, True, True, True, False], (before, after)
    gold_after = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("gold_iot_sensor_5m"), asset_partitions=[keys[5]]), limit=100).records
    assert len(gold_after) == len(gold_before)
    # The re-derivations of H2..H4 were asked for by the history sensor, not by anyone by hand.
    reasons = {r.tags.get("dagster/partition"): r.tags.get("medallion/reason") for r in instance.get_runs(filters=dg.RunsFilter(tags={"dagster/sensor_name": "history_iot"}))}
    assert set(reasons) == set(keys[2:5]), reasons


def test_a_late_impression_yesterday_credits_the_click_after_midnight(kafka, resources, instance, monkeypatch):
    """The same for the ads stream's history (impressions within the attribution window)."""
    import dataclasses
    import json
    import uuid

    from assets.streams.ads import ADS

    monkeypatch.setenv("MEDALLION_PII_KEY", "history-test-key")
    spec = dataclasses.replace(ADS, topic=f"test.ads.{uuid.uuid4().hex[:8]}")
    kafka.ensure_topics({spec.topic: spec.kafka_partitions, spec.dead_letter_topic: 1})
    defs = definitions(spec, resources)
    lake = resources["lake"]

    def event(i, kind, at):
        return {"event_id": i, "event_type": kind, "campaign_id": "cmp-1", "ad_id": "ad-1", "user_id": "ann", "cost": 0.3, "ts": at.isoformat()}

    def send(*events):
        produce(kafka, spec.topic, [(e["campaign_id"].encode(), json.dumps(e).encode()) for e in events])

    midnight = DAY + timedelta(days=1)
    send(event("i0", "impression", DAY + timedelta(minutes=10)), event("c1", "click", midnight + timedelta(minutes=20)))
    assert not drive(defs, instance, (spec,), timeout_s=300).failed_runs
    day2 = lake.read("silver", spec.name, "silver", ["2026-11-21"])
    assert day2["attributed_impression_id"].to_list() == [None]  # i0 is more than 24 h before the click

    send(event("i-late", "impression", midnight - timedelta(minutes=30)))  # yesterday, within the window
    assert not drive(defs, instance, (spec,), timeout_s=300).failed_runs
    day2 = lake.read("silver", spec.name, "silver", ["2026-11-21"])
    assert day2["attributed_impression_id"].to_list() == ["i-late"]
    gold = lake.read("gold", spec.name, "campaign_daily", ["2026-11-21"])
    assert gold["attributed_clicks"].to_list() == [1]


def test_a_history_change_reaches_past_an_hour_that_failed_its_contract(spec, resources, instance, kafka):
    """H1 fails its contract (never published, no history of its own): H2 started from H0's history, so a
    change to H0's history re-derives H2."""
    lake = resources["lake"]
    defs = definitions(spec, resources)
    rng = random.Random(9)
    h0, h1, h2 = HOURS[:3]
    good = [reading(f"a{i}", "dense-0", h0 + timedelta(seconds=10 * i + 3), round(rng.gauss(21, 1.5), 3)) for i in range(360)]
    good += [reading(f"c{i}", "dense-0", h2 + timedelta(seconds=10 * i + 3), round(rng.gauss(21, 1.5), 3)) for i in range(360)]
    bad = [reading(f"b{i}", "dense-0", h1 + timedelta(seconds=60 * i), 500.0) for i in range(30)]  # outside the physical range
    produce(kafka, spec.topic, good + bad)
    drive(defs, instance, (spec,), timeout_s=300)  # H1's check fails: that run is expected to fail
    keys = partition_keys()
    assert lake.read("silver", spec.name, "silver", [keys[1]]) is None and lake.read("silver", spec.name, "history", [keys[1]]) is None

    produce(kafka, spec.topic, [reading("late-a", "dense-0", h0 + timedelta(minutes=59, seconds=58), 80.0)])
    drive(defs, instance, (spec,), timeout_s=300)
    silver = lake.read("silver", spec.name, "silver", [keys[0], keys[2]])
    bronze = pl.concat([lake.read_bronze(spec.name, keys[0]), lake.read_bronze(spec.name, keys[2])])
    both = silver.join(reference_silver(bronze), on="event_id")
    assert both.height == 721
    assert both.filter((pl.col("z_score") - pl.col("ref_z")).abs() > 1e-9).height == 0
    first_of_h2 = both.filter(pl.col("event_id") == "c0")
    assert first_of_h2["z_score"][0] == pytest.approx(first_of_h2["ref_z"][0], rel=1e-12)  # it sees the late reading


@pytest.mark.slow
def test_an_erasure_waits_for_a_derivation_that_read_the_subjects_history(spec, resources, broker, shared_instance, kafka, tmp_path):
    """A derivation holds the history it read: an erasure meanwhile would miss the history it then writes,
    carrying the subject's readings on. The derivation is held right after reading (a failpoint)."""
    import threading

    from assets.erasure import Subject, erase
    from tests.conftest import start_held_child

    lake, defs = resources["lake"], definitions(spec, resources)
    h0, h2 = HOURS[0], HOURS[2]
    produce(kafka, spec.topic, [reading(f"a{i}", f"dense-{i % 2}", h0 + timedelta(seconds=30 * i), 21.0 + i % 5) for i in range(40)])
    drive(defs, shared_instance, (spec,), timeout_s=300)
    produce(kafka, spec.topic, [reading(f"c{i}", "dense-1", h2 + timedelta(seconds=30 * i), 21.0 + i % 5) for i in range(20)])
    assert run_ingest_only(defs, spec, shared_instance)
    keys = partition_keys()
    # H2 derives from H0's history, which carries dense-0's readings on though H2 has none of its own.
    release = tmp_path / "release"
    held = start_held_child(spec, resources, broker, "assets", "silver_iot", keys[2], point="silver.after_context", release=release)
    result = {}
    eraser = threading.Thread(target=lambda: result.update(erase(Subject("sensor", "dense-0"), lake, resources["warehouse"], streams=(spec,))))
    eraser.start()
    eraser.join(3)
    waited = eraser.is_alive()
    release.touch()
    assert held.wait(120) == 0
    eraser.join(120)
    assert result["removed"]["history"][spec.name] > 0
    for pk in keys[:3]:
        history = lake.read("silver", spec.name, "history", [pk])
        assert history is None or "dense-0" not in history["sensor_id"].to_list(), f"{pk} still carries the erased sensor"
    assert waited, "the erasure did not wait for the derivation holding the history it read"


def run_ingest_only(defs, spec, instance) -> bool:
    """Bronze alone (the Kafka sensor's ingest, without deriving the partition)."""
    from tests.helpers import materialize

    return materialize(defs, ["bronze_iot"], HOURLY.get_last_partition_key(), instance).success
