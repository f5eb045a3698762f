"""A small per-process memory of what was read or published last (a stream run keeps it so the next
micro-batch need not read it back). Bounded, oldest dropped first; each user keys or checks an entry so that
it still describes the lake."""

from __future__ import annotations

from collections import OrderedDict


class Recent:
    def __init__(self, size: int):
        self.size = size
        self._entries: OrderedDict = OrderedDict()

    def get(self, key):
        return self._entries.get(key)

    def put(self, key, value) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, key) -> None:
        self._entries.pop(key, None)

    def drop_where(self, predicate) -> None:
        for key in [k for k in self._entries if predicate(k)]:
            del self._entries[key]
