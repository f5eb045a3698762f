"""The chDB warehouse through clickhouse-connect: atomic, idempotent partition swaps; writers wait for the lock."""

import threading
from datetime import datetime, timezone

import pyarrow as pa

from assets.streams.iot import IOT
from assets.warehouse import table_ddl


def rows(day: int, n: int) -> pa.Table:
    ts = datetime(2026, 11, day, 1, tzinfo=timezone.utc)
    return pa.table(
        {
            "sensor_type": ["temperature"] * n,
            "day": pa.array([ts.date()] * n, pa.date32()),
            "count": list(range(1, n + 1)),
            "avg": [1.0] * n, "min": [1.0] * n, "max": [1.0] * n, "stddev": [None] * n,
            "anomaly_count": [0] * n, "distinct_sensors": [1] * n,
        }  # fmt: skip
    )


def test_replace_partition_is_idempotent_and_leaves_other_days(resources):
    wh = resources["warehouse"]
    wh.ensure_tables([table_ddl(IOT, IOT.gold[2])])
    wh.replace_partition("iot_type_daily", "20261120", rows(20, 3))
    wh.replace_partition("iot_type_daily", "20261121", rows(21, 2))
    wh.replace_partition("iot_type_daily", "20261120", rows(20, 3))
    wh.replace_partition("iot_type_daily", "20261120", rows(20, 3))
    assert wh.count("iot_type_daily") == 5
    wh.replace_partition("iot_type_daily", "20261120", rows(20, 1))
    assert wh.count("iot_type_daily") == 3
    tables = {r["name"] for r in wh.query_arrow("SELECT name FROM system.tables WHERE database = currentDatabase()").to_pylist()}
    assert tables == {"iot_type_daily"}  # no scratch tables left behind


def test_concurrent_loads_wait_for_the_lock_instead_of_failing(resources):
    wh = resources["warehouse"]
    wh.ensure_tables([table_ddl(IOT, IOT.gold[2])])
    errors = []

    def load(day):
        try:
            for _ in range(3):
                wh.replace_partition("iot_type_daily", f"202611{day}", rows(day, 4))
        except Exception as exc:  # noqa: BLE001 - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(d,)) for d in (20, 21, 22)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert wh.count("iot_type_daily") == 12


def test_ddl_is_day_partitioned_mergetree(resources):
    wh = resources["warehouse"]
    wh.ensure_tables([table_ddl(IOT, t) for t in IOT.gold])
    got = wh.query_arrow(
        "SELECT name, engine, partition_key FROM system.tables WHERE database = currentDatabase() ORDER BY name"
    ).to_pylist()
    assert [(r["name"], r["engine"]) for r in got] == [
        ("iot_location_hourly", "MergeTree"), ("iot_sensor_5m", "MergeTree"), ("iot_type_daily", "MergeTree"),
    ]  # fmt: skip
    assert all(r["partition_key"].startswith("toYYYYMMDD") for r in got)
