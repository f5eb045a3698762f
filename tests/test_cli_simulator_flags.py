"""`medallion dev` hands its simulator flags to each `medallion simulate` it starts; they must arrive and act."""

import argparse
import json
import subprocess
import sys
import uuid
from pathlib import Path

from medallion.cli import SIMULATOR_FLAGS, _simulator_argv
from resources.settings import REPO_ROOT


def test_the_flags_dev_forwards_reach_the_simulator(broker, kafka, medallion_home):
    args = argparse.Namespace(seed=3, malformed_share=0.0, duplicate_share=0.0, late_share=0.0, anomaly_share=0.0, linger_ms=1000)
    argv = _simulator_argv(args)
    assert sorted(a[2:].replace("-", "_") for a in argv[::2]) == sorted(SIMULATOR_FLAGS)
    medallion = Path(sys.executable).parent / "medallion"
    topic = f"flags-{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics({topic: 3})
    env = {"PATH": "/usr/bin:/bin", "MEDALLION_HOME": str(medallion_home), "KAFKA_BOOTSTRAP_SERVERS": broker, "MEDALLION_IOT_TOPIC": topic}
    out = subprocess.run(
        [str(medallion), "simulate", "--stream", "iot", "--events", "2000", *argv],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert stats["produced"] == 2000
    assert stats["malformed"] == stats["duplicates"] == stats["late"] == stats["anomalies"] == 0, stats

    # Unset flags are not forwarded: the simulator keeps its own defaults.
    assert _simulator_argv(argparse.Namespace(**{**vars(args), "linger_ms": None}))[-2:] == ["--anomaly-share", "0.0"]
