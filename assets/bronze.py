"""Bronze: the ingest job that moves a Kafka offset range into event-time partitions, exactly once.

Bronze is an asset the ingest job reports on (one materialization per partition it touched), because
which hours a batch of offsets lands in is only known after reading it. Exactly-once rests on the lake's
ledger: files are named by offset range, staged, and committed by a ledger record (see resources/lake.py).
"""


import contextlib
import gc
import json
from collections import defaultdict
from datetime import datetime, timezone

import dagster as dg
import polars as pl

from assets import keys
from assets.partitions import partition_key_expr, partition_start
from assets.spec import StreamSpec
from assets.bronze_stage import BronzeStage
from assets.transforms.bronze import BronzeParser, BronzeRules, bronze_schema
from resources.continuity import fingerprint, verify_log_continuity
from resources.faults import failpoint
from resources.kafka import KafkaResource, KafkaUnavailableError, OffsetsWentBackwardsError
from resources.lake import OFFSET_WIDTH, LakeResource, LedgerEntry, partition_dirname

DEFAULT_MAX_RECORDS = 2_000_000


def bronze_rules(spec: StreamSpec) -> BronzeRules:
    return BronzeRules(
        fields=[(f.name, f.kind) for f in spec.fields],
        event_time_field=spec.event_time_field,
        key_field=spec.key_field,
        max_message_bytes=spec.max_message_bytes,
        future_tolerance=spec.future_tolerance,
        earliest=partition_start(spec.partitions),
    )


def empty_bronze(spec: StreamSpec) -> pl.DataFrame:
    return pl.DataFrame(schema=bronze_schema(bronze_rules(spec)))


def topic_asset(spec: StreamSpec) -> dg.AssetSpec:
    return dg.AssetSpec(
        keys.topic_key(spec),
        description=f"Kafka topic `{spec.topic}`: {spec.description}. Watched by the `kafka_{spec.name}` sensor.",
        group_name=keys.group(spec, "source"),
        kinds={"kafka"},
        metadata={"topic": spec.topic, "dead_letter_topic": spec.dead_letter_topic},
    )


class IngestConfig(dg.Config):
    max_records: int = DEFAULT_MAX_RECORDS  # backpressure: records per run at most


def build_bronze(spec: StreamSpec) -> dg.AssetsDefinition:
    """Bronze as an asset whose materialization is an ingest of everything pending in the topic.

    A run targets one partition (the sensor picks the current hour, so fresh data flows to Gold in the same
    run); records land in whichever event-time partitions they belong to, and every other partition touched
    gets its own materialization event, so automation re-derives late hours too.
    """
    rules = bronze_rules(spec)
    pk_expr = partition_key_expr(spec.partitions, "event_time")

    @dg.asset(
        key=keys.bronze_key(spec),
        deps=[keys.topic_key(spec)],
        partitions_def=spec.partitions,
        output_required=False,  # nothing new for this run's partition: its downstream steps are skipped
        retry_policy=dg.RetryPolicy(max_retries=3, delay=1, backoff=dg.Backoff.EXPONENTIAL),  # 1 s, 2 s, 4 s
        group_name=keys.group(spec, "bronze"),
        kinds={"kafka", "parquet"},
        owners=list(spec.owners),
        description=(
            f"Raw {spec.name} records by event time: payload + topic/partition/offset/Kafka timestamp/ingestion "
            "time. Append-only, exactly once per offset. Materializing it ingests everything pending in "
            f"`{spec.topic}` (the `kafka_{spec.name}` sensor does this); records land in their own event-time partitions."
        ),
    )
    def bronze(context: dg.AssetExecutionContext, config: IngestConfig, kafka: KafkaResource, lake: LakeResource):
        own = context.partition_key
        with lake.stream_lock(spec.name):
            for action in lake.recover_bronze(spec.name):
                context.log.warning(f"recovery: {action}")
            entries = lake.unreported_entries(spec.name)  # a crashed run committed these but never announced them
            failpoint("ingest.after_recover")

            parts = kafka.partitions(spec.topic)
            try:
                verify_log_continuity(kafka, lake, spec.name, spec.topic)
            except OffsetsWentBackwardsError as exc:  # retrying cannot help: a person must look
                raise dg.Failure(description=str(exc), allow_retries=False) from exc
            start = lake.committed_offsets(spec.name, parts)
            new_entries = _ingest(context, spec, rules, pk_expr, kafka, lake, start, config.max_records)
            entries += new_entries
            if not new_entries:
                context.log.info(f"no new records in {spec.topic} after offsets {start}")
            own_metadata = announce(context, spec, kafka, lake, entries, own)
            if own_metadata is not None:
                yield dg.MaterializeResult(metadata=own_metadata)
            finish_report(context, spec, kafka, lake, entries)

    return bronze


