"""Kafka messages -> Bronze rows or dead-letter rows.

Bronze keeps the raw payload and its Kafka coordinates. It rejects (to dead-letter) only what cannot be placed
in an event-time partition: bytes that are not a JSON object, or no usable event time. Field-level problems
(missing field, wrong type) are recorded in `parse_issues` and decided by the Silver contract, so that
re-deriving Silver from Bronze never needs Kafka.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import polars as pl

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _NonFinite(ValueError):
    pass


def _reject_constant(name: str):
    raise _NonFinite(f"non-finite number {name} is not valid JSON")


@dataclass(frozen=True)
class BronzeRules:
    fields: Sequence[tuple[str, str]]  # (name, "string" | "number")
    event_time_field: str
    key_field: str
    max_message_bytes: int
    future_tolerance: timedelta
    earliest: datetime  # start of the first partition


def parse_event_time(raw) -> datetime:
    """ISO-8601 with an offset, or epoch milliseconds. Raises ValueError with the reason."""
    if isinstance(raw, bool) or raw is None:
        raise ValueError(f"timestamp must be ISO-8601 text or epoch milliseconds, got {json.dumps(raw)}")
    if isinstance(raw, (int, float)):
        if not math.isfinite(raw):
            raise ValueError("timestamp is not finite")
        try:
            return EPOCH + timedelta(milliseconds=raw)
        except OverflowError:
            raise ValueError(f"epoch milliseconds {raw} out of range") from None
    if isinstance(raw, str):
        try:
            ts = datetime.fromisoformat(raw)
        except ValueError:
            raise ValueError(f"unparseable timestamp {raw[:64]!r}") from None
        if ts.tzinfo is None:
            raise ValueError(f"timestamp {raw[:64]!r} has no UTC offset")
        return ts.astimezone(UTC)
    raise ValueError(f"timestamp must be ISO-8601 text or epoch milliseconds, got {type(raw).__name__}")


_TYPE_NAMES = {str: "string", int: "number", float: "number", bool: "boolean", list: "array", dict: "object"}


def _typed(value, kind: str):
    """(typed value, issue or None)."""
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, f"must be a number, got {_TYPE_NAMES.get(type(value), 'null' if value is None else type(value).__name__)}"
        return float(value), None
    if not isinstance(value, str):
        return None, f"must be a string, got {_TYPE_NAMES.get(type(value), 'null' if value is None else type(value).__name__)}"
    return value, None


BRONZE_COORDS = {
    "kafka_topic": pl.String,
    "kafka_partition": pl.Int32,
    "kafka_offset": pl.Int64,
    "kafka_timestamp": pl.Datetime("ms", "UTC"),
    "kafka_key": pl.String,
}

DEAD_LETTER_SCHEMA = {
    **BRONZE_COORDS,
    "payload": pl.Binary,
    "error_class": pl.String,
    "error": pl.String,
    "ingested_at": pl.Datetime("us", "UTC"),
}


def bronze_schema(rules: BronzeRules) -> dict:
    schema = {**BRONZE_COORDS, "payload": pl.String, "ingested_at": pl.Datetime("us", "UTC"), "event_time": pl.Datetime("us", "UTC")}
    for name, kind in rules.fields:
        schema[name] = pl.Float64 if kind == "number" else pl.String
    schema["parse_issues"] = pl.String
    return schema


@dataclass
class ParsedBatch:
    bronze: pl.DataFrame
    dead_letter: pl.DataFrame


def parse_messages(messages: Sequence, rules: BronzeRules, now: datetime) -> ParsedBatch:
    """Split confluent-kafka messages into Bronze rows and dead-letter rows (with their reasons).

    The hot loop does only what needs Python per record (decode, JSON, event time, field types); the
    Kafka coordinates are gathered afterwards in bulk.
    """
    latest = now + rules.future_tolerance
    earliest = rules.earliest
    limit = rules.max_message_bytes
    ts_field = rules.event_time_field
    fields = list(rules.fields)
    numbers = [name for name, kind in fields if kind == "number"]
    loads = _fast_loads
    number_types = (int, float)

    good_msgs: list = []
    texts: list[str] = []
    times: list[datetime] = []
    columns: dict[str, list] = {name: [] for name, _ in fields}
    field_columns = [(name, kind, columns[name]) for name, kind in fields]
    issues_col: list = []
    dead_rows: list[tuple] = []  # (message, raw, error_class, error)

    for m in messages:
        raw = m.value()
        if not raw:
            dead_rows.append((m, raw, "empty", "empty message (no value bytes)"))
            continue
        if len(raw) > limit:
            dead_rows.append((m, raw[:1024], "oversized", f"message is {len(raw)} bytes, over the {limit}-byte limit (first 1 KiB kept)"))
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            dead_rows.append((m, raw, "not_utf8", f"payload is not valid UTF-8: {exc.reason} at byte {exc.start}"))
            continue
        try:
            obj = loads(text)
        except _NonFinite as exc:
            dead_rows.append((m, raw, "non_finite", str(exc)))
            continue
        except ValueError as exc:
            dead_rows.append((m, raw, "invalid_json", f"invalid JSON: {exc}"))
            continue
        if type(obj) is not dict:
            dead_rows.append((m, raw, "not_object", f"JSON is {_TYPE_NAMES.get(type(obj), 'null' if obj is None else type(obj).__name__)}, not an object"))
            continue
        raw_ts = obj.get(ts_field, _MISSING)
        if raw_ts is _MISSING:
            dead_rows.append((m, raw, "missing_event_time", f"missing required field '{ts_field}'"))
            continue
        try:
            event_time = parse_event_time(raw_ts)
        except ValueError as exc:
            dead_rows.append((m, raw, "bad_event_time", f"field '{ts_field}': {exc}"))
            continue
        if event_time < earliest:
            dead_rows.append((m, raw, "before_first_partition", f"event time {event_time.isoformat()} is before the first partition ({earliest.isoformat()})"))
            continue
        if event_time > latest:
            dead_rows.append((m, raw, "future_event_time", f"event time {event_time.isoformat()} is more than {int(rules.future_tolerance.total_seconds())}s ahead of ingestion time {now.isoformat()}"))
            continue
        issues = None
        for name, kind, col in field_columns:
            value = obj.get(name, _MISSING)
            if kind == "number":
                if type(value) in number_types:
                    col.append(value)
                    continue
            elif type(value) is str:
                col.append(value)
                continue
            col.append(None)
            issue = f"missing required field '{name}'" if value is _MISSING else f"field '{name}' {_typed(value, kind)[1]}"
            issues = issue if issues is None else f"{issues}; {issue}"
        good_msgs.append(m)
        texts.append(text)
        times.append(event_time)
        issues_col.append(issues)

    # Coordinates in bulk, outside the hot loop.
    keys = [m.key() for m in good_msgs]
    null_key = f"message key is null (expected the {rules.key_field})"
    if None in keys:
        issues_col = [
            (null_key if issue is None else f"{issue}; {null_key}") if k is None else issue for k, issue in zip(keys, issues_col)
        ]
    schema = bronze_schema(rules)
    data = {
        "kafka_topic": [m.topic() for m in good_msgs],
        "kafka_partition": [m.partition() for m in good_msgs],
        "kafka_offset": [m.offset() for m in good_msgs],
        "kafka_timestamp": [t if kind else None for kind, t in (m.timestamp() for m in good_msgs)],
        "kafka_key": [k.decode("utf-8", "replace") if k is not None else None for k in keys],
        "payload": texts,
        "event_time": times,
        **{name: (pl.Series(name, columns[name], dtype=pl.Float64, strict=False) if name in numbers else columns[name]) for name, _ in fields},
        "parse_issues": issues_col,
    }
    bronze = pl.DataFrame(data, schema_overrides={k: (pl.Int64 if k == "kafka_timestamp" else v) for k, v in schema.items() if k != "ingested_at"})
    bronze = bronze.with_columns(
        pl.col("kafka_timestamp").cast(pl.Datetime("ms", "UTC")),
        pl.lit(now).cast(pl.Datetime("us", "UTC")).alias("ingested_at"),
        pl.col("event_time").cast(pl.Datetime("us", "UTC")),
    ).select(list(schema))
    return ParsedBatch(bronze=bronze, dead_letter=_dead_letter_frame(dead_rows, now))


_MISSING = object()
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_SCAN = _DECODER.scan_once


def _fast_loads(text: str):
    """json.loads without the pure-Python wrapper around the C scanner (a third of the per-record cost)."""
    try:
        obj, end = _SCAN(text, 0)
    except StopIteration:
        return _DECODER.decode(text)  # leading whitespace, or invalid: the full path says why
    if end != len(text) and text[end:].strip():
        return _DECODER.decode(text)  # raises "Extra data"
    return obj


def _dead_letter_frame(rows: list[tuple], now: datetime) -> pl.DataFrame:
    def key(m):
        k = m.key()
        return k.decode("utf-8", "replace") if k is not None else None

    data = {
        "kafka_topic": [m.topic() for m, *_ in rows],
        "kafka_partition": [m.partition() for m, *_ in rows],
        "kafka_offset": [m.offset() for m, *_ in rows],
        "kafka_timestamp": [m.timestamp()[1] if m.timestamp()[0] else None for m, *_ in rows],
        "kafka_key": [key(m) for m, *_ in rows],
        "payload": [raw for _, raw, _, _ in rows],
        "error_class": [cls for _, _, cls, _ in rows],
        "error": [err for _, _, _, err in rows],
    }
    schema = {k: (pl.Int64 if k == "kafka_timestamp" else v) for k, v in DEAD_LETTER_SCHEMA.items() if k != "ingested_at"}
    return pl.DataFrame(data, schema=schema).with_columns(
        pl.col("kafka_timestamp").cast(pl.Datetime("ms", "UTC")),
        pl.lit(now).cast(pl.Datetime("us", "UTC")).alias("ingested_at"),
    )
