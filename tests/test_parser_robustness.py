"""No message, whatever its bytes, stops the stream: each lands in Bronze or dead-letter, once, with a reason.

Property tests (hypothesis) feed random bytes and mutated readings through the parser in random batch
splits; a seeded corpus of thousands of mutants also goes through the Silver contract and transform.
"""

import json
import random
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest
from confluent_kafka import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import assets.transforms.bronze as bronze_transform
from assets.bronze import bronze_rules
from assets.contracts.gate import apply_contract
from assets.spec import SilverContext
from assets.streams.iot import IOT
from assets.transforms.bronze import BronzeParser, parse_messages
from assets.transforms.dedup import derive_silver

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
RULES = bronze_rules(IOT)
GOOD = {"event_id": "e1", "sensor_id": "s1", "sensor_type": "temperature", "location": "lab", "value": 21.5, "unit": "°C", "ts": "2026-11-20T11:59:00+00:00"}
KNOWN_CLASSES = {
    "empty", "oversized", "not_utf8", "non_finite", "invalid_json", "too_deep", "not_object", "missing_event_time",
    "bad_event_time", "before_first_partition", "future_event_time", "unexpected",
}  # fmt: skip


def msg(value, key=b"s1", offset=0, partition=0):
    return Message(topic="t", partition=partition, offset=offset, key=key, value=value, timestamp=(1, 1763640000000))


def parse_in_batches(values: list[tuple[bytes | None, bytes]], splits: list[int], block_rows: int = 7):
    """Feed the messages in batches of the given sizes (as the consumer does) into small blocks."""
    messages = [msg(v, key=k, offset=i) for i, (k, v) in enumerate(values)]
    parser = BronzeParser(RULES, NOW, block_rows=block_rows)
    blocks, i, sizes = [], 0, iter(splits or [len(messages)])
    while i < len(messages):
        n = max(1, next(sizes, len(messages)))
        parser.feed(messages[i : i + n])
        blocks += parser.drain()
        i += n
    out = parser.finish()
    bronze = pl.concat([*blocks, out.bronze]) if blocks else out.bronze
    return bronze, out.dead_letter


def assert_accounted(values, bronze: pl.DataFrame, dead: pl.DataFrame):
    offsets = sorted(bronze["kafka_offset"].to_list() + dead["kafka_offset"].to_list())
    assert offsets == list(range(len(values)))  # every record once, none lost, none doubled
    assert set(dead["error_class"].to_list()) <= KNOWN_CLASSES
    assert dead["error"].str.len_chars().min() or not dead.height  # every dead letter says why
    for row in bronze.iter_rows(named=True):
        assert row["payload"] == values[row["kafka_offset"]][1].decode("utf-8")
        assert RULES.earliest <= row["event_time"] <= NOW + RULES.future_tolerance


# -- the two poison pills that stopped the stream ----------------------------------------------------------
def test_deeply_nested_message_is_dead_lettered_not_raised():
    nested = b'{"a":' * 2000 + b"1" + b"}" * 2000  # 12 KB, under the size limit
    good = json.dumps(GOOD).encode()
    out = parse_messages([msg(good, offset=0), msg(nested, offset=1), msg(good, offset=2)], RULES, NOW)
    assert out.bronze["kafka_offset"].to_list() == [0, 2]
    [dead] = out.dead_letter.iter_rows(named=True)
    assert dead["kafka_offset"] == 1 and dead["error_class"] == "too_deep"
    assert "nested deeper" in dead["error"]
    assert dead["payload"] == nested


def test_integer_too_large_for_a_float_is_a_field_issue_for_quarantine():
    raw = json.dumps(GOOD).replace("21.5", "1" + "0" * 400).encode()
    out = parse_messages([msg(raw)], RULES, NOW)
    assert out.dead_letter.height == 0
    row = out.bronze.row(0, named=True)
    assert row["value"] is None
    assert "field 'value' is an integer too large for a 64-bit float (401 digits)" in row["parse_issues"]
    verdict = apply_contract(out.bronze, IOT.row_contract)
    assert verdict.passed.height == 0 and "too large for a 64-bit float" in verdict.failed["reason"][0]


