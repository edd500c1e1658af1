"""A plain push — received without libostree, through treeship/filerepo.py — killed at the
steps after its last byte that are its own: the flush, a commit placed and still marked
partial, the first ref. Each leaves what the libostree path leaves (test_faults.py kills that
one at every step; its policy needs libostree): `ostree fsck` clean, every ref at its old or
its new commit and complete, nothing left half-published, and a retry that lands.

The receiver runs under ``strace -e inject=…:signal=SIGKILL:when=N`` (with ``-P PATH`` where
the call names a known path): it dies on entering that call. Each case asserts the state it
was killed in, so a change in the receiver's calls shows as a failure here, not a silent
miss.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pushkit import (
    BRANCH,
    fsck,
    no_session_leftovers,
    ostree,
    partial_commits,
    receiver_loaded_libostree,
    refs,
    refs_complete,
    release,
    write_tree,
)

STRACE = shutil.which("strace")


@pytest.mark.skipif(not STRACE, reason="strace is not installed")
@pytest.mark.parametrize("where", ["flush", "unmarking", "first-ref"])
def test_a_plain_push_killed_after_its_last_byte(treeship, sshd, tmp_path: Path, where: str):
    local, repo = tmp_path / "local", tmp_path / "srv"
    first = release(treeship, write_tree(tmp_path / "t1", tag="1"), local)
    ostree("init", "--repo", repo, "--mode=archive")
    plain = sshd.add_key(f'restrict,command="treeship receive --repo {repo}"')

    def push(key, rc: int | None = 0):
        return treeship("push", "--repo", local, "--ssh-command", key.ssh_command, key.url(repo), BRANCH,
                        "--json", rc=rc)

    push(plain)
    second = release(treeship, write_tree(tmp_path / "t2", tag="2"), local)
    inject = {
        "flush": "-e trace=syncfs -e inject=syncfs:signal=SIGKILL:when=1",
        "unmarking": f"-P {repo}/state/{second}.commitpartial -e trace=unlink -e inject=unlink:signal=SIGKILL:when=1",
        # rename(2) from a temp file, whose name strace -P cannot know: the third of the receiver's
        # renames (its two session directories come before; objects move in with renameat)
        "first-ref": "-e trace=rename -e inject=rename:signal=SIGKILL:when=3",
    }[where]
    trace = tmp_path / "trace"
    killed = sshd.add_key(f'restrict,command="env TREESHIP_TRACE={trace} {STRACE} -f -qq -o /dev/null {inject} '
                          f'treeship receive --repo {repo}"')

    p = push(killed, rc=None)

    assert p.returncode == 11 and p.stderr.startswith("treeship: error: "), p.stderr
    assert not receiver_loaded_libostree(trace)  # it was the plain path that was killed
    assert "receiver: objects received" in trace.read_text()  # after the last byte
    fsck(repo)
    assert refs(repo) == {BRANCH: first}
    refs_complete(repo)
    if where == "unmarking":
        assert second in partial_commits(repo)  # placed, and not called complete before its closure was
    if where == "first-ref":
        assert second not in partial_commits(repo)  # complete, flushed: only the ref is left to move

    out = push(plain).json()
    assert out["ok"]
    fsck(repo)
    assert refs(repo) == {BRANCH: second}
    refs_complete(repo)
    no_session_leftovers(repo)
    assert second in ostree("summary", "--view", "--repo", repo).stdout
