"""Streams parsed Bronze blocks into new data files of the Bronze table while the run is still reading Kafka.

One Parquet file per (Kafka partition, Bronze partition), appended a row group per block, so an ingest of
millions of records holds one block in memory, not all of them. The files sit in the table's location but
no Delta version references them until the ingest commit (`assets/bronze.py`): readers never see them, and
a run that dies before committing leaves only files vacuum removes.
"""

from __future__ import annotations

import polars as pl

from resources.delta import DataFiles, StreamingFile, arrow_table
from resources.faults import failpoint


class BronzeStage:
    def __init__(self, files: DataFiles, pk_expr: pl.Expr, skip: dict[int, set[int]] | None = None):
        # `skip`: offsets per Kafka partition already committed to dead-letter by a run that died before its
        # Bronze commit; they stay dead letters (never in both tables).
        self.files, self.pk_expr, self.skip = files, pk_expr, skip or {}
        self._writers: dict[tuple[int, str], StreamingFile] = {}
        self.counts: dict[tuple[int, str], int] = {}
        self.rows = 0
        self.last_offsets: dict[int, int] = {}

    def add(self, block: pl.DataFrame) -> None:
        if not block.height:
            return
        for kp, offset in block.group_by("kafka_partition").agg(pl.col("kafka_offset").max()).iter_rows():
            self.last_offsets[kp] = max(self.last_offsets.get(kp, -1), offset)
        for kp, offsets in self.skip.items():
            block = block.filter(~((pl.col("kafka_partition") == kp) & pl.col("kafka_offset").is_in(list(offsets))))
        pieces = block.with_columns(self.pk_expr.alias("__pk")).partition_by("kafka_partition", "__pk", as_dict=True, maintain_order=True)
        for (kp, pk), rows in pieces.items():
            rows = rows.drop("__pk")
            writer = self._writers.get((kp, pk))
            if writer is None:
                writer = self._writers[(kp, pk)] = self.files.open_writer(arrow_table(rows).schema, pk)
            writer.write(rows)
            self.counts[(kp, pk)] = self.counts.get((kp, pk), 0) + rows.height
            failpoint("ingest.mid_stage")
        self.rows += block.height

    def close(self) -> dict[int, dict[str, int]]:
        """Finish every file. Returns Bronze row counts by Kafka partition, then Bronze partition key."""
        by_kp: dict[int, dict[str, int]] = {}
        for (kp, pk), writer in sorted(self._writers.items()):
            writer.close()
            by_kp.setdefault(kp, {})[pk] = self.counts[(kp, pk)]
        self._writers.clear()
        return by_kp

    def abort(self) -> None:
        """Close open files after a failure and remove what was written."""
        for writer in self._writers.values():
            writer.abort()
        self._writers.clear()
        self.files.discard()
