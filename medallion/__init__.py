"""The platform's entry points: the Dagster definitions, the console script, the event simulator."""
