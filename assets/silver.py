"""Silver: typed, validated, deduplicated, enriched. Re-derived from Bronze only (never from Kafka)."""


import contextlib
import functools
from dataclasses import dataclass
from datetime import datetime, timezone

import dagster as dg
import polars as pl

from assets import keys
from assets.automation import FOLLOW_PARENTS
from assets.bronze import empty_bronze
from assets.contracts.gate import ContractResult, apply_contract
from assets.history import (
    CONTEXT_HASH, CONTEXT_PARTITION, HISTORY_CHANGED, HISTORY_HASH, HISTORY_TABLE,
    frame_hash, histories_lock, history_before, latest_observation,
)  # fmt: skip
from assets.partitions import window
from assets.promotion import check_result, contract_check_spec, freshness_metadata, lake_metadata, sample_markdown
from assets.silver_extension import bronze_since_silver, remember_state, first_copies_in, published_state, quarantine_table, silver_table
from assets.spec import SilverContext, SilverOutput, StreamSpec
from assets.transforms.dedup import derive_silver
from assets.transforms.increment import PublishedPartition, extend_silver
from resources.faults import failpoint
from resources.locks import LockBusy
from resources.lake import LakeResource, LakeTable, bronze_table, source_app_id
from resources.spark import SparkEngine
from resources.pii import pii_key, pseudonymise
from resources.settings import PIPELINE_VERSION

COORDINATES = ["kafka_topic", "kafka_partition", "kafka_offset", "kafka_key", "event_time"]


def quarantine_columns(spec: StreamSpec) -> list[str]:
    """Where the row came from, its typed fields, the raw payload, and why it was set aside."""
    return COORDINATES + spec.field_names + ["payload", "check", "reason"]


def silver_lock(lake: LakeResource, spec: StreamSpec, partition_key: str, wait_s: float | None = None):
    """Held while a Silver partition (and its quarantine) is derived from Bronze and published, or erased from."""
    return lake.stream_lock(spec.name, f"silver-{partition_key.replace(':', '')}", wait_s=wait_s)


class SilverConfig(dg.Config):
    # False for re-derivations asked for because an earlier partition's history changed: rows that come out
    # the same are then not republished and not materialized, so Gold and the warehouse do not re-run. Runs
    # that also select Gold keep the default (Gold must not be skipped because Silver did not change).
    publish_unchanged: bool = True


def build_silver(spec: StreamSpec) -> dg.AssetsDefinition:
    key = keys.silver_key(spec)

    @dg.asset(
        key=key,
        deps=[keys.bronze_key(spec)],
        partitions_def=spec.partitions,
        automation_condition=FOLLOW_PARENTS,
        check_specs=[
            contract_check_spec(
                key,
                f"pandera {spec.row_contract.__name__} per row (failing rows quarantined; over "
                f"{spec.max_failure_rate:.0%} the partition is not published) and {spec.silver_contract.__name__} "
                "on the published frame.",
            )
        ],
        output_required=False,
        group_name=keys.group(spec, "silver"),
        kinds={"polars", "delta", "pandera"},
        owners=list(spec.owners),
        description=f"{spec.description}: typed, validated, deduplicated and enriched; quarantine beside it.",
    )
    def silver(context: dg.AssetExecutionContext, config: SilverConfig, lake: LakeResource, spark: SparkEngine):
        yield from silver_partition(context, spec, config, lake, spark, context.partition_key)

    return silver


# What a derivation of one partition came to (the status of the Outcome a `silver_partition` generator returns).
PUBLISHED, UNCHANGED, BLOCKED, DEFERRED = "published", "unchanged", "blocked", "deferred"


@dataclass(frozen=True)
class Outcome:
    status: str
    added: pl.DataFrame | None = None  # the rows an extension appended (None: derived in full, or nothing published)
    added_files: frozenset = frozenset()  # the Silver data files that append added (log paths)
    newest_kafka_time: datetime | None = None  # of the records it published


