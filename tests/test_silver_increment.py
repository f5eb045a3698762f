"""Extending Silver by micro-batches gives what one derivation of all of Bronze gives (no Dagster, no broker)."""

import json
import random
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest
from confluent_kafka import Message

from assets.bronze import bronze_rules
from assets.contracts.gate import apply_contract
from assets.spec import SilverContext
from assets.streams.iot import IOT
from assets.transforms.dedup import derive_silver
from assets.transforms.bronze import parse_messages
from assets.transforms.increment import PublishedPartition, extend_silver
from assets.transforms.iot import history

START = datetime(2026, 11, 20, 5, 0, tzinfo=timezone.utc)
CTX = SilverContext("2026-11-20-05:00", datetime(2026, 11, 20, 6, 0, tzinfo=timezone.utc), "test")
UNITS = {"temperature": "°C", "pressure": "hPa"}


def readings(rng: random.Random, n: int, late: float, stray: float) -> list[tuple[int, dict]]:
    """(Kafka partition, reading) in send order: 12 sensors, keyed to partitions by sensor, with exact and
    conflicting duplicates sent later (also into a batch after the original; a `stray` share of them into
    another partition), a little out of order, and a `late` share before the sensor's published readings."""
    out, sent = [], []
    for i in range(n):
        sensor = rng.randrange(12)
        kind = "temperature" if sensor % 2 else "pressure"
        ts = START + timedelta(seconds=i * 2 + rng.random())
        roll = rng.random()
        if roll < late:
            ts -= timedelta(minutes=rng.uniform(1, 50))  # late: before the sensor's published readings
        elif roll < late + 0.03:
            ts -= timedelta(seconds=rng.uniform(1, 20))  # a little out of order
        base = 22.0 if kind == "temperature" else 1013.0
        value = base + rng.gauss(0, 1) + (15 if rng.random() < 0.02 else 0)
        r = {"event_id": f"e{i}", "sensor_id": f"s{sensor}", "sensor_type": kind, "location": "lab", "value": round(value, 3), "unit": UNITS[kind], "ts": ts.isoformat()}
        out.append((sensor % 3, r))
        sent.append(r)
        if rng.random() < 0.04:  # a producer retry, maybe much later
            again = dict(rng.choice(sent))
            if rng.random() < 0.3:
                again["value"] += 1.0  # same id, other content
            out.append((rng.randrange(3) if rng.random() < stray else int(again["sensor_id"][1:]) % 3, again))
    return out


def bronze(sent: list[tuple[int, dict]]) -> pl.DataFrame:
    offsets = [0, 0, 0]
    msgs = []
    for kp, r in sent:
        msgs.append(Message(topic="t", partition=kp, offset=offsets[kp], key=r["sensor_id"].encode(), value=json.dumps(r).encode(), timestamp=(1, 0)))
        offsets[kp] += 1
    return parse_messages(msgs, bronze_rules(IOT), datetime(2026, 11, 21, tzinfo=timezone.utc)).bronze


def valid(rows: pl.DataFrame) -> pl.DataFrame:
    return apply_contract(rows, IOT.row_contract).passed


def context_before() -> pl.DataFrame:
    """The previous hour's history: each sensor's last readings."""
    rows = pl.DataFrame(
        {
            "sensor_id": [f"s{i % 12}" for i in range(600)],
            "event_time": [START - timedelta(seconds=600 - i) for i in range(600)],
            "value": [22.0 + (i % 7) * 0.3 if (i % 12) % 2 else 1013.0 + (i % 5) * 0.4 for i in range(600)],
            "source_topic": "t",
            "source_partition": [0] * 600,
            "source_offset": list(range(600)),
        },
        schema_overrides={"event_time": pl.Datetime("us", "UTC")},
    )
    return history(None, rows, START)


