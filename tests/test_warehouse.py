"""The chDB warehouse through clickhouse-connect: atomic, idempotent partition swaps; writers wait for the lock."""

import threading
from datetime import datetime, timedelta, timezone

import dagster as dg
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


def test_swaps_leave_no_outdated_parts_for_the_next_session_to_load(resources):
    """chDB never removes the parts a swap replaced (a server does, after `old_parts_lifetime`), and every
    session loads them all again: the warehouse removes them as it closes a session."""
    wh = resources["warehouse"]
    wh.ensure_tables([table_ddl(IOT, IOT.gold[2])])
    for _ in range(30):
        wh.replace_partition("iot_type_daily", "20261120", rows(20, 3))
    parts = wh.query_arrow("SELECT count() AS n, countIf(active) AS a FROM system.parts WHERE database = currentDatabase() AND table = 'iot_type_daily'")
    assert parts.to_pylist() == [{"n": 1, "a": 1}]
    assert wh.count("iot_type_daily") == 3


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


def test_ddl_partitions_each_table_by_its_gold_grain(resources):
    """Hourly Gold tables swap an hour at a time (a micro-batch's load costs its hour, not the day so far)."""
    wh = resources["warehouse"]
    wh.ensure_tables([table_ddl(IOT, t) for t in IOT.gold])
    got = wh.query_arrow(
        "SELECT name, engine, partition_key FROM system.tables WHERE database = currentDatabase() ORDER BY name"
    ).to_pylist()
    assert [(r["name"], r["engine"], r["partition_key"]) for r in got] == [
        ("iot_location_hourly", "MergeTree", "(toYYYYMMDD(hour_start) * 100) + toHour(hour_start)"),
        ("iot_sensor_5m", "MergeTree", "(toYYYYMMDD(window_start) * 100) + toHour(window_start)"),
        ("iot_type_daily", "MergeTree", "toYYYYMMDD(day)"),
    ]  # fmt: skip


def _parts(wh, table: str) -> dict[str, list[str]]:
    got = wh.query_arrow(f"SELECT partition_id, name FROM system.parts WHERE active AND database = currentDatabase() AND table = '{table}' ORDER BY name")
    out: dict[str, list[str]] = {}
    for r in got.to_pylist():
        out.setdefault(r["partition_id"], []).append(r["name"])
    return out


def test_a_load_swaps_only_the_hour_it_loads(spec, resources, instance, kafka):
    """Readings in two hours of one day, then more in the second: its reload leaves the first hour's parts
    as they were and loads the second hour's rows only."""
    from medallion.driver import drive
    from tests.conftest import produce, reading
    from tests.helpers import definitions

    day = datetime.now(timezone.utc) - timedelta(days=1)  # inside the 5-minute table's TTL
    at = lambda h, i: day.replace(hour=h, minute=(i * 7) % 60, second=i % 60, microsecond=0)  # noqa: E731
    h10, h11 = f"{day:%Y%m%d}10", f"{day:%Y%m%d}11"
    produce(kafka, spec.topic, [reading(i, at(10 + i % 2, i), sensor=i % 4) for i in range(40)])
    defs = definitions(spec, resources)
    assert not drive(defs, instance, (spec,), timeout_s=300).failed_runs
    wh = resources["warehouse"]
    before = _parts(wh, "iot_sensor_5m")
    assert set(before) == {h10, h11}

    produce(kafka, spec.topic, [reading(100 + i, at(11, 30 + i), sensor=i % 4) for i in range(20)])
    assert not drive(defs, instance, (spec,), timeout_s=300).failed_runs
    after = _parts(wh, "iot_sensor_5m")
    assert after[h10] == before[h10]  # not rewritten
    assert after[h11] != before[h11]
    counts = {r["p"]: r["n"] for r in wh.query_arrow("SELECT _partition_id AS p, sum(count) AS n FROM iot_sensor_5m GROUP BY p").to_pylist()}
    assert counts == {h10: 20, h11: 40}
    loads = instance.fetch_materializations(dg.AssetKey("warehouse_iot_sensor_5m"), limit=1).records
    hour_rows = wh.query_arrow(f"SELECT count() AS n FROM iot_sensor_5m WHERE _partition_id = '{h11}'").column("n")[0].as_py()
    newest = loads[0].asset_materialization
    assert newest.partition == f"{day:%Y-%m-%d}-11:00" and newest.metadata["dagster/row_count"].value == hour_rows
    assert newest.metadata["clickhouse_partition"].value == h11


