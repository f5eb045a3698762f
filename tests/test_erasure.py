"""Erasure of one data subject: gone from every layer, nothing else changed, audited without the raw id."""

import dataclasses
import fcntl
import hashlib
import hmac
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import unquote

import polars as pl
import pytest

from assets.erasure import AUDIT_LOG, Subject, erase, erasure_job, payload_mentions, pending_requests, submit_request, subject_kinds
from assets.streams.ads import ADS
from medallion.summary import platform_summary
from assets.gold import gold_source
from resources.delta import add_actions, delta_frame
from resources.lake import LakeResource, LakeTable
from resources.warehouse import WarehouseResource
from tests.conftest import ON_BOTH_LAKES, produce, reading
from tests.helpers import content_hash, lake_objects, materialize, run_ingest
from medallion.definitions import build_definitions

PII_KEY = "erasure-test-key"
T = datetime(2026, 11, 20, 4, 0, tzinfo=timezone.utc)
HOURS = ["2026-11-20-04:00", "2026-11-20-05:00", "2026-11-20-06:00"]
DAYS = ["2026-11-19", "2026-11-20"]
SENSOR = "sensor-3"  # the IoT subject: in hours 04 and 05, not 06
USER = "erase-me@example.com"  # the ads subject: on 2026-11-20 only
USERS = ["keep-1@example.com", "keep-2@example.com", "keep-3@example.com", USER]
IOT_ASSETS = ["silver_iot", "gold_iot_sensor_5m", "gold_iot_location_hourly", "warehouse_iot_sensor_5m", "warehouse_iot_location_hourly"]
ADS_ASSETS = ["silver_ads", "gold_ads_campaign_daily", "warehouse_ads_campaign_daily"]


def pseudonym(value: str) -> str:
    return hmac.new(PII_KEY.encode(), value.encode(), hashlib.sha256).hexdigest()


def ad(i: str, kind: str, at: datetime, user: str, campaign: str, cost: float = 0.01) -> dict:
    return {"event_id": i, "event_type": kind, "campaign_id": campaign, "ad_id": f"ad-{campaign}", "user_id": user, "cost": cost, "ts": at.isoformat()}


def iot_records() -> list:
    out, i = [], 0
    for h in range(3):
        for sensor in range(6):
            if sensor == 3 and h == 2:
                continue
            kind = "temperature" if sensor % 2 == 0 else "humidity"
            for k in range(20):
                out.append(reading(i, T + timedelta(hours=h, minutes=3 * k, seconds=sensor), sensor=sensor, sensor_type=kind))
                i += 1
    # One impossible reading of the subject and one of another sensor: quarantined.
    out.append(reading(9001, T + timedelta(minutes=7, seconds=30), sensor=3, sensor_type="humidity", value=500.0))
    out.append(reading(9002, T + timedelta(minutes=8, seconds=30), sensor=1, sensor_type="humidity", value=500.0))
    # Dead letters. Erased: unparseable bytes holding the quoted id; bytes that are not UTF-8 keyed by the
    # id; a JSON object (no event time) whose sensor_id is the id. Kept: another sensor whose id starts
    # like the subject's, plain garbage, another sensor's object.
    out += [
        (b"gateway-1", b'{"sensor_id": "sensor-3", "value": 1.0'),
        (b"sensor-3", b"\xff\xfe"),
        (b"gateway-2", json.dumps({"event_id": "d1", "sensor_id": SENSOR, "value": 1.0}).encode()),
        (b"gateway-1", b'{"sensor_id": "sensor-33", "value": 1.0'),
        (b"sensor-1", b"{oops"),
        (b"gateway-2", json.dumps({"event_id": "d2", "sensor_id": "sensor-1", "value": 1.0}).encode()),
    ]
    return out


