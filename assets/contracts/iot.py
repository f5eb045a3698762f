"""IoT sensor readings: what a valid reading is (row contract) and what published Silver/Gold guarantee."""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from assets.contracts.lineage import SilverLineage, UtcTime

# Physical range per sensor type: outside it the reading is impossible, a contract failure (quarantine).
PHYSICAL_RANGE = {
    "temperature": (-40.0, 85.0),
    "humidity": (0.0, 100.0),
    "pressure": (300.0, 1100.0),
    "vibration": (0.0, 10.0),
}
UNITS = {"temperature": "°C", "humidity": "%", "pressure": "hPa", "vibration": "g"}
# Expected operating band: outside it (but physically possible) the reading is flagged as an anomaly.
EXPECTED_BAND = {
    "temperature": (-20.0, 60.0),
    "humidity": (5.0, 95.0),
    "pressure": (950.0, 1070.0),
    "vibration": (0.0, 2.0),
}
NOMINAL_INTERVAL_S = {"temperature": 1.0, "humidity": 1.0, "pressure": 1.0, "vibration": 1.0}



def _by_type(mapping: dict, pick) -> pl.Expr:
    expr = pl.lit(None, pl.Float64)
    for t, v in mapping.items():
        expr = pl.when(pl.col("sensor_type") == t).then(pl.lit(pick(v), pl.Float64)).otherwise(expr)
    return expr


def physical_low() -> pl.Expr:
    return _by_type(PHYSICAL_RANGE, lambda r: r[0])


def physical_high() -> pl.Expr:
    return _by_type(PHYSICAL_RANGE, lambda r: r[1])


class IotReading(pa.DataFrameModel):
    """One reading as it must look to enter Silver. Failing rows are quarantined with the check's name."""

    event_id: str = pa.Field(nullable=False, str_length={"min_value": 1, "max_value": 128})
    sensor_id: str = pa.Field(nullable=False, str_length={"min_value": 1, "max_value": 128})
    sensor_type: str = pa.Field(nullable=False, isin=list(PHYSICAL_RANGE))
    location: str = pa.Field(nullable=False)
    value: float = pa.Field(nullable=False)
    unit: str = pa.Field(nullable=False)
    parse_issues: str = pa.Field(nullable=True)

    @pa.dataframe_check(name="fields_present_and_typed")
    def fields_typed(cls, data) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col("parse_issues").is_null())

    @pa.check("value", name="value_is_finite")
    def value_finite(cls, data) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col(data.key).is_finite().fill_null(True))

    @pa.dataframe_check(name="value_within_physical_range")
    def value_in_range(cls, data) -> pl.LazyFrame:
        v = pl.col("value")
        ok = v.is_between(physical_low(), physical_high()) | physical_low().is_null() | v.is_null() | v.is_nan()
        return data.lazyframe.select(ok)

    @pa.dataframe_check(name="unit_matches_sensor_type")
    def unit_matches(cls, data) -> pl.LazyFrame:
        expected = pl.col("sensor_type").replace_strict(UNITS, default=None)
        return data.lazyframe.select((pl.col("unit") == expected) | expected.is_null() | pl.col("unit").is_null())

    class Config:
        strict = False


class IotSilver(SilverLineage):
    """Published Silver: typed, deduplicated, enriched. Any failure here blocks the whole partition."""

    event_id: str = pa.Field(unique=True, nullable=False)
    sensor_id: str = pa.Field(nullable=False)
    sensor_type: str = pa.Field(isin=list(PHYSICAL_RANGE))
    location: str
    value: float
    unit: str
    z_score: float = pa.Field(nullable=True)
    is_anomaly: bool = pa.Field(nullable=False)

    class Config:
        strict = True


class _Stats(pa.DataFrameModel):
    """Statistics every Gold table carries: they must be internally consistent."""

    count: int = pa.Field(gt=0)
    avg: float
    min: float
    max: float
    stddev: float = pa.Field(nullable=True, ge=0)
    anomaly_count: int = pa.Field(ge=0)

    @pa.dataframe_check(name="min_le_avg_le_max")
    def min_le_avg_le_max(cls, data) -> pl.LazyFrame:
        eps = 1e-9
        return data.lazyframe.select((pl.col("min") <= pl.col("avg") + eps) & (pl.col("avg") <= pl.col("max") + eps))

    class Config:
        strict = True


class _PercentileStats(_Stats):
    p50: float
    p95: float
    p99: float

    @pa.dataframe_check(name="percentiles_ordered")
    def percentiles_ordered(cls, data) -> pl.LazyFrame:
        return data.lazyframe.select((pl.col("p50") <= pl.col("p95")) & (pl.col("p95") <= pl.col("p99")))


class IotSensorWindow(_PercentileStats):
    sensor_id: str = pa.Field(nullable=False)
    sensor_type: str
    location: str
    window_start: UtcTime
    window_end: UtcTime
    health_pct: float = pa.Field(ge=0, le=100)


class IotLocationHourly(_PercentileStats):
    location: str
    sensor_type: str
    hour_start: UtcTime
    distinct_sensors: int = pa.Field(gt=0)


class IotTypeDaily(_Stats):
    sensor_type: str
    day: pl.Date
    distinct_sensors: int = pa.Field(gt=0)
