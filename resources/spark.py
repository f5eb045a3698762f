"""The Spark engine: dagster-pyspark's `PySparkResource`, started only when a transform needs it.

Local mode by default (`local[2]`, this machine's cores); point it at a cluster with `MEDALLION_SPARK_MASTER`
(e.g. `spark://host:7077` or `yarn`) and extra settings in `spark_config`. Partitions with at least
`min_rows` Bronze rows (`MEDALLION_SPARK_MIN_ROWS`) run on Spark when their stream has a Spark transform.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg
from dagster_pyspark import PySparkResource
from pydantic import Field, PrivateAttr


def _default_config() -> dict[str, Any]:
    return {
        "spark.master": os.environ.get("MEDALLION_SPARK_MASTER", "local[2]"),
        "spark.app.name": "medallion",
        "spark.sql.session.timeZone": "UTC",  # event times are UTC instants; never the JVM's zone
        "spark.ui.enabled": "false",
        "spark.sql.shuffle.partitions": "8",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.driver.memory": os.environ.get("MEDALLION_SPARK_DRIVER_MEMORY", "4g"),
    }


class SparkEngine(PySparkResource):
    spark_config: dict[str, Any] = Field(default_factory=_default_config)
    min_rows: int = Field(default_factory=lambda: int(os.environ.get("MEDALLION_SPARK_MIN_ROWS", "20000000")))
    _session: Any = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Unlike PySparkResource, do not start a JVM for every run: most runs never need it."""

    def session(self):
        if self._session is None:
            from dagster_pyspark.resources import spark_session_from_config

            self._session = spark_session_from_config(self.spark_config)
            self._session.sparkContext.setLogLevel("WARN")
        return self._session

    @property
    def spark_session(self):
        return self.session()

    def stop(self) -> None:
        if self._session is not None:
            self._session.stop()
            self._session = None
