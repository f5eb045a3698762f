"""Gold for a micro-batch: only the time windows its new Silver rows fall in are computed again (from Silver
rows a stream run keeps in memory), the rest of the partition stays as published.

A table opts in with `GoldTable.window` and `GoldTable.reads`. This process remembers, per Gold partition it
published, the Silver files it was derived from, the Gold files it wrote, its rows, and the Silver rows of its
newest windows (or, for a table with `extend_window`, each window's state, which it extends instead of
aggregating the window's rows again). A micro-batch is computed this way only if Silver then holds exactly those files plus the
ones the batch's append added, Gold is untouched since, and every window the batch falls in is one it keeps
(or a new one after them); otherwise the partition is derived in full as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import polars as pl

from resources.recent import Recent
from assets.spec import GoldTable

KEEP_WINDOWS = 2  # the newest windows whose Silver rows are kept: where a stream's new rows fall


@dataclass(frozen=True)
class KeptPartition:
    silver_files: frozenset[str]
    gold_files: frozenset[str]
    gold: pl.DataFrame
    windows: dict[datetime, object]  # window start -> its Silver rows (`table.reads`), or its `extend_window` state


KEPT = Recent(size=8)  # (Gold table uri, partition) -> KeptPartition


def by_window(table: GoldTable, silver_rows: pl.DataFrame, keep: int = KEEP_WINDOWS) -> dict[datetime, pl.DataFrame]:
    """The Silver rows of the newest `keep` windows, by window start."""
    framed = silver_rows.select(table.reads).with_columns(pl.col("event_time").dt.truncate(table.window).alias("__w"))
    parts = {key[0]: rows.drop("__w") for key, rows in framed.partition_by("__w", as_dict=True).items()}
    return {w: parts[w] for w in sorted(parts)[-keep:]}


def kept_windows(table: GoldTable, silver_rows: pl.DataFrame) -> dict[datetime, object]:
    """What a stream run keeps of a partition it derived in full: its newest windows' rows, or their states."""
    windows = by_window(table, silver_rows)
    if table.extend_window is None:
        return windows
    return {w: table.extend_window(None, rows)[0] for w, rows in windows.items()}


def recompute(table: GoldTable, kept: KeptPartition, added: pl.DataFrame) -> tuple[pl.DataFrame, dict[datetime, pl.DataFrame], int] | None:
    """(the partition's Gold rows with the `added` Silver rows, the windows to keep, windows recomputed),
    or None if `added` falls in a window whose rows are not kept."""
    new = by_window(table, added, keep=10**9)
    newest = max(kept.windows) if kept.windows else None
    if any(w not in kept.windows and newest is not None and w < newest for w in new):
        return None
    windows = dict(kept.windows)
    touched = sorted(new)
    if table.extend_window is not None:
        built = []
        for w in touched:
            windows[w], rows = table.extend_window(windows.get(w), new[w])
            built.append(rows)
        fresh = pl.concat(built)
    else:
        for w, rows in new.items():
            windows[w] = pl.concat([windows[w], rows.cast(windows[w].schema)]) if w in windows else rows
        fresh = table.build(pl.concat([windows[w] for w in touched]))
    rest = kept.gold.filter(~pl.col(table.time_column).is_in(touched))
    gold = pl.concat([rest, fresh.cast(rest.schema)]).sort(table.time_column, maintain_order=True)
    return gold, {w: windows[w] for w in sorted(windows)[-KEEP_WINDOWS:]}, len(touched)
