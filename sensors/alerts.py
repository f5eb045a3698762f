"""Alerts: a failed run, and a failed data-quality (contract) check, each post one message to the webhook."""

from __future__ import annotations

import json
import time

import dagster as dg

from assets import keys
from assets.promotion import CONTRACT_CHECK
from assets.spec import StreamSpec
from resources.alerts import AlertWebhook
from sensors.tick import SensorResources, tick_instance

# On its very first tick the check sensor reports failures this recent, not the instance's whole history.
FIRST_TICK_LOOKBACK_S = 3600


@dg.run_failure_sensor(
    name="alert_on_run_failure",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=5,
    description="Posts every failed run (with its first error) to MEDALLION_ALERT_WEBHOOK.",
)
def alert_on_run_failure(context: dg.RunFailureSensorContext, alerts: AlertWebhook) -> None:
    run = context.dagster_run
    error = context.failure_event.message or ""
    step_errors = [e.message for e in context.get_step_failure_events()]
    fields = {
        "job": run.job_name,
        "run_id": run.run_id,
        "partition": run.tags.get("dagster/partition", "-"),
        "stream": run.tags.get("medallion/stream", "-"),
        "error": (step_errors[0] if step_errors else error)[:500],
    }
    alerts.send(f"Run failed: {run.job_name}", fields, link=alerts.link(f"runs/{run.run_id}"))


def contract_check_keys(streams: tuple[StreamSpec, ...]) -> list[dg.AssetCheckKey]:
    out = []
    for spec in streams:
        out.append(dg.AssetCheckKey(keys.silver_key(spec), CONTRACT_CHECK))
        out += [dg.AssetCheckKey(keys.gold_key(spec, t), CONTRACT_CHECK) for t in spec.gold]
    return out


def _send_check_alert(alerts: AlertWebhook, name: str, rec, instance: dg.DagsterInstance) -> None:
    meta = {k: v.value for k, v in rec.evaluation.metadata.items()}
    run = instance.get_run_by_id(rec.run_id)
    partition = rec.partition or rec.evaluation.partition or (run.tags.get("dagster/partition") if run else None)
    alerts.send(
        f"Contract check failed: {name}",
        {
            "asset": rec.key.asset_key.to_user_string(),
            "partition": partition or "-",
            "failed_rows": f"{meta.get('failed_rows', '?')} of {meta.get('rows_checked', '?')}",
            "failures_by_check": json.dumps(meta.get("failures_by_check", {}), default=str)[:400],
            "published": meta.get("published", False),
            "run_id": rec.run_id,
        },
        link=alerts.link(f"runs/{rec.run_id}"),
    )


def build_check_failure_alert(streams: tuple[StreamSpec, ...], resources) -> dg.SensorDefinition:
    """`resources`: the definitions' (it takes `alerts`)."""
    check_keys = contract_check_keys(streams)
    tick_resources = SensorResources(resources, "alerts")

    @dg.sensor(
        name="alert_on_check_failure",
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=5,
        description="Posts every failed contract check (the partition was not promoted) to MEDALLION_ALERT_WEBHOOK.",
    )
    def alert_on_check_failure(context: dg.SensorEvaluationContext):
        instance = tick_instance(context)
        alerts: AlertWebhook = tick_resources().alerts
        # Cursor per check key: `w`, the record id up to which everything is settled, and `sent`, the
        # failures above it already alerted. A record is created PLANNED and updated in place (same id) when
        # its evaluation lands, so a planned check of a running run holds the watermark back until it settles.
        state: dict[str, dict] = json.loads(context.cursor) if context.cursor else {}
        first_tick = context.cursor is None
        sent = 0
        for check_key in check_keys:
            name = check_key.to_user_string()
            mark = state.get(name, {"w": 0, "sent": []})
            done, pending = set(mark["sent"]), []
            records = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=200)
            for rec in sorted((r for r in records if r.id > mark["w"]), key=lambda r: r.id):
                if rec.status.value == "PLANNED":
                    run = instance.get_run_by_id(rec.run_id)
                    if run is not None and not run.is_finished:
                        pending.append(rec.id)
                    continue
                recent = time.time() - rec.create_timestamp < FIRST_TICK_LOOKBACK_S
                if rec.status.value == "FAILED" and rec.id not in done and (recent or not first_tick):
                    _send_check_alert(alerts, name, rec, instance)
                    sent += 1
                done.add(rec.id)
            top = max([mark["w"], *(r.id for r in records)])
            w = min(pending) - 1 if pending else top
            state[name] = {"w": w, "sent": sorted(i for i in done if i > w)}
        # A failed delivery raises before this: the tick fails, the cursor stays, the alerts go out next tick.
        context.update_cursor(json.dumps(state))
        if not sent:
            return dg.SkipReason("no new failed contract checks")

    return alert_on_check_failure
