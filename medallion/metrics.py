"""Operational figures per stream for Prometheus, computed afresh on every scrape.

One job: collect figures. `MedallionCollector` is a prometheus_client collector; `medallion metrics` prints
its exposition once or serves it on /metrics (`--serve`). Sources, per stream:

- Kafka: the log end of each partition (`KafkaResource.log_ends`, read from the larger of Bronze's committed
  offset and the broker's watermark, so it is exact on Tansu, whose watermark lags, and cheap on real Kafka),
  minus Bronze's committed offset = the consumer lag. A broker that does not answer gives
  `medallion_kafka_up 0` and no lag series; the rest of the scrape still answers.
- The lake: records consumed, ingested into Bronze and dead-lettered (from Bronze's ingest commits, so
  consumed = ingested + dead-lettered holds exactly), Silver and quarantined rows (row counts in the Delta
  log, no data file read), and the newest event visible in Gold (end-to-end freshness).
- The Dagster instance: the latest evaluation of every contract check per partition (pass ratio), and the
  last Gold materialization and warehouse load.
- The warehouse: rows and newest time-column value per table. chDB admits one process at a time: the
  scrape takes its lock only if it is free within `warehouse_wait_s` (a load in progress is never held up
  and a scrape never waits behind one), for one short query.

Every source that fails sets `medallion_scrape_error{stream, source}` to 1 instead of failing the scrape.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from assets import keys
from assets.bronze import ingest_totals
from assets.promotion import CONTRACT_CHECK
from assets.spec import StreamSpec
from medallion.summary import latest_check_results
from resources.kafka import KafkaResource
from resources.lake import LakeResource, LakeTable
from resources.warehouse import WarehouseResource

PREFIX = "medallion_"
# Every metric the exporter emits: name (without the `medallion_` prefix) -> (type, help). Counters are
# exposed with the `_total` suffix. Alert rules and dashboards may use only these (tests check it).
METRICS: dict[str, tuple[str, str]] = {
    "kafka_up": ("gauge", "1 if the Kafka cluster answered a metadata request"),
    "kafka_log_end_offset": ("gauge", "Offset after the last record of the partition"),
    "kafka_committed_offset": ("gauge", "Next offset Bronze will read (Bronze's Delta transaction versions)"),
    "kafka_consumer_lag": ("gauge", "Records in the partition not yet committed to Bronze"),
    "records_consumed": ("counter", "Kafka records committed by Bronze ingest (Bronze + dead-letter)"),
    "records_ingested": ("counter", "Records written to Bronze (from the ingest commits: erasures later do not lower it)"),
    "records_dead_lettered": ("counter", "Records set aside as unplaceable (dead-letter table and topic)"),
    "silver_rows": ("gauge", "Rows in published Silver"),
    "quarantined_rows": ("gauge", "Rows quarantined by Silver's row contract (current partitions)"),
    "dead_letter_ratio": ("gauge", "Dead-lettered / consumed records, all time"),
    "quarantine_ratio": ("gauge", "Quarantined rows / records ingested into Bronze, all time"),
    "gold_newest_event_timestamp_seconds": ("gauge", "Event time of the newest record that Gold reflects"),
    "end_to_end_freshness_seconds": ("gauge", "Seconds since the newest event that Gold reflects"),
    "check_evaluated_partitions": ("gauge", "Partitions with a latest evaluation of the check"),
    "check_failed_partitions": ("gauge", "Partitions whose latest evaluation of the check failed"),
    "check_pass_ratio": ("gauge", "Share of partitions whose latest evaluation of the check passed"),
    "gold_last_materialization_timestamp_seconds": ("gauge", "When the Gold table was last published"),
    "warehouse_last_load_timestamp_seconds": ("gauge", "When the warehouse table was last loaded"),
    "warehouse_rows": ("gauge", "Rows in the warehouse table"),
    "warehouse_newest_timestamp_seconds": ("gauge", "Newest value of the table's time column (window/hour/day start)"),
    "scrape_error": ("gauge", "1 if a source could not be read during this scrape"),
    "scrape_duration_seconds": ("gauge", "Time this scrape took"),
}

FRESHNESS_LOOKBACK = 3  # newest Silver partitions tried when looking for the newest event Gold has caught up with


class _Families:
    """The metric families of one scrape, created on first use (so only series that exist are exposed)."""

    def __init__(self) -> None:
        self.families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}

    def set(self, name: str, labels: dict[str, str], value: float) -> None:
        fam = self.families.get(name)
        if fam is None:
            kind, doc = METRICS[name]
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            fam = self.families[name] = cls(PREFIX + name, doc, labels=list(labels))
        fam.add_metric([str(v) for v in labels.values()], float(value))


def exposed_names() -> set[str]:
    """Sample names as Prometheus sees them (counters with `_total`)."""
    return {PREFIX + n + ("_total" if kind == "counter" else "") for n, (kind, _) in METRICS.items()}


class MedallionCollector(Collector):
    def __init__(
        self,
        streams: tuple[StreamSpec, ...],
        lake: LakeResource,
        kafka: KafkaResource | None,
        warehouse: WarehouseResource | None,
        instance: dg.DagsterInstance | None = None,
        warehouse_wait_s: float = 1.0,
        clock=time.time,
    ) -> None:
        self.streams = streams
        self.lake = lake
        self.kafka = kafka
        self.warehouse = warehouse
        self.instance = instance
        self.warehouse_wait_s = warehouse_wait_s
        self.clock = clock
        self._lock = threading.Lock()  # one scrape at a time (the HTTP server answers on threads)

    def describe(self):
        return []  # nothing to collect at registration

    def collect(self) -> Iterator:
        with self._lock:
            began = time.monotonic()
            out = _Families()
            self._collect_kafka(out)
            for spec in self.streams:
                self._guard(out, spec, "lake", self._collect_lake, spec)
                if self.instance is not None:
                    self._guard(out, spec, "dagster", self._collect_instance, spec)
            if self.warehouse is not None:
                self._collect_warehouse(out)
            out.set("scrape_duration_seconds", {}, time.monotonic() - began)
            yield from out.families.values()

    def _guard(self, out: _Families, spec: StreamSpec | None, source: str, fn, *args) -> None:
        try:
            fn(out, *args)
        except Exception:  # noqa: BLE001 - a failing source is reported as a series, never as a failed scrape
            out.set("scrape_error", {"stream": spec.name if spec else "", "source": source}, 1)

    # -- Kafka -------------------------------------------------------------------------------------
    def _collect_kafka(self, out: _Families) -> None:
        if self.kafka is None:
            return
        try:
            topics = self.kafka.admin().list_topics(timeout=self.kafka.timeout_s).topics
        except Exception:  # noqa: BLE001 - unreachable broker, or no embedded broker running
            out.set("kafka_up", {}, 0)
            return
        out.set("kafka_up", {}, 1)
        for spec in self.streams:
            self._guard(out, spec, "kafka", self._collect_lag, spec, topics)

    def _collect_lag(self, out: _Families, spec: StreamSpec, topics: dict) -> None:
        meta = topics.get(spec.topic)
        if meta is None or meta.error is not None:
            raise LookupError(f"topic {spec.topic} does not exist")
        parts = sorted(meta.partitions)
        committed = self.lake.committed_offsets(spec.name, spec.topic, parts)
        # The watermark is never past the log end (on Tansu it is the last batch's base offset + 1): reading
        # from the larger of it and the committed offset to EOF finds the true end and reads at most a batch.
        high = self.kafka.end_offsets(spec.topic, parts)
        ends = self.kafka.log_ends(spec.topic, {p: max(committed[p], high[p]) for p in parts})
        for p in parts:
            labels = {"stream": spec.name, "topic": spec.topic, "partition": str(p)}
            out.set("kafka_log_end_offset", labels, ends[p])
            out.set("kafka_committed_offset", labels, committed[p])
            out.set("kafka_consumer_lag", labels, max(0, ends[p] - committed[p]))

    # -- the lake ----------------------------------------------------------------------------------
    def _collect_lake(self, out: _Families, spec: StreamSpec) -> None:
        s = {"stream": spec.name}
        totals = ingest_totals(self.lake, spec)
        consumed, ingested, dead = totals["consumed"], totals["ingested"], totals["dead_letter"]
        out.set("records_consumed", s, consumed)
        out.set("records_ingested", s, ingested)
        out.set("records_dead_lettered", s, dead)
        silver = self.lake.count_rows("silver", spec.name, "silver")  # from the commit log: no data file is read
        quarantined = self.lake.count_rows("quarantine", spec.name, "silver")
        out.set("silver_rows", s, silver)
        out.set("quarantined_rows", s, quarantined)
        out.set("dead_letter_ratio", s, dead / consumed if consumed else 0.0)
        out.set("quarantine_ratio", s, quarantined / ingested if ingested else 0.0)
        newest = self._gold_newest_event(spec)
        if newest is not None:
            out.set("gold_newest_event_timestamp_seconds", s, newest)
            out.set("end_to_end_freshness_seconds", s, max(0.0, self.clock() - newest))

    def _gold_newest_event(self, spec: StreamSpec) -> float | None:
        """The newest event time in the newest Silver partition whose same-grain Gold tables were all
        published after it (so Gold was built from that Silver). Earlier partitions are tried if Gold is
        still catching up with the newest one."""
        tables = [t for t in spec.gold if t.partitions == spec.partitions]
        if not tables:
            return None
        silver_times = self.lake.partition_times(LakeTable("silver", spec.name, "silver"))
        gold_times = [self.lake.partition_times(LakeTable("gold", spec.name, t.name)) for t in tables]
        for pk in sorted(silver_times)[-FRESHNESS_LOOKBACK:][::-1]:
            if all(g.get(pk, -1) >= silver_times[pk] for g in gold_times):
                rows = self.lake.read("silver", spec.name, "silver", [pk], columns=["event_time"])
                newest = rows["event_time"].max() if rows is not None else None
                if newest is not None:
                    return newest.timestamp()
        return None

    # -- the Dagster instance ----------------------------------------------------------------------
    def _collect_instance(self, out: _Families, spec: StreamSpec) -> None:
        checks = [keys.silver_key(spec)] + [keys.gold_key(spec, t) for t in spec.gold]
        for asset_key in checks:
            results = latest_check_results(self.instance, dg.AssetCheckKey(asset_key, CONTRACT_CHECK))
            labels = {"stream": spec.name, "asset": asset_key.to_user_string(), "check": CONTRACT_CHECK}
            failed = sum(1 for ok in results.values() if not ok)
            out.set("check_evaluated_partitions", labels, len(results))
            out.set("check_failed_partitions", labels, failed)
            if results:
                out.set("check_pass_ratio", labels, (len(results) - failed) / len(results))
        for t in spec.gold:
            labels = {"stream": spec.name, "table": keys.warehouse_table(spec, t)}
            for name, asset_key in (
                ("gold_last_materialization_timestamp_seconds", keys.gold_key(spec, t)),
                ("warehouse_last_load_timestamp_seconds", keys.warehouse_key(spec, t)),
            ):
                event = self.instance.get_latest_materialization_event(asset_key)
                if event is not None:
                    out.set(name, labels, event.timestamp)

    # -- the warehouse -----------------------------------------------------------------------------
    def _collect_warehouse(self, out: _Families) -> None:
        tables = {keys.warehouse_table(spec, t): (spec, t) for spec in self.streams for t in spec.gold}
        try:
            if self.warehouse.mode == "chdb" and not Path(self.warehouse.chdb_path).exists():
                rows = []  # embedded warehouse not created yet (and a scrape must not create it): nothing loaded
            else:
                # A scrape never queues behind a load: chDB's lock is taken only if free within the wait.
                with self.warehouse.client(wait_s=self.warehouse_wait_s) as client:
                    existing = {r[0] for r in client.query("SELECT name FROM system.tables WHERE database = currentDatabase()").result_rows}
                    parts = [
                        f"SELECT '{name}', count(), toUnixTimestamp(toDateTime(max({t.time_column}))) FROM {name}"
                        for name, (_, t) in tables.items()
                        if name in existing
                    ]
                    rows = client.query(" UNION ALL ".join(parts)).result_rows if parts else []
        except Exception:  # noqa: BLE001 - busy (a load holds chDB) or unreachable server
            for spec in self.streams:
                out.set("scrape_error", {"stream": spec.name, "source": "warehouse"}, 1)
            return
        for name, count, newest in rows:
            spec, _ = tables[name]
            labels = {"stream": spec.name, "table": name}
            out.set("warehouse_rows", labels, count)
            if count:
                out.set("warehouse_newest_timestamp_seconds", labels, newest)


def make_registry(collector: MedallionCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> str:
    """The Prometheus text exposition of one scrape."""
    return generate_latest(registry).decode()


def serve(registry: CollectorRegistry, port: int, host: str = "127.0.0.1"):
    """Serve /metrics on a background thread; returns (server, thread). Stop with `server.shutdown()`."""
    return start_http_server(port, addr=host, registry=registry)


def platform_collector(instance: dg.DagsterInstance | None, kafka_timeout_s: float = 2.0) -> MedallionCollector:
    """The collector for this environment's resources (the same configuration the code location uses)."""
    from assets.streams import STREAMS
    from resources.config import platform_resources

    wanted = ("kafka", "lake", "warehouse")
    res = {k: r.process_config_and_initialize() for k, r in platform_resources().items() if k in wanted}  # resolves EnvVars
    # A scrape must answer within Prometheus's scrape timeout (10 s by default), even with the broker down.
    kafka = res["kafka"].model_copy(update={"timeout_s": kafka_timeout_s})
    return MedallionCollector(STREAMS, res["lake"], kafka, res["warehouse"], instance)
