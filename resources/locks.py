"""File locks shared by the lake and the warehouse: waiting (never failing), released by the kernel on death."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockBusy(RuntimeError):
    """The lock was not free within the caller's `wait_s`."""


@contextmanager
def exclusive_lock(path: Path, wait_s: float | None = None) -> Iterator[None]:
    """An exclusive flock on `path`, waiting for it (at most `wait_s`, then LockBusy); released by the kernel
    if the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        if wait_s is None:
            fcntl.flock(f, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LockBusy(f"{path} is held") from None
                    time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def shared_lock(path: Path) -> Iterator[None]:
    """A shared flock on `path`: any number of holders at once, none while someone holds it exclusively."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
