"""The history sensor of a stream: when re-deriving a Silver partition changed the history it hands on (late
data near the end of an hour, a sensor that reports rarely), the next partition with data is re-derived,
and so on until a history comes out unchanged. Only partitions whose input changed are touched.

It follows the observations each Silver derivation logs (`assets/history.py`). Besides the change itself
it checks every derivation against the current history of the partition it started from, so a partition
derived from a history that was replaced while it ran is derived again.
"""

from __future__ import annotations

import dagster as dg

from assets import keys
from assets.history import CONTEXT_HASH, CONTEXT_PARTITION, HISTORY_CHANGED, HISTORY_HASH, has_history, later_with_data, latest_observation
from assets.spec import StreamSpec
from resources.lake import LakeResource
from sensors.tick import SensorResources, tick_instance

BATCH = 500  # observations read per tick


def build_history_sensor(spec: StreamSpec, job, resources) -> dg.SensorDefinition:
    """`job`: an asset job holding the stream's Silver asset (see `assets.factory.rederive_jobs`); `resources`:
    the definitions' (it takes `lake`)."""
    silver = keys.silver_key(spec)
    tick_resources = SensorResources(resources, "lake")

    @dg.sensor(
        name=f"history_{spec.name}",
        job=job,
        minimum_interval_seconds=1,  # every daemon loop
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Re-derives {spec.name} Silver partitions whose history (the context handed on by the partition "
        "before them) changed; Gold and the warehouse follow by automation.",
    )
    def history_sensor(context: dg.SensorEvaluationContext):
        instance = tick_instance(context)
        lake: LakeResource = tick_resources().lake
        after = int(context.cursor) if context.cursor else None
        result = instance.fetch_observations(dg.AssetRecordsFilter(asset_key=silver, after_storage_id=after), limit=BATCH, ascending=True)
        wanted: dict[str, tuple[str, str]] = {}  # partition -> (history it must start from, why)
        for record in result.records:
            after = record.storage_id
            pk = record.partition_key
            meta = {k: v.value for k, v in record.asset_observation.metadata.items()}
            latest = latest_observation(instance, spec, pk)
            if latest is None or any(latest.get(k) != meta.get(k) for k in (CONTEXT_HASH, HISTORY_HASH)):
                continue  # derived again since: that derivation's own observation is the one to follow
            started_from = meta.get(CONTEXT_PARTITION)
            if started_from not in (None, "-"):
                current = latest_observation(instance, spec, started_from)
                if current is not None and current.get(HISTORY_HASH) != meta.get(CONTEXT_HASH):
                    wanted[pk] = (current[HISTORY_HASH], f"derived from a history of {started_from} since replaced")
            if meta.get(HISTORY_CHANGED):
                # Every later partition that starts from this history: up to the first with a history of its own
                # (one whose Silver failed its contract, or was never derived, hands this one on).
                for nxt in later_with_data(spec, lake, pk):
                    follower = latest_observation(instance, spec, nxt)
                    # Never derived: it reads the current history when it is. Derived from this one: current.
                    if follower is not None and follower.get(CONTEXT_HASH) != meta[HISTORY_HASH]:
                        wanted[nxt] = (meta[HISTORY_HASH], f"the history handed on by {pk} changed")
                    if has_history(spec, lake, nxt):
                        break
        if after is not None:
            context.update_cursor(str(after))
        if not wanted:
            return dg.SkipReason(f"no history changes to follow ({len(result.records)} Silver derivations read)")
        return [
            dg.RunRequest(
                run_key=f"history:{pk}:{digest[:16]}",
                partition_key=pk,
                asset_selection=[silver],
                run_config={"ops": {silver.to_python_identifier(): {"config": {"publish_unchanged": False}}}},
                tags={"medallion/stream": spec.name, "medallion/reason": why},
            )
            for pk, (digest, why) in sorted(wanted.items())
        ]

    return history_sensor
