"""Extending a published Silver partition by a micro-batch of new Bronze rows, without re-deriving it.

A full derivation reads every Bronze row of the partition; an extension reads only the new ones plus a small
state of what is published (`PublishedPartition`): the dedup keys with their Kafka position, each group's
newest event time, and the history the new rows look back on. It gives exactly the rows a full derivation of
the whole Bronze partition would add, or says why it cannot (then the caller re-derives the partition):

- a new row whose dedup key is published is a later copy (dropped, or set aside if its content differs),
  unless it sits earlier in Kafka than the published copy (it would win the dedup: re-derive);
- a new row must come after every published row of its group (`History.group`) in event time, or its
  arrival changes rows already published (the rolling z-score of the sensor's later readings, the
  attribution of a later click): re-derive.

Rows are new Bronze rows that passed the row contract. Plain polars; no Dagster.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import polars as pl

from assets.spec import SilverOutput, StreamSpec
from assets.transforms.dedup import content_columns, first_by_offset, in_offset_order

POSITION = ["source_partition", "source_offset"]


@dataclass(frozen=True)
class PublishedPartition:
    """What extending one published Silver partition needs to know of it."""

    keys: pl.DataFrame  # dedup key + source_partition/source_offset of every published row
    latest: pl.DataFrame | None  # `History.group` + `event_time`: each group's newest published row
    context: pl.DataFrame | None  # the history the next rows look back on (before the partition + its rows)
    rows: int

    @staticmethod
    def columns(spec: StreamSpec) -> list[str]:
        """The published Silver columns the state is built from (a narrow read)."""
        cols = [spec.dedup_key, *POSITION]
        if spec.history is not None:
            cols += [*spec.history.group, "event_time", *spec.history.columns]
        return list(dict.fromkeys(cols))

    @classmethod
    def of(cls, spec: StreamSpec, published: pl.DataFrame, context_before: pl.DataFrame | None, partition_start: datetime) -> "PublishedPartition":
        """`published`: the partition's Silver rows (at least `columns(spec)`); `context_before`: the history
        the partition started from."""
        empty = cls(published.select(spec.dedup_key, *POSITION).clear(), None, context_before, 0)
        return empty.extended(spec, published, partition_start)

    def extended(self, spec: StreamSpec, rows: pl.DataFrame, partition_start: datetime) -> "PublishedPartition":
        """The state after `rows` were appended to the partition."""
        keys = pl.concat([self.keys, rows.select(self.keys.columns).cast(self.keys.schema)], rechunk=False)
        if keys.n_chunks() > 64:  # one chunk per micro-batch otherwise
            keys = keys.rechunk()
        latest, context = self.latest, self.context
        if spec.history is not None:
            group = list(spec.history.group)
            newest = rows.group_by(group).agg(pl.col("event_time").max())
            latest = newest if latest is None else pl.concat([latest, newest.cast(latest.schema)]).group_by(group).agg(pl.col("event_time").max())
            # Carried as of the partition's start, so no group is forgotten that a full derivation would
            # still find in the history before the partition (`carry` of a carry is the carry of the union).
            context = spec.history.carry(context, rows, partition_start)
        return PublishedPartition(keys, latest, context, self.rows + rows.height)


@dataclass(frozen=True)
class Extension:
    """The rows to append (a full derivation would add the same), or why the batch needs a re-derivation."""

    output: SilverOutput | None
    reason: str | None = None  # set when `output` is None


FirstCopies = Callable[[pl.DataFrame], pl.DataFrame]  # (kafka_partition, kafka_offset) -> those Bronze rows


def extend_silver(spec: StreamSpec, published: PublishedPartition, valid: pl.DataFrame, ctx, first_copies: FirstCopies, transform=None) -> Extension:
    """The Silver rows a micro-batch adds to `published`. `valid`: its Bronze rows that passed the row
    contract. `first_copies`: reads the published copies of repeated keys from Bronze (to compare content)."""
    key = spec.dedup_key
    content = content_columns(spec)
    rows, rejected, exact = first_by_offset(in_offset_order(valid), key, content)
    seen = rows.join(published.keys.rename({"source_partition": "__kp", "source_offset": "__off"}), on=key, how="inner")
    if seen.height:
        kp, off = pl.col("kafka_partition").cast(pl.Int64), pl.col("kafka_offset")
        earlier = seen.filter((kp < pl.col("__kp")) | ((kp == pl.col("__kp")) & (off < pl.col("__off"))))
        if earlier.height:
            return Extension(None, f"{earlier.height} rows precede the published copy of their {key} in Kafka (e.g. {earlier[key][0]})")
        firsts = first_copies(seen.select(pl.col("__kp").cast(valid.schema["kafka_partition"]).alias("kafka_partition"), pl.col("__off").alias("kafka_offset")))
        if firsts.height != seen.select("__kp", "__off").unique().height:
            return Extension(None, f"the published copies of {seen.height} repeated {key}s are not in Bronze")
        later = seen.select(valid.columns)
        _, conflicting, same = first_by_offset(pl.concat([firsts.select(valid.columns).cast(valid.schema), later]), key, content)
        rejected = pl.concat([rejected, conflicting.select(rejected.columns)], how="vertical_relaxed")
        exact += same
        rows = rows.join(seen.select(key), on=key, how="anti", maintain_order="left")
    context = published.context
    out = (transform or spec.silver_transform)(rows, context, ctx)
    if spec.history is not None and published.latest is not None and out.rows.height:
        group = list(spec.history.group)
        behind = out.rows.select(*group, "event_time").join(published.latest.rename({"event_time": "__latest"}), on=group, how="inner").filter(
            pl.col("event_time") <= pl.col("__latest")
        )
        if behind.height:
            first = behind.row(0, named=True)
            what = ", ".join(f"{g}={first[g]}" for g in group)
            return Extension(None, f"{behind.height} rows arrived behind published rows of their {'/'.join(group)} (e.g. {what} at {first['event_time']}, published up to {first['__latest']})")
    if out.rejected.height:
        rejected = pl.concat([rejected, out.rejected.select(rejected.columns)], how="vertical_relaxed")
    return Extension(SilverOutput(rows=out.rows, rejected=rejected, duplicates_dropped=exact + out.duplicates_dropped))
