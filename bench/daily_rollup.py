"""Benchmark: what one derivation of the daily rollup (`gold_iot_type_daily`) costs as its day fills.

A day at 1,000 readings/s (200 sensors) is laid into the lake hour by hour as its 5-minute Gold partitions
(each hour's readings built with the platform's own `gold_sensor_5m`, then dropped), and after 1, 6, 12 and
24 hours the rollup's partition is derived and published the way a run does it (`assets.gold.gold_partition`:
read the source partitions, fold, contract, publish). For comparison, the same day's rollup built from Silver
readings (what it read before it folded the 5-minute rows) is timed for the first `--silver-hours` hours.
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
    ap.add_argument("--silver-hours", type=int, default=2, help="hours of readings the from-Silver comparison holds in memory")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    home = scratch_home("daily-rollup")

    import dagster as dg
    import polars as pl

    from assets.gold import build_from_silver, gold_partition
    from assets.simulation.iot import bulk_readings
    from assets.streams.iot import IOT
    from assets.transforms import iot as transforms
    from resources.lake import LakeResource
    from resources.spark import SparkEngine

    lake = LakeResource(uri=str(home / "lake"))
    five_minute = next(t for t in IOT.gold if t.name == "sensor_5m")
    daily = next(t for t in IOT.gold if t.name == "type_daily")
    context = dg.build_op_context()
    silver_hours: list[pl.DataFrame] = []
    results = {}

    def readings(hour: int) -> pl.DataFrame:
        end = DAY + timedelta(hours=hour + 1)
        frame = bulk_readings(3600 * RATE, seed=hour + 1, end=end, span_s=3600, first_id=hour * 3600 * RATE)
        return frame.select("sensor_id", "sensor_type", "location", "value", "event_time").with_columns(is_anomaly=pl.lit(False))

    for hour in range(max(args.at_hours)):
        rows = readings(hour)
        pk = f"{(DAY + timedelta(hours=hour)):%Y-%m-%d-%H}:00"
        lake.publish("gold", IOT.name, five_minute.name, pk, five_minute.build(rows), {"partition": pk})
        if hour < args.silver_hours:
            silver_hours.append(rows.select(transforms.GOLD_READS))
        del rows
        if hour + 1 in args.at_hours:
            costs = []
            for _ in range(args.repeat):
                began = time.perf_counter()
                events = list(gold_partition(context, IOT, daily, lake, SparkEngine(), f"{DAY:%Y-%m-%d}"))
                costs.append(time.perf_counter() - began)
            rollup = lake.read("gold", IOT.name, daily.name, [f"{DAY:%Y-%m-%d}"])
            assert rollup["count"].sum() == (hour + 1) * 3600 * RATE, "the rollup does not hold the day so far"
            assert any(isinstance(e, dg.MaterializeResult) for e in events)
            results[f"hours_{hour + 1}"] = {"readings": (hour + 1) * 3600 * RATE, "five_minute_rows": (hour + 1) * 12 * 200, "best_s": round(min(costs), 3)}

    silver = pl.concat(silver_hours)
    costs = []
    for _ in range(args.repeat):
        began = time.perf_counter()
        build_from_silver(IOT, daily, silver)
        costs.append(time.perf_counter() - began)
    from_silver = {"readings": silver.height, "build_only_best_s": round(min(costs), 3), "frame_mb": round(silver.estimated_size() / 2**20)}
    emit("daily_rollup", {"folded": results, "from_silver_readings": from_silver})


if __name__ == "__main__":
    main()
