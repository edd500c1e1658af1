"""Several pushes into one repository at once, over the real sshd: they never corrupt it.

All start together (no synchronisation by sleeping: each is a process started at once and
waited for). Judged by the ``ostree`` CLI: fsck clean, every ref complete, the summary
lists every ref, no session directory left.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from pushkit import (
    Server,
    fsck,
    no_session_leftovers,
    ostree,
    refs,
    refs_complete,
    release,
    treeship_command,
    write_tree,
)


def _start(local: Path, srv: Server, *branches: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*treeship_command(), "push", "--repo", str(local), "--ssh-command", srv.ssh, srv.url,
                             *branches], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(procs: list[subprocess.Popen[str]]) -> list[tuple[int, str]]:
    return [_one(p) for p in procs]


def _one(p: subprocess.Popen[str]) -> tuple[int, str]:
    out, err = p.communicate(timeout=300)
    return p.returncode, out + err


def _summary_lists(repo: Path, expected: dict[str, str]) -> None:
    view = ostree("summary", "--view", "--repo", repo).stdout
    missing = [b for b, c in expected.items() if f"* {b}" not in view or c not in view]
    assert not missing, f"the summary does not list {missing}:\n{view}"


def test_eight_pushes_of_different_branches_all_land(treeship, server, tmp_path, figures):
    srv = server()
    local = tmp_path / "local"
    heads = {}
    for i in range(8):
        branch = f"team{i}/x86_64"
        heads[branch] = release(treeship, write_tree(tmp_path / f"t{i}", n=20 + i, tag=branch), local, branch)

    results = _wait([_start(local, srv, b) for b in heads])

    assert [rc for rc, _ in results] == [0] * 8, results
    fsck(srv.repo)
    assert refs(srv.repo) == heads
    refs_complete(srv.repo)
    _summary_lists(srv.repo, heads)  # the last summary published saw every ref
    no_session_leftovers(srv.repo)
    figures.append({"kind": "concurrency", "case": "8 branches at once", "landed": 8, "fsck": "clean"})


def test_four_pushes_of_one_branch_exactly_one_lands(treeship, server, tmp_path, figures):
    srv = server()
    locals_ = [tmp_path / f"local{i}" for i in range(4)]
    heads = [release(treeship, write_tree(tmp_path / f"t{i}", tag=str(i)), locals_[i]) for i in range(4)]

    results = _wait([_start(local, srv, "main/x86_64") for local in locals_])

    codes = [rc for rc, _ in results]
    assert sorted(codes) == [0, 10, 10, 10], results
    winner = codes.index(0)
    for i, (_, output) in enumerate(results):
        if i != winner:
            assert "non-fast-forward" in output and "main/x86_64" in output, output
    fsck(srv.repo)
    assert refs(srv.repo) == {"main/x86_64": heads[winner]}
    refs_complete(srv.repo)
    _summary_lists(srv.repo, {"main/x86_64": heads[winner]})
    no_session_leftovers(srv.repo)
    figures.append({"kind": "concurrency", "case": "4 commits onto one branch at once", "landed": 1,
                    "told_non_fast_forward": 3, "fsck": "clean"})


def test_four_pushes_of_one_commit_to_four_branches(treeship, server, tmp_path, figures):
    """The same objects and the same commit arrive four times at once: placed once, never left partial."""
    srv = server()
    local = tmp_path / "local"
    ostree("init", "--repo", local, "--mode=archive")
    ostree("commit", "--repo", local, "--branch", "base/x86_64", "--no-bindings", write_tree(tmp_path / "t", n=60))
    commit = ostree("rev-parse", "--repo", local, "base/x86_64").stdout.strip()  # bound to no branch
    branches = [f"copy{i}/x86_64" for i in range(4)]
    for b in branches:
        ostree("refs", "--repo", local, "--create", b, commit)

    results = _wait([_start(local, srv, b) for b in branches])

    assert [rc for rc, _ in results] == [0] * 4, results
    fsck(srv.repo)
    assert refs(srv.repo) == dict.fromkeys(branches, commit)
    refs_complete(srv.repo)
    no_session_leftovers(srv.repo)
    figures.append({"kind": "concurrency", "case": "1 commit onto 4 branches at once", "landed": 4, "fsck": "clean"})
