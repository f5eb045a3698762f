"""The Dagster UI, driven in headless Chromium against `medallion dev` (broker, simulator, `dagster dev`).

Checks the asset lineage of both streams (in the page and, edge by edge, through the GraphQL API), launches
a backfill of two hourly IoT partitions for Silver, Gold and the warehouse loads from the Materialize dialog,
waits for it and asserts every run succeeded. Screenshots go to `$MEDALLION_HOME/artifacts/ui/`, where
MEDALLION_HOME is the one the test session was started with (default: the repo's `.medallion`); the dev
server itself runs on a temp home. Run with `make test-ui` (installs Debian's chromium if missing).
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

import pytest

from assets import keys
from assets.streams import STREAMS
from assets.streams.iot import IOT
from resources.embedded_broker import running_broker
from resources.kafka import KafkaResource
from resources.settings import load_settings
from tests.conftest import produce, reading
from tests.dev_server import DevServer

try:
    from playwright.sync_api import expect
except ImportError:  # `make install` brings it; the browser fixture says so
    expect = None

pytestmark = [pytest.mark.ui, pytest.mark.timeout(480)]

# Captured at import, before the autouse fixture points MEDALLION_HOME at a per-test temp dir.
ARTIFACTS = load_settings().home / "artifacts" / "ui"
CHROMIUM = os.environ.get("MEDALLION_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SIMULATOR_RATE = 5  # events/s: data keeps flowing without the run queue drowning the backfill on 2 cores
READINGS_PER_HOUR = 180
HOURLY_CHAIN = ["silver_iot", "gold_iot_sensor_5m", "gold_iot_location_hourly", "warehouse_iot_sensor_5m", "warehouse_iot_location_hourly"]  # fmt: skip
DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


@pytest.fixture
def dev_server(medallion_home):
    server = DevServer(medallion_home, rate=SIMULATOR_RATE)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def browser():
    """Debian's Chromium, headless, with a fresh profile (Playwright never downloads a browser here)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} not found: `make test-ui` installs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    expect.set_options(timeout=60_000)
    with sync_playwright() as p:
        # launch() starts Chromium on a fresh temporary --user-data-dir of its own and removes it on close.
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser):
    """A page in a context of its own (the graph's UI state, kept in local storage, starts empty)."""
    page = browser.new_context(viewport={"width": 2560, "height": 1440}).new_page()
    page.set_default_timeout(60_000)
    # The first visit shows a "Join the Dagster community" dialog: skip it whenever it gets in the way.
    page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda skip: skip.click())
    return page


def shoot(page, name: str) -> Path:
    page.mouse.move(1, 1)  # no hover highlight
    try:  # let the nodes' status rows load (a picture of spinners shows little); live data may keep some busy
        expect(page.get_by_text(re.compile(r"^Loading"))).to_have_count(0, timeout=20_000)
    except AssertionError:
        pass
    skip = page.get_by_role("button", name="Skip")
    if skip.count():
        skip.first.click()
        page.wait_for_timeout(300)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000, f"{path} looks empty"
    return path


def lineage_url(server: DevServer, selection: str) -> str:
    return f"{server.url}/asset-groups~{quote(selection, safe='')}/"


def expand_all_groups(page) -> None:
    """The graph shows one box per group until expanded. (Zoomed out too far, nodes shrink to truncated
    names: the viewport is large enough for one stream's graph to render in full.)"""
    page.locator('button:has([aria-label="settings"])').filter(has_not_text="Settings").click()
    page.get_by_role("menuitem", name="Expand all groups").click()
    page.keyboard.press("Escape")
    page.goto(page.url)  # the URL now names the expanded groups: a fresh load fits the expanded graph to the view


def stream_assets(spec) -> dict[str, list[str]]:
    """Each asset of the stream's data path -> the upstream assets it must depend on."""
    deps = {
        keys.topic_key(spec).path[0]: [],
        keys.bronze_key(spec).path[0]: [keys.topic_key(spec).path[0]],
        keys.silver_key(spec).path[0]: [keys.bronze_key(spec).path[0]],
    }
    gold = {t.name: t for t in spec.gold}
    for table in spec.gold:
        # A rollup (`GoldTable.source`) depends on the Gold table it folds, the others on Silver.
        upstream = keys.gold_key(spec, gold[table.source]) if table.source else keys.silver_key(spec)
        deps[keys.gold_key(spec, table).path[0]] = [upstream.path[0]]
        deps[keys.warehouse_key(spec, table).path[0]] = [keys.gold_key(spec, table).path[0]]
    return deps


def materialized_partitions(server: DevServer, asset: str, partitions: list[str]) -> dict[str, list[dict]]:
    data = server.gql(
        """query($key: AssetKeyInput!, $partitions: [String!]) {
             assetOrError(assetKey: $key) { ... on Asset {
               assetMaterializations(partitions: $partitions) {
                 runId partition metadataEntries { label ... on IntMetadataEntry { intValue } } } } } }""",
        {"key": {"path": [asset]}, "partitions": partitions},
    )
    found: dict[str, list[dict]] = {}
    for m in (data["assetOrError"] or {}).get("assetMaterializations") or []:
        found.setdefault(m["partition"], []).append(m)
    return found