def test_a_table_an_older_version_partitioned_by_day_is_rebuilt_by_hour_with_its_rows(resources):
    import polars as pl

    from assets.warehouse import ensure_warehouse_tables, load_frame

    table = next(t for t in IOT.gold if t.name == "location_hourly")
    wh, lake = resources["warehouse"], resources["lake"]
    by_day = table_ddl(IOT, table).replace("PARTITION BY toYYYYMMDD(hour_start) * 100 + toHour(hour_start)", "PARTITION BY toYYYYMMDD(hour_start)")
    assert by_day != table_ddl(IOT, table)
    wh.ensure_tables([by_day])
    day = pl.DataFrame(
        {
            "location": ["lab"] * 3, "sensor_type": ["temperature"] * 3,
            "hour_start": [datetime(2026, 11, 20, h, tzinfo=timezone.utc) for h in range(3)],
            "count": [3, 4, 5], "avg": [1.0] * 3, "min": [0.5] * 3, "max": [2.0] * 3, "stddev": [0.1] * 3,
            "p50": [1.0] * 3, "p95": [1.9] * 3, "p99": [2.0] * 3, "anomaly_count": [0] * 3, "distinct_sensors": [1] * 3,
        }  # fmt: skip
    )
    wh.replace_partition("iot_location_hourly", "20261120", load_frame(table, day))

    ensure_warehouse_tables(IOT, table, lake, wh)
    got = wh.query_arrow("SELECT _partition_id AS p, sum(count) AS n FROM iot_location_hourly GROUP BY p ORDER BY p").to_pylist()
    assert got == [{"p": "2026112000", "n": 3}, {"p": "2026112001", "n": 4}, {"p": "2026112002", "n": 5}]
    names = {r["name"] for r in wh.query_arrow("SELECT name FROM system.tables WHERE database = currentDatabase()").to_pylist()}
    assert names == {"iot_location_hourly"}  # the staged copy is gone
    ensure_warehouse_tables(IOT, table, lake, wh)  # checked once: nothing rebuilt again
    assert wh.count("iot_location_hourly") == 3


def test_a_day_partitioned_table_a_view_reads_is_left_to_the_operator_with_the_steps(resources):
    """EXCHANGE would leave a materialized view reading the old table: the load refuses and says what to do."""
    import pytest

    from assets.warehouse import ensure_warehouse_tables
    from resources.warehouse import WarehouseSchemaError

    table = next(t for t in IOT.gold if t.name == "location_hourly")
    wh, lake = resources["warehouse"], resources["lake"]
    wh.ensure_tables([
        table_ddl(IOT, table).replace("PARTITION BY toYYYYMMDD(hour_start) * 100 + toHour(hour_start)", "PARTITION BY toYYYYMMDD(hour_start)"),
        "CREATE TABLE IF NOT EXISTS counts (n Int64) ENGINE = MergeTree ORDER BY n",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS counts_mv TO counts AS SELECT count AS n FROM iot_location_hourly",
    ])  # fmt: skip
    with pytest.raises(WarehouseSchemaError, match=r"iot_location_hourly is partitioned by toYYYYMMDD\(hour_start\).*RENAME TABLE.*counts_mv"):
        ensure_warehouse_tables(IOT, table, lake, wh)
    got = wh.query_arrow("SELECT name, partition_key FROM system.tables WHERE database = currentDatabase() AND name LIKE 'iot%'").to_pylist()
    assert got == [{"name": "iot_location_hourly", "partition_key": "toYYYYMMDD(hour_start)"}]  # untouched, no staged copy


