"""`treeship push` / `treeship receive` through a real sshd, judged by the `ostree` CLI.

Every push here goes to a server repository behind an authorized_keys forced command
(``restrict,command="treeship receive --repo R …"``) on a real OpenSSH server on 127.0.0.1,
or to a local path (same receiver code, run as a local subprocess). After each one the
receiving repository is checked with ``ostree fsck`` and its refs with ``ostree refs`` /
``ostree rev-parse``.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ostree, treeship_command
from pushkit import (
    BRANCH,
    RELAY,
    Server,
    aay,
    assert_rejected,
    commitmeta,
    export_gpg,
    fsck,
    gvariant_dict,
    hello,
    no_session_leftovers,
    objects,
    push,
    receive,
    receiver_loaded_libostree,
    refs,
    release,
    tree_objects,
    write_tree,
)
from sshd_server import free_port
from treeship.transfer import wire

# -- 1. first push over SSH ------------------------------------------------------------------


def test_first_push_over_ssh_lands_byte_identical(treeship, server, tmp_path, gpg_key, ed25519_key):
    srv = server()
    local = tmp_path / "local"
    commit = release(treeship, write_tree(tmp_path / "tree"), local, BRANCH,
                     "--gpg-sign", gpg_key.fingerprint, "--gpg-homedir", str(gpg_key.homedir),
                     "--sign-ed25519", str(ed25519_key.secret))

    out = push(treeship, local, srv, BRANCH).json()

    assert out["ok"] and out["refs"] == [{"ref": BRANCH, "old": None, "new": commit, "status": "ok", "reason": ""}]
    assert out["objects_sent"] == len(tree_objects(local, commit)) + 2  # + commit + commitmeta
    fsck(srv.repo)
    assert refs(srv.repo) == {BRANCH: commit}
    assert not (srv.repo.parent / "not-this-path").exists()  # the forced command's repo was written
    # the commit and its detached signatures arrived unchanged
    assert (srv.repo / "objects" / commit[:2] / f"{commit[2:]}.commit").read_bytes() == \
        (local / "objects" / commit[:2] / f"{commit[2:]}.commit").read_bytes()
    assert commitmeta(srv.repo, commit) == commitmeta(local, commit)
    meta = gvariant_dict(commitmeta(srv.repo, commit))
    assert len(aay(meta["ostree.gpgsigs"])) == 1 and [len(s) for s in aay(meta["ostree.sign.ed25519"])] == [64]
    shown = ostree("show", "--repo", srv.repo, "--gpg-homedir", gpg_key.homedir, BRANCH).stdout
    assert "Good signature" in shown
    no_session_leftovers(srv.repo)


# -- 2. incremental and no-op pushes ---------------------------------------------------------


def test_incremental_push_sends_only_what_changed(treeship, server, tmp_path, ed25519_key):
    srv = server()
    local, tree = tmp_path / "local", write_tree(tmp_path / "tree")
    first = release(treeship, tree, local, BRANCH, "--version", "1", "--sign-ed25519", str(ed25519_key.secret))
    full = push(treeship, local, srv, BRANCH).json()

    (tree / "usr" / "share" / "doc" / "file007.txt").write_text("rewritten\n")
    (tree / "etc" / "os-release").write_text("NAME=Example\nVERSION=2\n")
    (tree / "usr" / "bin" / "new-tool").write_text("#!/bin/sh\n")
    second = release(treeship, tree, local, BRANCH, "--version", "2", "--sign-ed25519", str(ed25519_key.secret))
    inc = push(treeship, local, srv, BRANCH).json()

    assert inc["refs"][0] | {"reason": ""} == {"ref": BRANCH, "old": first, "new": second, "status": "ok",
                                               "reason": ""}
    new_objects = tree_objects(local, second) - tree_objects(local, first)
    # 3 files; dirtrees of /, /etc, /usr, /usr/bin, /usr/share, /usr/share/doc; no new dirmeta
    assert len(new_objects) <= 3 + 6
    assert 3 + 1 <= inc["objects_sent"] <= len(new_objects) + 2  # + commit + commitmeta
    assert inc["objects_sent"] * 4 < full["objects_sent"]
    assert inc["bytes_sent"] * 10 < full["bytes_sent"]
    fsck(srv.repo)
    assert refs(srv.repo) == {BRANCH: second}
    assert ostree("rev-parse", "--repo", srv.repo, f"{BRANCH}^").stdout.strip() == first

    noop = push(treeship, local, srv, BRANCH).json()
    assert noop["ok"] and noop["objects_sent"] == 0 and noop["bytes_sent"] == 0
    assert [r["status"] for r in noop["refs"]] == ["uptodate"]
    human = push(treeship, local, srv, BRANCH, as_json=False)  # the same, for humans
    assert human.stdout.startswith(f"uptodate  {BRANCH}  {second[:12]}")
    fsck(srv.repo)
    assert refs(srv.repo) == {BRANCH: second}


def test_a_first_push_into_an_empty_repository_sends_all_without_asking(treeship, tmp_path):
    """An empty receiver says so in its HELLO: no QUERY, no MISSING (for a large tree, megabytes
    of object names each way, and a round trip before the first object). Once the repository
    holds objects, the pusher asks again and sends only what is missing."""
    local = tmp_path / "local"
    commit = release(treeship, write_tree(tmp_path / "tree"), local)
    dest = tmp_path / "dest"
    ostree("init", "--repo", dest, "--mode=archive")
    trace = tmp_path / "trace"

    out = treeship("push", "--repo", local, dest, BRANCH, "--json", env={"TREESHIP_TRACE": str(trace)}).json()

    assert out["ok"] and out["objects_sent"] == len(tree_objects(local, commit)) + 1  # + the commit
    marks = trace.read_text()
    assert "receiver: preflight sent" in marks and "receiver: query" not in marks
    fsck(dest)
    assert refs(dest) == {BRANCH: commit}

    other = release(treeship, write_tree(tmp_path / "tree2", tag="2"), local, "other/x86_64")
    trace.unlink()
    out = treeship("push", "--repo", local, dest, "other/x86_64", "--json",
                   env={"TREESHIP_TRACE": str(trace)}).json()
    assert "receiver: query" in trace.read_text()
    assert out["ok"] and 0 < out["objects_sent"] < len(tree_objects(local, other)) + 1
    fsck(dest)
    assert refs(dest) == {BRANCH: commit, "other/x86_64": other}


def test_a_plain_push_never_loads_libostree(treeship, sshd, tmp_path, ed25519_key):
    """A push whose policy asks nothing of libostree, into a plain repository, is received,
    checked, placed and published through the files (treeship/filerepo.py); signatures in the
    push, or a policy that needs libostree (deltas, here), load it as before. Every outcome
    is judged by the ostree CLI."""
    local = tmp_path / "local"
    dest = tmp_path / "dest"
    ostree("init", "--repo", dest, "--mode=archive")
    trace = tmp_path / "trace"

    for tag in ("1", "2"):  # a first push, then an incremental one
        commit = release(treeship, write_tree(tmp_path / f"tree{tag}", tag=tag), local)
        trace.unlink(missing_ok=True)
        out = treeship("push", "--repo", local, dest, BRANCH, "--json", env={"TREESHIP_TRACE": str(trace)}).json()
        assert out["ok"] and out["objects_sent"] > 0
        assert "receiver: closures checked" in trace.read_text() and not receiver_loaded_libostree(trace)
        fsck(dest)
        assert refs(dest) == {BRANCH: commit}
        assert commit in ostree("summary", "--repo", dest, "--view").stdout
        assert not (dest / "state").exists() or not list((dest / "state").iterdir())  # no commit left partial

    trace.unlink()
    signed = release(treeship, write_tree(tmp_path / "tree3", tag="3"), local, BRANCH,
                     "--sign-ed25519", str(ed25519_key.secret))
    treeship("push", "--repo", local, dest, BRANCH, env={"TREESHIP_TRACE": str(trace)})
    assert receiver_loaded_libostree(trace)  # the signatures that travel are parsed by libostree
    assert refs(dest) == {BRANCH: signed}
    ostree("show", "--repo", dest, signed)

    repo = tmp_path / "server"
    ostree("init", "--repo", repo, "--mode=archive")
    policy = tmp_path / "policy.toml"
    policy.write_text("[deltas]\nenabled = true\n")
    key = sshd.add_key(f'restrict,command="env TREESHIP_TRACE={trace} treeship receive --repo {repo} '
                       f'--config {policy}"')
    trace.unlink()
    treeship("push", "--repo", local, "--ssh-command", key.ssh_command, key.url(repo), BRANCH)
    assert receiver_loaded_libostree(trace)
    fsck(repo)
    assert refs(repo) == {BRANCH: signed}


def test_a_repository_with_a_parent_gets_every_object_itself(treeship, tmp_path):
    """Clients pull a releases repository's own files over HTTP, not its parent's: every object,
    the commit too, lands in it (libostree's has_object also looks in the parent), and such a
    receiver never says it is empty."""
    local = tmp_path / "local"
    commit = release(treeship, write_tree(tmp_path / "tree"), local)
    parent, dest = tmp_path / "parent", tmp_path / "dest"
    push(treeship, local, str(parent), BRANCH)
    ostree("init", "--repo", dest, "--mode=archive")
    ostree("config", "--repo", dest, "set", "core.parent", str(parent))
    trace = tmp_path / "trace"

    out = treeship("push", "--repo", local, dest, BRANCH, "--json", env={"TREESHIP_TRACE": str(trace)}).json()

    assert "receiver: query" in trace.read_text()
    assert out["ok"] and out["objects_sent"] == len(tree_objects(local, commit)) + 1
    assert ostree("rev-parse", "--repo", dest, BRANCH).stdout.strip() == commit
    assert objects(dest) == objects(parent)  # the commit's file included


# -- 3. several branches, local remotes, named remotes ---------------------------------------


def test_several_branches_and_every_kind_of_remote(treeship, server, tmp_path):
    local = tmp_path / "local"
    heads = {b: release(treeship, write_tree(tmp_path / b.replace("/", "-"), tag=b), local, b)
             for b in ("app/x86_64", "app/aarch64", "sdk/x86_64")}

    plain = tmp_path / "plain" / "repo"  # created by the receiver, in a directory that exists
    (tmp_path / "plain").mkdir()
    out = push(treeship, local, str(plain), *heads).json()
    assert [r["status"] for r in out["refs"]] == ["ok"] * 3
    assert out["created"] == str(plain)
    fsck(plain)
    assert refs(plain) == heads
    assert ostree("config", "--repo", plain, "get", "core.mode").stdout.strip() in ("archive", "archive-z2")

    via_url = tmp_path / "via url"
    push(treeship, local, f"file://{via_url}", "app/x86_64", "sdk/x86_64")
    fsck(via_url)
    assert refs(via_url) == {b: heads[b] for b in ("app/x86_64", "sdk/x86_64")}

    named = tmp_path / "named"
    treeship("remote", "add", "releases", f"file://{named}", "--repo", local)
    assert treeship("remote", "list", "--repo", local, "--json").json()["remotes"]["releases"] == f"file://{named}"
    push(treeship, local, "releases", "app/aarch64")
    fsck(named)
    assert refs(named) == {"app/aarch64": heads["app/aarch64"]}

    srv = server()
    ostree("remote", "add", "--repo", local, "--no-gpg-verify", "upstream", srv.url)
    treeship("push", "--repo", local, "--ssh-command", srv.ssh, "upstream", *heads)
    fsck(srv.repo)
    assert refs(srv.repo) == heads


# -- 4. an interrupted push resumes ----------------------------------------------------------


def test_interrupted_push_keeps_what_arrived_and_resumes(treeship, server, tmp_path):
    srv = server()
    local, tree = tmp_path / "local", tmp_path / "big"
    (tree / "data").mkdir(parents=True)
    part = 3_000_000
    for i in range(10):  # 30 MB that no compression shrinks
        (tree / "data" / f"blob{i}").write_bytes(os.urandom(part))
    commit = release(treeship, tree, local)
    control = push(treeship, local, str(tmp_path / "control"), BRANCH).json()  # the same push, whole
    full_bytes, full_objects = control["bytes_sent"], control["objects_sent"]

    relay = tmp_path / "relay.py"
    relay.write_text(RELAY)
    budget = int(full_bytes * 0.6)
    cut = treeship("push", "--repo", local, "--ssh-command", f"{sys.executable} {relay} {budget} {srv.ssh}",
                   srv.url, BRANCH, rc=11)
    assert "connection" in cut.stderr, cut.stderr

    assert refs(srv.repo) == {}
    fsck(srv.repo)
    no_session_leftovers(srv.repo)
    kept = objects(srv.repo)
    kept_bytes = sum(kept.values())
    # everything that arrived whole was kept: at most the object in flight was lost
    assert budget - part - 65536 <= kept_bytes < full_bytes

    stale = srv.repo / "tmp" / "treeship-receive-stale"  # what a receiver killed by SIGKILL leaves
    stale.mkdir()
    (stale / ".lock").touch()
    (stale / "1.file").write_bytes(b"half an object")

    retry = push(treeship, local, srv, BRANCH).json()
    assert retry["ok"]
    assert retry["objects_sent"] == full_objects - len(kept)
    assert retry["bytes_sent"] <= 1.05 * (full_bytes - kept_bytes) + 65536
    assert retry["bytes_sent"] < 0.6 * full_bytes
    fsck(srv.repo)
    assert refs(srv.repo) == {BRANCH: commit}
    no_session_leftovers(srv.repo)


def test_what_a_killed_receiver_staged_whole_is_adopted_by_the_next_push(treeship, tmp_path):
    """A receiver fills new objects/XX directories aside (objects.ObjectStore) and moves them in
    at the end; one killed before that leaves them in its session directory. The next session
    of the same boot moves in the content objects written whole (0644) that hash to their
    names, and nothing else."""
    local, srv = tmp_path / "local", tmp_path / "srv"
    release(treeship, write_tree(tmp_path / "tree"), local)
    ostree("init", "--repo", srv, "--mode=archive")
    files = sorted((local / "objects").glob("*/*.filez"), key=lambda p: p.stat().st_size)
    whole, cut, other_boot, corrupt = files[-1], files[-2], files[-3], files[-4]
    dirtree = next((local / "objects").glob("*/*.dirtree"))
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()

    def stage(session: str, obj: Path, mode: int) -> Path:
        d = srv / "tmp" / session / "objects" / obj.parent.name
        d.mkdir(parents=True, exist_ok=True)
        (srv / "tmp" / session / ".lock").touch()
        (d / obj.name).write_bytes(obj.read_bytes())
        (d / obj.name).chmod(mode)
        return d / obj.name

    stage(f"treeship-receive-{boot}-killed", whole, 0o644)
    stage(f"treeship-receive-{boot}-killed", cut, 0o600)  # being written when the receiver died
    (stage(f"treeship-receive-{boot}-killed", whole, 0o644).parent / ("0" * 62 + ".junk")).write_bytes(b"x")
    altered = stage(f"treeship-receive-{boot}-killed", corrupt, 0o644)  # whole, yet not what its name says
    data = bytearray(altered.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the deflate stream (the last byte's spare bits may not count)
    altered.write_bytes(bytes(data))
    stage(f"treeship-receive-{boot}-killed", dirtree, 0o644)  # metadata: libostree's to judge, so sent again
    stage("treeship-receive-00000000-0000-0000-0000-000000000000-before-a-reboot", other_boot, 0o644)
    control = push(treeship, local, str(tmp_path / "control"), BRANCH).json()

    out = push(treeship, local, str(srv), BRANCH).json()
    assert out["ok"] and out["objects_sent"] == control["objects_sent"] - 1
    fsck(srv)
    assert objects(srv) == objects(tmp_path / "control")
    no_session_leftovers(srv)


def test_the_session_sweep_follows_no_symlink_out_of_the_repository(treeship, tmp_path):
    """Whatever sits in tmp/ under a session's name, the sweep writes and removes nothing
    outside the repository and waits for nothing: a symlinked session directory is dropped as
    a link, a session whose lock is a symlink or a FIFO is left alone."""
    local, srv, outside = tmp_path / "local", tmp_path / "srv", tmp_path / "outside"
    commit = release(treeship, write_tree(tmp_path / "tree"), local)
    ostree("init", "--repo", srv, "--mode=archive")
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    obj = next((local / "objects").glob("*/*.filez"))
    (outside / "objects" / obj.parent.name).mkdir(parents=True)
    (outside / "objects" / obj.parent.name / obj.name).write_bytes(obj.read_bytes())
    (outside / "target").write_text("not the receiver's")
    before = {str(p): p.read_bytes() if p.is_file() else None for p in outside.rglob("*")}
    (srv / "tmp").mkdir(exist_ok=True)
    (srv / "tmp" / f"treeship-receive-{boot}-linked").symlink_to(outside, target_is_directory=True)
    locked = srv / "tmp" / f"treeship-receive-{boot}-lock-linked"
    locked.mkdir()
    (locked / ".lock").symlink_to(outside / "target")
    fifo = srv / "tmp" / f"treeship-receive-{boot}-fifo"  # opening it for writing would wait for a reader
    fifo.mkdir()
    os.mkfifo(fifo / ".lock")

    out = push(treeship, local, str(srv), BRANCH).json()

    assert out["ok"] and refs(srv) == {BRANCH: commit}
    assert {str(p): p.read_bytes() if p.is_file() else None for p in outside.rglob("*")} == before
    assert not os.path.lexists(srv / "tmp" / f"treeship-receive-{boot}-linked")
    assert (locked / ".lock").is_symlink()
    fsck(srv)


# -- 5. rejections ---------------------------------------------------------------------------


def test_branch_the_key_may_not_write(treeship, server, tmp_path):
    srv = server('[keys.alice]\nbranches = ["allowed/*"]\n')
    local = tmp_path / "local"
    release(treeship, write_tree(tmp_path / "tree"), local, "forbidden/x")

    r = push(treeship, local, srv, "forbidden/x", rc=10)

    assert_rejected(r, "forbidden/x", "may not write this branch")
    assert r.json()["objects_sent"] == 0 and objects(srv.repo) == {}
    human = push(treeship, local, srv, "forbidden/x", rc=10, as_json=False)
    assert "rejected  forbidden/x" in human.stdout and "may not write" in human.stdout
    assert refs(srv.repo) == {}
    fsck(srv.repo)


def test_a_key_missing_from_the_policy_writes_nothing(treeship, server, tmp_path):
    srv = server('[keys.bob]\nbranches = ["*"]\n', key_id="alice")
    local = tmp_path / "local"
    release(treeship, write_tree(tmp_path / "tree"), local)
    assert_rejected(push(treeship, local, srv, BRANCH, rc=10), BRANCH, "not in the policy")
    assert refs(srv.repo) == {}
    fsck(srv.repo)


@pytest.mark.parametrize("kind", ["ed25519", "gpg"])
def test_signatures_required_by_policy(treeship, server, tmp_path, kind, gpg_key, other_gpg_key, ed25519_key,
                                       other_ed25519_key):
    if kind == "ed25519":
        trust = f'ed25519_keys = ["{ed25519_key.public_b64}"]'
        good, wrong = ["--sign-ed25519", str(ed25519_key.secret)], ["--sign-ed25519", str(other_ed25519_key.secret)]
    else:
        trust = f'gpg_keyring = "{export_gpg(gpg_key, tmp_path / "trusted.gpg")}"'
        good = ["--gpg-sign", gpg_key.fingerprint, "--gpg-homedir", str(gpg_key.homedir)]
        wrong = ["--gpg-sign", other_gpg_key.fingerprint, "--gpg-homedir", str(other_gpg_key.homedir)]
    srv = server(f'[[signatures]]\nbranches = ["main/*"]\n{trust}\n')
    tree = write_tree(tmp_path / "tree")

    for name, args in (("unsigned", []), ("wrong", wrong)):
        local = tmp_path / name
        (tree / "etc" / "release-tag").write_text(name)
        release(treeship, tree, local, BRANCH, *args)
        r = push(treeship, local, srv, BRANCH, rc=10)
        assert_rejected(r, BRANCH, "not signed by a key the policy trusts")
        assert refs(srv.repo) == {}
        fsck(srv.repo)

    local = tmp_path / "good"
    (tree / "etc" / "release-tag").write_text("good")
    commit = release(treeship, tree, local, BRANCH, *good)
    push(treeship, local, srv, BRANCH)
    fsck(srv.repo)
    assert refs(srv.repo) == {BRANCH: commit}


def test_non_fast_forward_is_refused(treeship, server, tmp_path):
    srv = server()
    first = release(treeship, write_tree(tmp_path / "a", tag="a"), tmp_path / "one", BRANCH, "--version", "1")
    push(treeship, tmp_path / "one", srv, BRANCH)
    release(treeship, write_tree(tmp_path / "b", tag="b"), tmp_path / "two", BRANCH, "--version", "1")

    r = push(treeship, tmp_path / "two", srv, BRANCH, rc=10)
    assert_rejected(r, BRANCH, "non-fast-forward")
    # without a policy file the receiver is fast-forward only: --force changes nothing
    assert_rejected(push(treeship, tmp_path / "two", srv, BRANCH, rc=10, force=True), BRANCH, "non-fast-forward")
    fsck(srv.repo)
    assert refs(srv.repo) == {BRANCH: first}


def test_force_only_where_the_policy_allows_it(treeship, server, tmp_path):
    srv = server('[keys.alice]\nbranches = ["*"]\nforce = ["scratch/*"]\n')
    one, two = tmp_path / "one", tmp_path / "two"
    before = {b: release(treeship, write_tree(tmp_path / f"a-{b[:4]}", tag=b + "a"), one, b)
              for b in ("scratch/x", "main/x")}
    push(treeship, one, srv, "scratch/x", "main/x")
    after = {b: release(treeship, write_tree(tmp_path / f"b-{b[:4]}", tag=b + "b"), two, b)
             for b in ("scratch/x", "main/x")}

    assert_rejected(push(treeship, two, srv, "scratch/x", rc=10), "scratch/x", "non-fast-forward")
    assert_rejected(push(treeship, two, srv, "main/x", rc=10, force=True), "main/x",
                    "--force is not allowed on this branch")
    assert refs(srv.repo) == before
    fsck(srv.repo)

    out = push(treeship, two, srv, "scratch/x", force=True).json()
    assert out["refs"][0]["status"] == "ok"
    fsck(srv.repo)
    assert refs(srv.repo) == {"scratch/x": after["scratch/x"], "main/x": before["main/x"]}


def test_protected_branch_is_never_rewound(treeship, server, tmp_path):
    srv = server('[receive]\nprotected = ["stable/*"]\n[keys.alice]\nbranches = ["*"]\nforce = ["*"]\n')
    local, tree = tmp_path / "local", write_tree(tmp_path / "tree")
    v1 = release(treeship, tree, local, "stable/x", "--version", "1")
    (tree / "etc" / "release-tag").write_text("2\n")
    v2 = release(treeship, tree, local, "stable/x", "--version", "2")
    push(treeship, local, srv, "stable/x")
    assert refs(srv.repo) == {"stable/x": v2}

    ostree("reset", "--repo", local, "stable/x", v1)  # back to the parent, which the server has
    assert_rejected(push(treeship, local, srv, "stable/x", rc=10, force=True), "stable/x", "protected")
    other = tmp_path / "other"
    release(treeship, write_tree(tmp_path / "unrelated", tag="u"), other, "stable/x")
    assert_rejected(push(treeship, other, srv, "stable/x", rc=10, force=True), "stable/x", "protected")
    fsck(srv.repo)
    assert refs(srv.repo) == {"stable/x": v2}


def test_refs_of_one_push_move_together_or_not_at_all(treeship, server, tmp_path, ed25519_key):
    srv = server('[keys.alice]\nbranches = ["allowed/*"]\n'
                 f'[[signatures]]\nbranches = ["allowed/signed/*"]\ned25519_keys = ["{ed25519_key.public_b64}"]\n')
    local = tmp_path / "local"
    release(treeship, write_tree(tmp_path / "t1", tag="1"), local, "allowed/a")
    release(treeship, write_tree(tmp_path / "t2", tag="2"), local, "denied/b")
    release(treeship, write_tree(tmp_path / "t3", tag="3"), local, "allowed/signed/c")

    # refused before any object travels (the key may not write denied/b)
    r = push(treeship, local, srv, "allowed/a", "denied/b", rc=10)
    assert_rejected(r, "denied/b", "may not write")
    assert_rejected(r, "allowed/a", "another ref of this push was rejected")
    assert r.json()["objects_sent"] == 0 and objects(srv.repo) == {}  # a refused push sends nothing
    assert refs(srv.repo) == {}
    fsck(srv.repo)

    # refused after the objects arrived (allowed/signed/c is unsigned)
    r = push(treeship, local, srv, "allowed/a", "allowed/signed/c", rc=10)
    assert_rejected(r, "allowed/signed/c", "not signed")
    assert_rejected(r, "allowed/a", "another ref of this push was rejected")
    assert refs(srv.repo) == {}
    fsck(srv.repo)
    no_session_leftovers(srv.repo)


# -- 6. concurrent pushes --------------------------------------------------------------------


def _popen_push(local: Path, srv: Server, *branches: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*treeship_command(), "push", "--repo", str(local), "--ssh-command", srv.ssh, srv.url,
                             *branches], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(procs: list[subprocess.Popen[str]]) -> list[tuple[int, str]]:
    done = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        done.append((p.returncode, out + err))
    return done


def test_concurrent_pushes_to_one_branch_one_wins(treeship, server, tmp_path):
    srv = server()
    heads = [release(treeship, write_tree(tmp_path / f"t{i}", tag=str(i)), tmp_path / f"local{i}")
             for i in range(2)]

    results = _wait([_popen_push(tmp_path / f"local{i}", srv, BRANCH) for i in range(2)])

    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 10], results
    winner = next(i for i, (rc, _) in enumerate(results) if rc == 0)
    loser_output = results[1 - winner][1]
    assert "non-fast-forward" in loser_output and BRANCH in loser_output
    fsck(srv.repo)
    assert refs(srv.repo) == {BRANCH: heads[winner]}


def test_concurrent_pushes_of_different_branches_all_land(treeship, server, tmp_path):
    srv = server()
    branches = [f"team{i}/x86_64" for i in range(4)]
    heads = {b: release(treeship, write_tree(tmp_path / f"t{i}", tag=b), tmp_path / f"local{i}", b)
             for i, b in enumerate(branches)}

    results = _wait([_popen_push(tmp_path / f"local{i}", srv, b) for i, b in enumerate(branches)])

    assert [rc for rc, _ in results] == [0] * 4, results
    fsck(srv.repo)
    assert refs(srv.repo) == heads
    summary = ostree("summary", "--view", "--repo", srv.repo).stdout
    assert all(f"* {b}" in summary for b in branches), summary  # the last summary saw every ref
    no_session_leftovers(srv.repo)


# -- 7. summary, its signatures, deltas ------------------------------------------------------


def test_summary_signed_with_ed25519(treeship, server, tmp_path, ed25519_key):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    srv = server(f'[summary]\ned25519_secret = "{ed25519_key.secret}"\n')
    local = tmp_path / "local"
    commit = release(treeship, write_tree(tmp_path / "tree"), local)
    push(treeship, local, srv, BRANCH)

    view = ostree("summary", "--view", "--repo", srv.repo).stdout
    assert f"* {BRANCH}" in view and commit in view
    sigs = aay(gvariant_dict((srv.repo / "summary.sig").read_bytes())["ostree.sign.ed25519"])
    assert [len(s) for s in sigs] == [64]
    Ed25519PublicKey.from_public_bytes(base64.b64decode(ed25519_key.public_b64)).verify(
        sigs[0], (srv.repo / "summary").read_bytes())  # raises InvalidSignature otherwise
    fsck(srv.repo)
    assert refs(srv.repo) == {BRANCH: commit}


def test_summary_signed_with_gpg_and_deltas(treeship, server, tmp_path, gpg_key):
    srv = server(f'[summary]\ngpg_sign = ["{gpg_key.fingerprint}"]\ngpg_homedir = "{gpg_key.homedir}"\n'
                 '[deltas]\nenabled = true\n')
    local, tree = tmp_path / "local", write_tree(tmp_path / "tree")
    first = release(treeship, tree, local, BRANCH, "--version", "1")
    push(treeship, local, srv, BRANCH)
    assert ostree("static-delta", "list", "--repo", srv.repo).stdout.strip() == "(No static deltas)"
    (tree / "etc" / "os-release").write_text("NAME=Example\nVERSION=2\n")
    second = release(treeship, tree, local, BRANCH, "--version", "2")
    push(treeship, local, srv, BRANCH)

    deltas = ostree("static-delta", "list", "--repo", srv.repo).stdout.split()
    assert deltas == [f"{first}-{second}"]
    sigs = aay(gvariant_dict((srv.repo / "summary.sig").read_bytes())["ostree.gpgsigs"])
    assert len(sigs) == 1
    sig_file = tmp_path / "summary.sig.gpg"
    sig_file.write_bytes(sigs[0])
    check = subprocess.run(["gpg", "--homedir", str(gpg_key.homedir), "--batch", "--verify", str(sig_file),
                            str(srv.repo / "summary")], capture_output=True, text=True, check=False)
    assert check.returncode == 0 and "Good signature" in check.stderr, check.stderr
    assert f"* {BRANCH}" in ostree("summary", "--view", "--repo", srv.repo).stdout
    fsck(srv.repo)
    assert refs(srv.repo) == {BRANCH: second}


# -- 8. end to end: push, serve over HTTP, `ostree pull` with GPG verification --------------


@pytest.fixture
def http_server(tmp_path: Path):
    """``serve(directory)`` → http://127.0.0.1:PORT serving it (python -m http.server)."""
    procs: list[subprocess.Popen[bytes]] = []

    def serve(directory: Path) -> str:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port),
                                 "--directory", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "http.server exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return f"http://127.0.0.1:{port}"
            except OSError:
                assert time.monotonic() < deadline, "http.server did not listen within 30 s"
                time.sleep(0.05)  # polling for readiness

    yield serve
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def test_end_to_end_ostree_pull_verifies_what_was_pushed(treeship, server, tmp_path, gpg_key, other_gpg_key,
                                                         http_server):
    srv = server(f'[summary]\ngpg_sign = ["{gpg_key.fingerprint}"]\ngpg_homedir = "{gpg_key.homedir}"\n')
    local = tmp_path / "local"
    commit = release(treeship, write_tree(tmp_path / "tree"), local, BRANCH,
                     "--gpg-sign", gpg_key.fingerprint, "--gpg-homedir", str(gpg_key.homedir))
    push(treeship, local, srv, BRANCH)
    fsck(srv.repo)
    assert refs(srv.repo) == {BRANCH: commit}
    url = http_server(srv.repo)

    client = tmp_path / "client"
    ostree("init", "--repo", client, "--mode=archive")
    ostree("remote", "add", "--repo", client, f"--gpg-import={export_gpg(gpg_key, tmp_path / 'pub.gpg')}",
           "--set=gpg-verify-summary=true", "origin", url)
    ostree("pull", "--repo", client, "origin", BRANCH)
    fsck(client)
    assert ostree("rev-parse", "--repo", client, f"origin:{BRANCH}").stdout.strip() == commit

    # and verification is really on: trusting another key, the same pull fails
    stranger = tmp_path / "stranger"
    ostree("init", "--repo", stranger, "--mode=archive")
    ostree("remote", "add", "--repo", stranger, f"--gpg-import={export_gpg(other_gpg_key, tmp_path / 'o.gpg')}",
           "origin", url)
    failed = ostree("pull", "--repo", stranger, "origin", BRANCH, check=False)
    assert failed.returncode != 0 and "public key not found" in failed.stderr, failed.stderr


