"""`treeship push --delta`: a static delta from the receiver's head instead of objects.

Real sshd, real libostree on both ends, judged by the `ostree` CLI: the commit and its
signatures land byte-identical, `ostree fsck` is clean, the delta is as small as the one
`ostree static-delta generate` makes, and a corrupted or lying delta moves no ref and leaves
nothing unverified in the repository.
"""

from __future__ import annotations

import hashlib
import lzma
import random
import shutil
import sys
from pathlib import Path

import pytest
from gi.repository import GLib

from conftest import ostree
from pushkit import (
    BRANCH,
    assert_rejected,
    commitmeta,
    finish,
    fsck,
    hello,
    no_session_leftovers,
    objects,
    push,
    receive,
    refs,
    refs_complete,
    release,
    tree_objects,
    update,
)
from treeship.errors import TransferError
from treeship.transfer import wire

BINARY = 5 << 20  # incompressible, over the receiver's 4 MB spill size: an object push resends it whole

# A stand-in for `ssh` that parses the protocol both ways and tampers with it: ``flip`` flips
# one bit in the first DATA chunk of the first delta part (pusher → receiver); ``old`` drops
# "capabilities" from the receiver's HELLO, as a treeship without --delta support answers.
TAMPER = """\
import json, os, subprocess, sys, threading
mode = sys.argv[1]
child = subprocess.Popen(sys.argv[2:], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

def frames(fd):
    buf = b""
    while True:
        while len(buf) < 5 or len(buf) < 5 + int.from_bytes(buf[1:5], "big"):
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            buf += chunk
        n = int.from_bytes(buf[1:5], "big")
        yield buf[:1], buf[5:5 + n]
        buf = buf[5 + n:]

def frame(t, p):
    return t + len(p).to_bytes(4, "big") + p

def up():
    ends, flipped = None, False
    for t, p in frames(0):
        if mode == "flip" and not flipped:
            if t == b"L":
                ends = 0
            elif ends is not None and t == b"E":
                ends += 1
            elif ends == 1 and t == b"D":
                p = bytearray(p)
                p[len(p) // 2] ^= 0x40
                p, flipped = bytes(p), True
        child.stdin.write(frame(t, p))
        child.stdin.flush()
    child.stdin.close()

threading.Thread(target=up, daemon=True).start()
out = sys.stdout.buffer
for t, p in frames(child.stdout.fileno()):
    if mode == "old" and t == b"H":
        msg = json.loads(p)
        msg.pop("capabilities", None)
        p = json.dumps(msg).encode()
    out.write(frame(t, p))
    out.flush()
sys.exit(child.wait())
"""


def make_tree(root: Path) -> Path:
    rng = random.Random(4)
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "share" / "doc").mkdir(parents=True)
    (root / "usr" / "bin" / "tool").write_bytes(rng.randbytes(BINARY))
    (root / "usr" / "bin" / "tool").chmod(0o755)
    for i in range(20):
        (root / "usr" / "share" / "doc" / f"page{i:02}.txt").write_text(f"page {i}\n" * (50 + i))
    (root / "etc").mkdir()
    (root / "etc" / "os-release").write_text("NAME=Example\nVERSION=1\n")
    return root


def change_tree(root: Path, seed: int = 2) -> None:
    """Release 2: a few KB patched inside the binary, a page edited, one added, one removed."""
    rng = random.Random(seed)
    binary = root / "usr" / "bin" / "tool"
    data = bytearray(binary.read_bytes())
    for _ in range(3):
        at = rng.randrange(len(data) - 4096)
        data[at:at + 4096] = rng.randbytes(4096)
    binary.write_bytes(bytes(data))
    (root / "usr" / "share" / "doc" / "page03.txt").write_text("rewritten\n" * 40)
    (root / "usr" / "share" / "doc" / "page19.txt").unlink()
    (root / "usr" / "share" / "doc" / "new.txt").write_text("new page\n" * 30)
    (root / "etc" / "os-release").write_text(f"NAME=Example\nVERSION={seed}\n")


def push_delta(treeship, local: Path, srv, *branches: str, rc: int | None = 0, ssh: str | None = None):
    """`treeship push --delta --json` to a Server over SSH (``ssh``: a stand-in ssh command) or a path."""
    if isinstance(srv, (str, Path)):
        remote = [str(srv)]
    else:
        remote = ["--ssh-command", ssh or srv.ssh, srv.url]
    return treeship("push", "--repo", local, "--delta", *remote, *branches, "--json", rc=rc)


