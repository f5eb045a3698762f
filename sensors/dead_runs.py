"""Runs whose process died (SIGKILL, OOM, a killed `dagster dev` or `medallion run`) are found within a tick,
marked failed with the reason, and what they had not yet materialized is requested again.

A run that dies stays STARTED in the instance forever: nobody is left to report its end, and automation
conditions treat its partitions as in progress, so they are never requested again. Dagster's code server
notices a run worker that dies under it, but not a run whose code server died with it (a killed `dagster
dev`, a host restart), nor a run executed in a process of ours (`medallion run`, `medallion backfill`), and
the DefaultRunLauncher has no worker health check for run monitoring.

A run's process is known from its event log (the engine reports the pid that executes its steps) and, for
runs we execute in process, from the owner tags (`owner_tags()`: pid, host and pid namespace, boot id and
start ticks). It is dead when no process with that pid exists, it is a zombie, or the pid now belongs to
another process. Runs of another host or container are never judged; neither are runs of launchers other
than the DefaultRunLauncher (Kubernetes, ...: run monitoring uses their own health checks). The
DefaultRunLauncher runs workers on the code server's host, so one instance shared by several hosts that
each launch runs with it is not supported (Dagster's own assumption for that launcher).
"""

from __future__ import annotations

import os
import socket
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg

from sensors.tick import tick_instance

OWNER_PID_TAG = "medallion/pid"
OWNER_HOST_TAG = "medallion/host"
OWNER_STARTED_TAG = "medallion/pid_started"
DIED_TAG = "medallion/died"  # set on runs this module marked failed
RECOVERS_TAG = "medallion/recovers"  # set on the runs that redo their work
RECOVERY_TAG = "medallion/recovery"  # set on a dead run whose work needed no run
MAX_RETRIES_TAG = "dagster/max_retries"  # 0 on a run marked dead: we request its work ourselves, Dagster must not retry it too

JUDGED = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
REUSE_AFTER_S = 120.0
NEVER_STARTED_AFTER_S = 30.0  # a run worker reports its pid a few seconds after launch, ~12 s seen under load
PID_SLACK_S = 2.0
RECOVERY_LOOKBACK = timedelta(hours=6)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a process, from /proc; None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[19])


def process_ticks(pid: int) -> int | None:
    """Start of a live, non-zombie process in clock ticks since boot: with the boot id, it names the process
    whatever the wall clock does (a VM's clock may be stepped)."""
    stat = _stat(pid)
    if stat is None or stat[0] in ("Z", "X"):  # a zombie is dead, its parent has not reaped it yet
        return None
    return stat[1]


