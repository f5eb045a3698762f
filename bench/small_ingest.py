"""Benchmark: a small ingest (1,000 events) on the local and on the S3 lake, repeated: the Delta commit latency
(dead-letter + Bronze commits, with the Kafka offsets as app transactions) and the whole ingest run, p50/p95.
The S3 lake is a real SeaweedFS server on loopback (resources/embedded_s3.py)."""

import argparse
import dataclasses
import statistics
import time

from common import emit, scratch_home


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(lake, kafka, spec, rounds: int, events: int, wh_path) -> dict:
    import dagster as dg

    from assets import bronze
    from assets.simulation.iot import bulk_readings, produce_frame
    from medallion.definitions import build_definitions
    from resources.warehouse import WarehouseResource

    commit_s: list[float] = []
    land = bronze.BronzeCommit.land

    def timed_land(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return land(self, *args, **kwargs)
        finally:
            commit_s.append(time.perf_counter() - t)

    bronze.BronzeCommit.land = timed_land
    resources = {"kafka": kafka, "lake": lake, "warehouse": WarehouseResource(chdb_path=str(wh_path))}
    job = build_definitions((spec,), resources).resolve_job_def(f"ingest_{spec.name}")
    run_s = []
    try:
        with dg.instance_for_test() as instance:
            for r in range(rounds):
                produce_frame(kafka.producer(), spec.topic, bulk_readings(events, seed=r))
                t = time.perf_counter()
                result = job.execute_in_process(
                    instance=instance, partition_key=spec.partitions.get_last_partition_key(), asset_selection=[dg.AssetKey(f"bronze_{spec.name}")]
                )
                run_s.append(time.perf_counter() - t)
                assert result.success
    finally:
        bronze.BronzeCommit.land = land
    landed = lake.count_bronze(spec.name) + lake.count_dead_letter(spec.name)
    assert landed == rounds * events, landed
    return {
        "commit_ms_p50": round(statistics.median(commit_s) * 1000, 1),
        "commit_ms_p95": round(percentile(commit_s, 0.95) * 1000, 1),
        "run_s_p50": round(statistics.median(run_s), 2),
        "run_s_p95": round(percentile(run_s, 0.95), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--events", type=int, default=1000)
    args = ap.parse_args()
    home = scratch_home("small-ingest")

    from assets.streams.iot import IOT
    from resources.embedded_broker import start_broker, stop_broker
    from resources.embedded_s3 import start_s3
    from resources.kafka import KafkaResource
    from resources.lake import LakeResource
    from resources.settings import load_settings

    settings = load_settings()
    info = start_broker(settings.run_dir)
    s3 = start_s3(home / "s3")
    try:
        kafka = KafkaResource(bootstrap_servers=info.bootstrap, timeout_s=30)
        out = {}
        env = s3.env()
        lakes = {
            "local": LakeResource(uri=str(home / "lake")),
            "s3": LakeResource(uri=env["MEDALLION_LAKE_URI"], aws_endpoint_url=env["AWS_ENDPOINT_URL"], aws_region=env["AWS_REGION"],
                               aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], aws_allow_http=True),
        }  # fmt: skip
        for name, lake in lakes.items():
            spec = dataclasses.replace(IOT, topic=f"bench.small.{name}")
            kafka.ensure_topics({spec.topic: spec.kafka_partitions, spec.dead_letter_topic: 1})
            out[name] = run(lake, kafka, spec, args.rounds, args.events, home / f"wh-{name}")
        emit(
            "small_ingest",
            {"events_per_ingest": args.events, "rounds": args.rounds, **{f"{lake}_{k}": v for lake, figures in out.items() for k, v in figures.items()}},
            note="one ingest run per round (Dagster, in process); commit = the dead-letter and Bronze Delta commits with the offsets",
        )
    finally:
        s3.stop()
        stop_broker(settings.run_dir)


if __name__ == "__main__":
    main()