def ostree_delta_size(local: Path, tmp: Path, old: str, new: str) -> int:
    """What `ostree static-delta generate` makes for old → new (in a copy: it writes into the repo)."""
    return sum(len(data) for data in _delta_files(local, tmp, old, new).values())


@pytest.fixture
def releases(treeship, tmp_path, gpg_key, ed25519_key):
    """A local repo holding two signed releases of BRANCH (1, then 2 on top): (repo, first, second)."""
    local, tree = tmp_path / "local", make_tree(tmp_path / "tree")
    sign = ["--gpg-sign", gpg_key.fingerprint, "--gpg-homedir", str(gpg_key.homedir),
            "--sign-ed25519", str(ed25519_key.secret)]
    first = release(treeship, tree, local, BRANCH, "--version", "1", *sign)
    change_tree(tree)
    second = release(treeship, tree, local, BRANCH, "--version", "2", *sign)
    ostree("reset", "--repo", local, BRANCH, first)
    return local, first, second


def _at(local: Path, commit: str) -> None:
    ostree("reset", "--repo", local, BRANCH, commit)


# -- 1. it lands, byte-identical, in far fewer bytes -----------------------------------------


def test_delta_push_lands_byte_identical_in_a_fraction_of_the_bytes(treeship, server, tmp_path, releases,
                                                                     gpg_key):
    local, first, second = releases
    srv = server()
    push(treeship, local, srv, BRANCH)  # release 1, as objects
    control = tmp_path / "control"  # the same incremental push, as objects, for comparison
    shutil.copytree(srv.repo, control, symlinks=True)
    _at(local, second)
    by_objects = push(treeship, local, str(control), BRANCH).json()

    out = push_delta(treeship, local, srv, BRANCH).json()

    assert out["ok"] and out["refs"][0]["status"] == "ok" and out["messages"] == []
    [sent] = out["deltas"]
    assert (sent["from"], sent["to"]) == (first, second)
    assert out["objects_sent"] == 1  # the .commitmeta: signatures travel as an object
    fsck(srv.repo)
    refs_complete(srv.repo)
    assert refs(srv.repo) == {BRANCH: second}
    assert tree_objects(srv.repo, second) == tree_objects(local, second)
    assert (srv.repo / "objects" / second[:2] / f"{second[2:]}.commit").read_bytes() == \
        (local / "objects" / second[:2] / f"{second[2:]}.commit").read_bytes()
    assert commitmeta(srv.repo, second) == commitmeta(local, second)
    assert "Good signature" in ostree("show", "--repo", srv.repo, "--gpg-homedir", gpg_key.homedir, BRANCH).stdout
    assert ostree("rev-parse", "--repo", srv.repo, f"{BRANCH}^").stdout.strip() == first
    no_session_leftovers(srv.repo)
    assert not any((local / "deltas").glob("*"))  # the pusher's repo is not written to

    # the bytes: the size of libostree's own delta, a fraction of the object push
    reference = ostree_delta_size(local, tmp_path, first, second)
    assert sent["bytes"] <= 1.2 * reference
    assert out["wire_bytes"] <= 1.2 * reference + 16_000  # + HELLO, refs, QUERY, the .commitmeta
    assert out["wire_bytes"] * 10 < by_objects["wire_bytes"]
    assert by_objects["wire_bytes"] > BINARY  # the object push resent the binary whole

    again = push_delta(treeship, local, srv, BRANCH).json()  # nothing to do: nothing generated
    assert [r["status"] for r in again["refs"]] == ["uptodate"] and again["deltas"] == []


def test_delta_push_of_several_branches_to_a_local_path(treeship, tmp_path):
    local, tree, dest = tmp_path / "local", make_tree(tmp_path / "tree"), tmp_path / "dest"
    branches = (BRANCH, "main/aarch64")
    first = {b: release(treeship, tree, local, b, "--version", "1") for b in branches}
    push(treeship, local, str(dest), *branches)
    change_tree(tree)
    second = {b: release(treeship, tree, local, b, "--version", "2") for b in branches}

    out = push_delta(treeship, local, str(dest), *branches).json()

    assert sorted((d["from"], d["to"]) for d in out["deltas"]) == sorted((first[b], second[b]) for b in branches)
    assert out["objects_sent"] == 0  # unsigned: no .commitmeta to send
    fsck(dest)
    refs_complete(dest)
    assert refs(dest) == second
    no_session_leftovers(dest)


