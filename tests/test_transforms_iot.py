"""Silver and Gold rules for IoT readings, on small frames built here (no Dagster, no broker)."""

import json
import statistics
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest
from confluent_kafka import Message

from assets.bronze import bronze_rules
from assets.contracts.gate import apply_contract
from assets.spec import SilverContext
from assets.streams.iot import IOT
from assets.transforms import iot
from assets.transforms.dedup import derive_silver
from assets.transforms.bronze import parse_messages

T0 = datetime(2026, 11, 20, 5, 0, tzinfo=timezone.utc)
CTX = SilverContext("2026-11-20-05:00", datetime(2026, 11, 20, 6, 0, tzinfo=timezone.utc), "test")


def bronze(records, start_offset=0, partition=0):
    msgs = [
        Message(topic="t", partition=partition, offset=start_offset + i, key=r["sensor_id"].encode(), value=json.dumps(r).encode(), timestamp=(1, 0))
        for i, r in enumerate(records)
    ]
    return parse_messages(msgs, bronze_rules(IOT), datetime(2026, 11, 21, tzinfo=timezone.utc)).bronze


def rec(i, seconds, value, sensor="s1", sensor_type="temperature", **over):
    unit = {"temperature": "°C", "humidity": "%", "pressure": "hPa", "vibration": "g"}[sensor_type]
    r = {"event_id": f"e{i}", "sensor_id": sensor, "sensor_type": sensor_type, "location": "lab", "value": value, "unit": unit, "ts": (T0 + timedelta(seconds=seconds)).isoformat()}
    r.update(over)
    return r


def silver(records, context=None):
    """The platform's Silver derivation for the IoT spec: dedup on its key, then the IoT transform."""
    valid = apply_contract(bronze(records), IOT.row_contract)
    return derive_silver(IOT, valid.passed, context, CTX)


def test_duplicate_event_id_first_offset_wins_and_conflicts_are_reported():
    out = silver([rec(1, 0, 20.0), rec(1, 0, 20.0), rec(1, 0, 25.0), rec(2, 1, 21.0)])
    assert out.rows["event_id"].to_list() == ["e1", "e2"]
    assert out.rows.filter(pl.col("event_id") == "e1")["value"][0] == 20.0
    assert out.duplicates_dropped == 1  # the exact copy
    assert out.rejected.height == 1  # same id, other content: kept once, reported
    assert "different content" in out.rejected["reason"][0] and "0/0" in out.rejected["reason"][0]


def test_dedup_on_sensor_and_event_time_after_event_id():
    out = silver([rec(1, 0, 20.0), rec(2, 0, 20.5), rec(3, 0, 20.5, sensor="s2")])
    assert sorted(out.rows["event_id"].to_list()) == ["e1", "e3"]
    assert out.duplicates_dropped == 1


def test_rolling_zscore_uses_previous_readings_only_with_sample_std():
    values = [20.0 + (i % 5) * 0.2 for i in range(30)] + [30.0]
    out = silver([rec(i, i, v) for i, v in enumerate(values)]).rows.sort("event_time")
    z = out["z_score"].to_list()
    assert all(x is None for x in z[:10])  # fewer than 10 previous readings
    prev = values[:30][-100:]
    expected = (30.0 - statistics.mean(prev)) / statistics.stdev(prev)
    assert z[30] == pytest.approx(expected, rel=1e-9)
    assert out["is_anomaly"].to_list()[30] is True
    assert not any(out["is_anomaly"].to_list()[:30])


def test_no_zscore_when_deviation_is_zero():
    out = silver([rec(i, i, 20.0) for i in range(15)])
    assert out.rows["z_score"].null_count() == 15
    assert not out.rows["is_anomaly"].any()


def test_expected_band_flags_anomaly_without_history():
    out = silver([rec(1, 0, 70.0)])  # physically possible, outside -20..60
    assert out.rows["is_anomaly"].to_list() == [True]


