"""Bronze: the ingest job that moves a Kafka offset range into event-time partitions, exactly once.

Bronze is an asset the ingest job reports on (one materialization per partition it touched), because
which hours a batch of offsets lands in is only known after reading it. Exactly-once rests on the Delta
commit: it carries each Kafka partition's next offset as an app transaction, so the commit that adds the
rows is the one that moves the offsets, and a second run of the same range fails its commit.
"""


import contextlib
import gc
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone

import dagster as dg
import polars as pl

from assets import keys
from assets.partitions import partition_key_expr, partition_start, window
from assets.promotion import LAKE_VERSION
from assets.spec import StreamSpec
from assets.bronze_stage import BronzeStage
from assets.transforms.bronze import DEAD_LETTER_SCHEMA, BronzeParser, BronzeRules, bronze_schema
from resources.continuity import fingerprint, verify_log_continuity
from resources.faults import failpoint
from resources.kafka import KafkaResource, KafkaUnavailableError, OffsetsWentBackwardsError
from resources.delta import PARTITION_COLUMN, arrow_table
from resources.lake import CommitConflict, LakeResource, bronze_table, dead_letter_table, kafka_app_id
from resources.spark import SparkEngine
from resources.warehouse import WarehouseResource

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


def empty_dead_letter(spec: StreamSpec) -> pl.DataFrame:
    return pl.DataFrame(schema=DEAD_LETTER_SCHEMA)


def topic_asset(spec: StreamSpec) -> dg.AssetSpec:
    return dg.AssetSpec(
        keys.topic_key(spec),
        description=f"Kafka topic `{spec.topic}`: {spec.description}. Watched by the `kafka_{spec.name}` sensor.",
        group_name=keys.group(spec, "source"),
        kinds={"kafka"},
        metadata={"topic": spec.topic, "dead_letter_topic": spec.dead_letter_topic},
    )


class IngestConfig(dg.Config):
    max_records: int = DEFAULT_MAX_RECORDS  # backpressure: records per run (per micro-batch when streaming) at most
    # > 0: a stream run. It keeps consuming for this long (or until the hour it streams ends: its own, or
    # the current one if its own ended while it waited for the lock),
    # commits a micro-batch each time it reaches the end of the log, and carries each one through Silver,
    # Gold and the warehouse itself. 0: one pass to the end of the log (the rest follows by automation).
    stream_for_s: float = 0.0


def ingest_pool(spec: StreamSpec) -> str:
    """The Dagster concurrency pool of a stream's ingest: one at a time saves work a commit conflict would
    throw away (correctness rests on the commit, not on this)."""
    return f"ingest_{spec.name}"