@contextlib.contextmanager
def cyclic_gc_paused():
    """The read loop allocates millions of short-lived, acyclic objects; the cycle collector would
    rescan the growing heap over and over (measured: half the ingest time). Reference counting frees them."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _ingest(context, spec: StreamSpec, rules: BronzeRules, pk_expr, kafka: KafkaResource, lake: LakeResource, start: dict[int, int], max_records: int) -> list[LedgerEntry]:
    """Read from `start` to the end of the log (or `max_records`), staging Bronze files as blocks are
    parsed, then commit them."""
    now = datetime.now(timezone.utc)
    parser = BronzeParser(rules, now)
    staging = lake.staging_dir(spec.name, context.run_id)
    stage = BronzeStage(staging, pk_expr, start)
    first_message: dict[int, object] = {}
    try:
        with cyclic_gc_paused():
            for batch in kafka.read(spec.topic, start, max_records):
                if not batch.messages:
                    continue
                parser.feed(batch.messages)
                for block in parser.drain():
                    stage.add(block)
                if len(first_message) < len(start):
                    for m in batch.messages:  # batches are in offset order per partition
                        first_message.setdefault(m.partition(), m)
        if not first_message:
            return []
        failpoint("ingest.after_read")
        parsed = parser.finish()
        stage.add(parsed.bronze)
        ends = dict(stage.last_offsets)
        for kp, offset in parsed.dead_letter.group_by("kafka_partition").agg(pl.col("kafka_offset").max()).iter_rows():
            ends[kp] = max(ends.get(kp, -1), offset)
        ends = {kp: offset + 1 for kp, offset in ends.items()}
        counts = stage.close(ends)
    except BaseException:
        stage.abort()
        raise
    dead = parsed.dead_letter
    entries = []
    for kp, end in sorted(ends.items()):
        rng = f"p{kp}-{start[kp]:0{OFFSET_WIDTH}d}-{end:0{OFFSET_WIDTH}d}.parquet"
        kp_counts = counts.get(kp, {})
        files = [f"{partition_dirname(pk)}/{rng}" for pk in kp_counts]
        dl = dead.filter(pl.col("kafka_partition") == kp)
        if dl.height:
            rel = f"dead_letter/{rng}"
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            dl.write_parquet(staging / rel, compression="zstd", compression_level=1)
            files.append(rel)
        entries.append(
            LedgerEntry(
                kafka_partition=kp,
                start=start[kp],
                end=end,
                files=files,
                partitions=kp_counts,
                dead_letter_rows=dl.height,
                run_id=context.run_id,
                first_record=fingerprint(first_message[kp]),
            )
        )
    failpoint("ingest.after_stage")
    lake.commit_bronze(spec.name, staging, entries)
    failpoint("ingest.after_commit")
    context.log.info(
        f"committed {stage.rows} bronze + {dead.height} dead-letter records: "
        + ", ".join(f"p{e.kafka_partition}[{e.start},{e.end})" for e in entries)
    )
    return entries


def announce(context, spec: StreamSpec, kafka: KafkaResource, lake: LakeResource, entries: list[LedgerEntry], own_partition: str | None) -> dict | None:
    """After a commit (or on recovery from a crash right after one): dead letters to the DLQ topic, and a
    materialization event for every Bronze partition touched. Returns the metadata of `own_partition`
    (the run's own, reported by the caller as its result) if it was touched.

    Repeating it is harmless apart from the dead-letter topic, which is at-least-once (the table is exact).
    """
    if not entries:
        return None
    dead_files = [lake.dead_letter_dir(spec.name) / f.split("/", 1)[1] for e in entries for f in e.files if f.startswith("dead_letter/")]
    if dead_files:
        _produce_dead_letters(kafka, spec, pl.read_parquet(dead_files))
        failpoint("report.after_dead_letter_topic")
    by_pk: dict[str, list[LedgerEntry]] = defaultdict(list)
    for e in entries:
        for pk in e.partitions:
            by_pk[pk].append(e)
    own = None
    for pk, es in sorted(by_pk.items()):
        total = sum(pl.scan_parquet(f).select(pl.len()).collect().item() for f in lake.bronze_files(spec.name, pk))
        metadata = {
            "dagster/row_count": total,
            "rows_added": sum(e.partitions[pk] for e in es),
            "offset_ranges": ", ".join(f"p{e.kafka_partition}[{e.start},{e.end})" for e in es),
            "dead_letter_rows_in_batch": sum(e.dead_letter_rows for e in es),
            "topic": spec.topic,
        }
        if pk == own_partition:
            own = metadata
            continue
        context.log_event(dg.AssetMaterialization(asset_key=keys.bronze_key(spec), partition=pk, metadata=metadata))
        failpoint("report.mid_events")
    return own


def finish_report(context, spec: StreamSpec, kafka: KafkaResource, lake: LakeResource, entries: list[LedgerEntry]) -> None:
    """Every event is out: remember that, and mirror the offsets into a consumer group for lag tooling."""
    if not entries:
        return
    failpoint("report.after_events")
    lake.mark_reported(spec.name, entries)
    failpoint("report.after_mark_reported")
    try:
        parts = sorted({e.kafka_partition for e in entries})
        kafka.commit_group_offsets(f"medallion-{spec.name}", spec.topic, lake.committed_offsets(spec.name, parts))
    except Exception as exc:  # lag display only: Bronze's ledger is the source of truth
        context.log.warning(f"could not mirror offsets to consumer group: {exc}")


def _produce_dead_letters(kafka: KafkaResource, spec: StreamSpec, dead: pl.DataFrame) -> None:
    producer = kafka.producer()
    for row in dead.iter_rows(named=True):
        producer.produce(
            spec.dead_letter_topic,
            value=row["payload"],
            key=row["kafka_key"].encode() if row["kafka_key"] is not None else None,
            headers={
                "error_class": row["error_class"],
                "error": row["error"],
                "source": f"{row['kafka_topic']}/{row['kafka_partition']}/{row['kafka_offset']}",
            },
        )
        producer.poll(0)
    remaining = producer.flush(kafka.timeout_s)
    if remaining:
        raise KafkaUnavailableError(f"{remaining} dead-letter records not acknowledged by {spec.dead_letter_topic}")


def offsets_tag(offsets: dict[int, int]) -> str:
    return json.dumps({str(k): v for k, v in sorted(offsets.items())}, separators=(",", ":"))
