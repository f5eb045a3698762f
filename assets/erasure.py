"""Erasure of one data subject (GDPR art. 17) from every layer the platform writes.

A request names a subject as `<kind>:<id>` (`user:<user_id>`, `sensor:<sensor_id>`); each stream declares
which of its fields holds which kind of subject (`StreamSpec.subject`), so a new stream needs no code here.
What is removed, per stream whose subject kind matches:

- Bronze and dead-letter (raw values): a Bronze row whose subject field equals the id, or whose Kafka key
  does when the stream is keyed by that field. A dead-letter record is matched the same way by its key; its
  payload (bytes that may not parse) is matched by field when it decodes to a JSON object, and otherwise
  (not UTF-8, invalid or truncated JSON, not an object) when the JSON-quoted id (`"<id>"`, ASCII-escaped
  or not) appears in its bytes. The quotes keep `sensor-1` from matching `sensor-10`.
- Silver, quarantine and Gold: rows whose subject column equals the id, or its keyed pseudonym
  (`resources/pii.py`) where the field is one of the stream's `pii_fields`; quarantine rows also by key
  and payload as above. Silver and quarantine rows also match by lineage (the Kafka coordinates of the
  subject's Bronze records), so rows pseudonymised under an earlier PII key are not left behind. Other rows are kept exactly as they were (not re-derived): Silver, its statistics
  and attribution are per subject, so nobody else's rows depend on the subject's.
- The history each Silver partition hands to the next (`StreamSpec.history`, e.g. a sensor's last readings):
  the subject's rows, by the same column.
- Gold partitions fed by a rewritten Silver partition (or holding the subject) are re-derived from the
  rewritten Silver with the table's own builder and contract, and the warehouse days holding them are
  swapped from Gold with the load the warehouse assets use, rollups included.

Only files holding the subject are rewritten; every other file is left untouched (same bytes, same mtime).
Kafka cannot be erased by us: records stay in the source and dead-letter topics until their retention
expires, and a re-ingest from offsets would bring them back (the ledger prevents one in normal operation).

Safety: one erasure at a time (a platform lock), each holding the stream's ingest lock and the Silver, Gold
and warehouse locks of the partitions it rewrites, so it never races an ingest or a materialization. New
files are staged under `_erasure/<id>/`, committed by one atomic marker, then moved into place with
`os.replace`; a crash before the marker leaves nothing changed, one after it is finished by the next erasure
(`recover`). The audit log (`_audit/erasures.jsonl`, one JSON line per request, also for requests that find
nothing) records who, what (the kind and a keyed hash of the id, never the id), when, the partitions
touched and the rows removed per layer and table. Bronze and dead-letter rows removed count in the
reconciliation (`medallion/summary.py`): consumed = Bronze + dead-letter + erased.
"""

import getpass
import hashlib
import hmac
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from assets import keys
from assets.contracts.gate import apply_contract
from assets.gold import gold_lock, gold_manifest, gold_source, silver_keys_for
from assets.history import HISTORY_TABLE, histories_lock
from assets.partitions import key_from_dirname, window
from assets.silver import silver_lock
from assets.spec import StreamSpec
from assets.warehouse import day_gold_keys, load_day, warehouse_lock
from resources.faults import failpoint
from resources.lake import LakeResource, atomic_write_bytes
from resources.pii import pii_key, pseudonymise
from resources.warehouse import WarehouseResource

AUDIT_LOG = "erasures"
LAYERS = ("bronze", "dead_letter", "silver", "quarantine", "history", "gold", "warehouse")
# Roll-forward order: sources first, so a crash never leaves a derived layer cleaner than its source.
_ORDER = {"bronze": 0, "dead_letter": 1, "silver": 2, "quarantine": 3, "history": 3, "gold": 4}


class ErasureError(Exception):
    """An erasure that cannot proceed; nothing was changed."""


@dataclass(frozen=True)
class Subject:
    """A data subject: `kind` as streams declare it and the raw identifier (never printed, logged or stored)."""

    kind: str
    id: str = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> "Subject":
        kind, sep, ident = text.partition(":")
        if not sep or not kind or not ident:
            raise ErasureError("subject must be <kind>:<id>, e.g. user:<user_id> or sensor:<sensor_id>")
        return cls(kind.strip(), ident)

    def hash(self, key: bytes) -> str:
        """A keyed hash of the id for the audit log: the same subject always gets the same value (so a request
        can be proven done), nobody without the key can test ids against it, and it is not the pseudonym that
        Silver used (domain-separated)."""
        digest = hmac.new(key, b"erasure\x00" + self.kind.encode() + b"\x00" + self.id.encode(), hashlib.sha256).hexdigest()
        return f"hmac-sha256:{digest}"


