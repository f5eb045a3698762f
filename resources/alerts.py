"""Alerts to a Slack-compatible incoming webhook (MEDALLION_ALERT_WEBHOOK).

The payload is Slack's: `{"text": ..., "blocks": [...]}`; Mattermost, Rocket.Chat, Teams workflows and most
chat tools accept it. Unset, alerts are only logged (the embedded default has nowhere to send them).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request

import dagster as dg

log = logging.getLogger(__name__)


class AlertDeliveryError(RuntimeError):
    pass


class AlertWebhook(dg.ConfigurableResource):
    """Where alerts go; configured by `MEDALLION_ALERT_WEBHOOK` (a secret: it usually embeds a token)."""

    url: str | None = None
    ui_url: str | None = None  # the Dagster UI's address, for links in alerts (MEDALLION_UI_URL)
    timeout_s: float = 5.0
    attempts: int = 3

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def link(self, path: str) -> str | None:
        return f"{self.ui_url.rstrip('/')}/{path.lstrip('/')}" if self.ui_url else None

    def send(self, title: str, fields: dict[str, object], link: str | None = None) -> bool:
        """Post one alert; False if no webhook is configured. Raises AlertDeliveryError after the retries, so
        a sensor's tick fails and its cursor stays put: the alert is sent again on the next tick."""
        text = f"{title}\n" + "\n".join(f"• {k}: {v}" for k, v in fields.items())
        if not self.enabled:
            log.warning("alert (no MEDALLION_ALERT_WEBHOOK set): %s", text)
            return False
        body = {
            "text": text,
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
                {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in list(fields.items())[:10]]},
            ],
        }
        if link:
            body["blocks"].append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"<{link}|Open in Dagster>"}]})
        data = json.dumps(body, default=str).encode()
        last: Exception | None = None
        for attempt in range(self.attempts):
            req = urllib.request.Request(self.url, data=data, headers={"Content-Type": "application/json"}, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    if 200 <= resp.status < 300:
                        return True
                    last = AlertDeliveryError(f"webhook answered HTTP {resp.status}")
            except (urllib.error.URLError, OSError) as e:
                last = e
            time.sleep(0.5 * (attempt + 1))
        # The URL may hold a token: name only the host.
        host = urllib.parse.urlsplit(self.url).hostname
        raise AlertDeliveryError(f"alert webhook at {host} failed after {self.attempts} attempts: {last}")
