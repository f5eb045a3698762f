"""A snapshot's files, once listed, are not listed again by opening the table: a version never changes, and an
open costs more as the table gains files."""

import polars as pl

from resources import delta
from resources.lake import LakeResource, LakeTable


def publish(lake: LakeResource, key: str, rows: int) -> int:
    return lake.publish("gold", "s", "t", key, pl.DataFrame({"x": list(range(rows))}), {}, append=True)


def opens_counted(monkeypatch) -> list:
    opened = []
    real = delta.open_table

    def counting(uri, storage_options, version=None):
        opened.append((uri, version))
        return real(uri, storage_options, version)

    monkeypatch.setattr(delta, "open_table", counting)
    return opened


def test_a_version_read_is_not_opened_again_and_keeps_its_files(tmp_path, monkeypatch):
    lake = LakeResource(uri=str(tmp_path / "lake"))
    t = LakeTable("gold", "s", "t")
    first = publish(lake, "2026120400", 3)
    opened = opens_counted(monkeypatch)

    v = lake.version(t)
    files_v = lake.partition_files(t, v, ["2026120400"])
    assert v == first and len(files_v) == 1 and len(opened) == 1  # version() opened it; the files came along

    later = publish(lake, "2026120400", 2)  # a new version: the old one's files stay what they were
    assert lake.partition_files(t, v, ["2026120400"]) == files_v
    files_later = lake.partition_files(t, later, ["2026120400"])
    assert files_later > files_v and len(files_later) == 2
    assert lake.partition_files(t, None, ["2026120400"]) == files_later  # the newest is always opened


def test_a_table_removed_and_created_again_is_listed_afresh(tmp_path):
    lake = LakeResource(uri=str(tmp_path / "lake"))
    t = LakeTable("gold", "s", "t")
    v = publish(lake, "2026120400", 3)
    before = lake.partition_files(t, v, ["2026120400"])
    lake.remove(t)
    assert publish(lake, "2026120400", 3) == v  # the same version number, other files
    after = lake.partition_files(t, v, ["2026120400"])
    assert after and after != before