def subject_kinds(streams) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for s in streams:
        if s.subject is not None:
            out.setdefault(s.subject.kind, []).append(s.name)
    return out


# -- matching ------------------------------------------------------------------------------------------
def payload_mentions(payload: bytes | str | None, field_name: str, raw_id: str) -> bool:
    """The dead-letter rule: a JSON object by its field; anything else by the JSON-quoted id in its bytes."""
    if payload is None:
        return False
    data = payload.encode() if isinstance(payload, str) else bytes(payload)
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        obj = data  # not parseable: fall through to the byte search
    if isinstance(obj, dict):
        return obj.get(field_name) == raw_id
    quoted = {json.dumps(raw_id).encode(), json.dumps(raw_id, ensure_ascii=False).encode()}
    return any(q in data for q in quoted)


LINEAGE = {
    "silver": ["source_topic", "source_partition", "source_offset"],
    "quarantine": ["kafka_topic", "kafka_partition", "kafka_offset"],
}


@dataclass
class _Match:
    spec: StreamSpec
    raw: str
    value: str  # what Silver, quarantine and Gold hold: the pseudonym for a PII field, else the raw id
    # Kafka coordinates of the subject's Bronze records: their Silver and quarantine rows match by lineage
    # too, so a rotated PII key (pseudonyms that no longer match) cannot leave them behind.
    coords: pl.DataFrame | None = None

    @property
    def by_key(self) -> bool:
        return self.spec.key_field == self.spec.subject.field

    def expr(self, layer: str) -> pl.Expr:
        """Rows of the subject, for layers matched by columns alone (Bronze, Silver, Gold)."""
        subj = self.spec.subject
        if layer == "bronze":
            e = pl.col(subj.field) == self.raw
            if self.by_key:
                e = e | (pl.col("kafka_key") == self.raw)
            return e.fill_null(False)
        return (pl.col(subj.column) == self.value).fill_null(False)

    def by_lineage(self, layer: str, df: pl.DataFrame) -> pl.Series:
        names = LINEAGE[layer]
        if self.coords is None or not self.coords.height or not set(names) <= set(df.columns):
            return pl.Series([False] * df.height, dtype=pl.Boolean)
        coords = self.coords.rename(dict(zip(LINEAGE["quarantine"], names))).cast({n: df.schema[n] for n in names})
        hits = df.select(names).with_row_index("__i").join(coords.unique(), on=names, how="semi")["__i"]
        return df.select(pl.int_range(pl.len(), dtype=pl.UInt32).is_in(hits.implode())).to_series()

    def mask(self, layer: str, df: pl.DataFrame) -> pl.Series:
        subj = self.spec.subject
        if layer == "bronze":
            return df.select(self.expr(layer)).to_series()
        if layer == "silver":
            return df.select(self.expr(layer)).to_series() | self.by_lineage(layer, df)
        if layer == "gold":
            if subj.column not in df.columns:
                return pl.Series([False] * df.height, dtype=pl.Boolean)
            return df.select(self.expr(layer)).to_series()
        hit = [False] * df.height
        if self.by_key:
            hit = [h or k == self.raw for h, k in zip(hit, df["kafka_key"].to_list())]
        if layer == "quarantine":
            hit = [h or v == self.value for h, v in zip(hit, df[subj.field].to_list())]
        # dead letter and quarantine payloads (the quarantine of a PII stream keeps none)
        hit = [h or payload_mentions(p, subj.field, self.raw) for h, p in zip(hit, df["payload"].to_list())]
        hit = pl.Series(hit, dtype=pl.Boolean)
        return hit | self.by_lineage(layer, df) if layer == "quarantine" else hit


