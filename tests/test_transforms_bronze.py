"""Kafka message -> Bronze row or dead-letter row with a specific reason (no Dagster, no broker)."""

import json
from datetime import datetime, timedelta, timezone

import pytest
from confluent_kafka import Message

from assets.bronze import bronze_rules
from assets.streams.iot import IOT
from assets.transforms.bronze import parse_event_time, parse_messages

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
GOOD = {"event_id": "e1", "sensor_id": "s1", "sensor_type": "temperature", "location": "lab", "value": 21.5, "unit": "°C", "ts": "2026-11-20T11:59:00+00:00"}


def msg(value, key=b"s1", offset=0):
    return Message(topic="t", partition=0, offset=offset, key=key, value=value, timestamp=(1, 1763640000000))


def parse(*messages):
    return parse_messages(list(messages), bronze_rules(IOT), NOW)


@pytest.mark.parametrize(
    "raw, error_class, reason_part",
    [
        (b"", "empty", "empty message"),
        (b"\xff\xfe{}", "not_utf8", "not valid UTF-8"),
        (b'{"event_id": ', "invalid_json", "invalid JSON"),
        (b"[1, 2]", "not_object", "JSON is array"),
        (b'"text"', "not_object", "JSON is string"),
        (b'{"value": NaN, "ts": 1}', "non_finite", "NaN"),
        (b'{"value": Infinity, "ts": 1}', "non_finite", "Infinity"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "ts"}).encode(), "missing_event_time", "missing required field 'ts'"),
        (json.dumps({**GOOD, "ts": "yesterday"}).encode(), "bad_event_time", "unparseable timestamp"),
        (json.dumps({**GOOD, "ts": "2026-11-20T11:00:00"}).encode(), "bad_event_time", "no UTC offset"),
        (json.dumps({**GOOD, "ts": "2026-11-20T13:00:00+00:00"}).encode(), "future_event_time", "ahead of ingestion time"),
        (json.dumps({**GOOD, "ts": "2020-01-01T00:00:00+00:00"}).encode(), "before_first_partition", "before the first partition"),
        (b'{"pad": "' + b"x" * (70 * 1024) + b'"}', "oversized", "over the 65536-byte limit"),
    ],
)
def test_unplaceable_messages_go_to_dead_letter_with_reason(raw, error_class, reason_part):
    out = parse(msg(raw))
    assert out.bronze.height == 0
    assert out.dead_letter.height == 1
    row = out.dead_letter.row(0, named=True)
    assert row["error_class"] == error_class
    assert reason_part in row["error"]
    assert row["kafka_offset"] == 0 and row["kafka_topic"] == "t"


def test_good_message_keeps_raw_payload_coordinates_and_typed_fields():
    raw = json.dumps({**GOOD, "firmware": "1.2"}).encode()  # an unknown extra field: kept, not fatal
    out = parse(msg(raw, offset=42))
    assert out.dead_letter.height == 0
    row = out.bronze.row(0, named=True)
    assert row["payload"] == raw.decode()
    assert row["kafka_offset"] == 42 and row["kafka_partition"] == 0 and row["kafka_key"] == "s1"
    assert row["value"] == 21.5 and row["sensor_type"] == "temperature"
    assert row["event_time"] == datetime(2026, 11, 20, 11, 59, tzinfo=timezone.utc)
    assert row["parse_issues"] is None
    assert row["ingested_at"] == NOW


@pytest.mark.parametrize(
    "change, issue",
    [
        ({"value": "21.5"}, "field 'value' must be a number, got string"),
        ({"value": True}, "field 'value' must be a number, got boolean"),
        ({"sensor_id": 7}, "field 'sensor_id' must be a string, got number"),
        ({"value": None}, "field 'value' must be a number, got null"),
    ],
)
def test_field_type_problems_are_recorded_for_silver_to_quarantine(change, issue):
    out = parse(msg(json.dumps({**GOOD, **change}).encode()))
    assert out.bronze.height == 1
    assert issue in out.bronze["parse_issues"][0]


def test_missing_field_and_null_key_are_recorded():
    rec = {k: v for k, v in GOOD.items() if k != "location"}
    out = parse(msg(json.dumps(rec).encode(), key=None))
    issues = out.bronze["parse_issues"][0]
    assert "missing required field 'location'" in issues
    assert "message key is null" in issues


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("2026-11-20T10:00:00+02:00", datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc)),
        ("2026-11-20T10:00:00Z", datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)),
        (1795168800000, datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)),
        (1795168800123.0, datetime(2026, 11, 20, 10, 0, 0, 123000, tzinfo=timezone.utc)),
    ],
)
def test_event_time_formats(raw, expected):
    assert parse_event_time(raw) == expected


def test_event_time_bool_is_rejected():
    with pytest.raises(ValueError, match="ISO-8601 text or epoch milliseconds"):
        parse_event_time(True)


