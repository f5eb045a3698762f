"""File locks shared by the lake and the warehouse: waiting (never failing), released by the kernel on death."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive_lock(path: Path, remove_after: bool = False) -> Iterator[None]:
    """An exclusive flock on `path`, waiting for it; released by the kernel if the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if remove_after:
                path.unlink(missing_ok=True)
            fcntl.flock(f, fcntl.LOCK_UN)


def lock_abandoned(path: Path) -> bool:
    """The lock file of `remove_after` holder exists but nobody holds it: its holder died."""
    try:
        f = open(path)
    except FileNotFoundError:
        return False  # never taken, or released cleanly
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # held: alive
        fcntl.flock(f, fcntl.LOCK_UN)
        return path.exists()