def ads_records() -> list:
    out = []
    for d, day in enumerate((T - timedelta(days=1), T)):
        users = USERS if d == 1 else USERS[:3]
        for n in range(60):
            user, campaign = users[n % len(users)], f"cmp-{n % 3}"
            out.append(ad(f"i{d}-{n}", "impression", day + timedelta(minutes=n), user, campaign))
            if n % 5 == 0:
                out.append(ad(f"c{d}-{n}", "click", day + timedelta(minutes=n, seconds=30), user, campaign, cost=0.4))
    out.append(ad("neg-1", "click", T + timedelta(hours=2), USER, "cmp-0", cost=-3.0))  # quarantined
    out.append(ad("neg-2", "click", T + timedelta(hours=2), USERS[0], "cmp-0", cost=-3.0))  # quarantined, kept
    bad_ts = ad("dl-1", "click", T, USER, "cmp-1")
    bad_ts["ts"] = "yesterday"
    kept_bad_ts = ad("dl-2", "click", T, USERS[1], "cmp-1")
    kept_bad_ts["ts"] = "yesterday"
    out += [
        (b"cmp-1", json.dumps(bad_ts).encode()),
        (b"cmp-1", b'{"user_id": "erase-me@example.com", "event_type": "cli'),
        (b"cmp-1", json.dumps(kept_bad_ts).encode()),
        (b"cmp-2", b'{"user_id": "keep-2@example.com", "event_type": "cli'),
    ]
    return out


def keyed_by(records: list, field: str) -> list:
    return [(str(r[field]).encode(), json.dumps(r).encode()) if isinstance(r, dict) else r for r in records]


@pytest.fixture
def platform(kafka, medallion_home, monkeypatch, instance, lake_kind, request):
    """Both streams on topics of their own, run through every layer, with the lake and warehouse where
    `medallion` finds them for this MEDALLION_HOME (so the CLI sees the same data)."""
    monkeypatch.setenv("MEDALLION_PII_KEY", PII_KEY)
    from assets.streams.iot import IOT

    iot = dataclasses.replace(IOT, topic=f"test.iot.{uuid.uuid4().hex[:8]}")
    ads = dataclasses.replace(ADS, topic=f"test.ads.{uuid.uuid4().hex[:8]}")
    for s in (iot, ads):
        kafka.ensure_topics({s.topic: s.kafka_partitions, s.dead_letter_topic: 1})
    produce(kafka, iot.topic, keyed_by(iot_records(), "sensor_id"))
    produce(kafka, ads.topic, keyed_by(ads_records(), "campaign_id"))
    resources = {
        "kafka": kafka,
        # Local: where `medallion` finds it for this MEDALLION_HOME; S3: the environment names it.
        "lake": LakeResource(uri=str(medallion_home / "lake")) if lake_kind == "local" else request.getfixturevalue("lake"),
        "warehouse": WarehouseResource(chdb_path=str(medallion_home / "warehouse")),
    }
    defs = build_definitions((iot, ads), resources)
    for spec in (iot, ads):
        assert run_ingest(defs, spec, instance).success
    for pk in HOURS:
        assert materialize(defs, IOT_ASSETS, pk, instance).success
    for day in DAYS:
        assert materialize(defs, ["gold_iot_type_daily", "warehouse_iot_type_daily"], day, instance).success
        assert materialize(defs, ADS_ASSETS, day, instance).success
    return iot, ads, resources, medallion_home


# -- what "the subject's rows" are, stated independently of the implementation -------------------------
def _is_subject(layer: str, stream: str, df: pl.DataFrame) -> pl.Series:
    ident, col = (USER, "user_id") if stream == "ads" else (SENSOR, "sensor_id")
    if layer == "bronze":
        hit = df[col] == ident
        return (hit | (df["kafka_key"] == ident)) if stream == "iot" else hit
    if layer in ("silver", "history"):
        return df["user_key" if stream == "ads" else "sensor_id"] == (pseudonym(USER) if stream == "ads" else SENSOR)
    if layer == "quarantine":
        return df[col] == (pseudonym(USER) if stream == "ads" else SENSOR)
    if layer == "dead_letter":
        return pl.Series([(k == ident) or (f'"{ident}"'.encode() in p) for k, p in zip(df["kafka_key"], df["payload"])])
    if "sensor_id" in df.columns:  # gold
        return df["sensor_id"] == ident
    return pl.Series([False] * df.height)


def _layer_of(t: LakeTable) -> str:
    """The history Silver hands on (`history_<stream>`) counts as its own layer."""
    return "history" if t.table == "history" else t.layer


def snapshot(lake: LakeResource, streams) -> dict:
    """The data files each table's latest version references: (table, path) -> (table, partition, rows)."""
    out = {}
    for t in lake.tables(streams):
        dt = lake.open(t)
        if dt is None:
            continue
        for row in add_actions(dt).iter_rows(named=True):
            out[(t.name, row["path"])] = (t, row.get("partition.partition_key"), row["num_records"])
    return out


