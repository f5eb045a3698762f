"""The IoT Silver and Gold transforms on Spark (for partitions too large for one process), row for row the same
as `assets.transforms.iot`: same dedup winners, same z-scores (window of the 100 previous readings, at least
10, sample std), same aggregates (exact percentiles with linear interpolation)."""

from __future__ import annotations

import polars as pl

from assets.contracts.iot import EXPECTED_BAND, NOMINAL_INTERVAL_S
from assets.spec import SilverContext, SilverOutput
from assets.transforms.iot import SILVER_COLUMNS, ZSCORE_MIN_HISTORY, ZSCORE_THRESHOLD, ZSCORE_WINDOW


def _to_spark(spark, frame):
    """A Spark DataFrame as is (e.g. read from the lake's data files), or a polars frame converted."""
    if not isinstance(frame, pl.DataFrame):
        return frame
    return spark.createDataFrame(frame.to_arrow())


def _to_polars(df, schema: dict) -> pl.DataFrame:
    return pl.from_arrow(df.toArrow()).cast(schema)


def silver(spark, valid: pl.DataFrame, context: pl.DataFrame | None, ctx: SilverContext) -> SilverOutput:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    first = _to_spark(spark, valid)  # deduplicated on event_id by the platform (`derive_silver`)
    rejected = valid.clear().with_columns(check=pl.lit(None, pl.String), reason=pl.lit(None, pl.String))

    # 2. history from the previous partition + this partition, one reading per sensor per instant.
    cur = first.select(
        "event_id", "sensor_id", "sensor_type", "location", "value", "unit", "event_time",
        F.col("kafka_topic").alias("source_topic"), F.col("kafka_partition").cast("long").alias("source_partition"),
        F.col("kafka_offset").alias("source_offset"), "ingested_at", F.lit(False).alias("__context"),
    )  # fmt: skip
    allrows = cur
    if context is not None and context.height:
        hist = _to_spark(spark, context)
        recent = Window.partitionBy("sensor_id").orderBy(F.desc("event_time"), F.desc("source_partition"), F.desc("source_offset"))
        hist = hist.withColumn("__r", F.row_number().over(recent)).filter(F.col("__r") <= ZSCORE_WINDOW)
        # The history holds the columns the z-score needs; the rest stay null (history rows are not published).
        present = set(hist.columns)
        padded = [F.col(c) if c in present else F.lit(None).cast(t).alias(c) for c, t in cur.dtypes if c != "__context"]
        allrows = hist.select(*padded, F.lit(True).alias("__context")).unionByName(cur)
    order = [F.col("event_time"), F.desc("__context"), F.col("source_partition"), F.col("source_offset")]
    allrows = allrows.withColumn("__rn", F.row_number().over(Window.partitionBy("sensor_id", "event_time").orderBy(*order[1:]))).filter("__rn = 1")
    dup_sensor_time = cur.count() - allrows.filter(~F.col("__context")).count()

    # 3. z-score against the previous readings of the same sensor.
    previous = Window.partitionBy("sensor_id").orderBy(*order).rowsBetween(-ZSCORE_WINDOW, -1)
    n = F.count("value").over(previous)
    mean = F.when(n >= ZSCORE_MIN_HISTORY, F.avg("value").over(previous))
    std = F.when(n >= ZSCORE_MIN_HISTORY, F.stddev_samp("value").over(previous))
    scored = allrows.withColumn("__mean", mean).withColumn("__std", std).filter(~F.col("__context"))
    z = F.when(F.col("__std") > 0, (F.col("value") - F.col("__mean")) / F.col("__std"))
    low, high = F.lit(None).cast("double"), F.lit(None).cast("double")
    for t, band in EXPECTED_BAND.items():
        low = F.when(F.col("sensor_type") == t, F.lit(band[0])).otherwise(low)
        high = F.when(F.col("sensor_type") == t, F.lit(band[1])).otherwise(high)
    out = (
        scored.withColumn("z_score", z)
        .withColumn(
            "is_anomaly",
            F.coalesce(F.abs("z_score") > ZSCORE_THRESHOLD, F.lit(False)) | F.coalesce(F.col("value") < low, F.lit(False)) | F.coalesce(F.col("value") > high, F.lit(False)),
        )
        .withColumn("processed_at", F.lit(ctx.processed_at))
        .withColumn("pipeline_version", F.lit(ctx.pipeline_version))
        .orderBy("source_partition", "source_offset")
        .select(*SILVER_COLUMNS)
    )
    schema = {
        "event_id": pl.String, "sensor_id": pl.String, "sensor_type": pl.String, "location": pl.String, "value": pl.Float64,
        "unit": pl.String, "event_time": pl.Datetime("us", "UTC"), "z_score": pl.Float64, "is_anomaly": pl.Boolean,
        "source_topic": pl.String, "source_partition": pl.Int64, "source_offset": pl.Int64, "ingested_at": pl.Datetime("us", "UTC"),
        "processed_at": pl.Datetime("us", "UTC"), "pipeline_version": pl.String,
    }  # fmt: skip
    return SilverOutput(rows=_to_polars(out, schema), rejected=rejected, duplicates_dropped=dup_sensor_time)


