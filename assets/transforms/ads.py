"""Ad events: Silver (dedup, pseudonymised users, click/conversion attribution) and the campaign Gold table."""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from assets.spec import SilverContext, SilverOutput
from resources.pii import pseudonymise

ATTRIBUTION_WINDOW = timedelta(hours=24)  # a click/conversion credits the user's latest impression of the ad within it

SILVER_COLUMNS = [
    "event_id", "event_type", "campaign_id", "ad_id", "user_key", "cost", "event_time", "attributed_impression_id",
    "source_topic", "source_partition", "source_offset", "ingested_at", "processed_at", "pipeline_version",
]  # fmt: skip


# What each day hands to the next: the impressions a click or conversion after midnight may still credit.
HISTORY_COLUMNS = ("event_id", "event_type", "user_key", "ad_id", "event_time", "source_topic", "source_partition", "source_offset")


def history(previous: pl.DataFrame | None, silver_rows: pl.DataFrame, partition_end) -> pl.DataFrame:
    """Impressions within the attribution window before `partition_end`."""
    rows = silver_rows.filter(pl.col("event_type") == "impression").select(HISTORY_COLUMNS)
    if previous is not None and previous.height:
        rows = pl.concat([previous.select(HISTORY_COLUMNS).cast(rows.schema), rows])
    return rows.filter(pl.col("event_time") >= partition_end - ATTRIBUTION_WINDOW).sort("event_time", "event_id")


def silver(valid: pl.DataFrame, context: pl.DataFrame | None, ctx: SilverContext) -> SilverOutput:
    """`valid`: Bronze rows that passed the row contract. `context`: the `history` before this day (the
    impressions that clicks just after midnight may credit)."""
    if ctx.pii_key is None:
        raise ValueError("ads Silver needs the PII key (SilverContext.pii_key) to pseudonymise user_id")
    rows = valid  # deduplicated on event_id by the platform (`derive_silver`)
    rejected = valid.clear().with_columns(check=pl.lit(None, pl.String), reason=pl.lit(None, pl.String))

    # 2. the raw user id stops here.
    events = rows.select(
        "event_id", "event_type", "campaign_id", "ad_id", pseudonymise(rows["user_id"], ctx.pii_key).alias("user_key"), "cost", "event_time",
        pl.col("kafka_topic").alias("source_topic"), pl.col("kafka_partition").cast(pl.Int64).alias("source_partition"),
        pl.col("kafka_offset").alias("source_offset"), "ingested_at",
    )  # fmt: skip

    # 3. attribution: each click/conversion credits the same user's latest impression of the same ad at or
    #    before it, within the window (ties broken by Kafka position, so re-runs agree).
    impressions = events.filter(pl.col("event_type") == "impression").select("user_key", "ad_id", "event_time", pl.col("event_id").alias("attributed_impression_id"))
    if context is not None and context.height:
        earlier = context.filter(pl.col("event_type") == "impression").select(
            "user_key", "ad_id", "event_time", pl.col("event_id").alias("attributed_impression_id")
        )
        impressions = pl.concat([earlier, impressions])
    impressions = impressions.sort("event_time", "attributed_impression_id")
    actions = events.filter(pl.col("event_type") != "impression").select("event_id", "user_key", "ad_id", "event_time").sort("event_time")
    credited = actions.join_asof(
        impressions, on="event_time", by=["user_key", "ad_id"], strategy="backward", tolerance=ATTRIBUTION_WINDOW, check_sortedness=False
    ).select("event_id", "attributed_impression_id")
    out = (
        events.join(credited, on="event_id", how="left", maintain_order="left")
        .with_columns(
            pl.lit(ctx.processed_at).cast(pl.Datetime("us", "UTC")).alias("processed_at"),
            pl.lit(ctx.pipeline_version).alias("pipeline_version"),
        )
        .select(SILVER_COLUMNS)
    )
    return SilverOutput(rows=out, rejected=rejected, duplicates_dropped=0)


def gold_campaign_daily(silver_rows: pl.DataFrame) -> pl.DataFrame:
    """Per campaign per day: volumes, spend and the ratios marketers read (null where the denominator is 0)."""
    kind = pl.col("event_type")
    counts = (
        silver_rows.group_by("campaign_id", pl.col("event_time").dt.date().alias("day"))
        .agg(
            (kind == "impression").sum().cast(pl.Int64).alias("impressions"),
            (kind == "click").sum().cast(pl.Int64).alias("clicks"),
            (kind == "conversion").sum().cast(pl.Int64).alias("conversions"),
            ((kind == "click") & pl.col("attributed_impression_id").is_not_null()).sum().cast(pl.Int64).alias("attributed_clicks"),
            pl.col("cost").sum().alias("spend"),
            pl.col("user_key").n_unique().cast(pl.Int64).alias("distinct_users"),
        )
    )

    def ratio(num: str, den: str) -> pl.Expr:
        return pl.when(pl.col(den) > 0).then(pl.col(num) / pl.col(den))

    return counts.with_columns(
        ratio("clicks", "impressions").alias("ctr"), ratio("spend", "clicks").alias("cpc"), ratio("conversions", "clicks").alias("conversion_rate")
    ).select(
        "campaign_id", "day", "impressions", "clicks", "conversions", "attributed_clicks", "spend", "ctr", "cpc", "conversion_rate", "distinct_users"
    ).sort("day", "campaign_id")
