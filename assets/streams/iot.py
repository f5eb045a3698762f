"""IoT sensor readings: one JSON reading per message, keyed by sensor_id, hourly partitions by event time."""

from __future__ import annotations

import os

from assets.contracts import iot as contracts
from assets.engines import spark_iot
from assets.partitions import DAILY, HOURLY
from assets.spec import FieldSpec, GoldTable, History, StreamSpec, SubjectSpec
from assets.transforms import iot as transforms
from assets.simulation.bad_input import corpus
from assets.simulation.iot import generate

IOT = StreamSpec(
    name="iot",
    description="IoT sensor readings (temperature, humidity, pressure, vibration)",
    topic=os.environ.get("MEDALLION_IOT_TOPIC", "iot.sensor-readings"),
    kafka_partitions=3,
    fields=(
        FieldSpec("event_id", "string"),
        FieldSpec("sensor_id", "string"),
        FieldSpec("sensor_type", "string"),
        FieldSpec("location", "string"),
        FieldSpec("value", "number"),
        FieldSpec("unit", "string"),
    ),
    event_time_field="ts",
    dedup_key="event_id",
    key_field="sensor_id",
    subject=SubjectSpec(kind="sensor", field="sensor_id"),
    partitions=HOURLY,
    row_contract=contracts.IotReading,
    silver_contract=contracts.IotSilver,
    silver_transform=transforms.silver,
    spark_silver_transform=spark_iot.silver,
    history=History(carry=transforms.history, lookback=transforms.SILENT_SENSOR_FORGOTTEN_AFTER, columns=transforms.HISTORY_COLUMNS, group=("sensor_id",)),
    simulator=generate,
    bad_input=corpus,
    max_failure_rate=float(os.environ.get("MEDALLION_IOT_MAX_FAILURE_RATE", "0.05")),
    gold=(
        GoldTable(
            name="sensor_5m",
            description="Per sensor per 5-minute window: count, avg, min, max, stddev, p50/p95/p99, anomalies, health %",
            partitions=HOURLY,
            build=transforms.gold_sensor_5m,
            spark_build=spark_iot.gold_sensor_5m,
            contract=contracts.IotSensorWindow,
            time_column="window_start",
            columns_ddl="""
                sensor_id LowCardinality(String),
                sensor_type LowCardinality(String),
                location LowCardinality(String),
                window_start DateTime64(6, 'UTC') CODEC(Delta, ZSTD),
                window_end DateTime64(6, 'UTC') CODEC(Delta, ZSTD),
                count Int64 CODEC(T64, ZSTD),
                avg Float64 CODEC(Gorilla, ZSTD),
                min Float64 CODEC(Gorilla, ZSTD),
                max Float64 CODEC(Gorilla, ZSTD),
                stddev Nullable(Float64),
                p50 Float64 CODEC(Gorilla, ZSTD),
                p95 Float64 CODEC(Gorilla, ZSTD),
                p99 Float64 CODEC(Gorilla, ZSTD),
                anomaly_count Int64 CODEC(T64, ZSTD),
                health_pct Float64 CODEC(Gorilla, ZSTD)""",
            order_by="(sensor_id, window_start)",
            window="5m",
            reads=transforms.GOLD_READS,
            ttl="toDateTime(window_start) + INTERVAL 90 DAY",  # the finest grain; hourly and daily tables keep history
        ),
        GoldTable(
            name="location_hourly",
            description="Per location and sensor type per hour: statistics and distinct sensors",
            partitions=HOURLY,
            build=transforms.gold_location_hourly,
            spark_build=spark_iot.gold_location_hourly,
            contract=contracts.IotLocationHourly,
            time_column="hour_start",
            columns_ddl="""
                location LowCardinality(String),
                sensor_type LowCardinality(String),
                hour_start DateTime64(6, 'UTC') CODEC(Delta, ZSTD),
                count Int64,
                avg Float64,
                min Float64,
                max Float64,
                stddev Nullable(Float64),
                p50 Float64,
                p95 Float64,
                p99 Float64,
                anomaly_count Int64,
                distinct_sensors Int64""",
            order_by="(location, sensor_type, hour_start)",
            window="1h",
            reads=transforms.GOLD_READS,
            extend_window=transforms.extend_location_hourly,
        ),
        GoldTable(
            name="type_daily",
            description="Per sensor type per day: count, avg, min, max, stddev, anomalies, distinct sensors (folded from the day's 5-minute rows)",
            partitions=DAILY,
            source="sensor_5m",
            build=transforms.gold_type_daily,
            spark_build=spark_iot.gold_type_daily,
            contract=contracts.IotTypeDaily,
            time_column="day",
            columns_ddl="""
                sensor_type LowCardinality(String),
                day Date32,
                count Int64,
                avg Float64,
                min Float64,
                max Float64,
                stddev Nullable(Float64),
                anomaly_count Int64,
                distinct_sensors Int64""",
            order_by="(sensor_type, day)",
            reads=transforms.TYPE_DAILY_READS,
        ),
    ),
)
