"""Benchmark: a backlog caught up by `medallion run`. N IoT readings spread over 24 hours of event time are
already in Kafka (embedded broker); `medallion run --json` ingests, derives and loads everything. Reports the
end-to-end seconds, events/s and the number of runs it took (issue 13: ≤ 15 s and ≤ 10 runs for 1M)."""

import argparse
import json
import subprocess
import sys
from datetime import datetime, timezone

from common import REPO, Timer, emit, scratch_home


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--hours", type=float, default=24)
    args = ap.parse_args()
    scratch_home("backlog")

    from assets.simulation.iot import bulk_readings, produce_frame
    from assets.streams import STREAMS
    from assets.streams.iot import IOT
    from medallion.stack import ensure_kafka
    from resources.config import lake_resource
    from resources.embedded_broker import stop_broker
    from resources.kafka import KafkaResource
    from resources.settings import load_settings

    settings = load_settings()
    lake = lake_resource()
    try:
        kafka = KafkaResource(bootstrap_servers=ensure_kafka(settings, STREAMS, lake, lambda *_: None), timeout_s=30)
        frame = bulk_readings(args.events, seed=11, end=datetime.now(timezone.utc), span_s=args.hours * 3600)
        with Timer() as produce_t:
            produce_frame(kafka.producer({"linger.ms": 50}), IOT.topic, frame)
        hours = frame["event_time"].dt.truncate("1h").n_unique()
        del frame

        with Timer() as run_t:
            done = subprocess.run(
                [str(REPO / ".venv/bin/medallion"), "run", "--json", "--timeout", "900"], cwd=REPO, capture_output=True, text=True
            )
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
            return 1
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert summary["reconciled"], summary
        emit(
            "backlog",
            {
                "events": args.events,
                "hours_of_event_time": hours,
                "seconds": round(run_t.seconds, 2),
                "events_per_s": round(args.events / run_t.seconds),
                "ingest_runs": summary["ingest_runs"],
                "automation_runs": summary["automation_runs"],
                "runs": summary["ingest_runs"] + summary["automation_runs"],
                "produce_s": round(produce_t.seconds, 1),
            },
            target_seconds=15,
            target_runs=10,
            note="`medallion run --json` as a subprocess (imports, instance, broker already up), 1 stream of readings; runs = ingest + automation runs it executed",
        )
        return 0
    finally:
        stop_broker(settings.run_dir)


if __name__ == "__main__":
    sys.exit(main())
