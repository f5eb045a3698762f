"""Engines other than polars for stream transforms. Each returns the same rows as the polars transform."""
