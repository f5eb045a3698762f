"""Secrets never reach logs, run config, metadata or stored events; the webserver listens on loopback only."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.conftest import produce, reading

SECRETS = {
    "KAFKA_SASL_PASSWORD": "planted-kafka-secret-7f3a9",
    "CLICKHOUSE_PASSWORD": "planted-clickhouse-secret-51be",
    "MEDALLION_ALERT_WEBHOOK": "http://127.0.0.1:9/planted-webhook-secret-c0de",
    "MEDALLION_PII_KEY": "planted-pii-key-secret-99aa",
}


def _files_containing(root: Path, needle: bytes) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file():
            try:
                if needle in p.read_bytes():
                    hits.append(str(p))
            except OSError:
                continue
    return hits


@pytest.mark.slow
def test_planted_secrets_never_reach_event_log_compute_logs_or_lake(spec, broker, kafka, tmp_path):
    home = tmp_path / "secure-home"
    dagster_home = tmp_path / "secure-dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        **os.environ,
        **SECRETS,
        "MEDALLION_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        "KAFKA_BOOTSTRAP_SERVERS": broker,
        "KAFKA_SASL_USERNAME": "platform",
        "MEDALLION_IOT_TOPIC": spec.topic,
    }
    ts = datetime(2026, 11, 20, 13, 0, tzinfo=timezone.utc)
    produce(kafka, spec.topic, [reading(i, ts + timedelta(seconds=i), sensor=i % 3) for i in range(30)] + [(b"k", b"broken")])
    dagster = [str(Path(sys.executable).parent / "dagster")]
    for cmd in (
        [*dagster, "asset", "materialize", "-m", "medallion.definitions", "--partition", "2026-11-20-13:00", "--select", "bronze_iot"],
        [*dagster, "asset", "materialize", "-m", "medallion.definitions", "--partition", "2026-11-20-13:00",
         "--select", "silver_iot,gold_iot_sensor_5m,warehouse_iot_sensor_5m"],
    ):  # fmt: skip
        done = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        for value in SECRETS.values():
            assert value.encode() not in done.stdout + done.stderr
    runs_db = dagster_home / "history" / "runs.db"
    assert runs_db.exists()
    compute_logs = list((dagster_home / "storage").rglob("*.err")) + list((dagster_home / "storage").rglob("*.out"))
    assert compute_logs, "compute logs should have been captured"
    for value in SECRETS.values():
        assert _files_containing(dagster_home, value.encode()) == []
        assert _files_containing(home, value.encode()) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a LISTEN socket on `port`, from /proc (IPv4 and IPv6)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:
                found.add(addr if width == 32 else socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return found


@pytest.mark.slow
def test_make_dev_webserver_listens_on_loopback_only(tmp_path):
    port = _free_port()
    env = {**os.environ, "MEDALLION_HOME": str(tmp_path / "dev-home")}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    medallion = str(Path(sys.executable).parent / "medallion")
    proc = subprocess.Popen([medallion, "dev", "--rate", "0", "--port", str(port)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("dagster webserver did not come up")
        assert _listening_addresses(port) == {"127.0.0.1"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run([medallion, "broker", "stop"], env=env, capture_output=True, timeout=60)
