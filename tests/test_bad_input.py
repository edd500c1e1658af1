"""Bad input: one line on stderr naming the culprit, the documented exit code, the repo unchanged.

Every failing command here runs against a repository that already holds a release, and
the test checks afterwards, with the `ostree` CLI, that no ref moved, no object (commit or
other) became visible, and `ostree fsck` is clean. Where a failure happens inside the
repository transaction (a signing key that fails late, a special file met halfway through
the walk, a full disk), it also checks that nothing staged by the failed attempt turns up
later, when the next release commits its own transaction.
"""

from __future__ import annotations

import copy
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import EXAMPLE_MANIFEST, make_tree, ostree, treeship_command

BRANCH = "demo/x86_64"

# -- helpers shared with test_tar.py --------------------------------------------------------


@dataclass(frozen=True)
class RepoState:
    """What a reader of the repository can see: its refs and its object files."""

    refs: dict[str, str]
    objects: frozenset[str]


def _run(prefix: Sequence[str], *cmd: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, *map(str, cmd)], capture_output=True, text=True, timeout=300, check=False)


def repo_state(repo: Path, prefix: Sequence[str] = ()) -> RepoState:
    """Refs (through `ostree refs`/`rev-parse`), object files, and `ostree fsck` must be clean.

    ``prefix`` runs the commands elsewhere (in another mount namespace, say).
    """
    fsck = _run(prefix, "ostree", "fsck", "--repo", repo)
    assert fsck.returncode == 0 and "no errors found" in fsck.stdout, fsck.stdout + fsck.stderr
    names = _run(prefix, "ostree", "refs", "--repo", repo).stdout.split()
    refs = {n: _run(prefix, "ostree", "rev-parse", "--repo", repo, n).stdout.strip() for n in names}
    found = _run(prefix, "find", Path(repo) / "objects", "-type", "f", "-printf", "%P\\n")
    assert found.returncode == 0, found.stderr
    return RepoState(refs, frozenset(found.stdout.split()))


def assert_unchanged(repo: Path, before: RepoState, prefix: Sequence[str] = ()) -> None:
    after = repo_state(repo, prefix)
    assert after.refs == before.refs, "a ref moved"
    new = sorted(after.objects - before.objects)
    assert not new, f"objects became visible: {new}"
    assert after.objects == before.objects, f"objects disappeared: {sorted(before.objects - after.objects)}"


def assert_error_line(res, *culprits: object) -> str:
    """Exactly one line on stderr, ``treeship: error: ...``, naming every culprit; no stdout."""
    lines = res.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {res.stderr!r}"
    line = lines[0]
    assert line.startswith("treeship: error: "), line
    for c in culprits:
        assert str(c) in line, f"{c!r} not named in {line!r}"
    assert res.stdout == ""
    return line


def assert_nothing_staged_leaks(treeship, repo: Path, tree: Path) -> None:
    """The next successful release must make only its own objects visible.

    libostree reuses an aborted transaction's staging directory: whatever the failed
    attempt wrote (an unsigned commit, file objects) would be moved into objects/ then.
    """
    treeship("release", tree, "--repo", repo, "--branch", "after/failure", "--allow-unchanged")
    out = ostree("prune", "--repo", repo, "--refs-only", "--no-prune").stdout
    assert "No unreachable objects" in out, out
    ostree("fsck", "--repo", repo)


# Registered under their names, so that test_tar.py can import them without shadowing.
@pytest.fixture(scope="session", name="_base_release")
def base_release_fixture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RepoState]:
    root = tmp_path_factory.mktemp("base-release")
    repo = root / "releases"
    subprocess.run([*treeship_command(), "release", str(make_tree(root / "tree")), "--repo", str(repo),
                    "--branch", BRANCH, "--version", "1.0"], check=True, capture_output=True)
    return repo, repo_state(repo)


@pytest.fixture(name="released")
def released_fixture(_base_release: tuple[Path, RepoState], repo: Path) -> tuple[Path, RepoState]:
    """The test's repo (``repo``), a copy of one holding one release on BRANCH, and its state."""
    shutil.copytree(_base_release[0], repo, symlinks=True)
    return repo, _base_release[1]