# -- 2. when a delta cannot be made: objects, and a line that says why ------------------------


def test_no_head_on_the_receiver_or_not_in_the_pusher_repo_falls_back_to_objects(treeship, tmp_path, releases):
    local, first, second = releases
    dest = tmp_path / "dest"

    out = push_delta(treeship, local, str(dest), BRANCH).json()  # the receiver has no such branch
    assert out["ok"] and out["deltas"] == [] and out["objects_sent"] > 20
    assert any("has no such branch yet; sent objects instead" in m for m in out["messages"]), out["messages"]
    assert refs(dest) == {BRANCH: first}

    only_second = tmp_path / "only-second"  # a pusher that has release 2 but not its parent
    ostree("init", "--repo", only_second, "--mode=archive")
    _at(local, second)
    ostree("pull-local", "--repo", only_second, local, BRANCH)
    assert not (only_second / "objects" / first[:2] / f"{first[2:]}.commit").exists()
    human = treeship("push", "--repo", only_second, "--delta", str(dest), BRANCH)
    assert f"the receiver's head {first[:12]} is not in the local repository" in human.stderr
    assert "sent objects instead" in human.stderr
    fsck(dest)
    assert refs(dest) == {BRANCH: second}
    assert commitmeta(dest, second) == commitmeta(local, second)


def test_a_receiver_without_delta_support_gets_objects(treeship, server, tmp_path, releases):
    local, first, second = releases
    srv = server()
    push(treeship, local, srv, BRANCH)
    _at(local, second)
    tamper = tmp_path / "tamper.py"
    tamper.write_text(TAMPER)

    out = push_delta(treeship, local, srv, BRANCH, ssh=f"{sys.executable} {tamper} old {srv.ssh}").json()

    assert out["deltas"] == [] and out["objects_sent"] > 3
    assert out["messages"] == ["--delta: the receiver cannot apply static deltas (an older treeship); "
                               "sent objects instead"]
    fsck(srv.repo)
    assert refs(srv.repo) == {BRANCH: second}


# -- 3. a corrupted or lying delta moves nothing, shows nothing --------------------------------


def test_a_bit_flipped_in_transit_is_caught_and_nothing_moves(treeship, server, tmp_path, releases):
    local, first, second = releases
    srv = server()
    push(treeship, local, srv, BRANCH)
    before = objects(srv.repo)
    _at(local, second)
    tamper = tmp_path / "tamper.py"
    tamper.write_text(TAMPER)

    r = push_delta(treeship, local, srv, BRANCH, rc=11, ssh=f"{sys.executable} {tamper} flip {srv.ssh}")

    assert "part 0 is corrupt (checksum mismatch)" in r.stderr, r.stderr
    assert refs(srv.repo) == {BRANCH: first}
    assert objects(srv.repo) == before  # nothing of it became visible
    fsck(srv.repo)
    no_session_leftovers(srv.repo)
    assert push_delta(treeship, local, srv, BRANCH).json()["ok"]  # and a clean retry works
    fsck(srv.repo)
    assert refs(srv.repo) == {BRANCH: second}


def _delta_files(local: Path, tmp: Path, old: str, new: str) -> dict[str, bytes]:
    """`ostree static-delta generate --filename`: the superblock there, its parts beside it."""
    out = tmp / f"ostree-delta-{old[:8]}-{new[:8]}"
    out.mkdir(exist_ok=True)
    ostree("static-delta", "generate", "--repo", local, f"--from={old}", f"--to={new}",
           f"--filename={out / 'superblock'}")
    return {p.name: p.read_bytes() for p in out.iterdir()}


SUPERBLOCK = "(a{sv}tayay(a{sv}aya(say)sstayay)aya(uayttay)a(yaytt))"