def build_bronze(spec: StreamSpec, follow=None) -> dg.AssetsDefinition:
    """Bronze as an asset whose materialization is an ingest of everything pending in the topic.

    A run targets one partition (the sensor picks the current hour, so fresh data flows to Gold in the same
    run); records land in whichever event-time partitions they belong to, and every other partition touched
    gets its own materialization event, so automation re-derives late hours too.

    `follow(context, lake, warehouse, spark, touched partitions, in_full={own partition}, offsets=Bronze's
    committed offsets after the batch)`: what a stream run does
    with each micro-batch after committing it (yields the events of the layers it materializes).
    """
    rules = bronze_rules(spec)
    pk_expr = partition_key_expr(spec.partitions, "event_time")

    @dg.asset(
        key=keys.bronze_key(spec),
        deps=[keys.topic_key(spec)],
        partitions_def=spec.partitions,
        output_required=False,  # nothing new for this run's partition: its downstream steps are skipped
        retry_policy=dg.RetryPolicy(max_retries=3, delay=1, backoff=dg.Backoff.EXPONENTIAL),  # 1 s, 2 s, 4 s
        pool=ingest_pool(spec),
        group_name=keys.group(spec, "bronze"),
        kinds={"kafka", "delta"},
        owners=list(spec.owners),
        description=(
            f"Raw {spec.name} records by event time: payload + topic/partition/offset/Kafka timestamp/ingestion "
            "time. Append-only, exactly once per offset (the Kafka offsets are committed inside the Delta commit). "
            f"Materializing it ingests everything pending in `{spec.topic}` (the `kafka_{spec.name}` sensor does "
            "this); records land in their own event-time partitions."
        ),
    )
    def bronze(context: dg.AssetExecutionContext, config: IngestConfig, kafka: KafkaResource, lake: LakeResource, warehouse: WarehouseResource, spark: SparkEngine):
        own = context.partition_key
        with lake.stream_lock(spec.name):
            # A crashed run may have committed without announcing: announce first, so events keep commit order.
            pending = unannounced_commits(context.instance, spec, lake, context.run_id)
            failpoint("ingest.after_recover")
            if config.stream_for_s > 0 and follow is not None:
                # A run that waited behind another until past its hour's end streams the hour current now
                # (its own still derived in full if it must): ending at once would leave the new hour to a
                # process the sensor has yet to start.
                live = own if window(spec.partitions, own)[1] > datetime.now(timezone.utc) else spec.partitions.get_last_partition_key()
                carry = lambda touched, offsets: follow(context, lake, warehouse, spark, touched, in_full={own, live}, offsets=offsets)  # noqa: E731
                yield from _stream(context, spec, rules, pk_expr, config, kafka, lake, pending, carry, window(spec.partitions, live)[1])
                return
            parts = kafka.partitions(spec.topic)
            snapshot = IngestSnapshot.load(lake, spec, parts)
            try:
                verify_log_continuity(kafka, spec.topic, snapshot.first_records)
            except OffsetsWentBackwardsError as exc:  # retrying cannot help: a person must look
                raise dg.Failure(description=str(exc), allow_retries=False) from exc
            committed = _ingest(context, spec, rules, pk_expr, kafka, lake, snapshot, config.max_records)
            if committed is None:
                context.log.info(f"no new records in {spec.topic} after offsets {snapshot.start}")
            commits = pending + ([committed] if committed is not None else [])
            own_metadata = announce(context, spec, kafka, lake, commits, own)
            if own_metadata is not None:
                yield dg.MaterializeResult(metadata=own_metadata)
            finish_report(context, spec, kafka, lake, commits)

    return bronze


CONTINUITY_CHECK_EVERY_S = 30.0  # a stream run checks that the topic still holds what Bronze committed
GROUP_OFFSETS_EVERY_S = 10.0  # and mirrors its offsets to the consumer group for lag tooling
IDLE_POLL_S = 0.1  # at the end of the log, wait this long before looking again
IDLE_SNAPSHOT_S = 5.0  # and read Bronze's state again at least this often


def _stream(context, spec: StreamSpec, rules: BronzeRules, pk_expr, config: IngestConfig, kafka: KafkaResource, lake: LakeResource, pending: list, follow, window_end: datetime):
    """A stream run: micro-batch after micro-batch, each committed, announced and followed through to the
    warehouse before the next, until `stream_for_s` is up or `window_end` (of the hour it streams) passes
    (the sensor has the next run waiting on the ingest lock, so the handover costs no process start)."""
    began = time.monotonic()
    parts = kafka.partitions(spec.topic)
    checked_at = reported_at = float("-inf")
    batches = records = 0
    unreported: list[BronzeCommit] = []
    snapshot, loaded_at = None, float("-inf")
    while True:
        # At the end of the log nothing changed it (this run holds the ingest lock, and so does an erasure):
        # an idle pass reuses the snapshot for a while instead of reading Bronze's log ten times a second.
        if snapshot is None or time.monotonic() - loaded_at >= IDLE_SNAPSHOT_S:
            snapshot, loaded_at = IngestSnapshot.load(lake, spec, parts), time.monotonic()
        if time.monotonic() - checked_at >= CONTINUITY_CHECK_EVERY_S:
            try:
                verify_log_continuity(kafka, spec.topic, snapshot.first_records)
            except OffsetsWentBackwardsError as exc:
                raise dg.Failure(description=str(exc), allow_retries=False) from exc
            checked_at = time.monotonic()
        committed = _ingest(context, spec, rules, pk_expr, kafka, lake, snapshot, config.max_records, quiet=True)
        offsets = dict(snapshot.start)
        if committed is not None:
            snapshot = None
        commits = pending + ([committed] if committed is not None else [])
        pending = []
        if commits:
            events: list = []
            announce(context, spec, kafka, lake, commits, None, emit=events.append)
            yield from events
            for c in commits:
                offsets.update({kp: end for kp, (_, end) in c.ranges.items()})
            yield from follow(sorted({pk for c in commits for pk in c.partitions}), offsets)
            unreported += commits
            batches += 1
            records += sum(sum(c.partitions.values()) + c.dead_letter_rows for c in commits)
        if unreported and time.monotonic() - reported_at >= GROUP_OFFSETS_EVERY_S:
            finish_report(context, spec, kafka, lake, unreported)
            unreported, reported_at = [], time.monotonic()
        if time.monotonic() - began >= config.stream_for_s or datetime.now(timezone.utc) >= window_end:
            break
        if committed is None:
            time.sleep(IDLE_POLL_S)
    finish_report(context, spec, kafka, lake, unreported)
    context.log.info(f"stream run of {spec.topic}: {batches} micro-batches, {records} records in {time.monotonic() - began:.0f} s")


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


