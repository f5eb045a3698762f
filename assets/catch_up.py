"""A backlog in one run: many pending partitions of a stream carried through Silver, same-grain Gold and the
warehouse by one op, oldest first, instead of a run per partition.

A run costs ~0.7 s of Dagster bookkeeping around its work (run record, plan, a dozen events per step), as
much as an hour of a 1M-reading backlog takes to derive. `medallion run` uses this job when automation asks
for Silver of several partitions at once (a restart after a pause, a replay, late data across hours). Each
partition is reported as its assets' own runs report it: one materialization per asset and partition, its
contract check evaluations, the same metadata. A partition that fails its contract is not published, and
the run fails (as its own run would) once the others are carried; daily rollups follow by automation.
"""

import dagster as dg

from assets.spec import StreamSpec
from assets.streaming import carry_to_gold, load_days
from resources.lake import LakeResource
from resources.spark import SparkEngine
from resources.warehouse import WarehouseResource


def catch_up_job_name(spec: StreamSpec) -> str:
    return f"catch_up_{spec.name}"


class CatchUpConfig(dg.Config):
    partitions: list[str]  # the stream's partition keys to carry (any order: carried oldest first)


def _holding_failures(events, pk: str, failed: list):
    """Yield a partition's events, except failed check evaluations, which go to `failed`; return its result."""
    while True:
        try:
            event = next(events)
        except StopIteration as done:
            return done.value
        if isinstance(event, dg.AssetCheckEvaluation) and not event.passed:
            failed.append((pk, event))
        else:
            yield event


def build_catch_up_job(spec: StreamSpec) -> dg.JobDefinition:
    @dg.op(name=f"carry_{spec.name}", out={}, tags={"medallion/stream": spec.name})
    def carry(context: dg.OpExecutionContext, config: CatchUpConfig, lake: LakeResource, warehouse: WarehouseResource, spark: SparkEngine):
        # Waits for locks another process holds: everything asked for is carried (a backfill relies on it).
        keys = sorted(set(config.partitions))
        for pk in keys:
            spec.partitions.time_window_for_partition_key(pk)  # an unknown key fails here, before any work
        published, newest, failed = [], None, []
        for pk in keys:
            gold, latest = yield from _holding_failures(carry_to_gold(context, spec, lake, spark, [pk], in_full={pk}, wait=True), pk, failed)
            published += gold
            newest = max(filter(None, [newest, latest]), default=None)
        # Each warehouse day once, after all of its hours (a load swaps the whole day).
        yield from load_days(spec, lake, warehouse, published, newest, wait=True)
        context.log.info(f"carried {len(keys)} {spec.name} partitions: {keys[0]} … {keys[-1]}")
        if failed:
            # Failed contract checks are reported last: a run's latest evaluation of a check is what the UI,
            # the alert sensor and automation read, and a failure must not be hidden by later hours passing.
            yield from (event for _, event in failed)
            # As an asset's own run fails on its blocking check; what failed was not published.
            names = ", ".join(f"{e.asset_key.to_user_string()} {pk}" for pk, e in failed)
            raise dg.Failure(description=f"contract check failed for {names}: not published, the last good version keeps serving")

    @dg.job(
        name=catch_up_job_name(spec),
        tags={"medallion/stream": spec.name},
        description=f"{spec.name}: many Silver partitions (with their Gold and warehouse loads) in one run, oldest "
        "first; `medallion run` uses it for a backlog. Materializations and checks are reported per partition.",
    )
    def catch_up():
        carry()

    return catch_up
