"""The ad-events stream: pseudonymised users, deduplication, attribution, campaign Gold, the ClickHouse rollup."""

import dataclasses
import hashlib
import hmac
import json
import uuid
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest

from assets.bronze import bronze_rules
from assets.spec import SilverContext
from assets.streams.ads import ADS
from assets.transforms import ads as transforms
from assets.transforms.bronze import parse_messages
from assets.transforms.dedup import derive_silver
from confluent_kafka import Message

from tests.helpers import definitions, run_ingest, sensor_tick

KEY = b"test-pii-key"
T0 = datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)
CTX = SilverContext("2026-11-20", datetime(2026, 11, 20, 23, tzinfo=timezone.utc), "test", pii_key=KEY)


def event(i: str, kind: str, at: datetime, user: str = "alice", ad: str = "ad-1", campaign: str = "cmp-1", cost: float = 0.5) -> dict:
    return {"event_id": i, "event_type": kind, "campaign_id": campaign, "ad_id": ad, "user_id": user, "cost": cost, "ts": at.isoformat()}


def bronze(*events: dict) -> pl.DataFrame:
    msgs = [Message(topic="t", partition=0, offset=n, key=e["campaign_id"].encode(), value=json.dumps(e).encode(), timestamp=(1, 0)) for n, e in enumerate(events)]
    return parse_messages(msgs, bronze_rules(ADS), T0 + timedelta(days=3)).bronze


def derive(rows: pl.DataFrame, context, ctx):
    """The platform's Silver derivation for the ads spec (dedup on event_id, then the ads transform)."""
    return derive_silver(ADS, rows, context, ctx)


def pseudonym(user: str, key: bytes = KEY) -> str:
    return hmac.new(key, user.encode(), hashlib.sha256).hexdigest()


def test_silver_pseudonymises_users_and_keeps_no_raw_id():
    out = derive(bronze(event("i1", "impression", T0), event("i2", "impression", T0, user="bob")), None, CTX)
    assert "user_id" not in out.rows.columns
    assert out.rows["user_key"].to_list() == [pseudonym("alice"), pseudonym("bob")]
    other = derive(bronze(event("i1", "impression", T0)), None, dataclasses.replace(CTX, pii_key=b"another-key"))
    assert other.rows["user_key"].to_list() != [pseudonym("alice")]
    with pytest.raises(ValueError, match="PII key"):
        derive(bronze(event("i1", "impression", T0)), None, dataclasses.replace(CTX, pii_key=None))


def test_clicks_and_conversions_credit_the_users_latest_earlier_impression_of_the_ad():
    rows = bronze(
        event("i1", "impression", T0),
        event("i2", "impression", T0 + timedelta(minutes=5)),
        event("i3", "impression", T0 + timedelta(minutes=6), user="bob"),  # another user
        event("i4", "impression", T0 + timedelta(minutes=7), ad="ad-2"),  # another ad
        event("c1", "click", T0 + timedelta(minutes=10)),
        event("v1", "conversion", T0 + timedelta(minutes=20), cost=0.0),
        event("c2", "click", T0 + timedelta(minutes=1), user="carol"),  # never saw an impression
        event("c3", "click", T0 + timedelta(hours=30)),  # outside the 24 h window
    )
    out = derive(rows, None, CTX).rows
    credited = dict(zip(out["event_id"], out["attributed_impression_id"]))
    assert credited == {"i1": None, "i2": None, "i3": None, "i4": None, "c1": "i2", "v1": "i2", "c2": None, "c3": None}


def test_a_click_after_midnight_credits_yesterdays_impression_through_context():
    yesterday = derive(bronze(event("i0", "impression", T0 - timedelta(hours=11))), None, CTX).rows
    out = derive(bronze(event("c1", "click", T0 - timedelta(hours=9, minutes=50))), yesterday, CTX).rows
    assert out["attributed_impression_id"].to_list() == ["i0"]


def test_duplicates_are_dropped_and_conflicting_copies_set_aside():
    out = derive(
        bronze(event("i1", "impression", T0), event("i1", "impression", T0), event("i1", "impression", T0, cost=9.0)), None, CTX
    )
    assert out.rows["event_id"].to_list() == ["i1"]
    assert out.duplicates_dropped == 1
    assert out.rejected["reason"].to_list() == ["duplicate event_id with different content (first seen at 0/0)"]