def silver_partition(context, spec: StreamSpec, config: SilverConfig, lake: LakeResource, spark: SparkEngine, pk: str, *, in_full: bool = True, wait: bool = True):
    """Derive one Silver partition: extend it by the Bronze rows it has not seen, else (`in_full`) derive it in
    full. Yields its check result and materialization; returns an Outcome: PUBLISHED, UNCHANGED, BLOCKED (the
    contract failed) or DEFERRED (it needs a full derivation and `in_full` is off, or, without `wait`, another
    process holds it)."""
    with contextlib.ExitStack() as held:
        if spec.history is not None:
            held.enter_context(histories_lock(lake, spec))
        try:
            held.enter_context(silver_lock(lake, spec, pk, wait_s=None if wait else 0))
        except LockBusy:
            return Outcome(DEFERRED)
        # Snapshots first: Silver as it is now (a rewrite of this partition meanwhile, an erasure on another
        # machine, fails the publish), then Bronze, read once and recorded.
        silver_snapshot = lake.open(silver_table(spec))
        quarantine_snapshot = lake.open(quarantine_table(spec))
        bronze_version = lake.version(bronze_table(spec.name))
        context_pk, context_rows = history_before(spec, lake, pk) if spec.history else (None, None)
        ctx = SilverContext(partition_key=pk, processed_at=datetime.now(timezone.utc), pipeline_version=PIPELINE_VERSION, pii_key=pii_key() if spec.pii_fields else None)
        derived = None
        if config.publish_unchanged and bronze_version is not None and spec.extends_incrementally:
            derived = _extend(context, spec, lake, pk, silver_snapshot, quarantine_snapshot, bronze_version, context_rows, ctx)
        if derived is None:
            if not in_full:
                return Outcome(DEFERRED)
            derived = _derive_in_full(context, spec, lake, spark, pk, bronze_version, context_rows, ctx)
        return (yield from _gate_and_publish(context, config, spec, lake, pk, derived, silver_snapshot, bronze_version, context_pk, context_rows))


@dataclass
class _Derived:
    """One derivation of a Silver partition, ready for the gate: in full, or extending the published rows."""

    mode: str  # "extended" | "re-derived"
    source_rows: int  # the Bronze rows it read
    failed: ContractResult  # the row contract on them
    out: SilverOutput
    quarantine: pl.DataFrame  # the rows set aside, as the quarantine holds them
    handed_on: pl.DataFrame | None  # the history as of the partition's end
    bronze_files: set[str]  # the Bronze files read: they must still be live when it publishes
    newest_kafka_time: datetime | None
    engine: str = "polars"
    state_after: tuple[str, PublishedPartition] | None = None  # (context hash, the partition's state once published)


def _extend(context, spec: StreamSpec, lake: LakeResource, pk: str, silver_snapshot, quarantine_snapshot, bronze_version: int, context_rows, ctx) -> "_Derived | None":
    """The partition extended by the Bronze rows it has not seen, or None (logged why) if it must be derived in full."""
    with _bronze_read(spec, pk):
        found = bronze_since_silver(lake, spec, pk, silver_snapshot, quarantine_snapshot, bronze_version)
    if isinstance(found, str):
        context.log.info(f"silver {pk}: not extended: {found}")
        return None
    failpoint("silver.after_context")  # Bronze and the history before read: what an erasure elsewhere races
    context_hash = frame_hash(context_rows)
    if spec.history is not None:
        last = latest_observation(context.instance, spec, pk)
        if last is None or last.get(CONTEXT_HASH) != context_hash:
            context.log.info(f"silver {pk}: not extended: the history before it changed since it was published")
            return None
    start, end = window(spec.partitions, pk)
    state = published_state(lake, spec, pk, silver_snapshot, context_rows, context_hash, start)
    rows = apply_contract(found.rows, spec.row_contract)
    ext = extend_silver(spec, state, rows.passed, ctx, first_copies_in(lake, spec, pk, bronze_version))
    if ext.output is None:
        context.log.info(f"silver {pk}: not extended: {ext.reason}")
        return None
    out = ext.output
    set_aside = _set_aside(spec, rows.failed, out.rejected)
    quarantine = _with_payloads(spec, set_aside, lambda frame: frame.join(found.payloads, on=["kafka_partition", "kafka_offset"], how="left", maintain_order="left"))
    handed_on = spec.history.carry(state.context, out.rows, end) if spec.history else None
    after = (context_hash, state.extended(spec, out.rows, start))
    return _Derived("extended", found.rows.height, rows, out, quarantine, handed_on, set(found.files), found.rows["kafka_timestamp"].max(), state_after=after)


