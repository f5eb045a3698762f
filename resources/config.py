"""The platform's resources, configured from the environment in one place.

Embedded defaults need no variables. Production forms: KAFKA_BOOTSTRAP_SERVERS (+ KAFKA_SECURITY_PROTOCOL,
KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD, KAFKA_SSL_CA_LOCATION) and CLICKHOUSE_HOST
(+ CLICKHOUSE_PORT, CLICKHOUSE_USER, CLICKHOUSE_PASSWORD, CLICKHOUSE_DATABASE, CLICKHOUSE_SECURE).
Alerts go to MEDALLION_ALERT_WEBHOOK (links to MEDALLION_UI_URL when set).
Secrets are passed as `dg.EnvVar`, so their values never appear in run config or the UI.
"""

from __future__ import annotations

import os

import dagster as dg

from resources.alerts import AlertWebhook
from resources.kafka import KafkaResource
from resources.lake import LakeResource
from resources.settings import load_settings
from resources.warehouse import WarehouseResource


def _env(name: str):
    """An EnvVar reference if the variable is set, else None (the field's embedded default applies)."""
    return dg.EnvVar(name) if os.environ.get(name) else None


def _set(**kwargs) -> dict:
    return {k: v for k, v in kwargs.items() if v is not None}


def platform_resources() -> dict:
    settings = load_settings()
    kafka = KafkaResource(
        **_set(
            bootstrap_servers=_env("KAFKA_BOOTSTRAP_SERVERS"),
            security_protocol=_env("KAFKA_SECURITY_PROTOCOL"),
            sasl_mechanism=_env("KAFKA_SASL_MECHANISM"),
            sasl_username=_env("KAFKA_SASL_USERNAME"),
            sasl_password=_env("KAFKA_SASL_PASSWORD"),
            ssl_ca_location=_env("KAFKA_SSL_CA_LOCATION"),
        )
    )
    warehouse = WarehouseResource(
        chdb_path=str(settings.chdb_path),
        **_set(
            host=_env("CLICKHOUSE_HOST"),
            port=dg.EnvVar.int("CLICKHOUSE_PORT") if os.environ.get("CLICKHOUSE_PORT") else None,
            username=_env("CLICKHOUSE_USER"),
            password=_env("CLICKHOUSE_PASSWORD"),
            database=_env("CLICKHOUSE_DATABASE"),
            secure=os.environ.get("CLICKHOUSE_SECURE", "").lower() in ("1", "true", "yes") or None,
        ),
    )
    return {
        "kafka": kafka,
        "lake": LakeResource(root=str(settings.lake_root)),
        "warehouse": warehouse,
        "alerts": alert_webhook(),
    }


def alert_webhook() -> AlertWebhook:
    return AlertWebhook(**_set(url=_env("MEDALLION_ALERT_WEBHOOK"), ui_url=_env("MEDALLION_UI_URL")))
