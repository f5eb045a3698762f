"""What a Silver partition has not seen of Bronze yet, and the small state of what it has: the lake side of
extending Silver by a micro-batch (`assets.transforms.increment` does the rows).

Silver and its quarantine record, per partition, the Bronze version whose rows they hold all of (a Delta app
transaction `bronze_<stream>@<partition>` in the same commit as the rows). The rows since are in the data
files the ingest commits after it added to the partition (their metadata lists them). Anything else (no
record yet, Silver and quarantine disagreeing after a crash between their commits, Bronze files compacted
or rewritten since) is answered with the reason, and the partition is derived in full.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

import polars as pl
from deltalake import DeltaTable

from assets.bronze import INGEST
from resources.recent import Recent
from assets.spec import StreamSpec
from assets.transforms.increment import FirstCopies, PublishedPartition
from resources.lake import PARTITION_COLUMN, LakeResource, LakeTable, bronze_table, source_app_id


def silver_table(spec: StreamSpec) -> LakeTable:
    return LakeTable("silver", spec.name, "silver")


def quarantine_table(spec: StreamSpec) -> LakeTable:
    return LakeTable("quarantine", spec.name, "silver")


def held_version(snapshot: DeltaTable | None, spec: StreamSpec, partition_key: str) -> int | None:
    """The Bronze version whose rows of the partition `snapshot` (Silver or quarantine) holds all of."""
    held = None if snapshot is None else snapshot.transaction_version(source_app_id(bronze_table(spec.name), partition_key))
    return None if held is None or held < 0 else held  # -1: not known (a rollback)


@dataclass(frozen=True)
class BronzeIncrement:
    since: int  # the Bronze version Silver held all of
    files: list[str]  # their data files, as the log names them
    rows: pl.DataFrame  # the new Bronze rows, without their payloads
    payloads: pl.DataFrame  # kafka_partition, kafka_offset, payload (for the rows set aside)


def bronze_since_silver(lake: LakeResource, spec: StreamSpec, partition_key: str, silver: DeltaTable | None, quarantine: DeltaTable | None, bronze_version: int) -> BronzeIncrement | str:
    """The Bronze rows of the partition committed after the version Silver holds, up to `bronze_version`,
    or why they cannot be told apart from the rest."""
    held = held_version(silver, spec, partition_key)
    if held is None:
        return "Silver records no Bronze version for it yet"
    if held_version(quarantine, spec, partition_key) != held:
        return "its quarantine holds another Bronze version than Silver (a run stopped between their commits)"
    if held >= bronze_version:
        return f"it holds Bronze v{held} already: nothing new to extend by"
    bronze = bronze_table(spec.name)
    files = []
    for version, meta in lake.commits(bronze, since_version=held + 1):
        if version > bronze_version:
            break
        if meta.get("operation") != INGEST:  # an erasure, a rollback: rows may have gone
            return f"Bronze was rewritten since v{held} ({meta.get('operation')} in v{version})"
        if partition_key in meta.get("partitions", {}):
            if "files" not in meta:
                return f"the ingest commit v{version} does not list its files"
            files += meta["files"].get(partition_key, [])
    if not files:
        return f"no ingest since Bronze v{held} added rows to it"
    live = {unquote(p): p for p in lake.partition_files(bronze, bronze_version, [partition_key])}  # the log escapes paths
    if not set(files) <= set(live):
        return "Bronze files added since were compacted or rewritten"
    rows = lake.read_files(bronze, files).sort("kafka_partition", "kafka_offset")
    return BronzeIncrement(held, [live[f] for f in files], rows.drop("payload"), rows.select("kafka_partition", "kafka_offset", "payload"))


# (Silver table uri, partition) -> (its data files, the hash of the history before it, its state): used only
# while the partition holds exactly those files and starts from that history.
STATES = Recent(size=4)


def published_state(lake: LakeResource, spec: StreamSpec, partition_key: str, silver: DeltaTable, context: pl.DataFrame | None, context_hash: str, partition_start) -> PublishedPartition:
    """The state of the published partition in snapshot `silver`: the one this process left it in, else a
    narrow read of its rows."""
    files = lake.partition_files(silver_table(spec), silver.version(), [partition_key])
    cached = STATES.get((lake.table_uri(silver_table(spec)), partition_key))
    if cached is not None and cached[:2] == (frozenset(files), context_hash):
        return cached[2]
    cols = PublishedPartition.columns(spec)
    rows = lake.scan(silver_table(spec), silver).filter(pl.col(PARTITION_COLUMN) == partition_key).select(cols).collect()
    return PublishedPartition.of(spec, rows, context, partition_start)


def remember_state(lake: LakeResource, spec: StreamSpec, partition_key: str, files: set[str], context_hash: str, state: PublishedPartition) -> None:
    """What the partition holds now that it is made of `files` (this process just published it)."""
    STATES.put((lake.table_uri(silver_table(spec)), partition_key), (frozenset(files), context_hash, state))


def first_copies_in(lake: LakeResource, spec: StreamSpec, partition_key: str, bronze_version: int) -> FirstCopies:
    """Reads the Bronze rows at some Kafka coordinates of the partition (the published copies of keys that
    came again)."""

    def read(coords: pl.DataFrame) -> pl.DataFrame:
        dt = lake.open(bronze_table(spec.name), bronze_version)
        return (
            lake.scan(bronze_table(spec.name), dt)
            .filter(pl.col(PARTITION_COLUMN) == partition_key)
            .drop(PARTITION_COLUMN, "payload")
            .join(coords.lazy(), on=["kafka_partition", "kafka_offset"], how="semi")
            .unique(subset=["kafka_partition", "kafka_offset"], keep="first")
            .collect()
        )

    return read
