"""What every published Silver row carries: its event time and where it came from."""

from __future__ import annotations

from typing import Annotated

import pandera.polars as pa
import polars as pl

UtcTime = Annotated[pl.Datetime, "us", "UTC"]


class SilverLineage(pa.DataFrameModel):
    event_time: UtcTime = pa.Field(nullable=False)
    source_topic: str
    source_partition: int = pa.Field(ge=0)
    source_offset: int = pa.Field(ge=0)
    ingested_at: UtcTime
    processed_at: UtcTime
    pipeline_version: str

    class Config:
        strict = True
