"""Property-based fuzzing (hypothesis) of the frame decoder and of the receiver's state machine.

- ``wire.Reader``: any encoded frame sequence decodes to itself; any byte string either
  decodes to frames within the limits or fails with a TransferError — nothing else, ever.
- ``Receiver``: random sequences of frames (mostly well-formed, many not: wrong order, bad
  names, corrupted or mislabelled objects, real objects of a real commit, truncations) run
  in-process over memory files. Whatever happens: only TreeshipError escapes, a failure
  ends with an ERROR frame to the peer, ``ostree fsck`` is clean, a ref that moved points at
  a complete commit, and nothing is written outside the repository.

A bounded number of examples runs in ``make test`` (derandomized: the same streams each
run); ``TREESHIP_FUZZ_EXAMPLES=N`` runs N random ones per property.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pushkit import fsck, object_path, ostree, parse_frames, partial_commits, tree_objects
from treeship.errors import TransferError, TreeshipError
from treeship.policy import Policy
from treeship.repo import Repo
from treeship.transfer import wire
from treeship.transfer.receiver import Receiver

_ENV = os.environ.get("TREESHIP_FUZZ_EXAMPLES")
EXAMPLES = int(_ENV) if _ENV else None
FUZZ = settings(max_examples=EXAMPLES or 150, deadline=None, derandomize=EXAMPLES is None,
                database=None if EXAMPLES is None else settings.default.database,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
RECEIVER = settings(FUZZ, max_examples=EXAMPLES or 80)
T = wire.OBJECT_TYPES
COUNT = {"reader": 0, "receiver": 0, "receiver_errors": 0, "receiver_landed": 0}


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("treeship-fuzz")
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


# -- the frame decoder ---------------------------------------------------------------------------

frame_types = st.sampled_from(sorted(wire.ALL_TYPES))


@st.composite
def frames(draw):
    ftype = draw(frame_types)
    limit = min(wire.FRAME_LIMITS[ftype], 300)  # an OBJECT is 33 bytes, an END empty
    return ftype, draw(st.binary(max_size=limit))


@FUZZ
@given(st.lists(frames(), max_size=30))
def test_reader_decodes_what_was_encoded(seq):
    COUNT["reader"] += 1
    fd = _memfd(b"".join(wire.encode(t, p) for t, p in seq))
    try:
        reader = wire.Reader(fd)
        assert [(f.type, f.payload) for f in (reader.read() for _ in seq)] == seq
        with pytest.raises(TransferError, match="connection closed"):
            reader.read()
    finally:
        os.close(fd)


@FUZZ
@given(st.one_of(st.binary(max_size=4096),
                 st.lists(st.one_of(frames().map(lambda f: wire.encode(*f)), st.binary(max_size=12)),
                          max_size=20).map(b"".join)))
def test_reader_never_fails_otherwise(data):
    COUNT["reader"] += 1
    fd = _memfd(data)
    try:
        reader = wire.Reader(fd)
        for _ in range(len(data) + 1):  # each frame takes at least 5 bytes: this ends
            try:
                frame = reader.read()
            except TransferError:
                break
            assert frame.type in wire.ALL_TYPES and len(frame.payload) <= wire.FRAME_LIMITS[frame.type]
        else:
            pytest.fail("the reader kept returning frames past the end of its input")
    finally:
        os.close(fd)


# -- the receiver's state machine --------------------------------------------------------------


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory):
    """A small real release (its objects to replay), and an empty archive repository to copy."""
    import json
    import subprocess

    from pushkit import treeship_command

    root = tmp_path_factory.mktemp("fuzz")
    tree = root / "tree"  # small, so that streams stay small: every kind of entry, two levels
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "etc").mkdir()
    (tree / "empty-dir").mkdir()
    (tree / "usr" / "bin" / "tool").write_bytes(bytes(range(256)) * 8)
    (tree / "usr" / "bin" / "tool").chmod(0o755)
    (tree / "usr" / "bin" / "link").symlink_to("tool")
    (tree / "etc" / "os-release").write_text("NAME=fuzz\n")
    (tree / "etc" / "empty").touch()
    local = root / "local"
    out = subprocess.run([*treeship_command(), "release", str(tree), "--repo", str(local), "--branch", "main/x",
                          "--json"], capture_output=True, text=True, check=True)
    commit = json.loads(out.stdout)["commit"]
    names = sorted(tree_objects(local, commit), key=lambda n: ({"file": 0, "dirmeta": 1, "dirtree": 2}
                                                               [n.split(".")[1]], n)) + [f"{commit}.commit"]
    objs = [(T[n.split(".")[1]], n.split(".")[0], object_path(local, n).read_bytes()) for n in names]
    empty = root / "empty"
    ostree("init", "--repo", empty, "--mode=archive")
    return commit, objs, empty


def _hex(draw) -> str:
    return draw(st.binary(min_size=32, max_size=32)).hex()


@st.composite
def receiver_streams(draw, commit: str, objs: list[tuple[int, str, bytes]]):
    """A HELLO (usually right), then a mix of frames; a third of them shaped like a real push."""
    refs = st.sampled_from(["main/x", "other/y", "main/x", "bad//ref", "../x", "main/x\n", ""])
    names = st.one_of(st.sampled_from([f"{c}.{['', 'file', 'dirtree', 'dirmeta', 'commit', '', 'commitmeta'][t]}"
                                       for t, c, _ in objs]),
                      st.builds(lambda h, k: f"{h}.{k}", st.binary(min_size=32, max_size=32).map(bytes.hex),
                                st.sampled_from(["file", "dirtree", "commit", "commitmeta", "x"])),
                      st.text(max_size=80), st.integers())
    checksums = st.one_of(st.just(commit), st.binary(min_size=32, max_size=32).map(bytes.hex), st.none(),
                          st.text(max_size=70))

    def obj(t: int, csum: str, data: bytes) -> bytes:
        chunk = draw(st.integers(1, max(1, len(data))))
        body = [wire.encode(wire.DATA, data[i:i + chunk]) for i in range(0, len(data), chunk)]
        return wire.encode(wire.OBJECT, bytes([t]) + bytes.fromhex(csum)) + b"".join(body) + wire.encode(wire.END)

    def mutate(data: bytes) -> bytes:
        if not data:
            return b"x"
        i = draw(st.integers(0, len(data) - 1))
        return data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]

    parts = []
    version = draw(st.sampled_from([1, 1, 1, 1, 2, "1", None]))
    parts.append(wire.encode_json(wire.HELLO, {"magic": draw(st.sampled_from([wire.MAGIC] * 5 + ["x"])),
                                               "protocol": version}))
    if draw(st.integers(0, 2)) == 0:  # a real push, with one thing changed
        parts.append(wire.encode_json(wire.UPDATE, {"updates": [{"ref": "main/x", "old": None, "new": commit}]}))
        body = [obj(t, c, d) for t, c, d in objs]
        i = draw(st.integers(0, len(body)))
        damage = draw(st.sampled_from(["none", "drop", "mutate", "retype", "duplicate", "truncate"]))
        if i < len(body) and damage != "none":
            t, c, d = objs[i]
            body[i] = {"drop": b"", "mutate": obj(t, c, mutate(d)), "retype": obj((t % 4) + 1, c, d),
                       "duplicate": body[i] * 2, "truncate": body[i][:draw(st.integers(0, len(body[i])))]}[damage]
        parts += body
        parts.append(wire.encode_json(wire.FINISH, {}))
        return b"".join(parts)
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["update", "query", "object", "bad-object", "finish", "error", "raw", "data"]))
        if kind == "update":
            items = draw(st.lists(st.fixed_dictionaries({"ref": refs, "old": checksums, "new": checksums}),
                                  min_size=0, max_size=3))
            parts.append(wire.encode_json(wire.UPDATE, {"updates": items, "force": draw(st.sampled_from(
                [False, True, "yes", None]))}))
        elif kind == "query":
            parts.append(wire.encode_json(wire.QUERY, {"objects": draw(st.lists(names, max_size=5))}))
        elif kind == "object":
            t, c, d = draw(st.sampled_from(objs))
            parts.append(obj(t, c, d))
        elif kind == "bad-object":
            t = draw(st.sampled_from([1, 2, 3, 4, 6, 0, 5, 9]))
            data = draw(st.binary(max_size=300))
            parts.append(wire.encode(wire.OBJECT, bytes([t]) + bytes.fromhex(_hex(draw)))
                         + b"".join(wire.encode(wire.DATA, data[i:i + 64]) for i in range(0, len(data), 64))
                         + (wire.encode(wire.END) if draw(st.booleans()) else b""))
        elif kind == "finish":
            parts.append(wire.encode_json(wire.FINISH, {}))
        elif kind == "error":
            parts.append(wire.encode_json(wire.ERROR, {"message": draw(st.text(max_size=30))}))
        elif kind == "data":
            parts.append(wire.encode(wire.DATA, draw(st.binary(max_size=40))))
        else:
            parts.append(draw(st.binary(max_size=40)))
    return b"".join(parts)


@pytest.fixture
def workdir(tmp_path: Path):
    return tmp_path


def test_receiver_state_machine(material, workdir, figures):
    commit, objs, empty = material

    @RECEIVER
    @given(receiver_streams(commit, objs))
    def run(data: bytes) -> None:
        COUNT["receiver"] += 1
        with tempfile.TemporaryDirectory(dir=workdir) as d:
            root = Path(d)
            repo = root / "srv"
            shutil.copytree(empty, repo, symlinks=True)
            rfd, wfd = _memfd(data), os.memfd_create("treeship-fuzz-out")
            try:
                try:
                    Receiver(str(repo), Policy(), None, rfd, wfd, timeout=None).run()
                    failed = False
                except TreeshipError:
                    failed = True
                os.lseek(wfd, 0, os.SEEK_SET)
                out = b""
                while chunk := os.read(wfd, 1 << 16):
                    out += chunk
            finally:
                os.close(rfd)
                os.close(wfd)
            answers = parse_frames(out)
            if failed:
                COUNT["receiver_errors"] += 1
                assert answers and answers[-1][0] == wire.ERROR, answers
            assert sorted(p.name for p in root.iterdir()) == ["srv"]  # nothing beside the repository
            moved = Repo.open(repo).refs()
            if moved:
                COUNT["receiver_landed"] += 1
                assert moved == {"main/x": commit}, moved
                assert commit not in partial_commits(repo) and Repo.open(repo).check_closure(commit) is None
            assert list((repo / "tmp").glob("treeship-receive-*")) == []
            fsck(repo)

    run()
    figures.append({"kind": "fuzz", "reader_streams": COUNT["reader"], "receiver_streams": COUNT["receiver"],
                    "receiver_rejected_with_error": COUNT["receiver_errors"],
                    "receiver_landed_the_real_push": COUNT["receiver_landed"], "failures": 0})
