"""A stalled embedded broker is named as such: the read error says what stalls it and what to do. The stall
is forced for real by pausing the broker process (SIGSTOP); a cluster the user configured gets no such hint."""

import os
import signal
import uuid

import pytest

from resources.embedded_broker import start_broker, stop_broker
from resources.kafka import EMBEDDED_STALL_HINT, KafkaResource, KafkaUnavailableError
from resources.settings import load_settings


@pytest.fixture
def embedded_broker(medallion_home):
    run_dir = load_settings().run_dir
    info = start_broker(run_dir)
    yield info
    try:
        os.kill(info.pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
    stop_broker(run_dir)


def _stalled_errors(kafka: KafkaResource, pid: int) -> list[str]:
    """What a stream run's read and the Kafka sensor's probe raise while the broker answers nothing."""
    topic = f"stall-{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics({topic: 1})
    producer = kafka.producer()
    for i in range(10):
        producer.produce(topic, key=b"k", value=b'{"i":%d}' % i)
    assert producer.flush(10) == 0
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(KafkaUnavailableError) as read:
            for _ in kafka.read(topic, {0: 0}, max_records=None):
                pass
        with pytest.raises(KafkaUnavailableError) as probe:
            kafka.has_records_after(topic, {0: 10})
    finally:
        os.kill(pid, signal.SIGCONT)
    return [str(read.value), str(probe.value)]


def test_a_stalled_embedded_broker_says_why_and_what_to_do(embedded_broker):
    read, probe = _stalled_errors(KafkaResource(timeout_s=1.5), embedded_broker.pid)
    assert read.startswith("no fetch progress on stall-") and probe.startswith("no fetch response for stall-")
    for message in (read, probe):
        assert message.endswith(EMBEDDED_STALL_HINT)
        assert "embedded_broker_segments sensor" in message and "KAFKA_BOOTSTRAP_SERVERS" in message and "\n" not in message


def test_a_configured_cluster_gets_no_embedded_hint(embedded_broker):
    read, probe = _stalled_errors(KafkaResource(bootstrap_servers=embedded_broker.bootstrap, timeout_s=1.5), embedded_broker.pid)
    assert read.startswith("no fetch progress on stall-") and probe.startswith("no fetch response for stall-")
    assert EMBEDDED_STALL_HINT not in read + probe
