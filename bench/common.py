"""Shared pieces of the benchmarks: machine facts, one JSON line of figures, scratch homes, Bronze fixtures."""

from __future__ import annotations

import json
import os
import platform as stdlib_platform
import resource
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def machine() -> dict:
    versions = {p: metadata.version(p) for p in ("dagster", "polars", "pandera", "confluent-kafka", "chdb", "clickhouse-connect")}
    return {"cores": os.cpu_count(), "python": stdlib_platform.python_version(), "machine": stdlib_platform.machine(), "versions": versions}


def emit(name: str, figures: dict, **context) -> None:
    """The benchmark's result: one JSON line on stdout."""
    print(json.dumps({"bench": name, **figures, **context, "command": " ".join(sys.argv), "machine": machine()}, default=str), flush=True)


def scratch_home(prefix: str) -> Path:
    """A fresh MEDALLION_HOME for one benchmark, so it never touches a real one."""
    home = Path(tempfile.mkdtemp(prefix=f"medallion-bench-{prefix}-"))
    os.environ["MEDALLION_HOME"] = str(home)
    os.environ.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    os.environ.pop("CLICKHOUSE_HOST", None)
    return home


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bronze_frame(readings: pl.DataFrame, topic: str = "bench.iot", partitions: int = 3) -> pl.DataFrame:
    """Bronze rows for simulated readings, as the ingest job would write them (coordinates made up)."""
    now = datetime.now(timezone.utc)
    return (
        readings.with_row_index("__i")
        .with_columns((pl.col("__i") % partitions).cast(pl.Int32).alias("kafka_partition"))
        .with_columns(
            pl.lit(topic).alias("kafka_topic"),
            pl.int_range(pl.len()).over("kafka_partition").cast(pl.Int64).alias("kafka_offset"),
            pl.col("event_time").dt.cast_time_unit("ms").alias("kafka_timestamp"),
            pl.col("key").alias("kafka_key"),
            pl.lit(now).cast(pl.Datetime("us", "UTC")).alias("ingested_at"),
            pl.lit(None, pl.String).alias("parse_issues"),
        )
        .select(
            "kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp", "kafka_key", "payload", "ingested_at",
            "event_time", "event_id", "sensor_id", "sensor_type", "location", "value", "unit", "parse_issues",
        )  # fmt: skip
    )


def write_bronze(lake, stream: str, bronze: pl.DataFrame, partitions_def) -> list[str]:
    """Write a Bronze Delta table per event-time partition (one file per Kafka partition), like committed ingests."""
    from assets.partitions import partition_key_expr
    from resources.lake import bronze_table

    files = lake.data_files(bronze_table(stream))
    framed = bronze.with_columns(partition_key_expr(partitions_def, "event_time").alias("__pk"))
    for (pk, _kp), rows in framed.partition_by("__pk", "kafka_partition", as_dict=True).items():
        files.write(rows.drop("__pk"), pk)
    lake.commit(bronze_table(stream), files)
    return sorted(set(framed["__pk"].to_list()))


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def process_stats(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, resident bytes) of a live process."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[21]) * os.sysconf("SC_PAGE_SIZE")


class BrokerSampler:
    """The embedded broker over a run: its segments (they come and go), their CPU and resident memory."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.cpu: dict[int, float] = {}  # pid -> CPU seconds last seen
        self.rss: list[tuple[float, int, int]] = []  # (time, segments, resident bytes of the proxy and segments)
        self.segment_pids: set[int] = set()

    def sample(self):
        """The log as it is now (None: not running), its figures recorded."""
        from resources.embedded_broker import running_broker

        log = running_broker(self.run_dir)
        if log is None:
            return None
        rss = 0
        for pid in [log.proxy_pid, *(seg.pid for seg in log.segments)]:
            stats = process_stats(pid)
            if stats:
                self.cpu[pid], rss = stats[0], rss + stats[1]
        self.segment_pids.update(seg.pid for seg in log.segments)
        self.rss.append((time.time(), len(log.segments), rss))
        return log

    def figures(self) -> dict:
        span = self.rss[-1][0] - self.rss[0][0] if len(self.rss) > 1 else 0
        return {
            "broker_segments_started": len(self.segment_pids),
            "broker_segments_max": max((n for _, n, _ in self.rss), default=0),
            "broker_cpu_pct": round(100 * sum(self.cpu.values()) / span) if span else None,
            "broker_rss_mb_first_last": [round(self.rss[0][2] / 2**20), round(self.rss[-1][2] / 2**20)] if self.rss else None,
        }
