"""Connections to the outside world: Kafka, the lake, the warehouse. Imports nothing of ours but settings."""
