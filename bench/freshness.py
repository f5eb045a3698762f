"""Benchmark 3: end-to-end freshness under the real daemon.

`dagster dev` (its daemon with the Kafka, automation and other sensors, its code server and the UI, as
`medallion dev` starts them) runs against the simulator producing R events/s for
D seconds (1,000/s for 600 s by default). A record is visible once a load of the warehouse table
`iot_sensor_5m` reflects it: each load a stream run makes reports, after its partition swap, the Kafka
offsets Bronze had committed for the batch it carries (`kafka_offsets`), and the record is visible from the
first load whose offsets add up to its position in the produced sequence. Freshness = that load's event
time - the record's Kafka timestamp. The benchmark reads those events from the instance once a second (it
used to count rows in chDB once a second: an embedded chDB session is an exclusive lock, so the probe held
up the loads it measured, and it cost the benchmark up to half a core). At the end one query checks that the
warehouse holds every record. Also samples the consumer lag (produced - committed to Bronze, from the Bronze
events) over time, and the embedded broker: its segments (rotated and retired by the
`embedded_broker_segments` sensor), their CPU and resident memory.
"""

import argparse
import os
import re
import statistics
import subprocess
import threading
import time
from datetime import datetime, timezone

from common import REPO, BrokerSampler, emit, scratch_home


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--duration", type=int, default=600)
    ap.add_argument("--drain", type=int, default=90, help="seconds to wait for the tail after producing stops")
    ap.add_argument("--producer", choices=["simulator", "librdkafka-defaults"], default="simulator",
                    help="the simulator's batching (SIMULATOR_LINGER_MS), or a user's producer with librdkafka's defaults")
    ap.add_argument("--linger-ms", type=int, default=None, help="the simulator producer's linger (default SIMULATOR_LINGER_MS)")
    args = ap.parse_args()
    home = scratch_home("freshness")

    import dagster as dg

    from assets.streams.iot import IOT
    from assets.simulation.iot import SIMULATOR_LINGER_MS, SimulatorConfig, SimulatorStats, generate
    from medallion.stack import ensure_kafka, prepare_dagster_home
    from resources.config import platform_resources
    from resources.embedded_broker import stop_broker
    from resources.settings import load_settings

    settings = load_settings()
    prepare_dagster_home(settings)
    resources = platform_resources()
    ensure_kafka(settings, (IOT,), resources["lake"], say=lambda *_: None)
    kafka, wh = resources["kafka"], resources["warehouse"]

    env = {**os.environ, "DAGSTER_HOME": str(settings.dagster_home)}
    # As `medallion dev` runs it: one code server for the daemon and the UI. A bare `dagster-daemon run` would
    # start a code server of its own every 60 s (each importing the definitions again).
    dagster_dev = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "dagster"), "dev", "-h", "127.0.0.1", "-p", "0", "-w", str(REPO / "workspace.yaml")],
        env=env, cwd=REPO, stdout=open(home / "dagster_dev.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    produced_at: list[float] = []
    stop = threading.Event()

    def producer() -> None:
        # Clean data (no malformed/duplicates/late), so the warehouse count maps to the produced sequence.
        cfg = SimulatorConfig(events=args.rate * args.duration, rate=0, malformed_share=0, duplicate_share=0, late_share=0, anomaly_share=0.02)
        if args.producer == "simulator":
            p = kafka.producer({"linger.ms": SIMULATOR_LINGER_MS if args.linger_ms is None else args.linger_ms})
        else:  # nothing set but the address, as a user's own producer would be
            from confluent_kafka import Producer

            p = Producer({"bootstrap.servers": kafka.resolved_bootstrap()})
        began = time.time()
        for n, (key, _) in enumerate(generate(cfg, SimulatorStats())):
            if stop.is_set():
                break
            time.sleep(max(0.0, began + n / args.rate - time.time()))
            now = datetime.now(timezone.utc)
            # real-time event time: regenerate the payload's timestamp at send time
            value = ('{"event_id":"f-%d","sensor_id":"%s","sensor_type":"temperature","location":"lab","value":%.3f,"unit":"\\u00b0C","ts":"%s"}'
                     % (n, key.decode(), 20 + (n % 17) * 0.1, now.isoformat(timespec="milliseconds"))).encode()  # fmt: skip
            while True:
                try:
                    p.produce(IOT.topic, key=key, value=value)
                    break
                except BufferError:
                    p.poll(0.01)
            produced_at.append(time.time())
            if n % 200 == 0:
                p.poll(0)
        p.flush(30)

    thread = threading.Thread(target=producer, daemon=True)
    loads: list[tuple[float, int]] = []  # (event time of a warehouse load, records it reflects)
    lags: list[tuple[int, int]] = []  # (seconds into the run, produced - committed to Bronze)
    broker = BrokerSampler(settings.run_dir)
    instance = dg.DagsterInstance.from_config(str(settings.dagster_home))
    events = EventFollower(instance)
    committed_to: dict[int, int] = {}
    began = time.time()
    thread.start()
    try:
        while True:
            time.sleep(1.0)
            for r in events.new(dg.AssetKey("warehouse_iot_sensor_5m")):
                offsets = r.asset_materialization.metadata.get("kafka_offsets")
                if offsets is not None:  # a stream run's load (automation's carry no offsets)
                    loads.append((r.timestamp, max(sum(offsets.value.values()), loads[-1][1] if loads else 0)))
            for r in events.new(dg.AssetKey("bronze_iot")):
                for kp, end in BRONZE_RANGE.findall(str(r.asset_materialization.metadata["offset_ranges"].value)):
                    committed_to[int(kp)] = max(committed_to.get(int(kp), 0), int(end))
            now = time.time()
            lags.append((round(now - began), produced_count_at(produced_at, now) - sum(committed_to.values())))
            broker.sample()
            visible = loads[-1][1] if loads else 0
            done_producing = not thread.is_alive()
            if done_producing and (visible >= len(produced_at) or now - began > args.duration + args.drain):
                break
    finally:
        stop.set()
        os.killpg(dagster_dev.pid, 15)
        dagster_dev.wait(60)
        stop_broker(settings.run_dir)
    in_warehouse = int(wh.query_arrow("SELECT sum(count) AS n FROM iot_sensor_5m").column("n")[0].as_py() or 0)

    produced = len(produced_at)
    freshness = []
    j = 0
    for i, t_prod in enumerate(produced_at):
        while j < len(loads) and loads[j][1] < i + 1:
            j += 1
        if j == len(loads):
            break
        freshness.append(loads[j][0] - t_prod)
    producing = [lag for t, lag in lags if t <= args.duration]
    first, second = producing[: len(producing) // 2], producing[len(producing) // 2 :]
    third = max(1, len(producing) // 3)
    emit(
        "freshness",
        {
            "rate_events_per_s": args.rate,
            "producer": args.producer,
            "linger_ms": (SIMULATOR_LINGER_MS if args.linger_ms is None else args.linger_ms) if args.producer == "simulator" else 5,
            "duration_s": args.duration,
            "produced": produced,
            "visible": loads[-1][1] if loads else 0,
            "in_warehouse_at_end": in_warehouse,
            "freshness_of": "the records that became visible (time of the first load reflecting them)",
            "freshness_p50_s": round(percentile(freshness, 0.5), 2) if freshness else None,
            "freshness_p95_s": round(percentile(freshness, 0.95), 2) if freshness else None,
            "freshness_max_s": round(max(freshness), 2) if freshness else None,
            "lag_max": max((lag for _, lag in lags), default=0),
            "lag_mean_first_half": round(statistics.mean(first)) if first else None,
            "lag_mean_second_half": round(statistics.mean(second)) if second else None,
            "lag_mean_first_third": round(statistics.mean(producing[:third])) if producing else None,
            "lag_mean_last_third": round(statistics.mean(producing[-third:])) if producing else None,
            "lag_over_time": lags[:: max(1, len(lags) // 40)],
            **broker.figures(),
        },
        target_p95_s=10,
    )


BRONZE_RANGE = re.compile(r"p(\d+)\[\d+,(\d+)\)")


class EventFollower:
    """New materializations of an asset since the last look, oldest first (one cursor per asset)."""

    def __init__(self, instance):
        self.instance = instance
        self.cursors: dict = {}

    def new(self, key):
        out = []
        while True:
            got = self.instance.fetch_materializations(key, limit=1000, cursor=self.cursors.get(key), ascending=True)
            out += got.records
            if got.cursor:
                self.cursors[key] = got.cursor
            if not got.has_more:
                return out


def produced_count_at(produced_at: list[float], t: float) -> int:
    import bisect

    return bisect.bisect_right(produced_at, t)


if __name__ == "__main__":
    main()