def test_ui_lineage_and_backfill(dev_server, browser):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    try:
        lineage_and_backfill(dev_server, browser)
    except Exception:
        for n, context in enumerate(browser.contexts):  # what the pages showed when it failed
            for m, page in enumerate(context.pages):
                page.screenshot(path=str(ARTIFACTS / f"failure_{n}{m}.png"))
        raise


def lineage_and_backfill(server: DevServer, browser) -> None:
    began = time.monotonic()

    def say(what: str) -> None:
        print(f"[{time.monotonic() - began:5.1f} s] {what}", flush=True)

    # --- the stack is up: broker, webserver, code location --------------------------------------------
    broker = server.wait_until("the embedded broker", lambda: running_broker(server.home / "run"), 60, 0.5)
    expected = {spec.name: stream_assets(spec) for spec in STREAMS}
    assert {"iot", "ads"} <= expected.keys()
    server.wait_until("the webserver", lambda: urllib.request.urlopen(f"{server.url}/server_info", timeout=5).status == 200, 120, 1)  # fmt: skip
    all_keys = {k for deps in expected.values() for k in deps}
    nodes = server.wait_until(
        "the code location's assets",
        lambda: (n := server.gql("{ assetNodes { assetKey { path } dependencyKeys { path } } }")["assetNodes"])
        and all_keys <= {x["assetKey"]["path"][0] for x in n}
        and n,
        120,
    )

    # Two complete hours with known data, for the backfill to re-derive (the simulator keeps the current
    # hour flowing meanwhile).
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    hours = [now - timedelta(hours=2), now - timedelta(hours=1)]
    part_keys = [h.strftime(IOT.partitions.fmt) for h in hours]
    records = [
        reading(n, h + timedelta(seconds=(3600 / READINGS_PER_HOUR) * i), sensor=i % 6, event_id=f"ui-test-{n}")
        for n, (h, i) in enumerate((h, i) for h in hours for i in range(READINGS_PER_HOUR))
    ]
    produce(KafkaResource(bootstrap_servers=broker.bootstrap), IOT.topic, records)
    say(f"code location loaded; produced {len(records)} readings for {part_keys}")

    # --- lineage, exact: every edge of both streams through GraphQL -------------------------------------
    deps = {n["assetKey"]["path"][0]: sorted(d["path"][0] for d in n["dependencyKeys"]) for n in nodes}
    for stream, chain in expected.items():
        for asset, upstream in chain.items():
            assert deps[asset] == sorted(upstream), f"{stream}: {asset} depends on {deps[asset]}, expected {upstream}"
        layers = {a.split("_")[0] for a in chain}
        assert {"topic", "bronze", "silver", "gold", "warehouse"} == layers, (stream, layers)

    # --- freshness policies: every Gold and warehouse table carries one, as the UI shows it -------------
    fresh = server.gql(
        "{ assetNodes { assetKey { path } internalFreshnessPolicy { __typename "
        "... on TimeWindowFreshnessPolicy { failWindowSeconds warnWindowSeconds } } } }"
    )["assetNodes"]
    policies = {n["assetKey"]["path"][0]: n["internalFreshnessPolicy"] for n in fresh}
    for chain in expected.values():
        for asset in chain:
            want = {"__typename": "TimeWindowFreshnessPolicy", "failWindowSeconds": 900, "warnWindowSeconds": 300}
            assert policies[asset] == (want if asset.split("_")[0] in ("gold", "warehouse") else None), asset

    # --- lineage, in the page: the whole graph, then each stream with its groups expanded ---------------
    page = new_page(browser)
    page.goto(f"{server.url}/asset-groups")
    page.get_by_text("Global asset lineage").wait_for()
    for spec in STREAMS:
        for layer in ("bronze", "silver", "gold", "warehouse"):
            page.get_by_text(keys.group(spec, layer), exact=True).first.wait_for()
    page.wait_for_timeout(1500)
    shoot(page, "01_asset_graph.png")

    for n, spec in enumerate(STREAMS, start=2):
        stream_page = new_page(browser)
        stream_page.goto(lineage_url(server, f'key:"*_{spec.name}" or key:"*_{spec.name}_*"'))
        stream_page.get_by_text(keys.group(spec, "silver"), exact=True).first.wait_for()
        expand_all_groups(stream_page)
        for asset in expected[spec.name]:  # each asset of the chain is drawn, in full and inside the view
            expect(stream_page.get_by_text(asset, exact=True).first).to_be_in_viewport()
        other = next(s for s in STREAMS if s.name != spec.name)
        assert stream_page.get_by_text(keys.silver_key(other).path[0], exact=True).count() == 0
        stream_page.wait_for_timeout(1500)
        shoot(stream_page, f"{n:02d}_lineage_{spec.name}.png")
        stream_page.context.close()
    say("lineage checked")
    # --- Bronze has both hours (the Kafka sensor's ingest run) -------------------------------------------
    server.wait_until(
        f"bronze_iot partitions {part_keys}",
        lambda: set(part_keys) <= materialized_partitions(server, "bronze_iot", part_keys).keys(),
        180,
    )

    say("bronze has both hours")
    # --- backfill Silver/Gold/warehouse of the two hours from the Materialize dialog ---------------------
    selection = " or ".join(f'key:"{k}"' for k in HOURLY_CHAIN)
    page.goto(lineage_url(server, selection))
    page.get_by_text("iot_silver", exact=True).first.wait_for()
    page.get_by_role("button", name="Materialize all").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text(f"Launch runs to materialize {len(HOURLY_CHAIN)} assets").wait_for()
    dialog.get_by_text(re.compile(r"Showing [\d,]+ of [\d,]+ partitions")).wait_for()  # the partitions have loaded
    box = dialog.locator("input[type=text]").first
    box.fill(f"[{part_keys[0]}...{part_keys[1]}]")
    box.press("Enter")
    dialog.get_by_text("2 partitions", exact=True).wait_for()
    shoot(page, f"{len(STREAMS) + 2:02d}_backfill_dialog.png")
    with page.expect_response(lambda r: "/graphql" in r.url and "launchPartitionBackfill" in (r.request.post_data or "")) as launched:  # fmt: skip
        dialog.get_by_role("button", name="Launch backfill").click()
    result = launched.value.json()["data"]["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result
    backfill_id = result["backfillId"]
    page.get_by_text("Created backfill").first.wait_for()

    page.set_viewport_size({"width": 1600, "height": 900})  # the backfill pages are a table: no need for 2560 px
    page.goto(f"{server.url}/runs/b/{backfill_id}?tab=overview")
    page.get_by_text(backfill_id).first.wait_for()
    page.get_by_text(HOURLY_CHAIN[-1], exact=True).first.wait_for()
    page.wait_for_timeout(1500)
    shoot(page, f"{len(STREAMS) + 3:02d}_backfill_launched.png")
    say(f"backfill {backfill_id} launched")

    query = """query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename ... on PartitionBackfill {
                 status isAssetBackfill partitionNames assetSelection { path } runs(limit: 100) { runId status tags { key value } }
                 assetBackfillData { assetBackfillStatuses { ... on AssetPartitionsStatusCounts {
                   assetKey { path } numPartitionsTargeted numPartitionsMaterialized numPartitionsFailed } } } } } }"""
    backfill = server.wait_until(
        f"backfill {backfill_id} to finish",
        lambda: (b := server.gql(query, {"id": backfill_id})["partitionBackfillOrError"])["status"] in DONE and b,
        240,
        3,
    )
    say(f"backfill {backfill['status']}")
    assert backfill["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), json.dumps(backfill, indent=1)
    assert backfill["isAssetBackfill"] and sorted(backfill["partitionNames"]) == part_keys
    assert sorted(a["path"][0] for a in backfill["assetSelection"]) == sorted(HOURLY_CHAIN)
    runs = backfill["runs"]
    assert runs and all(r["status"] == "SUCCESS" for r in runs), [(r["runId"], r["status"]) for r in runs]
    statuses = {s["assetKey"]["path"][0]: s for s in backfill["assetBackfillData"]["assetBackfillStatuses"]}
    assert statuses.keys() == set(HOURLY_CHAIN)
    for asset, s in statuses.items():
        assert s["numPartitionsTargeted"] == s["numPartitionsMaterialized"] == 2 and s["numPartitionsFailed"] == 0, (asset, s)  # fmt: skip

    # The backfill re-derived Silver from Bronze: each hour holds at least the readings produced for it.
    run_ids = {r["runId"] for r in runs}
    silver = materialized_partitions(server, "silver_iot", part_keys)
    for pk in part_keys:
        ours = [m for m in silver.get(pk, []) if m["runId"] in run_ids]
        assert ours, f"no silver_iot materialization of {pk} by backfill {backfill_id}"
        rows = {e["label"]: e.get("intValue") for e in ours[0]["metadataEntries"]}.get("dagster/row_count")
        assert rows is not None and rows >= READINGS_PER_HOUR, (pk, rows)

    for n, tab in enumerate(("overview", "runs"), start=len(STREAMS) + 4):
        page.goto(f"{server.url}/runs/b/{backfill_id}?tab={tab}")
        page.get_by_text(backfill_id).first.wait_for()
        page.get_by_text("Succeeded", exact=True).first.wait_for()  # the backfill's status
        if tab == "overview":  # one row per asset
            page.get_by_text(HOURLY_CHAIN[-1], exact=True).first.wait_for()
        else:  # one row per run, each a success
            expect(page.get_by_text("Success", exact=True)).to_have_count(len(runs))
        page.wait_for_timeout(1500)
        shoot(page, f"{n:02d}_backfill_{'done' if tab == 'overview' else 'runs'}.png")

    shots = sorted(p.name for p in ARTIFACTS.glob("*.png"))
    assert len(shots) == len(STREAMS) + 5, shots
    print(f"UI test: backfill {backfill_id} of {part_keys} ({len(runs)} runs) done; {time.monotonic() - began:.0f} s; screenshots in {ARTIFACTS}")  # fmt: skip
