"""`treeship release` and `treeship init`, checked with the `ostree` CLI as the independent judge."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from gi.repository import GLib

from conftest import EXAMPLE_MANIFEST, ostree, treeship_command

BRANCH = "demo/x86_64"


# -- helpers --------------------------------------------------------------------------------


def rev_parse(repo: Path, ref: str) -> str:
    return ostree("rev-parse", "--repo", repo, ref).stdout.strip()


def metadata(repo: Path, ref: str, key: str):
    """One commit metadata value as `ostree show` prints it (GVariant text), unpacked."""
    text = ostree("show", "--repo", repo, ref, f"--print-metadata-key={key}").stdout
    return GLib.Variant.parse(None, text, None, None).unpack()


def root_checksums(repo: Path, ref: str) -> tuple[str, str]:
    """(contents checksum, metadata checksum) of the root directory, as `ostree ls -C` prints them."""
    fields = ostree("ls", "--repo", repo, "-d", "-C", ref, "/").stdout.split()
    assert fields[-1] == "/", fields
    return fields[-3], fields[-2]


def listing(repo: Path, ref: str) -> list[list[str]]:
    """`ostree ls -R -C`: mode, uid, gid, size, checksum(s), path [-> target] per entry."""
    return [line.split() for line in ostree("ls", "--repo", repo, "-R", "-C", ref, "/").stdout.splitlines()]


def repo_mode(repo: Path) -> str:
    mode = ostree("config", "--repo", repo, "get", "core.mode").stdout.strip()
    return "archive" if mode == "archive-z2" else mode  # libostree writes the legacy name


def commit_objects(repo: Path) -> list[Path]:
    return sorted((repo / "objects").glob("*/*.commit"))


def ostree_commit(tree: Path, *extra: str) -> Path:
    """`ostree commit` of ``tree`` into a fresh archive repo next to it; return the repo."""
    other = tree.parent / f"ostree-commit{'-'.join(extra)}"
    ostree("init", "--repo", other, "--mode=archive")
    ostree("commit", "--repo", other, "--branch", BRANCH, *extra, tree)
    return other


def release(treeship, tree: Path, repo: Path, *args: str, rc: int | None = 0, branch: str = BRANCH):
    return treeship("release", tree, "--repo", repo, "--branch", branch, *args, "--json", rc=rc)


# -- releasing a directory --------------------------------------------------------------------


def test_release_is_an_ostree_commit_with_metadata(treeship, sample_tree, repo):
    out = release(treeship, sample_tree, repo, "--version", "1.0").json()

    assert out["commit"] == rev_parse(repo, BRANCH)
    assert out["branch"] == BRANCH
    assert out["version"] == "1.0"
    assert out["parent"] is None
    assert out["subject"] == f"{BRANCH} 1.0"
    assert out["signatures"] == []
    regular = [p for p in sample_tree.rglob("*") if p.is_file() and not p.is_symlink()]
    assert out["files"] == len(regular) == 6
    assert out["bytes"] == sum(p.stat().st_size for p in regular)

    assert "no errors found" in ostree("fsck", "--repo", repo).stdout
    assert repo_mode(repo) == "archive"
    assert metadata(repo, BRANCH, "version") == "1.0"
    assert metadata(repo, BRANCH, "ostree.ref-binding") == [BRANCH]
    # No provenance given: no provenance key.
    assert ostree("show", "--repo", repo, BRANCH, "--print-metadata-key=treeship.provenance", check=False).returncode
    # An unsigned release carries no signature entries at all (no empty ed25519 list either).
    assert not list((repo / "objects").glob("*/*.commitmeta"))

    # The content is the tree: a file and a symlink read back through ostree.
    assert ostree("cat", "--repo", repo, BRANCH, "/etc/os-release").stdout == "NAME=Example\nVERSION=1\n"
    assert "/usr/lib/libfoo.so -> libfoo.so.1" in ostree("ls", "--repo", repo, BRANCH, "/usr/lib").stdout
    # The commit checksum is the sha256 of the .commit object.
    (obj,) = commit_objects(repo)
    assert hashlib.sha256(obj.read_bytes()).hexdigest() == out["commit"]
    assert obj.name == out["commit"][2:] + ".commit"


def test_second_release_has_first_as_parent(treeship, sample_tree, repo):
    first = release(treeship, sample_tree, repo, "--version", "1").json()["commit"]
    (sample_tree / "etc" / "os-release").write_text("NAME=Example\nVERSION=2\n")
    second = release(treeship, sample_tree, repo, "--version", "2").json()

    assert second["parent"] == first
    assert rev_parse(repo, BRANCH) == second["commit"]
    assert rev_parse(repo, f"{BRANCH}^") == first
    log = ostree("log", "--repo", repo, BRANCH).stdout
    assert log.index(f"commit {second['commit']}") < log.index(f"commit {first}")
    assert metadata(repo, f"{BRANCH}^", "version") == "1"
    assert metadata(repo, BRANCH, "version") == "2"
    assert "no errors found" in ostree("fsck", "--repo", repo).stdout


def test_subject_and_body(treeship, sample_tree, repo):
    release(treeship, sample_tree, repo, "--version", "3.1", "--subject", "Stage 3 sysroot, November",
            "--body", "Built from baserock.\nSecond line.")
    shown = ostree("show", "--repo", repo, BRANCH).stdout.splitlines()
    assert "    Stage 3 sysroot, November" in shown
    i = shown.index("    Built from baserock.")
    assert shown[i + 1] == "    Second line."
    assert "    demo/x86_64 3.1" not in shown


def test_branch_named_like_a_path_on_fresh_dir_repo(treeship, sample_tree, tmp_path):
    # An existing, empty directory becomes an archive repository.
    repo = tmp_path / "empty-dir-repo"
    repo.mkdir()
    out = release(treeship, sample_tree, repo, "--version", "1", branch="stage3-sysroot/x86_64/v1").json()
    assert rev_parse(repo, "stage3-sysroot/x86_64/v1") == out["commit"]
    assert (repo / "refs" / "heads" / "stage3-sysroot" / "x86_64" / "v1").read_text().strip() == out["commit"]


def test_human_output(treeship, sample_tree, repo, manifest_file):
    out = treeship("release", sample_tree, "--repo", repo, "-b", BRANCH, "--version", "7",
                   "--provenance", manifest_file).stdout
    commit = rev_parse(repo, BRANCH)
    assert f"Released {BRANCH} 7 as {commit}" in out
    assert "2 elements" in out
    assert "unsigned" in out


# -- canonical permissions and ownership ----------------------------------------------------


def permission_tree(root: Path) -> Path:
    root.mkdir()
    files = {"f0700": 0o700, "f0711": 0o711, "f0640": 0o640, "f0600": 0o600, "f0444": 0o444,
             "f4755": 0o4755, "f0666": 0o666, "f0755": 0o755}
    for name, mode in files.items():
        (root / name).write_text(f"{name}\n")
        (root / name).chmod(mode)
    for name, mode in {"d2775": 0o2775, "d0700": 0o700, "d1777": 0o1777, "empty-dir": 0o755}.items():
        (root / name).mkdir()
        (root / name).chmod(mode)
    (root / "d2775" / "inner").write_text("in a setgid dir\n")
    (root / "d0700" / "sub").mkdir()
    (root / "d0700" / "sub" / "empty").touch()
    (root / "empty").touch()
    (root / "empty").chmod(0o644)
    (root / "link").symlink_to("f0700")
    (root / "dirlink").symlink_to("d2775")
    (root / "dangling").symlink_to("/nonexistent/target")
    os.chown(root / "f0640", 1234, 5678)
    os.chown(root / "d0700", 4321, 8765)
    os.lchown(root / "link", 1234, 5678)
    root.chmod(0o755)
    return root


def test_canonical_permissions_identical_to_ostree_commit(treeship, tmp_path, repo):
    tree = permission_tree(tmp_path / "perms")
    release(treeship, tree, repo, "--version", "1")
    reference = ostree_commit(tree, "--canonical-permissions")

    assert root_checksums(repo, BRANCH) == root_checksums(reference, BRANCH)
    assert listing(repo, BRANCH) == listing(reference, BRANCH)

    entries = {e[-1] if "->" not in e else e[-3]: e for e in listing(repo, BRANCH)}
    assert all(e[1:3] == ["0", "0"] for e in entries.values()), entries
    modes = {path: e[0] for path, e in entries.items()}
    assert modes["/f4755"] == "-00755"  # setuid dropped
    assert modes["/f0640"] == "-00640"
    assert modes["/f0600"] == "-00600"
    assert modes["/f0711"] == "-00711"
    assert modes["/f0444"] == "-00444"
    assert modes["/f0666"] == "-00644"  # group/other write dropped
    assert modes["/d2775"] == "d00755"  # setgid and group write dropped
    assert modes["/d1777"] == "d00755"
    assert modes["/d0700"] == "d00700"
    assert modes["/link"] == "l00777"
    assert entries["/dangling"][-1] == "/nonexistent/target"
    assert "/d0700/sub/empty" in entries and "/empty-dir" in entries


def test_keep_ownership_identical_to_plain_ostree_commit(treeship, tmp_path, repo):
    tree = permission_tree(tmp_path / "perms")
    release(treeship, tree, repo, "--version", "1", "--keep-ownership")
    reference = ostree_commit(tree)

    assert root_checksums(repo, BRANCH) == root_checksums(reference, BRANCH)
    assert listing(repo, BRANCH) == listing(reference, BRANCH)
    entries = {e[-1] if "->" not in e else e[-3]: e for e in listing(repo, BRANCH)}
    assert entries["/f0640"][:3] == ["-00640", "1234", "5678"]
    assert entries["/f4755"][0] == "-04755"
    assert entries["/d2775"][0] == "d02775"
    assert entries["/d0700"][:3] == ["d00700", "4321", "8765"]
    # ...and it differs from the canonical form of the same tree.
    canonical = ostree_commit(tree, "--canonical-permissions")
    assert root_checksums(repo, BRANCH) != root_checksums(canonical, BRANCH)


def test_sample_tree_canonical_matches_ostree(treeship, sample_tree, repo):
    release(treeship, sample_tree, repo, "--version", "1")
    reference = ostree_commit(sample_tree, "--canonical-permissions")
    assert root_checksums(repo, BRANCH) == root_checksums(reference, BRANCH)


# -- provenance in the commit and in the tree -----------------------------------------------


def test_provenance_is_in_the_commit_metadata(treeship, sample_tree, repo, manifest_file):
    out = release(treeship, sample_tree, repo, "--version", "1", "--provenance", manifest_file).json()
    assert out["elements"] == 2
    stored = metadata(repo, BRANCH, "treeship.provenance")
    assert json.loads(stored) == EXAMPLE_MANIFEST
    # Metadata lives inside the .commit object, whose sha256 is the commit checksum.
    (obj,) = commit_objects(repo)
    data = obj.read_bytes()
    assert hashlib.sha256(data).hexdigest() == out["commit"]
    assert stored.encode() in data


def test_manifest_path_puts_json_in_tree(treeship, sample_tree, repo, manifest_file):
    release(treeship, sample_tree, repo, "--version", "1", "--provenance", manifest_file,
            "--manifest-path", "usr/share/treeship/provenance.json")
    text = ostree("cat", "--repo", repo, BRANCH, "/usr/share/treeship/provenance.json").stdout
    assert json.loads(text) == EXAMPLE_MANIFEST
    assert text == metadata(repo, BRANCH, "treeship.provenance")
    (entry,) = [e for e in listing(repo, BRANCH) if e[-1] == "/usr/share/treeship/provenance.json"]
    assert entry[:3] == ["-00644", "0", "0"]
    # The existing tree is still all there, and the parent dirs are root-owned 0755.
    dirs = {e[-1]: e for e in listing(repo, BRANCH) if e[0].startswith("d")}
    assert dirs["/usr/share"][:3] == ["d00755", "0", "0"]
    assert dirs["/usr/share/treeship"][:3] == ["d00755", "0", "0"]
    assert "/usr/bin" in dirs
    assert "no errors found" in ostree("fsck", "--repo", repo).stdout


# -- unchanged trees --------------------------------------------------------------------------


def test_unchanged_tree_is_refused_and_ref_stays(treeship, sample_tree, repo):
    first = release(treeship, sample_tree, repo, "--version", "1").json()["commit"]
    res = release(treeship, sample_tree, repo, "--version", "2", rc=9)
    assert "identical" in res.stderr and "--allow-unchanged" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.stderr
    assert rev_parse(repo, BRANCH) == first
    assert len(commit_objects(repo)) == 1
    assert "no errors found" in ostree("fsck", "--repo", repo).stdout

    again = release(treeship, sample_tree, repo, "--version", "2", "--allow-unchanged").json()
    assert again["commit"] != first
    assert again["parent"] == first
    assert rev_parse(repo, BRANCH) == again["commit"]
    assert root_checksums(repo, BRANCH) == root_checksums(repo, first)
    assert metadata(repo, BRANCH, "version") == "2"


def test_unchanged_is_per_branch(treeship, sample_tree, repo):
    release(treeship, sample_tree, repo, "--version", "1")
    # The same tree on another branch is a first release there, not "unchanged".
    out = release(treeship, sample_tree, repo, "--version", "1", branch="other/x86_64").json()
    assert out["parent"] is None
    assert root_checksums(repo, "other/x86_64") == root_checksums(repo, BRANCH)


# -- init, $TREESHIP_REPO, ./releases ---------------------------------------------------------


def test_init_bare_user(treeship, sample_tree, repo):
    out = treeship("init", "--repo", repo, "--mode", "bare-user", "--json").json()
    assert out["mode"] == "bare-user" and out["created"] is True and out["collection_id"] is None
    assert repo_mode(repo) == "bare-user"
    release(treeship, sample_tree, repo, "--version", "1")
    assert "no errors found" in ostree("fsck", "--repo", repo).stdout
    # The release went into the existing bare-user repo, not a new archive one.
    assert repo_mode(repo) == "bare-user"
    checkout = repo.parent / "checkout"
    ostree("checkout", "--repo", repo, "-U", BRANCH, checkout)
    assert (checkout / "etc" / "os-release").read_text() == "NAME=Example\nVERSION=1\n"


def test_init_collection_id_binds_releases(treeship, sample_tree, repo):
    out = treeship("init", "--repo", repo, "--collection-id", "org.example.Releases", "--json").json()
    assert out == {"repo": str(repo), "mode": "archive", "collection_id": "org.example.Releases", "created": True}
    assert ostree("config", "--repo", repo, "get", "core.collection-id").stdout.strip() == "org.example.Releases"
    release(treeship, sample_tree, repo, "--version", "1")
    assert metadata(repo, BRANCH, "ostree.collection-binding") == "org.example.Releases"
    assert metadata(repo, BRANCH, "ostree.ref-binding") == [BRANCH]

    # Again with the same ID (or none): fine. With another ID: refused, nothing changed.
    assert treeship("init", "--repo", repo, "--collection-id", "org.example.Releases", "--json").json()["created"] \
        is False
    treeship("init", "--repo", repo)
    res = treeship("init", "--repo", repo, "--collection-id", "org.example.Other", rc=2)
    assert "org.example.Releases" in res.stderr
    assert ostree("config", "--repo", repo, "get", "core.collection-id").stdout.strip() == "org.example.Releases"


def test_collection_id_not_silently_ignored_on_existing_repo(treeship, repo):
    treeship("init", "--repo", repo)
    treeship("init", "--repo", repo, "--collection-id", "org.example.Releases", rc=2)
    assert ostree("config", "--repo", repo, "get", "core.collection-id", check=False).returncode != 0


def test_default_version_is_a_utc_timestamp(treeship, sample_tree, repo):
    out = treeship("release", sample_tree, "--repo", repo, "-b", BRANCH, "--json").json()
    assert re.fullmatch(r"20\d{6}\.\d{6}", out["version"]), out["version"]
    assert metadata(repo, BRANCH, "version") == out["version"]
    assert out["subject"] == f"{BRANCH} {out['version']}"


def test_init_is_idempotent_and_refuses_other_mode(treeship, sample_tree, repo):
    treeship("init", "--repo", repo)
    commit = release(treeship, sample_tree, repo, "--version", "1").json()["commit"]
    again = treeship("init", "--repo", repo, "--json").json()
    assert again["created"] is False and again["mode"] == "archive"
    assert "Already there" in treeship("init", "--repo", repo).stdout

    res = treeship("init", "--repo", repo, "--mode", "bare-user", rc=2)
    assert "archive" in res.stderr and "Traceback" not in res.stderr
    assert repo_mode(repo) == "archive"
    assert rev_parse(repo, BRANCH) == commit


def test_treeship_repo_env_var(treeship, sample_tree, tmp_path):
    repo = tmp_path / "from-env"
    env = {"TREESHIP_REPO": str(repo)}
    out = treeship("release", sample_tree, "-b", BRANCH, "--version", "1", "--json", env=env).json()
    assert rev_parse(repo, BRANCH) == out["commit"]
    assert not (tmp_path / "releases").exists()
    log = treeship("log", BRANCH, "--json", env=env).json()
    assert [r["commit"] for r in log["releases"]] == [out["commit"]]
    # --repo wins over the environment.
    other = tmp_path / "explicit"
    treeship("release", sample_tree, "-b", BRANCH, "--repo", other, "--version", "1", env=env)
    assert rev_parse(other, BRANCH) != ""
    assert len(commit_objects(repo)) == 1


def test_default_repo_is_releases_in_cwd(treeship, sample_tree, tmp_path):
    cwd = tmp_path / "work"
    cwd.mkdir()
    out = treeship("release", sample_tree, "-b", BRANCH, "--version", "1", "--json", cwd=cwd).json()
    assert rev_parse(cwd / "releases", BRANCH) == out["commit"]
    assert treeship("show", BRANCH, "--format", "json", cwd=cwd).json()["commit"] == out["commit"]


# -- --json output is one JSON object, even on a terminal --------------------------------------


def _run_with_tty_stderr(args: list[str], cwd: Path) -> tuple[int, str, bytes]:
    """Run treeship with stdout piped and stderr on a pseudo-terminal (where progress is drawn)."""
    master, slave = pty.openpty()
    got: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the other side is closed
                return
            if not chunk:
                return
            got.append(chunk)

    env = {k: v for k, v in os.environ.items() if k != "TREESHIP_REPO"}
    env.update(TERM="xterm-256color", COLUMNS="100")
    env.pop("NO_COLOR", None)
    reader = threading.Thread(target=drain, daemon=True)
    try:
        proc = subprocess.Popen([*treeship_command(), *args], stdout=subprocess.PIPE, stderr=slave,
                                stdin=subprocess.DEVNULL, cwd=cwd, env=env)
        os.close(slave)
        slave = -1
        reader.start()
        stdout, _ = proc.communicate(timeout=120)
        reader.join(timeout=30)
    finally:
        if slave != -1:
            os.close(slave)
        os.close(master)
    return proc.returncode, stdout.decode(), b"".join(got)


def test_json_stdout_is_exactly_one_object_even_with_a_terminal(sample_tree, repo, tmp_path):
    rc, stdout, tty = _run_with_tty_stderr(
        ["release", str(sample_tree), "--repo", str(repo), "-b", BRANCH, "--version", "1", "--json"], tmp_path)
    assert rc == 0, tty
    obj = json.loads(stdout)  # the whole of stdout, nothing before or after
    assert isinstance(obj, dict) and obj["commit"] == rev_parse(repo, BRANCH)
    assert stdout.lstrip().startswith("{") and stdout.rstrip().endswith("}")
    assert tty == b""

    # Control: without --json the progress display does draw on that terminal (and not on stdout).
    (sample_tree / "etc" / "new").write_text("changed\n")
    rc, stdout, tty = _run_with_tty_stderr(
        ["release", str(sample_tree), "--repo", str(repo), "-b", BRANCH, "--version", "2"], tmp_path)
    assert rc == 0, tty
    assert tty != b""
    assert stdout.startswith(f"Released {BRANCH} 2 as ")
    assert "\x1b" not in stdout


def test_json_of_every_command_is_one_object(treeship, sample_tree, repo, ed25519_key, tmp_path):
    outputs = [
        treeship("init", "--repo", repo, "--json"),
        release(treeship, sample_tree, repo, "--version", "1", "--sign-ed25519", ed25519_key.secret),
        treeship("log", BRANCH, "--repo", repo, "--json"),
        treeship("verify", BRANCH, "--repo", repo, "--ed25519-pubkey", ed25519_key.public, "--json"),
        treeship("keygen", tmp_path / "k", "--json"),
    ]
    for res in outputs:
        assert isinstance(json.loads(res.stdout), dict), res.stdout
        assert res.stderr == ""



def test_source_given_as_a_symlink_to_a_directory(treeship, sample_tree, tmp_path, repo):
    """A build directory reached through a symlink (result -> build-123) releases its contents."""
    link = tmp_path / "result"
    link.symlink_to(sample_tree)
    via_link = treeship("release", link, "--repo", repo, "--branch", "a/link", "--json").json()["commit"]
    direct = treeship("release", sample_tree, "--repo", repo, "--branch", "a/direct", "--json").json()["commit"]
    root = ostree("ls", "--repo", repo, "-d", "-C", via_link, "/").stdout.split()
    assert root == ostree("ls", "--repo", repo, "-d", "-C", direct, "/").stdout.split()
    for flag in ("--keep-ownership",):
        treeship("release", link, "--repo", repo, "--branch", "a/link-keep", flag)


# -- a tree that changes while it is released -----------------------------------------------

CHANGES = {
    # what happens to the file between the walk's lstat and the store: what the error says
    "symlink": (lambda f, outside: (f.unlink(), f.symlink_to(outside)), "replaced by a symlink"),
    "fifo": (lambda f, outside: (f.unlink(), os.mkfifo(f)), "replaced by a FIFO"),
    "another file": (lambda f, outside: (f.with_name("new").write_text("x" * 22), f.with_name("new").rename(f)),
                     "replaced by another file"),
    "grown": (lambda f, outside: f.write_text("x" * 100_000), "changed while being released"),
    "shrunk": (lambda f, outside: f.write_text("x"), "changed while being released"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_file_changed_after_the_walk_saw_it_is_refused(tmp_path, change):
    """A build directory still being written while it is released: the walk lstats each
    file, a worker stores it later. What it stores must be the file the walk saw: never a
    symlink's target (a file of this machine, outside the tree, as a regular file), never a
    FIFO (the release would wait for a writer forever), never content of another size than
    the object's header says (ostree could not check it out). Run in a child with a time
    limit, so that a FIFO opened the old way cannot hang the suite."""
    code = f"""
