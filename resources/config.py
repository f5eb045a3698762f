"""The platform's resources, configured from the environment in one place.

Embedded defaults need no variables. Production forms: KAFKA_BOOTSTRAP_SERVERS (+ KAFKA_SECURITY_PROTOCOL,
KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD, KAFKA_SSL_CA_LOCATION) and CLICKHOUSE_HOST
(+ CLICKHOUSE_PORT, CLICKHOUSE_USER, CLICKHOUSE_PASSWORD, CLICKHOUSE_DATABASE, CLICKHOUSE_SECURE) and
MEDALLION_LAKE_URI=s3://bucket/prefix (+ AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ALLOW_HTTP).
The embedded broker rotates segments at MEDALLION_KAFKA_SEGMENT_RECORDS records per partition (0: never).
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
            embedded_segment_records=dg.EnvVar.int("MEDALLION_KAFKA_SEGMENT_RECORDS") if os.environ.get("MEDALLION_KAFKA_SEGMENT_RECORDS") else None,
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
        "lake": lake_resource(settings),
        "warehouse": warehouse,
        "alerts": alert_webhook(),
    }


def lake_resource(settings=None) -> LakeResource:
    """The lake at MEDALLION_LAKE_URI (default: under MEDALLION_HOME). On `s3://`, the standard AWS_* variables
    configure it (AWS_ENDPOINT_URL for an S3-compatible server); keys are EnvVar references, never values."""
    settings = settings or load_settings()
    return LakeResource(
        uri=_env("MEDALLION_LAKE_URI") or settings.lake_uri,
        **_set(
            aws_endpoint_url=_env("AWS_ENDPOINT_URL"),
            aws_region=_env("AWS_REGION"),
            aws_access_key_id=_env("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=_env("AWS_SECRET_ACCESS_KEY"),
            aws_allow_http=os.environ.get("AWS_ALLOW_HTTP", "").lower() in ("1", "true", "yes") or None,
        ),
    )


def alert_webhook() -> AlertWebhook:
    return AlertWebhook(**_set(url=_env("MEDALLION_ALERT_WEBHOOK"), ui_url=_env("MEDALLION_UI_URL")))
