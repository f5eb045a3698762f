"""Benchmark 4: re-derive D days of hourly partitions (168 x 100k events by default) through Silver and Gold
from Bronze, with `medallion backfill`'s machinery: wall time."""

import argparse
from datetime import datetime, timedelta, timezone

from common import Timer, bronze_frame, emit, peak_rss_mb, scratch_home, write_bronze

START = datetime(2026, 11, 1, tzinfo=timezone.utc)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--events-per-partition", type=int, default=100_000)
    ap.add_argument("--all-layers", action="store_true", help="the warehouse loads and daily rollups too, as `medallion backfill` selects by default (hours in one catch-up run)")
    args = ap.parse_args()
    home = scratch_home("backfill")

    import dagster as dg

    from assets.streams.iot import IOT
    from medallion.backfill import backfill
    from medallion.definitions import build_definitions
    from assets.simulation.iot import bulk_readings
    from resources.kafka import KafkaResource
    from resources.lake import LakeResource
    from resources.warehouse import WarehouseResource

    lake = LakeResource(uri=str(home / "lake"))
    hours = args.days * 24
    with Timer() as setup_t:
        for h in range(hours):
            end = START + timedelta(hours=h + 1) - timedelta(milliseconds=1)
            readings = bulk_readings(args.events_per_partition, seed=h, end=end, span_s=3599)
            write_bronze(lake, IOT.name, bronze_frame(readings), IOT.partitions)
    resources = {
        "kafka": KafkaResource(bootstrap_servers="127.0.0.1:1"),  # a backfill never reads Kafka
        "lake": lake,
        "warehouse": WarehouseResource(chdb_path=str(home / "wh")),
    }
    defs = build_definitions((IOT,), resources)
    selection = None if args.all_layers else ["silver_iot", *(f"gold_iot_{t.name}" for t in IOT.gold)]
    first = START.strftime("%Y-%m-%d-%H:00")
    last = (START + timedelta(hours=hours - 1)).strftime("%Y-%m-%d-%H:00")
    with dg.instance_for_test() as instance, Timer() as t:
        runs = backfill(defs, instance, first, last, selection, streams=(IOT,))
    assert all(r.success for r in runs), [r.run_id for r in runs if not r.success]
    silver_rows = resources["lake"].count_rows("silver", IOT.name, "silver")
    emit(
        "backfill",
        {
            "partitions": hours,
            "layers": "silver, gold, warehouse" if args.all_layers else "silver, gold",
            "events": hours * args.events_per_partition,
            "runs": len(runs),
            "seconds": round(t.seconds, 1),
            "events_per_s": round(hours * args.events_per_partition / t.seconds),
            "silver_rows": silver_rows,
            "fixture_seconds": round(setup_t.seconds, 1),
            "peak_rss_mb": round(peak_rss_mb()),
        },
        target_seconds=180,
    )


if __name__ == "__main__":
    main()