@dataclass
class IngestSnapshot:
    """Bronze and dead-letter as an ingest read them: where to start, and what a conflicting commit is
    checked against."""

    bronze: object  # DeltaTable | None
    dead_letter: object
    start: dict[int, int]
    dead_letter_ahead: dict[int, int]  # kp -> dead-letter's version where it is past Bronze's (a run died between its commits)
    state: dict  # the latest ingest commit's metadata: cumulative totals, the first record of each partition's last range

    @classmethod
    def load(cls, lake: LakeResource, spec: StreamSpec, parts: list[int]) -> "IngestSnapshot":
        bronze = lake.ensure(bronze_table(spec.name), arrow_table(empty_bronze(spec)).schema)
        dead = lake.ensure(dead_letter_table(spec.name), arrow_table(empty_dead_letter(spec)).schema)
        start = lake.committed_offsets(spec.name, spec.topic, parts, snapshot=bronze)
        ahead = {}
        for kp in parts:
            v = dead.transaction_version(kafka_app_id(spec.topic, kp)) if dead is not None else None
            if v is not None and v > start[kp]:
                ahead[kp] = v
        latest = lake.latest_commit(bronze_table(spec.name), INGEST, snapshot=bronze) if bronze is not None else None
        return cls(bronze, dead, start, ahead, latest[1] if latest else {})

    @property
    def first_records(self) -> dict[int, dict]:
        return {int(k): v for k, v in self.state.get("first_records", {}).items()}


INGEST = "ingest"


def _already_dead(lake: LakeResource, spec: StreamSpec, snapshot: IngestSnapshot) -> dict[int, set[int]]:
    """Offsets in dead-letter past Bronze's committed offsets (a run died between its two commits)."""
    if not snapshot.dead_letter_ahead:
        return {}
    dead = lake.scan(dead_letter_table(spec.name), snapshot.dead_letter).select("kafka_partition", "kafka_offset").collect()
    out = {}
    for kp, upto in snapshot.dead_letter_ahead.items():
        offs = dead.filter((pl.col("kafka_partition") == kp) & pl.col("kafka_offset").is_between(snapshot.start[kp], upto, closed="left"))
        out[kp] = set(offs["kafka_offset"].to_list())
    return out