def test_future_tolerance_allows_small_clock_skew():
    ts = (NOW + timedelta(minutes=2)).isoformat()
    assert parse(msg(json.dumps({**GOOD, "ts": ts}).encode())).bronze.height == 1


def _edge_values():
    """Good records next to every near-miss the fast path must hand to the reference path."""
    def enc(**over):
        return json.dumps({**GOOD, **over}).encode()

    return [
        enc(),
        enc(value=21),  # integer number
        enc(value=True),  # bool is not a number
        enc(value=None),
        enc(value="21.5"),
        enc(sensor_id=7),
        json.dumps({k: v for k, v in GOOD.items() if k != "location"}).encode(),
        enc(ts="2026-11-20T11:59:00Z"),
        enc(ts="2026-11-20T11:59:00.5+00:00"),
        enc(ts="2026-11-20T11:59:00.1234567+02:00"),  # beyond microseconds: truncated by both paths
        enc(ts="2026-11-20 11:59:00+00:00"),  # space separator: only the reference path accepts it
        enc(ts="2026-11-20T11:59:00+0000"),
        enc(ts="2026-11-20T11:59:60+00:00"),
        enc(ts="2026-1-20T11:59:00+00:00"),
        enc(ts="2026-11-20T12:05:00+00:00"),  # inside the future tolerance
        enc(ts="2026-11-20T12:05:01+00:00"),  # just past it
        enc(ts="2026-01-01T00:00:00+00:00"),  # the first partition's first instant
        enc(ts="2025-12-31T23:59:59.999999+00:00"),
        enc(ts=1763639940000),  # epoch milliseconds
        enc(ts=1763639940000.5),
        enc(extra={"nested": [1, 2, {"x": "\u00e9"}]}),
        enc()[:-1] + b', "note": "\xff"}',  # invalid UTF-8 inside a field nobody reads
        b"  " + enc() + b"\n",
        enc() + b" trailing",
        enc().replace(b'"sensor_id": "s1"', b'"sensor_id": "s1", "sensor_id": "s2"'),  # duplicate key: last wins
        enc().replace(b"21.5", b"1e400"),
        enc().replace(b"21.5", b"123456789012345678901234567890"),
        enc().replace(b'"s1"', b'"\\ud800"'),
        b"",
        b"null",
    ]


def test_batch_parse_equals_the_reference_path_record_by_record():
    """The vectorized fast path must never change an outcome: each record alone (through any path) and the
    whole batch together give the same Bronze rows and dead-letter reasons."""
    values = _edge_values()
    keys = [b"s1"] * len(values)
    keys[3] = None  # a null key next to a bad value
    keys[0] = b"\xff-not-utf8-key"
    messages = [msg(v, key=k, offset=i) for i, (v, k) in enumerate(zip(values, keys))]
    together = parse(*messages)
    singles = [parse(m) for m in messages]
    import polars as pl

    alone_bronze = pl.concat([s.bronze for s in singles])
    alone_dead = pl.concat([s.dead_letter for s in singles])
    assert together.bronze.drop("ingested_at").to_dicts() == alone_bronze.drop("ingested_at").to_dicts()
    assert together.dead_letter.drop("ingested_at").to_dicts() == alone_dead.drop("ingested_at").to_dicts()
    assert together.bronze.height + together.dead_letter.height == len(values)
    # Fed in small batches and flushed in tiny blocks (as an ingest run does), nothing changes either.
    from assets.transforms.bronze import BronzeParser

    streamed = BronzeParser(bronze_rules(IOT), NOW, block_rows=3)
    for i in range(0, len(messages), 4):
        streamed.feed(messages[i : i + 4])
    streamed = streamed.finish()
    assert streamed.bronze.drop("ingested_at").to_dicts() == together.bronze.drop("ingested_at").to_dicts()
    assert streamed.dead_letter.drop("ingested_at").to_dicts() == together.dead_letter.drop("ingested_at").to_dicts()
    # And both agree with the reference implementation itself.
    from assets.transforms.bronze import _slow_row, coordinates

    dead: list = []
    reference = [_slow_row(coordinates(m), m.value(), bronze_rules(IOT), NOW, dead) for m in messages]
    kept = [r for r in reference if r is not None]
    assert together.bronze["parse_issues"].to_list() == [r["parse_issues"] for r in kept]
    assert together.bronze["event_time"].to_list() == [r["event_time"] for r in kept]
    assert together.bronze["value"].to_list() == [r["value"] for r in kept]
    assert together.dead_letter["error"].to_list() == [e for *_, e in dead]
    assert together.dead_letter["kafka_offset"].to_list() == [c[2] for _, c, *_ in dead]
    # Integer numbers are numbers.
    assert together.bronze.filter(pl.col("kafka_offset") == 1)["value"].to_list() == [21.0]
