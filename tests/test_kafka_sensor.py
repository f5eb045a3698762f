"""The Kafka sensor against a real broker: lag-based run requests, run keys, backpressure, skip reasons."""

import json
from datetime import datetime, timedelta, timezone

import dagster as dg

from tests.conftest import produce, reading
from tests.helpers import definitions, run_ingest, sensor_tick

TS = datetime(2026, 11, 20, 5, 10, tzinfo=timezone.utc)


def test_skips_with_lag_when_topic_is_empty(spec, resources, instance):
    defs = definitions(spec, resources)
    tick = sensor_tick(defs, spec, instance)
    assert not tick.run_requests
    assert "no new records" in tick.skip_message and "lag 0" in tick.skip_message


def test_requests_a_run_when_records_wait_then_skips_after_ingest(spec, resources, instance, kafka):
    defs = definitions(spec, resources)
    produce(kafka, spec.topic, [reading(i, TS, sensor=i % 5) for i in range(50)])
    tick = sensor_tick(defs, spec, instance)
    [request] = tick.run_requests
    assert request.run_key.startswith(f"{spec.name}:")
    assert request.tags["medallion/start_offsets"] == json.dumps({"0": 0, "1": 0, "2": 0}, separators=(",", ":"))
    cursor = json.loads(tick.cursor)
    assert cursor["committed"] == {"0": 0, "1": 0, "2": 0}

    assert run_ingest(defs, spec, instance, request).success
    again = sensor_tick(defs, spec, instance, cursor=tick.cursor)
    assert not again.run_requests
    assert "lag 0" in again.skip_message
    committed = json.loads(again.cursor)["committed"]
    assert sum(committed.values()) == 50  # the cursor holds what landed in Bronze


def test_same_offsets_give_the_same_run_key(spec, resources, instance, kafka):
    defs = definitions(spec, resources)
    produce(kafka, spec.topic, [reading(i, TS) for i in range(5)])
    first = sensor_tick(defs, spec, instance).run_requests[0]
    second = sensor_tick(defs, spec, instance).run_requests[0]
    assert first.run_key == second.run_key  # the daemon drops the re-request


def test_detects_new_data_beyond_a_stale_watermark(spec, resources, instance, kafka):
    """Tansu reports the last batch's base offset + 1 as high watermark: the probe must still see new data."""
    defs = definitions(spec, resources)
    one_partition = [dict(reading(i, TS), sensor_id="same-key") for i in range(1000)]
    produce(kafka, spec.topic, one_partition)
    req = sensor_tick(defs, spec, instance).run_requests[0]
    assert run_ingest(defs, spec, instance, req).success
    # Bronze holds all 1,000 (read to EOF, not to the watermark)
    assert resources["lake"].count_bronze(spec.name) == 1000
    produce(kafka, spec.topic, [dict(reading(2000 + i, TS), sensor_id="same-key") for i in range(1000)])
    tick = sensor_tick(defs, spec, instance)
    assert tick.run_requests, tick.skip_message


def test_per_run_record_bound_splits_work_across_runs(spec, resources, instance, kafka):
    defs = definitions(spec, resources)
    produce(kafka, spec.topic, [reading(i, TS + timedelta(seconds=i), sensor=i % 7) for i in range(300)])
    runs = 0
    while (tick := sensor_tick(defs, spec, instance)).run_requests:
        req = tick.run_requests[0]
        req = req.with_replaced_attrs(run_config={"ops": {f"bronze_{spec.name}": {"config": {"max_records": 100}}}})
        assert run_ingest(defs, spec, instance, req).success
        runs += 1
        assert runs < 10
    assert runs >= 3
    assert resources["lake"].count_bronze(spec.name) == 300


def test_one_run_may_start_behind_a_running_one_but_no_more(spec, resources, instance, kafka):
    defs = definitions(spec, resources)
    produce(kafka, spec.topic, [reading(1, TS)])
    job = defs.resolve_job_def(f"ingest_{spec.name}")
    idle = sensor_tick(defs, spec, instance).run_requests[0]
    instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED, tags={"medallion/stream": spec.name})
    behind = sensor_tick(defs, spec, instance).run_requests[0]
    assert behind.run_key != idle.run_key  # a new key, or the daemon would drop it as a repeat
    instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTING, tags={"medallion/stream": spec.name})
    tick = sensor_tick(defs, spec, instance)
    assert not tick.run_requests and "in progress" in tick.skip_message and "lag" in tick.skip_message


def test_broker_unreachable_skips_with_reason(spec, resources, instance):
    from resources.kafka import KafkaResource

    dead = {**resources, "kafka": KafkaResource(bootstrap_servers="127.0.0.1:1", timeout_s=1.0)}
    tick = sensor_tick(definitions(spec, dead), spec, instance, cursor="unchanged")
    assert not tick.run_requests
    assert "Kafka unavailable" in tick.skip_message
    assert tick.cursor in (None, "unchanged")


def test_stream_runs_keep_one_run_waiting_behind_the_running_one(spec, resources, instance, kafka, monkeypatch):
    monkeypatch.setenv("MEDALLION_STREAM_FOR_S", "300")
    defs = definitions(spec, resources)
    assert not sensor_tick(defs, spec, instance).run_requests  # nothing to read, nothing running: no run
    produce(kafka, spec.topic, [reading(1, TS)])
    request = sensor_tick(defs, spec, instance).run_requests[0]
    assert request.run_config["ops"][f"bronze_{spec.name}"]["config"]["stream_for_s"] == 300
    assert run_ingest(defs, spec, instance).success  # (one pass: the test's own run)
    assert "lag 0" in sensor_tick(defs, spec, instance).skip_message
    # A stream run in flight: the next starts up behind it even with nothing waiting, so the topic is consumed
    # without a gap when it hands over.
    job = defs.resolve_job_def(f"ingest_{spec.name}")
    instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED, tags={"medallion/stream": spec.name})
    assert sensor_tick(defs, spec, instance).run_requests
