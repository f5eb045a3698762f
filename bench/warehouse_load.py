"""Benchmark 5: Gold rows/s into ClickHouse (chDB), through the warehouse resource's atomic partition swap."""

import argparse
from datetime import datetime, timezone

from common import Timer, emit, scratch_home


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    args = ap.parse_args()
    home = scratch_home("warehouse")

    from assets.streams.iot import IOT
    from assets.transforms.iot import gold_sensor_5m
    from assets.warehouse import table_ddl
    from medallion.simulator import bulk_readings
    from resources.warehouse import WarehouseResource

    import polars as pl

    table = IOT.gold[0]
    # Gold rows shaped like the real table: windows of many sensors over one day.
    readings = bulk_readings(args.rows * 2, sensors=args.rows // 288 + 1, end=datetime(2026, 11, 20, 23, 59, tzinfo=timezone.utc), span_s=86_000)
    silver = readings.with_columns(pl.lit(None, pl.Float64).alias("z_score"), pl.lit(False).alias("is_anomaly"))
    gold = gold_sensor_5m(silver).head(args.rows)
    data = gold.to_arrow()
    wh = WarehouseResource(chdb_path=str(home / "warehouse"))
    wh.ensure_tables([table_ddl(IOT, table)])
    wh.replace_partition("iot_sensor_5m", "20261120", data)  # warm-up (first open of chDB)
    with Timer() as t:
        loaded = wh.replace_partition("iot_sensor_5m", "20261120", data)
    assert wh.count("iot_sensor_5m") == loaded
    emit("warehouse_load", {"rows": loaded, "seconds": round(t.seconds, 3), "rows_per_s": round(loaded / t.seconds)}, target_rows_per_s=2_000_000)


if __name__ == "__main__":
    main()
