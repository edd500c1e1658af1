"""What the push tests share (tests/test_push.py, tests/reliability/, tests/security/).

A plain module, not a conftest: fixtures (``sshd``, ``server``) are re-exported by
tests/conftest.py; the rest are helpers. Every check here goes through the ``ostree`` CLI
(the independent checker) or plain files, never through treeship's own code.

Tests in the packages tests/reliability/ and tests/security/ import ``ostree`` and
``treeship_command`` from here: there, ``import conftest`` would be their own conftest.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from gi.repository import GLib

from conftest import make_tree, ostree, treeship_command
from sshd_server import ClientKey, SshServer
from treeship.transfer import wire

BRANCH = "main/x86_64"

# A stand-in for `ssh` that forwards at most BUDGET bytes of the pusher's stream, then hangs
# up (closes the real ssh's stdin, waits for the remote receiver to finish, exits 255): a
# connection dropped mid-stream, deterministically. Everything else (the receiver's answers,
# stderr) goes straight through, since the real ssh inherits stdout and stderr.
RELAY = """\
import os, subprocess, sys
budget = int(sys.argv[1])
child = subprocess.Popen(sys.argv[2:], stdin=subprocess.PIPE)
while budget > 0:
    data = os.read(0, min(budget, 1 << 16))
    if not data:
        break
    child.stdin.write(data)
    child.stdin.flush()
    budget -= len(data)
child.stdin.close()
rc = child.wait()
sys.exit(255 if budget <= 0 else rc)
"""


# -- fixtures (re-exported by conftest.py) ----------------------------------------------------


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    """One real sshd for the session; each test authorizes its own keys and repositories."""
    with SshServer(tmp_path_factory.mktemp("sshd"), path_dirs=[str(Path(treeship_command()[0]).parent)]) as server:
        yield server


@dataclass
class Server:
    """A server repository behind one client key whose forced command names it."""

    repo: Path
    key: ClientKey

    @property
    def url(self) -> str:
        # Deliberately not the repository: a forced command ignores what the client asks for.
        return self.key.url(self.repo.parent / "not-this-path")

    @property
    def ssh(self) -> str:
        return self.key.ssh_command


@pytest.fixture
def server(sshd: SshServer, tmp_path: Path):
    """A factory: ``server(policy_toml=None, name=...)`` → an archive repo behind a new key."""

    def make(policy: str | None = None, name: str = "server", key_id: str = "alice") -> Server:
        repo = tmp_path / name
        ostree("init", "--repo", repo, "--mode=archive")
        cmd = f"treeship receive --repo {shlex.quote(str(repo))} --key-id {key_id}"
        if policy is not None:
            config = tmp_path / f"{name}.toml"
            config.write_text(policy)
            cmd += f" --config {shlex.quote(str(config))}"
        return Server(repo, sshd.add_key(f'restrict,command="{cmd}"'))

    return make


# -- judging a repository ---------------------------------------------------------------------


def refs(repo: Path) -> dict[str, str]:
    names = ostree("refs", "--repo", repo).stdout.split()
    return {n: ostree("rev-parse", "--repo", repo, n).stdout.strip() for n in names}


def fsck(repo: Path) -> None:
    p = ostree("fsck", "--repo", repo, check=False)
    assert p.returncode == 0, f"ostree fsck failed:\n{p.stdout}\n{p.stderr}"


def objects(repo: Path) -> dict[str, int]:
    """Every file under objects/ and its size."""
    root = repo / "objects"
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def no_session_leftovers(repo: Path) -> None:
    """The receiver's private session directories are gone once it has exited."""
    assert list((repo / "tmp").glob("treeship-receive-*")) == []


def partial_commits(repo: Path) -> set[str]:
    """Commits marked partial (libostree's state/*.commitpartial): their closure is not known complete."""
    return {p.name.removesuffix(".commitpartial") for p in (repo / "state").glob("*.commitpartial")}


def receiver_loaded_libostree(trace: Path) -> bool:
    """Whether the receiver's process imported treeship.repo (it marks the trace: repo/core.py)."""
    lines = [line.split(" ", 2) for line in trace.read_text().splitlines()]
    receivers = {pid for _, pid, phase in lines if phase == "receiver: started"}
    assert receivers
    return any(pid in receivers and phase == "libostree loaded" for _, pid, phase in lines)


def refs_complete(repo: Path) -> None:
    """No ref points at an incomplete commit: not marked partial, and every object of its tree loads.

    ``ostree ls -R`` reads every dirtree and every file's header; ``ostree fsck`` has checked
    the contents of whatever is there.
    """
    partial = partial_commits(repo)
    for name, commit in refs(repo).items():
        assert commit not in partial, f"{name} points at {commit}, marked partial"
        p = ostree("ls", "--repo", repo, "-R", commit, "/", check=False)
        assert p.returncode == 0, f"{name} points at an incomplete commit {commit}: {p.stderr}"


def commitmeta(repo: Path, commit: str) -> bytes:
    return (repo / "objects" / commit[:2] / f"{commit[2:]}.commitmeta").read_bytes()


