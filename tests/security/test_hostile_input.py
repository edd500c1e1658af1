"""`treeship receive` driven directly with crafted streams: no pusher, an attacker's bytes.

Every case runs the real receiver (``treeship receive --repo R``) in a fresh directory tree
with its own HOME, TMPDIR and working directory, and then checks what must hold whatever
the stream held:

- the receiver fails with one clear line (``treeship: error: …``, no traceback) and tells
  the peer (an ERROR frame), or refuses the ref with its reason (PREFLIGHT / STATUS);
- nothing was written outside the repository (the rest of the tree is byte-for-byte the
  same, HOME and TMPDIR are empty);
- no ref moved, ``ostree fsck`` is clean, no session directory is left.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from gi.repository import GLib

from pushkit import (
    fsck,
    hello,
    no_session_leftovers,
    object_frames,
    object_path,
    ostree,
    parse_frames,
    partial_commits,
    refs,
    tree_objects,
    treeship_command,
    update,
    write_tree,
)
from treeship.transfer import wire

T = wire.OBJECT_TYPES  # file 1, dirtree 2, dirmeta 3, commit 4, commitmeta 6
MAIN = "main/x86_64"


# -- running the receiver on a stream, and judging what it did ----------------------------------


@dataclass
class Outcome:
    rc: int
    frames: list[tuple[bytes, dict]]
    stderr: str
    repo: Path

    @property
    def error(self) -> str:
        """The ERROR frame's message ("" if none)."""
        return next((f["message"] for t, f in self.frames if t == wire.ERROR), "")

    def ref_status(self, frame_type: bytes = wire.STATUS) -> dict[str, dict]:
        return {r["ref"]: r for t, f in self.frames if t == frame_type for r in f["refs"]}


def _snapshot(root: Path, skip: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        if d == skip or skip in d.parents:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = d / name
            rel = str(p.relative_to(root))
            out[rel] = os.readlink(p) if p.is_symlink() else (p.read_bytes() if p.is_file() else "dir")
    return out


@pytest.fixture
def hostile(tmp_path: Path):
    """``hostile(stream, *args, setup=None)`` → Outcome; asserts the invariants of every case."""
    counter = [0]

    def run(stream: bytes, *args: str, timeout: float = 30, moved: dict[str, str] | None = None,
            repo: Path | None = None) -> Outcome:
        counter[0] += 1
        root = tmp_path / f"root{counter[0]}"
        for d in ("home", "tmpdir", "cwd"):
            (root / d).mkdir(parents=True)
        if repo is None:
            repo = root / "srv"
            ostree("init", "--repo", repo, "--mode=archive")
        before_refs = refs(repo)
        before = _snapshot(root, repo)
        p = subprocess.run([*treeship_command(), "receive", "--repo", str(repo), "--timeout", str(timeout), *args],
                           input=stream, capture_output=True, timeout=120, check=False, cwd=root / "cwd",
                           env={**os.environ, "HOME": str(root / "home"), "TMPDIR": str(root / "tmpdir")})
        out = Outcome(p.returncode, parse_frames(p.stdout), p.stderr.decode(errors="replace"), repo)
        assert "Traceback" not in out.stderr, out.stderr
        if out.rc != 0:
            assert out.stderr.startswith("treeship: error: ") and out.stderr.count("\n") == 1, out.stderr
            assert out.frames and out.frames[-1][0] == wire.ERROR, out.frames  # the peer is told why
        assert _snapshot(root, repo) == before, "the receiver wrote outside its repository"
        assert [str(p) for d in ("home", "tmpdir", "cwd") for p in (root / d).iterdir()] == []
        assert refs(repo) == {**before_refs, **(moved or {})}
        fsck(repo)
        no_session_leftovers(repo)
        return out

    return run


def stream(*parts: bytes, version: int = wire.PROTOCOL_VERSION) -> bytes:
    return hello(version) + b"".join(parts)


def objects_of(local: Path, commit: str, meta: bool = True) -> bytes:
    """A commit's objects as a pusher sends them: content, dirmeta, dirtree, commit, signatures."""
    names = sorted(tree_objects(local, commit), key=lambda n: ({"file": 0, "dirmeta": 1, "dirtree": 2}
                                                               [n.split(".")[1]], n))
    names.append(f"{commit}.commit")
    if meta and object_path(local, f"{commit}.commitmeta").exists():
        names.append(f"{commit}.commitmeta")
    return b"".join(object_frames(T[n.split(".")[1]], n.split(".")[0], object_path(local, n).read_bytes())
                    for n in names)


def finish() -> bytes:
    return wire.encode_json(wire.FINISH, {})


# -- crafted objects ------------------------------------------------------------------------------


def _be64(v: int) -> int:
    return int.from_bytes(v.to_bytes(8, "big"), "little")


def _be32(v: int) -> int:
    return int.from_bytes(v.to_bytes(4, "big"), "little")


def variant_bytes(v: GLib.Variant) -> bytes:
    return bytes(v.get_data_as_bytes().get_data() or b"")


def craft_commit(tree: str, meta: str, parent: str | None = None, metadata: dict | None = None) -> tuple[str, bytes]:
    v = GLib.Variant("(a{sv}aya(say)sstayay)", (metadata or {}, bytes.fromhex(parent) if parent else b"", [],
                                                "crafted", "", _be64(1_700_000_000), bytes.fromhex(tree),
                                                bytes.fromhex(meta)))
    data = variant_bytes(v)
    return hashlib.sha256(data).hexdigest(), data


def craft_dirtree(files: list[tuple[str, str]], dirs: list[tuple[str, str, str]] = ()) -> tuple[str, bytes]:
    v = GLib.Variant("(a(say)a(sayay))", ([(n, bytes.fromhex(c)) for n, c in sorted(files)],
                                          [(n, bytes.fromhex(t), bytes.fromhex(m)) for n, t, m in sorted(dirs)]))
    data = variant_bytes(v)
    return hashlib.sha256(data).hexdigest(), data


def archive_object(content_len_declared: int, payload: bytes, mode: int = 0o100644) -> bytes:
    """A content object in archive form (.filez) with the header saying what we like."""
    header = variant_bytes(GLib.Variant("(tuuuusa(ayay))", (_be64(content_len_declared), 0, 0, _be32(mode), 0, "",
                                                            [])))
    return struct.pack(">I", len(header)) + bytes(4) + header + payload


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


# -- releases to replay ---------------------------------------------------------------------------


@dataclass
class Releases:
    local: Path
    v1: str  # main/x86_64, signed (ed25519 + GPG)
    v2: str  # its child, signed
    unsigned: str  # main/x86_64 in another repo, unsigned
    unsigned_gpg: str  # gpg/x86_64 in that repo, unsigned
    other_bound: str  # bound to other/x86_64
    untrusted: str  # signed by a key the policy does not trust
    revoked: str  # signed by a GPG key since revoked
    local_unsigned: Path
    local_other: Path
    local_untrusted: Path
    local_revoked: Path
    policy: Path


def _gpg_home(path: Path, name: str) -> str:
    path.mkdir(mode=0o700, parents=True)
    (path / "pubring.gpg").touch()
    subprocess.run(["gpg", "--homedir", str(path), "--batch", "--passphrase", "", "--quick-gen-key",
                    f"{name} <{name.lower().replace(' ', '.')}@example.org>", "ed25519", "sign", "never"],
                   check=True, capture_output=True)
    out = subprocess.run(["gpg", "--homedir", str(path), "--batch", "--with-colons", "--list-keys"], check=True,
                         capture_output=True, text=True).stdout
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


def _run_treeship(*args: str | os.PathLike[str]) -> str:
    p = subprocess.run([*treeship_command(), *map(str, args)], capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.fixture(scope="module")
def rel(tmp_path_factory: pytest.TempPathFactory, gpg_key, ed25519_key, other_ed25519_key) -> Releases:
    import json

    root = tmp_path_factory.mktemp("releases")

    def make(repo: Path, tag: str, branch: str = MAIN, *sign: str) -> str:
        tree = write_tree(root / f"tree-{tag}", n=12, tag=tag)
        return json.loads(_run_treeship("release", tree, "--repo", repo, "--branch", branch, *sign, "--json"))["commit"]

    signed = ["--sign-ed25519", str(ed25519_key.secret), "--gpg-sign", gpg_key.fingerprint,
              "--gpg-homedir", str(gpg_key.homedir)]
    local = root / "local"
    v1 = make(local, "v1", MAIN, *signed)
    v2 = make(local, "v2", MAIN, *signed)
    unsigned = make(root / "unsigned", "u")
    unsigned_gpg = make(root / "unsigned", "ug", "gpg/x86_64")
    other = make(root / "other", "o", "other/x86_64", *signed)
    untrusted = make(root / "untrusted", "t", MAIN, "--sign-ed25519", str(other_ed25519_key.secret))
    home = root / "revoked-home"
    fpr = _gpg_home(home, "Revoked Signer")
    revoked = make(root / "revoked", "r", "gpg/x86_64", "--gpg-sign", fpr, "--gpg-homedir", str(home))
    cert = (home / "openpgp-revocs.d" / f"{fpr}.rev").read_text().replace(":-----BEGIN", "-----BEGIN")
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--import"], input=cert.encode(), check=True,
                   capture_output=True)
    keyring = root / "trusted.gpg"
    keyring.write_bytes(subprocess.run(["gpg", "--homedir", str(gpg_key.homedir), "--batch", "--export",
                                        gpg_key.fingerprint], check=True, capture_output=True).stdout +
                        subprocess.run(["gpg", "--homedir", str(home), "--batch", "--export", fpr], check=True,
                                       capture_output=True).stdout)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, capture_output=True)
    policy = root / "policy.toml"
    policy.write_text(f'[[signatures]]\nbranches = ["main/*"]\ned25519_keys = ["{ed25519_key.public_b64}"]\n'
                      f'[[signatures]]\nbranches = ["gpg/*"]\ngpg_keyring = "{keyring}"\n')
    return Releases(local, v1, v2, unsigned, unsigned_gpg, other, untrusted, revoked, root / "unsigned", root / "other",
                    root / "untrusted", root / "revoked", policy)