def _with_part_checksum(superblock: bytes, n: int, checksum: bytes) -> bytes:
    """The superblock with part ``n``'s recorded sha256 replaced: a delta consistent with itself."""
    v = GLib.Variant.new_from_bytes(GLib.VariantType.new(SUPERBLOCK), GLib.Bytes.new(superblock), False)
    children = [v.get_child_value(i) for i in range(v.n_children())]
    headers = children[6]
    new_headers = []
    for i in range(headers.n_children()):
        h = headers.get_child_value(i)
        fields = [h.get_child_value(j) for j in range(h.n_children())]
        if i == n:
            fields[1] = GLib.Variant("ay", checksum)
        new_headers.append(GLib.Variant.new_tuple(*fields))
    children[6] = GLib.Variant.new_array(GLib.VariantType.new("(uayttay)"), new_headers)
    return bytes(GLib.Variant.new_tuple(*children).get_data_as_bytes().get_data())


def _delta_stream(old: str, new: str, files: dict[str, bytes]) -> bytes:
    names = ["superblock"] + [str(i) for i in range(len(files) - 1)]
    out = [wire.encode_json(wire.DELTA, {"from": old, "to": new, "files": [[n, len(files[n])] for n in names]})]
    for n in names:
        data = files[n]
        out += [wire.encode(wire.DATA, data[i:i + wire.CHUNK]) for i in range(0, len(data), wire.CHUNK)]
        out.append(wire.encode(wire.END))
    return b"".join(out)


def test_a_self_consistent_delta_that_writes_a_wrong_object_is_rejected(tmp_path, releases):
    """Part bytes changed and the superblock's part checksum updated to match: only libostree's
    check of each object it writes can catch it — and it does, inside the child process."""
    local, first, second = releases
    dest = tmp_path / "dest"
    ostree("init", "--repo", dest, "--mode=archive")
    ostree("pull-local", "--repo", dest, local, first)
    ostree("refs", "--repo", dest, f"--create={BRANCH}", first)
    before = objects(dest)
    files = _delta_files(local, tmp_path, first, second)
    raw = lzma.decompress(files["0"][1:])
    # flip a byte in the middle of the payload (object contents), not in the operations
    payload_at = len(raw) // 3
    forged = bytearray(raw)
    forged[payload_at] ^= 0x01
    part = b"x" + lzma.compress(bytes(forged), format=lzma.FORMAT_XZ)
    files["0"] = part
    files["superblock"] = _with_part_checksum(files["superblock"], 0, hashlib.sha256(part).digest())

    rc, frames, err = receive(dest, hello() + update((BRANCH, first, second)) + _delta_stream(first, second, files)
                              + finish())

    assert rc == 11, err
    message = frames[-1][1]["message"]
    assert frames[-1][0] == wire.ERROR and "rejected" in message and "Corrupted file object" in message, message
    assert refs(dest) == {BRANCH: first}
    assert objects(dest) == before
    fsck(dest)
    no_session_leftovers(dest)


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        value |= (data[i] & 0x7F) << shift
        shift += 7
        i += 1
        if not data[i - 1] & 0x80:
            return value, i


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _shorten_first_bspatch(part: bytes, objects: bytes) -> bytes:
    """The part's operations with the first bspatch told its patch is 10 bytes long (too short to hold one)."""
    v = GLib.Variant.new_from_bytes(GLib.VariantType.new("(a(uuu)aa(ayay)ayay)"), GLib.Bytes.new(part), False)
    ops = bytes(v.get_child_value(3).get_data_as_bytes().get_data())
    operands = {ord("o"): 3, ord("w"): 2, ord("r"): 1, ord("R"): 0, ord("c"): 0, ord("B"): 2}
    out, i, index, done = bytearray(), 0, 0, False
    while i < len(ops):
        op = ops[i]
        out.append(op)
        i += 1
        n = (2 if objects[index * 33] in (2, 3) else 4) if op == ord("S") else operands[op]
        index += op in (ord("S"), ord("c"))
        values = []
        for _ in range(n):
            value, i = _varint(ops, i)
            values.append(value)
        if op == ord("B") and not done:
            values[1], done = 10, True
        out += b"".join(_uvarint(x) for x in values)
    assert done, "this delta has no bspatch operation"
    forged = GLib.Variant.new_tuple(v.get_child_value(0), v.get_child_value(1), v.get_child_value(2),
                                    GLib.Variant("ay", bytes(out)))
    return bytes(forged.get_data_as_bytes().get_data())


