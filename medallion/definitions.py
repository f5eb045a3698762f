"""Everything assembled into one `Definitions`: the code location named by workspace.yaml."""

from __future__ import annotations

import dagster as dg

from assets import keys
from assets.erasure import erasure_job
from assets.factory import build_stream, rederive_jobs
from assets.maintenance import build_maintenance
from assets.spec import StreamSpec
from assets.streams import STREAMS
from resources.config import alert_webhook, platform_resources
from resources.settings import load_settings
from resources.spark import SparkEngine
from sensors.alerts import alert_on_run_failure, build_check_failure_alert
from sensors.automation import automation_sensors
from sensors.broker_segments import build_broker_segments_sensor
from sensors.dead_runs import build_dead_run_sensor
from sensors.history import build_history_sensor
from sensors.kafka_sensor import build_kafka_sensor


def build_definitions(streams: tuple[StreamSpec, ...] = STREAMS, resources: dict | None = None) -> dg.Definitions:
    assets, jobs, sensors = [], [], []
    settings = load_settings()
    rederive = rederive_jobs(streams)  # asset key -> the job that re-derives it (one per partitioning)
    resources = {"spark": SparkEngine(), "alerts": alert_webhook(), **(resources if resources is not None else platform_resources())}
    for spec in streams:
        built = build_stream(spec)
        assets += built.assets
        jobs += [built.ingest_job, built.catch_up_job]
        sensors.append(build_kafka_sensor(spec, built.ingest_job, resources, stream_for_s=settings.stream_for_s))
        sensors += automation_sensors(spec, settings.automation_every_s)
        if spec.history is not None:
            sensors.append(build_history_sensor(spec, rederive[keys.silver_key(spec).to_user_string()], resources))
    jobs += list({j.name: j for j in rederive.values()}.values())
    sensors += [build_dead_run_sensor(rederive), alert_on_run_failure, build_check_failure_alert(streams, resources), build_broker_segments_sensor(streams, resources)]
    maintenance, maintenance_schedule = build_maintenance(streams)
    return dg.Definitions(
        assets=[*assets, maintenance],
        jobs=[*jobs, erasure_job(streams), maintenance_schedule.job],
        schedules=[maintenance_schedule],
        sensors=sensors,
        resources=resources,
        # In-process: a run of one partition is seconds of work; a subprocess per step would triple it.
        executor=dg.in_process_executor,
    )


defs = build_definitions()
