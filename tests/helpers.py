"""Shared test steps: build the definitions for a test stream and run its sensor like the daemon does."""

from __future__ import annotations

import hashlib

import dagster as dg
import polars as pl

from medallion.definitions import build_definitions


def definitions(spec, resources) -> dg.Definitions:
    return build_definitions((spec,), resources)


def sensor_tick(defs: dg.Definitions, spec, instance, cursor=None):
    sensor = defs.resolve_sensor_def(f"kafka_{spec.name}")
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources=defs.resources, definitions=defs)
    return sensor.evaluate_tick(ctx)


def run_ingest(defs: dg.Definitions, spec, instance, request: dg.RunRequest | None = None, **kwargs):
    """The sensor's run (ingest + the newest partition's chain), as the sensor would request it."""
    job = defs.resolve_job_def(f"ingest_{spec.name}")
    run_config = request.run_config if request else {}
    tags = dict(request.tags) if request else {"medallion/stream": spec.name}
    partition_key = request.partition_key if request else spec.partitions.get_last_partition_key()
    return job.execute_in_process(run_config=run_config, instance=instance, tags=tags, partition_key=partition_key, **kwargs)


def content_hash(df: pl.DataFrame, ignore=("processed_at", "ingested_at")) -> str:
    """Row-order-independent hash of a frame's content."""
    cols = sorted(c for c in df.columns if c not in ignore)
    frame = df.select(cols)
    rows = sorted(frame.hash_rows(seed=0).to_list())
    return hashlib.sha256(repr((cols, rows)).encode()).hexdigest()


def materialize(defs: dg.Definitions, keys: list[str], partition_key: str, instance, raise_on_error: bool = True):
    """Run selected assets of the definitions for one partition (as a UI launch or backfill run would)."""
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        partition_key=partition_key,
        asset_selection=[dg.AssetKey(k) for k in keys],
        raise_on_error=raise_on_error,
    )


def lake_objects(lake, suffix: str = "") -> list[tuple[str, bytes]]:
    """Every object under the lake (local directory or S3 prefix) whose name ends with `suffix`: (path, bytes)."""
    import pyarrow.fs as pafs

    fs, root = lake.filesystem()
    out = []
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File and info.path.endswith(suffix):
            with fs.open_input_stream(info.path) as f:
                out.append((info.path, f.read()))
    return out