def test_context_rows_extend_the_history():
    previous = silver([rec(i, i - 3600, 20.0 + (i % 3) * 0.1) for i in range(20)]).rows
    out = silver([rec(100, 0, 20.1)], context=previous)
    assert out.rows["z_score"][0] is not None


def test_silver_has_lineage_columns_and_passes_its_contract():
    out = silver([rec(i, i, 20.0 + i * 0.01) for i in range(5)])
    row = out.rows.row(0, named=True)
    assert row["source_topic"] == "t" and row["source_offset"] == 0 and row["pipeline_version"] == "test"
    assert row["processed_at"] == CTX.processed_at
    assert apply_contract(out.rows, IOT.silver_contract).ok


@pytest.mark.parametrize(
    "record, check",
    [
        (rec(1, 0, 90.0), "value_within_physical_range"),
        (rec(1, 0, -41.0), "value_within_physical_range"),
        (rec(1, 0, 101.0, sensor_type="humidity"), "value_within_physical_range"),
        (rec(1, 0, 20.0, unit="°F"), "unit_matches_sensor_type"),
        (rec(1, 0, "20"), "fields_present_and_typed"),
    ],
)
def test_row_contract_quarantines_with_the_failed_check(record, check):
    result = apply_contract(bronze([record]), IOT.row_contract)
    assert result.passed.height == 0
    assert result.failed["check"].to_list() == [check]
    assert result.failure_counts == {check: 1}


def test_unknown_sensor_type_is_quarantined_with_the_value():
    bad = {**rec(1, 0, 20.0), "sensor_type": "radiation"}
    result = apply_contract(bronze([bad]), IOT.row_contract)
    assert result.failed["check"][0].startswith("isin")
    assert "radiation" in result.failed["reason"][0]


def test_gold_5m_window_statistics():
    values = [float(v) for v in range(1, 11)]  # 10 readings in one window
    rows = silver([rec(i, i * 10, v) for i, v in enumerate(values)] + [rec(99, 300, 5.0)]).rows
    g = iot.gold_sensor_5m(rows)
    first = g.row(0, named=True)
    assert first["window_start"] == T0 and first["window_end"] == T0 + timedelta(minutes=5)
    assert first["count"] == 10 and first["min"] == 1.0 and first["max"] == 10.0 and first["avg"] == 5.5
    assert first["stddev"] == pytest.approx(statistics.stdev(values))
    assert first["p50"] == pytest.approx(5.5)
    assert first["p95"] == pytest.approx(1 + 0.95 * 9)  # linear interpolation between closest ranks
    assert first["p99"] == pytest.approx(1 + 0.99 * 9)
    assert first["health_pct"] == pytest.approx(10 / 300 * 100)
    assert g.height == 2
    assert apply_contract(g, IOT.gold[0].contract).ok


def test_gold_hourly_and_daily_rollups():
    rows = silver([rec(i, i, 20.0 + i, sensor=f"s{i % 3}") for i in range(9)] + [rec(50, 1, 50.0, sensor="h1", sensor_type="humidity")]).rows
    hourly = iot.gold_location_hourly(rows)
    assert set(hourly["sensor_type"]) == {"temperature", "humidity"}
    temp = hourly.filter(pl.col("sensor_type") == "temperature").row(0, named=True)
    assert temp["count"] == 9 and temp["distinct_sensors"] == 3 and temp["hour_start"] == T0
    daily = iot.gold_type_daily(iot.gold_sensor_5m(rows))
    assert daily.filter(pl.col("sensor_type") == "temperature")["count"][0] == 9
    assert str(daily["day"][0]) == "2026-11-20"
    for table, frame in zip(IOT.gold[1:], (hourly, daily)):
        assert apply_contract(frame, table.contract).ok