def _stats(F, with_percentiles: bool) -> list:
    v = F.col("value")
    exprs = [F.count("*").cast("long").alias("count"), F.avg(v).alias("avg"), F.min(v).alias("min"), F.max(v).alias("max"), F.stddev_samp(v).alias("stddev")]
    if with_percentiles:
        exprs += [F.percentile(v, q).alias(f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)]
    exprs.append(F.sum(F.col("is_anomaly").cast("long")).alias("anomaly_count"))
    return exprs


def gold_sensor_5m(spark, silver_rows: pl.DataFrame) -> pl.DataFrame:
    from pyspark.sql import functions as F

    df = _to_spark(spark, silver_rows)
    start = F.timestamp_micros(F.floor(F.unix_micros("event_time") / 300_000_000) * 300_000_000)
    nominal = F.lit(1.0)
    for t, s in NOMINAL_INTERVAL_S.items():
        nominal = F.when(F.col("sensor_type") == t, F.lit(float(s))).otherwise(nominal)
    out = (
        df.withColumn("window_start", start).withColumn("__nominal", nominal)
        .groupBy("sensor_id", "sensor_type", "location", "window_start")
        .agg(*_stats(F, True), F.first("__nominal").alias("__nominal"))
        .withColumn("window_end", F.col("window_start") + F.expr("INTERVAL 5 MINUTES"))
        .withColumn("health_pct", F.least(F.lit(100.0), F.col("count") / (F.lit(300.0) / F.col("__nominal")) * 100))
        .select("sensor_id", "sensor_type", "location", "window_start", "window_end", "count", "avg", "min", "max",
                "stddev", "p50", "p95", "p99", "anomaly_count", "health_pct")  # fmt: skip
    )
    return pl.from_arrow(out.toArrow()).sort("window_start", "sensor_id")


def gold_location_hourly(spark, silver_rows: pl.DataFrame) -> pl.DataFrame:
    from pyspark.sql import functions as F

    df = _to_spark(spark, silver_rows).withColumn("hour_start", F.date_trunc("hour", "event_time"))
    out = df.groupBy("location", "sensor_type", "hour_start").agg(*_stats(F, True), F.countDistinct("sensor_id").cast("long").alias("distinct_sensors")).select(
        "location", "sensor_type", "hour_start", "count", "avg", "min", "max", "stddev", "p50", "p95", "p99", "anomaly_count", "distinct_sensors"
    )
    return pl.from_arrow(out.toArrow()).sort("hour_start", "location", "sensor_type")


def gold_type_daily(spark, sensor_5m) -> pl.DataFrame:
    """Folded from the day's 5-minute rows, as `assets.transforms.iot.gold_type_daily`."""
    from pyspark.sql import functions as F

    df = (
        _to_spark(spark, sensor_5m)
        .withColumn("day", F.to_date("window_start"))
        .withColumn("__m2", F.pow(F.coalesce(F.col("stddev"), F.lit(0.0)), 2) * (F.col("count") - 1))
        .withColumn("__sum", F.col("avg") * F.col("count"))
    )
    day = df.groupBy("sensor_type", "day").agg(
        F.sum("count").cast("long").alias("count"), (F.sum("__sum") / F.sum("count")).alias("avg"), F.min("min").alias("min"),
        F.max("max").alias("max"), F.sum("__m2").alias("__m2"), F.sum("anomaly_count").cast("long").alias("anomaly_count"),
        F.countDistinct("sensor_id").cast("long").alias("distinct_sensors"),
    )  # fmt: skip
    spread = (
        df.join(day.select("sensor_type", "day", F.col("avg").alias("__day_avg")), ["sensor_type", "day"])
        .groupBy("sensor_type", "day")
        .agg(F.sum(F.col("count") * F.pow(F.col("avg") - F.col("__day_avg"), 2)).alias("__between"))
    )
    out = day.join(spread, ["sensor_type", "day"]).select(
        "sensor_type", "day", "count", "avg", "min", "max",
        F.when(F.col("count") > 1, F.sqrt((F.col("__m2") + F.col("__between")) / (F.col("count") - 1))).alias("stddev"),
        "anomaly_count", "distinct_sensors",
    )  # fmt: skip
    return pl.from_arrow(out.toArrow()).sort("day", "sensor_type")