import os, sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_release import CHANGES
from treeship.errors import SourceError
from treeship.repo import Repo, trees

tmp = Path(sys.argv[1])
repo = Repo.create(tmp / "repo", "archive")
f = tmp / "tree" / "c"
f.parent.mkdir()
f.write_text("twenty-two bytes here\\n")
(tmp / "host-secret").write_text("root:SECRET\\n")
seen = os.lstat(f)
CHANGES[sys.argv[2]][0](f, tmp / "host-secret")
fi = trees._file_info(trees.canonical_mode(seen.st_mode), 0, 0, seen.st_size)
with repo.transaction():
    try:
        repo._write_file(str(f), fi, seen)
    except SourceError as e:
        print(e.message)
"""
    p = subprocess.run([sys.executable, "-c", code, tmp_path, change], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"{tmp_path / 'tree' / 'c'}: {CHANGES[change][1]}"), p.stdout


def test_a_directory_swapped_for_a_symlink_after_the_walk_is_refused(tmp_path):
    """The walk lstats tree/sub (a directory); sub is then swapped for a symlink to a
    directory of this machine. Listed by path, the walk would go on there, and release that
    machine's names, symlinks and (its files' inodes agreeing) files. The walk opens sub
    from its parent's descriptor, without following a symlink, and checks it is the
    directory it looked at."""
    from treeship.errors import SourceError
    from treeship.repo import trees

    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / "leaked").symlink_to("/root/.secret-target")
    root = os.open(tmp_path / "tree", os.O_RDONLY | os.O_DIRECTORY)
    try:
        seen = os.lstat("sub", dir_fd=root)
        (tmp_path / "tree" / "sub").rename(tmp_path / "tree" / "sub.real")
        (tmp_path / "tree" / "sub").symlink_to(tmp_path / "host")
        with pytest.raises(SourceError, match="sub: replaced"):  # (ENOTDIR: O_DIRECTORY meets the symlink)
            trees._open_as_seen(root, "sub", str(tmp_path / "tree" / "sub"), seen, os.O_RDONLY | os.O_DIRECTORY)
        (tmp_path / "tree" / "sub").unlink()
        (tmp_path / "tree" / "sub").mkdir()  # another directory of the same name: not the one looked at
        with pytest.raises(SourceError, match="sub: replaced while being released"):
            trees._open_as_seen(root, "sub", str(tmp_path / "tree" / "sub"), seen, os.O_RDONLY | os.O_DIRECTORY)
    finally:
        os.close(root)


@pytest.mark.parametrize("keep_ownership", [False, True])
def test_a_name_that_is_not_utf8_is_one_line_and_exit_3(treeship, tmp_path, keep_ownership):
    """OSTree stores names as UTF-8: a file named in another encoding is refused, named
    (escaped), not an internal error; in a directory or in an archive."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "ok").write_text("fine\n")
    with open(os.path.join(os.fsencode(tree), b"caf\xe9"), "w") as f:  # latin-1
        f.write("x")
    flag = ["--keep-ownership"] if keep_ownership else []
    res = treeship("release", tree, "--repo", tmp_path / "repo", "-b", BRANCH, *flag, rc=3)
    assert res.stderr.count("\n") == 1 and "caf\\udce9: the file name is not UTF-8" in res.stderr, res.stderr
    archive = tmp_path / "latin1.tar"
    subprocess.run(["tar", "-C", tree, "-cf", archive, "."], check=True)
    res = treeship("release", archive, "--repo", tmp_path / "repo", "-b", BRANCH, *flag, rc=3)
    assert res.stderr.count("\n") == 1 and "caf\\udce9: the name is not UTF-8" in res.stderr, res.stderr


