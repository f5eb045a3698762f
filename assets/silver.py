"""Silver: typed, validated, deduplicated, enriched. Re-derived from Bronze only (never from Kafka)."""


import contextlib
import functools
from datetime import datetime, timezone

import dagster as dg
import polars as pl

from assets import keys
from assets.automation import FOLLOW_PARENTS
from assets.bronze import empty_bronze
from assets.contracts.gate import apply_contract
from assets.history import (
    CONTEXT_HASH, CONTEXT_PARTITION, HISTORY_CHANGED, HISTORY_HASH, HISTORY_TABLE,
    frame_hash, histories_lock, history_before, latest_observation,
)  # fmt: skip
from assets.partitions import window
from assets.promotion import check_result, contract_check_spec, sample_markdown
from assets.spec import SilverContext, StreamSpec
from assets.transforms.dedup import derive_silver
from resources.faults import failpoint
from assets.promotion import lake_metadata
from resources.lake import LakeResource, LakeTable, bronze_table
from resources.spark import SparkEngine
from resources.pii import pii_key, pseudonymise
from resources.settings import PIPELINE_VERSION

COORDINATES = ["kafka_topic", "kafka_partition", "kafka_offset", "kafka_key", "event_time"]


def quarantine_columns(spec: StreamSpec) -> list[str]:
    """Where the row came from, its typed fields, the raw payload, and why it was set aside."""
    return COORDINATES + spec.field_names + ["payload", "check", "reason"]