# -- the plan: staged files, counts, locks --------------------------------------------------------------
@dataclass
class _Plan:
    lake: LakeResource
    erasure_id: str
    entry: dict  # the audit entry, completed as the plan is carried out
    files: list[dict] = field(default_factory=list)  # {"rel", "stream", "source_rows", "pre"}
    warehouse: list[dict] = field(default_factory=list)  # {"stream", "table", "day", "gold_keys", "before"}
    rollups: list[dict] = field(default_factory=list)  # {"rollup", "month", "before"}: refreshed by the day loads

    def state(self) -> dict:
        return {"entry": self.entry, "files": self.files, "warehouse": self.warehouse, "rollups": self.rollups}

    @property
    def staging(self) -> Path:
        return staging_root(self.lake) / self.erasure_id

    def count(self, layer: str, table: str, rows: int, partition: str) -> None:
        self.entry["removed"].setdefault(layer, {})[table] = self.entry["removed"].get(layer, {}).get(table, 0) + rows
        touched = self.entry["partitions"].setdefault(layer, {}).setdefault(table, [])
        if partition not in touched:
            touched.append(partition)

    def stage(self, target: Path, stream: str, layer: str, data: pl.DataFrame | bytes, source_rows: int = 0) -> None:
        rel = str(target.relative_to(self.lake.path))
        staged = self.staging / "files" / rel
        staged.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, pl.DataFrame):
            data.write_parquet(staged, compression="zstd", compression_level=1, statistics=True)
        else:
            staged.write_bytes(data)
        with open(staged, "rb") as f:
            os.fsync(f.fileno())
        self.files.append({"rel": rel, "stream": stream, "layer": layer, "source_rows": source_rows, "pre": _fingerprint(target)})


def staging_root(lake: LakeResource) -> Path:
    return lake.path / "_erasure"


