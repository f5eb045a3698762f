"""Broker outages for real: the broker process paused (no answers) or restarted empty (memory only)."""

import dataclasses
import os
import signal
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from assets.streams.iot import IOT
from resources.embedded_broker import start_broker, stop_broker
from resources.kafka import KafkaResource
from tests.conftest import produce, reading
from tests.helpers import definitions, run_ingest, sensor_tick

T = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def own_broker(tmp_path):
    """A broker this test may pause, kill and restart."""
    run_dir = tmp_path / "own-broker"
    info = start_broker(run_dir)
    state = {"info": info, "run_dir": run_dir}
    yield state
    try:
        os.kill(state["info"].pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
    stop_broker(run_dir)


@pytest.fixture
def setup(own_broker, resources):
    kafka = KafkaResource(bootstrap_servers=own_broker["info"].bootstrap, timeout_s=2.0)
    spec = dataclasses.replace(IOT, topic="outage.iot")
    kafka.ensure_topics({spec.topic: 3, spec.dead_letter_topic: 1})
    res = {**resources, "kafka": kafka}
    return spec, kafka, res


def test_paused_broker_at_a_tick_skips_with_reason_and_keeps_the_cursor(own_broker, setup, instance):
    spec, kafka, res = setup
    defs = definitions(spec, res)
    produce(kafka, spec.topic, [reading(i, T) for i in range(20)])
    os.kill(own_broker["info"].pid, signal.SIGSTOP)
    try:
        tick = sensor_tick(defs, spec, instance, cursor="previous-cursor")
    finally:
        os.kill(own_broker["info"].pid, signal.SIGCONT)
    assert not tick.run_requests
    assert tick.skip_message.startswith("Kafka unavailable, cursor unchanged")
    assert own_broker["info"].bootstrap in tick.skip_message
    assert tick.cursor in (None, "previous-cursor")

    # Back up: the next tick asks for the waiting records, and nothing was lost.
    tick = sensor_tick(defs, spec, instance, cursor="previous-cursor")
    assert tick.run_requests
    assert run_ingest(defs, spec, instance, tick.run_requests[0]).success
    assert res["lake"].count_bronze(spec.name) == 20


def test_outage_during_a_run_is_retried_with_backoff_and_catches_up(own_broker, setup, instance):
    spec, kafka, res = setup
    defs = definitions(spec, res)
    produce(kafka, spec.topic, [reading(i, T + timedelta(seconds=i), sensor=i % 3) for i in range(100)])
    os.kill(own_broker["info"].pid, signal.SIGSTOP)
    threading.Timer(3.5, lambda: os.kill(own_broker["info"].pid, signal.SIGCONT)).start()
    started = time.monotonic()
    result = run_ingest(defs, spec, instance, raise_on_error=False)
    assert result.success
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert retries, "the step should have been retried"
    assert "did not answer" in str(retries[0].event_specific_data.error.message) or "Kafka" in str(retries[0].event_specific_data)
    assert time.monotonic() - started >= 3.0
    assert res["lake"].count_bronze(spec.name) == 100


def test_broker_down_for_good_fails_the_run_with_a_clear_error(setup, instance, resources):
    spec, _, res = setup
    dead = {**res, "kafka": KafkaResource(bootstrap_servers="127.0.0.1:1", timeout_s=0.5)}
    result = run_ingest(definitions(spec, dead), spec, instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "127.0.0.1:1 did not answer" in failure.event_specific_data.error.to_string()
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) == 3


def test_broker_restarted_empty_is_noticed_not_skipped_or_reread(own_broker, setup, instance):
    spec, kafka, res = setup
    defs = definitions(spec, res)
    produce(kafka, spec.topic, [reading(i, T, sensor=i % 3) for i in range(60)])
    assert run_ingest(defs, spec, instance).success
    committed = res["lake"].committed_offsets(spec.name, spec.topic, [0, 1, 2])

    # Restart the broker on the same port: it comes back empty; producers refill the topic.
    port = own_broker["info"].port
    stop_broker(own_broker["run_dir"])
    own_broker["info"] = start_broker(own_broker["run_dir"], port=port)
    kafka.ensure_topics({spec.topic: 3, spec.dead_letter_topic: 1})
    produce(kafka, spec.topic, [reading(1000 + i, T, sensor=i % 3) for i in range(10)])

    tick = sensor_tick(defs, spec, instance)
    assert not tick.run_requests
    assert tick.skip_message.startswith(f"NOT ingesting {spec.topic}")
    assert "went backwards" in tick.skip_message or "different record" in tick.skip_message

    result = run_ingest(defs, spec, instance, raise_on_error=False)
    assert not result.success
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]  # retrying cannot help
    assert res["lake"].committed_offsets(spec.name, spec.topic, [0, 1, 2]) == committed  # nothing skipped or re-read
    assert res["lake"].count_bronze(spec.name) == 60


def test_topic_recreated_with_reused_offsets_is_noticed(own_broker, setup, instance):
    """Offsets exist again after a refill, but hold other records: still refused."""
    spec, kafka, res = setup
    defs = definitions(spec, res)
    produce(kafka, spec.topic, [dict(reading(i, T), sensor_id="one-key") for i in range(5)])
    assert run_ingest(defs, spec, instance).success
    port = own_broker["info"].port
    stop_broker(own_broker["run_dir"])
    own_broker["info"] = start_broker(own_broker["run_dir"], port=port)
    kafka.ensure_topics({spec.topic: 3, spec.dead_letter_topic: 1})
    produce(kafka, spec.topic, [dict(reading(500 + i, T), sensor_id="one-key") for i in range(50)])
    before = res["lake"].committed_offsets(spec.name, spec.topic, [0, 1, 2])
    tick = sensor_tick(defs, spec, instance)
    assert not tick.run_requests and "different record" in tick.skip_message
    assert not run_ingest(defs, spec, instance, raise_on_error=False).success
    assert res["lake"].committed_offsets(spec.name, spec.topic, [0, 1, 2]) == before
    assert res["lake"].count_bronze(spec.name) == 5
