"""StreamSpec -> every Dagster definition of that stream's data path."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from assets import keys
from assets.bronze import build_bronze, topic_asset
from assets.catch_up import build_catch_up_job
from assets.gold import build_gold
from assets.silver import build_silver
from assets.spec import StreamSpec
from assets.streaming import follower
from assets.warehouse import build_warehouse_load


@dataclass(frozen=True)
class StreamDefinitions:
    spec: StreamSpec
    assets: list
    ingest_job: dg.UnresolvedAssetJobDefinition
    catch_up_job: dg.JobDefinition


def build_stream(spec: StreamSpec) -> StreamDefinitions:
    assets: list = [topic_asset(spec), build_bronze(spec, follower(spec)), build_silver(spec)]
    chain = [keys.bronze_key(spec), keys.silver_key(spec)]
    for table in spec.gold:
        assets += [build_gold(spec, table), build_warehouse_load(spec, table)]
        if table.partitions == spec.partitions:  # same grain: can ride along in the ingest run
            chain += [keys.gold_key(spec, table), keys.warehouse_key(spec, table)]
    # The sensor's run: ingest everything pending, then carry the run's partition (the current one) all
    # the way to the warehouse. Other partitions touched (late data) follow by automation.
    ingest_job = dg.define_asset_job(
        keys.ingest_job_name(spec),
        selection=dg.AssetSelection.assets(*chain),
        partitions_def=spec.partitions,
        tags={"medallion/stream": spec.name},
        description=f"Kafka `{spec.topic}` -> Bronze (+ dead-letter) from the committed offsets to the end of the log, "
        "then Silver, Gold and the warehouse for the run's partition.",
    )
    return StreamDefinitions(spec=spec, assets=assets, ingest_job=ingest_job, catch_up_job=build_catch_up_job(spec))


def rederive_jobs(streams: tuple[StreamSpec, ...]) -> dict[str, dg.UnresolvedAssetJobDefinition]:
    """One asset job per partitioning (hourly, daily) over every Silver, Gold and warehouse asset that uses it:
    what sensors target when they ask for derived partitions again (a job holds one partitioning only).
    Returns asset key (user string) -> job."""
    by_partitioning: dict[dg.TimeWindowPartitionsDefinition, list[dg.AssetKey]] = {}
    for spec in streams:
        by_partitioning.setdefault(spec.partitions, []).append(keys.silver_key(spec))
        for table in spec.gold:
            by_partitioning.setdefault(table.partitions, []).extend([keys.gold_key(spec, table), keys.warehouse_key(spec, table)])
    out, names = {}, set()
    for n, (partitions, asset_keys) in enumerate(by_partitioning.items()):
        name = f"rederive_{GRAIN_NAMES.get(partitions.cron_schedule, 'partitions')}"
        name = name if name not in names else f"{name}_{n}"
        names.add(name)
        job = dg.define_asset_job(name, selection=dg.AssetSelection.assets(*asset_keys), description=f"Silver, Gold and warehouse assets partitioned {partitions.cron_schedule!r}: re-derived from the lake on request.")
        out.update({k.to_user_string(): job for k in asset_keys})
    return out


GRAIN_NAMES = {"0 * * * *": "hourly", "0 0 * * *": "daily"}