def _fingerprint(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _updated_manifest(lake: LakeResource, layer: str, stream: str, table: str, pk: str, rows: pl.DataFrame, removed: int, erasure_id: str, base: dict | None = None) -> bytes:
    manifest = dict(base if base is not None else (lake.manifest(layer, stream, table, pk) or {"partition": pk}))
    old = lake.manifest(layer, stream, table, pk) or {}
    manifest.update(
        rows=rows.height,
        schema={k: str(v) for k, v in rows.schema.items()},
        erased_rows=old.get("erased_rows", 0) + removed,
        erasures=[*old.get("erasures", []), erasure_id],
    )
    return json.dumps(manifest, indent=1, default=str).encode()


def _files_with(frame_files: list[Path], expr: pl.Expr, columns: list[str]) -> set[str]:
    """The files among `frame_files` with at least one row matching `expr` (reads only `columns`)."""
    if not frame_files:
        return set()
    hits = (
        pl.scan_parquet(frame_files, include_file_paths="__file")
        .select(*columns, "__file")
        .filter(expr)
        .select("__file")
        .unique()
        .collect()
    )
    return set(hits["__file"].to_list())


def _plan_stream(plan: _Plan, spec: StreamSpec, m: _Match, locks: ExitStack, warehouse: WarehouseResource, say) -> None:
    """Stage the rewritten Bronze, dead-letter, Silver, quarantine and Gold files of one stream, taking the
    locks of what it rewrites. The caller holds the stream's ingest lock."""
    lake, subj, name = plan.lake, spec.subject, spec.name
    removed = plan.entry["removed"]
    for layer in ("bronze", "dead_letter", "silver", "quarantine"):
        removed.setdefault(layer, {})[name] = 0
    # Bronze: one file per Kafka offset range and partition; only those holding the subject are rewritten.
    bronze_files = sorted(lake.bronze_dir(name).glob("pk=*/p*.parquet"))
    key_cols = [subj.field, "kafka_key"] if m.by_key else [subj.field]
    touched_pks: set[str] = set()
    coords = []
    for f in sorted(_files_with(bronze_files, m.expr("bronze"), key_cols)):
        path = Path(f)
        rows = pl.read_parquet(path)
        hit = m.mask("bronze", rows)
        keep = rows.filter(~hit)
        coords.append(rows.filter(hit).select(LINEAGE["quarantine"]))
        plan.stage(path, name, "bronze", keep, source_rows=rows.height - keep.height)
        plan.count("bronze", name, rows.height - keep.height, _partition_key(spec, path.parent.name))
        touched_pks.add(path.parent.name)
    m.coords = pl.concat(coords) if coords else None
    # Dead letter: few rows, matched in Python (the payload rule).
    for path in sorted(lake.dead_letter_dir(name).glob("p*.parquet")):
        rows = pl.read_parquet(path)
        hit = m.mask("dead_letter", rows)
        if hit.any():
            keep = rows.filter(~hit)
            plan.stage(path, name, "dead_letter", keep, source_rows=rows.height - keep.height)
            plan.count("dead_letter", name, rows.height - keep.height, path.name)

    # Silver and quarantine partitions: those whose Bronze held the subject, and any that still hold it.
    silver_dir, quarantine_dir = lake.table_dir("silver", name, "silver"), lake.table_dir("quarantine", name, "silver")
    silver_files = sorted(silver_dir.glob("pk=*/data.parquet"))
    touched_pks |= {Path(f).parent.name for f in _files_with(silver_files, m.expr("silver"), [subj.column])}
    for path in sorted(quarantine_dir.glob("pk=*/data.parquet")):
        q = pl.read_parquet(path)
        if m.mask("quarantine", q).any():
            touched_pks.add(path.parent.name)
    # The history each partition hands to the next (e.g. a sensor's last readings) holds the subject too;
    # histories are per subject, so nobody else's rows in it change.
    # Any partition's history may carry the subject's rows (a sensor's last readings reach back for hours),
    # so all of them are read, with no derivation running (it could carry rows on from a history read just
    # before): by the subject column, and by lineage like Silver (a rotated PII key).
    tables = {"silver": ("silver", "silver"), "quarantine": ("quarantine", "silver")}
    if spec.history is not None and subj.column in spec.history.columns:
        locks.enter_context(histories_lock(lake, spec, exclusive=True))
        tables["history"] = ("silver", HISTORY_TABLE)
        removed.setdefault("history", {})[name] = 0
        for path in sorted(lake.table_dir("silver", name, HISTORY_TABLE).glob("pk=*/data.parquet")):
            if m.mask("silver", pl.read_parquet(path)).any():
                touched_pks.add(path.parent.name)
    partitions = sorted(_partition_key(spec, d) for d in touched_pks)
    for pk in partitions:
        locks.enter_context(silver_lock(lake, spec, pk))  # also held while a partition's history is written
    new_silver: dict[str, pl.DataFrame] = {}  # rewritten Silver partitions
    for pk in partitions:
        for layer, (stored_layer, table_name) in tables.items():
            path = lake.partition_file(stored_layer, name, table_name, pk)
            if not path.exists():
                continue
            rows = pl.read_parquet(path)
            keep = rows.filter(~m.mask("silver" if layer == "history" else layer, rows))
            gone = rows.height - keep.height
            if not gone:
                continue
            if layer == "silver":
                new_silver[pk] = keep
            plan.stage(path, name, layer, keep)
            plan.stage(path.with_name("_manifest.json"), name, layer, _updated_manifest(lake, stored_layer, name, table_name, pk, keep, gone, plan.erasure_id))
            plan.count(layer, name, gone, pk)

    # Gold: every published partition fed by a rewritten Silver partition, or holding the subject itself,
    # re-derived by the table's builder from the rewritten Silver and checked by its contract.
    for table in spec.gold:
        wh_table = keys.warehouse_table(spec, table)
        removed.setdefault("gold", {})[wh_table] = 0
        published = set(lake.published_keys("gold", name, table.name))  # directory form (no colon)
        gold_pks = set()
        for pk in new_silver:
            start, _ = window(spec.partitions, pk)
            gold_pks.add(table.partitions.get_partition_key_for_timestamp(start.timestamp()))
        gold_files = sorted(lake.table_dir("gold", name, table.name).glob("pk=*/data.parquet"))
        if gold_files and subj.column in pl.read_parquet_schema(gold_files[0]):
            gold_pks |= {key_from_dirname(table.partitions, Path(f).parent.name) for f in _files_with(gold_files, m.expr("gold"), [subj.column])}
        gold_pks = sorted(pk for pk in gold_pks if pk.replace(":", "") in published)
        for gpk in gold_pks:
            locks.enter_context(gold_lock(lake, spec, table, gpk))
        for gpk in gold_pks:
            source_keys = silver_keys_for(spec, table, gpk)
            frames = [new_silver[k] if k in new_silver else lake.read("silver", name, "silver", [k]) for k in source_keys]
            frames = [f for f in frames if f is not None]
            silver_rows = pl.concat(frames, how="vertical_relaxed") if frames else gold_source(spec, table, lake, gpk)[1]
            rows = table.build(silver_rows)
            verdict = apply_contract(rows, table.contract)
            if not verdict.ok:
                raise ErasureError(
                    f"gold_{name}_{table.name} {gpk} re-derived without the subject fails {table.contract.__name__} "
                    f"({verdict.failure_counts} {verdict.schema_errors}); nothing was changed"
                )
            path = lake.partition_file("gold", name, table.name, gpk)
            before = pl.scan_parquet(path).select(pl.len()).collect().item()
            gone = before - rows.height
            plan.stage(path, name, "gold", rows)
            manifest = _updated_manifest(lake, "gold", name, table.name, gpk, rows, gone, plan.erasure_id, base=gold_manifest(gpk, source_keys, silver_rows))
            plan.stage(path.with_name("_manifest.json"), name, "gold", manifest)
            plan.count("gold", wh_table, gone, gpk)
        _plan_warehouse(plan, spec, table, m, gold_pks, locks, warehouse)
    staged = [f for f in plan.files if f["stream"] == name]
    if staged:
        say(f"{name}: {len(staged)} file(s) to rewrite, Silver partitions {', '.join(partitions) or '-'}")


def _partition_key(spec: StreamSpec, dirname: str) -> str:
    """`pk=2026-11-20-0500` -> `2026-11-20-05:00` (directory names drop the colon)."""
    return key_from_dirname(spec.partitions, dirname)


def _sql_str(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ddl_columns(columns_ddl: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^\s*(\w+)\s+\S", columns_ddl, re.M) if m.group(1).upper() != "INDEX"}


def _plan_warehouse(plan: _Plan, spec: StreamSpec, table, m: _Match, gold_pks: list[str], locks: ExitStack, warehouse: WarehouseResource) -> None:
    """The warehouse days to swap from Gold: those of rewritten Gold partitions that are loaded, and any day
    that still holds the subject. Their rollup months are refreshed by the same load."""
    name = keys.warehouse_table(spec, table)
    plan.entry["removed"].setdefault("warehouse", {})[name] = 0
    for r in table.rollups:
        plan.entry["removed"]["warehouse"][r.name] = 0
    existing = {r["name"] for r in warehouse.query_arrow("SELECT name FROM system.tables WHERE database = currentDatabase()").to_pylist()}
    if name not in existing:
        return
    days = {day_gold_keys(table, pk)[0] for pk in gold_pks}
    if spec.subject.column in _ddl_columns(table.columns_ddl):
        held = warehouse.query_arrow(f"SELECT DISTINCT _partition_id AS p FROM {name} WHERE {spec.subject.column} = {_sql_str(m.value)}")
        days |= {str(p) for p in held.column("p").to_pylist()}
    for day in sorted(days):
        locks.enter_context(warehouse_lock(plan.lake, spec, table, day))
        before = _partition_rows(warehouse, name, day)
        if not before:
            continue  # not loaded yet: its load will read the rewritten Gold
        start = datetime.strptime(day, "%Y%m%d").replace(tzinfo=timezone.utc)
        pk = table.partitions.get_partition_key_for_timestamp(start.timestamp())
        _, gold_keys = day_gold_keys(table, pk)
        plan.warehouse.append({"stream": spec.name, "table": table.name, "day": day, "gold_keys": gold_keys, "before": before})
        for r in table.rollups:
            if not any(x["rollup"] == r.name and x["month"] == day[:6] for x in plan.rollups):
                month_rows = _partition_rows(warehouse, r.name, day[:6]) if r.name in existing else 0
                plan.rollups.append({"rollup": r.name, "month": day[:6], "before": month_rows})


def _partition_rows(warehouse: WarehouseResource, table: str, partition_id: str) -> int:
    n = warehouse.query_arrow(f"SELECT count() AS n FROM {table} WHERE _partition_id = {_sql_str(partition_id)}")
    return int(n.column("n")[0].as_py())


# -- commit, roll forward, recovery ------------------------------------------------------------------
def _commit(plan: _Plan) -> None:
    """Write the plan, then the commit marker: from here on the erasure will be finished, even after a crash."""
    state = plan.state()
    atomic_write_bytes(plan.staging / "plan.json", json.dumps(state, default=str).encode())
    failpoint("erasure.before_commit")
    atomic_write_bytes(plan.staging / "COMMITTED", b"")
    failpoint("erasure.after_commit")


def _roll_forward(lake: LakeResource, staging: Path, files: list[dict]) -> list[str]:
    """Move staged files into place, sources first. A target changed since it was planned (a run rewrote it
    after a crash) is left alone and reported: the erasure must be requested again for it."""
    stale = []
    for f in sorted(files, key=lambda f: _ORDER[f["layer"]]):
        src, dst = staging / "files" / f["rel"], lake.path / f["rel"]
        if not src.exists():
            continue  # moved before a crash
        if _fingerprint(dst) != f["pre"]:
            stale.append(f["rel"])
            continue
        os.replace(src, dst)
        failpoint("erasure.mid_roll_forward")
    return stale


def _finish(lake: LakeResource, warehouse: WarehouseResource, streams, state: dict, staging: Path, say) -> dict:
    """Roll forward, swap the warehouse days, append the audit entry, drop the staging directory."""
    entry = state["entry"]
    stale = _roll_forward(lake, staging, state["files"])
    if stale:
        entry["stale_files"] = stale
        say(f"erasure {entry['erasure_id']}: {len(stale)} file(s) changed since planned; request the erasure again")
    by_name = {s.name: s for s in streams}
    for w in state["warehouse"]:
        spec = by_name[w["stream"]]
        table = next(t for t in spec.gold if t.name == w["table"])
        name = keys.warehouse_table(spec, table)
        after = load_day(spec, table, lake, warehouse, w["day"], w["gold_keys"])
        entry["removed"]["warehouse"][name] += w["before"] - after
        entry["partitions"].setdefault("warehouse", {}).setdefault(name, []).append(w["day"])
        failpoint("erasure.mid_warehouse")
    for r in state["rollups"]:
        entry["removed"]["warehouse"][r["rollup"]] += r["before"] - _partition_rows(warehouse, r["rollup"], r["month"])
        entry["partitions"]["warehouse"].setdefault(r["rollup"], []).append(r["month"])
    entry["total_removed"] = sum(n for tables in entry["removed"].values() for n in tables.values())
    entry["finished_at"] = _now()
    if not any(e.get("erasure_id") == entry["erasure_id"] for e in lake.read_audit(AUDIT_LOG)):
        lake.append_audit(AUDIT_LOG, entry)
    failpoint("erasure.after_audit")
    shutil.rmtree(staging, ignore_errors=True)
    return entry


def _plan_locks(lake: LakeResource, streams, state: dict, locks: ExitStack) -> None:
    """The locks of a committed plan, in the order an erasure takes them (each once: flock waits on itself)."""
    by_name = {s.name: s for s in streams}
    for n in sorted({f["stream"] for f in state["files"]} | {w["stream"] for w in state["warehouse"]}):
        locks.enter_context(lake.stream_lock(n))
    for n in sorted({f["stream"] for f in state["files"] if f["layer"] == "history"}):
        locks.enter_context(histories_lock(lake, by_name[n], exclusive=True))
    silver, gold = set(), set()
    for f in state["files"]:
        rel = Path(f["rel"])  # <layer>/<stream>/<table>/pk=<key>/<file>
        if f["layer"] in ("silver", "quarantine", "history"):
            silver.add((f["stream"], _partition_key(by_name[f["stream"]], rel.parent.name)))
        elif f["layer"] == "gold":
            gold.add((f["stream"], rel.parts[2], rel.parent.name))
    for stream, pk in sorted(silver):
        locks.enter_context(silver_lock(lake, by_name[stream], pk))
    for stream, table_name, dirname in sorted(gold):
        table = next(t for t in by_name[stream].gold if t.name == table_name)
        locks.enter_context(gold_lock(lake, by_name[stream], table, key_from_dirname(table.partitions, dirname)))
    for w in state["warehouse"]:
        spec = by_name[w["stream"]]
        locks.enter_context(warehouse_lock(lake, spec, next(t for t in spec.gold if t.name == w["table"]), w["day"]))


def recover(lake: LakeResource, warehouse: WarehouseResource, streams, say=lambda *_: None) -> list[str]:
    """Finish committed erasures a crash interrupted; discard uncommitted ones. The caller holds the erasure lock."""
    actions = []
    root = staging_root(lake)
    if not root.exists():
        return actions
    for staging in sorted(p for p in root.iterdir() if p.is_dir()):
        if not (staging / "COMMITTED").exists():
            shutil.rmtree(staging, ignore_errors=True)
            actions.append(f"discarded uncommitted erasure {staging.name}")
            continue
        state = json.loads((staging / "plan.json").read_text())
        state["entry"]["recovered"] = True
        with ExitStack() as locks:
            _plan_locks(lake, streams, state, locks)
            _finish(lake, warehouse, streams, state, staging, say)
        actions.append(f"finished committed erasure {staging.name}")
    for a in actions:
        say(a)
    return actions


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def default_requester() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (some containers): say so
        return f"uid:{os.getuid()}"


def erase(
    subject: Subject,
    lake: LakeResource,
    warehouse: WarehouseResource,
    streams=None,
    requested_by: str | None = None,
    via: str = "cli",
    say: Callable[[str], None] = lambda *_: None,
) -> dict:
    """Erase `subject` from every stream that declares its kind. Returns the audit entry (no raw id)."""
    if streams is None:
        from assets.streams import STREAMS as streams
    kinds = subject_kinds(streams)
    if subject.kind not in kinds:
        raise ErasureError(f"unknown subject kind {subject.kind!r}: streams declare {sorted(kinds)}")
    targets = sorted((s for s in streams if s.subject is not None and s.subject.kind == subject.kind), key=lambda s: s.name)
    key = pii_key()
    erasure_id = uuid.uuid4().hex
    entry = {
        "event": "erasure",
        "erasure_id": erasure_id,
        "requested_by": requested_by or default_requester(),
        "requested_at": _now(),
        "via": via,
        "subject": {"kind": subject.kind, "hash": subject.hash(key)},
        "streams": [s.name for s in targets],
        "removed": {layer: {} for layer in LAYERS},
        "partitions": {layer: {} for layer in LAYERS},
        "kafka": "not erased: records stay in the source and dead-letter topics until their retention expires",
    }
    short = entry["subject"]["hash"][12:24]
    with lake.stream_lock("_erasure", "erase"):
        recovered = recover(lake, warehouse, streams, say)
        plan = _Plan(lake, erasure_id, entry)
        try:
            with ExitStack() as locks:
                for spec in targets:
                    locks.enter_context(lake.stream_lock(spec.name))  # no ingest while we rewrite Bronze
                for spec in targets:
                    value = pseudonymise(pl.Series([subject.id]), key)[0] if spec.subject.field in spec.pii_fields else subject.id
                    _plan_stream(plan, spec, _Match(spec, subject.id, value), locks, warehouse, say)
                if recovered:
                    entry["recovered_before"] = recovered
                if plan.files or plan.warehouse:
                    _commit(plan)
                    result = _finish(lake, warehouse, streams, plan.state(), plan.staging, say)
                else:
                    entry["total_removed"] = 0
                    entry["finished_at"] = _now()
                    lake.append_audit(AUDIT_LOG, entry)
                    result = entry
        except BaseException:
            if not (plan.staging / "COMMITTED").exists():
                shutil.rmtree(plan.staging, ignore_errors=True)
            raise
    say(f"erasure {erasure_id} of {subject.kind} {short}…: {result['total_removed']} rows removed")
    return result


def erased_source_rows(lake: LakeResource, stream: str) -> int:
    """Bronze + dead-letter rows erasures removed from `stream`: finished ones (audit log) and files already
    moved into place by a committed erasure not finished yet (a crash, or one running now)."""
    # Committed plans first, the audit log second: an erasure that finishes in between is then counted
    # once, from the log (read the other way round it would be missed).
    plans = []
    root = staging_root(lake)
    for staging in sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []:
        try:
            if (staging / "COMMITTED").exists():
                plans.append((staging, json.loads((staging / "plan.json").read_text())))
        except (FileNotFoundError, ValueError):  # finished and removed while we looked
            continue
    total, audited = 0, set()
    for e in lake.read_audit(AUDIT_LOG):
        if e.get("event") == "erasure":
            audited.add(e["erasure_id"])
            total += e["removed"].get("bronze", {}).get(stream, 0) + e["removed"].get("dead_letter", {}).get(stream, 0)
    for staging, state in plans:
        if state["entry"]["erasure_id"] not in audited:
            moved = [f for f in state["files"] if f["stream"] == stream and not (staging / "files" / f["rel"]).exists()]
            total += sum(f["source_rows"] for f in moved)
    return total


# -- requests and the Dagster job --------------------------------------------------------------------
# Dagster keeps every run's config in its run storage and shows it in the UI, so the job never takes the
# raw id as config: a request is filed first (`medallion erase --submit`, or `submit_request`), and holds
# the id only until it is processed. The job's config names requests by their opaque ids.
REQUESTS = "_erasure_requests"


def requests_dir(lake: LakeResource) -> Path:
    return lake.path / REQUESTS


def submit_request(lake: LakeResource, subject: Subject, requested_by: str | None = None) -> str:
    """File an erasure request for the `erase_subject` job; returns its id (safe to show and log)."""
    from assets.streams import STREAMS

    if subject.kind not in subject_kinds(STREAMS):
        raise ErasureError(f"unknown subject kind {subject.kind!r}: streams declare {sorted(subject_kinds(STREAMS))}")
    request_id = uuid.uuid4().hex[:16]
    folder = requests_dir(lake)
    folder.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"subject": f"{subject.kind}:{subject.id}", "requested_by": requested_by or default_requester(), "submitted_at": _now()})
    tmp = folder / f".{request_id}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # it holds the raw id: owner only
    with os.fdopen(fd, "w") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / f"{request_id}.json")
    return request_id