def tree_objects(repo: Path, commit: str) -> set[str]:
    """Files, dirtrees and dirmetas of a commit, as `ostree ls -R -C` names them."""
    found: set[str] = set()
    for line in ostree("ls", "--repo", repo, "-R", "-C", commit, "/").stdout.splitlines():
        fields = line.split()
        if fields[0].startswith("d"):
            found |= {f"{fields[4]}.dirtree", f"{fields[5]}.dirmeta"}
        else:
            found.add(f"{fields[4]}.file")
    return found


def object_path(repo: Path, name: str) -> Path:
    """``<checksum>.<type>`` → its file in an archive repo (content objects are ``.filez``)."""
    csum, _, kind = name.partition(".")
    return repo / "objects" / csum[:2] / f"{csum[2:]}.{'filez' if kind == 'file' else kind}"


# -- making releases and pushing them ---------------------------------------------------------


def write_tree(root: Path, n: int = 40, tag: str = "1") -> Path:
    """The conftest tree plus ``n`` small documentation files (enough objects to count)."""
    make_tree(root)
    doc = root / "usr" / "share" / "doc"
    doc.mkdir(parents=True)
    for i in range(n):
        (doc / f"file{i:03}.txt").write_text(f"documentation page {i}\n" * (i + 1))
    (root / "etc" / "release-tag").write_text(f"{tag}\n")
    return root


def release(treeship, tree: Path, repo: Path, branch: str = BRANCH, *args: str) -> str:
    return treeship("release", tree, "--repo", repo, "--branch", branch, *args, "--json").json()["commit"]


def push(treeship, local: Path, srv: Server | str, *branches: str, rc: int | None = 0, force: bool = False,
         as_json: bool = True):
    """`treeship push` to a Server (over SSH, with its key) or to a remote name / URL / path."""
    remote = ["--ssh-command", srv.ssh, srv.url] if isinstance(srv, Server) else [srv]
    return treeship("push", "--repo", local, *(["--force"] if force else []), *remote, *branches,
                    *(["--json"] if as_json else []), rc=rc)


def assert_rejected(result, ref: str, reason: str) -> None:
    out = result.stdout + result.stderr
    assert result.returncode == 10
    assert ref in result.stderr and reason in result.stderr, result.stderr
    status = {r["ref"]: r for r in result.json()["refs"]}
    assert status[ref]["status"] == "rejected" and reason in status[ref]["reason"], out


def gvariant_dict(data: bytes) -> dict[str, GLib.Variant]:
    v = GLib.Variant.new_from_bytes(GLib.VariantType.new("a{sv}"), GLib.Bytes.new(data), False)
    return {v.get_child_value(i).get_child_value(0).get_string(): v.get_child_value(i).get_child_value(1).get_variant()
            for i in range(v.n_children())}


def aay(v: GLib.Variant) -> list[bytes]:
    return [bytes(v.get_child_value(i).get_data_as_bytes().get_data() or b"") for i in range(v.n_children())]


def export_gpg(key, dest: Path) -> Path:
    dest.write_bytes(subprocess.run(["gpg", "--homedir", str(key.homedir), "--batch", "--export", key.fingerprint],
                                    check=True, capture_output=True).stdout)
    return dest


# -- crafted streams into `treeship receive` (no pusher) --------------------------------------


def parse_frames(data: bytes) -> list[tuple[bytes, dict]]:
    """The receiver's answer: (type, JSON) per frame."""
    frames = []
    while data:
        ftype, length = data[:1], int.from_bytes(data[1:5], "big")
        frames.append((ftype, wire.Frame(ftype, data[5:5 + length]).json()))
        data = data[5 + length:]
    return frames


def receive(repo: Path, stream: bytes, *args: str, timeout: float = 30,
            env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[int, list[tuple[bytes, dict]], str]:
    """Feed ``stream`` to `treeship receive --repo REPO ARGS`; its exit code, JSON frames, stderr."""
    p = subprocess.run([*treeship_command(), "receive", "--repo", str(repo), "--timeout", str(timeout), *args],
                       input=stream, capture_output=True, timeout=120, check=False,
                       env={**os.environ, **(env or {})}, cwd=cwd)
    return p.returncode, parse_frames(p.stdout), p.stderr.decode()


def hello(version: int = wire.PROTOCOL_VERSION) -> bytes:
    return wire.encode_json(wire.HELLO, {"magic": wire.MAGIC, "protocol": version})


def update(*items: tuple[str, str | None, str | None], force: bool = False) -> bytes:
    """An UPDATE frame: (ref, old, new) per ref."""
    return wire.encode_json(wire.UPDATE, {"updates": [{"ref": r, "old": o, "new": n} for r, o, n in items],
                                          "force": force})


def object_frames(objtype: int, checksum: str, data: bytes, chunk: int = wire.CHUNK) -> bytes:
    """OBJECT, DATA…, END for one object, as the pusher sends it."""
    parts = [wire.encode(wire.OBJECT, bytes([objtype]) + bytes.fromhex(checksum))]
    parts += [wire.encode(wire.DATA, data[i:i + chunk]) for i in range(0, len(data), chunk)]
    parts.append(wire.encode(wire.END))
    return b"".join(parts)


def finish() -> bytes:
    return wire.encode_json(wire.FINISH, {})