def incrementally(all_bronze: pl.DataFrame, batch_rows: int, context) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """Silver and the set-aside rows after applying `all_bronze` in micro-batches (in Kafka order per
    partition, interleaved across partitions as a consumer reads them); re-derives when told to."""
    published, rejected, reasons = None, [], []
    state = PublishedPartition.of(IOT, pl.DataFrame(schema=derive_silver(IOT, valid(all_bronze.clear()), None, CTX).rows.schema), context, START)
    seen = all_bronze.clear()
    ordered = all_bronze.with_columns(pl.int_range(pl.len()).over("kafka_partition").alias("__n")).sort("__n", "kafka_partition").drop("__n")
    for start in range(0, ordered.height, batch_rows):
        batch = ordered.slice(start, batch_rows)
        seen = pl.concat([seen, batch])

        def first_copies(coords):
            return seen.join(coords, on=["kafka_partition", "kafka_offset"], how="semi")

        ext = extend_silver(IOT, state, valid(batch), CTX, first_copies)
        if ext.output is None:
            reasons.append(ext.reason)
            full = derive_silver(IOT, valid(seen), context, CTX)
            published, rejected = full.rows, [full.rejected]
            state = PublishedPartition.of(IOT, published, context, START)
            continue
        published = ext.output.rows if published is None else pl.concat([published, ext.output.rows])
        rejected.append(ext.output.rejected)
        state = state.extended(IOT, ext.output.rows, START)
    return published, pl.concat(rejected), reasons


def in_kafka_order(df: pl.DataFrame, cols=("source_partition", "source_offset")) -> pl.DataFrame:
    return df.sort(*cols)


