"""The bad-input corpus: one message per class of bad input, with where it must end up and why.

Used by the fault tests and by `medallion demo --bad-input N`. Timestamps are relative to `now` so the
corpus stays valid whenever it runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone


@dataclass(frozen=True)
class BadInput:
    name: str
    key: bytes | None
    value: bytes
    destination: str  # "dead_letter" | "quarantine" | "silver" (accepted, e.g. extra fields)
    reason: str  # a substring of the recorded reason (dead-letter `error` or quarantine `reason`)


def corpus(now: datetime | None = None, tag: str = "bad", max_message_bytes: int = 64 * 1024) -> list[BadInput]:
    now = now or datetime.now(timezone.utc)
    base = now - timedelta(minutes=30)
    seq = iter(range(1000))

    def reading(i: str, **over) -> dict:
        # a distinct instant per reading: one reading per sensor per instant is a Silver rule of its own
        ts = (base + timedelta(seconds=next(seq))).isoformat()
        r = {"event_id": f"{tag}-{i}", "sensor_id": f"{tag}-sensor", "sensor_type": "temperature", "location": "lab", "value": 21.5, "unit": "°C", "ts": ts}
        r.update(over)
        return {k: v for k, v in r.items() if v is not ...}

    def enc(obj) -> bytes:
        return json.dumps(obj).encode()

    key = f"{tag}-sensor".encode()
    return [
        BadInput("invalid_json", key, b'{"event_id": "x", "value": ', "dead_letter", "invalid JSON"),
        BadInput("not_utf8", key, b"\xff\xfe\x00garbage", "dead_letter", "not valid UTF-8"),
        BadInput("empty", key, b"", "dead_letter", "empty message"),
        BadInput("not_object", key, enc([reading("arr")]), "dead_letter", "not an object"),
        BadInput("nan", key, enc(reading("nan")).replace(b"21.5", b"NaN"), "dead_letter", "non-finite number NaN"),
        BadInput("infinity", key, enc(reading("inf")).replace(b"21.5", b"Infinity"), "dead_letter", "non-finite number Infinity"),
        BadInput("future_ts", key, enc(reading("future", ts=(now + timedelta(hours=2)).isoformat())), "dead_letter", "ahead of ingestion time"),
        BadInput("before_first_partition", key, enc(reading("old", ts="2020-01-01T00:00:00+00:00")), "dead_letter", "before the first partition"),
        BadInput("unparseable_ts", key, enc(reading("badts", ts="next tuesday")), "dead_letter", "unparseable timestamp"),
        BadInput("oversized", key, enc(reading("big", note="x" * (max_message_bytes + 1))), "dead_letter", "byte limit"),
        # 2,000 nested objects (12 KB): deeper than any JSON parser here recurses
        BadInput("deeply_nested", key, b'{"a":' * 2000 + b"1" + b"}" * 2000, "dead_letter", "nested deeper than the parser allows"),
        BadInput("missing_field", key, enc(reading("missing", value=...)), "quarantine", "missing required field 'value'"),
        BadInput("huge_integer", key, enc(reading("hugeint")).replace(b"21.5", b"1" + b"0" * 400), "quarantine", "integer too large for a 64-bit float"),
        BadInput("wrong_type", key, enc(reading("wrongtype", value="21.5")), "quarantine", "field 'value' must be a number, got string"),
        BadInput("out_of_range", key, enc(reading("range", value=500.0)), "quarantine", "value_within_physical_range"),
        BadInput("unknown_sensor_type", key, enc(reading("type", sensor_type="radiation")), "quarantine", "radiation"),
        BadInput("null_key", None, enc(reading("nullkey")), "quarantine", "message key is null"),
        BadInput("duplicate_id_first", key, enc(dup := reading("dup", value=20.0)), "silver", ""),
        BadInput("duplicate_id_other_content", key, enc({**dup, "value": 25.0}), "quarantine", "duplicate event_id with different content"),
        BadInput("extra_fields", key, enc(reading("extra", firmware="2.1.0", battery=0.93)), "silver", ""),
    ]


def produce_corpus(producer, topic: str, items: list[BadInput]) -> int:
    for item in items:
        producer.produce(topic, key=item.key, value=item.value)
    left = producer.flush(30)
    if left:
        raise RuntimeError(f"{left} bad-input messages were not acknowledged")
    return len(items)
