"""Benchmark: what one warehouse load of a micro-batch's hour costs as its day fills.

A day of 5-minute Gold rows at 1,000 readings/s (200 sensors, the platform's own `gold_sensor_5m`) is laid
into the lake hour by hour; after 1, 6, 12 and 24 hours the newest hour is loaded into chDB the way a stream
run does after each micro-batch (`assets.warehouse.load_partition`: lock, Gold snapshot, read, swap).
Constant is the target: a batch's load should cost its hour, not the day so far.
"""

import argparse
import time
from datetime import datetime, timedelta, timezone

from common import emit, scratch_home

DAY = datetime(2026, 11, 20, tzinfo=timezone.utc)
RATE = 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--at-hours", type=int, nargs="+", default=[1, 6, 12, 24])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    home = scratch_home("warehouse-day-fill")

    import polars as pl

    from assets.simulation.iot import bulk_readings
    from assets.streams.iot import IOT
    from assets.warehouse import load_partition
    from resources.lake import LakeResource
    from resources.warehouse import WarehouseResource

    lake = LakeResource(uri=str(home / "lake"))
    wh = WarehouseResource(chdb_path=str(home / "warehouse"))
    five_minute = next(t for t in IOT.gold if t.name == "sensor_5m")
    results = {}
    for hour in range(max(args.at_hours)):
        end = DAY + timedelta(hours=hour + 1)
        rows = bulk_readings(3600 * RATE, seed=hour + 1, end=end, span_s=3600, first_id=hour * 3600 * RATE)
        rows = rows.select("sensor_id", "sensor_type", "location", "value", "event_time").with_columns(is_anomaly=pl.lit(False))
        pk = f"{(DAY + timedelta(hours=hour)):%Y-%m-%d-%H}:00"
        lake.publish("gold", IOT.name, five_minute.name, pk, five_minute.build(rows), {"partition": pk})
        del rows
        if hour + 1 in args.at_hours:
            costs = []
            for _ in range(args.repeat):
                began = time.perf_counter()
                loaded = load_partition(IOT, five_minute, lake, wh, pk)
                costs.append(time.perf_counter() - began)
            results[f"hours_{hour + 1}"] = {
                "rows_loaded": loaded.metadata["dagster/row_count"],
                "rows_in_day": (hour + 1) * 12 * 200,
                "best_s": round(min(costs), 3),
                "median_s": round(sorted(costs)[len(costs) // 2], 3),
            }
        else:
            load_partition(IOT, five_minute, lake, wh, pk)  # every hour was loaded once, as the stream runs do
    first, last = results[f"hours_{min(args.at_hours)}"], results[f"hours_{max(args.at_hours)}"]
    emit("warehouse_day_fill", {"loads": results, "last_over_first": round(last["median_s"] / first["median_s"], 2)}, target_ratio=1.2)


if __name__ == "__main__":
    main()