def test_an_unexpected_error_on_one_record_dead_letters_it_and_the_rest_flow(monkeypatch):
    """The last line of defence: whatever raises for one record is dead-lettered as `unexpected`."""
    real = bronze_transform._reference_row

    def explode_on_marker(coords, raw, rules, now):
        if raw and b"boom" in raw:
            raise KeyError("simulated defect in the parser")
        return real(coords, raw, rules, now)

    monkeypatch.setattr(bronze_transform, "_reference_row", explode_on_marker)
    bad = json.dumps({**GOOD, "value": "boom"}).encode()  # mistyped: goes to the reference path
    good = json.dumps(GOOD).encode()
    out = parse_messages([msg(good, offset=0), msg(bad, offset=1), msg(good, offset=2)], RULES, NOW)
    assert out.bronze["kafka_offset"].to_list() == [0, 2]
    [dead] = out.dead_letter.iter_rows(named=True)
    assert dead["error_class"] == "unexpected"
    assert "KeyError" in dead["error"] and "simulated defect" in dead["error"]
    assert dead["payload"] == bad


def test_a_record_no_column_can_hold_is_dead_lettered_alone(monkeypatch):
    """A row the reference path accepted but the Bronze frame cannot hold fails on its own, not its block."""
    real = BronzeParser._slow_frame

    def refuse_marked_rows(self, rows):
        if any("refuse-me" in (r["payload"] or "") for r in rows):
            raise pl.exceptions.ComputeError("simulated: value does not fit the column")
        return real(self, rows)

    monkeypatch.setattr(BronzeParser, "_slow_frame", refuse_marked_rows)
    slow = [json.dumps({**GOOD, "event_id": f"e{i}", "value": "x", "note": "refuse-me" if i == 1 else ""}).encode() for i in range(3)]
    out = parse_messages([msg(v, offset=i) for i, v in enumerate(slow)], RULES, NOW)
    assert sorted(out.bronze["kafka_offset"].to_list()) == [0, 2]
    assert out.dead_letter["error_class"].to_list() == ["unexpected"]
    assert out.dead_letter["kafka_offset"].to_list() == [1]


# -- properties ------------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
timestamps = st.one_of(
    st.just(GOOD["ts"]),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.datetimes(timezones=st.just(timezone.utc)).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat()),  # no offset
    json_values,
)


@st.composite
def mutated_reading(draw) -> bytes:
    rec = dict(GOOD, event_id=f"e{draw(st.integers(0, 50))}")
    for _ in range(draw(st.integers(0, 3))):
        field = draw(st.sampled_from(sorted(GOOD)))
        action = draw(st.sampled_from(["drop", "replace", "huge_int", "nest", "ts", "surrogate"]))
        if action == "drop":
            rec.pop(field, None)
        elif action == "replace":
            rec[field] = draw(json_values)
        elif action == "huge_int":
            rec[field] = int("9" * draw(st.integers(300, 4000)))
        elif action == "nest":
            depth = draw(st.integers(1, 3000))
            rec[field] = "@@NEST@@"
            text = json.dumps(rec).replace('"@@NEST@@"', "[" * depth + "1" + "]" * depth)
            return text.encode()
        elif action == "ts":
            rec["ts"] = draw(timestamps)
        else:
            rec[field] = "@@SURR@@"
            return json.dumps(rec).replace('"@@SURR@@"', '"\\ud800x"').encode()
    raw = json.dumps(rec, ensure_ascii=draw(st.booleans())).encode()
    cut = draw(st.one_of(st.none(), st.integers(0, len(raw))))
    if cut is not None:  # a truncated or byte-flipped record
        raw = raw[:cut] if draw(st.booleans()) else raw[:cut] + bytes([draw(st.integers(0, 255))]) + raw[cut + 1 :]
    return raw


messages = st.lists(
    st.tuples(st.one_of(st.none(), st.binary(max_size=8)), st.one_of(st.binary(max_size=300), mutated_reading())),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(values=messages, splits=st.lists(st.integers(1, 12), max_size=8))
def test_any_bytes_any_batching_every_record_accounted_for(values, splits):
    bronze, dead = parse_in_batches(values, splits)
    assert_accounted(values, bronze, dead)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=mutated_reading())
