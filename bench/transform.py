"""Benchmark 2: Silver + Gold for one partition of N events (1M and 5M by default): wall time, events/s,
peak RSS of the whole process. Each size runs in a fresh child process so its peak memory is its own."""

import argparse
import json
import subprocess
import sys
from datetime import datetime, timezone

from common import REPO, Timer, bronze_frame, emit, peak_rss_mb, scratch_home, write_bronze

HOUR = datetime(2026, 11, 20, 5, 59, 59, tzinfo=timezone.utc)
PK = "2026-11-20-05:00"


def setup(events: int) -> None:
    """Write the Bronze partition (in its own process, so its memory is not counted)."""
    home = scratch_home(f"transform-{events}")
    from assets.streams.iot import IOT
    from assets.simulation.iot import bulk_readings

    readings = bulk_readings(events, seed=42, sensors=max(200, events // 3600), end=HOUR, span_s=3599)
    from resources.lake import LakeResource

    write_bronze(LakeResource(uri=str(home / "lake")), IOT.name, bronze_frame(readings), IOT.partitions)
    print(home)


def child(events: int, home: str) -> None:
    from pathlib import Path

    import dagster as dg

    from assets.streams.iot import IOT
    from medallion.definitions import build_definitions
    from resources.kafka import KafkaResource
    from resources.lake import LakeResource
    from resources.warehouse import WarehouseResource

    home = Path(home)
    lake = LakeResource(uri=str(home / "lake"))
    resources = {"kafka": KafkaResource(bootstrap_servers="127.0.0.1:1"), "lake": lake, "warehouse": WarehouseResource(chdb_path=str(home / "wh"))}
    defs = build_definitions((IOT,), resources)
    job = defs.resolve_implicit_global_asset_job_def()
    selection = [dg.AssetKey(k) for k in ("silver_iot", "gold_iot_sensor_5m", "gold_iot_location_hourly")]
    rss_before = peak_rss_mb()
    with dg.instance_for_test() as instance, Timer() as t:
        result = job.execute_in_process(instance=instance, partition_key=PK, asset_selection=selection)
    assert result.success
    silver_rows = lake.partition_rows("silver", IOT.name, "silver")[PK]
    print(json.dumps({"events": events, "seconds": t.seconds, "silver_rows": silver_rows, "startup_rss_mb": rss_before, "peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, nargs="*", default=[1_000_000, 5_000_000])
    ap.add_argument("--setup", type=int)
    ap.add_argument("--child", type=int)
    ap.add_argument("--home")
    args = ap.parse_args()
    if args.setup:
        return setup(args.setup)
    if args.child:
        return child(args.child, args.home)
    targets = {1_000_000: (3.0, 600), 5_000_000: (12.0, 1500)}
    for n in args.events:
        prep = subprocess.run([sys.executable, __file__, "--setup", str(n)], capture_output=True, text=True, cwd=REPO / "bench")
        if prep.returncode:
            raise SystemExit(prep.stderr[-4000:])
        home = prep.stdout.strip().splitlines()[-1]
        proc = subprocess.Popen([sys.executable, __file__, "--child", str(n), "--home", home], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO / "bench")
        stdout, stderr = proc.communicate()
        if proc.returncode:
            raise SystemExit(stderr[-4000:])
        out = json.loads(stdout.strip().splitlines()[-1])
        peak = out["peak_rss_mb"]
        target_s, target_mb = targets.get(n, (None, None))
        emit(
            "transform_silver_gold",
            {
                "events": n,
                "seconds": round(out["seconds"], 2),
                "events_per_s": round(n / out["seconds"]),
                "peak_rss_mb": round(peak),
                "rss_after_imports_mb": round(out["startup_rss_mb"]),
                "silver_rows": out["silver_rows"],
            },
            target_seconds=target_s,
            target_peak_rss_mb=target_mb,
            note="one Dagster run (in process) of silver + gold 5m + gold hourly for one hourly partition read from Bronze Parquet; peak RSS of that whole process (getrusage ru_maxrss)",
        )


if __name__ == "__main__":
    main()