def silver_lock(lake: LakeResource, spec: StreamSpec, partition_key: str):
    """Held while a Silver partition (and its quarantine) is derived from Bronze and published, or erased from."""
    return lake.stream_lock(spec.name, f"silver-{partition_key.replace(':', '')}")


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
        pk = context.partition_key
        with contextlib.ExitStack() as held:
            if spec.history is not None:
                held.enter_context(histories_lock(lake, spec))
            held.enter_context(silver_lock(lake, spec, pk))
            # The raw payload is most of Bronze's bytes and Silver never reads it: leave it on disk, fetch it
            # only for the rows set aside.
            # Snapshots first: Silver as it is now (a rewrite of this partition meanwhile, an erasure on another
            # machine, fails the publish), then Bronze, read once and recorded.
            silver_snapshot = lake.open(LakeTable("silver", spec.name, "silver"))
            bronze_version = lake.version(bronze_table(spec.name))
            bronze_files = lake.partition_files(bronze_table(spec.name), bronze_version, [pk])
            bronze = lake.read_bronze(spec.name, pk, exclude=["payload"], version=bronze_version)
            if bronze is None:  # an hour without data (e.g. in a backfill range) derives to an empty partition
                context.log.info(f"Bronze partition {pk} of {spec.name} has no data")
                bronze = empty_bronze(spec).drop("payload")
            rows = apply_contract(bronze, spec.row_contract)
            context_pk, context_rows = history_before(spec, lake, pk) if spec.history else (None, None)
            failpoint("silver.after_context")
            key_for_pii = pii_key() if spec.pii_fields else None
            ctx = SilverContext(partition_key=pk, processed_at=datetime.now(timezone.utc), pipeline_version=PIPELINE_VERSION, pii_key=key_for_pii)
            engine = "spark" if spec.uses_spark(spec.spark_silver_transform, bronze.height, spark.min_rows) else "polars"
            if engine == "spark":
                context.log.info(f"silver {pk}: {bronze.height} Bronze rows, transform on Spark ({spark.spark_config.get('spark.master')})")
                out = derive_silver(spec, rows.passed, context_rows, ctx, functools.partial(spec.spark_silver_transform, spark.session()))
            else:
                out = derive_silver(spec, rows.passed, context_rows, ctx)

            columns = [c for c in quarantine_columns(spec) if c != "payload"]
            set_aside = pl.concat([rows.failed.select(columns), out.rejected.select(columns)], how="vertical_relaxed")
            if spec.pii_fields:
                # Raw PII stays in Bronze: the quarantine carries pseudonyms and no payload (its Kafka
                # coordinates lead to the raw record for those allowed to read Bronze).
                quarantine = set_aside.with_columns(
                    *[pseudonymise(set_aside[f], key_for_pii) for f in spec.pii_fields], pl.lit(None, pl.String).alias("payload")
                ).select(quarantine_columns(spec))
            else:
                quarantine = lake.attach_bronze_payloads(spec.name, pk, set_aside, version=bronze_version).select(quarantine_columns(spec))
            lake.publish("quarantine", spec.name, "silver", pk, quarantine, {"partition": pk, "source_rows": bronze.height})
            final = apply_contract(out.rows, spec.silver_contract)
            failure_rate = quarantine.height / bronze.height if bronze.height else 0.0
            passed = failure_rate <= spec.max_failure_rate and final.ok
            counts = dict(rows.failure_counts)
            for check, n in out.rejected.group_by("check").len().iter_rows():
                counts[check] = n
            for check, n in final.failure_counts.items():
                counts[f"published:{check}"] = n
            yield check_result(
                key, passed, bronze.height, quarantine.height, counts, spec.max_failure_rate,
                final.schema_errors, sample_markdown(
                    quarantine if quarantine.height else final.failed,
                    ["kafka_partition", "kafka_offset", *spec.field_names, "check", "reason"],
                ),
            )  # fmt: skip
            if not passed:
                context.log.error(
                    f"silver {pk} NOT published: {quarantine.height}/{bronze.height} rows failed "
                    f"({failure_rate:.2%} > {spec.max_failure_rate:.2%}) {counts}; the previous version keeps serving"
                )
                return
            rows_changed = config.publish_unchanged or not _same_as_published(lake, spec, pk, out.rows)
            version = None
            if rows_changed and not bronze_files <= lake.partition_files(bronze_table(spec.name), None, [pk]):
                # Files read are gone (an erasure elsewhere rewrote them): publishing would bring back what it
                # removed. (New files are new records: a later run derives them.)
                raise dg.Failure(f"bronze_{spec.name} {pk} changed while Silver was derived from it; run it again", allow_retries=True)
            if rows_changed:
                version = lake.publish(
                    "silver", spec.name, "silver", pk, out.rows,
                    {"partition": pk, "bronze_rows": bronze.height, "quarantined": quarantine.height, "pipeline_version": PIPELINE_VERSION},
                    snapshot=silver_snapshot,
                )  # fmt: skip
            lineage = _hand_on_history(context, spec, lake, pk, context_pk, context_rows, out.rows) if spec.history else {}
            if not rows_changed:
                context.log.info(f"silver {pk}: re-derived rows equal the published ones; not republished, downstream need not run")
                return
            yield dg.MaterializeResult(
                asset_key=key,
                metadata={
                    "dagster/row_count": out.rows.height,
                    "bronze_rows": bronze.height,
                    "quarantined_rows": quarantine.height,
                    "duplicates_dropped": out.duplicates_dropped,
                    "anomalies": int(out.rows["is_anomaly"].sum()) if "is_anomaly" in out.rows.columns else 0,
                    "context_rows": 0 if context_rows is None else context_rows.height,
                    "engine": engine,
                **lake_metadata(lake, LakeTable("silver", spec.name, "silver"), version, {bronze_table(spec.name).name: bronze_version}),
                    **lineage,
                },
            )

    return silver


def _same_as_published(lake: LakeResource, spec: StreamSpec, pk: str, rows: pl.DataFrame) -> bool:
    """The rows equal the published partition's (processing time aside). Asked only by re-derivations for a
    changed history, so ordinary runs never pay for reading the partition back."""
    published = lake.read("silver", spec.name, "silver", [pk])
    return published is not None and published.drop("processed_at").equals(rows.drop("processed_at"))


def _hand_on_history(context, spec: StreamSpec, lake: LakeResource, pk: str, context_pk, context_rows, silver_rows) -> dict:
    """Store the history as of this partition's end if it changed, and log the observation the
    `history_<stream>` sensor follows (also when unchanged: it says which history this partition started from)."""
    handed_on = spec.history.carry(context_rows, silver_rows, window(spec.partitions, pk)[1])
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
