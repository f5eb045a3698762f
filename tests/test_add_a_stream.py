"""The README's "Add a stream" guide, run as written: its spec goes through Kafka, Bronze, Silver, Gold and
the warehouse with no platform change."""

import dataclasses
import json
import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tests.helpers import definitions, run_ingest, sensor_tick

README = Path(__file__).resolve().parents[1] / "README.md"


def guide_spec():
    text = README.read_text()
    block = re.search(r"<!-- add-a-stream:begin -->\s*```python\n(.*?)```\s*<!-- add-a-stream:end -->", text, re.S)
    assert block, "the README lost its Add a stream example"
    namespace: dict = {"__name__": "assets.streams.orders"}
    exec(compile(block.group(1), "README.md#add-a-stream", "exec"), namespace)  # noqa: S102 - our own README
    return namespace["ORDERS"]


def test_the_guide_stream_runs_end_to_end(kafka, resources, instance):
    spec = dataclasses.replace(guide_spec(), topic=f"test.orders.{uuid.uuid4().hex[:8]}")
    kafka.ensure_topics({spec.topic: spec.kafka_partitions, spec.dead_letter_topic: 1})
    pk = spec.partitions.get_last_partition_key()
    start = datetime.strptime(pk, "%Y-%m-%d-%H:%M").replace(tzinfo=timezone.utc)
    at = max(start, datetime.now(timezone.utc) - timedelta(minutes=2))
    orders = [{"order_id": f"o{n}", "store": f"store-{n % 3}", "amount": 10.0 + n, "ts": at.isoformat()} for n in range(30)]
    bad = [
        {"order_id": "neg", "store": "store-0", "amount": -5.0, "ts": at.isoformat()},  # quarantined: amount >= 0
        {"order_id": "o1", "store": "store-1", "amount": 11.0, "ts": at.isoformat()},  # a producer retry: dropped
    ]
    p = kafka.producer()
    for o in orders + bad:
        p.produce(spec.topic, key=o["store"].encode(), value=json.dumps(o).encode())
    p.produce(spec.topic, key=b"store-0", value=b"{not json")  # dead letter
    p.flush(10)

    defs = definitions(spec, resources)
    request = sensor_tick(defs, spec, instance).run_requests[0]
    assert run_ingest(defs, spec, instance, request).success
    lake, wh = resources["lake"], resources["warehouse"]
    assert lake.count_bronze(spec.name) == 32 and lake.count_dead_letter(spec.name) == 1
    assert lake.read("silver", spec.name, "silver", [pk]).height == 30
    assert lake.read("quarantine", spec.name, "silver", [pk])["order_id"].to_list() == ["neg"]
    got = wh.query_arrow("SELECT store, sum(orders) AS n, sum(revenue) AS revenue FROM orders_store_hourly GROUP BY store ORDER BY store").to_pylist()
    expected = [{"store": f"store-{s}", "n": 10, "revenue": sum(10.0 + n for n in range(30) if n % 3 == s)} for s in range(3)]
    assert got == expected
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {
        "topic_orders", "bronze_orders", "silver_orders", "gold_orders_store_hourly", "warehouse_orders_store_hourly",
        "lake_maintenance",  # the platform's, covering the new stream's tables too
    }  # fmt: skip
    assert {s.name for s in defs.sensors} == {"kafka_orders", "automation_orders", "recover_dead_runs", "alert_on_run_failure", "alert_on_check_failure", "embedded_broker_segments"}
