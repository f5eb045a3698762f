"""The lake: Hive-style partitioned Parquet with atomic per-partition publish and a small manifest.

Layout under `root`:
    <layer>/<stream>/<table>/pk=<partition>/data.parquet     one file per published partition (Silver, Gold)
    <layer>/<stream>/<table>/pk=<partition>/_manifest.json   row count, schema, sources, contract result
    bronze/<stream>/pk=<partition>/p<kp>-<start>-<end>.parquet  Bronze: one file per Kafka offset range
    bronze/<stream>/_ledger/p<kp>/<start>-<end>.json         Bronze commit records (the offsets that landed)
    _audit/<log>.jsonl                                        append-only audit logs (e.g. erasures.jsonl)
    _erasure/<id>/                                            files staged by an erasure in progress (assets/erasure.py)

Publishing is `os.replace` of a fully written file, so a reader sees the old or the new partition, never half.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from resources.faults import failpoint
from resources.locks import exclusive_lock, shared_lock
from resources.settings import load_settings

OFFSET_WIDTH = 15


def partition_dirname(partition_key: str) -> str:
    # Colons are not legal in Hadoop paths; Spark must read this lake too.
    return "pk=" + partition_key.replace(":", "")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_parquet(path: Path, df: pl.DataFrame, before_replace=lambda: None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    df.write_parquet(tmp, compression="zstd", compression_level=1, statistics=True)
    before_replace()
    os.replace(tmp, path)


@dataclass(frozen=True)
class LedgerEntry:
    """One committed Kafka offset range of one partition: what it wrote, where."""

    kafka_partition: int
    start: int
    end: int  # exclusive
    files: list[str]  # relative to the stream's bronze dir
    partitions: dict[str, int]  # Bronze partition key -> rows
    dead_letter_rows: int
    run_id: str
    first_record: dict | None = None  # offset, timestamp, crc32 of the range's first record: detects a log that changed under us

    @property
    def name(self) -> str:
        return f"{self.start:0{OFFSET_WIDTH}d}-{self.end:0{OFFSET_WIDTH}d}.json"


class LakeResource(dg.ConfigurableResource):
    """Parquet lake on a filesystem path (local disk by default)."""

    root: str = Field(default_factory=lambda: str(load_settings().lake_root), description="lake root directory")

    @property
    def path(self) -> Path:
        return Path(self.root)

    # -- published partitions (Silver, Gold, quarantine) --------------------------------------------
    def table_dir(self, layer: str, stream: str, table: str) -> Path:
        return self.path / layer / stream / table

    def partition_file(self, layer: str, stream: str, table: str, partition_key: str) -> Path:
        return self.table_dir(layer, stream, table) / partition_dirname(partition_key) / "data.parquet"

    def publish(self, layer: str, stream: str, table: str, partition_key: str, df: pl.DataFrame, manifest: dict) -> Path:
        target = self.partition_file(layer, stream, table, partition_key)
        def before_replace():
            failpoint(f"publish.{layer}.before_replace")
            failpoint(f"publish.{layer}.{table}.before_replace")  # one table only, e.g. publish.gold.type_daily.before_replace

        atomic_write_parquet(target, df, before_replace=before_replace)
        failpoint(f"publish.{layer}.before_manifest")
        manifest = {**manifest, "rows": df.height, "schema": {k: str(v) for k, v in df.schema.items()}}
        atomic_write_bytes(target.with_name("_manifest.json"), json.dumps(manifest, indent=1, default=str).encode())
        return target

    def unpublish(self, layer: str, stream: str, table: str, partition_key: str) -> None:
        d = self.partition_file(layer, stream, table, partition_key).parent
        shutil.rmtree(d, ignore_errors=True)

    def manifest(self, layer: str, stream: str, table: str, partition_key: str) -> dict | None:
        f = self.partition_file(layer, stream, table, partition_key).with_name("_manifest.json")
        try:
            return json.loads(f.read_text())
        except FileNotFoundError:
            return None

    def read(self, layer: str, stream: str, table: str, partition_keys: list[str]) -> pl.DataFrame | None:
        files = [f for k in partition_keys if (f := self.partition_file(layer, stream, table, k)).exists()]
        if not files:
            return None
        return pl.read_parquet(files)

    def published_keys(self, layer: str, stream: str, table: str) -> list[str]:
        d = self.table_dir(layer, stream, table)
        if not d.exists():
            return []
        return sorted(p.name[3:] for p in d.iterdir() if p.name.startswith("pk=") and (p / "data.parquet").exists())

    def count_rows(self, layer: str, stream: str, table: str) -> int:
        d = self.table_dir(layer, stream, table)
        files = sorted(d.glob("pk=*/data.parquet")) if d.exists() else []
        return sum(pl.scan_parquet(f).select(pl.len()).collect().item() for f in files)

    # -- Bronze: offset-range files and their ledger -------------------------------------------------
    def bronze_dir(self, stream: str) -> Path:
        return self.path / "bronze" / stream

    def dead_letter_dir(self, stream: str) -> Path:
        return self.path / "dead_letter" / stream

    def bronze_files(self, stream: str, partition_key: str) -> list[Path]:
        d = self.bronze_dir(stream) / partition_dirname(partition_key)
        return sorted(d.glob("p*.parquet")) if d.exists() else []

    def bronze_partition_keys(self, stream: str) -> list[str]:
        """Bronze partitions holding files (directory form, without the colon), oldest first."""
        d = self.bronze_dir(stream)
        if not d.exists():
            return []
        return sorted(p.name[3:] for p in d.iterdir() if p.name.startswith("pk=") and any(p.glob("p*.parquet")))

    def read_bronze(self, stream: str, partition_key: str, exclude: list[str] | None = None) -> pl.DataFrame | None:
        files = self.bronze_files(stream, partition_key)
        if not files:
            return None
        frame = pl.scan_parquet(files)
        if exclude:
            frame = frame.drop(exclude)
        return frame.collect()

    def attach_bronze_payloads(self, stream: str, partition_key: str, rows: pl.DataFrame) -> pl.DataFrame:
        """`rows` (with kafka_partition/kafka_offset) plus their raw `payload`, read back from Bronze."""
        files = self.bronze_files(stream, partition_key)
        if not files or rows.height == 0:
            return rows.with_columns(pl.lit(None, pl.String).alias("payload"))
        wanted = rows.select("kafka_partition", "kafka_offset")
        payloads = (
            pl.scan_parquet(files)
            .select("kafka_partition", "kafka_offset", "payload")
            .join(wanted.lazy(), on=["kafka_partition", "kafka_offset"], how="semi")
            .unique(subset=["kafka_partition", "kafka_offset"], keep="first")
            .collect()
        )
        return rows.join(payloads, on=["kafka_partition", "kafka_offset"], how="left", maintain_order="left")

    def count_bronze(self, stream: str) -> int:
        files = sorted(self.bronze_dir(stream).glob("pk=*/p*.parquet"))
        return sum(pl.scan_parquet(f).select(pl.len()).collect().item() for f in files)

    def count_dead_letter(self, stream: str) -> int:
        files = sorted(self.dead_letter_dir(stream).glob("p*.parquet"))
        return sum(pl.scan_parquet(f).select(pl.len()).collect().item() for f in files)

    def read_dead_letter(self, stream: str) -> pl.DataFrame | None:
        files = sorted(self.dead_letter_dir(stream).glob("p*.parquet"))
        return pl.read_parquet(files) if files else None

    def ledger_dir(self, stream: str) -> Path:
        return self.bronze_dir(stream) / "_ledger"

    def ledger(self, stream: str) -> list[LedgerEntry]:
        d = self.ledger_dir(stream)
        if not d.exists():
            return []
        out = []
        for f in sorted(d.glob("p*/*.json")):
            out.append(LedgerEntry(**json.loads(f.read_text())))
        return out

    def committed_offsets(self, stream: str, kafka_partitions: list[int]) -> dict[int, int]:
        """Next offset to read per Kafka partition: the end of the last committed range (0 if none)."""
        ends = {p: 0 for p in kafka_partitions}
        for e in self.ledger(stream):
            ends[e.kafka_partition] = max(ends.get(e.kafka_partition, 0), e.end)
        return ends

    # -- audit logs: append-only JSON lines, durable once `append_audit` returns ----------------------
    def audit_log(self, name: str) -> Path:
        return self.path / "_audit" / f"{name}.jsonl"

    def append_audit(self, name: str, entry: dict) -> None:
        """Append one JSON line and fsync it. Callers serialize appends to one log (a lock of their own)."""
        path = self.audit_log(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(entry, sort_keys=True, default=str).encode() + b"\n"
        with open(path, "ab+") as f:
            f.seek(0, os.SEEK_END)
            if f.tell():  # a line torn by a crash stays alone on its line (readers skip it)
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = b"\n" + line
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read_audit(self, name: str) -> list[dict]:
        try:
            lines = self.audit_log(name).read_bytes().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:  # torn by a crash mid-append: never committed
                continue
        return out

    def stream_lock(self, stream: str, name: str = "ingest", shared: bool = False):
        """Serialize writers of one stream (e.g. a backfill racing a sensor-triggered run): they wait, not fail.
        `shared`: many holders at once, none while an exclusive holder works (e.g. derivations vs an erasure)."""
        path = self.path / "_locks" / f"{stream}.{name}.lock"
        return shared_lock(path) if shared else exclusive_lock(path)

    def staging_dir(self, stream: str, run_id: str) -> Path:
        return self.bronze_dir(stream) / "_staging" / run_id

    def commit_bronze(self, stream: str, staging: Path, entries: list[LedgerEntry]) -> None:
        """The commit point: ledger records first (atomic), then move staged files into place.

        A crash after the ledger write is rolled forward by `recover_bronze`; a crash before it leaves only
        staged files, which recovery discards (their offsets were never committed and will be read again).
        """
        for e in entries:
            atomic_write_bytes(
                self.ledger_dir(stream) / f"p{e.kafka_partition}" / e.name,
                json.dumps(e.__dict__, sort_keys=True).encode(),
            )
            failpoint("bronze.mid_ledger")
        failpoint("bronze.after_ledger")
        self._roll_forward(stream, staging, entries)

    def _roll_forward(self, stream: str, staging: Path, entries: list[LedgerEntry]) -> None:
        for e in entries:
            for rel in e.files:
                src, dst = staging / rel, self._committed_path(stream, rel)
                if src.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(src, dst)
                    failpoint("bronze.mid_roll_forward")
                elif not dst.exists():
                    raise RuntimeError(f"ledger {e.name} names {rel}, which is neither staged nor committed")
        shutil.rmtree(staging, ignore_errors=True)

    def _committed_path(self, stream: str, rel: str) -> Path:
        if rel.startswith("dead_letter/"):
            return self.dead_letter_dir(stream) / rel.split("/", 1)[1]
        return self.bronze_dir(stream) / rel

    def recover_bronze(self, stream: str) -> list[str]:
        """Finish or discard what crashed runs left in staging. Returns what it did, for the run log."""
        actions = []
        staging_root = self.bronze_dir(stream) / "_staging"
        if not staging_root.exists():
            return actions
        ledger_files = {}
        for e in self.ledger(stream):
            for rel in e.files:
                ledger_files[rel] = e
        for staging in sorted(staging_root.iterdir()):
            staged = [str(p.relative_to(staging)) for p in staging.rglob("*.parquet")]
            committed = {ledger_files[r].name: ledger_files[r] for r in staged if r in ledger_files}
            if committed:
                self._roll_forward(stream, staging, list(committed.values()))
                actions.append(f"rolled forward {len(committed)} committed range(s) from {staging.name}")
            else:
                shutil.rmtree(staging, ignore_errors=True)
                actions.append(f"discarded uncommitted staging {staging.name} ({len(staged)} files)")
        return actions

    def needs_recovery(self, stream: str) -> bool:
        """A crashed ingest left staged files or committed ranges whose events were never logged."""
        staging_root = self.bronze_dir(stream) / "_staging"
        return (staging_root.exists() and any(staging_root.iterdir())) or bool(self.unreported_entries(stream))

    def last_committed(self, stream: str) -> dict[int, LedgerEntry]:
        """The latest committed range per Kafka partition."""
        last: dict[int, LedgerEntry] = {}
        for e in self.ledger(stream):
            if e.kafka_partition not in last or e.end > last[e.kafka_partition].end:
                last[e.kafka_partition] = e
        return last

    def unreported_entries(self, stream: str) -> list[LedgerEntry]:
        """Committed ranges whose materialization events may not have been logged (crash in between)."""
        done = self.ledger_dir(stream) / "_reported"
        return [e for e in self.ledger(stream) if not (done / f"p{e.kafka_partition}-{e.name}").exists()]

    def mark_reported(self, stream: str, entries: list[LedgerEntry]) -> None:
        done = self.ledger_dir(stream) / "_reported"
        done.mkdir(parents=True, exist_ok=True)
        for e in entries:
            (done / f"p{e.kafka_partition}-{e.name}").touch()
