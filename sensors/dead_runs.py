"""Runs whose process died (SIGKILL, OOM, a killed `dagster dev` or `medallion run`) are found within a tick,
marked failed with the reason, and what they had not yet materialized is requested again.

A run that dies stays STARTED in the instance forever: nobody is left to report its end, and automation
conditions treat its partitions as in progress, so they are never requested again. Dagster's code server
notices a run worker that dies under it, but not a run whose code server died with it (a killed `dagster
dev`, a host restart), nor a run executed in a process of ours (`medallion run`, `medallion backfill`), and
the DefaultRunLauncher has no worker health check for run monitoring.

A run's process is known from its event log (the engine reports the pid that executes its steps) and, for
runs we execute in process, from the owner tags (`owner_tags()`: pid, host, process start time). It is dead
when no process with that pid exists on this host, it is a zombie, or the pid was reused by a process that
started later. Runs on another host are never judged (run monitoring and the launcher's own health check
cover other launchers, e.g. Kubernetes).
"""

from __future__ import annotations

import os
import socket
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import dagster as dg


OWNER_PID_TAG = "medallion/pid"
OWNER_HOST_TAG = "medallion/host"
OWNER_STARTED_TAG = "medallion/pid_started"
DIED_TAG = "medallion/died"  # set on runs this module marked failed
RECOVERS_TAG = "medallion/recovers"  # set on the runs that redo their work
WILL_RETRY_TAG = "dagster/will_retry"  # Dagster's run-retry daemon reads it: we request the work ourselves

JUDGED = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
PID_SLACK_S = 2.0  # /proc's boot time is whole seconds
RECOVERY_LOOKBACK = timedelta(hours=6)


def process_started(pid: int) -> float | None:
    """Start time (epoch seconds) of a live, non-zombie process; None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    if fields[0] in ("Z", "X"):  # a zombie is dead, its parent has not reaped it yet
        return None
    return _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise RuntimeError("/proc/stat has no btime")


def owner_tags() -> dict[str, str]:
    """Tags for runs this process executes itself (`execute_in_process`), so a later process can tell
    whether they died with it."""
    pid = os.getpid()
    return {OWNER_PID_TAG: str(pid), OWNER_HOST_TAG: socket.gethostname(), OWNER_STARTED_TAG: f"{process_started(pid) or 0:.2f}"}


@dataclass(frozen=True)
class RunProcess:
    pid: int
    started: float | None  # exact start time (owner tags), or None
    reported_at: float | None  # when the engine reported the pid: the process started before that

    def alive(self) -> bool:
        started = process_started(self.pid)
        if started is None:
            return False
        if self.started is not None:
            return abs(started - self.started) <= PID_SLACK_S
        return self.reported_at is None or started <= self.reported_at + PID_SLACK_S


def run_process(instance: dg.DagsterInstance, run: dg.DagsterRun) -> RunProcess | None:
    """The process executing `run`, if it runs (or ran) on this host; None if that cannot be known here."""
    if OWNER_PID_TAG in run.tags:
        if run.tags.get(OWNER_HOST_TAG) != socket.gethostname():
            return None
        return RunProcess(int(run.tags[OWNER_PID_TAG]), float(run.tags.get(OWNER_STARTED_TAG) or 0) or None, None)
    if not isinstance(instance.run_launcher, dg.DefaultRunLauncher):
        return None  # run workers elsewhere (Kubernetes, ...): the launcher's health check covers them
    latest = None
    for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        data = entry.dagster_event.engine_event_data if entry.dagster_event else None
        pid = data.metadata.get("pid") if data is not None and data.metadata else None
        if pid is not None:
            latest = RunProcess(int(pid.value), None, entry.timestamp)
    return latest


def is_dead(instance: dg.DagsterInstance, run: dg.DagsterRun) -> RunProcess | None:
    """The dead process of an unfinished run, or None (alive, finished, or not ours to judge)."""
    if run.status not in JUDGED:
        return None
    proc = run_process(instance, run)
    if proc is None or proc.alive():
        return None
    # Read the status again: a run that just finished has released its process legitimately.
    current = instance.get_run_by_id(run.run_id)
    return proc if current is not None and current.status in JUDGED else None


def reap(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    """Mark `run` failed if its process died. Returns whether it did."""
    proc = is_dead(instance, run)
    if proc is None:
        return False
    instance.add_run_tags(run.run_id, {DIED_TAG: "true", WILL_RETRY_TAG: "false"})
    instance.report_run_failed(
        run,
        message=f"The run's process (pid {proc.pid}) died without reporting an end (killed, out of memory, or its host "
        "restarted); marked failed by medallion. What it had not materialized is requested again by the "
        "`recover_dead_runs` sensor.",
    )
    return True


def unfinished_work(instance: dg.DagsterInstance, run_id: str) -> dict[str, list[dg.AssetKey]]:
    """Partition key -> asset keys the run planned but never materialized."""
    planned: dict[str, set] = defaultdict(set)
    done: set[tuple] = set()
    of_type = {dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, dg.DagsterEventType.ASSET_MATERIALIZATION}
    for entry in instance.all_logs(run_id, of_type=of_type):
        event = entry.dagster_event
        if event is None or event.asset_key is None or event.partition is None:
            continue
        if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED:
            planned[event.partition].add(event.asset_key)
        else:
            done.add((event.partition, event.asset_key))
    out = {}
    for pk, asset_keys in planned.items():
        left = sorted((k for k in asset_keys if (pk, k) not in done), key=lambda k: k.to_user_string())
        if left:
            out[pk] = left
    return out


def recovery_requests(instance: dg.DagsterInstance, run: dg.DagsterRun, jobs: dict[str, str]) -> list[dg.RunRequest]:
    """The dead run's unfinished work, one request per partition, to the job that holds those assets."""
    tags = {RECOVERS_TAG: run.run_id, **{k: v for k, v in run.tags.items() if k == "medallion/stream"}}
    requests = []
    for pk, asset_keys in sorted(unfinished_work(instance, run.run_id).items()):
        by_job: dict[str, list[dg.AssetKey]] = defaultdict(list)
        for k in asset_keys:
            if k.to_user_string() in jobs:  # Bronze is not: the Kafka sensor re-ingests from committed offsets
                by_job[jobs[k.to_user_string()]].append(k)
        for job_name, selection in sorted(by_job.items()):
            requests.append(
                dg.RunRequest(run_key=f"recover:{run.run_id}:{pk}:{job_name}", job_name=job_name, partition_key=pk, asset_selection=selection, tags=tags)
            )
    return requests


