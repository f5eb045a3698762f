"""Failpoints: named places where a test can make the process die for real (SIGKILL), to prove recovery.

`MEDALLION_FAILPOINT=<name>` kills the process the first time execution reaches `failpoint("<name>")`.
Unset (always, outside fault tests) it costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "MEDALLION_FAILPOINT"


def failpoint(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