def test_campaign_daily_counts_spend_and_ratios():
    rows = bronze(
        *[event(f"i{n}", "impression", T0, cost=0.002) for n in range(50)],
        event("c1", "click", T0 + timedelta(minutes=1), cost=1.0),
        event("c2", "click", T0 + timedelta(minutes=2), user="dave", cost=0.5),  # unattributed
        event("v1", "conversion", T0 + timedelta(minutes=3), cost=0.0),
        event("i99", "impression", T0, campaign="cmp-2", cost=0.002),
    )
    gold = transforms.gold_campaign_daily(derive(rows, None, CTX).rows)
    first = gold.filter(pl.col("campaign_id") == "cmp-1").row(0, named=True)
    assert (first["impressions"], first["clicks"], first["conversions"], first["attributed_clicks"]) == (50, 2, 1, 1)
    assert first["spend"] == pytest.approx(50 * 0.002 + 1.5)
    assert first["ctr"] == pytest.approx(2 / 50) and first["cpc"] == pytest.approx(first["spend"] / 2) and first["conversion_rate"] == 0.5
    second = gold.filter(pl.col("campaign_id") == "cmp-2").row(0, named=True)
    assert second["clicks"] == 0 and second["ctr"] == 0.0 and second["cpc"] is None and second["conversion_rate"] is None
    from assets.contracts.ads import CampaignDaily

    CampaignDaily.validate(gold)


def test_ads_end_to_end_no_raw_user_id_leaves_bronze_and_the_rollup_matches(kafka, resources, instance, monkeypatch):
    monkeypatch.setenv("MEDALLION_PII_KEY", "end-to-end-key")
    spec = dataclasses.replace(ADS, topic=f"test.ads.{uuid.uuid4().hex[:8]}")
    kafka.ensure_topics({spec.topic: spec.kafka_partitions, spec.dead_letter_topic: 1})
    now = datetime.now(timezone.utc)
    day = spec.partitions.get_last_partition_key()
    start = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    at = max(start, now - timedelta(hours=1))
    users = [f"secret-user-{n}@example.com" for n in range(5)]
    events = [event(f"i{n}", "impression", at, user=users[n % 5], campaign=f"cmp-{n % 2}", cost=0.002) for n in range(40)]
    events += [event(f"c{n}", "click", at + timedelta(seconds=5), user=users[n % 5], campaign=f"cmp-{n % 2}", cost=0.4) for n in range(4)]
    events += [event("bad", "click", at, user=users[0], cost=-3.0)]  # negative cost: quarantined
    p = kafka.producer()
    for e in events:
        p.produce(spec.topic, key=e["campaign_id"].encode(), value=json.dumps(e).encode())
    p.flush(10)

    defs = definitions(spec, resources)
    request = sensor_tick(defs, spec, instance).run_requests[0]
    assert request.partition_key == day
    assert run_ingest(defs, spec, instance, request).success
    lake, wh = resources["lake"], resources["warehouse"]
    silver = lake.read("silver", spec.name, "silver", [day])
    quarantine = lake.read("quarantine", spec.name, "silver", [day])
    assert silver.height == 44 and quarantine.height == 1
    assert quarantine["reason"].to_list()[0].startswith("cost:") and quarantine["payload"].to_list() == [None]
    assert quarantine["user_id"].to_list() == [pseudonym(users[0], b"end-to-end-key")]
    # The raw ids are in Bronze and nowhere else: Silver, quarantine, Gold files and the warehouse.
    for layer in ("silver", "quarantine", "gold"):
        for path in (lake.local_root / layer / spec.name).rglob("*"):
            if path.is_file():  # data files and the Delta log alike
                blob = path.read_bytes()
                assert not any(u.encode() in blob for u in users), path
    assert any(users[0].encode() in f.read_bytes() for f in (lake.local_root / "bronze" / spec.name).rglob("*.parquet"))
    gold = wh.query_arrow("SELECT campaign_id, impressions, clicks FROM ads_campaign_daily ORDER BY campaign_id").to_pylist()
    assert gold == [{"campaign_id": "cmp-0", "impressions": 20, "clicks": 2}, {"campaign_id": "cmp-1", "impressions": 20, "clicks": 2}]
    rollup = wh.query_arrow(
        "SELECT campaign_id, sumMerge(impressions) AS i, sumMerge(clicks) AS c, uniqMerge(active_days) AS d "
        "FROM ads_campaign_monthly GROUP BY campaign_id ORDER BY campaign_id"
    ).to_pylist()
    assert rollup == [{"campaign_id": "cmp-0", "i": 20, "c": 2, "d": 1}, {"campaign_id": "cmp-1", "i": 20, "c": 2, "d": 1}]
    # Reloading the day is idempotent for the table and its rollup.
    from tests.helpers import materialize

    assert materialize(defs, ["warehouse_ads_campaign_daily"], day, instance).success
    again = wh.query_arrow("SELECT sumMerge(impressions) AS i FROM ads_campaign_monthly").to_pylist()
    assert again == [{"i": 40}]
    tables = wh.query_arrow("SELECT name, engine FROM system.tables WHERE database = currentDatabase()").to_pylist()
    engines = {r["name"]: r["engine"] for r in tables}
    assert engines["ads_campaign_monthly"] == "AggregatingMergeTree" and engines["ads_campaign_monthly_mv"] == "MaterializedView"
