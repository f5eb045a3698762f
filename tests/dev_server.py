"""`medallion dev` (webserver, daemon, code server, runs, simulator) in its own process group, for tests that
need the real daemon; and a few GraphQL helpers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from resources.embedded_broker import stop_broker
from resources.settings import REPO_ROOT

# Unset for the dev server, so it runs on the embedded defaults (Tansu, chDB, SQLite) unless a test sets them.
EMBEDDED_OVERRIDES = ("KAFKA_BOOTSTRAP_SERVERS", "CLICKHOUSE_HOST", "MEDALLION_POSTGRES_URL", "DAGSTER_HOME", "MEDALLION_FAILPOINT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GraphQLError(Exception):
    pass


class DevServer:
    """`medallion dev --rate <rate> <args>` on a home of its own; `env` adds to (or overrides) the environment."""

    def __init__(self, home: Path, rate: float = 0.0, port: int | None = None, env: dict | None = None,
                 log_path: Path | None = None, args: tuple[str, ...] = ()):  # fmt: skip
        self.home = home
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or home.parent / "medallion-dev.log"
        full_env = {k: v for k, v in os.environ.items() if k not in EMBEDDED_OVERRIDES}
        full_env.update({"MEDALLION_HOME": str(home), **(env or {})})
        medallion = Path(sys.executable).parent / "medallion"
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(medallion), "dev", "--port", str(self.port), "--rate", str(rate), *args],
            env=full_env, cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def gql(self, query: str, variables: dict | None = None) -> dict:
        req = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.load(resp)
        if body.get("errors"):
            raise GraphQLError(json.dumps(body["errors"])[:2000])
        return body["data"]

    def wait_until(self, what: str, probe, timeout_s: float, every_s: float = 2.0):
        deadline = time.monotonic() + timeout_s
        last_error = None
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"`medallion dev` exited with {self.proc.returncode} while waiting for {what}:\n{self.tail()}")
            try:
                value = probe()
            except (urllib.error.URLError, ConnectionError, OSError, GraphQLError) as e:  # not up yet, still loading
                value, last_error = None, e
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last error: {last_error}):\n{self.tail()}")  # fmt: skip
            time.sleep(every_s)

    def wait_ready(self, timeout_s: float = 120) -> None:
        """The webserver answers and the code location has loaded its sensors."""
        self.wait_until("the webserver and code location", lambda: self.gql(SENSORS)["sensorsOrError"]["results"], timeout_s, every_s=1)

    def tail(self, n: int = 60) -> str:
        self.log.flush()
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def kill(self) -> None:
        """SIGKILL to the whole process group, as a crash or `kill -9` would (the detached broker survives)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)

    def stop(self, broker: bool = True) -> None:
        """SIGTERM to the whole process group, SIGKILL what is left; then the (detached) embedded broker."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # code servers, run workers that outlived the SIGTERM
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        if broker:
            stop_broker(self.home / "run")
        self.log.close()


SENSORS = """{ sensorsOrError(repositorySelector: {repositoryLocationName: "medallion", repositoryName: "__repository__"})
  { ... on Sensors { results { name } } } }"""
