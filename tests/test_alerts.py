"""Alerts reach a real HTTP webhook: a failed contract check and a failed run each post Slack-style JSON."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from medallion.definitions import build_definitions
from medallion.driver import drive
from resources.alerts import AlertDeliveryError, AlertWebhook
from tests.conftest import produce, reading

H = datetime(2026, 11, 20, 7, 0, tzinfo=timezone.utc)
PK = "2026-11-20-07:00"


class Receiver:
    """A local webhook endpoint: records what it is sent; answers `status`."""

    def __init__(self):
        self.received: list[dict] = []
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.status == 200:
                    outer.received.append({"path": self.path, "content_type": self.headers["Content-Type"], "body": json.loads(body)})
                self.send_response(outer.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/T000/B000/secret-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _tick(defs, name, instance, cursor=None):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources=defs.resources, definitions=defs)
    return defs.resolve_sensor_def(name).evaluate_tick(ctx)


def test_failed_contract_check_and_failed_run_alert_the_webhook(spec, resources, instance, kafka, receiver):
    alerts = AlertWebhook(url=receiver.url, ui_url="http://dagster.example:3000")
    defs = build_definitions((spec,), {**resources, "alerts": alerts})
    checks0 = _tick(defs, "alert_on_check_failure", instance)
    runs0 = _tick(defs, "alert_on_run_failure", instance)
    assert receiver.received == []

    produce(kafka, spec.topic, [reading(i, H + timedelta(seconds=i), sensor=i % 4) for i in range(200)])
    assert not drive(defs, instance, (spec,), timeout_s=300).failed_runs
    checks1 = _tick(defs, "alert_on_check_failure", instance, checks0.cursor)
    assert receiver.received == [] and checks1.skip_message  # passing checks alert nobody

    # A micro-batch of 60 rows outside the physical range: Silver's blocking contract check fails, its run fails.
    produce(kafka, spec.topic, [reading(1000 + i, H + timedelta(seconds=300 + i), sensor=i % 4, value=900.0) for i in range(60)])
    log = drive(defs, instance, (spec,), timeout_s=300)
    assert log.failed_runs

    checks2 = _tick(defs, "alert_on_check_failure", instance, checks1.cursor)
    assert len(receiver.received) == 1
    msg = receiver.received[0]
    assert msg["content_type"] == "application/json" and msg["path"] == "/hooks/T000/B000/secret-token"
    text = msg["body"]["text"]
    assert text.startswith("Contract check failed: silver_iot:contract")
    assert f"partition: {PK}" in text and "failed_rows: 60 of 60" in text and "value_within_physical_range" in text
    assert msg["body"]["blocks"][0]["type"] == "header"
    assert "http://dagster.example:3000/runs/" in json.dumps(msg["body"]["blocks"])
    # Each failure is reported once.
    assert _tick(defs, "alert_on_check_failure", instance, checks2.cursor).skip_message
    assert len(receiver.received) == 1

    _tick(defs, "alert_on_run_failure", instance, runs0.cursor)
    run_alerts = [m["body"]["text"] for m in receiver.received[1:]]
    failed_ids = {f.split()[-1] for f in log.failed_runs}
    assert len(run_alerts) == len(failed_ids)
    assert all(t.startswith("Run failed: ") for t in run_alerts)
    assert {line.split(": ")[1] for t in run_alerts for line in t.splitlines() if line.startswith("• run_id")} == failed_ids
    assert any(f"partition: {PK}" in t and "silver_iot" in t for t in run_alerts)


def test_webhook_down_fails_the_tick_and_the_alert_is_sent_when_it_is_back(spec, resources, instance, kafka, receiver):
    alerts = AlertWebhook(url=receiver.url, attempts=2)
    defs = build_definitions((spec,), {**resources, "alerts": alerts})
    cursor = _tick(defs, "alert_on_check_failure", instance).cursor
    bad = [reading(i, H + timedelta(seconds=i), sensor=i % 4, value=900.0) for i in range(50)]
    produce(kafka, spec.topic, bad)
    drive(defs, instance, (spec,), timeout_s=300)

    receiver.status = 503
    with pytest.raises(AlertDeliveryError, match=r"alert webhook at 127\.0\.0\.1 failed after 2 attempts") as err:
        _tick(defs, "alert_on_check_failure", instance, cursor)
    assert "secret-token" not in str(err.value)  # the token in the URL is not leaked into logs
    receiver.status = 200
    _tick(defs, "alert_on_check_failure", instance, cursor)
    assert [m["body"]["text"].splitlines()[0] for m in receiver.received] == ["Contract check failed: silver_iot:contract"]


def test_no_webhook_configured_logs_instead(caplog):
    assert AlertWebhook().send("Run failed: x", {"run_id": "1"}) is False
    assert "no MEDALLION_ALERT_WEBHOOK set" in caplog.text
