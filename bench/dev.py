"""Benchmark: `make dev` as shipped (`medallion dev`, both streams at their default rates, the real daemon),
for `--minutes`. Reads the Dagster instance afterwards: how long runs waited from request to start, how many
were queued at once, Kafka -> visible in ClickHouse per stream (each micro-batch's warehouse load records it
for its newest record as `freshness_s`), and how often the daily rollup was materialized. Samples while it
runs: each stream's consumer lag (log end - Bronze's committed offsets) and the embedded broker's segments,
CPU and resident memory.
"""

import argparse
import os
import signal
import statistics
import subprocess
import time

from common import REPO, BrokerSampler, emit, scratch_home


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return round(s[lo] + (s[hi] - s[lo]) * (k - lo), 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    args = ap.parse_args()
    home = scratch_home("dev")
    os.environ.pop("MEDALLION_STREAM_FOR_S", None)  # as shipped
    log = open(home / "medallion-dev.log", "wb")
    proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "medallion"), "dev", "--port", "0"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    queued_max = 0
    began = time.time()
    try:
        while not (home / "dagster" / "dagster.yaml").exists():
            time.sleep(1)
        time.sleep(5)
        from assets.streams import STREAMS
        from resources.config import lake_resource
        from resources.kafka import KafkaResource

        kafka, lake = KafkaResource(), lake_resource().process_config_and_initialize()
        lags: dict[str, list[int]] = {s.name: [] for s in STREAMS}
        broker = BrokerSampler(home / "run")
        with dg.DagsterInstance.get() as instance:
            while time.time() - began < args.minutes * 60:
                time.sleep(5)
                queued = instance.get_runs_count(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]))
                queued_max = max(queued_max, queued)
                if broker.sample() is not None:
                    for spec in STREAMS:
                        try:
                            parts = kafka.partitions(spec.topic)
                            ends = kafka.end_offsets(spec.topic, parts)
                            committed = lake.committed_offsets(spec.name, spec.topic, parts)
                            lags[spec.name].append(sum(max(0, ends[p] - committed[p]) for p in parts))
                        except Exception:  # noqa: BLE001 - topic not created yet, or the proxy moving: next sample
                            pass
                if proc.poll() is not None:
                    raise SystemExit(f"medallion dev exited with {proc.returncode}; see {home / 'medallion-dev.log'}")
            waits = [r.start_time - r.create_timestamp.timestamp() for r in instance.get_run_records() if r.start_time]
            figures = {"minutes": args.minutes, "runs": len(waits), "queued_max": queued_max,
                       "request_to_start_p50_s": percentile(waits, 0.5), "request_to_start_p95_s": percentile(waits, 0.95)}  # fmt: skip
            for stream, table in (("iot", "warehouse_iot_sensor_5m"), ("ads", "warehouse_ads_campaign_daily")):
                records = instance.fetch_materializations(dg.AssetKey(table), limit=10000).records
                fresh = [r.asset_materialization.metadata["freshness_s"].value for r in records if "freshness_s" in r.asset_materialization.metadata]
                figures[f"{stream}_freshness_p50_s"] = percentile(fresh, 0.5)
                figures[f"{stream}_freshness_p95_s"] = percentile(fresh, 0.95)
                figures[f"{stream}_loads"] = len(records)
            daily = sorted(r.timestamp for r in instance.fetch_materializations(dg.AssetKey("gold_iot_type_daily"), limit=10000).records)
            gaps = [b - a for a, b in zip(daily, daily[1:])]
            figures["type_daily_materializations"] = len(daily)
            figures["type_daily_gap_max_s"] = round(max(gaps), 1) if gaps else None
            figures["type_daily_gap_median_s"] = round(statistics.median(gaps), 1) if gaps else None
            for name, series in lags.items():
                third = max(1, len(series) // 3)
                figures[f"{name}_lag_mean_first_third"] = round(statistics.mean(series[:third])) if series else None
                figures[f"{name}_lag_mean_last_third"] = round(statistics.mean(series[-third:])) if series else None
                figures[f"{name}_lag_max"] = max(series, default=None)
            figures.update(broker.figures())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        from resources.embedded_broker import stop_broker

        stop_broker(home / "run")
    emit("dev", figures, target_request_to_start_p95_s=2, target_freshness_p95_s=5)


if __name__ == "__main__":
    main()
