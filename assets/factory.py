"""StreamSpec -> every Dagster definition of that stream's data path."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from assets.bronze import bronze_asset, build_ingest_job, topic_asset
from assets.gold import build_gold
from assets.silver import build_silver
from assets.spec import StreamSpec
from assets.warehouse import build_warehouse_load


@dataclass(frozen=True)
class StreamDefinitions:
    spec: StreamSpec
    assets: list
    ingest_job: dg.JobDefinition


def build_stream(spec: StreamSpec) -> StreamDefinitions:
    assets: list = [topic_asset(spec), bronze_asset(spec), build_silver(spec)]
    for table in spec.gold:
        assets += [build_gold(spec, table), build_warehouse_load(spec, table)]
    return StreamDefinitions(spec=spec, assets=assets, ingest_job=build_ingest_job(spec))