def _derive_in_full(context, spec: StreamSpec, lake: LakeResource, spark: SparkEngine, pk: str, bronze_version: int | None, context_rows, ctx) -> _Derived:
    # The raw payload is most of Bronze's bytes and Silver never reads it: leave it on disk, fetch it only
    # for the rows set aside.
    bronze_files = lake.partition_files(bronze_table(spec.name), bronze_version, [pk])
    with _bronze_read(spec, pk):
        bronze = lake.read_bronze(spec.name, pk, exclude=["payload"], version=bronze_version)
    if bronze is None:  # an hour without data (e.g. in a backfill range) derives to an empty partition
        context.log.info(f"Bronze partition {pk} of {spec.name} has no data")
        bronze = empty_bronze(spec).drop("payload")
    failpoint("silver.after_context")
    rows = apply_contract(bronze, spec.row_contract)
    engine = "spark" if spec.uses_spark(spec.spark_silver_transform, bronze.height, spark.min_rows) else "polars"
    if engine == "spark":
        context.log.info(f"silver {pk}: {bronze.height} Bronze rows, transform on Spark ({spark.spark_config.get('spark.master')})")
        out = derive_silver(spec, rows.passed, context_rows, ctx, functools.partial(spec.spark_silver_transform, spark.session()))
    else:
        out = derive_silver(spec, rows.passed, context_rows, ctx)
    set_aside = _set_aside(spec, rows.failed, out.rejected)
    quarantine = _with_payloads(spec, set_aside, lambda frame: lake.attach_bronze_payloads(spec.name, pk, frame, version=bronze_version))
    handed_on = spec.history.carry(context_rows, out.rows, window(spec.partitions, pk)[1]) if spec.history else None
    return _Derived("re-derived", bronze.height, rows, out, quarantine, handed_on, bronze_files, bronze["kafka_timestamp"].max(), engine)


@contextlib.contextmanager
def _bronze_read(spec: StreamSpec, pk: str):
    """A Bronze file of the snapshot gone while it is read: an erasure elsewhere rewrote it and vacuumed."""
    try:
        yield
    except FileNotFoundError as exc:
        raise dg.Failure(f"bronze_{spec.name} {pk} changed while Silver was derived from it; run it again", allow_retries=True) from exc


def _set_aside(spec: StreamSpec, failed: pl.DataFrame, rejected: pl.DataFrame) -> pl.DataFrame:
    columns = [c for c in quarantine_columns(spec) if c != "payload"]
    return pl.concat([failed.select(columns), rejected.select(columns)], how="vertical_relaxed")


def _with_payloads(spec: StreamSpec, set_aside: pl.DataFrame, attach) -> pl.DataFrame:
    if spec.pii_fields:
        # Raw PII stays in Bronze: the quarantine carries pseudonyms and no payload (its Kafka coordinates
        # lead to the raw record for those allowed to read Bronze).
        key = pii_key()
        return set_aside.with_columns(*[pseudonymise(set_aside[f], key) for f in spec.pii_fields], pl.lit(None, pl.String).alias("payload")).select(quarantine_columns(spec))
    return attach(set_aside).select(quarantine_columns(spec))


