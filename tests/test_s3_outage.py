"""An object-store outage during a run, for real (the S3 server stopped): retried with backoff, then one clear
failure; nothing half-published, nothing lost or doubled once the store is back."""

import dataclasses
import uuid
from datetime import datetime, timedelta, timezone

import dagster as dg
import polars as pl
import pytest

from assets.bronze import ingest_totals
from resources.embedded_s3 import start_s3
from resources.lake import LakeResource
from resources.warehouse import WarehouseResource
from tests.conftest import produce, reading
from tests.helpers import content_hash, definitions, materialize, run_ingest

T = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
PK = "2026-11-20-09:00"


@pytest.fixture
def outage_lake(tmp_path):
    """A lake on an S3 server of this test's own, which it stops and starts."""
    server = start_s3(tmp_path / "s3")
    env = server.env()
    lake = LakeResource(uri=env["MEDALLION_LAKE_URI"], aws_endpoint_url=env["AWS_ENDPOINT_URL"], aws_region=env["AWS_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                        aws_allow_http=True, retry_timeout_s=2)  # fmt: skip
    yield server, lake
    server.stop()


def failure_messages(instance, run_id) -> str:
    return "\n".join(str(e.dagster_event.event_specific_data) for e in instance.all_logs(run_id) if e.dagster_event and e.dagster_event.is_step_failure)


@pytest.mark.slow
def test_an_s3_outage_fails_clearly_and_loses_nothing(outage_lake, kafka, spec, instance, tmp_path):
    server, lake = outage_lake
    resources = {"kafka": kafka, "lake": lake, "warehouse": WarehouseResource(chdb_path=str(tmp_path / "wh"))}
    defs = definitions(spec, resources)
    chain = ["silver_iot", "gold_iot_sensor_5m"]
    produce(kafka, spec.topic, [reading(i, T + timedelta(seconds=i), sensor=i % 3) for i in range(60)])
    assert run_ingest(defs, spec, instance).success
    assert materialize(defs, chain, PK, instance).success
    silver_before = content_hash(lake.read("silver", spec.name, "silver", [PK]))
    offsets = lake.committed_offsets(spec.name, spec.topic, [0, 1, 2])

    server.stop()
    produce(kafka, spec.topic, [reading(100 + i, T + timedelta(minutes=5, seconds=i), sensor=i % 3) for i in range(40)])
    down = run_ingest(defs, spec, instance, raise_on_error=False)
    assert not down.success
    message = failure_messages(instance, down.run_id)
    assert "unreachable" in message and "Nothing was committed" in message, message
    attempts = [e for e in instance.all_logs(down.run_id) if e.dagster_event and e.dagster_event.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(attempts) == 3  # the step's retry policy: 1 s, 2 s, 4 s, then the clear failure
    published = materialize(defs, chain, PK, instance, raise_on_error=False)
    assert not published.success and "unreachable" in failure_messages(instance, published.run_id)

    server.start()
    # Nothing moved while it was down: the same offsets, the previous Silver version still serving.
    assert lake.committed_offsets(spec.name, spec.topic, [0, 1, 2]) == offsets
    assert content_hash(lake.read("silver", spec.name, "silver", [PK])) == silver_before
    assert run_ingest(defs, spec, instance).success
    assert materialize(defs, chain, PK, instance).success
    bronze = lake.read_bronze(spec.name, PK)
    assert bronze.height == 100 == ingest_totals(lake, spec)["consumed"]
    assert bronze.select(pl.struct("kafka_partition", "kafka_offset").n_unique()).item() == 100
    assert lake.read("silver", spec.name, "silver", [PK]).height == 100