def test_a_delta_that_makes_libostree_abort_is_a_clean_rejection(tmp_path, releases):
    """libostree 2022.7 asserts on some part contents (here bspatch_read: a patch shorter than it
    reads) and aborts the process: that happens in the receiver's child process, not the receiver."""
    local, first, second = releases
    dest = tmp_path / "dest"
    ostree("init", "--repo", dest, "--mode=archive")
    ostree("pull-local", "--repo", dest, local, first)
    ostree("refs", "--repo", dest, f"--create={BRANCH}", first)
    before = objects(dest)
    files = _delta_files(local, tmp_path, first, second)
    sb = GLib.Variant.new_from_bytes(GLib.VariantType.new(SUPERBLOCK), GLib.Bytes.new(files["superblock"]), False)
    listed = bytes(sb.get_child_value(6).get_child_value(0).get_child_value(4).get_data_as_bytes().get_data())
    part = b"x" + lzma.compress(_shorten_first_bspatch(lzma.decompress(files["0"][1:]), listed))
    files["0"] = part
    files["superblock"] = _with_part_checksum(files["superblock"], 0, hashlib.sha256(part).digest())

    rc, frames, err = receive(dest, hello() + update((BRANCH, first, second)) + _delta_stream(first, second, files)
                              + finish())

    assert rc == 11, err
    message = frames[-1][1]["message"]
    assert frames[-1][0] == wire.ERROR and "libostree died (SIGABRT" in message, message
    assert refs(dest) == {BRANCH: first}
    assert objects(dest) == before
    fsck(dest)
    no_session_leftovers(dest)


@pytest.mark.parametrize(("lie", "why"), [("commit", "the superblock is not the delta announced"),
                                          ("target", "which this push does not update"),
                                          ("parts", "the superblock lists other parts than were sent"),
                                          ("truncated", "part 0 is corrupt (checksum mismatch)")])
def test_a_delta_that_is_not_what_it_says_is_refused(tmp_path, releases, lie, why):
    local, first, second = releases
    dest = tmp_path / "dest"
    ostree("init", "--repo", dest, "--mode=archive")
    ostree("pull-local", "--repo", dest, local, first)
    ostree("refs", "--repo", dest, f"--create={BRANCH}", first)
    before = objects(dest)
    files = _delta_files(local, tmp_path, first, second)
    if lie == "commit":  # announced (and pushed) as a delta to another commit than the one it holds
        other = "ab" * 32
        stream = update((BRANCH, first, other)) + _delta_stream(first, other, files)
    elif lie == "target":  # a delta to a commit no ref of this push moves to
        stream = update(("other/x86_64", None, first)) + _delta_stream(first, second, files)
    elif lie == "parts":  # the superblock names a part that is not sent
        stream = update((BRANCH, first, second)) + _delta_stream(first, second, {"superblock": files["superblock"]})
    else:  # a part shorter than the superblock's checksum of it
        files["0"] = files["0"][:-100]
        stream = update((BRANCH, first, second)) + _delta_stream(first, second, files)

    rc, frames, err = receive(dest, hello() + stream + finish())

    assert rc == 11, err
    assert frames[-1][0] == wire.ERROR and why in frames[-1][1]["message"], frames[-1]
    assert refs(dest) == {BRANCH: first}
    assert objects(dest) == before
    fsck(dest)
    no_session_leftovers(dest)


# -- 4. the receiver's policy applies as to any push -------------------------------------------


def test_policy_still_decides(treeship, server, tmp_path, releases, ed25519_key):
    local, first, second = releases
    srv = server('[keys.alice]\nbranches = ["main/*"]\n'
                 f'[[signatures]]\nbranches = ["main/*"]\ned25519_keys = ["{ed25519_key.public_b64}"]\n')
    push(treeship, local, srv, BRANCH)

    # a branch this key may not write: refused before anything is generated or sent
    ostree("refs", "--repo", local, "--create=other/x86_64", second)
    r = push_delta(treeship, local, srv, "other/x86_64", rc=10)
    assert_rejected(r, "other/x86_64", "may not write")
    assert r.json()["deltas"] == [] and r.json()["objects_sent"] == 0

    # an unsigned commit where signatures are required: the delta arrives, the ref stays
    unsigned_tree = make_tree(tmp_path / "unsigned")
    change_tree(unsigned_tree, seed=3)
    _at(local, first)
    unsigned = release(treeship, unsigned_tree, local, BRANCH, "--version", "2-unsigned")
    r = push_delta(treeship, local, srv, BRANCH, rc=10)
    assert r.json()["deltas"][0]["to"] == unsigned
    assert_rejected(r, BRANCH, "not signed by a key the policy trusts")
    assert refs(srv.repo) == {BRANCH: first}
    fsck(srv.repo)
    no_session_leftovers(srv.repo)


