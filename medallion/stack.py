"""Bringing up the embedded stack for one MEDALLION_HOME: Dagster home, broker, topics."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from assets.spec import StreamSpec
from medallion.instance import write_instance_yaml
from resources.embedded_broker import start_broker
from resources.kafka import KafkaResource
from resources.lake import LakeResource, bronze_table
from resources.settings import Settings


def prepare_dagster_home(settings: Settings) -> Path:
    """DAGSTER_HOME under MEDALLION_HOME, with the instance's dagster.yaml (SQLite, or PostgreSQL if configured)."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    write_instance_yaml(settings, home)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def ensure_kafka(settings: Settings, streams: tuple[StreamSpec, ...], lake: LakeResource, say=print) -> str:
    """Start the embedded broker if no cluster is configured; create the streams' topics."""
    if settings.kafka_bootstrap is None:
        port = int(os.environ["MEDALLION_KAFKA_PORT"]) if os.environ.get("MEDALLION_KAFKA_PORT") else None
        info = start_broker(settings.run_dir, port=port)  # the running one, its proxy restarted, or a new one
        if info.started_empty or info.proxy_restarted:
            say(f"embedded Kafka (Tansu) {'started' if info.started_empty else 'proxy restarted'} on {info.bootstrap}")
        stale = [s.name for s in streams if lake.version(bronze_table(s.name)) is not None] if info.started_empty else []
        if stale:
            # The embedded broker keeps nothing: offsets Bronze committed refer to a log that no longer exists.
            for t in lake.tables(streams):
                lake.remove(t)
            shutil.rmtree(settings.chdb_path, ignore_errors=True)
            say(f"the embedded broker started empty: cleared lake and warehouse state of {stale} from its previous life")
    kafka = KafkaResource(bootstrap_servers=settings.kafka_bootstrap)
    topics = {}
    for s in streams:
        topics[s.topic] = s.kafka_partitions
        topics[s.dead_letter_topic] = 1
    kafka.ensure_topics(topics)
    return kafka.resolved_bootstrap()
