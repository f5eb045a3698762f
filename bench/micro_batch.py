"""Benchmark: the cost of one micro-batch (Silver + Gold + warehouse) early and late in its hour.

The hour is filled at 1,000 events/s as a stream would have filled it by minute 1 and by minute 55 (60,000 and
3,300,000 readings, ingested and derived), then micro-batches of 5,000 readings go through a stream run, as
the Kafka sensor's runs carry them. A batch's cost is the time from its Bronze materialization to the last
warehouse load it triggers (both from the run's event log), median of `--batches` batches at each point.
"""

import argparse
import dataclasses
import statistics
import time
import uuid
from datetime import datetime, timedelta, timezone

from common import emit, scratch_home

HOUR = datetime(2026, 11, 20, 7, 0, tzinfo=timezone.utc)
PK = "2026-11-20-07:00"
RATE = 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--minutes", type=int, nargs="+", default=[1, 55])
    args = ap.parse_args()
    scratch_home("micro-batch")

    import dagster as dg

    from assets.simulation.iot import bulk_readings, produce_frame
    from assets.streams.iot import IOT
    from medallion.definitions import build_definitions
    from medallion.stack import ensure_kafka, prepare_dagster_home
    from resources.config import platform_resources
    from resources.embedded_broker import stop_broker
    from resources.settings import load_settings

    settings = load_settings()
    prepare_dagster_home(settings)
    spec = dataclasses.replace(IOT, topic=f"bench.micro.{uuid.uuid4().hex[:6]}")
    resources = platform_resources()
    ensure_kafka(settings, (spec,), resources["lake"], say=lambda *_: None)
    kafka = resources["kafka"]
    defs = build_definitions((spec,), resources)
    job = defs.resolve_job_def(f"ingest_{spec.name}")
    producer = kafka.producer({"linger.ms": 50})
    results = {}
    filled = 0
    with dg.DagsterInstance.ephemeral() as instance:

        def send_until(second: float) -> None:
            nonlocal filled
            n = int(second * RATE) - filled
            frame = bulk_readings(n, seed=filled + 1, end=HOUR + timedelta(seconds=second), span_s=n / RATE, first_id=filled)
            produce_frame(producer, spec.topic, frame)
            filled += n

        def run(stream: bool) -> dg.ExecuteInProcessResult:
            config = {"ops": {f"bronze_{spec.name}": {"config": {"stream_for_s": 0.001 if stream else 0}}}}
            result = job.execute_in_process(run_config=config, instance=instance, partition_key=PK, tags={"medallion/stream": spec.name})
            assert result.success
            return result

        for minute in args.minutes:
            send_until(minute * 60)
            run(stream=False)  # ingest, then Silver (in full the first time), Gold and the warehouse for the hour
            costs, stages = [], []
            for _ in range(args.batches):
                send_until(filled / RATE + args.batch / RATE)
                result = run(stream=True)
                stamps = _stamps(instance, result.run_id)
                costs.append(round(stamps["last_load"] - stamps["bronze"], 3))
                stages.append(stamps["stages"])
            results[f"minute_{minute}"] = {
                "hour_rows_before": filled - args.batch * args.batches, "batch_costs_s": costs, "median_s": statistics.median(costs),
                # each asset's materialization, from the Bronze one: median over the batches
                "done_after_s_median": {k: round(statistics.median(s[k] for s in stages), 3) for k in stages[-1]},
            }  # fmt: skip
    stop_broker(settings.run_dir)
    first, last = results[f"minute_{args.minutes[0]}"]["median_s"], results[f"minute_{args.minutes[-1]}"]["median_s"]
    emit("micro_batch", {"batch_events": args.batch, **results, "ratio_last_to_first": round(last / first, 2)}, target_ratio=1.2)


def _stamps(instance, run_id: str) -> dict:
    """Event-log times of the run's Bronze materialization and of its last warehouse load."""
    import dagster as dg

    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    bronze = min(r.event_log_entry.timestamp for r in records if r.event_log_entry.dagster_event.asset_key.path[0].startswith("bronze_"))
    loads = [r.event_log_entry.timestamp for r in records if r.event_log_entry.dagster_event.asset_key.path[0].startswith("warehouse_")]
    stages = {}
    for r in sorted(records, key=lambda r: r.event_log_entry.timestamp):
        stages[r.event_log_entry.dagster_event.asset_key.path[0]] = round(r.event_log_entry.timestamp - bronze, 3)
    return {"bronze": bronze, "last_load": max(loads), "stages": stages}


if __name__ == "__main__":
    main()
