"""Kafka access for the platform: admin, producer, and reading an offset range to the end of each partition.

Correctness never depends on `get_watermark_offsets`: the embedded broker (Tansu) reports the base offset of
the last batch + 1 there, not the log end. Reads go to partition EOF, and "is there new data?" is answered
by a fetch probe at the committed offset.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

import dagster as dg
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from pydantic import Field

from resources.embedded_broker import EmbeddedKafka, reading, running_broker
from resources.settings import load_settings


READ_BATCH = 1000


# Said when the embedded broker stops serving fetches (bench/broker_endurance.py; README: Performance).
EMBEDDED_STALL_HINT = (
    "; the embedded broker (Tansu, in-memory) may have stalled, as a segment does once a partition holds "
    "~10,000 produce batches: check that the embedded_broker_segments sensor is running (it starts new segments), "
    "or set KAFKA_BOOTSTRAP_SERVERS to a Kafka cluster"
)


class KafkaUnavailableError(RuntimeError):
    """The broker did not answer within the configured timeout."""


class OffsetsWentBackwardsError(RuntimeError):
    """The topic's log ends before offsets we already committed: the broker lost data (e.g. restarted empty)."""


@dataclass
class RecordBatch:
    """Messages from one poll, plus the partitions that reached EOF."""

    messages: list
    eof: dict[int, int]