def test_batch_and_single_record_paths_agree(value):
    """One record alone and among good ones gets the same outcome (the fast path never decides differently)."""
    good = json.dumps(GOOD).encode()
    alone_bronze, alone_dead = parse_in_batches([(b"s1", value)], [1], block_rows=1)
    mixed_bronze, mixed_dead = parse_in_batches([(b"s1", good), (b"s1", value), (b"s1", good)], [3], block_rows=64)
    assert alone_bronze.height == mixed_bronze.filter(pl.col("kafka_offset") == 1).height
    if alone_dead.height:
        assert mixed_dead["error_class"].to_list() == alone_dead["error_class"].to_list()
    else:
        row = mixed_bronze.filter(pl.col("kafka_offset") == 1).drop("kafka_offset", "ingested_at")
        assert row.equals(alone_bronze.drop("kafka_offset", "ingested_at"))


def seeded_mutants(n: int, seed: int) -> list[tuple[bytes | None, bytes]]:
    """A fixed corpus of thousands of good and damaged readings, drawn with a seeded generator."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ts = (NOW - timedelta(minutes=30) + timedelta(milliseconds=137 * i)).isoformat()
        rec = {**GOOD, "event_id": f"m{i}", "sensor_id": f"s{i % 17}", "value": round(rng.uniform(-60, 120), 3), "ts": ts}
        roll = rng.random()
        if roll < 0.05:
            rec.pop(rng.choice(sorted(rec)))
        elif roll < 0.10:
            rec[rng.choice(sorted(rec))] = rng.choice([None, True, [], {}, "x", 1e308, -0.0, int("7" * rng.randint(300, 500))])
        elif roll < 0.12:
            rec["sensor_type"] = rng.choice(["radiation", "", "TEMPERATURE"])
        raw = json.dumps(rec).encode()
        if rng.random() < 0.05:
            pos = rng.randrange(len(raw))
            raw = raw[:pos] + bytes([rng.randrange(256)]) + raw[pos + 1 :]
        if rng.random() < 0.01:
            raw = b'{"a":' * rng.randint(900, 3000) + b"1" + b"}" * 10
        key = None if rng.random() < 0.01 else rec.get("sensor_id", "s0").encode() if isinstance(rec.get("sensor_id"), str) else b"s0"
        out.append((key, raw))
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_thousands_of_mutants_reach_silver_or_quarantine_or_dead_letter(seed):
    values = seeded_mutants(4000, seed)
    bronze, dead = parse_in_batches(values, [1000] * 4, block_rows=1024)
    assert_accounted(values, bronze, dead)
    # Every Bronze row then passes the row contract or is quarantined with a reason; Silver derives without error.
    verdict = apply_contract(bronze.drop("payload"), IOT.row_contract)
    assert verdict.passed.height + verdict.failed.height == bronze.height
    assert verdict.failed["reason"].null_count() == 0
    ctx = SilverContext(partition_key="2026-11-20-11:00", processed_at=NOW, pipeline_version="test")
    out = derive_silver(IOT, verdict.passed, None, ctx)
    assert out.rows.height + out.rejected.height + out.duplicates_dropped == verdict.passed.height
    assert apply_contract(out.rows, IOT.silver_contract).ok


def test_integers_longer_than_python_converts_are_field_issues_not_invalid_json():
    """Python refuses to convert integer literals over 4,300 digits; JSON has no such limit."""
    huge = "1" + "0" * 5000
    typed = json.dumps(GOOD).replace("21.5", huge).encode()
    extra = json.dumps({**GOOD, "firmware": 0}).replace('"firmware": 0', f'"firmware": {huge}').encode()
    stamp = json.dumps({**GOOD, "ts": 0}).replace('"ts": 0', f'"ts": {huge}').encode()
    out = parse_messages([msg(typed, offset=0), msg(extra, offset=1), msg(stamp, offset=2)], RULES, NOW)
    rows = {r["kafka_offset"]: r for r in out.bronze.iter_rows(named=True)}
    assert "integer too large for a 64-bit float (5001 digits)" in rows[0]["parse_issues"]
    assert rows[1]["parse_issues"] is None and rows[1]["value"] == 21.5  # an extra field: kept in the payload
    [dead] = out.dead_letter.iter_rows(named=True)
    assert dead["kafka_offset"] == 2 and dead["error_class"] == "bad_event_time" and "5001 digits" in dead["error"]