# -- SOURCE ---------------------------------------------------------------------------------


def test_missing_source_path(treeship, released, tmp_path):
    repo, before = released
    missing = tmp_path / "no-such-tree"
    res = treeship("release", missing, "--repo", repo, "--branch", BRANCH, rc=3)
    line = assert_error_line(res, missing)
    assert "no such file or directory" in line
    assert_unchanged(repo, before)


def test_source_argument_omitted(treeship, released):
    repo, before = released
    res = treeship("release", "--repo", repo, "--branch", BRANCH, rc=2)
    assert "SOURCE" in assert_error_line(res)
    assert_unchanged(repo, before)


def test_source_is_a_symlink_loop(treeship, released, tmp_path):
    repo, before = released
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    res = treeship("release", loop, "--repo", repo, "--branch", BRANCH, rc=3)
    assert "symlink loop" in assert_error_line(res, loop)
    assert_unchanged(repo, before)


def test_source_is_a_dangling_symlink(treeship, released, tmp_path):
    repo, before = released
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    res = treeship("release", dangling, "--repo", repo, "--branch", BRANCH, rc=3)
    assert "dangling symlink" in assert_error_line(res, dangling)
    assert_unchanged(repo, before)


def _make_chardev(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))


def _make_socket(path: Path) -> None:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))


SPECIAL_FILES: dict[str, tuple[Callable[[Path], None], str]] = {
    "chardev": (_make_chardev, "a character device"),
    "fifo": (os.mkfifo, "a FIFO"),
    "socket": (_make_socket, "a socket"),
}


@pytest.mark.parametrize(("kind", "ownership"), [
    ("chardev", []), ("chardev", ["--keep-ownership"]),
    ("fifo", []), ("fifo", ["--keep-ownership"]),
    ("socket", []),
], ids=["chardev-canonical", "chardev-keep-ownership", "fifo-canonical", "fifo-keep-ownership", "socket-canonical"])
def test_special_file_in_tree(treeship, released, sample_tree, kind, ownership):
    """Named, exit 3, and what the walk had already stored before meeting it stays invisible."""
    repo, before = released
    # Sorted walk: a new file is stored before the special file is met, deep in usr/lib.
    (sample_tree / "aaa-new-file").write_bytes(os.urandom(50_000))
    special = sample_tree / "usr" / "lib" / "zz-special"
    make, described = SPECIAL_FILES[kind]
    make(special)
    res = treeship("release", sample_tree, "--repo", repo, "--branch", BRANCH, *ownership, rc=3)
    assert described in assert_error_line(res, special)
    assert_unchanged(repo, before)
    special.unlink()
    (sample_tree / "aaa-new-file").unlink()
    assert_nothing_staged_leaks(treeship, repo, sample_tree)


# -- unreadable SOURCE (as nobody: DAC does not apply to root) ------------------------------


@dataclass
class AsNobody:
    base: Path  # a world-traversable directory (tmp_path's parents are 0700)
    uid: int
    gid: int

    def chown(self, top: Path) -> None:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
                os.lchown(name, self.uid, self.gid)

    def treeship(self, *args: str | os.PathLike[str]):
        cmd = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
               *treeship_command(), *map(str, args)]
        env = {k: v for k, v in os.environ.items() if k != "TREESHIP_REPO"}
        env["HOME"] = str(self.base)
        return subprocess.run(cmd, capture_output=True, text=True, cwd=self.base, env=env, timeout=300, check=False)


@pytest.fixture
def as_nobody(_base_release: tuple[Path, RepoState]) -> Iterator[AsNobody]:
    if os.geteuid() != 0:
        pytest.skip("needs root, to run the CLI as nobody (as root, file permissions do not apply)")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="treeship-nobody-", dir="/tmp"))
    try:
        base.chmod(0o755)
        who = AsNobody(base, nobody.pw_uid, nobody.pw_gid)
        probe = who.treeship("--version")
        if probe.returncode != 0:
            pytest.skip(f"nobody cannot run treeship here: {probe.stderr.strip()}")
        shutil.copytree(_base_release[0], base / "releases", symlinks=True)
        who.chown(base / "releases")
        yield who
    finally:
        shutil.rmtree(base)