class KafkaResource(dg.ConfigurableResource):
    """Kafka cluster connection. With no bootstrap servers, the embedded broker of this checkout is used."""

    bootstrap_servers: Optional[str] = Field(
        default=None, description="host:port list; empty means the embedded Tansu broker under MEDALLION_HOME"
    )
    security_protocol: str = Field(default="PLAINTEXT", description="PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL")
    sasl_mechanism: Optional[str] = None
    sasl_username: Optional[str] = None
    sasl_password: Optional[str] = None
    ssl_ca_location: Optional[str] = None
    timeout_s: float = Field(default=10.0, description="how long a read may see no progress before failing")
    embedded_segment_records: int = Field(
        default=4000,
        description="embedded broker only: start a new segment once a partition holds this many records in the "
        "newest (Tansu slows past ~10,000 produce batches per partition); 0 turns rotation off",
    )

    def resolved_bootstrap(self) -> str:
        if self.bootstrap_servers:
            return self.bootstrap_servers
        return self._embedded().bootstrap

    def _embedded(self) -> EmbeddedKafka:
        settings = load_settings()
        info = running_broker(settings.run_dir)
        if info is None:
            raise KafkaUnavailableError(
                f"no KAFKA_BOOTSTRAP_SERVERS set and the embedded broker is not running "
                f"(no live broker in {settings.run_dir / 'kafka.json'}); start it with `medallion broker start`"
            )
        return info

    def _segments(self) -> EmbeddedKafka | None:
        """The embedded log's segments, read straight from the Tansu process holding each (None: a cluster)."""
        return None if self.bootstrap_servers else self._embedded()

    def client_config(self, bootstrap: str | None = None) -> dict:
        conf: dict = {"bootstrap.servers": bootstrap or self.resolved_bootstrap(), "security.protocol": self.security_protocol}
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password:
            conf["sasl.password"] = self.sasl_password
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        return conf

    # -- admin -------------------------------------------------------------------------------------
    def admin(self) -> AdminClient:
        return AdminClient(self.client_config())

    def ensure_topics(self, topics: dict[str, int]) -> None:
        admin = self.admin()
        existing = self._list_topics(admin)
        missing = [NewTopic(name, num_partitions=n, replication_factor=1) for name, n in topics.items() if name not in existing]
        if not missing:
            return
        for name, fut in admin.create_topics(missing, operation_timeout=self.timeout_s).items():
            try:
                fut.result(timeout=self.timeout_s)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise

    def _list_topics(self, admin: AdminClient) -> dict:
        try:
            return admin.list_topics(timeout=self.timeout_s).topics
        except KafkaException as exc:
            raise KafkaUnavailableError(f"Kafka at {self.resolved_bootstrap()} did not answer: {exc}") from exc

    def topics(self) -> dict[str, list[int]]:
        """Every topic and its partitions."""
        return {name: sorted(t.partitions) for name, t in self._list_topics(self.admin()).items() if t.error is None}

    def partitions(self, topic: str) -> list[int]:
        topics = self._list_topics(self.admin())
        if topic not in topics or topics[topic].error is not None:
            raise KafkaUnavailableError(f"topic {topic!r} does not exist on {self.resolved_bootstrap()}")
        return sorted(topics[topic].partitions)

    # -- producing -----------------------------------------------------------------------------------
    def producer(self, overrides: dict | None = None) -> Producer:
        conf = {**self.client_config(), "linger.ms": 20, "batch.num.messages": 10000, "message.max.bytes": 10_000_000}
        conf.update(overrides or {})
        return Producer(conf)

    # -- consuming -----------------------------------------------------------------------------------
    def _consumer(self, group_id: str | None = None, bootstrap: str | None = None) -> Consumer:
        return Consumer(
            {
                **self.client_config(bootstrap),
                "group.id": group_id or f"medallion-reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                # A start offset beyond the log end means the broker lost data; never silently reset.
                "auto.offset.reset": "error",
                "queued.min.messages": 500000,
                "fetch.max.bytes": 52428800,
                "max.partition.fetch.bytes": 10485760,
                "fetch.wait.max.ms": 10,
            }
        )

    def end_offsets(self, topic: str, partitions: list[int]) -> dict[int, int]:
        """High watermarks as the broker reports them (stale on Tansu: use for lag display only)."""
        log = self._segments()
        if log is None:
            return self._watermarks(self.resolved_bootstrap(), topic, partitions)
        seg = [s for s in log.segments if s.readable][-1]
        local = self._watermarks(seg.bootstrap, topic, partitions)
        return {p: seg.start(topic, p) + local[p] for p in partitions}

    def _watermarks(self, bootstrap: str, topic: str, partitions: list[int]) -> dict[int, int]:
        consumer = self._consumer(bootstrap=bootstrap)
        try:
            out = {}
            for p in partitions:
                try:
                    _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=self.timeout_s)
                except KafkaException as exc:
                    raise KafkaUnavailableError(f"could not read offsets of {topic}[{p}]: {exc}") from exc
                out[p] = high
            return out
        finally:
            consumer.close()

    def log_ends(self, topic: str, start_offsets: dict[int, int]) -> dict[int, int]:
        """The true end of each partition at or after `start_offsets`, found by fetching to EOF from there.

        Cheap when there is little new data: it reads only the records after the start offsets.
        """
        ends = dict(start_offsets)
        for batch in self.read(topic, start_offsets, max_records=None):
            for m in batch.messages:
                ends[m.partition()] = m.offset() + 1
            for p, off in batch.eof.items():
                ends[p] = max(ends[p], off)
        return ends

    def has_records_after(self, topic: str, start_offsets: dict[int, int]) -> dict[int, bool]:
        """Fetch probe: for each partition, whether a record exists at its start offset."""
        log = self._segments()
        if log is None:
            return self._probe(self.resolved_bootstrap(), topic, start_offsets)
        found, probes = {}, {}
        for p, offset in start_offsets.items():
            seg = self._segment_at(log, topic, p, offset)
            if seg is None:
                found[p] = False  # past the readable log: the next segment is being sealed into place
            elif seg.sealed:
                found[p] = True  # a sealed segment holds every offset before its end
            else:
                probes.setdefault(seg.bootstrap, {})[p] = offset - seg.start(topic, p)
        for bootstrap, local in probes.items():
            found.update(self._probe(bootstrap, topic, local))
        return found

    def _probe(self, bootstrap: str, topic: str, start_offsets: dict[int, int]) -> dict[int, bool]:
        found = {p: False for p in start_offsets}
        consumer = self._consumer(bootstrap=bootstrap)
        try:
            consumer.assign([TopicPartition(topic, p, off) for p, off in start_offsets.items()])
            pending = set(start_offsets)
            deadline = time.monotonic() + self.timeout_s
            while pending:
                if time.monotonic() > deadline:
                    raise KafkaUnavailableError(
                        f"no fetch response for {topic} partitions {sorted(pending)} from "
                        f"{bootstrap} within {self.timeout_s}s{self._stall_hint()}"
                    )
                for m in consumer.consume(num_messages=len(pending), timeout=0.5):
                    p = m.partition()
                    if p not in pending:
                        continue
                    err = m.error()
                    if err is None:
                        found[p] = True
                        pending.discard(p)
                    elif err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(p)
                    else:
                        self._raise_for(err, topic, p, start_offsets[p])
            return found
        finally:
            consumer.close()

    def fetch_one(self, topic: str, partition: int, offset: int):
        """The record at `offset`, or None if the log definitely does not hold it.

        Definitely: an EOF or out-of-range answer at or before `offset`, or no answer while even the
        broker's (possibly stale, never too high) watermark is at or below `offset`. No answer while the
        watermark says the record exists means the broker is struggling: KafkaUnavailableError.
        """
        log = self._segments()
        if log is None:
            return self._fetch_one(self.resolved_bootstrap(), topic, partition, offset)
        if offset < log.first_offset(topic, partition):
            return None  # in a retired segment: gone, as retention removes records from a cluster
        seg = log.segment_at(topic, partition, offset)
        if seg is None:
            raise KafkaUnavailableError(f"{topic}[{partition}] offset {offset} is in a segment of the embedded broker that is being sealed")
        base = seg.start(topic, partition)
        m = self._fetch_one(seg.bootstrap, topic, partition, offset - base)
        return m if m is None or base == 0 else GlobalOffset(m, offset)

    def _fetch_one(self, bootstrap: str, topic: str, partition: int, offset: int):
        consumer = self._consumer(bootstrap=bootstrap)
        try:
            consumer.assign([TopicPartition(topic, partition, offset)])
            deadline = time.monotonic() + min(self.timeout_s, 3.0)
            while time.monotonic() < deadline:
                for m in consumer.consume(num_messages=1, timeout=0.2):
                    err = m.error()
                    if err is None:
                        return m if m.offset() == offset else None
                    if err.code() == KafkaError._PARTITION_EOF and m.offset() <= offset:
                        return None
                    if err.code() in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
                        return None
                    if err.code() != KafkaError._PARTITION_EOF:
                        self._raise_for(err, topic, partition, offset)
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=self.timeout_s)
            if high <= offset:
                return None
            raise KafkaUnavailableError(
                f"{topic}[{partition}] reports offsets up to {high} but did not return offset {offset} in time"
            )
        finally:
            consumer.close()

    def read(self, topic: str, start_offsets: dict[int, int], max_records: int | None) -> Iterator[RecordBatch]:
        """Yield batches from `start_offsets` until every partition reaches EOF or `max_records` are read.

        A batch never splits across the record bound: callers may rely on offsets being contiguous per partition.
        On the embedded broker a read crosses segments in offset order: a sealed segment's end is not an EOF.
        """
        if self.bootstrap_servers:
            yield from self._read(self.bootstrap_servers, topic, start_offsets, max_records)
            return
        with reading(load_settings().run_dir) as log:
            if log is None:
                self._embedded()  # raises, saying how to start it
            yield from self._read_segments(log, topic, start_offsets, max_records)

    def _read_segments(self, log: EmbeddedKafka, topic: str, start_offsets: dict[int, int], max_records: int | None) -> Iterator[RecordBatch]:
        positions, remaining = dict(start_offsets), max_records
        while positions and (remaining is None or remaining > 0):
            by_segment: dict[int, dict[int, int]] = {}
            at_end = {}
            for p, offset in positions.items():
                seg = self._segment_at(log, topic, p, offset)
                if seg is None:
                    at_end[p] = offset
                else:
                    by_segment.setdefault(log.segments.index(seg), {})[p] = offset
            if at_end:
                yield RecordBatch(messages=[], eof=at_end)
                for p in at_end:
                    del positions[p]
            if not by_segment:
                return
            index = min(by_segment)  # oldest first: each partition's records come in offset order
            seg, group = log.segments[index], by_segment[index]
            base = {p: seg.start(topic, p) for p in group}
            ends = {p: seg.end(topic, p) for p in group}
            local = {p: offset - base[p] for p, offset in group.items()}
            for batch in self._read(seg.bootstrap, topic, local, remaining, global_start=group):
                messages = batch.messages
                if any(base.values()):
                    messages = [GlobalOffset(m, base[m.partition()] + m.offset()) for m in messages]
                if seg.sealed:  # what a late request added after sealing is not part of this segment's range
                    messages = [m for m in messages if m.offset() < ends[m.partition()]]
                for m in messages:
                    positions[m.partition()] = m.offset() + 1
                eof = {}
                for p, off in batch.eof.items():
                    if seg.sealed:
                        positions[p] = ends[p]  # on to the next segment
                    else:
                        positions.pop(p)
                        eof[p] = base[p] + off  # the newest segment's end is the log's end
                if remaining is not None:
                    remaining -= len(messages)
                yield RecordBatch(messages=messages, eof=eof)

    @staticmethod
    def _segment_at(log: EmbeddedKafka, topic: str, partition: int, offset: int):
        if offset < log.first_offset(topic, partition):
            raise OffsetsWentBackwardsError(
                f"{topic}[{partition}] has no offset {offset} any more: the embedded broker retired the segment "
                f"holding it (the log starts at {log.first_offset(topic, partition)}). Refusing to skip silently."
            )
        return log.segment_at(topic, partition, offset)

    def _read(self, bootstrap: str, topic: str, start_offsets: dict[int, int], max_records: int | None, global_start: dict[int, int] | None = None) -> Iterator[RecordBatch]:
        consumer = self._consumer(bootstrap=bootstrap)
        try:
            consumer.assign([TopicPartition(topic, p, off) for p, off in start_offsets.items()])
            pending = set(start_offsets)
            remaining = max_records
            deadline = time.monotonic() + self.timeout_s
            while pending and (remaining is None or remaining > 0):
                # Small batches: a consume() of 500-1,000 messages runs ~3x faster per message than one of
                # 20,000 (fresh allocations for a long-lived list), so callers get them small and process as they go.
                n = READ_BATCH if remaining is None else min(READ_BATCH, remaining)
                msgs = consumer.consume(num_messages=n, timeout=0.2)
                if not msgs:
                    if time.monotonic() > deadline:
                        raise KafkaUnavailableError(
                            f"no fetch progress on {topic} partitions {sorted(pending)} from "
                            f"{bootstrap} within {self.timeout_s}s{self._stall_hint()}"
                        )
                    continue
                deadline = time.monotonic() + self.timeout_s
                data, eof = [], {}
                for m in msgs:
                    err = m.error()
                    if err is None:
                        if m.partition() in pending:
                            data.append(m)
                    elif err.code() == KafkaError._PARTITION_EOF:
                        # Reported again once records arrive behind a partition's end; its read ended at the first.
                        if m.partition() in pending:
                            eof[m.partition()] = m.offset()
                            pending.discard(m.partition())
                    else:
                        self._raise_for(err, topic, m.partition(), (global_start or start_offsets).get(m.partition()))
                if remaining is not None:
                    data = data[:remaining]
                    remaining -= len(data)
                yield RecordBatch(messages=data, eof=eof)
        finally:
            consumer.close()

    def _stall_hint(self) -> str:
        return "" if self.bootstrap_servers else EMBEDDED_STALL_HINT

    def _raise_for(self, err: KafkaError, topic: str, partition: int, start: int | None) -> None:
        if err.code() in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
            raise OffsetsWentBackwardsError(
                f"{topic}[{partition}] has no offset {start}: the log ends before what Bronze already committed "
                f"(broker restarted empty or retention removed it). Refusing to skip or re-read silently: {err.str()}"
            )
        if err.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT):
            raise KafkaUnavailableError(f"Kafka unavailable while reading {topic}[{partition}]: {err.str()}")
        raise KafkaException(err)

    def commit_group_offsets(self, group_id: str, topic: str, offsets: dict[int, int]) -> None:
        """Mirror Bronze's committed offsets into a consumer group so standard Kafka tooling shows the lag
        (on the embedded broker: in the newest segment, which is what tooling on its address sees)."""
        log = self._segments()
        bootstrap = None
        if log is not None:
            seg = log.newest
            if not seg.readable:
                return
            offsets = {p: o - seg.start(topic, p) for p, o in offsets.items() if o >= seg.start(topic, p)}
            bootstrap = seg.bootstrap
        if not offsets:
            return
        consumer = self._consumer(group_id, bootstrap=bootstrap)
        try:
            consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
        finally:
            consumer.close()


class GlobalOffset:
    """A message from a later segment of the embedded broker, carrying its offset in the whole log."""

    __slots__ = ("_message", "_offset")

    def __init__(self, message, offset: int):
        self._message, self._offset = message, offset

    def offset(self) -> int:
        return self._offset

    def partition(self) -> int:
        return self._message.partition()

    def topic(self) -> str:
        return self._message.topic()

    def value(self):
        return self._message.value()

    def key(self):
        return self._message.key()

    def timestamp(self):
        return self._message.timestamp()

    def headers(self):
        return self._message.headers()

    def error(self):
        return None
