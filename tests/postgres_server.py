"""A throwaway PostgreSQL cluster for the tests: initdb + pg_ctl in a temp dir, password auth, loopback only.

PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user (as Debian sets
it up) and its commands run through `runuser`.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

USER, PASSWORD = "medallion", "s3cret-pg"


def bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    data_dir: Path
    port: int
    bin: Path

    def url(self, db: str) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=USER, password=PASSWORD, dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url(name)

    def stop(self) -> None:
        _run(self.bin / "pg_ctl", "-D", self.data_dir, "-m", "immediate", "stop")
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def _run(*cmd) -> str:
    cmd = [str(c) for c in cmd]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def start_postgres() -> PostgresServer:
    pg_bin = bin_dir()
    if pg_bin is None:
        raise RuntimeError("PostgreSQL server binaries not found (Debian package postgresql-15)")
    root = Path(tempfile.mkdtemp(prefix="medallion-pg-"))
    data = root / "data"
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
        os.chmod(root, 0o755)
    _run(pg_bin / "initdb", "-D", data, "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--no-sync")
    port = _free_port()
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    _run(pg_bin / "pg_ctl", "-D", data, "-o", opts, "-l", root / "server.log", "-w", "-t", "60", "start")
    return PostgresServer(data_dir=data, port=port, bin=pg_bin)
