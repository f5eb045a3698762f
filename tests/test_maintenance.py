"""Lake maintenance compacts the small files of many small ingest commits, checkpoints and vacuums; the
data and every snapshot a reader holds stay as they were."""

from datetime import datetime, timedelta, timezone

import dagster as dg
import polars as pl
import pyarrow.fs as pafs

from resources.delta import add_actions
from resources.lake import bronze_table
from tests.conftest import ON_BOTH_LAKES, produce, reading
from tests.helpers import content_hash, definitions, run_ingest

pytestmark = ON_BOTH_LAKES
T = datetime(2026, 11, 20, 7, 0, tzinfo=timezone.utc)
PK = "2026-11-20-07:00"


def maintain(defs, instance, retention_hours: int):
    job = defs.resolve_job_def("maintain_lake")
    return job.execute_in_process(instance=instance, run_config={"ops": {"lake_maintenance": {"config": {"retention_hours": retention_hours}}}})


def test_maintenance_compacts_checkpoints_and_vacuums_without_changing_data(spec, resources, instance, kafka):
    defs = definitions(spec, resources)
    lake = resources["lake"]
    for batch in range(6):  # six small ingest commits: six files per Kafka partition in the hour
        produce(kafka, spec.topic, [reading(100 * batch + i, T + timedelta(minutes=batch, seconds=i), sensor=i % 3) for i in range(30)])
        assert run_ingest(defs, spec, instance).success
    before = content_hash(lake.read_bronze(spec.name, PK))
    files_before = add_actions(lake.open(bronze_table(spec.name))).height
    reader = lake.open(bronze_table(spec.name))  # a snapshot a run is reading right now
    offsets = lake.committed_offsets(spec.name, spec.topic, [0, 1, 2])

    result = maintain(defs, instance, retention_hours=6)
    assert result.success
    [event] = instance.fetch_materializations(dg.AssetKey("lake_maintenance"), limit=1).records
    figures = event.asset_materialization.metadata["tables"].value[bronze_table(spec.name).name]
    files_after = add_actions(lake.open(bronze_table(spec.name))).height
    assert figures["files_before"] == files_before >= 12 and figures["files_after"] == files_after <= 3
    assert figures["bytes_after"] > 0 and figures["files_compacted"] == files_before
    assert content_hash(lake.read_bronze(spec.name, PK)) == before  # same rows
    assert lake.committed_offsets(spec.name, spec.topic, [0, 1, 2]) == offsets  # compaction moves no offset
    assert pl.scan_delta(reader).select(pl.len()).collect().item() == 180  # the old snapshot still reads: its files are kept
    assert figures["files_vacuumed"] == 0

    # With no retention the replaced small files go (an old snapshot can no longer be read then).
    assert maintain(defs, instance, retention_hours=0).success
    [event] = instance.fetch_materializations(dg.AssetKey("lake_maintenance"), limit=1).records
    assert event.asset_materialization.metadata["tables"].value[bronze_table(spec.name).name]["files_vacuumed"] == files_before
    assert content_hash(lake.read_bronze(spec.name, PK)) == before
    produce(kafka, spec.topic, [reading(9000, T + timedelta(minutes=30))])
    assert run_ingest(defs, spec, instance).success  # ingest goes on after maintenance, exactly once
    assert lake.count_bronze(spec.name) == 181


def test_the_maintenance_schedule_runs_by_default(spec, resources):
    defs = definitions(spec, resources)
    schedule = defs.resolve_schedule_def("lake_maintenance_hourly")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING and schedule.job_name == "maintain_lake"


def test_tables_checkpoint_every_ten_commits(spec, resources, instance, kafka):
    """Opening a table replays every JSON commit since its last checkpoint: a stream run's tables gain a commit
    per micro-batch, so they checkpoint every 10 (delta-rs's default is 100)."""
    defs = definitions(spec, resources)
    lake = resources["lake"]
    for batch in range(11):
        produce(kafka, spec.topic, [reading(100 * batch + i, T + timedelta(minutes=batch, seconds=i), sensor=i % 3) for i in range(3)])
        assert run_ingest(defs, spec, instance).success
    fs, root = lake.filesystem()
    listed = fs.get_file_info(pafs.FileSelector(f"{root}/{bronze_table(spec.name).path}/_delta_log"))
    checkpoints = sorted(int(f.base_name.split(".")[0]) for f in listed if f.base_name.endswith(".checkpoint.parquet"))
    version = lake.version(bronze_table(spec.name))
    assert version >= 11 and checkpoints and version - checkpoints[-1] < 10, (version, checkpoints)


def test_maintenance_gives_an_older_table_this_versions_properties(spec, resources, instance, kafka):
    defs = definitions(spec, resources)
    lake = resources["lake"]
    produce(kafka, spec.topic, [reading(i, T + timedelta(seconds=i)) for i in range(5)])
    assert run_ingest(defs, spec, instance).success
    bronze = lake.open(bronze_table(spec.name))
    bronze.alter.set_table_properties({"delta.checkpointInterval": "100"})  # as an older version created it

    assert maintain(defs, instance, retention_hours=6).success
    [event] = instance.fetch_materializations(dg.AssetKey("lake_maintenance"), limit=1).records
    assert event.asset_materialization.metadata["tables"].value[bronze_table(spec.name).name]["properties_set"] == ["delta.checkpointInterval"]
    assert lake.open(bronze_table(spec.name)).metadata().configuration["delta.checkpointInterval"] == "10"
    assert lake.count_bronze(spec.name) == 5
