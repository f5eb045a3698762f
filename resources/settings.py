"""Where state lives and which form (embedded or production) each part takes, derived once from env vars."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PIPELINE_VERSION = "0.1.0"


@dataclass(frozen=True)
class Settings:
    home: Path
    kafka_bootstrap: str | None  # None: start the embedded Tansu broker
    postgres_url: str | None = None  # None: the Dagster instance on SQLite under dagster_home
    lake_location: str | None = None  # None: the local lake under home
    # How long one stream run of the Kafka sensor consumes before the next takes over (0: one pass per run,
    # Silver and the rest following by automation). A run also ends with its hour; the default lets it live
    # that long, because a run taking over mid-hour derives the hour's Gold in full before its first batch
    # lands (measured: 14-22 s of lag at minute 36 under load, against ~0.1 s at the top of an hour).
    stream_for_s: float = 3600.0
    # How often each stream's automation sensor evaluates (late data, the daily rollup, partitions a stream
    # run left behind). An evaluation over ~8,000 hourly partitions costs the daemon 0.3-1.7 s of CPU, so every
    # 5 s loop took a third of a core from the stream runs on two cores; the newest hour never waits for it.
    automation_every_s: int = 15

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def lake_root(self) -> Path:
        return self.home / "lake"

    @property
    def lake_uri(self) -> str:
        """MEDALLION_LAKE_URI (e.g. s3://bucket/prefix), else the local lake under MEDALLION_HOME."""
        return self.lake_location or str(self.lake_root)

    @property
    def chdb_path(self) -> Path:
        return self.home / "warehouse"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"


class SettingsError(ValueError):
    """An environment variable the platform reads holds a value it cannot use (the message says which)."""


def _number(name: str, default: float, kind: type, least: float) -> float:
    raw = os.environ.get(name) or ""
    if not raw.strip():
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value < least or not math.isfinite(value):  # NaN and inf parse as floats
        what = "a whole number" if kind is int else "a finite number"
        raise SettingsError(f"{name} must be {what} of seconds, at least {least:g} (it is {raw!r}): set it so, or unset it for the default {default:g}")
    return value


def load_settings() -> Settings:
    home = Path(os.environ.get("MEDALLION_HOME") or REPO_ROOT / ".medallion").resolve()
    return Settings(
        home=home,
        kafka_bootstrap=os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None,
        postgres_url=os.environ.get("MEDALLION_POSTGRES_URL") or None,
        lake_location=os.environ.get("MEDALLION_LAKE_URI") or None,
        stream_for_s=_number("MEDALLION_STREAM_FOR_S", 3600.0, float, 0),
        automation_every_s=_number("MEDALLION_AUTOMATION_EVERY_S", 15, int, 1),
    )
