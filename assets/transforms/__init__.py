"""Plain functions over polars frames: no Dagster import, testable without an instance."""
