"""The Dagster instance's `dagster.yaml`: the repo's embedded form (SQLite), or PostgreSQL when configured.

`MEDALLION_POSTGRES_URL=postgresql://user:pass@host:port/db` selects dagster-postgres for run, event-log and
schedule storage (runs, event logs, sensor cursors then live in PostgreSQL and survive any process restart).
The URL is rewritten to `postgresql+psycopg2`: SQLAlchemy 2.1 otherwise picks psycopg 3, which is not installed.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

from resources.settings import REPO_ROOT, Settings

POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg2")


class PostgresUrlError(ValueError):
    pass


def postgres_db(url: str) -> dict:
    """`postgres_db` config of dagster-postgres from a URL, with the psycopg2 driver pinned."""
    parts = urlsplit(url)
    if parts.scheme not in POSTGRES_SCHEMES:
        raise PostgresUrlError(f"MEDALLION_POSTGRES_URL must start with postgresql:// (got scheme {parts.scheme!r})")
    if not parts.hostname or not parts.username or not parts.path.strip("/"):
        raise PostgresUrlError("MEDALLION_POSTGRES_URL must be postgresql://user[:password]@host[:port]/database")
    db = {
        "username": unquote(parts.username),
        "hostname": parts.hostname,
        "port": parts.port or 5432,
        "db_name": unquote(parts.path.strip("/")),
        "scheme": "postgresql+psycopg2",
    }
    if parts.password:
        db["password"] = unquote(parts.password)
    if parts.query:
        db["params"] = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    return db


def instance_config(settings: Settings) -> dict:
    config = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    if settings.postgres_url:
        config["storage"] = {"postgres": {"postgres_db": postgres_db(settings.postgres_url)}}
    return config


def write_instance_yaml(settings: Settings, home: Path) -> Path:
    """Write `dagster.yaml` into DAGSTER_HOME; only when it changed, so a running daemon isn't disturbed."""
    text = "# Written by `medallion` from the repo's dagster.yaml and MEDALLION_POSTGRES_URL; edit those.\n"
    text += yaml.safe_dump(instance_config(settings), sort_keys=False)
    dst = home / "dagster.yaml"
    if not dst.exists() or dst.read_text() != text:
        tmp = dst.with_suffix(".tmp")
        # It may hold the database password: readable by the owner only.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, dst)
    return dst
