"""Real parts for every test: a Tansu broker on loopback, a chDB warehouse and a lake in a temp dir."""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

# Before the platform's modules are imported: late partitions follow at once (no cron wave), as one-pass runs
# and the automation tests expect; child processes inherit it.
os.environ["MEDALLION_LATE_DATA_CRON"] = ""

import dagster as dg  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings

# Property tests: no example database in the repo; a failure prints the blob that reproduces it.
settings.register_profile("medallion", database=None, print_blob=True)
settings.load_profile("medallion")

from assets.streams.iot import IOT
from resources.config import lake_resource
from resources.embedded_broker import start_broker, stop_broker
from resources.embedded_s3 import start_s3
from resources.kafka import KafkaResource
from resources.lake import LakeResource
from resources.warehouse import WarehouseResource


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> str:
    run_dir = tmp_path_factory.mktemp("broker")
    info = start_broker(run_dir)
    yield info.bootstrap
    stop_broker(run_dir)


@pytest.fixture(autouse=True)
def medallion_home(tmp_path, monkeypatch) -> Path:
    """Each test gets its own MEDALLION_HOME, so nothing leaks between tests (or into the repo)."""
    home = tmp_path / "home"
    monkeypatch.setenv("MEDALLION_HOME", str(home))
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "CLICKHOUSE_HOST"):
        monkeypatch.delenv(var, raising=False)
    # The sensor's runs are one pass each unless a test asks for stream runs (tests/test_stream_runs.py).
    monkeypatch.setenv("MEDALLION_STREAM_FOR_S", "0")
    return home


@pytest.fixture
def kafka(broker) -> KafkaResource:
    return KafkaResource(bootstrap_servers=broker, timeout_s=5.0)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS) on loopback for the tests' `s3://` lakes."""
    server = start_s3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


# Modules whose tests run on both lakes: `pytestmark = ON_BOTH_LAKES`.
ON_BOTH_LAKES = pytest.mark.parametrize("lake_kind", ["local", "s3"], indirect=True)


@pytest.fixture
def lake_kind(request) -> str:
    return getattr(request, "param", "local")


@pytest.fixture
def lake(lake_kind, tmp_path, monkeypatch, request) -> LakeResource:
    """The test's lake: a directory, or (lake_kind "s3") a prefix of its own on the S3 server, which the
    environment then names too (MEDALLION_LAKE_URI + AWS_*), so CLI and child processes find it."""
    if lake_kind == "local":
        return LakeResource(uri=str(tmp_path / "lake"))
    server = request.getfixturevalue("s3_server")
    env = server.env(prefix=f"t-{uuid.uuid4().hex[:10]}")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return lake_resource().process_config_and_initialize()


@pytest.fixture
def resources(kafka, tmp_path, lake) -> dict:
    return {
        "kafka": kafka,
        "lake": lake,
        "warehouse": WarehouseResource(chdb_path=str(tmp_path / "warehouse")),
    }


@pytest.fixture
def spec(kafka):
    """The IoT stream on a topic of its own."""
    s = dataclasses.replace(IOT, topic=f"test.iot.{uuid.uuid4().hex[:8]}")
    kafka.ensure_topics({s.topic: s.kafka_partitions, s.dead_letter_topic: 1})
    return s


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def reading(i: int, ts: datetime, sensor: int = 0, sensor_type: str = "temperature", value: float | None = None, **over) -> dict:
    units = {"temperature": "°C", "humidity": "%", "pressure": "hPa", "vibration": "g"}
    base = {"temperature": 21.0, "humidity": 40.0, "pressure": 1010.0, "vibration": 0.5}[sensor_type]
    rec = {
        "event_id": f"evt-{i}",
        "sensor_id": f"sensor-{sensor}",
        "sensor_type": sensor_type,
        "location": f"loc-{sensor % 3}",
        "value": base + (i % 7) * 0.1 if value is None else value,
        "unit": units[sensor_type],
        "ts": ts.astimezone(timezone.utc).isoformat(),
    }
    rec.update(over)
    return rec


def produce(kafka: KafkaResource, topic: str, records: list, key_field: str = "sensor_id") -> int:
    """Produce dicts as JSON (keyed by sensor_id) or raw (key, bytes) tuples; wait for every ack."""
    producer = kafka.producer({"linger.ms": 5})
    for r in records:
        if isinstance(r, tuple):
            key, value = r
        else:
            key, value = str(r.get(key_field, "")).encode(), json.dumps(r).encode()
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0
    return len(records)


@pytest.fixture
def shared_instance(tmp_path, monkeypatch):
    """An instance on disk (SQLite under DAGSTER_HOME) that child processes share with the test; run retries
    on, as in the repo's dagster.yaml."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nrun_retries:\n  enabled: true\n  max_retries: 2\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as inst:
        yield inst


def _child_command(spec, resources, broker, args, failpoint=None, release=None, env_extra=None):
    import os
    import sys

    env = {**os.environ, **(env_extra or {})}
    env.pop("MEDALLION_FAILPOINT", None)
    if failpoint:
        env["MEDALLION_FAILPOINT"] = failpoint
    if release:
        env["MEDALLION_FAILPOINT_RELEASE"] = str(release)
    cmd = [sys.executable, "-m", "tests.fault_child", spec.topic, resources["lake"].uri, resources["warehouse"].chdb_path, broker, *args]
    return cmd, env


def run_child(spec, resources, broker, *args, failpoint=None, timeout=120, env_extra=None):
    """Run tests.fault_child in a subprocess; with a failpoint it is SIGKILLed there. `env_extra`: e.g. a
    MEDALLION_HOME of its own (another machine: no lock in common)."""
    import subprocess

    cmd, env = _child_command(spec, resources, broker, args, failpoint, env_extra=env_extra)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def start_held_child(spec, resources, broker, *args, point: str, release: Path, timeout: float = 120, env_extra=None):
    """Start tests.fault_child and return it once it is held at failpoint `point` (see resources/faults.py);
    creating the file `release` lets it go on."""
    import subprocess
    import time

    cmd, env = _child_command(spec, resources, broker, args, f"{point}:hold", release, env_extra=env_extra)
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reached = Path(f"{release}.reached")
    deadline = time.monotonic() + timeout
    while not reached.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            raise AssertionError(f"child never reached {point}: {child.communicate()[1][-2000:]}")
        time.sleep(0.05)
    return child


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server of the tests' own (see tests/postgres_server.py)."""
    from tests.postgres_server import start_postgres

    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh database on that server, one per test."""
    return postgres_server.create_database(f"dagster_{uuid.uuid4().hex[:10]}")


def pytest_collection_modifyitems(items):
    """Longest first: with two xdist workers, the browser test and the end-to-end runs must not start last.

    The real daemon's test measures how soon automation follows; the heaviest S3 tests (each a SeaweedFS server
    and many processes) go to the same worker (`--dist loadgroup`), after it, so the other core is not
    swamped while it measures."""
    weight = {"ui": 0, "slow": 1}
    items.sort(key=lambda item: min([weight.get(m.name, 2) for m in item.iter_markers()] or [2]))
    for item in items:
        heavy_s3 = item.get_closest_marker("slow") and ("[s3]" in item.nodeid or "s3" in item.name.split("[")[0])
        if "test_daemon_follows_and_recovers" in item.nodeid or heavy_s3:
            item.add_marker(pytest.mark.xdist_group("daemon_then_s3"))
