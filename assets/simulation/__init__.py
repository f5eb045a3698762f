"""Simulated events for the reference streams (their specs name them; `medallion demo`/`simulate` and the
benchmarks produce them): readings and ad events with noise, anomalies, duplicates and late events, and the
bad-input corpus."""
