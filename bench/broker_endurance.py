"""Benchmark: how long can one Tansu process (the embedded broker's in-memory engine) keep serving?

This is why the embedded log is split into segments that the `embedded_broker_segments` sensor rotates every
few thousand records per partition (resources/embedded_broker.py): it measures one segment, never rotated.

Tansu keeps each produced record batch as one object and lists every batch of a partition on each fetch
that is behind the log end, so its cost grows with the number of batches a partition holds (not records).
Hours cannot be waited out in a benchmark, so this one builds the log they leave: it preloads each partition
with the batches `--hours` of a producer at `--rate` events/s per stream and `--linger-ms` would have written
(one batch per partition per linger, keyed records filling every partition), then runs that producer live
for `--live-s` while the platform's reader (`KafkaResource.read`, as a stream run reads) follows each topic.
Figures: broker CPU during the live phase, lag (handed to the producer - read) per third and at its worst,
read stalls (reads that saw no progress for 10 s), and any other reader error.

`--hours 0` measures a fresh broker. Compare lingers: `--linger-ms 250 --hours 3` and `--linger-ms 1000 --hours 3`.
"""

import argparse
import threading
import time

from common import emit, process_stats, scratch_home


def preload(bootstrap: str, topic: str, partitions: int, batches: int) -> None:
    """`batches` one-record batches in each partition: one produce request per partition per round."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for n in range(batches):
        for p in range(partitions):
            producer.produce(topic, value=b'{"preload":%d}' % n, partition=p)
        if producer.flush(30):
            raise SystemExit(f"preload of {topic}: the broker did not acknowledge batch {n} within 30 s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--linger-ms", type=int, default=None, help="the live producer's linger (default: the simulator's)")
    ap.add_argument("--hours", type=float, default=3.0, help="traffic the preloaded log stands for")
    ap.add_argument("--rate", type=int, default=200, help="events/s per stream (make dev: 200)")
    ap.add_argument("--streams", type=int, default=2, help="topics, one reader each (make dev: 2)")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--live-s", type=int, default=120)
    args = ap.parse_args()
    home = scratch_home("broker")

    from confluent_kafka import Producer

    from assets.simulation.iot import SIMULATOR_LINGER_MS
    from resources.embedded_broker import start_broker, stop_broker
    from resources.kafka import KafkaResource, KafkaUnavailableError

    linger = SIMULATOR_LINGER_MS if args.linger_ms is None else args.linger_ms
    run_dir = home / "run"
    broker = start_broker(run_dir)
    kafka = KafkaResource(bootstrap_servers=broker.bootstrap, timeout_s=10.0)
    topics = [f"endurance-{i}" for i in range(args.streams)]
    kafka.ensure_topics({t: args.partitions for t in topics})
    # One batch per partition per linger while every partition gets a record in each linger window (at make
    # dev's 200 events/s and 250 ms: 50 records a window); slower streams send a batch per record.
    per_partition = int(args.hours * 3600 * 1000 / max(linger, 1)) if args.rate * linger / 1000 >= args.partitions else int(args.hours * 3600 * args.rate / args.partitions)
    began = time.monotonic()
    loaders = [threading.Thread(target=preload, args=(broker.bootstrap, t, args.partitions, per_partition)) for t in topics]
    for t in loaders:
        t.start()
    for t in loaders:
        t.join()
    preload_s = time.monotonic() - began

    stop = threading.Event()
    produced = {t: 0 for t in topics}
    read = {t: 0 for t in topics}
    stalls = {t: 0 for t in topics}
    errors: list[str] = []
    start_offsets = {t: {p: per_partition for p in range(args.partitions)} for t in topics}  # one record per preloaded batch
    for t in topics:  # the live phase starts at the log's end
        if kafka.has_records_after(t, start_offsets[t]) != {p: False for p in range(args.partitions)}:
            raise SystemExit(f"{t}: the preloaded log does not end at offset {per_partition}")

    def produce(topic: str) -> None:
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": linger})
        t0 = time.monotonic()
        n = 0
        while not stop.is_set():
            due = int((time.monotonic() - t0) * args.rate)
            while n < due:
                producer.produce(topic, key=b"sensor-%03d" % (n % 200), value=b'{"n":%d,"pad":"%s"}' % (n, b"x" * 120))
                n += 1
            produced[topic] = n
            producer.poll(0)
            time.sleep(0.005)
        producer.flush(30)
        produced[topic] = n

    def follow(topic: str) -> None:
        offsets = dict(start_offsets[topic])
        while not stop.is_set():
            try:
                for batch in kafka.read(topic, offsets, max_records=20_000):
                    for m in batch.messages:
                        offsets[m.partition()] = m.offset() + 1
            except KafkaUnavailableError:
                stalls[topic] += 1
            except Exception as exc:  # noqa: BLE001 - a reader that died must not look like a stalled one
                errors.append(f"{topic}: {exc}")
                return
            read[topic] = sum(offsets.values()) - sum(start_offsets[topic].values())
            time.sleep(0.2)

    threads = [threading.Thread(target=f, args=(t,), daemon=True) for t in topics for f in (produce, follow)]
    cpu0, t0 = process_stats(broker.pid)[0], time.monotonic()
    lags = []
    for t in threads:
        t.start()
    while time.monotonic() - t0 < args.live_s:
        time.sleep(1.0)
        lags.append(sum(produced.values()) - sum(read.values()))
    cpu_pct = 100 * (process_stats(broker.pid)[0] - cpu0) / (time.monotonic() - t0)
    stop.set()
    time.sleep(1.0)
    stop_broker(run_dir)
    third = max(1, len(lags) // 3)
    emit(
        "broker_endurance",
        {
            "linger_ms": linger,
            "hours_preloaded": args.hours,
            "batches_per_partition": per_partition,
            "preload_s": round(preload_s, 1),
            "rate_per_stream": args.rate,
            "streams": args.streams,
            "partitions": args.partitions,
            "live_s": args.live_s,
            "broker_cpu_pct": round(cpu_pct),
            "produced": sum(produced.values()),
            "read": sum(read.values()),
            "lag_mean_first_third": round(sum(lags[:third]) / third),
            "lag_mean_last_third": round(sum(lags[-third:]) / third),
            "lag_max": max(lags, default=0),
            "read_stalls": sum(stalls.values()),
            "reader_errors": errors,
        },
    )


if __name__ == "__main__":
    main()
