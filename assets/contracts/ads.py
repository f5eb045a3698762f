"""Ad events: what a valid event is (row contract) and what published Silver/Gold guarantee."""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from assets.contracts.lineage import SilverLineage

EVENT_TYPES = ["impression", "click", "conversion"]
MAX_COST = 1_000.0  # per event, in the account currency: above it, a unit or sign bug upstream



class AdEvent(pa.DataFrameModel):
    """One ad event as it must look to enter Silver. Failing rows are quarantined with the check's name."""

    event_id: str = pa.Field(nullable=False, str_length={"min_value": 1, "max_value": 128})
    event_type: str = pa.Field(nullable=False, isin=EVENT_TYPES)
    campaign_id: str = pa.Field(nullable=False, str_length={"min_value": 1, "max_value": 64})
    ad_id: str = pa.Field(nullable=False, str_length={"min_value": 1, "max_value": 64})
    user_id: str = pa.Field(nullable=False, str_length={"min_value": 1, "max_value": 256})
    cost: float = pa.Field(nullable=False, ge=0, le=MAX_COST)
    parse_issues: str = pa.Field(nullable=True)

    @pa.dataframe_check(name="fields_present_and_typed")
    def fields_typed(cls, data) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col("parse_issues").is_null())

    class Config:
        strict = False


class AdsSilver(SilverLineage):
    """Published Silver: deduplicated, pseudonymised (no raw user id), attributed."""

    event_id: str = pa.Field(unique=True, nullable=False)
    event_type: str = pa.Field(isin=EVENT_TYPES)
    campaign_id: str = pa.Field(nullable=False)
    ad_id: str = pa.Field(nullable=False)
    user_key: str = pa.Field(nullable=False, str_matches=r"^[0-9a-f]{64}$")
    cost: float = pa.Field(ge=0)
    attributed_impression_id: str = pa.Field(nullable=True)

    @pa.dataframe_check(name="only_clicks_and_conversions_are_attributed")
    def attribution_kind(cls, data) -> pl.LazyFrame:
        return data.lazyframe.select((pl.col("event_type") != "impression") | pl.col("attributed_impression_id").is_null())

    class Config:
        strict = True


class CampaignDaily(pa.DataFrameModel):
    campaign_id: str = pa.Field(nullable=False)
    day: pl.Date
    impressions: int = pa.Field(ge=0)
    clicks: int = pa.Field(ge=0)
    conversions: int = pa.Field(ge=0)
    attributed_clicks: int = pa.Field(ge=0)
    spend: float = pa.Field(ge=0)
    ctr: float = pa.Field(nullable=True, ge=0)
    cpc: float = pa.Field(nullable=True, ge=0)
    conversion_rate: float = pa.Field(nullable=True, ge=0)
    distinct_users: int = pa.Field(ge=0)

    @pa.dataframe_check(name="attributed_clicks_le_clicks")
    def attributed_le_clicks(cls, data) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col("attributed_clicks") <= pl.col("clicks"))

    class Config:
        strict = True