def _ingest(context, spec: StreamSpec, rules: BronzeRules, pk_expr, kafka: KafkaResource, lake: LakeResource, snapshot: IngestSnapshot, max_records: int, quiet: bool = False) -> "BronzeCommit | None":
    """Read from the committed offsets to the end of the log (or `max_records`), writing Bronze files as
    blocks are parsed, then commit: dead-letter first, then Bronze, each with the Kafka offsets as app
    transactions. Returns the commit (None when nothing was read, or another run committed this range first)."""
    start = snapshot.start
    now = datetime.now(timezone.utc)
    parser = BronzeParser(rules, now)
    already_dead = _already_dead(lake, spec, snapshot)
    bronze_files = lake.data_files(bronze_table(spec.name))
    dead_files = lake.data_files(dead_letter_table(spec.name))
    stage = BronzeStage(bronze_files, pk_expr, skip=already_dead)
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
            stage.abort()
            return None
        failpoint("ingest.after_read")
        parsed = parser.finish()
        stage.add(parsed.bronze)
        ends = dict(stage.last_offsets)
        for kp, offset in parsed.dead_letter.group_by("kafka_partition").agg(pl.col("kafka_offset").max()).iter_rows():
            ends[kp] = max(ends.get(kp, -1), offset)
        ends = {kp: offset + 1 for kp, offset in ends.items()}
        counts = stage.close()
        failpoint("ingest.after_stage")
        dead = parsed.dead_letter
        for kp, offsets in already_dead.items():  # committed by the run that died: not again (the rest of its range is ours)
            dead = dead.filter(~((pl.col("kafka_partition") == kp) & pl.col("kafka_offset").is_in(list(offsets))))
        if dead.height:
            dead_files.write(dead, None)
        # Dead letters of the run that died, within this run's range (a later run counts the rest).
        kept_dead = sum(sum(1 for o in v if o < ends.get(kp, 0)) for kp, v in already_dead.items())
        commit = BronzeCommit.of(context.run_id, spec, start, ends, counts, dead, first_message, snapshot, kept_dead, bronze_files)
        if not commit.land(lake, spec, snapshot, bronze_files, dead_files, parsed.dead_letter):
            context.log.warning(
                f"another run committed {spec.topic} offsets from {start} first; this run commits nothing "
                "(its records are in Bronze once, from that run)"
            )
            return None
    except BaseException:
        stage.abort()
        dead_files.discard()
        raise
    failpoint("ingest.after_commit")
    (context.log.debug if quiet else context.log.info)(
        f"committed {stage.rows} bronze + {dead.height} dead-letter records in Bronze version {commit.version}: "
        + ", ".join(f"p{kp}[{a},{b})" for kp, (a, b) in sorted(commit.ranges.items()))
    )
    return commit


