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
  rewritten Silver with the table's own builder and contract, and the warehouse partitions holding them are
  swapped from Gold with the load the warehouse assets use, rollups included.

Only data files holding the subject are rewritten (one Delta commit per table: those files out, the rest of
their rows in); every other file stays referenced as it was. Then every changed table is vacuumed with no
retention, so no earlier version still holds the subject: time travel cannot bring it back. Lake tables keep
no min/max statistics in their logs (`resources/delta.py`), and commit metadata holds counts only, so no log
file names the subject. Kafka cannot be erased by us: records stay in the source and dead-letter topics until
their retention expires (Bronze's committed offsets keep them from being read again).

Order and crashes: everything is planned first (replacement files written, uncommitted, Gold re-derived and
checked by its contract), then committed derived layers first (Gold, the warehouse partitions, history,
quarantine, Silver, dead-letter, Bronze), so a crash leaves the sources still holding the subject, and
the same request run again finds it and finishes the job. An `_erasure/<id>.json` marker (kind and keyed
hash only) says an erasure is under way; every commit records its erasure id and rows removed, so a crash
mid-way still reconciles (`erased_source_rows`), and the next erasure writes the interrupted one's audit
entry (marked `interrupted`) from its commits.

Safety: one erasure at a time (a platform lock, and the `erasure` Dagster pool for the job), each holding
the stream's ingest lock and the Silver, Gold and warehouse locks of the partitions it rewrites, so it never
races an ingest or a materialization on this machine; elsewhere, a concurrent commit to a rewritten file
makes the erasure's commit fail (CommitConflict) and the request stays pending. The audit log
(`_audit/erasures/`, one JSON object per request, also for requests that find nothing) records who, what
(the kind and a keyed hash of the id, never the id), when, the partitions touched and the rows removed per
layer and table. Bronze and dead-letter rows removed count in the reconciliation (`medallion/summary.py`):
consumed = Bronze + dead-letter + erased.
"""

import getpass
import hashlib
import hmac
import json
import os
import re
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone

import dagster as dg
import polars as pl
from pydantic import Field

from assets import keys
from assets.contracts.gate import apply_contract
from assets.gold import build_from_silver, gold_lock, silver_rows_for
from assets.history import HISTORY_TABLE, histories_lock
from assets.partitions import window
from assets.silver import silver_lock
from assets.spec import StreamSpec
from assets.warehouse import ensure_warehouse_tables, gold_key_of, load_warehouse_partition, warehouse_lock, warehouse_partition
from resources.delta import PARTITION_COLUMN, DataFiles
from resources.faults import failpoint
from resources.lake import LakeResource, LakeTable, RowDelete, bronze_table, dead_letter_table
from resources.pii import pii_key, pseudonymise
from resources.warehouse import WarehouseResource

AUDIT_LOG = "erasures"
LAYERS = ("bronze", "dead_letter", "silver", "quarantine", "history", "gold", "warehouse")


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


# -- planning: replacement files written, nothing committed -----------------------------------------
@dataclass
class _Change:
    """One table's commit of an erasure, in commit order."""

    order: int
    layer: str
    table: LakeTable
    commit: Callable[[dict], int]  # metadata -> Delta version
    removed: int
    files: DataFiles  # the replacement files, written, not yet committed


@dataclass
class _Plan:
    lake: LakeResource
    erasure_id: str
    entry: dict  # the audit entry, completed as the plan is carried out
    changes: list[_Change] = field(default_factory=list)
    warehouse: list[dict] = field(default_factory=list)  # {"stream", "table", "partition", "gold_keys", "before"}
    rollups: list[dict] = field(default_factory=list)  # {"rollup", "month", "before"}: refreshed by the partition loads

    def count(self, layer: str, table: str, rows: int, partition: str) -> None:
        self.entry["removed"].setdefault(layer, {})[table] = self.entry["removed"].get(layer, {}).get(table, 0) + rows
        touched = self.entry["partitions"].setdefault(layer, {}).setdefault(table, [])
        if partition not in touched:
            touched.append(partition)

    def discard(self) -> None:
        for c in self.changes:
            c.files.discard()

    def delete(self, layer: str, table: LakeTable, name: str, d: RowDelete | None) -> pl.DataFrame | None:
        """Plan one table's row deletion; returns the rows it removes."""
        if d is None:
            return None
        for pk, n in sorted(d.removed.items()):
            self.count(layer, name, n, pk or "-")
        self.changes.append(_Change(_ORDER[layer], layer, table, d.commit, sum(d.removed.values()), d.files))
        return d.rows


# Commit order: derived layers first, so a crash leaves the subject in the sources, where a new request finds it.
_ORDER = {"gold": 0, "history": 1, "quarantine": 2, "silver": 3, "dead_letter": 4, "bronze": 5}


def _plan_stream(plan: _Plan, spec: StreamSpec, m: _Match, locks: ExitStack, warehouse: WarehouseResource, say) -> None:
    """Plan the rewrites of one stream's Bronze, dead-letter, Silver, quarantine, history and Gold, taking the
    locks of what it rewrites. The caller holds the stream's ingest lock."""
    lake, subj, name = plan.lake, spec.subject, spec.name
    removed = plan.entry["removed"]
    for layer in ("bronze", "dead_letter", "silver", "quarantine"):
        removed.setdefault(layer, {})[name] = 0
    # Bronze: only the data files holding the subject are rewritten (found by its columns first).
    key_cols = [subj.field, "kafka_key"] if m.by_key else [subj.field]
    hits = plan.delete("bronze", bronze_table(name), name, lake.plan_delete(bronze_table(name), lambda df: m.mask("bronze", df), key_cols, m.expr("bronze")))
    m.coords = hits.select(LINEAGE["quarantine"]) if hits is not None else None
    bronze_pks = set(plan.entry["partitions"].get("bronze", {}).get(name, []))
    # Dead letter: few rows, matched in Python (the payload rule).
    plan.delete("dead_letter", dead_letter_table(name), name, lake.plan_delete(dead_letter_table(name), lambda df: m.mask("dead_letter", df)))

    # Silver and quarantine: the partitions whose Bronze held the subject (lineage), and any file still holding it.
    silver_t, quarantine_t, history_t = LakeTable("silver", name, "silver"), LakeTable("quarantine", name, "silver"), LakeTable("silver", name, HISTORY_TABLE)
    silver_rows = lake.plan_delete(silver_t, lambda df: m.mask("silver", df), [subj.column], m.expr("silver"), partitions=bronze_pks)
    quarantine_rows = lake.plan_delete(quarantine_t, lambda df: m.mask("quarantine", df))
    # The history each partition hands to the next (e.g. a sensor's last readings) holds the subject too;
    # histories are per subject, so nobody else's rows in it change. Any partition's history may carry the
    # subject's rows (a sensor's last readings reach back for hours), so all are read, with no derivation
    # running (it could carry rows on from a history read just before).
    history_rows = None
    if spec.history is not None and subj.column in spec.history.columns:
        locks.enter_context(histories_lock(lake, spec, exclusive=True))
        removed.setdefault("history", {})[name] = 0
        history_rows = lake.plan_delete(history_t, lambda df: m.mask("silver", df))
    partitions = sorted({pk for d in (silver_rows, quarantine_rows, history_rows) if d is not None for pk in d.removed})
    for pk in partitions:
        locks.enter_context(silver_lock(lake, spec, pk))  # also held while a partition's history is written
    plan.delete("silver", silver_t, name, silver_rows)
    plan.delete("quarantine", quarantine_t, name, quarantine_rows)
    plan.delete("history", history_t, name, history_rows)
    rewritten = sorted(silver_rows.removed) if silver_rows is not None else []

    # Gold: every published partition fed by a rewritten Silver partition, or holding the subject itself,
    # re-derived by the table's builder from Silver without the subject, and checked by its contract.
    for table in spec.gold:
        _plan_gold(plan, spec, table, m, rewritten, locks, warehouse)
    planned = [c for c in plan.changes if c.table.stream == name]
    if planned:
        say(f"{name}: {len(planned)} table(s) to rewrite, Silver partitions {', '.join(rewritten) or '-'}")


def _plan_gold(plan: _Plan, spec: StreamSpec, table, m: _Match, rewritten: list[str], locks: ExitStack, warehouse: WarehouseResource) -> None:
    lake, name = plan.lake, spec.name
    wh_table = keys.warehouse_table(spec, table)
    plan.entry["removed"].setdefault("gold", {})[wh_table] = 0
    gold_t = LakeTable("gold", name, table.name)
    published = lake.partition_rows("gold", name, table.name)
    gold_pks = {table.partitions.get_partition_key_for_timestamp(window(spec.partitions, pk)[0].timestamp()) for pk in rewritten}
    dt = lake.open(gold_t)
    if dt is not None and spec.subject.column in [f.name for f in dt.schema().fields]:
        holding = lake.scan(gold_t, dt).filter(m.expr("gold")).select(PARTITION_COLUMN).unique().collect()
        gold_pks |= set(holding[PARTITION_COLUMN].to_list())
    gold_pks = sorted(pk for pk in gold_pks if pk in published)
    for gpk in gold_pks:
        locks.enter_context(gold_lock(lake, spec, table, gpk))
    if not gold_pks:
        _plan_warehouse(plan, spec, table, m, gold_pks, locks, warehouse)
        return
    files = lake.data_files(gold_t)
    gone_total = 0
    for gpk in gold_pks:
        source_keys, silver_rows = silver_rows_for(spec, table, lake, gpk)
        silver_rows = silver_rows.filter(~m.mask("silver", silver_rows))
        rows = build_from_silver(spec, table, silver_rows)
        verdict = apply_contract(rows, table.contract)
        if not verdict.ok:
            raise ErasureError(
                f"gold_{name}_{table.name} {gpk} re-derived without the subject fails {table.contract.__name__} "
                f"({verdict.failure_counts} {verdict.schema_errors}); nothing was changed"
            )
        files.write(rows, gpk)
        gone = published[gpk] - rows.height
        gone_total += gone
        plan.count("gold", wh_table, gone, gpk)

    def commit(metadata: dict) -> int:
        try:
            return lake.commit(gold_t, files, replace=gold_pks, metadata=metadata)
        except BaseException:
            files.discard()
            raise

    plan.changes.append(_Change(_ORDER["gold"], "gold", gold_t, commit, gone_total, files))
    _plan_warehouse(plan, spec, table, m, gold_pks, locks, warehouse)


def _sql_str(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ddl_columns(columns_ddl: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^\s*(\w+)\s+\S", columns_ddl, re.M) if m.group(1).upper() != "INDEX"}


def _plan_warehouse(plan: _Plan, spec: StreamSpec, table, m: _Match, gold_pks: list[str], locks: ExitStack, warehouse: WarehouseResource) -> None:
    """The warehouse partitions to swap from Gold: those of rewritten Gold partitions that are loaded, and any
    partition that still holds the subject. Their rollup months are refreshed by the same load."""
    name = keys.warehouse_table(spec, table)
    plan.entry["removed"].setdefault("warehouse", {})[name] = 0
    for r in table.rollups:
        plan.entry["removed"]["warehouse"][r.name] = 0
    existing = {r["name"] for r in warehouse.query_arrow("SELECT name FROM system.tables WHERE database = currentDatabase()").to_pylist()}
    if name not in existing:
        return
    ensure_warehouse_tables(spec, table, plan.lake, warehouse)  # partitioned as this version loads it
    parts = {warehouse_partition(table, pk)[0] for pk in gold_pks}
    if spec.subject.column in _ddl_columns(table.columns_ddl):
        held = warehouse.query_arrow(f"SELECT DISTINCT _partition_id AS p FROM {name} WHERE {spec.subject.column} = {_sql_str(m.value)}")
        parts |= {str(p) for p in held.column("p").to_pylist()}
    for part in sorted(parts):
        locks.enter_context(warehouse_lock(plan.lake, spec, table, part))
        before = _partition_rows(warehouse, name, part)
        if not before:
            continue  # not loaded yet: its load will read the rewritten Gold
        _, gold_keys = warehouse_partition(table, gold_key_of(table, part))
        plan.warehouse.append({"stream": spec.name, "table": table.name, "partition": part, "gold_keys": gold_keys, "before": before})
        for r in table.rollups:
            if not any(x["rollup"] == r.name and x["month"] == part[:6] for x in plan.rollups):
                month_rows = _partition_rows(warehouse, r.name, part[:6]) if r.name in existing else 0
                plan.rollups.append({"rollup": r.name, "month": part[:6], "before": month_rows})


def _partition_rows(warehouse: WarehouseResource, table: str, partition_id: str) -> int:
    n = warehouse.query_arrow(f"SELECT count() AS n FROM {table} WHERE _partition_id = {_sql_str(partition_id)}")
    return int(n.column("n")[0].as_py())


# -- carrying it out: commits in order, the warehouse, vacuum, audit ----------------------------------
MARKERS = "_erasure"


def _commit_metadata(erasure_id: str, layer: str, removed: int) -> dict:
    return {"operation": ERASE, "erasure_id": erasure_id, "layer": layer, "removed": removed}


ERASE = "erase"


def _carry_out(lake: LakeResource, warehouse: WarehouseResource, streams, plan: _Plan, say) -> dict:
    entry = plan.entry
    by_name = {s.name: s for s in streams}
    marker = {"erasure_id": plan.erasure_id, "subject": entry["subject"], "started_at": entry["requested_at"],
              "versions": {t.name: lake.version(t) for t in {c.table for c in plan.changes}}}  # fmt: skip
    lake.put_object(f"{MARKERS}/{plan.erasure_id}.json", json.dumps(marker, default=str).encode())
    failpoint("erasure.before_commit")
    changes = sorted(plan.changes, key=lambda c: c.order)
    warehouse_done = False
    for change in changes:
        if change.order > _ORDER["gold"] and not warehouse_done:
            _reload_warehouse(lake, warehouse, by_name, plan)
            warehouse_done = True
        change.commit(_commit_metadata(plan.erasure_id, change.layer, change.removed))
        failpoint("erasure.mid_commits")
    if not warehouse_done:
        _reload_warehouse(lake, warehouse, by_name, plan)
    failpoint("erasure.before_vacuum")
    for t in sorted({c.table for c in changes}, key=lambda t: t.name):
        lake.vacuum_all_versions(t)
    entry["total_removed"] = sum(n for tables in entry["removed"].values() for n in tables.values())
    entry["finished_at"] = _now()
    lake.append_audit(AUDIT_LOG, entry)
    failpoint("erasure.after_audit")
    lake.delete_object(f"{MARKERS}/{plan.erasure_id}.json")
    return entry


def _reload_warehouse(lake: LakeResource, warehouse: WarehouseResource, by_name: dict, plan: _Plan) -> None:
    entry = plan.entry
    for w in plan.warehouse:
        spec = by_name[w["stream"]]
        table = next(t for t in spec.gold if t.name == w["table"])
        name = keys.warehouse_table(spec, table)
        after = load_warehouse_partition(spec, table, lake, warehouse, w["partition"], w["gold_keys"])
        entry["removed"]["warehouse"][name] += w["before"] - after
        entry["partitions"].setdefault("warehouse", {}).setdefault(name, []).append(w["partition"])
        failpoint("erasure.mid_warehouse")
    for r in plan.rollups:
        entry["removed"]["warehouse"][r["rollup"]] += r["before"] - _partition_rows(warehouse, r["rollup"], r["month"])
        entry["partitions"]["warehouse"].setdefault(r["rollup"], []).append(r["month"])


def _markers(lake: LakeResource) -> list[dict]:
    out = []
    for n in lake.list_objects(MARKERS):
        body = lake.get_object(f"{MARKERS}/{n}")
        if body is not None:  # finished and removed while we looked
            out.append(json.loads(body))
    return out


def _committed_by(lake: LakeResource, marker: dict, streams) -> list[tuple[LakeTable, dict]]:
    """The commits an interrupted erasure made: (table, commit metadata)."""
    out = []
    for t in lake.tables(streams):
        since = marker["versions"].get(t.name)
        for _, meta in lake.commits(t, since_version=(since + 1) if since is not None else 0, operation=ERASE):
            if meta.get("erasure_id") == marker["erasure_id"]:
                out.append((t, meta))
    return out


def recover(lake: LakeResource, warehouse: WarehouseResource, streams, say=lambda *_: None) -> list[str]:
    """Close erasures a crash interrupted: vacuum what they committed and write their audit entry (marked
    `interrupted`, with what they removed). What they did not reach is still in the sources: the same request
    run again finishes it. The caller holds the erasure lock."""
    actions = []
    for marker in _markers(lake):
        done = _committed_by(lake, marker, streams)
        if done:
            removed: dict = {layer: {} for layer in LAYERS}
            for t, meta in done:
                name = t.stream if meta["layer"] != "gold" else t.table
                removed[meta["layer"]][name] = removed[meta["layer"]].get(name, 0) + meta["removed"]
                lake.vacuum_all_versions(t)
            entry = {
                "event": "erasure", "erasure_id": marker["erasure_id"], "subject": marker["subject"], "requested_at": marker["started_at"],
                "interrupted": True, "removed": removed, "total_removed": sum(n for v in removed.values() for n in v.values()), "finished_at": _now(),
            }  # fmt: skip
            if not any(e.get("erasure_id") == marker["erasure_id"] for e in lake.read_audit(AUDIT_LOG)):
                lake.append_audit(AUDIT_LOG, entry)
            actions.append(f"closed interrupted erasure {marker['erasure_id']} ({entry['total_removed']} rows removed before it stopped; request it again to finish)")
        else:
            actions.append(f"discarded interrupted erasure {marker['erasure_id']} (it had changed nothing)")
        lake.delete_object(f"{MARKERS}/{marker['erasure_id']}.json")
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
                if plan.changes or plan.warehouse:
                    result = _carry_out(lake, warehouse, streams, plan, say)
                else:
                    entry["total_removed"] = 0
                    entry["finished_at"] = _now()
                    lake.append_audit(AUDIT_LOG, entry)
                    result = entry
        except BaseException:
            if not lake.get_object(f"{MARKERS}/{erasure_id}.json"):
                plan.discard()  # planned, never committed: its replacement files go (vacuum would remove them too)
            raise
    say(f"erasure {erasure_id} of {subject.kind} {short}…: {result['total_removed']} rows removed")
    return result


def erased_source_rows(lake: LakeResource, stream: str, streams=None) -> int:
    """Bronze + dead-letter rows erasures removed from `stream`: finished ones (audit log) and the commits of
    an erasure under way or interrupted (its marker, then its commits)."""
    if streams is None:
        from assets.streams import STREAMS as streams
    # Markers first, the audit log second: an erasure that finishes in between is then counted once, from
    # the log (read the other way round it would be missed).
    markers = _markers(lake)
    total, audited = 0, set()
    for e in lake.read_audit(AUDIT_LOG):
        if e.get("event") == "erasure":
            audited.add(e["erasure_id"])
            total += e["removed"].get("bronze", {}).get(stream, 0) + e["removed"].get("dead_letter", {}).get(stream, 0)
    sources = {bronze_table(stream).name, dead_letter_table(stream).name}
    for marker in markers:
        if marker["erasure_id"] not in audited:
            total += sum(meta["removed"] for t, meta in _committed_by(lake, marker, streams) if t.name in sources)
    return total


# -- requests and the Dagster job --------------------------------------------------------------------
# Dagster keeps every run's config in its run storage and shows it in the UI, so the job never takes the
# raw id as config: a request is filed first (`medallion erase --submit`, or `submit_request`), and holds
# the id only until it is processed. The job's config names requests by their opaque ids.
REQUESTS = "_erasure_requests"


def submit_request(lake: LakeResource, subject: Subject, requested_by: str | None = None) -> str:
    """File an erasure request for the `erase_subject` job; returns its id (safe to show and log)."""
    from assets.streams import STREAMS

    if subject.kind not in subject_kinds(STREAMS):
        raise ErasureError(f"unknown subject kind {subject.kind!r}: streams declare {sorted(subject_kinds(STREAMS))}")
    request_id = uuid.uuid4().hex[:16]
    body = json.dumps({"subject": f"{subject.kind}:{subject.id}", "requested_by": requested_by or default_requester(), "submitted_at": _now()})
    lake.put_object(f"{REQUESTS}/{request_id}.json", body.encode(), private=True)  # it holds the raw id: owner only
    return request_id


def pending_requests(lake: LakeResource) -> list[str]:
    return [n.removesuffix(".json") for n in lake.list_objects(REQUESTS)]


def process_request(lake: LakeResource, warehouse: WarehouseResource, request_id: str, streams=None, via: str = "dagster", say=lambda *_: None) -> dict:
    """Erase what a filed request names, then delete the request (its id is then nowhere on disk)."""
    if not re.fullmatch(r"[0-9a-f]{16}", request_id):
        raise ErasureError(f"not an erasure request id: {request_id!r}")
    body = lake.get_object(f"{REQUESTS}/{request_id}.json")
    if body is None:
        raise ErasureError(f"no pending erasure request {request_id} (already processed, or never filed)")
    request = json.loads(body)
    result = erase(Subject.parse(request["subject"]), lake, warehouse, streams, request["requested_by"], via=via, say=say)
    lake.delete_object(f"{REQUESTS}/{request_id}.json")
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
        pool="erasure",  # one erasure at a time across machines (a pool limit), beside the local lock
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