def test_a_tree_too_deep_to_walk_is_one_line_and_exit_3(treeship, tmp_path):
    deep = tmp_path / "deep"
    deep.mkdir()
    try:
        fd = os.open(deep, os.O_RDONLY)
        for _ in range(1100):
            os.mkdir("d", dir_fd=fd)
            fd, parent = os.open("d", os.O_RDONLY, dir_fd=fd), fd
            os.close(parent)
        os.close(fd)
        for flag in ([], ["--keep-ownership"]):
            res = treeship("release", deep, "--repo", tmp_path / "repo", "-b", BRANCH, *flag, rc=3)
            assert res.stderr.startswith(f"treeship: error: {deep}: directories nested too deep"), res.stderr
    finally:
        # removed here, by rm (no recursion limit): shutil.rmtree, with which pytest clears
        # old temporary directories in a later session, would fail on it
        subprocess.run(["rm", "-rf", deep], check=True)


def test_a_deep_tree_needs_no_more_than_the_hard_limit_on_open_files(tmp_path):
    """The walk holds a descriptor per directory level and up to 128 files': under a soft
    limit of 1024 (a common default) a tree 900 deep ran out ("Too many open files" blamed on
    an innocent file, or GLib aborting). The walk raises the soft limit to the hard one; where
    the hard one is that low too, it says so."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    code = """
import os, resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from treeship.errors import SourceError
from treeship.repo import Repo
tmp = Path(sys.argv[1])
(tmp / "tree").mkdir()
fd = os.open(tmp / "tree", os.O_RDONLY)
for _ in range(900):
    os.mkdir("d", dir_fd=fd)
    fd, parent = os.open("d", os.O_RDONLY, dir_fd=fd), fd
    os.close(parent)
for i in range(200):
    os.close(os.open(f"f{i}", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
os.close(fd)
repo = Repo.create(tmp / "repo", "archive")
try:
    with repo.transaction():
        repo.write_tree(tmp / "tree")
    print("released")
except SourceError as e:
    print(e.message)
"""
    try:
        p = subprocess.run([sys.executable, "-c", code, tmp_path], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        if hard == resource.RLIM_INFINITY or hard >= 1300:
            assert p.stdout == "released\n", p.stdout
        else:
            assert "too many open files for a tree this deep" in p.stdout, p.stdout
    finally:
        subprocess.run(["rm", "-rf", tmp_path / "tree"], check=True)  # (shutil.rmtree would recurse too deep)