@dataclass
class BronzeCommit:
    """One ingest commit as its metadata records it (also read back from the table's history)."""

    run_id: str
    ranges: dict[int, tuple[int, int]]  # kp -> [start, end)
    partitions: dict[str, int]  # Bronze partition -> rows added
    dead_letter_rows: int
    first_records: dict[int, dict]  # cumulative: the first record of each Kafka partition's latest range
    totals: dict  # cumulative: consumed, ingested, dead_letter
    version: int = -1
    dead_letter_version: int | None = None
    kept_dead_letters: int = 0  # dead letters a run that died committed in this range (produced to the topic now)
    files: dict[str, list[str]] = field(default_factory=dict)  # Bronze partition -> the data files added (Silver reads only these)

    @classmethod
    def of(cls, run_id, spec, start, ends, counts, dead, first_message, snapshot: IngestSnapshot, kept_dead: int, bronze_files) -> "BronzeCommit":
        partitions: dict[str, int] = defaultdict(int)
        for by_pk in counts.values():
            for pk, n in by_pk.items():
                partitions[pk] += n
        first = snapshot.first_records | {kp: fingerprint(m) for kp, m in first_message.items()}
        before = snapshot.state.get("totals", {})
        consumed = {int(k): v for k, v in before.get("consumed", {}).items()}
        for kp, end in ends.items():
            consumed[kp] = consumed.get(kp, 0) + end - start[kp]
        totals = {
            "consumed": consumed,
            "ingested": before.get("ingested", 0) + sum(partitions.values()),
            "dead_letter": before.get("dead_letter", 0) + dead.height + kept_dead,
        }
        files: dict[str, list[str]] = defaultdict(list)
        for add in bronze_files.adds:
            files[add.partition_values[PARTITION_COLUMN]].append(add.path)
        return cls(run_id, {kp: (start[kp], end) for kp, end in ends.items()}, dict(partitions), dead.height, first, totals, kept_dead_letters=kept_dead, files=dict(files))

    def metadata(self) -> dict:
        return {
            "operation": INGEST,
            "run_id": self.run_id,
            "ranges": {str(k): list(v) for k, v in self.ranges.items()},
            "partitions": self.partitions,
            "dead_letter_rows": self.dead_letter_rows,
            "dead_letter_version": self.dead_letter_version,
            "kept_dead_letters": self.kept_dead_letters,
            "first_records": {str(k): v for k, v in self.first_records.items()},
            "files": self.files,
            "totals": {**self.totals, "consumed": {str(k): v for k, v in self.totals["consumed"].items()}},
        }

    @classmethod
    def from_metadata(cls, version: int, meta: dict) -> "BronzeCommit":
        return cls(
            meta["run_id"],
            {int(k): tuple(v) for k, v in meta["ranges"].items()},
            meta["partitions"],
            meta["dead_letter_rows"],
            {int(k): v for k, v in meta.get("first_records", {}).items()},
            meta.get("totals", {}),
            version,
            meta.get("dead_letter_version"),
            meta.get("kept_dead_letters", 0),
            meta.get("files", {}),
        )

    def land(self, lake: LakeResource, spec: StreamSpec, snapshot: IngestSnapshot, bronze_files, dead_files, dead_schema_frame: pl.DataFrame) -> bool:
        """Dead-letter's commit, then Bronze's; False if another run's commit of the same offsets came first.

        Dead-letter always commits (with no rows too), so two runs of one range always collide there. A run
        that dies between the two leaves dead-letter ahead of Bronze: the next run keeps those records as
        dead letters and commits only the rest (`IngestSnapshot.dead_letter_ahead`)."""
        failpoint("ingest.before_commit")  # every file written, nothing committed: the window two runs race in
        offsets = {kafka_app_id(spec.topic, kp): end for kp, (_, end) in self.ranges.items()}
        dead_offsets = {kafka_app_id(spec.topic, kp): max(end, snapshot.dead_letter_ahead.get(kp, 0)) for kp, (_, end) in self.ranges.items()}
        try:
            self.dead_letter_version = lake.commit(
                dead_letter_table(spec.name), dead_files, snapshot=snapshot.dead_letter, transactions=dead_offsets,
                metadata={"operation": INGEST, "run_id": self.run_id, "rows": self.dead_letter_rows},
                empty_schema=arrow_table(empty_dead_letter(spec)).schema,
            )  # fmt: skip
        except CommitConflict:
            bronze_files.discard()
            dead_files.discard()
            return False
        failpoint("ingest.between_commits")
        try:
            self.version = lake.commit(
                bronze_table(spec.name), bronze_files, snapshot=snapshot.bronze, transactions=offsets,
                metadata=self.metadata(), empty_schema=arrow_table(empty_bronze(spec)).schema,
            )  # fmt: skip
        except CommitConflict:
            bronze_files.discard()
            return False
        return True


class AnnouncementPending(RuntimeError):
    """A commit of a run still in flight is not announced in full yet."""


def unannounced_commits(instance: dg.DagsterInstance, spec: StreamSpec, lake: LakeResource, own_run_id: str | None = None) -> list[BronzeCommit]:
    """Ingest commits whose materialization events were not all logged (the run died in between), and
    whose run is over. Each event records the Bronze version it announces; the newest event's version is
    where to look from (every earlier commit was announced in full before a later one was made)."""
    latest = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=keys.bronze_key(spec)), limit=1).records
    since = _event_version(latest[0]) if latest else None
    commits = lake.commits(bronze_table(spec.name), since_version=since if since is not None else 0, operation=INGEST)
    out = []
    for version, meta in commits:
        c = BronzeCommit.from_metadata(version, meta)
        c.partitions = {pk: n for pk, n in c.partitions.items() if not _announced(instance, spec, pk, version)}
        if not c.partitions:
            continue
        run = instance.get_run_by_id(c.run_id)
        if run is not None and not run.is_finished and run.run_id != own_run_id:
            # Its run is announcing it now, or died and is not marked yet: never commit past an unannounced
            # commit (the next run could not tell), so wait (the step's retry policy) until it is one or the other.
            raise AnnouncementPending(f"Bronze version {version} of run {c.run_id} is not announced yet; retrying once it is (or the run is marked dead)")
        out.append(c)
    return out