@pytest.fixture
def server_with_v1(rel: Releases, hostile, tmp_path: Path) -> Path:
    """A repository where main/x86_64 is v1 (pushed by a well-behaved stream)."""
    repo = tmp_path / "with-v1"
    ostree("init", "--repo", repo, "--mode=archive")
    out = hostile(stream(update((MAIN, None, rel.v1)), objects_of(rel.local, rel.v1), finish()), repo=repo,
                  moved={MAIN: rel.v1})
    assert out.rc == 0 and out.ref_status()[MAIN]["status"] == "ok", out
    return repo


# -- frames -------------------------------------------------------------------------------------


def test_truncated_frame(hostile):
    out = hostile(wire.encode_json(wire.HELLO, {"magic": wire.MAGIC, "protocol": 1})[:-7])
    assert out.rc == 11 and "connection closed by the peer" in out.stderr


def test_truncated_object(hostile, rel):
    data = object_path(rel.local, f"{rel.v1}.commit").read_bytes()
    out = hostile(stream(update((MAIN, None, rel.v1)), wire.encode(wire.OBJECT, bytes([T["commit"]]) +
                                                                   bytes.fromhex(rel.v1)),
                         wire.encode(wire.DATA, data)[:-10]))
    assert out.rc == 11 and "connection closed by the peer" in out.stderr
    assert not (out.repo / "objects" / rel.v1[:2]).exists()


@pytest.mark.parametrize("ftype,length", [(wire.HELLO, 0xFFFFFFFF), (wire.QUERY, wire.MAX_CONTROL + 1),
                                          (wire.DATA, wire.MAX_DATA + 1), (wire.OBJECT, 34)])
def test_oversized_length_field(hostile, ftype, length):
    """Refused from the 5-byte header: the receiver never waits for (or allocates) the payload."""
    prefix = b"" if ftype == wire.HELLO else stream(update((MAIN, None, "a" * 64)))
    out = hostile(prefix + struct.pack(">cI", ftype, length) + b"x" * 100)
    assert out.rc == 11 and "exceeds" in out.error, out.error


@pytest.mark.parametrize("ftype", [b"Z", b"\x00", b"h"])
def test_unknown_frame_type(hostile, ftype):
    out = hostile(stream(wire.encode(ftype, b"{}")))
    assert out.rc == 11 and "unknown frame type" in out.error