def pending_requests(lake: LakeResource) -> list[str]:
    folder = requests_dir(lake)
    return sorted(p.stem for p in folder.glob("*.json")) if folder.exists() else []


def process_request(lake: LakeResource, warehouse: WarehouseResource, request_id: str, streams=None, via: str = "dagster", say=lambda *_: None) -> dict:
    """Erase what a filed request names, then delete the request (its id is then nowhere on disk)."""
    if not re.fullmatch(r"[0-9a-f]{16}", request_id):
        raise ErasureError(f"not an erasure request id: {request_id!r}")
    path = requests_dir(lake) / f"{request_id}.json"
    if not path.exists():
        raise ErasureError(f"no pending erasure request {request_id} (already processed, or never filed)")
    request = json.loads(path.read_text())
    result = erase(Subject.parse(request["subject"]), lake, warehouse, streams, request["requested_by"], via=via, say=say)
    path.unlink()
    return {**result, "request_id": request_id}


class ErasureConfig(dg.Config):
    request_ids: list[str] = Field(
        default_factory=list,
        description="ids printed by `medallion erase --subject <kind>:<id> --submit`; empty: every pending request",
    )


def erasure_job(streams=None) -> dg.JobDefinition:
    """`erase_subject`: processes filed erasure requests with the same erasure as `medallion erase`.

    Kafka records are not erased (topic retention).
    """

    @dg.op(
        name="erase_requested_subjects",
        description="Erase each filed data subject from Bronze, dead-letter, Silver, quarantine, Gold and the warehouse; "
        "append the audit entries (no raw id). Kafka keeps its records until retention expires.",
        tags={"medallion/kind": "erasure"},
    )
    def erase_requested_subjects(context: dg.OpExecutionContext, config: ErasureConfig, lake: LakeResource, warehouse: WarehouseResource) -> list[dict]:
        request_ids = config.request_ids or pending_requests(lake)
        if not request_ids:
            context.log.info("no pending erasure requests")
        results = [process_request(lake, warehouse, rid, streams, via=f"dagster:{context.run_id}", say=context.log.info) for rid in request_ids]
        context.add_output_metadata(
            {
                "requests": len(results),
                "erasure_ids": dg.MetadataValue.json([r["erasure_id"] for r in results]),
                "subjects": dg.MetadataValue.json([r["subject"] for r in results]),  # kind + keyed hash only
                "total_removed": sum(r["total_removed"] for r in results),
                "removed": dg.MetadataValue.json([r["removed"] for r in results]),
            }
        )
        return results

    @dg.job(name="erase_subject", tags={"medallion/kind": "erasure"}, description=erase_requested_subjects.description)
    def job():
        erase_requested_subjects()

    return job