def _gate_and_publish(context, config: SilverConfig, spec: StreamSpec, lake: LakeResource, pk: str, d: _Derived, silver_snapshot, bronze_version, context_pk, context_rows):
    """write ▸ audit ▸ publish: the quarantine, the contract check, then the rows (appended or replacing the
    partition), each commit recording the Bronze version it holds all of."""
    key = keys.silver_key(spec)
    extended = d.mode == "extended"
    holds = {source_app_id(bronze_table(spec.name), pk): bronze_version} if bronze_version is not None else None
    final = apply_contract(d.out.rows, spec.silver_contract)
    failure_rate = d.quarantine.height / d.source_rows if d.source_rows else 0.0
    passed = failure_rate <= spec.max_failure_rate and final.ok
    # The rows set aside are quarantined with their reasons whether or not the rest passes. After a failed
    # extension the quarantine holds a later Bronze version than Silver: the next run derives in full.
    lake.publish("quarantine", spec.name, "silver", pk, d.quarantine, {"partition": pk, "source_rows": d.source_rows}, append=extended, transactions=holds)
    counts = dict(d.failed.failure_counts)
    for check, n in d.out.rejected.group_by("check").len().iter_rows():
        counts[check] = n
    for check, n in final.failure_counts.items():
        counts[f"published:{check}"] = n
    yield check_result(
        key, passed, d.source_rows, d.quarantine.height, counts, spec.max_failure_rate,
        final.schema_errors, sample_markdown(
            d.quarantine if d.quarantine.height else final.failed,
            ["kafka_partition", "kafka_offset", *spec.field_names, "check", "reason"],
        ),
    )  # fmt: skip
    if not passed:
        what = "rows of the micro-batch" if extended else "rows"
        context.log.error(
            f"silver {pk} NOT published: {d.quarantine.height}/{d.source_rows} {what} failed "
            f"({failure_rate:.2%} > {spec.max_failure_rate:.2%}) {counts}; the previous version keeps serving"
            + ("; the partition is derived in full until it passes again" if extended else "")
        )
        return Outcome(BLOCKED)
    rows_changed = config.publish_unchanged or not _same_as_published(lake, spec, pk, d.out.rows)
    version = None
    if rows_changed and not d.bronze_files <= lake.partition_files(bronze_table(spec.name), None, [pk]):
        # Files read are gone (an erasure elsewhere rewrote them): publishing would bring back what it
        # removed. (New files are new records: a later run derives them.)
        raise dg.Failure(f"bronze_{spec.name} {pk} changed while Silver was derived from it; run it again", allow_retries=True)
    if rows_changed:
        version = lake.publish(
            "silver", spec.name, "silver", pk, d.out.rows,
            {"partition": pk, "bronze_rows": d.source_rows, "quarantined": d.quarantine.height, "pipeline_version": PIPELINE_VERSION},
            snapshot=silver_snapshot, append=extended, transactions=holds,
        )  # fmt: skip
        if d.state_after is not None:
            before = lake.partition_files(silver_table(spec), silver_snapshot.version(), [pk]) if silver_snapshot is not None else set()
            after = lake.partition_files(silver_table(spec), version, [pk])
            remember_state(lake, spec, pk, after, *d.state_after)
            outcome = Outcome(PUBLISHED, d.out.rows, frozenset(after - before), d.newest_kafka_time)
        else:
            outcome = Outcome(PUBLISHED, newest_kafka_time=d.newest_kafka_time)
    lineage = _hand_on_history(context, spec, lake, pk, context_pk, context_rows, d.handed_on) if spec.history else {}
    if not rows_changed:
        context.log.info(f"silver {pk}: re-derived rows equal the published ones; not republished, downstream need not run")
        return Outcome(UNCHANGED)
    published_rows = lake.partition_rows_of(lake.open(silver_table(spec), version)).get(pk, 0)
    yield dg.MaterializeResult(
        asset_key=key,
        metadata={
            "dagster/row_count": published_rows,
            "mode": d.mode,
            "rows_added": d.out.rows.height,
            "bronze_rows": d.source_rows,
            "quarantined_rows": d.quarantine.height,
            "duplicates_dropped": d.out.duplicates_dropped,
            "anomalies": int(d.out.rows["is_anomaly"].sum()) if "is_anomaly" in d.out.rows.columns else 0,
            "context_rows": 0 if context_rows is None else context_rows.height,
            "engine": d.engine,
            **freshness_metadata(d.newest_kafka_time),
            **lake_metadata(lake, silver_table(spec), version, {bronze_table(spec.name).name: bronze_version}),
            **lineage,
        },
    )
    return outcome


def _same_as_published(lake: LakeResource, spec: StreamSpec, pk: str, rows: pl.DataFrame) -> bool:
    """The rows equal the published partition's (processing time aside). Asked only by re-derivations for a
    changed history, so ordinary runs never pay for reading the partition back."""
    published = lake.read("silver", spec.name, "silver", [pk])
    return published is not None and published.drop("processed_at").equals(rows.drop("processed_at"))


def _hand_on_history(context, spec: StreamSpec, lake: LakeResource, pk: str, context_pk, context_rows, handed_on: pl.DataFrame) -> dict:
    """Store the history as of this partition's end if it changed, and log the observation the
    `history_<stream>` sensor follows (also when unchanged: it says which history this partition started from)."""
    digest = frame_hash(handed_on)
    last = latest_observation(context.instance, spec, pk)
    # Compared with what was last announced, not with the stored file: a crash between storing and
    # announcing must still announce.
    changed = last is None or last.get(HISTORY_HASH) != digest or not lake.is_published("silver", spec.name, HISTORY_TABLE, pk)
    if changed:
        lake.publish("silver", spec.name, HISTORY_TABLE, pk, handed_on, {"partition": pk, "context_partition": context_pk})
    lineage = {CONTEXT_PARTITION: context_pk or "-", CONTEXT_HASH: frame_hash(context_rows), HISTORY_HASH: digest}
    context.log_event(
        dg.AssetObservation(
            asset_key=keys.silver_key(spec), partition=pk, metadata={**lineage, HISTORY_CHANGED: changed, "history_rows": handed_on.height}
        )
    )
    if changed:
        context.log.info(f"silver {pk}: history handed on changed ({handed_on.height} rows); later partitions that read it follow")
    return lineage


def derive_silver_rows(spec: StreamSpec, bronze: pl.DataFrame, context_rows: pl.DataFrame | None, ctx: SilverContext) -> pl.DataFrame:
    """Silver rows for a Bronze frame, without quarantine bookkeeping (used for empty-partition schemas)."""
    return derive_silver(spec, apply_contract(bronze, spec.row_contract).passed, context_rows, ctx).rows
