"""Partition definitions shared by every layer, and event time -> partition key."""

from __future__ import annotations

from datetime import datetime, timezone

import dagster as dg
import polars as pl

# end_offset=1: the current (still filling) hour/day is a partition too, so fresh data flows at once.
HOURLY = dg.HourlyPartitionsDefinition(start_date="2026-01-01-00:00", end_offset=1)
DAILY = dg.DailyPartitionsDefinition(start_date="2026-01-01", end_offset=1)

_TRUNCATE = {"0 * * * *": "1h", "0 0 * * *": "1d"}


def truncate_unit(partitions: dg.TimeWindowPartitionsDefinition) -> str:
    try:
        return _TRUNCATE[partitions.cron_schedule]
    except KeyError:
        raise ValueError(f"unsupported partitioning {partitions.cron_schedule!r}: use hourly or daily") from None


def partition_key_expr(partitions: dg.TimeWindowPartitionsDefinition, column: str) -> pl.Expr:
    """Polars expression mapping a UTC datetime column to the partition key string."""
    return pl.col(column).dt.truncate(truncate_unit(partitions)).dt.strftime(partitions.fmt)


def partition_start(partitions: dg.TimeWindowPartitionsDefinition) -> datetime:
    return partitions.start.astimezone(timezone.utc)


def window(partitions: dg.TimeWindowPartitionsDefinition, key: str) -> tuple[datetime, datetime]:
    tw = partitions.time_window_for_partition_key(key)
    return tw.start.astimezone(timezone.utc), tw.end.astimezone(timezone.utc)


def key_from_dirname(partitions: dg.TimeWindowPartitionsDefinition, dirname: str) -> str:
    """`pk=2026-11-20-0500` (a lake directory, which drops the colon) -> `2026-11-20-05:00`."""
    fmt = partitions.fmt
    return datetime.strptime(dirname.removeprefix("pk="), fmt.replace(":", "")).strftime(fmt)
