"""Streams parsed Bronze blocks into a run's staging directory while the run is still reading Kafka.

One Parquet file per (Kafka partition, Bronze partition), appended a row group per block, so an ingest of
millions of records holds one block in memory, not all of them. Files carry a `.partial` suffix until
`close()` names them after the offset range they hold; nothing here is visible to readers before the
ledger commit (`LakeResource.commit_bronze`), and recovery discards a staging directory without one.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from resources.faults import failpoint
from resources.lake import OFFSET_WIDTH, partition_dirname


class BronzeStage:
    def __init__(self, staging: Path, pk_expr: pl.Expr, start: dict[int, int]):
        self.staging, self.pk_expr, self.start = staging, pk_expr, start
        self._writers: dict[tuple[int, str], pq.ParquetWriter] = {}
        self.counts: dict[tuple[int, str], int] = {}
        self.rows = 0
        self.last_offsets: dict[int, int] = {}

    def _partial(self, kp: int, pk: str) -> Path:
        return self.staging / partition_dirname(pk) / f"p{kp}-{self.start[kp]:0{OFFSET_WIDTH}d}.partial"

    def add(self, block: pl.DataFrame) -> None:
        if not block.height:
            return
        pieces = block.with_columns(self.pk_expr.alias("__pk")).partition_by("kafka_partition", "__pk", as_dict=True, maintain_order=True)
        for (kp, pk), rows in pieces.items():
            table = rows.drop("__pk").to_arrow()
            writer = self._writers.get((kp, pk))
            if writer is None:
                path = self._partial(kp, pk)
                path.parent.mkdir(parents=True, exist_ok=True)
                writer = self._writers[(kp, pk)] = pq.ParquetWriter(path, table.schema, compression="zstd", compression_level=1)
            writer.write_table(table)
            self.counts[(kp, pk)] = self.counts.get((kp, pk), 0) + rows.height
            failpoint("ingest.mid_stage")
        self.rows += block.height
        for kp, offset in block.group_by("kafka_partition").agg(pl.col("kafka_offset").max()).iter_rows():
            self.last_offsets[kp] = max(self.last_offsets.get(kp, -1), offset)

    def close(self, ends: dict[int, int]) -> dict[int, dict[str, int]]:
        """Finish every file and name it `p{kp}-{start}-{end}.parquet`. Returns Bronze row counts by Kafka
        partition, then Bronze partition key."""
        by_kp: dict[int, dict[str, int]] = {}
        for (kp, pk), writer in sorted(self._writers.items()):
            writer.close()
            final = self._partial(kp, pk).with_name(f"p{kp}-{self.start[kp]:0{OFFSET_WIDTH}d}-{ends[kp]:0{OFFSET_WIDTH}d}.parquet")
            self._partial(kp, pk).rename(final)
            by_kp.setdefault(kp, {})[pk] = self.counts[(kp, pk)]
        self._writers.clear()
        return by_kp

    def abort(self) -> None:
        """Close open files after a failure (the staging directory is discarded by recovery)."""
        for writer in self._writers.values():
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - best effort while an earlier error propagates
                pass
        self._writers.clear()
