"""Sensor ticks as the daemon makes them: the context carries only a reference to the instance. Dagster would
build an instance from it for every tick (~90 ms of CPU each); the sensors share one per process
(`sensors/tick.py`)."""

from datetime import datetime, timezone

import dagster as dg

from tests.conftest import produce, reading
from tests.helpers import definitions

TS = datetime(2026, 11, 20, 5, 10, tzinfo=timezone.utc)


def test_the_daemons_ticks_build_the_instance_once_per_process(spec, resources, instance, kafka, monkeypatch):
    built = []
    from_ref = dg.DagsterInstance.from_ref

    def counted(ref):
        built.append(ref)
        return from_ref(ref)

    monkeypatch.setattr(dg.DagsterInstance, "from_ref", staticmethod(counted))
    defs = definitions(spec, resources)
    produce(kafka, spec.topic, [reading(i, TS, sensor=i % 5) for i in range(20)])
    # Every sensor of ours (Dagster's own run-status and automation sensors are Dagster's business).
    names = [f"kafka_{spec.name}", f"history_{spec.name}", "recover_dead_runs", "embedded_broker_segments", "alert_on_check_failure"]
    results = {}
    for _ in range(3):
        for name in names:
            ctx = dg.build_sensor_context(instance_ref=instance.get_ref(), definitions=defs)
            results.setdefault(name, []).append(defs.resolve_sensor_def(name).evaluate_tick(ctx))
    # The shared instance and resources are the real ones: the Kafka sensor sees the 20 waiting records.
    assert all(len(r.run_requests) == 1 for r in results[f"kafka_{spec.name}"])
    # One for all ticks, plus the one Dagster builds itself to resolve a tick's run requests (3 here).
    requesting = sum(bool(r.run_requests) for rs in results.values() for r in rs)
    assert len(built) == 1 + requesting, f"{len(built)} instances built for {3 * len(names)} ticks ({requesting} requesting runs)"
    assert "no dead runs" in results["recover_dead_runs"][-1].skip_message
    assert "KAFKA_BOOTSTRAP_SERVERS" in results["embedded_broker_segments"][-1].skip_message
