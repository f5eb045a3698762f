"""Sensors: Kafka offset sensors that start ingestion, and automation sensors per stream and layer."""