UNREADABLE = {"source-dir": ".", "file": "etc/os-release", "subdir": "usr/lib"}


@pytest.mark.parametrize("ownership", [[], ["--keep-ownership"]], ids=["canonical", "keep-ownership"])
@pytest.mark.parametrize("what", UNREADABLE)
def test_unreadable_source(as_nobody, what, ownership):
    repo = as_nobody.base / "releases"
    before = repo_state(repo)  # as root: nobody owns it now
    tree = make_tree(as_nobody.base / "tree")
    (tree / "etc" / "new").write_text("a change, so that the release would not be 'unchanged'\n")
    as_nobody.chown(tree)
    culprit = tree / UNREADABLE[what]
    culprit.chmod(0)
    res = as_nobody.treeship("release", tree, "--repo", repo, "--branch", BRANCH, *ownership)
    assert res.returncode == 3, res.stderr
    line = assert_error_line(res, os.path.normpath(culprit))
    assert "ermission denied" in line
    assert_unchanged(repo, before)


# -- branch names ---------------------------------------------------------------------------

BAD_BRANCHES = {
    "space": "a b",
    "dotdot-start": "../x",
    "absolute": "/abs",
    "trailing-slash": "x/",
    "empty": "",
    "double-slash": "a//b",
    "leading-dash": "-x",
    "colon": "remote:branch",
    "newline": "a\nb",
    "control-char": "a\x01b",
    "escape": "a\x1b[31mred",
}


@pytest.mark.parametrize("name", BAD_BRANCHES.values(), ids=BAD_BRANCHES.keys())
def test_bad_branch_name(treeship, released, sample_tree, name):
    repo, before = released
    res = treeship("release", sample_tree, "--repo", repo, f"--branch={name}", rc=2)
    line = assert_error_line(res, "invalid branch name", repr(name))
    assert line.isprintable()
    assert_unchanged(repo, before)


@pytest.mark.parametrize("name", ["a..b", "stage3-sysroot/x86_64", "v1.0/release_candidate-2"])
def test_branch_names_ostree_accepts_are_accepted(treeship, released, sample_tree, name):
    """OSTree allows '..' inside a component (only a '..' component is a path escape)."""
    repo, _ = released
    out = treeship("release", sample_tree, "--repo", repo, f"--branch={name}", "--json").json()
    assert ostree("rev-parse", "--repo", repo, name).stdout.strip() == out["commit"]
    assert name in ostree("refs", "--repo", repo).stdout.split()


# -- provenance manifests -------------------------------------------------------------------


def _manifest(**changes) -> str:
    m = copy.deepcopy(EXAMPLE_MANIFEST)
    for key, value in changes.items():
        if value is None:
            del m[key]
        else:
            m[key] = value
    return json.dumps(m, indent=1)


def _element_change(index: int, **fields) -> str:
    m = copy.deepcopy(EXAMPLE_MANIFEST)
    m["elements"][index].update(fields)
    return json.dumps(m, indent=1)


def _bad_source_commit() -> str:
    m = copy.deepcopy(EXAMPLE_MANIFEST)
    m["elements"][0]["sources"][0]["commit"] = "not-a-hex-commit"
    return json.dumps(m, indent=1)


def _duplicate_element() -> str:
    m = copy.deepcopy(EXAMPLE_MANIFEST)
    m["elements"].append(copy.deepcopy(m["elements"][0]))
    return json.dumps(m, indent=1)


