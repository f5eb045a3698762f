"""The warehouse: ClickHouse through clickhouse-connect. Embedded chDB by default, a server when configured.

chDB allows one process per database path at a time, so every open takes an exclusive file lock
(waiting, never failing) and closes the session before releasing it.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import dagster as dg
import pyarrow as pa
from pydantic import Field

from resources.faults import failpoint
from resources.locks import exclusive_lock
from resources.settings import load_settings


_open = threading.local()  # where -> the client open in this thread (see WarehouseResource.client)
_ensured: set[tuple] = set()  # (where, DDL statement) run by this process, (where, "partitioning", table) checked


# Parts a partition swap (or a merge) replaced: a server removes them after `old_parts_lifetime`.
_OUTDATED_PARTS = "SELECT path FROM system.parts WHERE NOT active AND _state = 'Outdated' AND database NOT IN ('system', 'information_schema', 'INFORMATION_SCHEMA')"


class WarehouseSchemaError(RuntimeError):
    """A warehouse table exists in a shape this version cannot load into (and will not rebuild itself)."""


class WarehouseResource(dg.ConfigurableResource):
    """ClickHouse: `host` set means a server; otherwise chDB at `chdb_path`."""

    host: Optional[str] = Field(default=None, description="ClickHouse server host; empty selects embedded chDB")
    port: int = 8123
    username: str = "default"
    password: Optional[str] = None
    database: str = "default"
    secure: bool = False
    chdb_path: str = Field(default_factory=lambda: str(load_settings().chdb_path))

    @property
    def mode(self) -> str:
        return "server" if self.host else "chdb"

    @property
    def _where(self) -> str:
        return f"{self.host}:{self.port}/{self.database}" if self.host else self.chdb_path

    @contextmanager
    def client(self, wait_s: float | None = None) -> Iterator:
        """A clickhouse-connect client. chDB admits one process at a time: its file lock is waited for (at most
        `wait_s`, then LockBusy: a reader that must not queue behind a load, like a metrics scrape). Inside
        `with warehouse.client()`, nested calls reuse the open client (a micro-batch's loads open chDB once)."""
        import clickhouse_connect

        current = getattr(_open, self._where, None)
        if current is not None:
            yield current
            return
        with self._connect(clickhouse_connect, wait_s) as client:
            setattr(_open, self._where, client)
            try:
                yield client
            finally:
                delattr(_open, self._where)

    @contextmanager
    def _connect(self, clickhouse_connect, wait_s: float | None) -> Iterator:
        if self.host:
            client = clickhouse_connect.get_client(
                host=self.host,
                port=self.port,
                username=self.username,
                password=self.password or "",
                database=self.database,
                secure=self.secure,
            )
            try:
                yield client
            finally:
                client.close()
            return
        path = Path(self.chdb_path)
        with exclusive_lock(path.with_name(path.name + ".lock"), wait_s=wait_s):
            client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
            outdated: list[str] = []
            try:
                yield client
                outdated = [r[0] for r in client.query(_OUTDATED_PARTS).result_rows]
            finally:
                client.close()
            # chDB never runs ClickHouse's cleanup of outdated parts (chdb-io/chdb#107), and every session
            # loads them all again: each partition swap leaves one, and after 30 minutes of micro-batches
            # opening chDB took 0.65 s instead of 0.1 s. Closed, and still holding the lock, nothing reads them.
            root = path.resolve()
            for part in outdated:
                if Path(part).resolve().is_relative_to(root):
                    shutil.rmtree(part, ignore_errors=True)

    def ensure_tables(self, ddl: list[str]) -> None:
        """Create what is missing. Statements already run by this process are not sent again (they are
        CREATE ... IF NOT EXISTS; the platform never drops its tables)."""
        todo = [stmt for stmt in ddl if (self._where, stmt) not in _ensured]
        if not todo:
            return
        with self.client() as c:
            for stmt in todo:
                c.command(stmt)
                _ensured.add((self._where, stmt))

    def repartition(self, table: str, staged: str, staged_ddl: str) -> bool:
        """If `table` is partitioned otherwise than `staged_ddl` (the same table under the name `staged`)
        partitions it, rebuild it that way: its rows copied into `staged`, the two names exchanged in one
        step (readers see the old or the new table), the old one dropped. A replicated table, or one a
        materialized view reads (the view would stay with the old table), is the operator's to rebuild: an
        error says how. Checked once per process; True if it was rebuilt. The caller serializes it per table
        on this machine; processes of an older version must not be loading meanwhile."""
        if self.partitioning_checked(table):
            return False
        about = "SELECT engine, partition_key, dependencies_table FROM system.tables WHERE database = currentDatabase() AND name = {name:String}"
        with self.client() as c:
            c.command(f"DROP TABLE IF EXISTS {staged} SYNC")  # left by a rebuild that died half way
            c.command(staged_ddl)
            (engine, have, views), (_, want, _) = (c.query(about, parameters={"name": n}).result_rows[0] for n in (table, staged))
            rebuild = have != want
            if rebuild and (engine.startswith("Replicated") or views):
                c.command(f"DROP TABLE IF EXISTS {staged} SYNC")
                raise WarehouseSchemaError(
                    f"warehouse table {table} is partitioned by {have}, this version loads it by {want}: rebuild it "
                    f"(RENAME TABLE {table} TO {table}_old; create it from the new DDL, python -m medallion.cluster_ddl "
                    f"on a cluster; INSERT INTO {table} SELECT * FROM {table}_old; recreate the views that read it"
                    f"{' (' + ', '.join(views) + ')' if views else ''}; DROP TABLE {table}_old), then load again"
                )
            if rebuild:
                # Months of hours in one insert: past the default cap of 100 partitions per block.
                c.command(f"INSERT INTO {staged} SELECT * FROM {table}", settings={"max_partitions_per_insert_block": 0})
                copied, held = (int(c.query(f"SELECT count() FROM {n}").result_rows[0][0]) for n in (staged, table))
                if copied != held or c.query(about, parameters={"name": table}).result_rows[0][1] != have:
                    raise WarehouseSchemaError(f"warehouse table {table} changed while it was being rebuilt by partition (another rebuild or load ran): load again")
                c.command(f"EXCHANGE TABLES {table} AND {staged}")
            c.command(f"DROP TABLE IF EXISTS {staged} SYNC")
        _ensured.add((self._where, "partitioning", table))
        return rebuild

    def partitioning_checked(self, table: str) -> bool:
        return (self._where, "partitioning", table) in _ensured

    def replace_partition(self, table: str, partition_id: str, data: pa.Table) -> int:
        """Swap one whole table partition for `data`, atomically: readers see the old or the new rows.

        Rows go to a scratch copy of the table first; REPLACE PARTITION then exchanges the part in one step.
        The scratch name is fixed per partition, so a load that died half way is cleaned up by the next one
        (loads of one partition are serialized by the caller).
        """
        if data.num_rows == 0:
            return self.drop_partition(table, partition_id)
        scratch = f"{table}__load_{partition_id}"
        with self.client() as c:
            c.command(f"DROP TABLE IF EXISTS {scratch} SYNC")
            c.command(f"CREATE TABLE {scratch} AS {table}")
            # One block, one part: the swap then moves a single part, and no squashing pass runs on insert.
            rows = str(max(data.num_rows, 1))
            c.insert_arrow(scratch, data, settings={"max_insert_block_size": rows, "min_insert_block_size_rows": rows, "min_insert_block_size_bytes": "0", "optimize_on_insert": "0"})
            failpoint("warehouse.before_replace")
            c.command(f"ALTER TABLE {table} REPLACE PARTITION ID '{partition_id}' FROM {scratch}")
            failpoint("warehouse.after_replace")
            c.command(f"DROP TABLE IF EXISTS {scratch} SYNC")
        return data.num_rows

    def replace_partition_from_query(self, table: str, partition_id: str, select: str) -> int:
        """Swap one partition of `table` for what `select` returns (rows outside the partition are an error)."""
        scratch = f"{table}__load_{partition_id}"
        with self.client() as c:
            c.command(f"DROP TABLE IF EXISTS {scratch} SYNC")
            c.command(f"CREATE TABLE {scratch} AS {table}")
            c.command(f"INSERT INTO {scratch} {select}")
            c.command(f"ALTER TABLE {table} REPLACE PARTITION ID '{partition_id}' FROM {scratch}")
            rows = int(c.query(f"SELECT count() FROM {scratch}").result_rows[0][0])
            c.command(f"DROP TABLE IF EXISTS {scratch} SYNC")
        return rows

    def drop_partition(self, table: str, partition_id: str) -> int:
        with self.client() as c:
            c.command(f"ALTER TABLE {table} DROP PARTITION ID '{partition_id}'")
        return 0

    def query_arrow(self, sql: str) -> pa.Table:
        with self.client() as c:
            return c.query_arrow(sql)

    def count(self, table: str) -> int:
        with self.client() as c:
            return int(c.query(f"SELECT count() FROM {table}").result_rows[0][0])
