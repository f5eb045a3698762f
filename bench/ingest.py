"""Benchmark 1: Kafka -> Bronze sustained events/s on the embedded broker (N events, 5M by default), and the
raw confluent-kafka consume rate of the same data as the ceiling."""

import argparse
import dataclasses

from common import Timer, emit, peak_rss_mb, scratch_home


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=5_000_000)
    args = ap.parse_args()
    home = scratch_home("ingest")

    import dagster as dg

    from assets.streams.iot import IOT
    from medallion.definitions import build_definitions
    from assets.simulation.iot import bulk_readings, produce_frame
    from resources.embedded_broker import start_broker, stop_broker
    from resources.kafka import KafkaResource
    from resources.lake import LakeResource
    from resources.warehouse import WarehouseResource
    from resources.settings import load_settings

    settings = load_settings()
    info = start_broker(settings.run_dir)
    try:
        kafka = KafkaResource(bootstrap_servers=info.bootstrap, timeout_s=30)
        spec = dataclasses.replace(IOT, topic="bench.iot")
        kafka.ensure_topics({spec.topic: spec.kafka_partitions, spec.dead_letter_topic: 1})
        frame = bulk_readings(args.events, seed=7)
        with Timer() as produce_t:
            produce_frame(kafka.producer(), spec.topic, frame)
        del frame

        with Timer() as raw_t:
            consumed = sum(len(b.messages) for b in kafka.read(spec.topic, {p: 0 for p in range(spec.kafka_partitions)}, None))
        assert consumed == args.events, consumed

        resources = {"kafka": kafka, "lake": LakeResource(uri=str(home / "lake")), "warehouse": WarehouseResource(chdb_path=str(home / "wh"))}
        job = build_definitions((spec,), resources).resolve_job_def(f"ingest_{spec.name}")
        with dg.instance_for_test() as instance, Timer() as ingest_t:
            result = job.execute_in_process(
                instance=instance,
                run_config={"ops": {f"bronze_{spec.name}": {"config": {"max_records": args.events}}}},
                partition_key=spec.partitions.get_last_partition_key(),
                asset_selection=[dg.AssetKey(f"bronze_{spec.name}")],
            )
        assert result.success
        lake = resources["lake"]
        landed = lake.count_bronze(spec.name) + lake.count_dead_letter(spec.name)
        assert landed == args.events, landed
        emit(
            "ingest",
            {
                "events": args.events,
                "seconds": round(ingest_t.seconds, 2),
                "events_per_s": round(args.events / ingest_t.seconds),
                "raw_consume_events_per_s": round(args.events / raw_t.seconds),
                "produce_events_per_s": round(args.events / produce_t.seconds),
                "peak_rss_mb": round(peak_rss_mb()),
            },
            target_events_per_s=300_000,
            note="one ingest run (Dagster, in process): consume to EOF, parse, write Bronze files, commit them with the offsets (Delta), report; peak RSS includes the producer's data",
        )
    finally:
        stop_broker(settings.run_dir)


if __name__ == "__main__":
    main()