BAD_MANIFESTS: dict[str, tuple[str, str | bytes, list[str]]] = {
    # id: (file name, content, what the error line must say besides the file name)
    "invalid-json": ("p.json", '{\n "schema": "treeship.provenance/v1",\n "elements": [,]\n}\n',
                     ["not valid JSON", "line 3, column 15"]),
    "invalid-yaml": ("p.yaml", "schema: treeship.provenance/v1\n  elements: [\n", ["not valid YAML", "line 2"]),
    "empty-yaml": ("p.yaml", "", ["must be a mapping"]),
    "not-utf8": ("p.json", b'{"schema": "\xff\xfe"}', ["cannot read"]),
    "wrong-schema": ("p.json", _manifest(schema="treeship.provenance/v2"), ["$.schema"]),
    "missing-elements": ("p.json", _manifest(elements=None), ["'elements' is a required property"]),
    "cache-key-not-hex": ("p.json", _element_change(0, cache_key="z" * 64), ["$.elements[0].cache_key"]),
    "source-commit-not-hex": ("p.json", _bad_source_commit(), ["$.elements[0].sources[0].commit"]),
    "element-without-name": ("p.json", _element_change(0, name=""), ["$.elements[0].name"]),
    "duplicate-element": ("p.json", _duplicate_element(), ["bootstrap/gcc.bst", "more than once"]),
    "a-list": ("p.json", json.dumps([EXAMPLE_MANIFEST]), ["must be a mapping, not list"]),
}


@pytest.mark.parametrize("case", BAD_MANIFESTS)
def test_malformed_manifest(treeship, released, sample_tree, tmp_path, case):
    repo, before = released
    name, content, expected = BAD_MANIFESTS[case]
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    res = treeship("release", sample_tree, "--repo", repo, "--branch", BRANCH, "--provenance", path, rc=4)
    assert_error_line(res, path, *expected)
    assert_unchanged(repo, before)


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_manifest_file_missing_or_a_directory(treeship, released, sample_tree, tmp_path, kind):
    repo, before = released
    path = tmp_path / "provenance.json"
    if kind == "directory":
        path.mkdir()
    res = treeship("release", sample_tree, "--repo", repo, "--branch", BRANCH, "--provenance", path, rc=4)
    assert_error_line(res, path)
    assert_unchanged(repo, before)


# -- signing keys ---------------------------------------------------------------------------


def test_unknown_gpg_key(treeship, released, sample_tree, gpg_key):
    repo, before = released
    res = treeship("release", sample_tree, "--repo", repo, "--branch", BRANCH, "--allow-unchanged",
                   "--gpg-sign", "0123456789ABCDEF0123456789ABCDEF01234567", "--gpg-homedir", gpg_key.homedir, rc=6)
    assert_error_line(res, "0123456789ABCDEF0123456789ABCDEF01234567", gpg_key.homedir)
    assert_unchanged(repo, before)


def test_gpg_homedir_does_not_exist(treeship, released, sample_tree, gpg_key, tmp_path):
    repo, before = released
    res = treeship("release", sample_tree, "--repo", repo, "--branch", BRANCH, "--allow-unchanged",
                   "--gpg-sign", gpg_key.fingerprint, "--gpg-homedir", tmp_path / "no-gnupg", rc=6)
    assert_error_line(res, tmp_path / "no-gnupg")
    assert_unchanged(repo, before)


@pytest.fixture(scope="session")
def expired_gpg_key(tmp_path_factory: pytest.TempPathFactory):
    """A secret key that GnuPG lists (so it passes treeship's early check) but cannot sign with."""
    home = tmp_path_factory.mktemp("gpg-expired") / "home"
    home.mkdir(mode=0o700)
    subprocess.run(["gpg", "--homedir", home, "--batch", "--passphrase", "", "--faked-system-time",
                    "20200101T000000", "--quick-gen-key", "Expired Signer <expired@example.org>", "ed25519",
                    "sign", "1d"], check=True, capture_output=True)
    out = subprocess.run(["gpg", "--homedir", home, "--batch", "--with-colons", "--list-secret-keys"],
                         check=True, capture_output=True, text=True).stdout
    fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
    yield home, fpr
    subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], check=False, capture_output=True)


def test_gpg_signing_fails_inside_the_transaction(treeship, released, sample_tree, expired_gpg_key):
    """The commit is written, then signing fails: the ref stays, the unsigned commit never shows."""
    repo, before = released
    home, fpr = expired_gpg_key
    res = treeship("release", sample_tree, "--repo", repo, "--branch", BRANCH, "--allow-unchanged",
                   "--gpg-sign", fpr, "--gpg-homedir", home, rc=6)
    assert_error_line(res, fpr)
    assert_unchanged(repo, before)
    assert_nothing_staged_leaks(treeship, repo, sample_tree)


