"""Event simulator: realistic IoT readings with noise, anomalies, bad messages, duplicates and late events.

Deterministic for a seed. Each sensor reports once per second of event time; in real-time mode (`rate`)
timestamps are the wall clock.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from assets.contracts.iot import PHYSICAL_RANGE, UNITS

# How long the simulator's producer lets a batch fill: fewer, larger batches cost the embedded broker less
# (Tansu's fetches walk every batch of a partition's segment: bench/broker_endurance.py), while a longer linger
# costs freshness (p95 5.5 s -> 15 s at 1,000 ms, one 2-minute run each at 1,000 events/s).
SIMULATOR_LINGER_MS = 250

# (baseline mean, baseline spread across sensors, reading noise sd) per sensor type
PROFILES = {
    "temperature": (22.0, 3.0, 0.5),
    "humidity": (45.0, 10.0, 1.5),
    "pressure": (1013.0, 5.0, 0.8),
    "vibration": (0.4, 0.1, 0.05),
}
LOCATIONS = ["plant-a/line-1", "plant-a/line-2", "plant-b/line-1", "plant-b/line-2", "warehouse-north", "warehouse-south", "lab", "rooftop"]


@dataclass
class SimulatorConfig:
    events: int
    seed: int = 7
    sensors: int = 200
    rate: float = 0.0  # events per second; 0 = as fast as possible, event times spread back from now
    anomaly_share: float = 0.02
    malformed_share: float = 0.005
    duplicate_share: float = 0.01
    late_share: float = 0.01
    late_hours: tuple[float, float] = (1.0, 6.0)
    end: datetime | None = None  # event time of the last reading (bulk mode); default: now


@dataclass
class SimulatorStats:
    produced: int = 0
    malformed: int = 0
    duplicates: int = 0
    late: int = 0
    anomalies: int = 0
    kinds: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Sensor:
    sensor_id: str
    sensor_type: str
    location: str
    baseline: float
    noise: float


def fleet(n: int, rng: random.Random) -> list[Sensor]:
    types = list(PROFILES)
    out = []
    for i in range(n):
        t = types[i % len(types)]
        mean, spread, noise = PROFILES[t]
        out.append(Sensor(f"{t[:4]}-{i:04d}", t, LOCATIONS[i % len(LOCATIONS)], rng.gauss(mean, spread), noise))
    return out


def _malformed(rng: random.Random, reading: dict) -> tuple[str, bytes | None, bytes]:
    """One bad message of a random class: (class, key, value)."""
    key = reading["sensor_id"].encode()
    kind = rng.choice(["invalid_json", "wrong_type", "missing_field", "out_of_range", "unknown_type", "not_utf8", "not_object"])
    if kind == "invalid_json":
        return kind, key, json.dumps(reading).encode()[: rng.randint(5, 40)]
    if kind == "wrong_type":
        return kind, key, json.dumps({**reading, "value": str(reading["value"])}).encode()
    if kind == "missing_field":
        bad = dict(reading)
        bad.pop(rng.choice(["sensor_type", "value", "location", "event_id"]))
        return kind, key, json.dumps(bad).encode()
    if kind == "out_of_range":
        hi = PHYSICAL_RANGE[reading["sensor_type"]][1]
        return kind, key, json.dumps({**reading, "value": hi * 10 + 1}).encode()
    if kind == "unknown_type":
        return kind, key, json.dumps({**reading, "sensor_type": "radiation"}).encode()
    if kind == "not_utf8":
        return kind, key, b"\xff\xfe" + json.dumps(reading).encode()[2:]
    return kind, key, json.dumps([reading]).encode()


def generate(cfg: SimulatorConfig, stats: SimulatorStats) -> Iterator[tuple[bytes | None, bytes]]:
    rng = random.Random(cfg.seed)
    sensors = fleet(cfg.sensors, rng)
    realtime = cfg.rate > 0
    end = cfg.end or datetime.now(timezone.utc)
    seconds = max(1, cfg.events // len(sensors))
    start = end - timedelta(seconds=seconds)
    i = 0
    while cfg.events <= 0 or stats.produced < cfg.events:  # 0: until stopped
        s = sensors[i % len(sensors)]
        ts = datetime.now(timezone.utc) if realtime else start + timedelta(seconds=i // len(sensors))
        i += 1
        value = rng.gauss(s.baseline, s.noise)
        if rng.random() < cfg.anomaly_share:
            value = s.baseline + rng.choice([-1, 1]) * s.noise * rng.uniform(8, 20)
            stats.anomalies += 1
        lo, hi = PHYSICAL_RANGE[s.sensor_type]
        value = round(min(hi, max(lo, value)), 4)
        if rng.random() < cfg.late_share:
            ts -= timedelta(hours=rng.uniform(*cfg.late_hours))
            stats.late += 1
        reading = {
            "event_id": f"{s.sensor_id}-{cfg.seed}-{i}",
            "sensor_id": s.sensor_id,
            "sensor_type": s.sensor_type,
            "location": s.location,
            "value": value,
            "unit": UNITS[s.sensor_type],
            "ts": ts.isoformat(timespec="milliseconds") if rng.random() < 0.7 else int(ts.timestamp() * 1000),
        }
        if rng.random() < cfg.malformed_share:
            kind, key, payload = _malformed(rng, reading)
            stats.malformed += 1
            stats.kinds[kind] = stats.kinds.get(kind, 0) + 1
        else:
            key, payload = s.sensor_id.encode(), json.dumps(reading).encode()
        stats.produced += 1
        yield key, payload
        if rng.random() < cfg.duplicate_share and (cfg.events <= 0 or stats.produced < cfg.events):  # a producer retry
            stats.produced += 1
            stats.duplicates += 1
            yield key, payload


def produce(producer, topic: str, cfg: SimulatorConfig, should_stop=lambda: False, events=None) -> SimulatorStats:
    """Send simulated events (`events(cfg, stats)`, IoT readings by default) to `topic`; in real-time mode,
    paced to `cfg.rate`."""
    stats = SimulatorStats()
    began = time.monotonic()
    for n, (key, value) in enumerate((events or generate)(cfg, stats), start=1):
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:  # local queue full: let the producer drain
                producer.poll(0.05)
        if n % 5000 == 0 or cfg.rate > 0:  # paced: look for a stop request every event
            producer.poll(0)
            if should_stop():
                break
        if cfg.rate > 0:
            ahead = n / cfg.rate - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)  # not flush(): that would send a batch per event and defeat the linger
    left = producer.flush(30)
    if left:
        raise RuntimeError(f"{left} simulated events were not acknowledged by the broker")
    return stats


def bulk_readings(n: int, seed: int = 7, sensors: int = 200, end: datetime | None = None, span_s: float | None = None, first_id: int = 0):
    """`n` clean readings as columns, vectorized (numpy/polars): for benchmarks and large demos.

    Same fleet, noise and anomaly model as `generate`; no malformed messages, duplicates or late events.
    Each sensor reports once per second of event time unless `span_s` stretches the same events over longer.
    Returns a polars DataFrame with the wire fields plus `key` and `payload` (JSON bytes). Event ids count
    from `first_id` (calls that continue a stream pass the number of readings so far).
    """
    import numpy as np
    import polars as pl

    rng = random.Random(seed)
    fleet_ = fleet(sensors, rng)
    gen = np.random.default_rng(seed)
    idx = np.arange(n)
    sensor_idx = idx % sensors
    baseline = np.array([s.baseline for s in fleet_])[sensor_idx]
    noise = np.array([s.noise for s in fleet_])[sensor_idx]
    value = gen.normal(baseline, noise)
    anomalous = gen.random(n) < 0.02
    value = np.where(anomalous, baseline + gen.choice([-1.0, 1.0], n) * noise * gen.uniform(8, 20, n), value)
    types = np.array([s.sensor_type for s in fleet_])[sensor_idx]
    lo = np.array([PHYSICAL_RANGE[t][0] for t in PROFILES])
    hi = np.array([PHYSICAL_RANGE[t][1] for t in PROFILES])
    type_idx = sensor_idx % len(PROFILES)
    value = np.round(np.clip(value, lo[type_idx], hi[type_idx]), 4)
    end = end or datetime.now(timezone.utc)
    span = span_s if span_s is not None else max(1, n // sensors)
    offsets_us = (idx // sensors).astype(np.int64) * int(span * 1_000_000 / max(1, n // sensors))
    start_us = int((end.timestamp() - span) * 1_000_000)
    frame = pl.DataFrame(
        {
            "event_id": pl.Series(idx + first_id).cast(pl.String),
            "sensor_id": np.array([s.sensor_id for s in fleet_])[sensor_idx],
            "sensor_type": types,
            "location": np.array([s.location for s in fleet_])[sensor_idx],
            "value": value,
            "unit": np.array([UNITS[t] for t in PROFILES])[type_idx],
            "ts_us": start_us + offsets_us,
        }
    ).with_columns(
        pl.format("{}-{}", pl.col("sensor_id"), pl.col("event_id")).alias("event_id"),
        pl.col("ts_us").cast(pl.Datetime("us", "UTC")).alias("event_time"),
    )
    payload = frame.select(
        pl.struct(
            "event_id", "sensor_id", "sensor_type", "location", "value", "unit",
            pl.col("event_time").dt.strftime("%Y-%m-%dT%H:%M:%S%.3f+00:00").alias("ts"),
        ).struct.json_encode()
    ).to_series()
    return frame.drop("ts_us").with_columns(payload.alias("payload"), pl.col("sensor_id").alias("key"))


def produce_frame(producer, topic: str, frame) -> int:
    """Produce a `bulk_readings` frame (key, payload) as fast as the client allows."""
    n = 0
    for key, value in zip(frame["key"].to_list(), frame["payload"].to_list()):
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
        n += 1
        if n % 20000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    if left:
        raise RuntimeError(f"{left} events were not acknowledged by the broker")
    return n
