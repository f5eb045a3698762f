"""Counts from every layer, and the reconciliation users rely on: consumed = Bronze + dead-letter (+ rows erased
from them for data subjects, see assets/erasure.py), Gold = warehouse."""

from __future__ import annotations

import dagster as dg

from assets import keys
from assets.bronze import ingest_totals
from assets.erasure import erased_source_rows
from assets.promotion import CONTRACT_CHECK
from assets.spec import StreamSpec
from resources.kafka import KafkaResource
from resources.lake import LakeResource
from resources.warehouse import WarehouseResource


def latest_check_results(instance: dg.DagsterInstance, check_key: dg.AssetCheckKey) -> dict[str | None, bool]:
    """Latest outcome per partition of one asset check."""
    latest: dict[str | None, bool] = {}
    for rec in instance.event_log_storage.get_asset_check_execution_history(check_key, limit=100_000):
        status = rec.status.value  # PLANNED / SKIPPED evaluations say nothing about the data
        if status in ("SUCCEEDED", "FAILED") and rec.partition not in latest:
            latest[rec.partition] = status == "SUCCEEDED"
    return latest


def stream_summary(spec: StreamSpec, lake: LakeResource, warehouse: WarehouseResource, kafka: KafkaResource | None, instance: dg.DagsterInstance | None) -> dict:
    consumed = ingest_totals(lake, spec)["consumed"]
    bronze_rows = lake.count_bronze(spec.name)
    dead = lake.count_dead_letter(spec.name)
    erased = erased_source_rows(lake, spec.name)  # Bronze + dead-letter rows removed by erasure requests
    gold = {keys.warehouse_table(spec, t): lake.count_rows("gold", spec.name, t.name) for t in spec.gold}
    wh = {}
    for t in spec.gold:
        name = keys.warehouse_table(spec, t)
        try:
            wh[name] = warehouse.count(name)
        except Exception:  # table not created yet: nothing loaded
            wh[name] = 0
    backlog = None
    if kafka is not None:
        committed = lake.committed_offsets(spec.name, spec.topic, kafka.partitions(spec.topic))
        ends = kafka.log_ends(spec.topic, committed)
        backlog = sum(ends[p] - committed[p] for p in committed)
    checks = {}
    if instance is not None:
        check_keys = [dg.AssetCheckKey(keys.silver_key(spec), CONTRACT_CHECK)] + [
            dg.AssetCheckKey(keys.gold_key(spec, t), CONTRACT_CHECK) for t in spec.gold
        ]
        for ck in check_keys:
            results = latest_check_results(instance, ck)
            checks[ck.to_user_string()] = bool(results) and all(results.values())
    # A Bronze partition neither Silver nor quarantine has anything of was never derived (late data waiting).
    derived = set(lake.published_keys("silver", spec.name, "silver")) | set(lake.published_keys("quarantine", spec.name, "silver"))
    underived = sorted(set(lake.bronze_partition_keys(spec.name)) - derived)
    reconciled = consumed == bronze_rows + dead + erased and gold == wh and (backlog in (None, 0)) and not underived
    return {
        "consumed": consumed,
        "bronze_rows": bronze_rows,
        "dead_letter_rows": dead,
        "erased_rows": erased,
        "unconsumed_backlog": backlog,
        "silver_rows": lake.count_rows("silver", spec.name, "silver"),
        "quarantined_rows": lake.count_rows("quarantine", spec.name, "silver"),
        "underived_partitions": underived,
        "gold_rows": gold,
        "warehouse_rows": wh,
        "checks": checks,
        "reconciled": reconciled,
    }


def platform_summary(streams, lake, warehouse, kafka, instance) -> dict:
    """Per stream figures plus platform totals (the keys `medallion demo --json` promises)."""
    per_stream = {s.name: stream_summary(s, lake, warehouse, kafka, instance) for s in streams}
    total = {
        k: sum(v[k] for v in per_stream.values())
        for k in ("consumed", "bronze_rows", "dead_letter_rows", "erased_rows", "silver_rows", "quarantined_rows")
    }
    return {
        **total,
        "gold_rows": {t: n for v in per_stream.values() for t, n in v["gold_rows"].items()},
        "warehouse_rows": {t: n for v in per_stream.values() for t, n in v["warehouse_rows"].items()},
        "checks": {c: ok for v in per_stream.values() for c, ok in v["checks"].items()},
        "reconciled": all(v["reconciled"] for v in per_stream.values()),
        "streams": per_stream,
    }
