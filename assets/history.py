"""The history a Silver partition hands to the next (`StreamSpec.history`), and how a change to it is told.

Stored beside Silver as the Delta table `history_<stream>` (`silver/<stream>/history`), one partition per Silver partition. Each
Silver derivation logs an `AssetObservation` on its partition recording the history it started from
(`context_partition`, `context_hash`) and the one it handed on (`history_hash`, `history_changed`). The
`history_<stream>` sensor reads these: when a partition's history changed, the next partition with data is
re-derived unless it already started from that history. Observations, not materializations: a partition
whose rows came out the same but whose history moved on (a sensor silent this hour carries its readings
through) must tell the next partition without making Gold re-run.
"""

from __future__ import annotations

import hashlib

import dagster as dg
import polars as pl

from assets import keys
from assets.partitions import window
from assets.spec import StreamSpec
from resources.lake import LakeResource

HISTORY_TABLE = "history"
CONTEXT_PARTITION = "context_partition"
CONTEXT_HASH = "context_hash"
HISTORY_HASH = "history_hash"
HISTORY_CHANGED = "history_changed"
NO_HISTORY = "none"  # the context hash of a partition that started without history


def frame_hash(df: pl.DataFrame | None, ignore: tuple[str, ...] = ()) -> str:
    """A digest of a frame's rows in order (the columns in `ignore` left out, e.g. processing times)."""
    if df is None:
        return NO_HISTORY
    frame = df.select([c for c in df.columns if c not in ignore])
    digest = hashlib.sha256(repr(frame.schema).encode())
    digest.update(frame.hash_rows(seed=0).to_numpy().tobytes() if frame.height else b"")
    return digest.hexdigest()[:32]


def histories_lock(lake: LakeResource, spec: StreamSpec, exclusive: bool = False):
    """Held shared by every Silver derivation (it reads one partition's history and writes another's), and
    exclusively by an erasure, which rewrites histories anywhere: a derivation can never carry an erased
    subject's rows on from a history it read just before."""
    return lake.stream_lock(spec.name, "histories", shared=not exclusive)


def history_keys(spec: StreamSpec, lake: LakeResource) -> list[str]:
    """Partition keys with a stored history, oldest first."""
    return lake.published_keys("silver", spec.name, HISTORY_TABLE)


def history_before(spec: StreamSpec, lake: LakeResource, partition_key: str) -> tuple[str | None, pl.DataFrame | None]:
    """(partition, rows) of the latest history before `partition_key` within the spec's lookback."""
    start, _ = window(spec.partitions, partition_key)
    for key in reversed(history_keys(spec, lake)):
        if key >= partition_key:  # keys of one partitioning sort as their times do
            continue
        if window(spec.partitions, key)[1] < start - spec.history.lookback:
            return None, None
        return key, lake.read("silver", spec.name, HISTORY_TABLE, [key])
    return None, None


def later_with_data(spec: StreamSpec, lake: LakeResource, partition_key: str) -> list[str]:
    """The partitions after `partition_key`, within the lookback, holding Bronze or Silver; oldest first."""
    _, end = window(spec.partitions, partition_key)
    limit = end + spec.history.lookback
    candidates = set(lake.bronze_partition_keys(spec.name)) | set(lake.published_keys("silver", spec.name, "silver"))
    later = sorted(k for k in candidates if k > partition_key)
    return [k for k in later if window(spec.partitions, k)[0] < limit]


def has_history(spec: StreamSpec, lake: LakeResource, partition_key: str) -> bool:
    return lake.is_published("silver", spec.name, HISTORY_TABLE, partition_key)


def latest_observation(instance: dg.DagsterInstance, spec: StreamSpec, partition_key: str) -> dict | None:
    """The metadata of the latest Silver derivation's observation of a partition (None if never derived)."""
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=keys.silver_key(spec), asset_partitions=[partition_key]), limit=1
    ).records
    if not records:
        return None
    return {k: v.value for k, v in records[0].asset_observation.metadata.items()}