def test_the_daily_rollup_folded_from_5_minute_rows_equals_the_statistics_of_the_readings():
    """Across windows, hours and a midnight, with windows of one reading (no stddev) and a type with a
    single reading in its day: the fold gives the readings' own statistics (float rounding aside)."""
    import random

    rnd = random.Random(5)
    start = datetime(2026, 11, 20, 22, 30, tzinfo=timezone.utc)
    readings = [
        {"sensor_id": f"s{i % 7}", "sensor_type": "temperature", "location": f"loc-{i % 2}", "value": rnd.gauss(20, 4),
         "event_time": start + timedelta(seconds=rnd.uniform(0, 3 * 3600)), "is_anomaly": rnd.random() < 0.05}
        for i in range(3000)
    ]  # fmt: skip
    readings.append({"sensor_id": "h1", "sensor_type": "humidity", "location": "loc-0", "value": 40.0, "event_time": start, "is_anomaly": False})
    rows = pl.DataFrame(readings).with_columns(pl.col("event_time").dt.cast_time_unit("us"))
    five_minute = iot.gold_sensor_5m(rows)
    assert (five_minute["count"] == 1).any()
    daily = iot.gold_type_daily(five_minute)

    for (sensor_type, day), group in rows.group_by("sensor_type", pl.col("event_time").dt.date()):
        got = daily.filter((pl.col("sensor_type") == sensor_type) & (pl.col("day") == day)).row(0, named=True)
        values = group["value"].to_list()
        assert got["count"] == len(values) and got["distinct_sensors"] == group["sensor_id"].n_unique()
        assert got["min"] == min(values) and got["max"] == max(values) and got["anomaly_count"] == group["is_anomaly"].sum()
        assert got["avg"] == pytest.approx(statistics.fmean(values), rel=1e-12)
        assert got["stddev"] == (pytest.approx(statistics.stdev(values), rel=1e-12) if len(values) > 1 else None)
    assert daily.height == 3  # temperature on two days, humidity on one
    assert apply_contract(daily, IOT.gold[2].contract).ok
    # The same rows in any order fold to the same bits (hours are read back in any order).
    assert iot.gold_type_daily(five_minute.sample(fraction=1.0, shuffle=True, seed=1)).equals(daily)


def test_an_hour_extended_batch_by_batch_equals_the_hourly_table_built_from_all_its_rows():
    """What a stream run keeps of the open hour for `location_hourly`: batch after batch (a location and type
    first seen in a later batch, one seen once), the same rows as a build over all of them."""
    import random

    rnd = random.Random(11)
    hour = datetime(2026, 11, 20, 7, tzinfo=timezone.utc)

    def batch(n: int, first: int, groups: int) -> pl.DataFrame:
        return pl.DataFrame(
            [{"sensor_id": f"s{(first + i) % 9}", "sensor_type": ["temperature", "humidity"][i % 2], "location": f"loc-{i % groups}",
              "event_time": hour + timedelta(seconds=rnd.uniform(0, 3599)), "value": round(rnd.gauss(20, 4), 4), "is_anomaly": rnd.random() < 0.1}
             for i in range(n)]  # fmt: skip
        ).with_columns(pl.col("event_time").dt.cast_time_unit("us"))

    batches = [batch(500, 0, 2), batch(300, 7, 3), batch(1, 3, 1).with_columns(location=pl.lit("loc-9")), batch(400, 2, 3)]
    state, seen = None, []
    for rows in batches:
        before = state
        state, built = iot.extend_location_hourly(state, rows)
        seen.append(rows)
        expected = iot.gold_location_hourly(pl.concat(seen))
        exact = [c for c in expected.columns if c not in ("avg", "stddev")]
        assert built.select(exact).equals(expected.select(exact)) and built.schema == expected.schema
        assert ((built["avg"] - expected["avg"]).abs() < 1e-12).all()
        assert built["stddev"].is_null().equals(expected["stddev"].is_null())
        assert ((built["stddev"] - expected["stddev"]).abs() < 1e-12).all()
        assert before is None or sum(map(len, before.values.values())) == sum(r.height for r in seen[:-1])  # left as it was
    assert built.filter(pl.col("location") == "loc-9")["stddev"].to_list() == [None]
