"""The embedded broker's segments for real: Tansu processes rotated and retired under a live producer, and a
rotation killed half-way (resources/embedded_broker.py, sensors/broker_segments.py)."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import dagster as dg
from confluent_kafka import Producer
import polars as pl
import pytest

from assets.bronze import ingest_totals
from assets.streams.iot import IOT
from resources.embedded_broker import EmbeddedKafka, Segment, proxy_up, rotate, running_broker, start_broker, stop_broker
from resources.kafka import KafkaResource, OffsetsWentBackwardsError
from resources.lake import bronze_table
from resources.settings import load_settings
from resources.warehouse import WarehouseResource
from sensors.broker_segments import MAX_SEGMENTS, plan
from tests.conftest import produce, reading
from tests.helpers import definitions, run_ingest

T = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)


@pytest.fixture
def embedded(medallion_home):
    """This test's own embedded log (KafkaResource() with no bootstrap servers finds it)."""
    run_dir = load_settings().run_dir
    log = start_broker(run_dir)
    yield run_dir
    stop_broker(run_dir)
    assert running_broker(run_dir) is None and log.started_empty


@pytest.fixture
def setup(embedded, lake, tmp_path):
    kafka = KafkaResource(timeout_s=5.0, embedded_segment_records=300)
    spec = dataclasses.replace(IOT, topic="segments.iot")
    kafka.ensure_topics({spec.topic: 3, spec.dead_letter_topic: 1})
    res = {"kafka": kafka, "lake": lake, "warehouse": WarehouseResource(chdb_path=str(tmp_path / "warehouse"))}
    return spec, kafka, res, definitions(spec, res)


def segments_tick(defs, instance) -> str:
    sensor = defs.resolve_sensor_def("embedded_broker_segments")
    result = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=defs.resources, definitions=defs))
    assert not result.run_requests
    return result.skip_message


def ingest_all(defs, spec, instance, lake) -> None:
    for _ in range(20):
        before = ingest_totals(lake, spec)["consumed"]
        assert run_ingest(defs, spec, instance).success
        if ingest_totals(lake, spec)["consumed"] == before:
            return
    raise AssertionError("ingestion did not come to rest")


def assert_every_offset_once(lake, spec, kafka) -> pl.DataFrame:
    """Bronze holds each offset of the log once, from 0 to what it committed, with no gap at a segment seam."""
    bronze = lake.read_table(bronze_table(spec.name), None, columns=["kafka_partition", "kafka_offset", "event_id"])
    committed = lake.committed_offsets(spec.name, spec.topic, [0, 1, 2])
    for p in range(3):
        offsets = sorted(bronze.filter(pl.col("kafka_partition") == p)["kafka_offset"].to_list())
        assert offsets == list(range(committed[p])), f"partition {p}: offsets are not 0..{committed[p]} exactly once"
    totals = ingest_totals(lake, spec)
    assert totals["consumed"] == sum(committed.values()) == bronze.height + lake.count_dead_letter(spec.name)
    return bronze


def test_rotations_and_retirements_under_a_live_producer_lose_and_double_nothing(setup, instance, lake):
    spec, kafka, res, defs = setup
    stop, acked, failed = threading.Event(), [], []

    def on_delivery(err, msg):
        (failed if err else acked).append(err or json.loads(msg.value())["event_id"])

    def producer_loop():  # through the stable address, as a user's producer would, librdkafka defaults
        producer = kafka.producer({"linger.ms": 5})
        i = 0
        while not stop.is_set():
            for _ in range(20):
                r = reading(i, T, sensor=i % 9)
                producer.produce(spec.topic, key=r["sensor_id"].encode(), value=json.dumps(r).encode(), on_delivery=on_delivery)
                i += 1
            producer.poll(0)
            time.sleep(0.02)
        assert producer.flush(30) == 0

    thread = threading.Thread(target=producer_loop)
    thread.start()
    said = []
    try:
        for _ in range(5):
            time.sleep(1.0)
            assert run_ingest(defs, spec, instance).success
            said.append(segments_tick(defs, instance))
    finally:
        stop.set()
        thread.join()
    said.append(segments_tick(defs, instance))
    ingest_all(defs, spec, instance, lake)

    assert any("rotated" in s for s in said) and any("retired" in s for s in said), said
    log = running_broker(load_settings().run_dir)
    assert log.first_offset(spec.topic, 0) > 0  # a segment was retired: the log no longer starts at 0
    assert not failed and len(acked) > 2000
    bronze = assert_every_offset_once(lake, spec, kafka)
    # Nothing lost. A producer may resend a batch whose answer it lost when the proxy moved (at least once,
    # as on any Kafka connection loss): Silver drops those by event id.
    assert set(acked) <= set(bronze["event_id"].to_list())
    assert bronze.height - bronze["event_id"].n_unique() <= 50

    # Reading what was retired is refused, never skipped.
    with pytest.raises(OffsetsWentBackwardsError, match="retired"):
        list(kafka.read(spec.topic, {0: 0}, None))