def _ed25519_secret(kind: str, tmp_path: Path, good: Path) -> Path:
    import base64

    p = tmp_path / f"{kind}.secret"
    raw = base64.b64decode(good.read_text())
    if kind == "not-base64":
        p.write_text("this is not base64!\n")
    elif kind == "seed-only":
        p.write_text(base64.b64encode(raw[:32]).decode() + "\n")
    elif kind == "seed-public-mismatch":
        p.write_text(base64.b64encode(raw[:32] + bytes(32)).decode() + "\n")
    elif kind == "empty":
        p.touch()
    elif kind == "binary":
        p.write_bytes(b"\xff" * 64)
    elif kind == "directory":
        p.mkdir()
    elif kind != "missing":
        raise AssertionError(kind)
    return p


ED25519_BAD = {
    "not-base64": "not a base64",
    "seed-only": "64 bytes",
    "seed-public-mismatch": "does not match",
    "empty": "exactly one",
    "binary": "cannot read",
    "directory": "cannot read",
    "missing": "no such",
}


@pytest.mark.parametrize("kind", ED25519_BAD)
def test_bad_ed25519_secret_key(treeship, released, sample_tree, tmp_path, ed25519_key, kind):
    repo, before = released
    key = _ed25519_secret(kind, tmp_path, ed25519_key.secret)
    res = treeship("release", sample_tree, "--repo", repo, "--branch", BRANCH, "--allow-unchanged",
                   "--sign-ed25519", ed25519_key.secret, "--sign-ed25519", key, rc=6)
    assert ED25519_BAD[kind] in assert_error_line(res, key)
    assert_unchanged(repo, before)


# -- the repository -------------------------------------------------------------------------


def _commands(tree: Path, pubkey: Path) -> dict[str, list[str | Path]]:
    return {
        "release": ["release", tree, "--branch", BRANCH],
        "log": ["log", BRANCH],
        "show": ["show", BRANCH],
        "verify": ["verify", BRANCH, "--ed25519-pubkey", pubkey],
    }


COMMANDS = ["release", "log", "show", "verify"]


@pytest.mark.parametrize("command", COMMANDS)
def test_repo_is_a_regular_file(treeship, sample_tree, ed25519_key, tmp_path, command):
    not_repo = tmp_path / "releases"
    not_repo.write_text("just a file\n")
    args = _commands(sample_tree, ed25519_key.public)[command]
    res = treeship(*args, "--repo", not_repo, rc=5)
    assert_error_line(res, not_repo)
    assert not_repo.read_text() == "just a file\n"


@pytest.mark.parametrize("command", ["release", "log"])
def test_repo_is_a_non_empty_directory(treeship, sample_tree, ed25519_key, tmp_path, command):
    not_repo = tmp_path / "releases"
    (not_repo / "sub").mkdir(parents=True)
    (not_repo / "notes.txt").write_text("mine\n")
    args = _commands(sample_tree, ed25519_key.public)[command]
    res = treeship(*args, "--repo", not_repo, rc=5)
    assert_error_line(res, not_repo, "not an OSTree repository")
    assert sorted(p.name for p in not_repo.rglob("*")) == ["notes.txt", "sub"]


@pytest.mark.parametrize(("command", "garbage"), [
    ("release", b"[core]\nrepo_version=1\nmode=archive-z2\ngarbage: not a key-value pair\n"),
    ("log", b"[core]\nrepo_version=1\nmode=archive-z2\ngarbage: not a key-value pair\n"),
    ("release", b"\xff\xfe\x00\x01 binary junk"),
], ids=["release-garbage-line", "log-garbage-line", "release-binary"])
def test_repo_with_corrupted_config(treeship, released, sample_tree, ed25519_key, command, garbage):
    repo, before = released
    config = (repo / "config").read_bytes()
    (repo / "config").write_bytes(garbage)
    args = _commands(sample_tree, ed25519_key.public)[command]
    res = treeship(*args, "--repo", repo, rc=5)
    assert "not a usable OSTree repository" in assert_error_line(res, repo)
    if b"\n" in garbage:
        assert "config" in res.stderr
    (repo / "config").write_bytes(config)
    assert_unchanged(repo, before)


