"""Phase marks for looking at where a push spends its time: ``TREESHIP_TRACE=FILE``.

Each end appends ``<wall clock> <pid> <phase>`` lines to FILE; on one machine (a benchmark
over loopback) the two ends' lines sort into one timeline. Off unless set: one dict lookup.
"""

from __future__ import annotations

import os
import time

_FILE = os.environ.get("TREESHIP_TRACE")


def mark(phase: str) -> None:
    if _FILE:
        with open(_FILE, "a") as f:
            f.write(f"{time.time():.6f} {os.getpid()} {phase}\n")
