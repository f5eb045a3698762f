"""Kafka -> Bronze on a real broker: exactly once, dead-letter with reasons, a materialization per partition."""

import json
import shutil
from datetime import datetime, timedelta, timezone

import dagster as dg
import polars as pl

from tests.conftest import produce, reading
from tests.helpers import definitions, run_ingest

H5 = datetime(2026, 11, 20, 5, 10, tzinfo=timezone.utc)
H2 = datetime(2026, 11, 20, 2, 30, tzinfo=timezone.utc)


def bronze_events(instance, asset="bronze_iot"):
    return instance.fetch_materializations(dg.AssetKey(asset), limit=1000).records


def test_records_land_in_their_event_hour_and_bad_ones_in_dead_letter(spec, resources, instance, kafka):
    defs = definitions(spec, resources)
    good = [reading(i, H5, sensor=i % 4) for i in range(40)] + [reading(100 + i, H2, sensor=i % 4) for i in range(10)]
    bad = [(b"s1", b"{broken"), (b"s1", b"\xff\xfe"), (None, b""), (b"s1", json.dumps([1]).encode())]
    produce(kafka, spec.topic, good + bad)
    result = run_ingest(defs, spec, instance)
    assert result.success

    lake = resources["lake"]
    assert lake.read_bronze(spec.name, "2026-11-20-05:00").height == 40
    assert lake.read_bronze(spec.name, "2026-11-20-02:00").height == 10
    dead = lake.read_dead_letter(spec.name)
    assert sorted(dead["error_class"].to_list()) == ["empty", "invalid_json", "not_object", "not_utf8"]
    assert dead["error"].null_count() == 0
    assert sum(e.end - e.start for e in lake.ledger(spec.name)) == 54 == lake.count_bronze(spec.name) + dead.height

    events = {r.partition_key: r.asset_materialization.metadata for r in bronze_events(instance)}
    assert set(events) == {"2026-11-20-05:00", "2026-11-20-02:00"}
    assert events["2026-11-20-05:00"]["dagster/row_count"].value == 40
    assert "p" in events["2026-11-20-05:00"]["offset_ranges"].value


def test_dead_letters_are_also_produced_to_the_dlq_topic(spec, resources, instance, kafka):
    produce(kafka, spec.topic, [(b"k", b"not json")])
    assert run_ingest(definitions(spec, resources), spec, instance).success
    msgs = [m for b in kafka.read(spec.dead_letter_topic, {0: 0}, None) for m in b.messages]
    assert len(msgs) == 1
    headers = dict(msgs[0].headers())
    assert headers["error_class"] == b"invalid_json" and msgs[0].value() == b"not json"


def test_repeated_runs_never_duplicate(spec, resources, instance, kafka):
    defs = definitions(spec, resources)
    produce(kafka, spec.topic, [reading(i, H5, sensor=i % 3) for i in range(30)])
    for _ in range(3):
        assert run_ingest(defs, spec, instance).success
    produce(kafka, spec.topic, [reading(100 + i, H5, sensor=i % 3) for i in range(20)])
    for _ in range(2):
        assert run_ingest(defs, spec, instance).success
    bronze = resources["lake"].read_bronze(spec.name, "2026-11-20-05:00")
    assert bronze.height == 50
    assert bronze.select(pl.struct("kafka_partition", "kafka_offset").n_unique()).item() == 50


def test_crash_before_commit_is_discarded_and_read_again(spec, resources, instance, kafka):
    """A run that staged files but died before its ledger record: recovery discards them, nothing doubles."""
    defs = definitions(spec, resources)
    lake = resources["lake"]
    produce(kafka, spec.topic, [reading(i, H5, sensor=i % 3) for i in range(30)])
    assert run_ingest(defs, spec, instance).success
    # Simulate the crashed run's leftovers: a staged copy of committed data under a fake, uncommitted range.
    staged = lake.staging_dir(spec.name, "crashed-run") / "pk=2026-11-20-0500" / "p0-000000000000999-000000000001999.parquet"
    staged.parent.mkdir(parents=True)
    shutil.copy(lake.bronze_files(spec.name, "2026-11-20-05:00")[0], staged)
    produce(kafka, spec.topic, [reading(100, H5)])
    result = run_ingest(defs, spec, instance)
    assert result.success
    assert not lake.staging_dir(spec.name, "crashed-run").exists()
    assert lake.count_bronze(spec.name) == 31
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("discarded uncommitted staging crashed-run" in m for m in logs)


def test_crash_after_commit_is_rolled_forward_and_reported(spec, resources, instance, kafka):
    """Ledger written, files still staged, no events logged: the next run finishes the move and reports."""
    defs = definitions(spec, resources)
    lake = resources["lake"]
    produce(kafka, spec.topic, [dict(reading(i, H5), sensor_id="k") for i in range(10)])
    assert run_ingest(defs, spec, instance).success
    [entry] = lake.ledger(spec.name)
    # Undo the publish: move the committed file back to staging and forget that it was reported.
    rel = entry.files[0]
    staging = lake.staging_dir(spec.name, "half-done")
    (staging / rel).parent.mkdir(parents=True)
    shutil.move(lake.bronze_dir(spec.name) / rel, staging / rel)
    shutil.rmtree(lake.ledger_dir(spec.name) / "_reported")
    before = len(bronze_events(instance))

    assert run_ingest(defs, spec, instance).success
    assert lake.count_bronze(spec.name) == 10
    assert len(bronze_events(instance)) == before + 1  # re-reported: downstream hears about it
    assert lake.unreported_entries(spec.name) == []


def test_unplaceable_future_event_is_dead_lettered(spec, resources, instance, kafka):
    future = reading(1, datetime.now(timezone.utc) + timedelta(hours=3))
    produce(kafka, spec.topic, [future])
    assert run_ingest(definitions(spec, resources), spec, instance).success
    dead = resources["lake"].read_dead_letter(spec.name)
    assert dead["error_class"].to_list() == ["future_event_time"]
