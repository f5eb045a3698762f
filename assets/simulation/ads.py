"""Simulated ad events: impressions, clicks (CTR ~2%) and conversions (~10% of clicks) from a pool of users,
with fraud-like click bursts from single users and a share of malformed messages. Keyed by campaign_id."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

from assets.simulation.iot import SimulatorConfig, SimulatorStats

CAMPAIGNS = [f"cmp-{i:03d}" for i in range(12)]
CTR = 0.015
CONVERSION_RATE = 0.10
BURST_SHARE = 0.0003  # impressions that trigger a burst of 20-50 clicks from one user (click fraud)


def generate_ads(cfg: SimulatorConfig, stats: SimulatorStats) -> Iterator[tuple[bytes | None, bytes]]:
    rng = random.Random(cfg.seed + 1)
    users = [f"user-{rng.getrandbits(48):012x}" for _ in range(max(50, cfg.sensors * 20))]
    ads = {c: [f"{c}-ad-{j}" for j in range(4)] for c in CAMPAIGNS}
    realtime = cfg.rate > 0
    # Bulk mode: impressions end 15 minutes back, so clicks and conversions after them are not in the future.
    end = (cfg.end or datetime.now(timezone.utc)) - timedelta(minutes=15)
    span = timedelta(seconds=max(60, cfg.events // 20))
    pending: list[dict] = []
    n = 0

    def emit(event: dict) -> tuple[bytes | None, bytes]:
        stats.produced += 1
        if rng.random() < cfg.malformed_share:
            stats.malformed += 1
            kind = rng.choice(["invalid_json", "negative_cost", "unknown_type", "missing_field"])
            stats.kinds[kind] = stats.kinds.get(kind, 0) + 1
            if kind == "invalid_json":
                return event["campaign_id"].encode(), json.dumps(event).encode()[: rng.randint(5, 40)]
            bad = dict(event)
            if kind == "negative_cost":
                bad["cost"] = -abs(event["cost"]) - 1
            elif kind == "unknown_type":
                bad["event_type"] = "viewability"
            else:
                bad.pop(rng.choice(["campaign_id", "user_id", "cost"]))
            return event["campaign_id"].encode(), json.dumps(bad).encode()
        return event["campaign_id"].encode(), json.dumps(event).encode()

    while cfg.events <= 0 or stats.produced < cfg.events:
        if pending:
            event = pending.pop(0)
        else:
            n += 1
            ts = datetime.now(timezone.utc) if realtime else end - span + span * (n / max(1, cfg.events))
            campaign = rng.choice(CAMPAIGNS)
            event = {
                "event_id": f"imp-{cfg.seed}-{n}", "event_type": "impression", "campaign_id": campaign,
                "ad_id": rng.choice(ads[campaign]), "user_id": rng.choice(users), "cost": round(rng.uniform(0.001, 0.004), 6),
                "ts": ts.isoformat(timespec="milliseconds"),
            }  # fmt: skip
            clicked = ts
            if rng.random() < CTR:
                clicked = ts + timedelta(seconds=rng.uniform(1, 30)) if not realtime else ts
                pending.append({**event, "event_id": f"clk-{cfg.seed}-{n}", "event_type": "click", "cost": round(rng.uniform(0.2, 1.5), 4), "ts": clicked.isoformat(timespec="milliseconds")})
                if rng.random() < CONVERSION_RATE:
                    conv = clicked + timedelta(seconds=rng.uniform(5, 600)) if not realtime else clicked
                    pending.append({**event, "event_id": f"cnv-{cfg.seed}-{n}", "event_type": "conversion", "cost": 0.0, "ts": conv.isoformat(timespec="milliseconds")})
            if rng.random() < BURST_SHARE:
                for k in range(rng.randint(20, 50)):
                    at = clicked + timedelta(milliseconds=200 * (k + 1)) if not realtime else clicked
                    pending.append({**event, "event_id": f"brst-{cfg.seed}-{n}-{k}", "event_type": "click", "cost": 0.5, "ts": at.isoformat(timespec="milliseconds")})
        key, value = emit(event)
        yield key, value
        if rng.random() < cfg.duplicate_share and (cfg.events <= 0 or stats.produced < cfg.events):  # a producer retry
            stats.produced += 1
            stats.duplicates += 1
            yield key, value