def _event_version(record) -> int | None:
    value = record.asset_materialization.metadata.get(BRONZE_VERSION)
    return None if value is None else int(value.value)


def _announced(instance, spec: StreamSpec, pk: str, version: int) -> bool:
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=keys.bronze_key(spec), asset_partitions=[pk]), limit=1).records
    v = _event_version(records[0]) if records else None
    return v is not None and v >= version


BRONZE_VERSION = LAKE_VERSION


def ingest_totals(lake: LakeResource, spec: StreamSpec) -> dict:
    """Cumulative figures of every ingest so far (erasures later do not lower them): records consumed
    (offsets), ingested into Bronze, dead-lettered."""
    latest = lake.latest_commit(bronze_table(spec.name), INGEST)
    totals = latest[1].get("totals", {}) if latest else {}
    return {
        "consumed": sum(totals.get("consumed", {}).values()),
        "ingested": totals.get("ingested", 0),
        "dead_letter": totals.get("dead_letter", 0),
    }


def needs_announcing(instance: dg.DagsterInstance, spec: StreamSpec, lake: LakeResource) -> bool:
    """An ingest commit not announced in full: a run died between its commit and its events (one still
    announcing its own is not)."""
    try:
        return bool(unannounced_commits(instance, spec, lake))
    except AnnouncementPending:
        return False


def announce(context, spec: StreamSpec, kafka: KafkaResource, lake: LakeResource, commits: list[BronzeCommit], own_partition: str | None, emit=None) -> dict | None:
    """After a commit (or on recovery from a crash right after one): dead letters to the DLQ topic, and a
    materialization event for every Bronze partition touched. Returns the metadata of `own_partition`
    (the run's own, reported by the caller as its result) if the newest commit touched it.

    Repeating it is harmless apart from the dead-letter topic, which is at-least-once (the table is exact).
    """
    own = None
    for c in commits:
        if c.dead_letter_rows or c.kept_dead_letters:
            dead = lake.read_dead_letter(spec.name)
            mine = pl.concat(
                [dead.filter((pl.col("kafka_partition") == kp) & pl.col("kafka_offset").is_between(a, b, closed="left")) for kp, (a, b) in c.ranges.items()]
            )
            _produce_dead_letters(kafka, spec, mine)
            failpoint("report.after_dead_letter_topic")
        rows = lake.partition_rows_of(lake.open(bronze_table(spec.name), c.version))
        for pk in sorted(c.partitions):
            metadata = {
                "dagster/row_count": rows.get(pk, 0),
                "rows_added": c.partitions[pk],
                "offset_ranges": ", ".join(f"p{kp}[{a},{b})" for kp, (a, b) in sorted(c.ranges.items())),
                "dead_letter_rows_in_batch": c.dead_letter_rows,
                "topic": spec.topic,
                BRONZE_VERSION: c.version,
            }
            if pk == own_partition and c is commits[-1]:
                own = metadata
                continue
            (emit or context.log_event)(dg.AssetMaterialization(asset_key=keys.bronze_key(spec), partition=pk, metadata=metadata))
            failpoint("report.mid_events")
    return own


def finish_report(context, spec: StreamSpec, kafka: KafkaResource, lake: LakeResource, commits: list[BronzeCommit]) -> None:
    """Every event is out: mirror the offsets into a consumer group for lag tooling."""
    if not commits:
        return
    failpoint("report.after_events")
    try:
        parts = sorted({kp for c in commits for kp in c.ranges})
        kafka.commit_group_offsets(f"medallion-{spec.name}", spec.topic, lake.committed_offsets(spec.name, spec.topic, parts))
    except Exception as exc:  # lag display only: Bronze's transaction versions are the source of truth
        context.log.warning(f"could not mirror offsets to consumer group: {exc}")
    failpoint("report.after_group_offsets")


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
