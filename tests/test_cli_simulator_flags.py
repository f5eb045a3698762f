"""`medallion dev` hands its simulator flags to each `medallion simulate` it starts; they must arrive and act."""

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from medallion.cli import SIMULATOR_FLAGS, _simulator_argv, parser
from resources.settings import REPO_ROOT

DEV_FLAGS = ["--seed", "3", "--malformed-share", "0", "--duplicate-share", "0", "--late-share", "0", "--anomaly-share", "0", "--linger-ms", "1000"]


def test_dev_and_simulate_take_the_same_simulator_flags_and_dev_forwards_them_all():
    # Every simulator flag either command takes is one `medallion dev` forwards (a new one not listed would be dropped).
    assert set(vars(parser().parse_args(["simulate"]))) - {"cmd", "fn", "stream", "events", "rate"} == set(SIMULATOR_FLAGS)
    assert set(vars(parser().parse_args(["dev"]))) - {"cmd", "fn", "port", "rate"} == set(SIMULATOR_FLAGS)
    dev = parser().parse_args(["dev", *DEV_FLAGS])
    simulate = parser().parse_args(["simulate", *_simulator_argv(dev)])
    assert {f: getattr(simulate, f) for f in SIMULATOR_FLAGS} == {f: getattr(dev, f) for f in SIMULATOR_FLAGS}
    assert simulate.linger_ms == 1000
    # Not given: not forwarded, so the simulator keeps its own default.
    assert "--linger-ms" not in _simulator_argv(parser().parse_args(["dev"]))


def test_a_negative_linger_is_refused(capsys):
    with pytest.raises(SystemExit) as refused:
        parser().parse_args(["dev", "--linger-ms", "-1"])
    assert refused.value.code == 2
    assert "must be 0 or more" in capsys.readouterr().err


def test_the_forwarded_flags_act_in_the_simulator(broker, kafka, medallion_home):
    topic = f"flags-{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics({topic: 3})
    env = {"PATH": "/usr/bin:/bin", "MEDALLION_HOME": str(medallion_home), "KAFKA_BOOTSTRAP_SERVERS": broker, "MEDALLION_IOT_TOPIC": topic}
    argv = _simulator_argv(parser().parse_args(["dev", *DEV_FLAGS]))
    medallion = Path(sys.executable).parent / "medallion"
    out = subprocess.run(
        [str(medallion), "simulate", "--stream", "iot", "--events", "2000", *argv],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert stats["produced"] == 2000
    assert stats["malformed"] == stats["duplicates"] == stats["late"] == stats["anomalies"] == 0, stats
    assert sum(kafka.log_ends(topic, {p: 0 for p in range(3)}).values()) == 2000
