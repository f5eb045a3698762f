"""Has the broker's log changed under what Bronze committed? (Broker restarted empty, topic recreated,
retention removed records.) Bronze's ingest commits remember the first record of each partition's latest range; if the broker no
longer returns that exact record at that offset, offsets went backwards or were reused.

The first record of the latest range, not its last: on the embedded broker, an offset inside the newest
produce batch cannot be told apart from a missing one (its watermark is stale), and a range's first record
sits in an older batch once more data arrives.
"""

from __future__ import annotations

import zlib

from resources.kafka import KafkaResource, KafkaUnavailableError, OffsetsWentBackwardsError


def fingerprint(message) -> dict:
    value = message.value() or b""
    return {"offset": message.offset(), "timestamp": message.timestamp()[1], "crc32": zlib.crc32(value)}


def verify_log_continuity(kafka: KafkaResource, topic: str, first_records: dict[int, dict]) -> None:
    """Raise OffsetsWentBackwardsError, naming the partition and offset, if the log no longer matches.
    `first_records`: per Kafka partition, the fingerprint of the first record of Bronze's latest range."""
    for kp, first_record in sorted(first_records.items()):
        offset = first_record["offset"]
        try:
            message = kafka.fetch_one(topic, kp, offset)
        except KafkaUnavailableError:
            # The broker says its log extends past `offset` but did not serve it in time (the embedded broker
            # sometimes will not serve an old offset at all). Not proof of loss: the read decides.
            continue
        if message is None:
            raise OffsetsWentBackwardsError(
                f"{topic}[{kp}] no longer has offset {offset}, which Bronze committed: the log went "
                f"backwards (broker restarted empty, topic recreated, or retention removed it). Ingestion of "
                f"{topic} is stopped so nothing is skipped or read twice; investigate before resuming."
            )
        if fingerprint(message) != first_record:
            raise OffsetsWentBackwardsError(
                f"{topic}[{kp}] offset {offset} now holds a different record than the one Bronze committed "
                f"(was {first_record}, now {fingerprint(message)}): the topic was recreated and offsets "
                f"reused. Ingestion of {topic} is stopped so nothing is skipped or read twice."
            )