@pytest.mark.parametrize("command", ["log", "show", "verify"])
def test_repo_missing(treeship, sample_tree, ed25519_key, tmp_path, command):
    args = _commands(sample_tree, ed25519_key.public)[command]
    res = treeship(*args, "--repo", tmp_path / "nowhere", rc=5)
    assert_error_line(res, tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("command", ["log", "show", "verify"])
def test_unknown_ref(treeship, released, sample_tree, ed25519_key, command):
    repo, before = released
    args = _commands(sample_tree, ed25519_key.public)[command]
    args[1] = "no/such-branch"
    res = treeship(*args, "--repo", repo, rc=5)
    assert_error_line(res, "no/such-branch")
    assert_unchanged(repo, before)


def test_show_provenance_of_a_release_without_one(treeship, released):
    repo, before = released
    res = treeship("show", BRANCH, "--provenance", "--repo", repo, rc=4)
    assert "no provenance" in assert_error_line(res, BRANCH)
    assert_unchanged(repo, before)


# -- a full disk ----------------------------------------------------------------------------


@dataclass
class SmallFs:
    """A 3 MB tmpfs, mounted directly (root) or in a user+mount namespace entered per command."""

    path: Path
    prefix: list[str]

    def run(self, *cmd: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
        return _run(self.prefix, *cmd)

    def treeship(self, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
        return _run(self.prefix, *treeship_command(), *args)

    def resize(self, size: str) -> None:
        res = self.run("mount", "-o", f"remount,size={size}", self.path)
        assert res.returncode == 0, res.stderr


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[SmallFs]:
    """TREESHIP_TEST_SMALLFS=userns forces the namespace way, to test it as root."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    why = []
    if os.geteuid() == 0 and os.environ.get("TREESHIP_TEST_SMALLFS") != "userns":
        res = _run((), "mount", "-t", "tmpfs", "-o", "size=3m,mode=0755", "tmpfs", mnt)
        if res.returncode == 0:
            try:
                yield SmallFs(mnt, [])
            finally:
                if _run((), "umount", mnt).returncode != 0:
                    _run((), "umount", "-l", mnt)
            return
        why.append(f"mount: {res.stderr.strip()}")
    if shutil.which("unshare") and shutil.which("nsenter"):
        # The namespace lives as long as this shell, which waits on its stdin.
        holder = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
             'mount -t tmpfs -o size=3m,mode=0755 tmpfs "$1" && echo mounted && exec cat', "sh", str(mnt)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert holder.stdin is not None and holder.stdout is not None and holder.stderr is not None
        try:
            if holder.stdout.readline().strip() == "mounted":
                yield SmallFs(mnt, ["nsenter", f"--target={holder.pid}", "--user", "--mount",
                                    "--preserve-credentials"])
                return
            why.append(f"unshare: {holder.stderr.read().strip()}")
        finally:
            holder.stdin.close()
            holder.wait(timeout=60)
    else:
        why.append("no unshare/nsenter")
    pytest.skip("cannot make a small filesystem: " + "; ".join(why))


@pytest.fixture
def big_tree(tmp_path: Path) -> Path:
    """8.6 MB of incompressible data: more than the small filesystem holds."""
    tree = tmp_path / "big"
    (tree / "data").mkdir(parents=True)
    for i in range(3):
        (tree / "data" / f"part{i}").write_bytes(os.urandom(1_200_000))
    (tree / "data" / "zz-huge").write_bytes(os.urandom(5_000_000))
    return tree


def _assert_no_space(res: subprocess.CompletedProcess[str], *culprits: object) -> None:
    assert res.returncode == 8, f"exit {res.returncode}: {res.stderr}"
    assert "no space left on device" in assert_error_line(res, *culprits)


@pytest.mark.parametrize("ownership", [[], ["--keep-ownership"]], ids=["canonical", "keep-ownership"])
def test_full_disk_then_recovery(small_fs, sample_tree, big_tree, ownership):
    repo = small_fs.path / "releases"
    first = small_fs.treeship("release", sample_tree, "--repo", repo, "--branch", BRANCH, *ownership)
    assert first.returncode == 0, first.stderr
    before = repo_state(repo, small_fs.prefix)

    res = small_fs.treeship("release", big_tree, "--repo", repo, "--branch", BRANCH, *ownership)
    _assert_no_space(res, repo)
    assert_unchanged(repo, before, small_fs.prefix)
    res = small_fs.treeship("release", big_tree, "--repo", repo, "--branch", "new/branch", *ownership)
    _assert_no_space(res, repo)
    assert_unchanged(repo, before, small_fs.prefix)

    # A small release still fits; after making room, the big one goes in too.
    (sample_tree / "etc" / "new").write_text("changed\n")
    res = small_fs.treeship("release", sample_tree, "--repo", repo, "--branch", BRANCH, *ownership)
    assert res.returncode == 0, res.stderr
    small_fs.resize("32m")
    res = small_fs.treeship("release", big_tree, "--repo", repo, "--branch", BRANCH, *ownership)
    assert res.returncode == 0, res.stderr
    after = repo_state(repo, small_fs.prefix)
    assert after.refs[BRANCH] != before.refs[BRANCH]
    assert "new/branch" not in after.refs


@pytest.mark.parametrize("ownership", [[], ["--keep-ownership"]], ids=["canonical", "keep-ownership"])
def test_enospc_midway_gives_the_space_back(small_fs, sample_tree, big_tree, tmp_path, ownership):
    """With libostree's free-space reserve off, the write itself hits ENOSPC, after some
    objects were staged: none of them may stay, so a 2 MB release right after must fit."""
    repo = small_fs.path / "releases"
    res = small_fs.treeship("release", sample_tree, "--repo", repo, "--branch", BRANCH, *ownership)
    assert res.returncode == 0, res.stderr
    res = small_fs.run("ostree", "config", "--repo", repo, "set", "core.min-free-space-percent", "0")
    assert res.returncode == 0, res.stderr
    before = repo_state(repo, small_fs.prefix)

    res = small_fs.treeship("release", big_tree, "--repo", repo, "--branch", BRANCH, *ownership)
    _assert_no_space(res, repo)
    assert_unchanged(repo, before, small_fs.prefix)
    leftovers = small_fs.run("find", repo / "tmp", "-mindepth", "1", "-not", "-path", "*/cache*")
    assert leftovers.stdout == "", f"left in tmp/: {leftovers.stdout}"

    medium = tmp_path / "medium"
    medium.mkdir()
    (medium / "blob").write_bytes(os.urandom(2_000_000))
    res = small_fs.treeship("release", medium, "--repo", repo, "--branch", BRANCH, *ownership)
    assert res.returncode == 0, res.stderr
    out = small_fs.run("ostree", "prune", "--repo", repo, "--refs-only", "--no-prune").stdout
    assert "No unreachable objects" in out, out
    repo_state(repo, small_fs.prefix)  # fsck clean


def test_full_disk_while_unpacking_a_tar(small_fs, sample_tree, big_tree, tmp_path):
    """Archives are unpacked in the repo's tmp/: a full disk there is a storage error too."""
    import tarfile

    repo = small_fs.path / "releases"
    res = small_fs.treeship("release", sample_tree, "--repo", repo, "--branch", BRANCH)
    assert res.returncode == 0, res.stderr
    before = repo_state(repo, small_fs.prefix)
    archive = tmp_path / "big.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(big_tree, arcname=".")
    res = small_fs.treeship("release", archive, "--repo", repo, "--branch", BRANCH)
    _assert_no_space(res, archive)
    assert_unchanged(repo, before, small_fs.prefix)
    leftovers = small_fs.run("find", repo / "tmp", "-mindepth", "1", "-not", "-path", "*/cache*")
    assert leftovers.stdout == "", f"left in tmp/: {leftovers.stdout}"
