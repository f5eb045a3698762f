"""A child process that runs one platform job against a shared instance, so a failpoint can SIGKILL it.

python -m tests.fault_child <topic> <lake_root> <chdb_path> <bootstrap> ingest
python -m tests.fault_child <topic> <lake_root> <chdb_path> <bootstrap> stream <partition> <seconds>
python -m tests.fault_child <topic> <lake_root> <chdb_path> <bootstrap> assets <key,key> <partition>
python -m tests.fault_child <topic> <lake_root> <chdb_path> <bootstrap> backfill <start> <end>
"""

import dataclasses
import sys

import dagster as dg

from assets.streams.iot import IOT
from medallion.backfill import backfill
from medallion.definitions import build_definitions
from resources.kafka import KafkaResource
from resources.config import lake_resource
from resources.lake import LakeResource
from resources.warehouse import WarehouseResource
from sensors.dead_runs import owner_tags


def main(argv: list[str]) -> int:
    topic, lake_root, chdb_path, bootstrap, what, *rest = argv
    spec = dataclasses.replace(IOT, topic=topic)
    resources = {
        "kafka": KafkaResource(bootstrap_servers=bootstrap, timeout_s=5.0),
        # An s3:// lake takes its endpoint and keys from the environment (AWS_*), as `medallion` does.
        "lake": lake_resource().process_config_and_initialize() if lake_root.startswith("s3://") else LakeResource(uri=lake_root),
        "warehouse": WarehouseResource(chdb_path=chdb_path),
    }
    defs = build_definitions((spec,), resources)
    with dg.DagsterInstance.get() as instance:
        if what == "ingest":
            result = defs.resolve_job_def(f"ingest_{spec.name}").execute_in_process(
                instance=instance, tags={"medallion/stream": spec.name, **owner_tags()}, raise_on_error=False,
                partition_key=spec.partitions.get_last_partition_key(),
            )
        elif what == "stream":
            pk, seconds = rest
            result = defs.resolve_job_def(f"ingest_{spec.name}").execute_in_process(
                instance=instance, tags={"medallion/stream": spec.name, **owner_tags()}, raise_on_error=False, partition_key=pk,
                run_config={"ops": {f"bronze_{spec.name}": {"config": {"stream_for_s": float(seconds)}}}},
            )
        elif what == "backfill":
            start, end = rest
            return 0 if all(r.success for r in backfill(defs, instance, start, end)) else 1
        else:
            keys, pk = rest
            result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
                instance=instance, partition_key=pk, asset_selection=[dg.AssetKey(k) for k in keys.split(",")], raise_on_error=False,
                tags={"dagster/from_automation_condition": "true", **owner_tags()},
            )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