def test_a_delta_to_a_commit_that_is_not_a_descendant_is_still_a_non_fast_forward(treeship, server, tmp_path,
                                                                                    releases):
    local, first, second = releases
    srv = server()
    push(treeship, local, srv, BRANCH)
    other_tree = make_tree(tmp_path / "other")
    change_tree(other_tree, seed=5)
    rootless = ostree("commit", "--repo", local, "--branch", BRANCH, "--parent=none", f"--tree=dir={other_tree}",
                      "--canonical-permissions", "-s", "unrelated").stdout.strip()

    r = push_delta(treeship, local, srv, BRANCH, rc=10)

    assert r.json()["deltas"] and r.json()["deltas"][0]["to"] == rootless
    assert_rejected(r, BRANCH, "non-fast-forward")
    assert refs(srv.repo) == {BRANCH: first}
    fsck(srv.repo)


def test_the_policy_limits_apply_to_what_a_delta_would_write(treeship, server, tmp_path, releases):
    """A few kB of delta can declare gigabytes of objects: its declared sizes are checked first."""
    local, first, second = releases
    srv = server('[receive]\nmax_object_size = "1M"\n')
    push(treeship, local, str(srv.repo), BRANCH)  # release 1 through a local path: no limit there
    before = objects(srv.repo)
    _at(local, second)

    r = push_delta(treeship, local, srv, BRANCH, rc=11)

    assert f"static delta: an object of {BINARY} bytes exceeds the limit of {1 << 20}" in r.stderr, r.stderr
    assert refs(srv.repo) == {BRANCH: first}
    assert objects(srv.repo) == before
    fsck(srv.repo)
    no_session_leftovers(srv.repo)


def test_large_new_files_the_delta_leaves_out_travel_as_objects(treeship, tmp_path, releases):
    """libostree leaves large new files out of a delta ("fallbacks", over 4 MB with nothing to diff
    against); --delta sends those as ordinary objects, verified as any pushed object."""
    local, first, second = releases
    dest = tmp_path / "dest"
    _at(local, second)
    push(treeship, local, str(dest), BRANCH)
    tree = tmp_path / "tree"  # release 2's tree (the fixture's), plus a new 6 MB file
    (tree / "usr" / "lib").mkdir()
    (tree / "usr" / "lib" / "big.so").write_bytes(random.Random(6).randbytes(6 << 20))
    third = release(treeship, tree, local, BRANCH, "--version", "3")

    out = push_delta(treeship, local, str(dest), BRANCH).json()

    [sent] = out["deltas"]
    assert sent["from"] == second and sent["fallback_objects"] == 1
    assert out["objects_sent"] == 1 and out["bytes_sent"] > 6 << 20  # the big file, as an object
    fsck(dest)
    refs_complete(dest)
    assert refs(dest) == {BRANCH: third}
    assert ostree("rev-parse", "--repo", dest, f"{BRANCH}^").stdout.strip() == second
    no_session_leftovers(dest)


def test_a_delta_across_several_releases_is_a_fast_forward(treeship, tmp_path, releases):
    local, first, second = releases
    dest = tmp_path / "dest"
    push(treeship, local, str(dest), BRANCH)
    _at(local, second)
    tree = tmp_path / "tree"
    (tree / "etc" / "os-release").write_text("NAME=Example\nVERSION=3\n")
    third = release(treeship, tree, local, BRANCH, "--version", "3")

    out = push_delta(treeship, local, str(dest), BRANCH).json()

    assert out["deltas"][0]["from"] == first and out["objects_sent"] == 1  # release 2's commit object
    assert refs(dest) == {BRANCH: third}
    assert ostree("rev-parse", "--repo", dest, f"{BRANCH}^^").stdout.strip() == first
    fsck(dest)


# -- 5. what applying a delta costs the receiver is counted before it is applied -----------------