@pytest.mark.parametrize("hello_obj,message", [
    ({"magic": wire.MAGIC, "protocol": 99}, "protocol version 99 not supported"),
    ({"magic": wire.MAGIC, "protocol": "1"}, "protocol version '1' not supported"),
    ({"magic": wire.MAGIC}, "protocol version None not supported"),
    ({"magic": "ostree-push", "protocol": 1}, "not a treeship pusher"),
])
def test_wrong_protocol(hostile, hello_obj, message):
    out = hostile(wire.encode_json(wire.HELLO, hello_obj) + update((MAIN, None, "a" * 64)))
    assert out.rc == 11 and message in out.error, out.error
    assert objects_in(out.repo) == 0


@pytest.mark.parametrize("frame", [wire.encode(wire.HELLO, b"not json"), wire.encode(wire.HELLO, b"[1, 2]"),
                                   wire.encode(wire.UPDATE, b"{}")])
def test_malformed_control_frame(hostile, frame):
    out = hostile(frame if frame[:1] == wire.HELLO else stream(frame))
    assert out.rc == 11 and ("not valid JSON" in out.error or "not a JSON object" in out.error
                             or "expected frame" in out.error or "lists no refs" in out.error), out.error


def objects_in(repo: Path) -> int:
    return sum(1 for p in (repo / "objects").rglob("*") if p.is_file())


def test_flood_of_empty_data_frames(hostile, rel):
    """200,000 empty DATA frames (1 MB): refused at the first, not read to the end."""
    flood = wire.encode(wire.OBJECT, bytes([T["dirtree"]]) + bytes(32)) + wire.encode(wire.DATA) * 200_000
    out = hostile(stream(update((MAIN, None, rel.v1)), flood))
    assert out.rc == 11 and "empty DATA frame" in out.error


def test_flood_of_tiny_frames_is_just_work(hostile, rel, figures):
    """20,000 one-name QUERYs and an object sent one byte per frame: answered, verified, bounded."""
    name = f"{rel.v1}.commit"
    queries = wire.encode_json(wire.QUERY, {"objects": [name]}) * 20_000
    csum, data = craft_dirtree([("a", "0" * 64)])
    bytewise = wire.encode(wire.OBJECT, bytes([T["dirtree"]]) + bytes.fromhex(csum)) + b"".join(
        wire.encode(wire.DATA, data[i:i + 1]) for i in range(len(data))) + wire.encode(wire.END)
    out = hostile(stream(update((MAIN, None, rel.v1)), queries, bytewise, finish()))
    assert out.rc == 0 and sum(1 for t, _ in out.frames if t == wire.MISSING) == 20_000
    assert object_path(out.repo, f"{csum}.dirtree").read_bytes() == data  # arrived whole, kept
    assert "commit not received" in out.ref_status()[MAIN]["reason"]
    figures.append({"kind": "flood", "frames": 20_000 + len(data) + 5, "answered": 20_000})