# -- 9. the receiver and hostile input (basics) ----------------------------------------------


def test_receiver_refuses_another_protocol_version(tmp_path):
    repo = tmp_path / "server"
    ostree("init", "--repo", repo, "--mode=archive")
    rc, frames, err = receive(repo, hello(99) + wire.encode_json(wire.UPDATE, {"updates": []}))
    assert rc != 0
    assert frames[-1][0] == wire.ERROR and "protocol version 99" in frames[-1][1]["message"]
    assert "protocol version 99" in err
    assert objects(repo) == {} and refs(repo) == {}


def test_the_receiver_reads_through_a_wide_pipe(tmp_path):
    """`treeship receive` widens the pipe on its stdin (wire.widen_pipe): a push arrives in
    1 MB reads, not Linux's 64 kB ones (docs/performance.md: 15% off a first push)."""
    import fcntl

    proc = subprocess.Popen([*treeship_command(), "receive", "--repo", str(tmp_path / "server"), "--create"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert fcntl.fcntl(proc.stdin.fileno(), fcntl.F_GETPIPE_SZ) < wire.PIPE_SIZE
        proc.stdin.write(hello())
        proc.stdin.flush()
        assert wire.Reader(proc.stdout.fileno(), 60).read().type == wire.HELLO  # it has started serving
        assert fcntl.fcntl(proc.stdin.fileno(), fcntl.F_GETPIPE_SZ) == wire.PIPE_SIZE
    finally:
        proc.stdin.close()
        proc.wait(60)
        proc.stdout.close()


def test_widening_leaves_what_is_no_pipe_alone(tmp_path):
    with open(tmp_path / "f", "wb") as f:
        wire.widen_pipe(f.fileno())  # EBADF from the kernel: nothing to do, nothing raised
    a, b = socket.socketpair()
    with a, b:
        wire.widen_pipe(a.fileno())
        a.sendall(b"x")
        assert b.recv(1) == b"x"


@pytest.mark.parametrize("kind", ["file", "dirtree", "commit"])
def test_receiver_rejects_an_object_that_does_not_match_its_checksum(treeship, tmp_path, kind):
    local = tmp_path / "local"
    commit = release(treeship, write_tree(tmp_path / "tree"), local)
    ext = {"file": "filez", "dirtree": "dirtree", "commit": "commit"}[kind]
    real = next(p for p in (local / "objects").rglob(f"*.{ext}") if p.stat().st_size > 0)
    claimed = (real.parent.name + real.stem)[::-1]  # a well-formed checksum that is not this one's
    repo = tmp_path / "server"
    ostree("init", "--repo", repo, "--mode=archive")
    before = objects(repo)
    objtype = {"file": 2, "dirtree": 3, "commit": 4}[kind]
    stream = b"".join([
        hello(),
        wire.encode_json(wire.UPDATE, {"updates": [{"ref": BRANCH, "old": None, "new": commit}]}),
        wire.encode(wire.OBJECT, bytes([objtype]) + bytes.fromhex(claimed)),
        wire.encode(wire.DATA, real.read_bytes()),
        wire.encode(wire.END),
        wire.encode_json(wire.FINISH, {}),
    ])

    rc, frames, err = receive(repo, stream)

    assert rc != 0
    assert [f for f, _ in frames] == [wire.HELLO, wire.PREFLIGHT, wire.ERROR], frames
    assert "checksum mismatch" in frames[-1][1]["message"] and claimed in frames[-1][1]["message"]
    assert objects(repo) == before
    assert refs(repo) == {}
    no_session_leftovers(repo)
    fsck(repo)
    assert not list((repo / "state").glob("*.commitpartial")), "a rejected commit must leave no partial marker"


def test_receiving_repository_must_be_archive_mode(treeship, tmp_path):
    local = tmp_path / "local"
    release(treeship, write_tree(tmp_path / "tree"), local)
    bare = tmp_path / "bare"
    ostree("init", "--repo", bare, "--mode=bare-user")

    r = push(treeship, local, str(bare), BRANCH, rc=5)  # the receiver's repository: no retry helps

    assert "archive mode" in r.stderr and "bare-user" in r.stderr
    assert refs(bare) == {}
    assert objects(bare) == {}


def test_an_early_ssh_connection_nobody_uses_is_not_left_behind(treeship, server, tmp_path):
    """entry.py starts SSH before the CLI loads; a push that then fails must not leave it running."""
    srv = server()
    local = tmp_path / "local"
    release(treeship, write_tree(tmp_path / "tree"), local)

    r = push(treeship, local, srv, "no/such-branch", rc=5, as_json=False)

    assert r.stderr.startswith("treeship: error: no/such-branch: no such branch") and r.stderr.count("\n") == 1
    # killed and reaped before treeship exits: nothing of it may be running now
    left = subprocess.run(["pgrep", "-af", str(srv.key.path)], capture_output=True, text=True).stdout
    assert not left, left
    ok = push(treeship, local, srv, BRANCH)
    assert ok.json()["ok"] and refs(srv.repo) == {BRANCH: release_commit(local)}


def release_commit(repo: Path) -> str:
    return (repo / "refs" / "heads" / BRANCH).read_text().strip()


def test_an_up_to_date_branch_whose_local_copy_is_incomplete_is_still_up_to_date(treeship, server, tmp_path):
    srv = server()
    local = tmp_path / "local"
    commit = release(treeship, write_tree(tmp_path / "tree"), local)
    push(treeship, local, srv, BRANCH)
    dirtrees = sorted((local / "objects").glob("*/*.dirtree"))
    dirtrees[0].unlink()  # the local copy loses part of its tree; the receiver has all of it

    r = push(treeship, local, srv, BRANCH)

    assert r.json()["refs"][0]["status"] == "uptodate" and refs(srv.repo) == {BRANCH: commit}


FAKE_RECEIVER = r'''
import json, os, sys
sys.path.insert(0, {src!r})
from treeship.transfer import wire
r, w = wire.Reader(0, timeout=20), wire.Writer(1)
r.expect(wire.HELLO)
w.send_json(wire.HELLO, {{"magic": wire.MAGIC, "protocol": wire.PROTOCOL_VERSION, "refs": {{}}, "capabilities": []}})
w.flush()
updates = r.expect(wire.UPDATE).json()["updates"]
query = r.read()  # before any PREFLIGHT: a pusher that waited for one would never get here
if query.type != wire.QUERY:
    sys.exit(3)
w.send_json(wire.PREFLIGHT, {{"refs": [dict(u, status="ok", reason="") for u in updates]}})
w.send_json(wire.MISSING, {{"objects": []}})
w.flush()
r.expect(wire.FINISH)
w.send_json(wire.STATUS, {{"refs": [dict(u, status="ok", reason="") for u in updates]}})
w.flush()
'''


REFUSING_RECEIVER = r"""
import fcntl, os, sys
sys.path.insert(0, {src!r})
from treeship.transfer import wire
fcntl.fcntl(0, 1031, 4096)  # F_SETPIPE_SZ: the smallest pipe; the pusher's QUERY cannot fit in it

def frame(ftype):  # exactly one frame, and nothing of the next
    head = b""
    while len(head) < 5:
        head += os.read(0, 5 - len(head))
    assert head[:1] == ftype, head
    n, payload = int.from_bytes(head[1:], "big"), b""
    while len(payload) < n:
        payload += os.read(0, n - len(payload))
    return wire.Frame(ftype, payload)

w = wire.Writer(1)
frame(wire.HELLO)
w.send_json(wire.HELLO, {{"magic": wire.MAGIC, "protocol": wire.PROTOCOL_VERSION, "refs": {{}}, "capabilities": []}})
w.flush()
updates = frame(wire.UPDATE).json()["updates"]
w.send_json(wire.PREFLIGHT, {{"refs": [dict(u, status="rejected", reason="may not write this branch")
                                       for u in updates]}})
w.flush()
os.close(0)  # it refused everything, and hangs up without reading the QUERY behind the UPDATE
"""


def _push_to_fake(treeship, tmp_path: Path, script: str, files: int = 40):
    """A push of a fresh release to ``script`` (a Python source, ``{src}`` formatted in),
    run in place of ``ssh HOST treeship receive``."""
    local = tmp_path / "local"
    release(treeship, write_tree(tmp_path / "tree", n=files), local)
    fake = tmp_path / "fake_receiver.py"
    fake.write_text(script.format(src=str(Path(__file__).resolve().parents[1] / "src")))
    ssh = tmp_path / "fake-ssh"
    ssh.write_text(f"#!/bin/sh\nexec {sys.executable} {fake}\n")
    ssh.chmod(0o755)
    return treeship("push", "--repo", local, "--ssh-command", str(ssh), "ssh://nowhere/srv/r", BRANCH, "--json",
                    rc=None)


def test_a_receiver_that_refuses_everything_and_hangs_up_is_heard(treeship, tmp_path):
    """The QUERY that rides behind UPDATE may meet a closed pipe: the receiver said no and
    left. The pusher reports the refusal (exit 10), not the broken pipe."""
    r = _push_to_fake(treeship, tmp_path, REFUSING_RECEIVER, files=200)

    assert r.returncode == 10, r.stderr
    assert_rejected(r, BRANCH, "may not write this branch")


def test_the_query_goes_out_with_the_update_not_a_round_trip_later(treeship, tmp_path):
    """One round trip less per push: the pusher asks which objects are missing before PREFLIGHT comes."""
    r = _push_to_fake(treeship, tmp_path, FAKE_RECEIVER)

    assert r.returncode == 0, r.stderr
    assert r.json()["refs"][0]["status"] == "ok"


LYING_RECEIVER = r'''
import json, os, sys
sys.path.insert(0, {src!r})
from treeship.transfer import wire
case = {case!r}
r, w = wire.Reader(0, timeout=20), wire.Writer(1)
r.expect(wire.HELLO)
refs = {{"main": ["x"]}} if case == "hello" else {{}}
w.send_json(wire.HELLO, {{"magic": wire.MAGIC, "protocol": wire.PROTOCOL_VERSION, "refs": refs, "capabilities": []}})
w.flush()
updates = r.expect(wire.UPDATE).json()["updates"]
ok = [dict(u, status="ok", reason="") for u in updates]
if case == "extra":  # a branch the pusher did not ask for, at a commit of its choosing
    ok.append({{"ref": "embargoed/x86_64", "old": None, "new": "ab" * 32, "status": "ok", "reason": ""}})
pre = {{"none": [], "extra": ok, "escape": ok, "weird": [dict(ok[0], status="maybe")]}}.get(case, ok)
w.send_json(wire.PREFLIGHT, {{"refs": pre}})
w.flush()
while (f := r.read()).type != wire.FINISH:
    if f.type == wire.QUERY:
        w.send_json(wire.MISSING, {{"objects": [] if case != "missing" else 7}})
        w.flush()
status = ok if case != "status" else []
if case == "escape":
    status = [dict(ok[0], status="rejected", reason="no\n\x1b[2Jok        fake/ref  forged\u202e")]
w.send_json(wire.STATUS, {{"refs": status, "warnings": ["\x1b]0;owned\x07title"]}})
w.flush()
'''


@pytest.mark.parametrize("case,why", [
    ("none", "PREFLIGHT leaves out"),  # says nothing of the branch: no "success" for a push that did nothing
    ("extra", "names a branch this push did not ask for"),  # would make the pusher send what it was not asked to
    ("weird", "malformed status"),
    ("status", "STATUS leaves out"),
    ("hello", "HELLO lists malformed refs"),
    ("missing", "MISSING without a list"),
])
def test_a_receiver_that_lies_about_the_refs_is_a_protocol_error(treeship, tmp_path, case, why):
    r = _push_to_fake(treeship, tmp_path, LYING_RECEIVER.replace("{case!r}", repr(case)))

    assert r.returncode == 11, (r.returncode, r.stderr)
    assert why in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_a_receivers_words_cannot_drive_the_terminal(treeship, tmp_path):
    """Reasons and warnings come from the server: printed, they are one line each, escapes shown."""
    local = tmp_path / "local"
    release(treeship, write_tree(tmp_path / "tree", n=5), local)
    fake = tmp_path / "fake_receiver.py"
    fake.write_text(LYING_RECEIVER.replace("{case!r}", repr("escape")).format(
        src=str(Path(__file__).resolve().parents[1] / "src")))
    ssh = tmp_path / "fake-ssh"
    ssh.write_text(f"#!/bin/sh\nexec {sys.executable} {fake}\n")
    ssh.chmod(0o755)

    r = treeship("push", "--repo", local, "--ssh-command", str(ssh), "ssh://nowhere/srv/r", BRANCH, rc=10)

    out = r.stdout + r.stderr
    assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out, out
    assert "no\\n\\x1b[2Jok        fake/ref" in r.stdout and not any(
        line.startswith("ok        fake/ref") for line in r.stdout.splitlines()), r.stdout


SILENT_RECEIVER = r'''
import sys, time
sys.path.insert(0, {src!r})
from treeship.transfer import wire
case = {case!r}
r, w = wire.Reader(0, timeout=60), wire.Writer(1)
r.expect(wire.HELLO)
w.send_json(wire.HELLO, {{"magic": wire.MAGIC, "protocol": wire.PROTOCOL_VERSION, "refs": {{}}, "capabilities": []}})
w.flush()
updates = r.expect(wire.UPDATE).json()["updates"]
if case == "stops-reading":  # asks for everything, then reads no more: the pusher's writes fill the pipe
    query = r.expect(wire.QUERY).json()
    w.send_json(wire.PREFLIGHT, {{"refs": [dict(u, status="ok", reason="") for u in updates]}})
    w.send_json(wire.MISSING, {{"objects": query["objects"]}})
    w.flush()
time.sleep(60)  # hung (a stuck disk, a dead link): killed by the pusher's watchdog long before
'''


@pytest.mark.parametrize("case", ["no-answer", "stops-reading"])
def test_a_receiver_that_hangs_is_given_up_on(treeship, tmp_path, case):
    """Nothing moved either way for --timeout seconds: one clear line, exit 11, not a hang."""
    local = tmp_path / "local"
    tree = write_tree(tmp_path / "tree", n=5)
    (tree / "usr" / "big.bin").write_bytes(os.urandom(4 << 20))  # far more than a pipe holds
    release(treeship, tree, local)
    fake = tmp_path / "fake_receiver.py"
    fake.write_text(SILENT_RECEIVER.replace("{case!r}", repr(case)).format(
        src=str(Path(__file__).resolve().parents[1] / "src")))
    ssh = tmp_path / "fake-ssh"
    ssh.write_text(f"#!/bin/sh\nexec {sys.executable} {fake}\n")
    ssh.chmod(0o755)

    r = treeship("push", "--repo", local, "--ssh-command", str(ssh), "ssh://nowhere/srv/r", BRANCH,
                 "--timeout", "2", rc=None)

    assert r.returncode == 11, (r.returncode, r.stderr)
    assert "nothing moved either way for 2 s; gave up" in r.stderr and r.stderr.count("\n") == 1, r.stderr
