"""Deduplication every stream needs: one row per key, the first by Kafka partition/offset; later copies with
the same content are dropped, copies with other content are set aside with the reason."""

from __future__ import annotations

import polars as pl


def first_by_offset(rows: pl.DataFrame, key: str, content: list[str]) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """(kept rows, rejected rows with `check`/`reason`, exact duplicates dropped). `rows` must be in Kafka
    partition/offset order. Only the (rare) repeated keys are compared, so the common case is one hash pass."""
    is_first = pl.col(key).is_first_distinct()
    later = rows.filter(~is_first)
    rejected = rows.clear().with_columns(check=pl.lit(None, pl.String), reason=pl.lit(None, pl.String))
    if not later.height:
        return rows, rejected, 0
    first = rows.filter(is_first & pl.col(key).is_in(later[key].implode())).select(
        key, *[pl.col(c).alias(f"__first_{c}") for c in content], "kafka_partition", "kafka_offset"
    )
    # Built in Python: polars 2.1 panics formatting strings over some filtered multi-chunk frames
    # (binview index assertion), and only the few repeated keys get here.
    first = first.with_columns(
        pl.Series("__first_at", [f"{p}/{o}" for p, o in zip(first["kafka_partition"].to_list(), first["kafka_offset"].to_list())], dtype=pl.String)
    ).drop("kafka_partition", "kafka_offset")
    later = later.join(first, on=key, how="left")
    same = pl.all_horizontal([pl.col(c).eq_missing(pl.col(f"__first_{c}")) for c in content])
    conflicting = later.filter(~same)
    rejected = conflicting.with_columns(
        check=pl.lit(f"{key}_unique_content"),
        reason=pl.Series([f"duplicate {key} with different content (first seen at {at})" for at in conflicting["__first_at"].to_list()], dtype=pl.String),
    ).drop([c for c in later.columns if c.startswith("__")])
    return rows.filter(is_first), rejected, later.filter(same).height


def in_offset_order(rows: pl.DataFrame) -> pl.DataFrame:
    """`rows` sorted by Kafka partition/offset (Bronze is read in that order; sort only if it is not)."""
    kp, off = pl.col("kafka_partition"), pl.col("kafka_offset")
    ordered = rows.select(((kp.diff() > 0) | ((kp.diff() == 0) & (off.diff() > 0))).fill_null(True).all()).item()
    return rows if ordered else rows.sort("kafka_partition", "kafka_offset")


def content_columns(spec) -> list[str]:
    """What two copies of a dedup key are compared on: every field but the key, and the event time."""
    return [f for f in spec.field_names if f != spec.dedup_key] + ["event_time"]


def derive_silver(spec, valid: pl.DataFrame, context: pl.DataFrame | None, ctx, transform=None):
    """What every Silver partition goes through: the spec's dedup (conflicting copies set aside), then the
    stream's transform (`spec.silver_transform` unless another engine's is given)."""
    from assets.spec import SilverOutput

    rows, rejected, exact = first_by_offset(in_offset_order(valid), spec.dedup_key, content_columns(spec))
    out = (transform or spec.silver_transform)(rows, context, ctx)
    if out.rejected.height:
        rejected = pl.concat([rejected, out.rejected.select(rejected.columns)], how="vertical_relaxed")
    return SilverOutput(rows=out.rows, rejected=rejected, duplicates_dropped=exact + out.duplicates_dropped)
