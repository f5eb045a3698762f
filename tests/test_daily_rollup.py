"""The daily rollup follows its hours while data flows: an hourly parent is nearly always in a run then, so it
runs at most once a minute despite that (and at once when its parents are quiet), never never.

Continuous ingest is real here: an ingest run in another process is held inside its Bronze step (a
failpoint), so the current hour's Silver is part of a run in progress while the conditions are evaluated.
"""

import time
from datetime import datetime, timedelta, timezone

import dagster as dg

from tests.conftest import produce, reading, start_held_child
from tests.helpers import definitions, materialize, run_ingest

A = dg.AssetKey
DAILY, DAILY_LOAD = A("gold_iot_type_daily"), A("warehouse_iot_type_daily")


def test_daily_rollup_runs_while_an_hour_is_always_in_progress(spec, resources, broker, shared_instance, kafka, tmp_path):
    instance = shared_instance
    defs = definitions(spec, resources)
    now = datetime.now(timezone.utc)
    if now.minute == 59 and now.second > 30:  # keep the test's readings and runs in one hour
        time.sleep(61 - now.second)
        now = datetime.now(timezone.utc)
    minute = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    hour = spec.partitions.get_last_partition_key()
    day = hour[:10]

    def evaluate(at: datetime, cursor):
        return dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=at, cursor=cursor)

    start = evaluate(minute + timedelta(seconds=5), None)
    produce(kafka, spec.topic, [reading(i, now + timedelta(milliseconds=i), sensor=i % 4) for i in range(200)])
    assert run_ingest(defs, spec, instance).success  # the current hour: Silver, hourly Gold and warehouse
    produce(kafka, spec.topic, [reading(1000 + i, now + timedelta(milliseconds=500 + i), sensor=i % 4) for i in range(10)])
    release = tmp_path / "release"
    held = start_held_child(spec, resources, broker, "ingest", point="ingest.after_read", release=release)
    try:
        in_flight = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED], tags={"medallion/stream": spec.name}))
        assert len(in_flight) == 1 and in_flight[0].tags["dagster/partition"] == hour

        # Its hour is in progress and the minute has not turned: the rollup waits (at most once a minute).
        same_minute = evaluate(minute + timedelta(seconds=25), start.cursor)
        assert not same_minute.get_requested_partitions(DAILY)
        # The next minute: it runs although the hour is still in progress, its warehouse load in the same run.
        next_minute = evaluate(minute + timedelta(seconds=65), same_minute.cursor)
        assert next_minute.get_requested_partitions(DAILY) == {day}
        assert next_minute.get_requested_partitions(DAILY_LOAD) == {day}
        assert materialize(defs, [DAILY.to_user_string(), DAILY_LOAD.to_user_string()], day, instance).success
        loaded = resources["warehouse"].query_arrow("SELECT sum(count) AS n FROM iot_type_daily").column("n")[0].as_py()
        assert loaded == 200
        handled = evaluate(minute + timedelta(seconds=70), next_minute.cursor)
        assert not handled.get_requested_partitions(DAILY) and not handled.get_requested_partitions(DAILY_LOAD)
    finally:
        release.touch()
    out, err = held.communicate(timeout=120)
    assert held.returncode == 0, err[-2000:]

    # The held run published the hour again and nothing is in progress: the rollup follows at once.
    quiet = evaluate(minute + timedelta(seconds=75), handled.cursor)
    assert quiet.get_requested_partitions(DAILY) == {day} == quiet.get_requested_partitions(DAILY_LOAD)
    assert materialize(defs, [DAILY.to_user_string(), DAILY_LOAD.to_user_string()], day, instance).success
    loaded = resources["warehouse"].query_arrow("SELECT sum(count) AS n FROM iot_type_daily").column("n")[0].as_py()
    assert loaded == 210
