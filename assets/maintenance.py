"""Lake maintenance: small ingest commits make small files and long logs; this compacts, checkpoints and
vacuums every lake table, on a schedule that runs by default.

Per table: the table properties of this version (`resources.delta.TABLE_PROPERTIES`) on a table an older
version created (a checkpoint every 10 commits), OPTIMIZE (compaction: small files of a partition into few; rows and versions' contents
unchanged, `dataChange=false`), a checkpoint (readers replay one Parquet file instead of every JSON commit),
expired log cleanup, then VACUUM of files removed more than `retention_hours` ago and of files no commit
ever referenced (left by writers that died before committing). The retention keeps in-flight readers safe:
a run reading a snapshot opened up to that long ago still finds every file of it. A table another writer
commits to meanwhile may conflict; it is skipped this time and named in the metadata.
"""

import dagster as dg
import polars as pl

from resources.delta import TABLE_PROPERTIES, add_actions
from resources.lake import LakeResource

DEFAULT_RETENTION_HOURS = 6


class MaintenanceConfig(dg.Config):
    retention_hours: int = DEFAULT_RETENTION_HOURS  # no snapshot a run reads is this old
    target_file_mb: int = 128


def _files(lake: LakeResource, t) -> tuple[int, int]:
    dt = lake.open(t)
    if dt is None:
        return 0, 0
    adds = add_actions(dt)
    return adds.height, int(adds["size_bytes"].sum()) if adds.height else 0


def maintain_table(lake: LakeResource, t, retention_hours: int, target_file_mb: int) -> dict:
    """Compact, checkpoint, clean the log and vacuum one table; returns its figures."""
    files_before, bytes_before = _files(lake, t)
    dt = lake.open(t)
    configuration = dt.metadata().configuration
    missing = {k: v for k, v in TABLE_PROPERTIES.items() if configuration.get(k) != v}
    if missing:
        dt.alter.set_table_properties(missing)
        dt = lake.open(t)
    compacted = dt.optimize.compact(target_size=target_file_mb * 1024 * 1024)
    dt = lake.open(t)
    dt.create_checkpoint()
    dt.cleanup_metadata()
    removed = dt.vacuum(retention_hours=retention_hours, enforce_retention_duration=False, dry_run=False, full=True)
    files_after, bytes_after = _files(lake, t)
    return {
        "files_before": files_before,
        "files_after": files_after,
        "bytes_before": bytes_before,
        "bytes_after": bytes_after,
        "files_compacted": int(compacted.get("numFilesRemoved", 0)),
        "files_vacuumed": len(removed),
        "properties_set": sorted(missing),
        "version": lake.version(t),
    }


def build_maintenance(streams) -> tuple[dg.AssetsDefinition, dg.ScheduleDefinition]:
    @dg.asset(
        name="lake_maintenance",
        group_name="maintenance",
        kinds={"delta"},
        description="OPTIMIZE (compaction), checkpoint and VACUUM of every lake table; figures per table in the metadata.",
    )
    def lake_maintenance(context: dg.AssetExecutionContext, config: MaintenanceConfig, lake: LakeResource) -> dg.MaterializeResult:
        per_table, skipped = {}, {}
        for t in lake.tables(streams):
            if lake.open(t) is None:
                continue
            try:
                per_table[t.name] = maintain_table(lake, t, config.retention_hours, config.target_file_mb)
            except Exception as exc:  # noqa: BLE001 - a concurrent commit (or an outage) on one table: the next run retries it
                skipped[t.name] = str(exc).splitlines()[0][:200]
                context.log.warning(f"{t.name}: maintenance skipped this time: {skipped[t.name]}")
        figures = pl.DataFrame([{"table": k, **v} for k, v in per_table.items()]) if per_table else None
        total = {k: int(figures[k].sum()) if figures is not None else 0 for k in ("files_before", "files_after", "bytes_before", "bytes_after", "files_vacuumed")}
        context.log.info(f"maintained {len(per_table)} tables: files {total['files_before']} -> {total['files_after']}, {total['files_vacuumed']} vacuumed")
        return dg.MaterializeResult(
            metadata={
                **total,
                "tables": dg.MetadataValue.json(per_table),
                "skipped": dg.MetadataValue.json(skipped),
                "retention_hours": config.retention_hours,
                "figures": dg.MetadataValue.md(_markdown(figures)) if figures is not None else dg.MetadataValue.md("_no tables yet_"),
            }
        )

    job = dg.define_asset_job("maintain_lake", selection=[lake_maintenance.key], description=lake_maintenance.descriptions_by_key[lake_maintenance.key])
    schedule = dg.ScheduleDefinition(
        name="lake_maintenance_hourly", job=job, cron_schedule="23 * * * *", default_status=dg.DefaultScheduleStatus.RUNNING
    )
    return lake_maintenance, schedule


def _markdown(figures: pl.DataFrame) -> str:
    from tabulate import tabulate

    return tabulate(figures.rows(), headers=figures.columns, tablefmt="github")