@pytest.mark.parametrize("point", ["broker.before_proxy_switch", "broker.before_seal"])
def test_a_rotation_killed_half_way_loses_nothing_and_is_finished_by_the_next_tick(setup, instance, lake, point):
    spec, kafka, res, defs = setup
    produce(kafka, spec.topic, [reading(i, T, sensor=i % 9) for i in range(200)])
    assert run_ingest(defs, spec, instance).success

    killed = subprocess.run(
        [sys.executable, "-c", "from resources.embedded_broker import rotate; from resources.settings import load_settings; rotate(load_settings().run_dir)"],
        env={**os.environ, "MEDALLION_FAILPOINT": point}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    log = running_broker(load_settings().run_dir)
    assert len(log.segments) == 2 and not log.newest.readable

    produce(kafka, spec.topic, [reading(200 + i, T, sensor=i % 9) for i in range(100)])
    assert run_ingest(defs, spec, instance).success  # reads what is readable, never a segment without its starts
    assert_every_offset_once(lake, spec, kafka)

    said = segments_tick(defs, instance)  # finishes the rotation
    log = running_broker(load_settings().run_dir)
    assert all(s.readable for s in log.segments) and log.segments[0].sealed, said
    produce(kafka, spec.topic, [reading(300 + i, T, sensor=i % 9) for i in range(100)])
    ingest_all(defs, spec, instance, lake)
    bronze = assert_every_offset_once(lake, spec, kafka)
    assert sorted(bronze["event_id"].unique().to_list()) == sorted(f"evt-{i}" for i in range(400))


def test_a_restarted_platform_keeps_a_log_of_several_segments(setup, instance, lake):
    """`medallion dev` again after the proxy died: the proxy comes back, the segments and the lake are kept."""
    from medallion.stack import ensure_kafka

    spec, kafka, res, defs = setup
    produce(kafka, spec.topic, [reading(i, T, sensor=i % 9) for i in range(50)])
    rotate(load_settings().run_dir)
    produce(kafka, spec.topic, [reading(50 + i, T, sensor=i % 9) for i in range(50)])
    ingest_all(defs, spec, instance, lake)
    log = running_broker(load_settings().run_dir)
    os.kill(log.proxy_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while proxy_up(log) and time.monotonic() < deadline:  # the kill lands asynchronously
        time.sleep(0.02)
    assert not proxy_up(log)
    said = []
    ensure_kafka(load_settings(), (spec,), lake, say=said.append)  # what `medallion dev` does at start
    assert said == [f"embedded Kafka (Tansu) proxy restarted on {log.bootstrap}"]
    assert running_broker(load_settings().run_dir).segments == log.segments and lake.count_bronze(spec.name) == 100
    produce(kafka, spec.topic, [reading(100 + i, T, sensor=i % 9) for i in range(50)])
    ingest_all(defs, spec, instance, lake)
    assert_every_offset_once(lake, spec, kafka)
    assert lake.count_bronze(spec.name) == 150


def test_a_read_in_progress_holds_the_seal_so_no_record_lands_outside_it(setup):
    """A read started before a rotation sees the old segment as the newest. A record that reaches the old
    segment after the proxy moved (a request still inside it) must either be inside the seal, if that read
    returns it, or be read by nobody: sealing waits for reads in progress."""
    spec, kafka, res, defs = setup
    run_dir = load_settings().run_dir
    produce(kafka, spec.topic, [reading(i, T, sensor=0) for i in range(30)])
    old = running_broker(run_dir).newest
    partition = next(p for p, n in kafka.log_ends(spec.topic, {0: 0, 1: 0, 2: 0}).items() if n == 30)

    held = kafka.read(spec.topic, {partition: 0}, None)
    first = next(held)  # this read is in progress now
    proxy_before = running_broker(run_dir).proxy_pid
    rotation = threading.Thread(target=rotate, args=(run_dir,))
    rotation.start()
    deadline = time.monotonic() + 10
    while running_broker(run_dir).proxy_pid == proxy_before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert running_broker(run_dir).proxy_pid != proxy_before, "the proxy never moved"
    rotation.join(5.0)  # a rotation takes ~1 s when nothing holds it
    assert rotation.is_alive(), "the seal did not wait for the read in progress"
    straggler = Producer({"bootstrap.servers": old.bootstrap})  # straight into the old segment, after the move
    straggler.produce(spec.topic, partition=partition, value=json.dumps(reading(999, T, sensor=0)).encode())
    assert straggler.flush(10) == 0
    got = [m.offset() for m in first.messages + [m for batch in held for m in batch.messages]]
    rotation.join(30)
    log = running_broker(run_dir)
    # The straggler landed before the seal's last look, so it is part of the old segment, whether the held
    # read returned it or a later read does; and the next segment starts right after it.
    assert got in (list(range(30)), list(range(31)))
    assert log.segments[0].end(spec.topic, partition) == 31 == log.newest.start(spec.topic, partition)
    produce(kafka, spec.topic, [reading(100 + i, T, sensor=0) for i in range(5)])
    after = [m.offset() for batch in kafka.read(spec.topic, {partition: len(got)}, None) for m in batch.messages]
    assert got + after == list(range(36))


def _log(*segments: Segment) -> EmbeddedKafka:
    return EmbeddedKafka(proxy_pid=1, port=1, segments=segments)


def test_plan_retires_only_what_bronze_has_read_and_rotates_at_the_bound():
    old = Segment(pid=1, port=2, starts={}, ends={"t": {0: 100}})
    new = Segment(pid=1, port=3, starts={"t": {0: 100}})
    log = _log(old, new)
    assert plan(log, {"t": {0: 100}}, {"t": {0: 10}}, 300).retire
    # Bronze committed past the seam, but its continuity check still reads a record inside the old segment.
    assert not plan(log, {"t": {0: 99}}, {"t": {0: 10}}, 300).retire
    assert plan(log, {"t": {0: 100}}, {"t": {0: 300}}, 300).rotate
    assert not plan(log, {"t": {0: 100}}, {"t": {0: 300}}, 0).rotate
    unread = _log(*([old] * (MAX_SEGMENTS - 1)), new)
    decision = plan(unread, {"t": {0: 0}}, {"t": {0: 5000}}, 300)
    assert not decision.rotate and "wait for Bronze" in decision.why


def test_a_read_survives_a_partition_that_reaches_its_end_twice(embedded):
    """librdkafka reports a partition's end again once more records arrive behind it: a read that has
    finished that partition must ignore the second report (it raised KeyError, failing stream runs)."""
    kafka = KafkaResource(timeout_s=5.0)
    topic = "segments.eof-twice"
    kafka.ensure_topics({topic: 2})
    producer = kafka.producer({"linger.ms": 5})
    for i in range(20_000):  # many consume() calls on partition 1 after partition 0 has ended
        producer.produce(topic, value=b"x%d" % i, partition=1)
    assert producer.flush(30) == 0
    offsets: dict[int, list[int]] = {0: [], 1: []}
    ends: dict[int, list[int]] = {0: [], 1: []}
    for batch in kafka.read(topic, {0: 0, 1: 0}, max_records=None):
        for m in batch.messages:
            offsets[m.partition()].append(m.offset())
        for p, off in batch.eof.items():
            ends[p].append(off)
            if p == 0:  # partition 0 grows behind its end while partition 1 is still being read
                for _ in range(5):
                    producer.produce(topic, value=b"late", partition=0)
                assert producer.flush(10) == 0
                time.sleep(1.0)  # the consumer fetches them (and reaches the end again) meanwhile
    assert offsets == {0: [], 1: list(range(20_000))}
    assert ends == {0: [0], 1: [20_000]}, "each partition's end is reported once, where its read ended"