@pytest.mark.parametrize(
    "seed,batch_rows,late,stray",
    [(1, 50, 0.002, 0.0), (2, 137, 0.002, 0.0), (3, 50, 0.03, 0.3), (4, 400, 0.03, 0.3)],
    ids=["steady-50", "steady-137", "unruly-50", "unruly-400"],
)
def test_micro_batches_give_the_rows_of_one_full_derivation(seed, batch_rows, late, stray):
    sent = readings(random.Random(seed), 2_000, late, stray)
    all_bronze = bronze(sent)
    context = context_before()
    full = derive_silver(IOT, valid(all_bronze), context, CTX)
    rows, rejected, reasons = incrementally(all_bronze, batch_rows, context)

    a, b = in_kafka_order(rows), in_kafka_order(full.rows)
    assert a.height == b.height
    assert a.drop("z_score").equals(b.drop("z_score"))
    # The rolling mean is a running sum: where its window started changes the last bits, nothing more.
    assert (a["z_score"] - b["z_score"]).abs().max() < 1e-9
    assert a["z_score"].is_null().equals(b["z_score"].is_null())
    cols = ["kafka_partition", "kafka_offset", "check", "reason"]
    assert rejected.select(cols).sort(cols[:2]).equals(full.rejected.select(cols).sort(cols[:2]))
    assert full.rejected.height > 0, "the stream must contain conflicting duplicates"
    # A steady stream mostly extends; late readings and copies ahead of the published one re-derive.
    batches = -(-all_bronze.height // batch_rows)
    assert reasons and len(reasons) <= (batches * 0.2 if late < 0.01 else batches)
    assert all("behind published rows of their sensor_id" in r or "precede the published copy" in r for r in reasons)


def test_a_later_copy_in_a_later_batch_is_dropped_or_set_aside_without_rederiving():
    base = [(0, {"event_id": f"e{i}", "sensor_id": "s1", "sensor_type": "temperature", "location": "lab", "value": 20.0 + i % 3, "unit": "°C", "ts": (START + timedelta(seconds=i)).isoformat()}) for i in range(20)]
    copy_same = (0, dict(base[3][1]))
    copy_other = (0, {**base[4][1], "value": 30.0})
    late_free = (0, {**base[0][1], "event_id": "e99", "ts": (START + timedelta(seconds=100)).isoformat()})
    all_bronze = bronze(base + [copy_same, copy_other, late_free])
    first, second = all_bronze.slice(0, 20), all_bronze.slice(20)
    state = PublishedPartition.of(IOT, derive_silver(IOT, valid(first), None, CTX).rows, None, START)
    ext = extend_silver(IOT, state, valid(second), CTX, lambda coords: all_bronze.join(coords, on=["kafka_partition", "kafka_offset"], how="semi"))
    assert ext.reason is None
    assert ext.output.rows["event_id"].to_list() == ["e99"]
    assert ext.output.duplicates_dropped == 1
    assert ext.output.rejected["reason"].to_list() == ["duplicate event_id with different content (first seen at 0/4)"]


def test_a_copy_earlier_in_kafka_than_the_published_one_asks_for_a_rederivation():
    r = {"event_id": "e1", "sensor_id": "s1", "sensor_type": "temperature", "location": "lab", "value": 20.0, "unit": "°C", "ts": START.isoformat()}
    all_bronze = bronze([(1, r), (0, r)])  # partition 0 sorts first: its copy wins a full derivation
    first, second = all_bronze.filter(pl.col("kafka_partition") == 1), all_bronze.filter(pl.col("kafka_partition") == 0)
    state = PublishedPartition.of(IOT, derive_silver(IOT, valid(first), None, CTX).rows, None, START)
    ext = extend_silver(IOT, state, valid(second), CTX, lambda coords: all_bronze.join(coords, on=["kafka_partition", "kafka_offset"], how="semi"))
    assert ext.output is None and "precede the published copy" in ext.reason


# -- through Dagster: the Silver asset extends its partition run by run ----------------------------------

H = datetime(2026, 11, 20, 7, 0, tzinfo=timezone.utc)
PK = "2026-11-20-07:00"


def _silver_run(defs, spec, instance) -> dict:
    from tests.helpers import materialize, run_ingest

    assert run_ingest(defs, spec, instance).success
    result = materialize(defs, ["silver_iot"], PK, instance)
    [mat] = result.asset_materializations_for_node("silver_iot")
    return {k: v.value for k, v in mat.metadata.items()}


def test_the_silver_asset_extends_its_partition_and_ends_as_a_full_derivation(spec, resources, instance, kafka):
    from assets.transforms.dedup import derive_silver as full_derivation
    from tests.conftest import produce, reading
    from tests.helpers import definitions

    defs, lake = definitions(spec, resources), resources["lake"]
    at = lambda s: H + timedelta(seconds=s)  # noqa: E731
    produce(kafka, spec.topic, [reading(i, at(i * 4), sensor=i % 4) for i in range(200)])
    assert _silver_run(defs, spec, instance)["mode"] == "re-derived"  # nothing published yet

    copy, other = reading(5, at(20), sensor=1), reading(6, at(24), sensor=2, value=30.0)
    produce(kafka, spec.topic, [reading(i, at(i * 4), sensor=i % 4) for i in range(200, 300)] + [copy, other])
    meta = _silver_run(defs, spec, instance)
    assert (meta["mode"], meta["rows_added"], meta["bronze_rows"], meta["duplicates_dropped"]) == ("extended", 100, 102, 1)
    assert meta["dagster/row_count"] == 300 and meta["freshness_s"] >= 0

    produce(kafka, spec.topic, [reading(900, at(401), sensor=1)])  # behind sensor-1's published readings
    assert _silver_run(defs, spec, instance)["mode"] == "re-derived"
    produce(kafka, spec.topic, [reading(i, at(i * 4), sensor=i % 4) for i in range(300, 350)])
    assert _silver_run(defs, spec, instance)["mode"] == "extended"

    bronze = lake.read_bronze(spec.name, PK)
    ctx = SilverContext(PK, datetime.now(timezone.utc), "x")
    expected = full_derivation(spec, valid(bronze), None, ctx)
    silver = lake.read("silver", spec.name, "silver", [PK])
    cols = [c for c in silver.columns if c not in ("processed_at", "pipeline_version", "ingested_at", "z_score")]
    assert in_kafka_order(silver).select(cols).equals(in_kafka_order(expected.rows).select(cols))
    assert (in_kafka_order(silver)["z_score"] - in_kafka_order(expected.rows)["z_score"]).abs().max() < 1e-9
    quarantine = lake.read("quarantine", spec.name, "silver", [PK])
    assert quarantine.select("kafka_offset", "reason").equals(expected.rejected.select("kafka_offset", "reason"))
    assert "different content" in quarantine["reason"][0] and quarantine["payload"][0] is not None
