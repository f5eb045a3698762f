"""Ad events: impressions, clicks and conversions, keyed by campaign_id, daily partitions by event time.

`user_id` is PII: it stays in Bronze; Silver and the quarantine carry its HMAC-SHA256 pseudonym.
"""

from __future__ import annotations

import os

from assets.contracts import ads as contracts
from assets.partitions import DAILY
from assets.spec import FieldSpec, GoldTable, History, Rollup, StreamSpec, SubjectSpec
from assets.transforms import ads as transforms
from assets.simulation.ads import generate_ads

CAMPAIGN_DAILY = GoldTable(
    name="campaign_daily",
    description="Per campaign per day: impressions, clicks, conversions, spend, CTR, CPC, conversion rate",
    partitions=DAILY,
    build=transforms.gold_campaign_daily,
    contract=contracts.CampaignDaily,
    time_column="day",
    columns_ddl="""
        campaign_id LowCardinality(String),
        day Date CODEC(Delta, ZSTD),
        impressions Int64 CODEC(T64, ZSTD),
        clicks Int64 CODEC(T64, ZSTD),
        conversions Int64 CODEC(T64, ZSTD),
        attributed_clicks Int64 CODEC(T64, ZSTD),
        spend Float64 CODEC(Gorilla, ZSTD),
        ctr Nullable(Float64),
        cpc Nullable(Float64),
        conversion_rate Nullable(Float64),
        distinct_users Int64 CODEC(T64, ZSTD),
        INDEX campaign_bf campaign_id TYPE bloom_filter(0.01) GRANULARITY 4""",
    order_by="(campaign_id, day)",
    ttl="day + INTERVAL 400 DAY",  # campaign history beyond 13 months lives in the rollup
    rollups=(
        Rollup(
            name="ads_campaign_monthly",
            columns_ddl="""
                campaign_id LowCardinality(String),
                month Date,
                impressions AggregateFunction(sum, Int64),
                clicks AggregateFunction(sum, Int64),
                conversions AggregateFunction(sum, Int64),
                spend AggregateFunction(sum, Float64),
                active_days AggregateFunction(uniq, Date)""",
            order_by="(campaign_id, month)",
            time_column="month",
            select="""
                SELECT campaign_id, toStartOfMonth(day) AS month, sumState(impressions) AS impressions,
                       sumState(clicks) AS clicks, sumState(conversions) AS conversions, sumState(spend) AS spend,
                       uniqState(day) AS active_days
                FROM {source} GROUP BY campaign_id, month""",
        ),
    ),
)

ADS = StreamSpec(
    name="ads",
    description="Ad events (impressions, clicks, conversions)",
    topic=os.environ.get("MEDALLION_ADS_TOPIC", "ads.events"),
    kafka_partitions=3,
    fields=(
        FieldSpec("event_id", "string"),
        FieldSpec("event_type", "string"),
        FieldSpec("campaign_id", "string"),
        FieldSpec("ad_id", "string"),
        FieldSpec("user_id", "string"),
        FieldSpec("cost", "number"),
    ),
    event_time_field="ts",
    dedup_key="event_id",
    key_field="campaign_id",
    partitions=DAILY,
    row_contract=contracts.AdEvent,
    silver_contract=contracts.AdsSilver,
    silver_transform=transforms.silver,
    history=History(carry=transforms.history, lookback=transforms.ATTRIBUTION_WINDOW, columns=transforms.HISTORY_COLUMNS, group=("user_key", "ad_id")),
    max_failure_rate=float(os.environ.get("MEDALLION_ADS_MAX_FAILURE_RATE", "0.05")),
    pii_fields=("user_id",),
    subject=SubjectSpec(kind="user", field="user_id", silver_column="user_key"),
    simulator=generate_ads,
    gold=(CAMPAIGN_DAILY,),
)
