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
    """Split confluent-kafka messages into Bronze rows and dead-letter rows (with their reasons)."""
    good: dict[str, list] = {k: [] for k in bronze_schema(rules)}
    bad: dict[str, list] = {k: [] for k in DEAD_LETTER_SCHEMA}
    latest = now + rules.future_tolerance
    fields = list(rules.fields)
    loads = json.JSONDecoder(parse_constant=_reject_constant).decode

    def dead(m, raw: bytes | None, cls: str, reason: str) -> None:
        ts_type, ts = m.timestamp()
        key = m.key()
        bad["kafka_topic"].append(m.topic())
        bad["kafka_partition"].append(m.partition())
        bad["kafka_offset"].append(m.offset())
        bad["kafka_timestamp"].append(ts if ts_type else None)
        bad["kafka_key"].append(key.decode("utf-8", "replace") if key is not None else None)
        bad["payload"].append(raw)
        bad["error_class"].append(cls)
        bad["error"].append(reason)
        bad["ingested_at"].append(now)

    for m in messages:
        raw = m.value()
        if raw is None or len(raw) == 0:
            dead(m, raw, "empty", "empty message (no value bytes)")
            continue
        if len(raw) > rules.max_message_bytes:
            dead(m, raw[:1024], "oversized", f"message is {len(raw)} bytes, over the {rules.max_message_bytes}-byte limit (first 1 KiB kept)")
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            dead(m, raw, "not_utf8", f"payload is not valid UTF-8: {exc.reason} at byte {exc.start}")
            continue
        try:
            obj = loads(text)
        except _NonFinite as exc:
            dead(m, raw, "non_finite", str(exc))
            continue
        except ValueError as exc:
            dead(m, raw, "invalid_json", f"invalid JSON: {exc}")
            continue
        if not isinstance(obj, dict):
            dead(m, raw, "not_object", f"JSON is {_TYPE_NAMES.get(type(obj), 'null' if obj is None else type(obj).__name__)}, not an object")
            continue
        if rules.event_time_field not in obj:
            dead(m, raw, "missing_event_time", f"missing required field '{rules.event_time_field}'")
            continue
        try:
            event_time = parse_event_time(obj[rules.event_time_field])
        except ValueError as exc:
            dead(m, raw, "bad_event_time", f"field '{rules.event_time_field}': {exc}")
            continue
        if event_time < rules.earliest:
            dead(m, raw, "before_first_partition", f"event time {event_time.isoformat()} is before the first partition ({rules.earliest.isoformat()})")
            continue
        if event_time > latest:
            dead(m, raw, "future_event_time", f"event time {event_time.isoformat()} is more than {int(rules.future_tolerance.total_seconds())}s ahead of ingestion time {now.isoformat()}")
            continue
        issues = []
        for name, kind in fields:
            if name not in obj:
                good[name].append(None)
                issues.append(f"missing required field '{name}'")
                continue
            value, issue = _typed(obj[name], kind)
            good[name].append(value)
            if issue:
                issues.append(f"field '{name}' {issue}")
        key = m.key()
        if key is None:
            issues.append(f"message key is null (expected the {rules.key_field})")
            key_text = None
        else:
            key_text = key.decode("utf-8", "replace")
        ts_type, ts = m.timestamp()
        good["kafka_topic"].append(m.topic())
        good["kafka_partition"].append(m.partition())
        good["kafka_offset"].append(m.offset())
        good["kafka_timestamp"].append(ts if ts_type else None)
        good["kafka_key"].append(key_text)
        good["payload"].append(text)
        good["ingested_at"].append(now)
        good["event_time"].append(event_time)
        good["parse_issues"].append("; ".join(issues) if issues else None)

    bronze = pl.DataFrame(good, schema={k: (pl.Int64 if k == "kafka_timestamp" else v) for k, v in bronze_schema(rules).items()})
    bronze = bronze.with_columns(pl.col("kafka_timestamp").cast(pl.Datetime("ms", "UTC")))
    dl_schema = {k: (pl.Int64 if k == "kafka_timestamp" else v) for k, v in DEAD_LETTER_SCHEMA.items()}
    dead_letter = pl.DataFrame(bad, schema=dl_schema).with_columns(pl.col("kafka_timestamp").cast(pl.Datetime("ms", "UTC")))
    return ParsedBatch(bronze=bronze, dead_letter=dead_letter)
