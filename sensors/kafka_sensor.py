"""The Kafka sensor: compares Bronze's committed offsets with the topic and requests ingest runs.

The cursor records what Bronze has committed (its Delta transaction versions, so it never runs ahead of
what landed) and the lag seen. Run keys are the start offsets, so re-requests of the same work are
harmless; a failed attempt gets a new key so it is retried.
"""


import json

import dagster as dg

from assets import keys
from assets.bronze import DEFAULT_MAX_RECORDS, IngestSnapshot, needs_announcing, offsets_tag
from assets.spec import StreamSpec
from resources.continuity import verify_log_continuity
from resources.kafka import KafkaResource, KafkaUnavailableError, OffsetsWentBackwardsError
from resources.lake import LakeResource
from sensors.dead_runs import reap
from sensors.tick import SensorResources, tick_instance

ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
START_OFFSETS_TAG = "medallion/start_offsets"


def build_kafka_sensor(spec: StreamSpec, job, resources, max_records_per_run: int = DEFAULT_MAX_RECORDS, stream_for_s: float = 0.0) -> dg.SensorDefinition:
    """`resources`: the definitions' (it takes `kafka` and `lake`). `stream_for_s` > 0: each run is a stream
    run of that length, and one more waits behind it on the ingest lock (its process start overlaps the
    current run), so the topic is always being consumed."""
    op_name = keys.bronze_key(spec).to_python_identifier()
    tick_resources = SensorResources(resources, "kafka", "lake")

    @dg.sensor(
        name=f"kafka_{spec.name}",
        job=job,
        # The daemon loops every 5 s; a 5 s minimum made ticks land 10 s apart whenever a loop came a hair early.
        minimum_interval_seconds=1,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Watches `{spec.topic}` offsets; requests `{job.name}` when records are waiting.",
    )
    def kafka_sensor(context: dg.SensorEvaluationContext):
        instance = tick_instance(context)
        built = tick_resources()
        kafka: KafkaResource = built.kafka
        lake: LakeResource = built.lake
        try:
            parts = kafka.partitions(spec.topic)
        except KafkaUnavailableError as exc:
            return dg.SkipReason(f"Kafka unavailable, cursor unchanged: {exc}")
        snapshot = IngestSnapshot.load(lake, spec, parts)
        committed = snapshot.start
        active = _live_runs(context, instance, job, spec)
        try:
            verify_log_continuity(kafka, spec.topic, snapshot.first_records)
            high = kafka.end_offsets(spec.topic, parts)
            # The watermark may be stale (Tansu); where it shows no lag, probe by fetching at the committed offset.
            quiet = {p: o for p, o in committed.items() if high[p] <= o}
            probed = kafka.has_records_after(spec.topic, quiet) if quiet else {}
        except KafkaUnavailableError as exc:
            return dg.SkipReason(f"Kafka unavailable, cursor unchanged: {exc}")
        except OffsetsWentBackwardsError as exc:
            return dg.SkipReason(f"NOT ingesting {spec.topic}: {exc}")
        lag = {p: max(0, high[p] - committed[p]) for p in parts}
        waiting = [p for p in parts if lag[p] > 0 or probed.get(p)]
        lag_text = ", ".join(f"p{p}: {lag[p]}{'+' if probed.get(p) else ''}" for p in parts)
        context.update_cursor(json.dumps({"committed": committed, "high_watermarks": high, "lag": lag}))
        # One run ingesting and one starting up behind it: the next run's process start overlaps the current
        # run's work, and it takes the ingest lock the moment the current one lets go. Never more.
        if len(active) >= 2:
            return dg.SkipReason(
                f"runs {', '.join(r.run_id for r in active)} of {job.name} in progress; lag {lag_text} (committed {committed})"
            )
        recovery = needs_announcing(instance, spec, lake)
        if not waiting and not recovery and not (stream_for_s > 0 and active):
            return dg.SkipReason(f"no new records in {spec.topic}: lag 0 on all partitions (committed {committed})")
        tag = offsets_tag(committed)
        failed = instance.get_runs(
            filters=dg.RunsFilter(
                job_name=job.name,
                statuses=[dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED],
                tags={START_OFFSETS_TAG: tag},
            )
        )
        # The run targets the newest partition: fresh records are there, and it rides to the warehouse at once.
        return dg.RunRequest(
            run_key=f"{spec.name}:{tag}#{len(failed)}+{len(active)}",
            partition_key=spec.partitions.get_last_partition_key(),
            run_config={"ops": {op_name: {"config": {"max_records": max_records_per_run, "stream_for_s": stream_for_s}}}},
            tags={
                "medallion/stream": spec.name,
                START_OFFSETS_TAG: tag,
                "medallion/lag": lag_text,
                **({"medallion/recovery": "true"} if recovery else {}),
            },
        )

    return kafka_sensor


def _live_runs(context: dg.SensorEvaluationContext, instance: dg.DagsterInstance, job, spec: StreamSpec) -> list:
    """Ingest runs still in flight. One whose process died (SIGKILL, OOM, host loss) would hold up ingestion:
    it is marked failed here (its Bronze work is recovered by the next run, the rest by `recover_dead_runs`)."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(job_name=job.name, statuses=ACTIVE, tags={"medallion/stream": spec.name}), limit=5
    )
    live = []
    for run in runs:
        if reap(instance, run):
            context.log.warning(f"marked dead ingest run {run.run_id} as failed")
            continue
        live.append(run)
    return live
