"""What a sensor's tick takes from Dagster (the instance, its resources), built once per code-server process
instead of once per tick.

Dagster builds a new `DagsterInstance` for every tick that reads `context.instance` or takes a resource
parameter: its storages check their alembic revisions, which loads every migration script (measured here:
~90 ms of CPU per tick with SQLite storage). With these sensors ticking every daemon loop that was about
half of the code server's CPU, taken from the runs on a two-core machine. Sensors therefore get their
resources from the definitions they are built with (`SensorResources`) and the instance from
`tick_instance`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from typing import Any

import dagster as dg

_lock = threading.Lock()
_instances: dict[str, dg.DagsterInstance] = {}


def tick_instance(context: dg.SensorEvaluationContext) -> dg.DagsterInstance:
    """The instance the tick is evaluated against: one per process and instance (the daemon's ticks all
    carry the same reference); a context built with an instance (`build_sensor_context`) uses that one."""
    ref = context.instance_ref
    if ref is None:
        return context.instance
    key = dg.serialize_value(ref)
    with _lock:
        if key not in _instances:
            _instances[key] = dg.DagsterInstance.from_ref(ref)
        return _instances[key]


class SensorResources:
    """Some of the definitions' resources, built (EnvVars resolved) on a sensor's first tick and kept for the
    process: the resources here hold configuration, not connections, so a built one serves every tick."""

    def __init__(self, resources: Mapping[str, Any], *names: str):
        missing = [n for n in names if n not in resources]
        if missing:
            raise dg.DagsterInvalidDefinitionError(f"sensor resources {missing} are not among the definitions' resources")
        self._defs = {n: resources[n] for n in names}
        self._built = None
        self._lock = threading.Lock()

    def __call__(self):
        with self._lock:
            if self._built is None:
                # Entered for the life of the process (never torn down: nothing here holds a connection).
                self._built = contextlib.ExitStack().enter_context(dg.build_resources(self._defs))
            return self._built
