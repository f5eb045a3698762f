"""Write ▸ audit ▸ publish, shared by Silver and Gold: the contract check result and its metadata."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import dagster as dg
import polars as pl

CONTRACT_CHECK = "contract"


def contract_check_spec(asset_key: dg.AssetKey, description: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(CONTRACT_CHECK, asset=asset_key, blocking=True, description=description)


def sample_markdown(df: pl.DataFrame, columns: list[str], n: int = 5) -> dg.MetadataValue:
    cols = [c for c in columns if c in df.columns]
    rows = df.head(n).select(cols)
    if rows.height == 0:
        return dg.MetadataValue.md("_none_")
    header = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    body = "".join(
        "| " + " | ".join(str(v).replace("|", "\\|")[:80] for v in r) + " |\n" for r in rows.iter_rows()
    )
    return dg.MetadataValue.md(header + body)


def check_result(
    asset_key: dg.AssetKey,
    passed: bool,
    total_rows: int,
    failed_rows: int,
    failure_counts: dict[str, int],
    threshold: float | None,
    schema_errors: list[str],
    sample: dg.MetadataValue,
) -> dg.AssetCheckResult:
    rate = failed_rows / total_rows if total_rows else 0.0
    metadata = {
        "rows_checked": total_rows,
        "failed_rows": failed_rows,
        "failure_rate": round(rate, 6),
        "failures_by_check": dg.MetadataValue.json(failure_counts),
        "published": passed,
        "failed_rows_sample": sample,
    }
    if threshold is not None:
        metadata["max_failure_rate"] = threshold
    if schema_errors:
        metadata["schema_errors"] = dg.MetadataValue.json(schema_errors)
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=CONTRACT_CHECK,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=metadata,
        description=None if passed else f"not published: {failed_rows}/{total_rows} rows failed ({json.dumps(failure_counts)})",
    )


LAKE_VERSION = "lake/version"  # the Delta version a materialization published (or, for Bronze, committed)


def lake_metadata(lake, table, version: int | None, sources: dict[str, int | None]) -> dict:
    """Where a materialization published, as which Delta version, and which versions of its inputs it read
    (re-reading those versions repeats the derivation)."""
    out = {"lake/table": table.name, "lake/uri": lake.table_uri(table), "lake/sources": dg.MetadataValue.json(sources)}
    if version is not None:
        out[LAKE_VERSION] = version
    return out


def freshness_metadata(newest_kafka_time: datetime | None) -> dict:
    """`freshness_s`: how old the newest record a materialization carried is (now - its Kafka timestamp)."""
    if newest_kafka_time is None:
        return {}
    return {"freshness_s": round((datetime.now(timezone.utc) - newest_kafka_time).total_seconds(), 3)}