def frames(lake: LakeResource, snap: dict) -> dict:
    fs, root = lake.filesystem()
    out = {}
    for key, (t, _, _) in snap.items():
        with fs.open_input_file(f"{root}/{t.path}/{unquote(key[1])}") as f:
            out[key] = pl.read_parquet(f.read())
    return out


def versions(lake: LakeResource, streams) -> dict:
    return {t.name: lake.version(t) for t in lake.tables(streams)}


def warehouse_rows(wh: WarehouseResource) -> dict:
    out = {}
    for t, order in [("iot_sensor_5m", "sensor_id, window_start"), ("iot_location_hourly", "location, sensor_type, hour_start"),
                     ("iot_type_daily", "sensor_type, day"), ("ads_campaign_daily", "campaign_id, day")]:  # fmt: skip
        out[t] = wh.query_arrow(f"SELECT * FROM {t} ORDER BY {order}").to_pylist()
    return out


def mentions(text: str, ident: str) -> bool:
    return re.search(rf"(?<![\w.@-]){re.escape(ident)}(?![\w.@-])", text) is not None


def held(lock: Path) -> bool:
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def cli_start(home: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "MEDALLION_HOME": str(home)}
    env.pop("MEDALLION_FAILPOINT", None)
    return subprocess.Popen([sys.executable, "-m", "medallion.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cli(home: Path, *args: str, failpoint: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDALLION_HOME": str(home), **(env or {})}
    env.pop("MEDALLION_FAILPOINT", None)
    if failpoint:
        env["MEDALLION_FAILPOINT"] = failpoint
    return subprocess.run([sys.executable, "-m", "medallion.cli", *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@ON_BOTH_LAKES
def test_erasure_removes_the_subject_everywhere_and_changes_nothing_else(platform, instance, kafka):
    iot, ads, resources, home = platform
    lake, wh = resources["lake"], resources["warehouse"]
    streams = (iot, ads)
    before = snapshot(lake, streams)
    before_frames = frames(lake, before)
    before_wh = warehouse_rows(wh)
    expected = {}
    for key, df in before_frames.items():
        t = before[key][0]
        layer = _layer_of(t)
        if layer in ("bronze", "dead_letter", "silver", "quarantine", "history"):
            expected[(layer, t.stream)] = expected.get((layer, t.stream), 0) + int(_is_subject(layer, t.stream, df).sum())
    assert expected[("bronze", "iot")] == 41 and expected[("bronze", "ads")] == 15 + 3 + 1  # readings; impressions, clicks, negative click
    assert expected[("quarantine", "iot")] == 1 and expected[("quarantine", "ads")] == 1
    assert expected[("dead_letter", "iot")] == 3 and expected[("dead_letter", "ads")] == 2
    assert expected[("history", "iot")] > 0 and expected[("history", "ads")] > 0  # the sensor's last readings, the user's impressions

    # IoT through the Dagster job (a filed request, as the UI launches it), ads through the CLI.
    request_id = submit_request(lake, Subject.parse(f"sensor:{SENSOR}"), "dpo@example.com")
    assert pending_requests(lake) == [request_id]
    if lake.local_root is not None:
        assert oct((lake.local_root / "_erasure_requests" / f"{request_id}.json").stat().st_mode & 0o777) == "0o600"
    job_result = erasure_job(streams).execute_in_process(
        run_config={"ops": {"erase_requested_subjects": {"config": {"request_ids": [request_id]}}}},
        resources={"lake": lake, "warehouse": wh},
        instance=instance,
    )
    assert job_result.success
    [by_job] = job_result.output_for_node("erase_requested_subjects")
    assert by_job["request_id"] == request_id and by_job["requested_by"] == "dpo@example.com"
    assert pending_requests(lake) == []  # the request (the one place the raw id was) is gone
    # Neither the run's config nor its event log (messages, metadata) names the subject.
    assert not mentions(repr(instance.get_run_by_id(job_result.run_id).run_config), SENSOR)
    assert not mentions("\n".join(repr(e) for e in instance.all_logs(job_result.run_id)), SENSOR)
    # An ingest of ads in progress (its lock held): the erasure waits for it, changing nothing meanwhile.
    after_job, after_job_versions = snapshot(lake, streams), versions(lake, streams)
    with lake.stream_lock("ads"):
        waiting = cli_start(home, "erase", "--subject", f"user:{USER}", "--json", "--requested-by", "ticket-4711")
        deadline = time.monotonic() + 60
        while not held(lake.lock_path("_erasure", "erase")):  # it is inside the erasure...
            assert waiting.poll() is None and time.monotonic() < deadline, waiting.stderr.read()[-2000:]
            time.sleep(0.2)
        with pytest.raises(subprocess.TimeoutExpired):  # ... and waits for the ingest
            waiting.wait(timeout=3)
        assert snapshot(lake, streams) == after_job and versions(lake, streams) == after_job_versions
    out, err = waiting.communicate(timeout=300)
    done = subprocess.CompletedProcess(waiting.args, waiting.returncode, out, err)
    assert done.returncode == 0, done.stderr[-3000:]
    by_cli = json.loads(done.stdout.strip().splitlines()[-1])
    assert USER not in done.stdout + done.stderr and pseudonym(USER) not in done.stdout

    for result, stream in ((by_job, "iot"), (by_cli, "ads")):
        for layer in ("bronze", "dead_letter", "silver", "quarantine", "history"):
            assert result["removed"][layer] == {stream: expected[(layer, stream)]}, (layer, result["removed"])
        assert result["total_removed"] == sum(n for t in result["removed"].values() for n in t.values())
    assert by_job["removed"]["gold"]["iot_sensor_5m"] == 2 * 12  # two hours of 5-minute windows
    assert by_job["removed"]["warehouse"]["iot_sensor_5m"] == 2 * 12
    assert by_job["partitions"]["silver"] == {"iot": HOURS[:2]} and by_cli["partitions"]["silver"] == {"ads": ["2026-11-20"]}
    assert by_job["partitions"]["gold"]["iot_type_daily"] == ["2026-11-20"]
    assert by_cli["partitions"]["warehouse"] == {"ads_campaign_daily": ["20261120"], "ads_campaign_monthly": ["202611"]}

    # Files: exactly those holding the subject were replaced (by their rows minus the subject's), and the
    # Gold partitions fed by them re-derived; every other data file is still referenced, untouched.
    after = snapshot(lake, streams)
    after_frames = frames(lake, after)
    gone = set(before) - set(after)
    holding = {k for k, df in before_frames.items() if _layer_of(before[k][0]) != "gold" and _is_subject(_layer_of(before[k][0]), before[k][0].stream, df).any()}
    gold_fed = {k for k, (t, pk, _) in before.items() if t.layer == "gold" and (
        (t.stream == "iot" and pk in ("2026-11-20-04:00", "2026-11-20-05:00", "2026-11-20")) or (t.stream == "ads" and pk == "2026-11-20"))}  # fmt: skip
    assert gone == holding | gold_fed
    assert any(t.layer == "bronze" and pk == "2026-11-20-06:00" for k, (t, pk, _) in after.items() if k in before)  # an untouched Bronze partition
    for t in lake.tables(streams):
        layer = _layer_of(t)
        for pk in {pk for k, (tt, pk, _) in before.items() if tt == t}:
            old = [before_frames[k] for k, (tt, p, _) in before.items() if tt == t and p == pk]
            new = [after_frames[k] for k, (tt, p, _) in after.items() if tt == t and p == pk]
            old_rows = pl.concat(old, how="vertical_relaxed")
            new_rows = pl.concat(new, how="vertical_relaxed") if new else old_rows.head(0)
            if layer != "gold":
                keep = old_rows.filter(~_is_subject(layer, t.stream, old_rows))
                assert content_hash(new_rows, ignore=()) == content_hash(keep, ignore=()), (t.name, pk)
            elif any(k in gold_fed for k, (tt, p, _) in before.items() if tt == t and p == pk):
                spec = iot if t.stream == "iot" else ads
                table = next(g for g in spec.gold if g.name == t.table)
                built = delta_frame(table.build(gold_source(spec, table, lake, pk)[1]))
                assert content_hash(new_rows, ignore=()) == content_hash(built, ignore=()), (t.name, pk)
                if "sensor_id" in old_rows.columns:
                    assert content_hash(new_rows, ignore=()) == content_hash(old_rows.filter(~_is_subject("gold", "iot", old_rows)), ignore=())
    location_hourly = lake.read("gold", "iot", "location_hourly", ["2026-11-20-04:00"])
    old_location_hourly = pl.concat([before_frames[k] for k, (t, pk, _) in before.items() if t.name == "gold_iot_location_hourly" and pk == "2026-11-20-04:00"])
    untouched_group = (pl.col("location") != "loc-0") | (pl.col("sensor_type") != "humidity")  # sensor-3 is loc-0 humidity
    assert location_hourly.filter(untouched_group).sort("location", "sensor_type").equals(
        old_location_hourly.filter(untouched_group).sort("location", "sensor_type").cast(location_hourly.schema))

    # Gone everywhere, also from every earlier version (vacuumed): every text and bytes value in every data
    # file on disk, by raw id and by pseudonym, and every log, audit and marker file.
    for p, blob in lake_objects(lake, ".parquet"):
        df = pl.read_parquet(io.BytesIO(blob))
        for c, dtype in df.schema.items():
            if dtype == pl.String:
                values = [v for v in df[c].to_list() if v is not None]
                assert not any(mentions(v, SENSOR) or mentions(v, USER) or pseudonym(USER) in v for v in values), (p, c)
            elif dtype == pl.Binary:
                values = [v for v in df[c].to_list() if v is not None]
                assert not any(payload_mentions(v, "sensor_id", SENSOR) or payload_mentions(v, "user_id", USER) for v in values), (p, c)
    for p, blob in lake_objects(lake, ".json"):
        text = blob.decode()
        assert not mentions(text, SENSOR) and not mentions(text, USER) and pseudonym(USER) not in text, p
    silver_iot = LakeTable("silver", "iot", "silver")
    [(erased_at, _)] = lake.commits(silver_iot, operation="erase")
    with pytest.raises(Exception, match="(?i)not found|no such file"):  # time travel to before the erasure: its files are gone
        pl.read_delta(lake.table_uri(silver_iot), version=erased_at - 1, storage_options=lake.storage_options)
    assert not [p for p, _ in lake_objects(lake) if "/_erasure/" in p]

    # The warehouse: the subject's rows gone, every other row as before; rollup = Gold.
    after_wh = warehouse_rows(wh)
    assert after_wh["iot_sensor_5m"] == [r for r in before_wh["iot_sensor_5m"] if r["sensor_id"] != SENSOR]
    assert not any(r["sensor_id"] == SENSOR for r in after_wh["iot_sensor_5m"])
    assert [r for r in after_wh["iot_location_hourly"] if (r["location"], r["sensor_type"]) != ("loc-0", "humidity")] == [
        r for r in before_wh["iot_location_hourly"] if (r["location"], r["sensor_type"]) != ("loc-0", "humidity")
    ]
    assert [r for r in after_wh["ads_campaign_daily"] if str(r["day"]) == "2026-11-19"] == [r for r in before_wh["ads_campaign_daily"] if str(r["day"]) == "2026-11-19"]
    assert after_wh["ads_campaign_daily"] != before_wh["ads_campaign_daily"]
    gold_ads = lake.read("gold", "ads", "campaign_daily", DAYS)
    rollup = wh.query_arrow("SELECT campaign_id, sumMerge(impressions) AS i, sumMerge(clicks) AS c FROM ads_campaign_monthly GROUP BY campaign_id ORDER BY campaign_id").to_pylist()
    by_campaign = gold_ads.group_by("campaign_id").agg(pl.col("impressions").sum().alias("i"), pl.col("clicks").sum().alias("c")).sort("campaign_id")
    assert rollup == by_campaign.to_dicts()
    assert sum(r["i"] for r in rollup) == 120 - 15  # the subject's 15 impressions are gone from the rollup too

    # The audit log: one entry per request, who/what/when/where/how many, never the raw id or its pseudonym.
    audit_text = "".join(blob.decode() for p, blob in lake_objects(lake, ".json") if "/_audit/" in p)
    assert SENSOR not in audit_text and USER not in audit_text and pseudonym(USER) not in audit_text
    entries = lake.read_audit(AUDIT_LOG)
    assert [e["erasure_id"] for e in entries] == [by_job["erasure_id"], by_cli["erasure_id"]]
    iot_entry, ads_entry = entries
    assert iot_entry["requested_by"] == "dpo@example.com" and ads_entry["requested_by"] == "ticket-4711"
    assert iot_entry["subject"] == {"kind": "sensor", "hash": Subject("sensor", SENSOR).hash(PII_KEY.encode())}
    assert ads_entry["subject"]["kind"] == "user" and ads_entry["removed"] == by_cli["removed"] and ads_entry["partitions"] == by_cli["partitions"]
    assert iot_entry["via"].startswith("dagster:") and ads_entry["via"] == "cli"
    assert all(e["requested_at"] <= e["finished_at"] for e in entries)

    # Reconciliation still holds: consumed = Bronze + dead-letter + erased.
    s = platform_summary((iot, ads), lake, wh, kafka, instance)
    assert s["reconciled"], s
    assert s["streams"]["iot"]["erased_rows"] == expected[("bronze", "iot")] + expected[("dead_letter", "iot")]
    assert s["erased_rows"] == sum(expected[(l, st)] for l in ("bronze", "dead_letter") for st in ("iot", "ads"))

    # Again: nothing left to remove, nothing rewritten, and the request is still audited.
    again_cli = cli(home, "erase", "--subject", f"user:{USER}", "--json")
    assert again_cli.returncode == 0, again_cli.stderr[-3000:]
    assert json.loads(again_cli.stdout.strip().splitlines()[-1])["total_removed"] == 0
    assert erase(Subject("sensor", SENSOR), lake, wh, (iot, ads))["total_removed"] == 0
    assert snapshot(lake, streams) == after
    assert len(lake.read_audit(AUDIT_LOG)) == 4
    assert platform_summary((iot, ads), lake, wh, kafka, instance)["reconciled"]


def test_subject_kinds_are_declared_by_the_streams_and_bad_requests_change_nothing(tmp_path, monkeypatch):
    from assets.erasure import ErasureError
    from assets.streams import STREAMS

    assert subject_kinds(STREAMS) == {"sensor": ["iot"], "user": ["ads"]}
    lake = LakeResource(uri=str(tmp_path / "lake"))
    wh = WarehouseResource(chdb_path=str(tmp_path / "wh"))
    with pytest.raises(ErasureError, match="unknown subject kind 'campaign'"):
        erase(Subject.parse("campaign:cmp-1"), lake, wh)
    with pytest.raises(ErasureError, match="<kind>:<id>"):
        Subject.parse("no-kind-here")
    assert Subject.parse("user:a:b@example.com").id == "a:b@example.com"
    assert "b@example.com" not in repr(Subject.parse("user:a:b@example.com"))
    assert lake.read_audit(AUDIT_LOG) == []


def test_cli_submit_files_a_request_for_the_ui_job(medallion_home):
    done = cli(medallion_home, "erase", "--subject", "user:u-77", "--submit", "--json", "--requested-by", "ticket-9")
    assert done.returncode == 0, done.stderr
    request_id = json.loads(done.stdout.strip().splitlines()[-1])["request_id"]
    lake = LakeResource(uri=str(medallion_home / "lake"))
    assert pending_requests(lake) == [request_id]
    assert json.loads((lake.local_root / "_erasure_requests" / f"{request_id}.json").read_text())["requested_by"] == "ticket-9"
    bad = cli(medallion_home, "erase", "--subject", "campaign:c-1", "--submit")
    assert bad.returncode == 2 and "unknown subject kind 'campaign'" in bad.stderr
    assert pending_requests(lake) == [request_id]


@pytest.mark.parametrize(
    "payload, hit",
    [
        (b'{"sensor_id": "sensor-3", "ts": 1}', True),  # JSON object: by field
        (b'{"sensor_id": "sensor-1", "note": "\\"sensor-3\\""}', False),  # ... and only by field
        (b'{"sensor_id": "sensor-3", "val', True),  # not parseable: the quoted id in the bytes
        (b'{"sensor_id": "sensor-33", "val', False),
        (b'["sensor-3"]', True),  # JSON but not an object
        (b"\xff" + b'"sensor-3"', True),  # not UTF-8
        (b"sensor-3", False),  # unquoted: could be part of anything
        (None, False),
    ],
)
def test_dead_letter_payload_rule(payload, hit):
    assert payload_mentions(payload, "sensor_id", "sensor-3") is hit


def test_non_ascii_ids_match_escaped_or_not():
    assert payload_mentions('{"user_id": "j\u00fcrgen", "x'.encode(), "user_id", "j\u00fcrgen")
    assert payload_mentions(b'{"user_id": "j\\u00fcrgen", "x', "user_id", "j\u00fcrgen")


@pytest.mark.slow
@ON_BOTH_LAKES
def test_a_crash_at_any_point_of_an_erasure_is_finished_by_the_next_one(platform, instance, kafka):
    iot, ads, resources, home = platform
    lake, wh = resources["lake"], resources["warehouse"]
    ads_files, ads_versions = snapshot(lake, (ads,)), versions(lake, (ads,))
    points = ["erasure.before_commit", "erasure.mid_commits", "erasure.mid_warehouse", "erasure.before_vacuum", "erasure.after_audit"]
    # Each crash erases another sensor (all in hours 04-06); the next request finishes (or discards) it first.
    for sensor, point in zip(["sensor-0", "sensor-1", "sensor-2", "sensor-4", "sensor-5"], points):
        crashed = cli(home, "erase", "--subject", f"sensor:{sensor}", "--json", failpoint=point)
        assert crashed.returncode == -signal.SIGKILL, (point, crashed.stderr[-2000:])
        # Even mid-way, every consumed record is in Bronze, the dead-letter table, or counted as erased.
        s = platform_summary((iot, ads), lake, wh, kafka, instance)["streams"]["iot"]
        assert s["consumed"] == s["bronze_rows"] + s["dead_letter_rows"] + s["erased_rows"], (point, s)
        done = cli(home, "erase", "--subject", f"sensor:{sensor}", "--json")
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["recovered_before"], point
        # The request run again removes what the crashed one had not reached (nothing, once every commit was made).
        assert (result["total_removed"] > 0) is (point in ("erasure.before_commit", "erasure.mid_commits", "erasure.mid_warehouse")), (point, result["total_removed"])
        s = platform_summary((iot, ads), lake, wh, kafka, instance)
        assert s["reconciled"], (point, s)
        assert sensor not in lake.read("silver", "iot", "silver", HOURS)["sensor_id"].to_list()
        assert wh.query_arrow(f"SELECT count() AS n FROM iot_sensor_5m WHERE sensor_id = '{sensor}'").to_pylist() == [{"n": 0}]
    entries = lake.read_audit(AUDIT_LOG)
    # One entry per request that committed something (the interrupted ones marked so), ids unique.
    assert len(entries) == 2 * len(points) - 1 and len({e["erasure_id"] for e in entries}) == len(entries)
    assert sum(1 for e in entries if e.get("interrupted")) == 3  # mid_commits, mid_warehouse, before_vacuum (after_audit had its entry)
    # Five sensors x 3 hours x 20 readings, and sensor-1's quarantined reading.
    assert sum(e["removed"]["bronze"].get("iot", 0) for e in entries) == 5 * 60 + 1
    assert lake.read("silver", "iot", "silver", HOURS)["sensor_id"].unique().to_list() == [SENSOR]
    assert not [p for p, _ in lake_objects(lake) if "/_erasure/" in p]
    # Crashed and recovered IoT erasures never touched another stream's tables.
    assert snapshot(lake, (ads,)) == ads_files and versions(lake, (ads,)) == ads_versions

    # The PII key was rotated since Silver was derived: pseudonyms no longer match, lineage still finds
    # the subject's Silver and quarantine rows.
    rotated = cli(home, "erase", "--subject", f"user:{USER}", "--json", env={"MEDALLION_PII_KEY": "rotated-key"})
    assert rotated.returncode == 0, rotated.stderr[-3000:]
    removed = json.loads(rotated.stdout.strip().splitlines()[-1])["removed"]
    assert (removed["bronze"], removed["silver"], removed["quarantine"], removed["dead_letter"]) == ({"ads": 19}, {"ads": 18}, {"ads": 1}, {"ads": 2})
    assert pseudonym(USER) not in lake.read("silver", "ads", "silver", DAYS)["user_key"].to_list()
    assert removed["history"]["ads"] > 0  # the impressions the user's day handed on, also found by lineage
    assert pseudonym(USER) not in lake.read("silver", "ads", "history", DAYS)["user_key"].to_list()
    assert platform_summary((iot, ads), lake, wh, kafka, instance)["reconciled"]