def _part(ops: bytes, payload: bytes) -> object:
    from treeship.repo import DeltaPart

    return DeltaPart(1, 1, len(payload), ops, GLib.Bytes.new(payload))


def test_only_the_sources_a_part_reads_count():
    """Applying a part copies every object it reads, whole, into a scratch repository first, so
    each is counted against the push's limit: a source named but never read is not one, and
    naming thousands costs a pusher nothing but is not taken as reading them."""
    from treeship.transfer.delta import scan_part

    unused, read_by_write, read_by_bspatch = bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32
    payload = unused + read_by_write + read_by_bspatch + b"P" * 16
    new = [("aa" * 32, 1), ("bb" * 32, 1)]
    ops = (b"r" + _uvarint(0) + b"r" + _uvarint(32)  # two sources named, the second one read
           + b"o" + _uvarint(0) + _uvarint(0) + _uvarint(10) + b"w" + _uvarint(10) + _uvarint(0) + b"c" + b"R"
           + b"r" + _uvarint(64) + b"o" + _uvarint(0) + _uvarint(0) + _uvarint(7)
           + b"B" + _uvarint(96) + _uvarint(16) + b"c" + b"R")
    scan = scan_part(_part(ops, payload), new, 1 << 20)
    assert scan.sources == {read_by_write.hex(), read_by_bspatch.hex()}
    assert scan.output == 17
    named_only = b"".join(b"r" + _uvarint(0) for _ in range(1000)) + b"o" + _uvarint(0) + _uvarint(0) + \
        _uvarint(1) + b"R" + b"w" + _uvarint(1) + _uvarint(96) + b"c"
    assert scan_part(_part(named_only, payload), new[:1], 1 << 20).sources == set()


def test_a_source_counts_its_uncompressed_size(tmp_path):
    """What applying a delta copies for each object it reads: its uncompressed size, as
    `ostree ls` reports it (0 for a symlink, whose content is in its header)."""
    from treeship.repo import Repo

    tree = tmp_path / "tree"
    (tree / "lib").mkdir(parents=True)
    (tree / "lib" / "libx.so.1").write_bytes(random.Random(1).randbytes(300_000))
    (tree / "lib" / "libx.so").symlink_to("libx.so.1")
    local = tmp_path / "local"
    ostree("init", "--repo", local, "--mode=archive")
    commit = ostree("commit", "--repo", local, "--branch", BRANCH, "-s", "s", tree).stdout.strip()
    listing = [line.split() for line in ostree("ls", "--repo", local, "-R", "-C", commit, "/").stdout.splitlines()]
    entries = [f for f in listing if f[0][0] in "-l"]
    assert sorted(f[0][0] for f in entries) == ["-", "l"]
    repo = Repo.open(local)
    for fields in entries:
        assert repo.content_size(fields[4]) == (300_000 if fields[0][0] == "-" else 0) == int(fields[3])


def test_a_delta_may_not_splice_metadata_past_libostrees_limit():
    from treeship.layout import MAX_METADATA
    from treeship.transfer.delta import scan_part

    ops = b"S" + _uvarint(MAX_METADATA + 1) + _uvarint(0)
    with pytest.raises(TransferError, match=f"a metadata object of {MAX_METADATA + 1} bytes exceeds the limit"):
        scan_part(_part(ops, b"x"), [("aa" * 32, 2)], 1 << 30)


def test_a_second_delta_to_the_same_commit_is_refused(tmp_path, releases):
    """Each delta costs what applying it writes aside, counted once: sending the same one again
    (its objects then skipped as present) would make the receiver copy its sources again."""
    local, first, second = releases
    dest = tmp_path / "dest"
    ostree("init", "--repo", dest, "--mode=archive")
    ostree("pull-local", "--repo", dest, local, first)
    ostree("refs", "--repo", dest, f"--create={BRANCH}", first)
    files = _delta_files(local, tmp_path, first, second)
    delta = _delta_stream(first, second, files)

    rc, frames, err = receive(dest, hello() + update((BRANCH, first, second)) + delta + delta + finish())

    assert rc == 11, err
    assert frames[-1][0] == wire.ERROR and "a second delta to" in frames[-1][1]["message"], frames[-1]
    assert refs(dest) == {BRANCH: first}
    fsck(dest)
    no_session_leftovers(dest)
