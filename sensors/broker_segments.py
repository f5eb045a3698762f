"""Keeps the embedded broker fast for hours: rotates its newest segment before Tansu slows down, and retires
segments Bronze has read (resources/embedded_broker.py). Nothing to do when a Kafka cluster is configured.

A segment is rotated once a partition holds `KafkaResource.embedded_segment_records` records there (a
record count bounds the produce batches Tansu's fetches walk). A sealed segment is retired once every
stream's Bronze has committed past it, the record its log-continuity check looks for included; the topics
no stream reads (dead-letter topics) go with it, as with retention on a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from assets.bronze import IngestSnapshot
from assets.spec import StreamSpec
from resources.embedded_broker import EmbeddedBrokerError, EmbeddedKafka, needs_settling, retire_oldest, rotate, running_broker, settle
from resources.kafka import KafkaResource, KafkaUnavailableError
from resources.lake import LakeResource
from resources.settings import load_settings
from sensors.tick import SensorResources

MAX_SEGMENTS = 8  # beyond this Bronze is not reading: rotating more would only pile up processes


@dataclass(frozen=True)
class Plan:
    retire: bool
    rotate: bool
    why: str


def plan(log: EmbeddedKafka, read_up_to: dict[str, dict[int, int]], held: dict[str, dict[int, int]], segment_records: int) -> Plan:
    """What to do with the log. `read_up_to`: per stream topic and partition, the offset before which Bronze
    needs nothing any more; `held`: records per topic and partition in the newest segment."""
    oldest = log.segments[0]
    retire = (
        len(log.segments) > 1
        and oldest.sealed
        and log.segments[1].readable
        and all(oldest.end(t, p) <= upto for t, parts in read_up_to.items() for p, upto in parts.items())
    )
    most = max((n for parts in held.values() for n in parts.values()), default=0)
    if segment_records <= 0:
        return Plan(retire, False, "rotation is off (MEDALLION_KAFKA_SEGMENT_RECORDS=0)")
    if most < segment_records:
        return Plan(retire, False, f"newest segment holds at most {most:,} records per partition (rotates at {segment_records:,})")
    if len(log.segments) - int(retire) >= MAX_SEGMENTS:
        return Plan(retire, False, f"{len(log.segments)} segments wait for Bronze to read them: not rotating until it catches up")
    return Plan(retire, True, f"newest segment holds {most:,} records in a partition: rotated")


def build_broker_segments_sensor(streams: tuple[StreamSpec, ...], resources) -> dg.SensorDefinition:
    """`resources`: the definitions' (it takes `kafka` and `lake`)."""
    tick_resources = SensorResources(resources, "kafka", "lake")

    @dg.sensor(
        name="embedded_broker_segments",
        minimum_interval_seconds=5,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Embedded broker only: starts a new broker segment before the newest slows down, and stops "
        "segments every stream's Bronze has read (skip reasons say what it did).",
    )
    def embedded_broker_segments(context: dg.SensorEvaluationContext):
        built = tick_resources()
        kafka: KafkaResource = built.kafka
        lake: LakeResource = built.lake
        if kafka.bootstrap_servers:
            return dg.SkipReason("a Kafka cluster is configured (KAFKA_BOOTSTRAP_SERVERS): nothing to keep")
        run_dir = load_settings().run_dir
        log = running_broker(run_dir)
        if log is None:
            return dg.SkipReason(f"the embedded broker is not running (no live broker in {run_dir})")
        try:
            if needs_settling(log):
                log = settle(run_dir) or log  # a rotation died half-way: finish it
            read_up_to, held = {}, {}
            topics = kafka.topics()
            for spec in streams:
                if spec.topic not in topics:
                    continue  # nothing produced to it yet: nothing to keep for it
                parts = topics[spec.topic]
                snapshot = IngestSnapshot.load(lake, spec, parts)
                first = snapshot.first_records
                read_up_to[spec.topic] = {p: min(snapshot.start[p], first[p]["offset"] if p in first else snapshot.start[p]) for p in parts}
                ends = kafka.end_offsets(spec.topic, parts)
                held[spec.topic] = {p: ends[p] - log.newest.start(spec.topic, p) for p in parts}
            decision = plan(log, read_up_to, held, kafka.embedded_segment_records)
            done = []
            if decision.retire:
                gone = retire_oldest(run_dir, read_up_to)
                if gone is not None:
                    done.append(f"retired the segment on port {gone.port}")
            if decision.rotate:
                log = rotate(run_dir)
                done.append(f"segment {len(log.segments)} now takes new records on port {log.newest.port}")
        except (KafkaUnavailableError, EmbeddedBrokerError) as exc:
            return dg.SkipReason(f"embedded broker segments unchanged: {exc}")
        log = running_broker(run_dir) or log
        return dg.SkipReason(f"{decision.why}; {len(log.segments)} segment(s)" + (f"; {'; '.join(done)}" if done else ""))

    return embedded_broker_segments
