"""A partition's history in the Delta log, and rolling one back: the earlier version's rows become the newest
version, Dagster hears of it, and what depends on it is re-derived from it."""

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import dagster as dg

from assets.streams import STREAMS
from medallion.lake_info import LakeCommandError, find_table, partition_history, rollback
from resources.lake import LakeTable
from tests.conftest import produce, reading
from tests.helpers import content_hash, definitions, materialize, run_ingest

T = datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc)
PK = "2026-11-20-08:00"
CHAIN = ["silver_iot", "gold_iot_sensor_5m", "warehouse_iot_sensor_5m"]


def test_history_lists_the_commits_of_a_partition_and_rollback_restores_one(spec, resources, instance, kafka):
    defs = definitions(spec, resources)
    lake, wh = resources["lake"], resources["warehouse"]
    produce(kafka, spec.topic, [reading(i, T + timedelta(seconds=10 * i), sensor=i % 3) for i in range(60)])
    assert run_ingest(defs, spec, instance).success
    assert materialize(defs, CHAIN, PK, instance).success
    gold = LakeTable("gold", spec.name, "sensor_5m")
    first = [e for e in instance.fetch_materializations(dg.AssetKey("gold_iot_sensor_5m"), limit=1).records][0]
    first_version = first.asset_materialization.metadata["lake/version"].value
    before = content_hash(lake.read("gold", spec.name, "sensor_5m", [PK]))

    produce(kafka, spec.topic, [reading(100 + i, T + timedelta(minutes=20, seconds=i), sensor=i % 3) for i in range(30)])
    assert run_ingest(defs, spec, instance).success
    assert materialize(defs, CHAIN, PK, instance).success
    assert content_hash(lake.read("gold", spec.name, "sensor_5m", [PK])) != before

    history = partition_history(lake, gold, PK)
    publishes = [h for h in history if h["operation"] == "publish"]
    assert [h["version"] for h in publishes][-1] == first_version and len(publishes) >= 2
    assert all(h["rows"] is not None for h in publishes)
    assert partition_history(lake, gold, "2026-11-20-09:00") == [h for h in history if h["operation"] not in ("publish",)]

    done = rollback(lake, instance, (spec,), gold, PK, first_version)
    assert done["rolled_back_to"] == first_version and done["version"] > first_version
    assert content_hash(lake.read("gold", spec.name, "sensor_5m", [PK])) == before
    [event] = instance.fetch_materializations(dg.AssetKey("gold_iot_sensor_5m"), limit=1).records
    assert event.partition_key == PK and event.asset_materialization.metadata["rolled_back_to"].value == first_version
    # The warehouse load that follows Gold's new materialization carries the rolled-back rows to ClickHouse.
    assert materialize(defs, ["warehouse_iot_sensor_5m"], PK, instance).success
    assert wh.query_arrow("SELECT sum(count) AS n FROM iot_sensor_5m").column("n")[0].as_py() == 60


def test_rollback_refuses_what_it_cannot_do(spec, resources):
    lake = resources["lake"]
    try:
        find_table(lake, STREAMS, "gold_nope")
    except LakeCommandError as exc:
        assert "medallion lake" in str(exc)
    else:
        raise AssertionError("unknown table accepted")
    for t, version in ((LakeTable("bronze", spec.name, "bronze"), 0), (LakeTable("gold", spec.name, "sensor_5m"), 99)):
        try:
            rollback(lake, None, (spec,), t, PK, version)
        except LakeCommandError:
            pass
        else:
            raise AssertionError(f"rollback of {t.name} v{version} accepted")


def test_the_cli_says_what_to_do_in_one_line(medallion_home):
    env = {**os.environ, "MEDALLION_HOME": str(medallion_home)}
    bad = subprocess.run([sys.executable, "-m", "medallion.cli", "lake", "history", "nope"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "no lake table 'nope'" in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "medallion.cli", "lake", "rollback", "gold_iot_sensor_5m"], env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "--partition" in missing.stderr and "Traceback" not in missing.stderr
    listed = subprocess.run([sys.executable, "-m", "medallion.cli", "lake", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and {t["version"] for t in json.loads(listed.stdout)} == {None}  # nothing written yet
