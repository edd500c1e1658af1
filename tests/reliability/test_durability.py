"""Repo.sync_in_background: one syncfs(2) on the repository's file system, unless its config says
``core.fsync=false`` (libostree's switch, honoured as libostree honours it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ostree

STRACE = shutil.which("strace")
pytestmark = pytest.mark.skipif(STRACE is None, reason="strace is not installed")


def _syncfs_calls(repo: Path) -> list[str]:
    out = subprocess.run([STRACE, "-f", "-qq", "-e", "trace=syncfs,sync", "-o", "/dev/stderr", sys.executable, "-c",
                          "import sys; from treeship.repo import Repo; "
                          "Repo.open(sys.argv[1]).sync_in_background().result()", str(repo)],
                         capture_output=True, text=True, check=True, timeout=120)
    return [line for line in out.stderr.splitlines() if "sync" in line and "exited" not in line]


@pytest.mark.parametrize("fsync, expected", [(None, 1), ("true", 1), ("false", 0)])
def test_sync_follows_core_fsync(tmp_path: Path, fsync: str | None, expected: int):
    repo = tmp_path / "repo"
    ostree("init", f"--repo={repo}", "--mode=archive")
    if fsync is not None:
        ostree("config", f"--repo={repo}", "set", "core.fsync", fsync)
    calls = _syncfs_calls(repo)
    assert len(calls) == expected, calls
    assert all(c.split("syncfs(")[-1].split(")")[0].isdigit() and c.rstrip().endswith("= 0")
               for c in calls), calls  # syncfs(FD) = 0: the repository's file system, not sync(2)