def test_a_partition_read_from_many_gold_files_loads_with_low_cardinality_dictionaries(resources):
    """A Gold partition read from many files concatenates into a multi-chunk frame; each chunk's strings
    differ, and the load must still send one dictionary per LowCardinality column."""
    import polars as pl

    from assets.warehouse import load_frame

    table = next(t for t in IOT.gold if t.name == "location_hourly")
    hours = [
        pl.DataFrame(
            {
                "location": [f"site-{h}", "lab"], "sensor_type": ["temperature", f"type-{h}"],
                "hour_start": [datetime(2026, 11, 20, 0, tzinfo=timezone.utc)] * 2,
                "count": [3, 4], "avg": [1.0, 2.0], "min": [0.5, 1.0], "max": [2.0, 3.0], "stddev": [0.1, None],
                "p50": [1.0, 2.0], "p95": [1.9, 2.9], "p99": [2.0, 3.0], "anomaly_count": [0, 1], "distinct_sensors": [1, 2],
            }  # fmt: skip
        )
        for h in range(3)
    ]
    day = pl.concat(hours, rechunk=False)
    assert day["location"].n_chunks() == 3
    wh = resources["warehouse"]
    wh.ensure_tables([table_ddl(IOT, table)])
    assert wh.replace_partition("iot_location_hourly", "2026112000", load_frame(table, day)) == 6
    got = wh.query_arrow("SELECT location, sum(count) AS n FROM iot_location_hourly GROUP BY location ORDER BY location").to_pylist()
    assert got == [{"location": "lab", "n": 12}, {"location": "site-0", "n": 3}, {"location": "site-1", "n": 3}, {"location": "site-2", "n": 3}]


def test_every_streams_ddl_runs_with_its_ttl_index_and_rollup(resources):
    """The warehouse DDL of both reference streams, as a ClickHouse engineer would check it."""
    from assets.streams import STREAMS
    from assets.warehouse import all_ddl

    wh = resources["warehouse"]
    wh.ensure_tables([stmt for spec in STREAMS for table in spec.gold for stmt in all_ddl(spec, table)])
    tables = {r["name"]: r for r in wh.query_arrow("SELECT name, engine, create_table_query AS q FROM system.tables WHERE database = currentDatabase()").to_pylist()}
    assert "TTL toDateTime(window_start) + toIntervalDay(90)" in tables["iot_sensor_5m"]["q"]
    assert "PARTITION BY toYYYYMMDD(day)" in tables["ads_campaign_daily"]["q"] and "TTL day + toIntervalDay(400)" in tables["ads_campaign_daily"]["q"]
    assert "INDEX campaign_bf campaign_id TYPE bloom_filter(0.01) GRANULARITY 4" in tables["ads_campaign_daily"]["q"]
    assert "CODEC(Gorilla(8), ZSTD(1))" in tables["ads_campaign_daily"]["q"] and "CODEC(Delta(2), ZSTD(1))" in tables["ads_campaign_daily"]["q"]
    assert tables["ads_campaign_monthly"]["engine"] == "AggregatingMergeTree" and "AggregateFunction(uniq, Date)" in tables["ads_campaign_monthly"]["q"]
    assert tables["ads_campaign_monthly_mv"]["engine"] == "MaterializedView" and "TO default.ads_campaign_monthly" in tables["ads_campaign_monthly_mv"]["q"]


def test_the_cli_prints_a_warehouse_it_will_not_rebuild_as_one_line(monkeypatch, capsys):
    """`medallion erase` plans its warehouse swaps in the CLI's process: the refusal is one line, exit 1."""
    import medallion.cli as cli
    from resources.warehouse import WarehouseSchemaError

    def refuse(args):
        raise WarehouseSchemaError("warehouse table iot_sensor_5m is partitioned by toYYYYMMDD(window_start), this version loads it by ...: rebuild it (...), then load again")

    monkeypatch.setattr(cli, "cmd_erase", refuse)
    assert cli.main(["erase", "--subject", "sensor:sensor-1"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "medallion erase: warehouse table iot_sensor_5m is partitioned by toYYYYMMDD(window_start), this version loads it by ...: rebuild it (...), then load again"
    ]
