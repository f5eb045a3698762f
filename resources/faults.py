"""Failpoints: named places where a test can make the process die for real (SIGKILL), or hold it there, to prove
recovery and to force the interleavings a race needs.

`MEDALLION_FAILPOINT=<name>` kills the process the first time execution reaches `failpoint("<name>")`.
`MEDALLION_FAILPOINT=<name>:hold` stops it there instead: it writes `<MEDALLION_FAILPOINT_RELEASE>.reached`
and waits until the file `MEDALLION_FAILPOINT_RELEASE` exists (at most 10 minutes), then goes on.
Unset (always, outside fault tests) it costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV = "MEDALLION_FAILPOINT"
RELEASE_ENV = "MEDALLION_FAILPOINT_RELEASE"
HOLD_LIMIT_S = 600


def failpoint(name: str) -> None:
    point = os.environ.get(ENV)
    if point is None or not point.startswith(name):
        return
    if point == name:
        os.kill(os.getpid(), signal.SIGKILL)
    elif point == f"{name}:hold":
        if not os.environ.get(RELEASE_ENV):
            raise RuntimeError(f"{ENV}={point} needs {RELEASE_ENV}=<file>: the process goes on once that file exists")
        release = Path(os.environ[RELEASE_ENV])
        Path(f"{release}.reached").write_text(str(os.getpid()))
        deadline = time.monotonic() + HOLD_LIMIT_S
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