def build_dead_run_sensor(jobs: dict[str, dg.UnresolvedAssetJobDefinition]) -> dg.SensorDefinition:
    """`jobs`: asset key (user string) -> the job that re-derives it (see `assets.factory.rederive_jobs`)."""
    job_names = {k: j.name for k, j in jobs.items()}
    distinct = list({j.name: j for j in jobs.values()}.values())

    @dg.sensor(
        name="recover_dead_runs",
        jobs=distinct,
        minimum_interval_seconds=1,  # every daemon loop: a dead run blocks its partitions until found
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Marks runs whose process died as failed and requests again the Silver, Gold and warehouse "
        "partitions they had not materialized (Bronze resumes through the Kafka sensors).",
    )
    def recover_dead_runs(context: dg.SensorEvaluationContext):
        instance = context.instance
        reaped = []
        for run in instance.get_runs(filters=dg.RunsFilter(statuses=JUDGED), limit=200):
            if reap(instance, run):
                reaped.append(run.run_id)
                context.log.warning(f"run {run.run_id} ({run.job_name}) died; marked failed")
        # Every run marked dead lately whose work was not requested yet, also by a tick that failed after marking
        # it (run keys make a repeated request harmless).
        recent = dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.FAILURE], tags={DIED_TAG: "true"}, updated_after=datetime.now(timezone.utc) - RECOVERY_LOOKBACK
        )
        requests = []
        for run in instance.get_runs(filters=recent, limit=100):
            if not instance.get_runs(filters=dg.RunsFilter(tags={RECOVERS_TAG: run.run_id}), limit=1):
                requests += recovery_requests(instance, run, job_names)
        if not requests:
            reason = f"marked {len(reaped)} dead run(s) failed; nothing left to redo" if reaped else "no dead runs"
            return dg.SkipReason(reason)
        return requests

    return recover_dead_runs