def test_silent_peer_times_out(tmp_path):
    repo = tmp_path / "srv"
    ostree("init", "--repo", repo, "--mode=archive")
    p = subprocess.Popen([*treeship_command(), "receive", "--repo", str(repo), "--timeout", "2"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdin.write(hello())
    p.stdin.flush()  # …and then nothing, with the connection open
    try:
        rc = p.wait(timeout=60)
    finally:
        p.kill()
        p.stdin.close()
    err = p.stderr.read().decode()
    assert rc == 11 and "sent nothing for 2 s" in err, err
    assert parse_frames(p.stdout.read())[-1][0] == wire.ERROR


def test_peer_that_stops_reading_times_out(tmp_path, rel):
    """It asks for 60,000 objects (an answer of ~4 MB) and never reads: a timeout, not a hang."""
    repo = tmp_path / "srv"
    ostree("init", "--repo", repo, "--mode=archive")
    names = [f"{i:064x}.file" for i in range(60_000)]
    p = subprocess.Popen([*treeship_command(), "receive", "--repo", str(repo), "--timeout", "2"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdin.write(stream(update((MAIN, None, rel.v1)), wire.encode_json(wire.QUERY, {"objects": names})))
    p.stdin.flush()  # and its end of the connection stays open, unread
    try:
        rc = p.wait(timeout=60)
    finally:
        p.kill()
        p.stdin.close()
    err = p.stderr.read().decode()
    p.stdout.close()
    assert rc == 11 and "read nothing for 2 s" in err, err


# -- objects ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "dirtree", "dirmeta", "commit"])
def test_checksum_mismatch(hostile, rel, kind):
    name = next(n for n in sorted(tree_objects(rel.local, rel.v1)) if n.endswith(f".{kind}")) \
        if kind != "commit" else f"{rel.v1}.commit"
    data = object_path(rel.local, name).read_bytes()
    claimed = hashlib.sha256(b"not " + data).hexdigest()
    out = hostile(stream(update((MAIN, None, rel.v1)), object_frames(T[kind], claimed, data), finish()))
    assert out.rc == 11 and "checksum mismatch" in out.error and claimed in out.error, out.error
    assert not object_path(out.repo, f"{claimed}.{kind}").exists()
    assert partial_commits(out.repo) == set()


@pytest.mark.parametrize("source,claimed_type", [("dirmeta", "dirtree"), ("commit", "dirmeta"),
                                                 ("dirtree", "commit"), ("file", "dirtree"), ("dirtree", "file")])
def test_valid_checksum_wrong_type(hostile, rel, source, claimed_type):
    """The bytes hash to the name given, but are not an object of the type claimed."""
    name = f"{rel.v1}.commit" if source == "commit" else max(
        (n for n in tree_objects(rel.local, rel.v1) if n.endswith(f".{source}")),
        key=lambda n: object_path(rel.local, n).stat().st_size)
    data = object_path(rel.local, name).read_bytes()
    csum = name.split(".")[0] if claimed_type == "file" else hashlib.sha256(data).hexdigest()
    out = hostile(stream(update((MAIN, None, rel.v1)), object_frames(T[claimed_type], csum, data), finish()))
    assert out.rc == 11 and f"{csum}.{claimed_type}" in out.error, out.error
    assert any(w in out.error for w in ("malformed", "not a valid", "invalid", "checksum mismatch")), out.error
    assert not object_path(out.repo, f"{csum}.{claimed_type}").exists()


def test_dirtree_pointing_at_missing_objects(hostile, rel):
    dirmeta = next(n for n in tree_objects(rel.local, rel.v1) if n.endswith(".dirmeta")).split(".")[0]
    tree, tree_data = craft_dirtree([("ghost", hashlib.sha256(b"nowhere").hexdigest())])
    commit, commit_data = craft_commit(tree, dirmeta)
    dirmeta_data = object_path(rel.local, f"{dirmeta}.dirmeta").read_bytes()
    out = hostile(stream(update((MAIN, None, commit)), object_frames(T["dirmeta"], dirmeta, dirmeta_data),
                         object_frames(T["dirtree"], tree, tree_data), object_frames(T["commit"], commit, commit_data),
                         finish()))
    assert out.rc == 0
    status = out.ref_status()[MAIN]
    assert status["status"] == "rejected" and "incomplete commit" in status["reason"], status
    assert partial_commits(out.repo) == {commit}  # kept, marked partial: fsck (above) is clean


@pytest.mark.parametrize("kind", ["dirtree", "dirmeta", "file"])
def test_commit_with_one_object_left_out(hostile, rel, kind):
    """All of a real commit but one object (found by the fuzzer: libostree's traversal of a commit
    marked partial skips a missing dirtree, and never looks for dirmetas)."""
    names = sorted(n for n in tree_objects(rel.local, rel.v1) if n.endswith(f".{kind}"))
    left_out = names[len(names) // 2]
    body = objects_of(rel.local, rel.v1)
    frames = object_frames(T[kind], left_out.split(".")[0], object_path(rel.local, left_out).read_bytes())
    assert frames in body
    out = hostile(stream(update((MAIN, None, rel.v1)), body.replace(frames, b""), finish()))
    status = out.ref_status()[MAIN]
    assert status["status"] == "rejected" and "incomplete commit" in status["reason"], status
    assert left_out.split(".")[0] in status["reason"]
    assert partial_commits(out.repo) == {rel.v1}


def test_commit_whose_parent_chain_is_missing(hostile, rel, server_with_v1):
    """A commit's closure is its tree: a parent that is not here is allowed (OSTree keeps partial
    history) on a new branch; but it cannot show a fast-forward of an existing one."""
    tree_objs = objects_of(rel.local, rel.v2, meta=False)
    orphan, orphan_data = craft_commit(*_commit_roots(rel.local, rel.v2),
                                       parent=hashlib.sha256(b"a parent nobody has").hexdigest())
    body = tree_objs[:tree_objs.rindex(wire.encode(wire.OBJECT, bytes([T["commit"]]) + bytes.fromhex(rel.v2)))]
    crafted = body + object_frames(T["commit"], orphan, orphan_data)

    out = hostile(stream(update(("new/x86_64", None, orphan)), crafted, finish()), moved={"new/x86_64": orphan})
    assert out.rc == 0 and out.ref_status()["new/x86_64"]["status"] == "ok"

    out = hostile(stream(update((MAIN, rel.v1, orphan)), crafted, finish()), repo=server_with_v1)
    status = out.ref_status()[MAIN]
    assert status["status"] == "rejected" and "non-fast-forward" in status["reason"], status


def _commit_roots(repo: Path, commit: str) -> tuple[str, str]:
    v = GLib.Variant.new_from_bytes(GLib.VariantType.new("(a{sv}aya(say)sstayay)"),
                                    GLib.Bytes.new(object_path(repo, f"{commit}.commit").read_bytes()), False)
    return bytes(v.get_child_value(6).get_data_as_bytes().get_data()).hex(), \
        bytes(v.get_child_value(7).get_data_as_bytes().get_data()).hex()


@pytest.mark.parametrize("name", [
    "ab/" + "c" * 61 + ".file", "../" + "a" * 61 + ".file", "a" * 64 + "/../x.file", "g" * 64 + ".file",
    "A" * 64 + ".file", "a" * 64 + "\n.file", "a" * 63 + ".file", "a" * 64 + ".exe", "a" * 64, 42,
    "a" * 64 + ".file\n",
])
def test_bad_object_names_in_query(hostile, rel, name):
    out = hostile(stream(update((MAIN, None, rel.v1)), wire.encode_json(wire.QUERY, {"objects": [name]})))
    assert out.rc == 11 and "bad object name" in out.error, out.error


@pytest.mark.parametrize("new", ["a" * 64 + "\n", "A" * 64, "a" * 63, "../" + "a" * 61, 7])
def test_bad_commit_checksums_in_update(hostile, new):
    out = hostile(stream(update((MAIN, None, new))))
    assert out.rc == 11 and "bad commit checksum" in out.error, out.error


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return raw_deflate(bytes(64 << 20))  # 64 MiB of zeros in ~64 KB


def test_zip_bomb_declared_over_the_limit(hostile, rel, tmp_path, bomb):
    """The header says 64 MiB; the policy allows 1 MiB per object: refused before inflating."""
    config = tmp_path / "limit.toml"
    config.write_text('[receive]\nmax_object_size = "1M"\n')
    obj = archive_object(64 << 20, bomb)
    assert len(obj) < 1 << 20  # what travels is within the limit
    claimed = hashlib.sha256(b"bomb").hexdigest()
    out = hostile(stream(update((MAIN, None, rel.v1)), object_frames(T["file"], claimed, obj), finish()),
                  "--config", str(config))
    assert out.rc == 11 and "expands to 67108864 bytes, over the limit of 1048576" in out.error, out.error


def test_zip_bomb_lying_header(hostile, rel, bomb):
    """The header says 10 bytes; the content inflates to 64 MiB: stopped one byte past 10."""
    claimed = hashlib.sha256(b"liar").hexdigest()
    out = hostile(stream(update((MAIN, None, rel.v1)),
                         object_frames(T["file"], claimed, archive_object(10, bomb)), finish()))
    assert out.rc == 11 and "longer than the 10 bytes its header says" in out.error, out.error


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "trailing", "short-header", "device"])
def test_malformed_content_object(hostile, rel, damage):
    """A content object whose deflate stream is corrupt (found by the fuzzer: zlib's own error
    escaped), cut short, followed by junk; a header too short; a mode that is not a file."""
    content = bytes(range(256)) * 64
    good = archive_object(len(content), raw_deflate(content))
    obj = {"corrupt": good[:60] + bytes([good[60] ^ 0xFF]) + good[61:], "truncated": good[:-20],
           "trailing": good + b"junk", "short-header": struct.pack(">I", 8) + bytes(12),
           "device": archive_object(len(content), raw_deflate(content), mode=0o020644)}[damage]
    claimed = hashlib.sha256(obj).hexdigest()
    out = hostile(stream(update((MAIN, None, rel.v1)), object_frames(T["file"], claimed, obj), finish()))
    assert out.rc == 11 and f"object {claimed}.file: malformed" in out.error, out.error


def test_compressed_size_over_the_limit(hostile, rel, tmp_path):
    config = tmp_path / "limit.toml"
    config.write_text('[receive]\nmax_object_size = "1K"\n')
    out = hostile(stream(update((MAIN, None, rel.v1)), object_frames(T["file"], "b" * 64, os.urandom(4096))),
                  "--config", str(config))
    assert out.rc == 11 and "exceeds the limit of 1024 bytes" in out.error, out.error


@pytest.mark.parametrize("chunk", [wire.CHUNK, 512], ids=["one-frame-objects", "several-frames"])
def test_push_size_over_the_limit(hostile, rel, tmp_path, chunk):
    """max_push_size counts every object's bytes (and its frames) as they arrive, whether the
    receiver takes an object whole from its buffer (one DATA frame) or frame by frame."""
    from treeship.objects import content_checksum

    config = tmp_path / "limit.toml"
    config.write_text('[receive]\nmax_push_size = "4K"\n')
    frames = []
    for _ in range(3):  # ~2.1 kB each, each object valid: only the total is over the limit
        content = os.urandom(2000)
        obj = archive_object(len(content), raw_deflate(content))
        frames.append(object_frames(T["file"], content_checksum(obj, "x", None), obj, chunk=chunk))
    out = hostile(stream(update((MAIN, None, rel.v1)), *frames, finish()), "--config", str(config))
    assert out.rc == 11 and "push exceeds the limit of 4096 bytes" in out.error, out.error


# -- refs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["main/../etc", "../../etc/passwd", "/main/x86_64", "main//x86_64", "main/x86_64/",
                                 "main/x86_64\n", "main/\x01x", "main\tx", "", "main/.hidden", "-rf", "a b"])
def test_bad_ref_names(hostile, rel, ref):
    out = hostile(stream(update((ref, None, rel.v1))))
    assert out.rc == 0 and [t for t, _ in out.frames] == [wire.HELLO, wire.PREFLIGHT]
    status = out.ref_status(wire.PREFLIGHT)[ref]
    assert status["status"] == "rejected" and "invalid branch name" in status["reason"], status
    assert objects_in(out.repo) == 0


def test_ref_outside_the_keys_globs(hostile, rel, tmp_path):
    config = tmp_path / "keys.toml"
    config.write_text('[keys.alice]\nbranches = ["allowed/*"]\n')
    out = hostile(stream(update(("main/x86_64", None, rel.v1))), "--config", str(config), "--key-id", "alice")
    assert "may not write this branch" in out.ref_status(wire.PREFLIGHT)[MAIN]["reason"]
    out = hostile(stream(update(("allowed/x", None, rel.v1))), "--config", str(config), "--key-id", "mallory")
    assert "not in the policy" in out.ref_status(wire.PREFLIGHT)["allowed/x"]["reason"]


def test_deleting_a_protected_branch(hostile, server_with_v1, tmp_path):
    config = tmp_path / "protect.toml"
    config.write_text('[receive]\nprotected = ["main/*"]\n[keys.alice]\nbranches = ["*"]\nforce = ["*"]\n')
    out = hostile(stream(update((MAIN, None, None), force=True)), "--config", str(config), "--key-id", "alice",
                  repo=server_with_v1)
    assert "protected branch" in out.ref_status(wire.PREFLIGHT)[MAIN]["reason"]


def test_force_must_be_true_not_truthy(hostile, server_with_v1, tmp_path):
    config = tmp_path / "force.toml"
    config.write_text('[keys.alice]\nbranches = ["*"]\nforce = ["*"]\n')
    frame = wire.encode_json(wire.UPDATE, {"updates": [{"ref": MAIN, "old": None, "new": None}], "force": "no"})
    out = hostile(stream(frame), "--config", str(config), "--key-id", "alice", repo=server_with_v1)
    assert "needs --force" in out.ref_status(wire.PREFLIGHT)[MAIN]["reason"]


def test_downgrade_to_an_older_signed_commit(hostile, rel, server_with_v1):
    """v2 is published; a replay of v1 (signed, genuine) is not a fast-forward."""
    out = hostile(stream(update((MAIN, rel.v1, rel.v2)), objects_of(rel.local, rel.v2), finish()),
                  repo=server_with_v1, moved={MAIN: rel.v2})
    assert out.ref_status()[MAIN]["status"] == "ok"
    out = hostile(stream(update((MAIN, rel.v2, rel.v1)), objects_of(rel.local, rel.v1), finish()),
                  repo=server_with_v1)
    status = out.ref_status(wire.PREFLIGHT)[MAIN]
    assert status["status"] == "rejected" and "non-fast-forward" in status["reason"], status


def test_downgrade_when_the_older_commit_is_not_there(hostile, rel, tmp_path):
    """The server got v2 without its history; v1 replayed in full is still not a fast-forward."""
    repo = tmp_path / "only-v2"
    ostree("init", "--repo", repo, "--mode=archive")
    hostile(stream(update((MAIN, None, rel.v2)), objects_of(rel.local, rel.v2), finish()), repo=repo,
            moved={MAIN: rel.v2})
    out = hostile(stream(update((MAIN, rel.v2, rel.v1)), objects_of(rel.local, rel.v1), finish()), repo=repo)
    status = out.ref_status()[MAIN]
    assert status["status"] == "rejected" and "non-fast-forward" in status["reason"], status


def test_commit_bound_to_another_branch(hostile, rel):
    out = hostile(stream(update((MAIN, None, rel.other_bound)), objects_of(rel.local_other, rel.other_bound),
                         finish()))
    status = out.ref_status()[MAIN]
    assert status["status"] == "rejected" and "is bound to other/x86_64, not this one" in status["reason"]


def test_commit_with_a_malformed_binding(hostile, rel):
    """ostree.ref-binding must be a list of names: a string that contains the branch is no binding to it."""
    tree, meta = _commit_roots(rel.local, rel.v1)
    commit, data = craft_commit(tree, meta, metadata={"ostree.ref-binding": GLib.Variant("s", f"{MAIN}-evil")})
    out = hostile(stream(update((MAIN, None, commit)), objects_of(rel.local, rel.v1, meta=False)
                         + object_frames(T["commit"], commit, data), finish()))
    status = out.ref_status()[MAIN]
    assert status["status"] == "rejected" and "malformed ostree.ref-binding" in status["reason"], status


# -- signatures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["unsigned", "untrusted"])
def test_unsigned_or_untrusted(hostile, rel, case):
    local, commit = (rel.local_unsigned, rel.unsigned) if case == "unsigned" else (rel.local_untrusted, rel.untrusted)
    out = hostile(stream(update((MAIN, None, commit)), objects_of(local, commit), finish()),
                  "--config", str(rel.policy))
    status = out.ref_status()[MAIN]
    assert status["status"] == "rejected" and "not signed by a key the policy trusts" in status["reason"], status


def test_revoked_gpg_key(hostile, rel):
    out = hostile(stream(update(("gpg/x86_64", None, rel.revoked)), objects_of(rel.local_revoked, rel.revoked),
                         finish()), "--config", str(rel.policy))
    status = out.ref_status()["gpg/x86_64"]
    assert status["status"] == "rejected" and "key revoked" in status["reason"], status


@pytest.mark.parametrize("branch", [MAIN, "gpg/x86_64"])
def test_signature_copied_from_another_commit(hostile, rel, branch):
    """v1's genuine signatures, sent as the unsigned commit's: refused, and not kept either, so
    they cannot poison that commit for the day it arrives properly signed."""
    stolen = object_path(rel.local, f"{rel.v1}.commitmeta").read_bytes()
    commit = rel.unsigned if branch == MAIN else rel.unsigned_gpg
    out = hostile(stream(update((branch, None, commit)), objects_of(rel.local_unsigned, commit, meta=False),
                         object_frames(T["commitmeta"], commit, stolen), finish()), "--config", str(rel.policy))
    status = out.ref_status()[branch]
    reason = "not signed by a key the policy trusts" if branch == MAIN else "bad signature"
    assert status["status"] == "rejected" and reason in status["reason"], status["reason"]
    assert not object_path(out.repo, f"{commit}.commitmeta").exists()


def test_signatures_for_a_commit_the_push_does_not_move_to(hostile, rel, server_with_v1):
    """Adding signatures to someone else's commit (v1, published) through a push of another branch."""
    before = object_path(server_with_v1, f"{rel.v1}.commitmeta").read_bytes()
    forged = object_path(rel.local_untrusted, f"{rel.untrusted}.commitmeta").read_bytes()
    out = hostile(stream(update(("scratch/x", None, rel.unsigned)), objects_of(rel.local_unsigned, rel.unsigned),
                         object_frames(T["commitmeta"], rel.v1, forged), finish()), repo=server_with_v1)
    assert out.rc == 11 and "no branch of this push is moving to" in out.error, out.error
    assert object_path(server_with_v1, f"{rel.v1}.commitmeta").read_bytes() == before


def _commitmeta(**entries: list[bytes]) -> bytes:
    """A .commitmeta (a{sv}) with ``aay`` entries, keys spelled with "_" for "." (ostree_sign_ed25519)."""
    ay = GLib.VariantType.new("ay")  # each child from its bytes: GLib.Variant("aay", …) makes a variant per byte
    value = {k.replace("_", "."): GLib.Variant.new_array(ay, [GLib.Variant.new_from_bytes(ay, GLib.Bytes.new(s), True)
                                                              for s in v]) for k, v in entries.items()}
    return bytes(GLib.Variant("a{sv}", value).get_data_as_bytes().get_data())


@pytest.fixture(scope="module")
def unbound(tmp_path_factory: pytest.TempPathFactory, ed25519_key) -> tuple[Path, str]:
    """A commit made by plain `ostree commit` (no ostree.ref-binding: any branch may point at it),
    signed by the policy's ed25519 key, in a local repository."""
    from treeship.repo import Repo
    from treeship.signing import ed25519_sign, load_ed25519_secret

    root = tmp_path_factory.mktemp("unbound")
    local = root / "local"
    ostree("init", "--repo", local, "--mode=archive")
    tree = write_tree(root / "tree", n=6, tag="unbound")
    commit = ostree("commit", "--repo", local, "--branch", "main/plain", "--no-bindings", "--canonical-permissions",
                    "-s", "plain", tree).stdout.strip()
    ed25519_sign(Repo.open(local), commit, [load_ed25519_secret(ed25519_key.secret)])
    return local, commit


@pytest.mark.parametrize("branch,config", [
    ("scratch/x", False),  # no policy at all
    ("scratch/x", True),  # a policy, but no rule for this branch
    ("main/other", True),  # a rule, whose key did not make the signature
])
def test_junk_signatures_for_another_branchs_head(hostile, rel, unbound, tmp_path, branch, config):
    """A key allowed on some branch points it at main's head (bound to no branch) and attaches a
    signature no trusted key made: refused, and the commit's signatures stay as they were.
    (Merged, it would make main's commit fail verification from then on.)"""
    local, commit = unbound
    repo = tmp_path / "srv"
    ostree("init", "--repo", repo, "--mode=archive")
    out = hostile(stream(update(("main/plain", None, commit)), objects_of(local, commit), finish()),
                  "--config", str(rel.policy), repo=repo, moved={"main/plain": commit})
    assert out.ref_status()["main/plain"]["status"] == "ok", out
    before = object_path(repo, f"{commit}.commitmeta").read_bytes()
    junk = _commitmeta(ostree_sign_ed25519=[bytes(64)])
    args = ("--config", str(rel.policy)) if config else ()
    out = hostile(stream(update((branch, None, commit)), object_frames(T["commitmeta"], commit, junk), finish()),
                  *args, repo=repo)
    status = out.ref_status()[branch]
    reason = "is another branch's head: a push may add to it only signatures that a key the policy trusts made"
    assert status["status"] == "rejected" and reason in status["reason"], status["reason"]
    assert object_path(repo, f"{commit}.commitmeta").read_bytes() == before


def test_a_retried_push_brings_its_signatures(hostile, rel):
    """A push cut short (here: an object left out, so the commit stays partial and no ref
    moves) leaves the commit here; the retry's signatures are merged as the first push's would
    have been: no branch points at the commit yet, whatever the policy says (here: none)."""
    names = objects_of(rel.local, rel.v1, meta=False)
    first_file = names.index(wire.encode(wire.OBJECT, bytes([T["file"]]) + bytes.fromhex(
        sorted(n.split(".")[0] for n in tree_objects(rel.local, rel.v1) if n.endswith(".file"))[0])))
    end = names.index(wire.encode(wire.END), first_file) + len(wire.encode(wire.END))
    cut = names[:first_file] + names[end:]
    out = hostile(stream(update((MAIN, None, rel.v1)), cut, finish()))
    assert out.ref_status()[MAIN]["status"] == "rejected", out
    assert rel.v1 in partial_commits(out.repo)
    out = hostile(stream(update((MAIN, None, rel.v1)), objects_of(rel.local, rel.v1), finish()), repo=out.repo,
                  moved={MAIN: rel.v1})
    assert out.ref_status()[MAIN]["status"] == "ok", out
    assert object_path(out.repo, f"{rel.v1}.commitmeta").read_bytes() == \
        object_path(rel.local, f"{rel.v1}.commitmeta").read_bytes()


def test_other_detached_metadata_for_a_commit_already_here_is_refused(hostile, rel, unbound, tmp_path):
    local, commit = unbound
    repo = tmp_path / "srv"
    ostree("init", "--repo", repo, "--mode=archive")
    hostile(stream(update(("main/plain", None, commit)), objects_of(local, commit), finish()),
            "--config", str(rel.policy), repo=repo, moved={"main/plain": commit})
    before = object_path(repo, f"{commit}.commitmeta").read_bytes()
    out = hostile(stream(update(("main/other", None, commit)),
                         object_frames(T["commitmeta"], commit, _commitmeta(ostree_sign_dummy=[b"x"])), finish()),
                  "--config", str(rel.policy), repo=repo)
    status = out.ref_status()["main/other"]
    assert status["status"] == "rejected" and "not ostree.sign.dummy" in status["reason"], status["reason"]
    assert object_path(repo, f"{commit}.commitmeta").read_bytes() == before


def test_a_trusted_signature_added_to_a_commit_already_here(hostile, rel, ed25519_key, tmp_path):
    """Sign after QA: a commit pushed unsigned to one branch, then pushed to a signed branch with
    a signature the policy's key made, carries that signature from then on."""
    from treeship.signing import ed25519_sign_data, load_ed25519_secret

    local = tmp_path / "local"
    ostree("init", "--repo", local, "--mode=archive")
    commit = ostree("commit", "--repo", local, "--branch", "qa/x86_64", "--no-bindings", "-s", "qa",
                    write_tree(tmp_path / "tree", n=4, tag="qa")).stdout.strip()
    repo = tmp_path / "srv"
    ostree("init", "--repo", repo, "--mode=archive")
    out = hostile(stream(update(("qa/x86_64", None, commit)), objects_of(local, commit), finish()),
                  repo=repo, moved={"qa/x86_64": commit})
    assert out.ref_status()["qa/x86_64"]["status"] == "ok", out
    sig = ed25519_sign_data(load_ed25519_secret(ed25519_key.secret),
                            object_path(local, f"{commit}.commit").read_bytes())
    meta_frames = object_frames(T["commitmeta"], commit, _commitmeta(ostree_sign_ed25519=[sig]))
    out = hostile(stream(update((MAIN, None, commit)), meta_frames, finish()),
                  "--config", str(rel.policy), repo=repo, moved={"qa/x86_64": commit, MAIN: commit})
    assert out.ref_status()[MAIN]["status"] == "ok", out
    meta = GLib.Variant.new_from_bytes(GLib.VariantType.new("a{sv}"),
                                       GLib.Bytes.new(object_path(repo, f"{commit}.commitmeta").read_bytes()), False)
    assert [bytes(s) for s in meta.lookup_value("ostree.sign.ed25519", None).unpack()] == [sig]


def test_signatures_for_others_are_refused_as_they_arrive(hostile, rel, server_with_v1):
    """No pile of forged .commitmeta held in memory until FINISH: the first is refused at once
    (the stream below never sends FINISH, so only an early refusal can name the reason)."""
    forged = object_path(rel.local_untrusted, f"{rel.untrusted}.commitmeta").read_bytes()
    out = hostile(stream(update(("scratch/x", None, rel.unsigned)),
                         *(object_frames(T["commitmeta"], f"{i:064x}", forged) for i in range(1, 4))),
                  repo=server_with_v1)
    assert out.rc == 11 and "no branch of this push is moving to" in out.error, out.error


def test_signatures_sent_twice_are_refused(hostile, rel):
    meta = object_path(rel.local, f"{rel.v1}.commitmeta").read_bytes()
    out = hostile(stream(update((MAIN, None, rel.v1)), objects_of(rel.local, rel.v1, meta=False),
                         object_frames(T["commitmeta"], rel.v1, meta), object_frames(T["commitmeta"], rel.v1, meta),
                         finish()), "--config", str(rel.policy))
    assert out.rc == 11 and "sent twice" in out.error, out.error


# -- what one push may make the receiver hold ------------------------------------------------------


def test_a_flood_of_empty_commits_is_refused_at_the_first(hostile):
    """OBJECT(commit) + END, no DATA, a million times: 43 bytes each on the wire, each once held
    until FINISH. A commit is checked as it arrives; the first that does not hash to its name ends
    it (the stream never sends FINISH, so only an early refusal can name the reason)."""
    flood = b"".join(object_frames(T["commit"], f"{i:064x}", b"") for i in range(1, 100_001))
    out = hostile(stream(update((MAIN, None, "ab" * 32)), flood))
    assert out.rc == 11 and f"{1:064x}.commit: checksum mismatch" in out.error, out.error


def test_metadata_objects_are_bounded_as_libostree_bounds_them(hostile):
    """A dirtree (or dirmeta, or commit) over libostree's 10 MiB: clients would refuse to pull it,
    and the receiver checks metadata in memory; refused as it arrives, whatever max_object_size says."""
    big = bytes(11 << 20)
    out = hostile(stream(update((MAIN, None, "ab" * 32)), object_frames(T["dirtree"], hashlib.sha256(big).hexdigest(),
                                                                        big), finish()))
    assert out.rc == 11 and f"exceeds the limit of {10 << 20} bytes" in out.error, out.error


def test_the_signatures_of_one_push_are_bounded(hostile):
    """Each .commitmeta (up to 10 MiB, as clients take) is held until the refs move: two
    branches' worth of 9 MiB is refused (16 MiB in all)."""
    commits = [f"{i:064x}" for i in range(1, 3)]
    metas = b"".join(object_frames(T["commitmeta"], c, bytes(9 << 20)) for c in commits)
    out = hostile(stream(update(*((f"scratch/{i}", None, c) for i, c in enumerate(commits))), metas, finish()))
    assert out.rc == 11 and "the signatures of this push exceed" in out.error, out.error


def test_a_lock_held_past_the_timeout_is_one_clear_error(hostile, rel, tmp_path):
    """Another receiver stuck while holding the repository's lock (here: this test holds it)
    makes this one give up after its timeout, saying why, instead of hanging with it."""
    import fcntl

    repo = tmp_path / "locked"
    ostree("init", "--repo", repo, "--mode=archive")
    with open(repo / ".treeship-receive.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        out = hostile(stream(update((MAIN, None, rel.v1)), objects_of(rel.local, rel.v1), finish()),
                      timeout=1, repo=repo)
    assert out.rc != 0 and "held this repository's lock for 1 s" in out.error, out.error
    assert not object_path(repo, f"{rel.v1}.commit").exists()  # placing the commit is what waited for the lock


# -- what a control frame or a signature object may cost (found by a reviewer) --------------------


@pytest.mark.parametrize("payload,why", [
    (b"[" * 200_000 + b"]" * 200_000, "holds too many JSON objects or arrays"),  # nested: the parser's stack
    (b'{"updates":[' + b"{}," * 300_000 + b'{}]}', "holds too many JSON objects or arrays"),  # ~30 MB of dicts
    (b'{"updates":[' + b"1000," * 1_000_000 + b'1]}', "holds too many JSON values"),  # ~36 MB of ints
    (b" " * 70_000 + b"[" * 1_030 + b"]" * 1_030, "is not valid JSON"),  # within the count, too deep to parse
])
def test_a_json_bomb_in_a_control_frame_is_refused_before_it_costs(hostile, payload, why):
    """A HELLO of 5.6 million "{}" took 460 MB before anything of it was checked, and one
    nested 200,000 deep ended the receiver with a RecursionError, the peer never told. (An
    UPDATE here: a pusher's HELLO may be 64 KiB at most.)"""
    out = hostile(stream(wire.encode(wire.UPDATE, payload)))
    assert out.rc == 11 and why in out.error, out.error


def test_a_query_of_anything_but_object_names_is_refused_before_it_is_parsed(hostile):
    out = hostile(stream(update((MAIN, None, "a" * 64)), wire.encode(wire.QUERY, b'{"objects":[' + b'"ab",' * 500_000
                                                                   + b'"ab"]}')))
    assert out.rc == 11 and "holds too many JSON values" in out.error, out.error


@pytest.mark.parametrize("ftype,length", [(wire.END, 1), (wire.FINISH, (64 << 10) + 1), (wire.UPDATE, (6 << 20) + 1),
                                          (wire.HELLO, (64 << 10) + 1), (wire.STATUS, (64 << 10) + 1)])
def test_each_frame_type_has_its_own_limit(hostile, ftype, length):
    """An END carries nothing (a payload there was neither stored nor counted against the
    push's size); a FINISH, a pusher's HELLO, and what only a receiver sends are small."""
    prefix = {wire.HELLO: b"", wire.UPDATE: stream()}.get(ftype, stream(update((MAIN, None, "a" * 64))))
    out = hostile(prefix + struct.pack(">cI", ftype, length) + b"x" * 100)
    assert out.rc == 11 and "exceeds" in out.error, out.error


@pytest.mark.parametrize("entries,why", [
    ({"ostree_sign_ed25519": [bytes(10)]}, "a signature of 10 bytes under ostree.sign.ed25519"),
    ({"ostree_gpgsigs": [b"x" * ((64 << 10) + 1)]}, "a signature of 65537 bytes under ostree.gpgsigs"),
    ({"ostree_gpgsigs": [bytes([i % 256, i // 256]) for i in range(1025)]}, "more than 1024 signatures"),
])
def test_signatures_that_are_none_are_refused(hostile, unbound, tmp_path, entries, why):
    """Two million 2-byte "signatures" in one .commitmeta took 1.5 GB and 52 s; an ed25519
    signature that is not 64 bytes is none, and would make a client's check fail."""
    local, commit = unbound
    out = hostile(stream(update(("main/plain", None, commit)), objects_of(local, commit, meta=False),
                         object_frames(T["commitmeta"], commit, _commitmeta(**entries)), finish()))
    assert out.rc == 11 and why in out.error, out.error


def test_detached_metadata_larger_than_clients_take_is_refused(hostile, unbound, tmp_path):
    """libostree clients refuse a .commitmeta over 10 MiB (OSTREE_MAX_METADATA_SIZE): one sent
    larger is refused, and so is a push whose signatures would grow the commit's past it."""
    local, commit = unbound
    repo = tmp_path / "srv"
    ostree("init", "--repo", repo, "--mode=archive")
    whole = _commitmeta(ostree_gpgsigs=[os.urandom(60_000) for _ in range(180)])  # 10.8 MB
    out = hostile(stream(update(("a/x", None, commit)), objects_of(local, commit, meta=False),
                         object_frames(T["commitmeta"], commit, whole), finish()), repo=repo)
    assert out.rc == 11 and "exceeds" in out.error, out.error
    first, second = ([os.urandom(60_000) for _ in range(100)] for _ in range(2))  # 6 MB each: one is taken
    out = hostile(stream(update(("a/x", None, commit)), objects_of(local, commit, meta=False),
                         object_frames(T["commitmeta"], commit, _commitmeta(ostree_gpgsigs=first)), finish()),
                  repo=repo, moved={"a/x": commit})
    assert out.ref_status()["a/x"]["status"] == "ok", out
    out = hostile(stream(update(("b/x", None, commit)),
                         object_frames(T["commitmeta"], commit, _commitmeta(ostree_gpgsigs=second)), finish()),
                  repo=repo)
    status = out.ref_status()["b/x"]
    assert status["status"] == "rejected" and "would exceed 10 MiB" in status["reason"], status
