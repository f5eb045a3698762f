"""A backlog in one run: many pending partitions of a stream carried through Silver, same-grain Gold and the
warehouse by one op, oldest first, instead of a run per partition.

A run costs ~0.7 s of Dagster bookkeeping around its work (run record, plan, a dozen events per step), as
much as an hour of a 1M-reading backlog takes to derive. `medallion run` uses this job when automation asks
for Silver of several partitions at once (a restart after a pause, a replay, late data across hours), and
`medallion backfill` for a range of them. Each
partition is reported as its assets' own runs report it: one materialization per asset and partition, its
contract check evaluations, the same metadata. A partition that fails its contract is not published, and
the run fails (as its own run would) once the others are carried; daily rollups follow by automation.
"""

import dagster as dg

from assets import keys
from assets.spec import StreamSpec
from assets.streaming import carry_to_gold, load_warehouse
from resources.lake import LakeResource
from resources.spark import SparkEngine
from resources.warehouse import WarehouseResource


CATCH_UP_FROM = 2  # partitions of a stream asked for at once that go in one catch-up run instead


def catch_up_job_name(spec: StreamSpec) -> str:
    return f"catch_up_{spec.name}"


def carried_keys(spec: StreamSpec) -> set[dg.AssetKey]:
    """What a catch-up run materializes for each partition: Silver, and same-grain Gold with its loads."""
    same_grain = [t for t in spec.gold if t.partitions == spec.partitions]
    return {keys.silver_key(spec), *(keys.gold_key(spec, t) for t in same_grain), *(keys.warehouse_key(spec, t) for t in same_grain)}


def catch_up_run_config(spec: StreamSpec, partitions: list[str]) -> dict:
    return {"ops": {f"carry_{spec.name}": {"config": {"partitions": sorted(partitions)}}}}


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
        partitions = sorted(set(config.partitions))
        for pk in partitions:
            spec.partitions.time_window_for_partition_key(pk)  # an unknown key fails here, before any work
        published, newest, failed = [], None, []
        for pk in partitions:
            gold, latest = yield from _holding_failures(carry_to_gold(context, spec, lake, spark, [pk], in_full={pk}, wait=True, rollups=False), pk, failed)
            published += gold
            newest = max(filter(None, [newest, latest]), default=None)
        # Each warehouse partition once, after all of its hours are carried.
        yield from load_warehouse(spec, lake, warehouse, published, newest, wait=True)
        context.log.info(f"carried {len(partitions)} {spec.name} partitions: {partitions[0]} … {partitions[-1]}")
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
        "first; `medallion run` and `medallion backfill` use it. Materializations and checks are reported per partition.",
    )
    def catch_up():
        carry()

    return catch_up
