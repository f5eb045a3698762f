"""Kafka -> Bronze on a real broker: exactly once, dead-letter with reasons, a materialization per partition."""

import json
from datetime import datetime, timedelta, timezone
from urllib.parse import unquote

import dagster as dg
import polars as pl
from assets.bronze import ingest_totals
from resources.delta import add_actions
from resources.lake import bronze_table
from tests.conftest import ON_BOTH_LAKES

from tests.conftest import produce, reading
from tests.helpers import definitions, run_ingest

pytestmark = ON_BOTH_LAKES

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
    assert ingest_totals(lake, spec)["consumed"] == 54 == lake.count_bronze(spec.name) + dead.height
    # The Kafka offsets are committed inside the Delta commit: Bronze's transaction versions are the log ends.
    table = lake.open(bronze_table(spec.name))
    ends = kafka.log_ends(spec.topic, {p: 0 for p in kafka.partitions(spec.topic)})
    assert {p: table.transaction_version(f"{spec.topic}:{p}") for p in ends if ends[p]} == {p: e for p, e in ends.items() if e}

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


def test_files_of_a_run_that_died_before_its_commit_are_invisible_and_vacuumed(spec, resources, instance, kafka):
    """A run that wrote data files into Bronze but died before its commit: no version references them, so
    readers never see them, the offsets are read again, and vacuum removes the files."""
    defs = definitions(spec, resources)
    lake = resources["lake"]
    produce(kafka, spec.topic, [reading(i, H5, sensor=i % 3) for i in range(30)])
    assert run_ingest(defs, spec, instance).success
    # The dead run's leftover: a copy of a committed data file under a name no commit has.
    fs, root = lake.filesystem()
    committed = unquote(add_actions(lake.open(bronze_table(spec.name)))["path"][0])
    stray = f"{committed.rsplit('/', 1)[0]}/part-from-a-run-that-died.zstd.parquet"
    fs.copy_file(f"{root}/bronze/{spec.name}/{committed}", f"{root}/bronze/{spec.name}/{stray}")
    produce(kafka, spec.topic, [reading(100, H5)])
    assert run_ingest(defs, spec, instance).success
    assert lake.count_bronze(spec.name) == 31 == lake.read_bronze(spec.name, "2026-11-20-05:00").height
    assert ingest_totals(lake, spec)["consumed"] == 31
    vacuumed = lake.open(bronze_table(spec.name)).vacuum(retention_hours=0, enforce_retention_duration=False, full=True, dry_run=True)
    assert [unquote(v).removeprefix(lake.table_uri(bronze_table(spec.name)) + "/") for v in vacuumed] == [unquote(stray)]


def test_a_commit_whose_events_were_lost_is_announced_by_the_next_run(spec, resources, instance, kafka):
    """Committed, then the run died before its events: the next run announces every partition the commit
    touched, once, with the Bronze version it announces (here: a second instance that never saw the events)."""
    defs = definitions(spec, resources)
    lake = resources["lake"]
    produce(kafka, spec.topic, [reading(i, H5) for i in range(10)] + [reading(20 + i, H2) for i in range(5)])
    assert run_ingest(defs, spec, instance).success
    version = lake.version(bronze_table(spec.name))
    with dg.instance_for_test() as fresh:
        assert run_ingest(defs, spec, fresh).success
        events = {r.partition_key: r.asset_materialization.metadata for r in bronze_events(fresh)}
        assert set(events) == {"2026-11-20-05:00", "2026-11-20-02:00"}
        assert {m["lake/version"].value for m in events.values()} == {version}
        assert events["2026-11-20-05:00"]["dagster/row_count"].value == 10
        assert run_ingest(defs, spec, fresh).success
        assert len(bronze_events(fresh)) == 2  # announced once
    assert lake.count_bronze(spec.name) == 15 and lake.version(bronze_table(spec.name)) == version  # nothing re-ingested


def test_unplaceable_future_event_is_dead_lettered(spec, resources, instance, kafka):
    future = reading(1, datetime.now(timezone.utc) + timedelta(hours=3))
    produce(kafka, spec.topic, [future])
    assert run_ingest(definitions(spec, resources), spec, instance).success
    dead = resources["lake"].read_dead_letter(spec.name)
    assert dead["error_class"].to_list() == ["future_event_time"]
