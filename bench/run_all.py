"""`make bench`: every benchmark in turn, each printing one JSON line of figures."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    ["ingest.py", "--events", "5000000"],
    ["small_ingest.py", "--rounds", "20", "--events", "1000"],
    ["transform.py", "--events", "1000000", "5000000"],
    ["warehouse_load.py", "--rows", "2000000"],
    ["backfill.py", "--days", "7", "--events-per-partition", "100000"],
    ["freshness.py", "--rate", "1000", "--duration", "600"],
    ["micro_batch.py"],
    ["daily_rollup.py"],
    ["warehouse_day_fill.py"],
    ["backlog.py", "--events", "1000000"],
    ["dev.py", "--minutes", "10"],
    ["broker_endurance.py", "--hours", "1", "--live-s", "60"],
]


def main() -> int:
    failed = 0
    for args in BENCHES:
        print(f"# {' '.join(args)}", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, str(HERE / args[0]), *args[1:]], cwd=HERE)
        failed += done.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