def process_started(pid: int) -> float | None:
    """Start time of a live, non-zombie process on the wall clock (epoch seconds); None if there is none."""
    ticks = process_ticks(pid)
    return None if ticks is None else _boot_time() + ticks / os.sysconf("SC_CLK_TCK")


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise RuntimeError("/proc/stat has no btime")


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def pid_namespace() -> str | None:
    """Which pids this process sees (containers on one host share a hostname only by accident); None where
    there is no /proc (then no run is judged: better never than wrongly)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def owner_tags() -> dict[str, str]:
    """Tags for runs this process executes itself (`execute_in_process`), so a later process can tell
    whether they died with it."""
    pid = os.getpid()
    return {
        OWNER_PID_TAG: str(pid),
        OWNER_HOST_TAG: f"{socket.gethostname()}/{pid_namespace()}",
        OWNER_STARTED_TAG: f"{boot_id()}/{process_ticks(pid)}",
    }


@dataclass(frozen=True)
class RunProcess:
    pid: int
    identity: str | None  # "<boot id>/<start ticks>" of the process (owner tags), or None
    reported_at: float | None  # when the engine reported the pid (wall clock): the process started before

    def alive(self) -> bool:
        return self.why_dead() is None

    def why_dead(self) -> str | None:
        """None while the process lives; else why it is taken for dead."""
        ticks = process_ticks(self.pid)
        if ticks is None:
            return f"no live process has pid {self.pid}"
        if self.identity is not None and self.identity != f"{boot_id()}/{ticks}":
            return f"pid {self.pid} now belongs to another process (or the host rebooted)"
        # Only the wall clock relates a pid the engine reported to a process's start, and a VM's clock can be
        # stepped: a process must have started well after the report to be taken for another one.
        started = process_started(self.pid)
        if self.identity is None and self.reported_at is not None and started > self.reported_at + REUSE_AFTER_S:
            return f"pid {self.pid} now belongs to a process started {started - self.reported_at:.0f} s after the run reported it"
        return None


def run_process(instance: dg.DagsterInstance, run: dg.DagsterRun) -> RunProcess | None:
    """The process executing `run`, if it runs (or ran) where this process can see it; None if that cannot be
    known here."""
    namespace = pid_namespace()
    if namespace is None:
        return None
    if OWNER_PID_TAG in run.tags:
        if run.tags.get(OWNER_HOST_TAG) != f"{socket.gethostname()}/{namespace}":
            return None
        return RunProcess(int(run.tags[OWNER_PID_TAG]), run.tags.get(OWNER_STARTED_TAG) or None, None)
    # The DefaultRunLauncher starts run workers as children of the code server, which also evaluates this
    # sensor: they share its pids. Other launchers run workers elsewhere (Kubernetes, ...): their own health
    # check covers them.
    if not isinstance(instance.run_launcher, dg.DefaultRunLauncher):
        return None
    latest = None
    for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        data = entry.dagster_event.engine_event_data if entry.dagster_event else None
        pid = data.metadata.get("pid") if data is not None and data.metadata else None
        if pid is not None:
            latest = RunProcess(int(pid.value), None, entry.timestamp)
    return latest


def _never_started(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str | None:
    """A run the DefaultRunLauncher handed to a code server that died before its worker reported a pid (a
    killed `dagster dev`): STARTING, with no process, launched before this code server existed and long
    enough ago that a worker orphaned by it would have reported its pid."""
    if run.status != dg.DagsterRunStatus.STARTING or OWNER_PID_TAG in run.tags or not isinstance(instance.run_launcher, dg.DefaultRunLauncher):
        return None
    launched = [e.timestamp for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.PIPELINE_STARTING)]
    ours = process_started(os.getpid())
    if not launched or ours is None or launched[-1] > ours - PID_SLACK_S or time.time() - launched[-1] < NEVER_STARTED_AFTER_S:
        return None
    return f"it was handed to a code server that is gone and no worker reported a process in {time.time() - launched[-1]:.0f} s"


def why_dead(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str | None:
    """Why an unfinished run's process is taken for dead, or None (alive, finished, or not ours to judge)."""
    if run.status not in JUDGED:
        return None
    proc = run_process(instance, run)
    reason = proc.why_dead() if proc is not None else _never_started(instance, run)
    if reason is None:
        return None
    # Read the status again: a run that just finished has released its process legitimately.
    current = instance.get_run_by_id(run.run_id)
    return reason if current is not None and current.status in JUDGED else None


def reap(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    """Mark `run` failed if its process died. Returns whether it did."""
    reason = why_dead(instance, run)
    if reason is None:
        return False
    instance.add_run_tags(run.run_id, {DIED_TAG: "true", MAX_RETRIES_TAG: "0"})
    instance.report_run_failed(
        run,
        message=f"The run's process died without reporting an end ({reason}: killed, out of memory, or its host "
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
        instance = tick_instance(context)
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
            if run.tags.get(RECOVERY_TAG) or instance.get_runs(filters=dg.RunsFilter(tags={RECOVERS_TAG: run.run_id}), limit=1):
                continue
            redo = recovery_requests(instance, run, job_names)
            if not redo:  # e.g. died with only Bronze left, which the Kafka sensor resumes: not looked at again
                instance.add_run_tags(run.run_id, {RECOVERY_TAG: "nothing left to redo"})
            requests += redo
        if not requests:
            reason = f"marked {len(reaped)} dead run(s) failed; nothing left to redo" if reaped else "no dead runs"
            return dg.SkipReason(reason)
        return requests

    return recover_dead_runs
