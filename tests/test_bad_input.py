"""Every class of bad input ends in dead-letter or quarantine with its specific reason; the counts reconcile."""

from datetime import datetime, timedelta, timezone

import polars as pl

from assets.bronze import ingest_totals
from assets.simulation.bad_input import corpus, produce_corpus
from medallion.driver import drive
from tests.conftest import produce, reading
from tests.helpers import definitions


def test_bad_input_corpus_lands_where_it_must_with_reasons(spec, resources, instance, kafka):
    # Everything in one hour partition: the previous hour, whatever minute the test runs at.
    hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    items = corpus(now=hour + timedelta(minutes=35), max_message_bytes=spec.max_message_bytes)
    assert len({i.name for i in items}) >= 20
    good_ts = hour + timedelta(minutes=5)
    produce(kafka, spec.topic, [reading(i, good_ts + timedelta(seconds=i), sensor=i % 4) for i in range(300)])
    produce_corpus(kafka.producer(), spec.topic, items)
    log = drive(definitions(spec, resources), instance, (spec,), timeout_s=300)
    assert not log.failed_runs

    lake = resources["lake"]
    pk = spec.partitions.get_partition_key_for_timestamp(good_ts.timestamp())
    dead = lake.read_dead_letter(spec.name)
    quarantine = lake.read("quarantine", spec.name, "silver", [pk])
    silver = lake.read("silver", spec.name, "silver", [pk])

    for item in items:
        if item.destination == "dead_letter":
            kept = item.value if len(item.value) <= spec.max_message_bytes else item.value[:1024]
            hits = dead.filter(pl.col("payload") == kept) if item.value else dead.filter(pl.col("error_class") == "empty")
            assert hits.height == 1, item.name
            assert item.reason in hits["error"][0], (item.name, hits["error"][0])
        elif item.destination == "quarantine":
            hits = quarantine.filter(pl.col("payload") == item.value.decode())
            assert hits.height == 1, item.name
            assert item.reason in hits["reason"][0], (item.name, hits["reason"][0])
        else:
            event_id = next(p for p in item.value.decode().split('"') if p.startswith("bad-"))
            assert silver.filter(pl.col("event_id") == event_id).height == 1, item.name

    n_dead = sum(i.destination == "dead_letter" for i in items)
    n_quarantine = sum(i.destination == "quarantine" for i in items)
    assert dead.height == n_dead and quarantine.height == n_quarantine
    consumed = ingest_totals(lake, spec)["consumed"]
    assert consumed == 300 + len(items) == lake.count_bronze(spec.name) + dead.height
    assert silver.height == 300 + sum(i.destination == "silver" for i in items)
    # the kept extra fields stay in the raw payload for later schema evolution
    extra = silver.filter(pl.col("event_id") == "bad-extra")
    assert extra.height == 1
