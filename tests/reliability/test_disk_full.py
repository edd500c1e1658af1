"""The receiver's disk fills up in the middle of a push: a clear error, nothing broken, and a
retry completes once there is room.

The server repository lives on a tmpfs the test mounts (8 MiB) for a push of ~13 MB that no
compression shrinks; the filesystem is then grown (``mount -o remount,size=…``) and the same
push retried. Needs root (or CAP_SYS_ADMIN); skipped otherwise.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from pushkit import (
    BRANCH,
    fsck,
    no_session_leftovers,
    object_path,
    ostree,
    partial_commits,
    refs,
    refs_complete,
    release,
    tree_objects,
    write_tree,
)


@pytest.fixture
def small_fs(tmp_path: Path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(mnt)], capture_output=True,
                       text=True, check=False)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _missing_bytes(local: Path, srv: Path, names: set[str]) -> int:
    partial = partial_commits(srv)
    return sum(object_path(local, n).stat().st_size for n in names
               if n.endswith(".commitmeta") or not object_path(srv, n).exists()
               or (n.endswith(".commit") and n.removesuffix(".commit") in partial))


def test_disk_full_mid_push_then_retry_after_space_is_freed(treeship, small_fs, tmp_path, ed25519_key, figures):
    srv = small_fs / "srv"
    ostree("init", "--repo", srv, "--mode=archive")
    tree = write_tree(tmp_path / "tree")
    rng = random.Random(5)
    (tree / "opt").mkdir()
    (tree / "opt" / "big").write_bytes(rng.randbytes(5_000_000))  # larger than the spill threshold
    for i in range(8):
        (tree / "opt" / f"part{i}").write_bytes(rng.randbytes(1_000_000))
    local = tmp_path / "local"
    commit = release(treeship, tree, local, BRANCH, "--sign-ed25519", str(ed25519_key.secret))
    names = tree_objects(local, commit) | {f"{commit}.commit", f"{commit}.commitmeta"}

    full = treeship("push", "--repo", local, str(srv), BRANCH, "--json", rc=None)

    assert full.returncode == 11, full.stderr  # a retry resumes once there is room
    assert full.stderr.startswith("treeship: error: ") and "no space left on device" in full.stderr, full.stderr
    assert full.stderr.count("\n") == 1, full.stderr  # one line, no traceback
    assert "remote error: " in full.stderr and "connection closed" not in full.stderr, full.stderr  # the cause
    fsck(srv)
    assert refs(srv) == {}
    refs_complete(srv)
    missing = _missing_bytes(local, srv, names)
    assert 0 < missing

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
    retry = treeship("push", "--repo", local, str(srv), BRANCH, "--json")

    out = json.loads(retry.stdout)
    assert out["ok"] and out["bytes_sent"] <= 1.05 * missing + 4096, (out, missing)
    fsck(srv)
    assert refs(srv) == {BRANCH: commit}
    refs_complete(srv)
    no_session_leftovers(srv)
    figures.append({"kind": "disk-full", "filesystem": "tmpfs 8 MiB, then 64 MiB", "error": full.stderr.strip(),
                    "missing_bytes": missing, "retry_bytes": out["bytes_sent"]})
