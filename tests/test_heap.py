"""heap.keep_freed_memory: with it, a thread that frees and takes buffers of 64 kB-4 MB
again and again (as the receiver's reading and inflating do) stops faulting them in anew."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

CHURN = """
import random, resource, sys, threading
from treeship.heap import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory() and keep_freed_memory()  # set, and a second call is harmless
def churn():
    rnd = random.Random(1)
    for _ in range(200):
        bufs = [bytes(rnd.randrange(1 << 16, 1 << 22)) for _ in range(3)]
        del bufs
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
worker = threading.Thread(target=churn)
worker.start()
worker.join()
churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], check=True, capture_output=True, text=True)
    return int(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's thresholds are glibc's")
def test_freed_buffers_are_reused_not_faulted_in_again() -> None:
    default = _faults("default")
    # 1,200 buffers of 2 MB on average: about 600,000 pages if each were faulted in anew
    if default < 50_000:  # huge pages, a preloaded allocator, MALLOC_* in the environment...
        pytest.skip(f"glibc's defaults did not fault the buffers in anew here ({default} faults)")
    kept = _faults("keep")
    assert kept * 10 < default, (kept, default)
