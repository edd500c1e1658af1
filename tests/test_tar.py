"""Tar archives as release SOURCE: same tree as the directory, hostile archives refused.

Archives are made with Python's tarfile (and the `zstd` CLI); the checker is `ostree ls`
on the released branch. A hostile archive must exit 3 with one line naming it, write
nothing outside treeship's private unpack directory, and leave the repository unchanged.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import make_tree, ostree, treeship_command
from test_bad_input import (  # noqa: F401 - fixtures: a repo holding one release, and its state
    BRANCH,
    assert_error_line,
    assert_unchanged,
    base_release_fixture,
    released_fixture,
)

# -- making archives ------------------------------------------------------------------------


def _tar_of(tree: Path, dest: Path, mode: str = "w") -> Path:
    with tarfile.open(dest, mode) as tf:
        tf.add(tree, arcname=".")
    return dest


def _zstd(src: Path, dest: Path) -> Path:
    if shutil.which("zstd") is None:
        pytest.skip("zstd is not installed")
    subprocess.run(["zstd", "-q", "-f", str(src), "-o", str(dest)], check=True, capture_output=True)
    return dest


def _add(tf: tarfile.TarFile, name: str, data: bytes = b"", *, ftype: bytes = tarfile.REGTYPE, **attrs) -> None:
    """One member, described by hand: what a hostile or odd archive holds."""
    ti = tarfile.TarInfo(name)
    ti.type = ftype
    ti.mode = attrs.pop("mode", 0o755 if ftype == tarfile.DIRTYPE else 0o644)
    for k, v in attrs.items():
        setattr(ti, k, v)
    if ftype == tarfile.REGTYPE:
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    else:
        tf.addfile(ti)


def make_archive(kind: str, tree: Path, workdir: Path) -> Path:
    """``kind``: how it is compressed, and whether its name says so."""
    if kind == "tar":
        return _tar_of(tree, workdir / "tree.tar")
    if kind == "tar-without-root-entry":
        dest = workdir / "tree.tar"
        with tarfile.open(dest, "w") as tf:
            for child in sorted(tree.iterdir()):
                tf.add(child, arcname=child.name)
        return dest
    if kind == "gnu-tar":
        if shutil.which("tar") is None:
            pytest.skip("GNU tar is not installed")
        dest = workdir / "tree.tar"
        subprocess.run(["tar", "-C", str(tree), "-cf", str(dest), "."], check=True)
        return dest
    if kind == "tar.gz":
        return _tar_of(tree, workdir / "tree.tar.gz", "w:gz")
    if kind == "tar.bz2":
        return _tar_of(tree, workdir / "tree.tar.bz2", "w:bz2")
    if kind == "tar.xz":
        return _tar_of(tree, workdir / "tree.tar.xz", "w:xz")
    if kind == "tar.zst":
        return _zstd(_tar_of(tree, workdir / "plain.tar"), workdir / "tree.tar.zst")
    if kind == "gz-named-.tar":
        return _tar_of(tree, workdir / "tree.tar.gz", "w:gz").rename(workdir / "tree.tar")
    if kind == "zst-no-extension":
        return _zstd(_tar_of(tree, workdir / "plain.tar"), workdir / "release-artifact")
    raise AssertionError(kind)


def root_of(repo: Path, branch: str) -> str:
    """The root directory's line (with its contents and metadata checksums) in `ostree ls -C`."""
    return ostree("ls", "-d", "-C", "--repo", repo, branch, "/").stdout


ARCHIVE_KINDS = ["tar", "tar-without-root-entry", "gnu-tar", "tar.gz", "tar.bz2", "tar.xz", "tar.zst",
                 "gz-named-.tar", "zst-no-extension"]


@pytest.fixture(scope="session")
def dir_release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """The sample tree, and a repo where it was released (as a directory) on from/dir."""
    root = tmp_path_factory.mktemp("dir-release")
    tree = make_tree(root / "tree")
    out = subprocess.run([*treeship_command(), "release", str(tree), "--repo", str(root / "releases"),
                          "--branch", "from/dir", "--json"], check=True, capture_output=True, text=True).stdout
    return tree, root / "releases", json.loads(out)


@pytest.mark.parametrize("kind", ARCHIVE_KINDS)
def test_archive_gives_the_same_tree_as_the_directory(treeship, dir_release, repo, tmp_path, kind):
    tree, base_repo, from_dir = dir_release
    shutil.copytree(base_repo, repo, symlinks=True)
    archive = make_archive(kind, tree, tmp_path)
    from_tar = treeship("release", archive, "--repo", repo, "--branch", "from/tar", "--json").json()
    assert root_of(repo, "from/tar") == root_of(repo, "from/dir")
    assert (from_tar["files"], from_tar["bytes"]) == (from_dir["files"], from_dir["bytes"])
    # The canonical modes, as `ostree commit --canonical-permissions` would give them.
    listing = ostree("ls", "-R", "--repo", repo, "from/tar", "/usr/bin").stdout
    assert "-00755 0 0" in next(line for line in listing.splitlines() if line.endswith("/usr/bin/su"))
    ostree("fsck", "--repo", repo)


def test_tar_release_does_not_depend_on_the_umask(treeship, repo, tmp_path):
    """Directories the archive does not list (its root, parents) are 0755 for everyone."""
    archive = tmp_path / "no-dirs.tar"
    with tarfile.open(archive, "w") as tf:
        _add(tf, "usr/bin/tool", b"#!/bin/sh\n", mode=0o755)
    script = 'umask "$1"; shift; exec "$@"'
    for umask in ("077", "022"):
        subprocess.run(["sh", "-c", script, "sh", umask, *treeship_command(), "release", str(archive),
                        "--repo", str(repo), "--branch", f"umask/{umask}", "--allow-unchanged"],
                       check=True, capture_output=True)
    assert root_of(repo, "umask/077") == root_of(repo, "umask/022")
    assert ostree("ls", "-d", "--repo", repo, "umask/077", "/usr/bin").stdout.startswith("d00755 ")


# -- ownership and modes --------------------------------------------------------------------


@pytest.fixture
def owned_archive(tmp_path: Path) -> Path:
    archive = tmp_path / "owned.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        _add(tf, "usr", ftype=tarfile.DIRTYPE)
        _add(tf, "usr/bin", ftype=tarfile.DIRTYPE)
        _add(tf, "usr/bin/su", b"\x7fELF setuid", mode=0o4755)
        _add(tf, "usr/bin/wall", b"\x7fELF setgid", mode=0o2755, gid=5)
        _add(tf, "srv", ftype=tarfile.DIRTYPE, uid=1234, gid=5678, mode=0o750)
        _add(tf, "srv/data", b"owned by someone", uid=1234, gid=5678, mode=0o640,
             uname="no-such-user-here", gname="no-such-group-here")
    return archive


def _entry(repo: Path, branch: str, path: str) -> list[str]:
    """`ostree ls -d` fields of one path: mode, uid, gid, size, path."""
    return ostree("ls", "-d", "--repo", repo, branch, path).stdout.split()


def test_canonical_permissions_strip_setuid_and_owners(treeship, repo, owned_archive):
    treeship("release", owned_archive, "--repo", repo, "--branch", "canonical")
    assert _entry(repo, "canonical", "/usr/bin/su")[:3] == ["-00755", "0", "0"]
    assert _entry(repo, "canonical", "/usr/bin/wall")[:3] == ["-00755", "0", "0"]
    assert _entry(repo, "canonical", "/srv")[:3] == ["d00750", "0", "0"]
    assert _entry(repo, "canonical", "/srv/data")[:3] == ["-00640", "0", "0"]


def test_keep_ownership_keeps_numeric_owners_and_setuid(treeship, repo, owned_archive):
    treeship("release", owned_archive, "--repo", repo, "--branch", "kept", "--keep-ownership")
    assert _entry(repo, "kept", "/usr/bin/su")[:3] == ["-04755", "0", "0"]
    assert _entry(repo, "kept", "/usr/bin/wall")[:3] == ["-02755", "0", "5"]
    assert _entry(repo, "kept", "/srv")[:3] == ["d00750", "1234", "5678"]
    assert _entry(repo, "kept", "/srv/data")[:3] == ["-00640", "1234", "5678"]


def test_keep_ownership_refuses_what_it_could_not_keep(treeship, repo, tmp_path, owned_archive):
    """--keep-ownership keeps what the unpacked files have: extended attributes (tarfile does
    not restore them: `security.capability` on ping would be lost) and, without the right to
    give files away (CAP_CHOWN: a rootless container's "root"), owners and modes would be
    dropped in silence. Refused, the member and the way out named; without the flag, the
    same archives release (canonical permissions keep neither)."""
    caps = tmp_path / "caps.tar"
    with tarfile.open(caps, "w", format=tarfile.PAX_FORMAT) as tf:
        _add(tf, "bin", ftype=tarfile.DIRTYPE)
        _add(tf, "bin/ping", b"\x7fELF ping", mode=0o755,
             pax_headers={"SCHILY.xattr.security.capability": "\x01\x00\x00\x02 \x00\x00\x00"})
    res = treeship("release", caps, "--repo", repo, "--branch", "caps", "--keep-ownership", rc=3)
    assert_error_line(res, caps, "bin/ping", "security.capability", "tar --xattrs -xpf")
    treeship("release", caps, "--repo", repo, "--branch", "caps")
    if os.geteuid() == 0 and shutil.which("setpriv"):
        res = subprocess.run(["setpriv", "--bounding-set=-chown,-fowner", "--inh-caps=-chown,-fowner",
                              *treeship_command(), "release", str(owned_archive), "--repo", str(repo),
                              "--branch", "owned", "--keep-ownership"], capture_output=True, text=True)
        assert res.returncode == 3 and "cannot keep what it asks for" in res.stderr, res.stderr
    assert ostree("rev-parse", "--repo", repo, "owned", check=False).returncode != 0  # nothing released


def test_keep_ownership_of_an_archive_needs_root(tmp_path, owned_archive, monkeypatch):
    """Without root tarfile does not even try to give files their owners: refused before unpacking."""
    from treeship import source
    from treeship.errors import SourceError

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    (tmp_path / "out").mkdir()
    with pytest.raises(SourceError, match="--keep-ownership with an archive needs root"):
        source.extract_tar(owned_archive, tmp_path / "out", keep_ownership=True)
    assert list((tmp_path / "out").iterdir()) == []


def test_links_inside_the_archive_are_kept(treeship, repo, tmp_path):
    """Hard links between members, and symlinks (absolute ones too: a sysroot has them)."""
    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w") as tf:
        _add(tf, "bin", ftype=tarfile.DIRTYPE)
        _add(tf, "bin/busybox", b"\x7fELF busybox", mode=0o755)
        _add(tf, "bin/sh", ftype=tarfile.LNKTYPE, linkname="bin/busybox")
        _add(tf, "bin/ls", ftype=tarfile.SYMTYPE, linkname="busybox")
        _add(tf, "localtime", ftype=tarfile.SYMTYPE, linkname="/usr/share/zoneinfo/UTC")
    treeship("release", archive, "--repo", repo, "--branch", "links")
    ls = ostree("ls", "-R", "-C", "--repo", repo, "links", "/").stdout
    # mode uid gid size checksum(s) path [-> target]
    by_path = {line.split(" -> ")[0].split()[-1]: line.split() for line in ls.splitlines()}
    assert by_path["/bin/sh"][4] == by_path["/bin/busybox"][4]  # the same content object
    assert ls.count("-> busybox") == 1
    assert "/localtime -> /usr/share/zoneinfo/UTC" in ls


# -- hostile and broken archives ------------------------------------------------------------


def _write_tar(path: Path, build: Callable[[tarfile.TarFile], None]) -> Path:
    with tarfile.open(path, "w") as tf:
        _add(tf, "ok", b"harmless\n")
        build(tf)
    return path


def hostile(kind: str, tmp_path: Path) -> tuple[Path, list[str]]:
    """Make a bad archive; return it and what the error must name besides the archive."""
    outside = tmp_path / "outside"  # where an escape would land (never /etc: we are root)
    outside.mkdir(exist_ok=True)
    secret = tmp_path / "host-secret"
    secret.write_text("a file of the releasing machine\n")
    secret.chmod(0o644)
    a = tmp_path / f"{kind}.tar"
    if kind == "dotdot":
        return _write_tar(a, lambda tf: _add(tf, "../evil", b"x")), ["../evil"]
    if kind == "dotdot-inside":
        return _write_tar(a, lambda tf: _add(tf, "usr/../../evil", b"x")), ["usr/../../evil"]
    if kind == "absolute":
        evil = str(outside / "evil")
        return _write_tar(a, lambda tf: _add(tf, evil, b"x")), [evil, "absolute"]
    if kind == "symlink-then-write-through":
        def build(tf: tarfile.TarFile) -> None:
            _add(tf, "escape", ftype=tarfile.SYMTYPE, linkname=str(outside))
            _add(tf, "escape/evil", b"x")
        return _write_tar(a, build), ["escape/evil"]
    if kind == "relative-symlink-then-write-through":
        def build(tf: tarfile.TarFile) -> None:
            _add(tf, "d", ftype=tarfile.DIRTYPE)
            _add(tf, "d/up", ftype=tarfile.SYMTYPE, linkname="../../../../../../../../../../" + str(outside))
            _add(tf, "d/up/evil", b"x")
        return _write_tar(a, build), ["d/up/evil"]
    if kind == "hardlink-absolute":
        return _write_tar(a, lambda tf: _add(tf, "stolen", ftype=tarfile.LNKTYPE, linkname=str(secret))), ["stolen"]
    if kind == "hardlink-dotdot":
        up = os.path.relpath(secret, "/")
        return _write_tar(a, lambda tf: _add(tf, "stolen", ftype=tarfile.LNKTYPE,
                                             linkname="../" * 40 + up)), ["stolen"]
    if kind == "hardlink-through-symlink":
        def build(tf: tarfile.TarFile) -> None:
            _add(tf, "host", ftype=tarfile.SYMTYPE, linkname=str(tmp_path))
            _add(tf, "stolen", ftype=tarfile.LNKTYPE, linkname="host/host-secret")
        return _write_tar(a, build), ["stolen"]
    if kind in ("long-names-then-write", "long-names-then-hardlink"):
        # CVE-2025-4517: past PATH_MAX os.path.realpath (tarfile's filters, and ours before)
        # takes the rest of a path as text while the kernel follows every symlink.
        def build(tf: tarfile.TarFile) -> None:
            prefix, long = "", "d" * 250
            for i in range(20):
                _add(tf, prefix + long, ftype=tarfile.DIRTYPE)
                _add(tf, prefix + f"s{i:02d}", ftype=tarfile.SYMTYPE, linkname=long)
                prefix += f"s{i:02d}/"
            _add(tf, prefix + "x", ftype=tarfile.SYMTYPE, linkname="../" * 20)
            there = outside if kind == "long-names-then-write" else tmp_path
            _add(tf, "escape", ftype=tarfile.SYMTYPE, linkname=prefix + "x/" + "../" * 21 + str(there).lstrip("/"))
            if kind == "long-names-then-write":
                _add(tf, "escape/pwned", b"#!/bin/sh\nid\n", mode=0o4755)
            else:
                _add(tf, "stolen", ftype=tarfile.LNKTYPE, linkname="escape/host-secret")
                _add(tf, "stolen", b"overwritten through the hard link\n")
        with tarfile.open(a, "w", format=tarfile.PAX_FORMAT) as tf:
            build(tf)
        return a, ["s00/", "written through a symlink the archive made, 's00'"]
    if kind == "file-over-symlink":
        def build(tf: tarfile.TarFile) -> None:
            _add(tf, "a", ftype=tarfile.SYMTYPE, linkname=str(outside / "evil"))
            _add(tf, "a", b"x")
        return _write_tar(a, build), ["a", "made twice, a symlink and then a file"]
    if kind in ("hardlink-to-a-later-member", "hardlink-to-a-directory", "hardlink-to-a-symlink"):
        def build(tf: tarfile.TarFile) -> None:
            if kind == "hardlink-to-a-directory":
                _add(tf, "d", ftype=tarfile.DIRTYPE)
            if kind == "hardlink-to-a-symlink":
                _add(tf, "d", ftype=tarfile.SYMTYPE, linkname=str(secret))
            _add(tf, "h", ftype=tarfile.LNKTYPE, linkname="d")
            if kind == "hardlink-to-a-later-member":
                _add(tf, "d", b"later")
        return _write_tar(a, build), ["h", "not a regular file earlier in the archive"]
    if kind == "huge-header":  # tarfile reads a long-name header whole: 8 MiB of name, ~8 kB gzipped
        header = tarfile.TarInfo("././@LongLink")
        header.type, header.size = tarfile.GNUTYPE_LONGNAME, 8 << 20
        gz = tmp_path / "huge-header.tar.gz"
        with gzip.open(gz, "wb") as g:
            g.write(header.tobuf(format=tarfile.USTAR_FORMAT) + bytes(8 << 20))
            g.write(tarfile.TarInfo("ok").tobuf(format=tarfile.USTAR_FORMAT) + bytes(1024))
        return gz, ["headers (long names, extended attributes) of over 1048576 bytes"]
    if kind == "directory-over-a-file-then-symlink":
        # tarfile sets a directory member's mode, owner and time at the end of extractall,
        # through whatever is at its path by then: here a symlink to a file of this machine
        def build(tf: tarfile.TarFile) -> None:
            _add(tf, "d", b"a file first")
            _add(tf, "d", ftype=tarfile.DIRTYPE, mode=0o6777, uid=4242, gid=4242, mtime=0)
            _add(tf, "d", ftype=tarfile.SYMTYPE, linkname=str(secret))
        return _write_tar(a, build), ["d", "made twice, a file and then a directory"]
    if kind == "file-over-a-hardlink":  # written into the inode both names share
        def build(tf: tarfile.TarFile) -> None:
            _add(tf, "f", b"A")
            _add(tf, "h", ftype=tarfile.LNKTYPE, linkname="f")
            _add(tf, "h", b"B")
        return _write_tar(a, build), ["h", "made twice"]
    if kind == "symlink-over-a-directory":  # tarfile cannot unlink it, and went on without it
        def build(tf: tarfile.TarFile) -> None:
            _add(tf, "a", ftype=tarfile.DIRTYPE)
            _add(tf, "a/f", b"x")
            _add(tf, "a", ftype=tarfile.SYMTYPE, linkname=str(outside))
        return _write_tar(a, build), ["a", "made twice, a directory and then a symlink"]
    if kind == "chained-headers":  # read recursively by tarfile: 300 of them ran it out of stack
        with open(a, "wb") as f:
            for i in range(20):
                record = f"{len(f'00 comment={i}') + 1:02d} comment={i}\n".encode()
                header = tarfile.TarInfo("././@PaxHeader")
                header.type, header.size = tarfile.XHDTYPE, len(record)
                f.write(header.tobuf(format=tarfile.USTAR_FORMAT) + record.ljust(512, b"\0"))
            f.write(tarfile.TarInfo("ok").tobuf(format=tarfile.USTAR_FORMAT) + bytes(1024))
        return a, ["over 16 headers before one member"]
    if kind == "sparse":  # a hole of any size in a few bytes of archive; its map read whole
        hole = tmp_path / "hole"
        with open(hole, "wb") as f:
            f.truncate(1 << 30)
        subprocess.run(["tar", "--sparse", "-C", tmp_path, "-cf", a, "hole"], check=True)
        return a, ["hole", "a sparse member"]
    if kind == "deep-name":  # checked per component: a name of 16,000 took 1 GB and 5 s to judge
        return _write_tar(a, lambda tf: _add(tf, "a/" * 1000 + "f", b"x")), ["nested deeper than 900"]
    if kind == "long-link-target":
        return _write_tar(a, lambda tf: _add(tf, "x", ftype=tarfile.SYMTYPE, linkname="y" * 5000)), \
            ["x", "over 4096 bytes"]
    if kind == "empty-symlink-then-device":
        # tarfile could not make the symlink and extracted, in its place, a later member it
        # found by name: unfiltered (here a device node named '.')
        def build(tf: tarfile.TarFile) -> None:
            _add(tf, "x", ftype=tarfile.SYMTYPE, linkname="")
            _add(tf, ".", ftype=tarfile.CHRTYPE, devmajor=1, devminor=1)
        return _write_tar(a, build), ["x", "a symlink to nothing"]
    if kind == "global-headers":  # copied into every member with a pax header of its own
        with tarfile.open(a, "w", format=tarfile.PAX_FORMAT, pax_headers={f"k{i}": "v" * 90 for i in range(800)}) as tf:
            _add(tf, "ok", b"x")
        return a, ["global pax headers of over 65536 bytes"]
    if kind == "chardev":
        return _write_tar(a, lambda tf: _add(tf, "dev/null", ftype=tarfile.CHRTYPE, devmajor=1, devminor=3)), \
            ["dev/null", "device"]
    if kind == "blockdev":
        return _write_tar(a, lambda tf: _add(tf, "dev/sda", ftype=tarfile.BLKTYPE, devmajor=8, devminor=0)), \
            ["dev/sda", "device"]
    if kind == "fifo":
        return _write_tar(a, lambda tf: _add(tf, "run/fifo", ftype=tarfile.FIFOTYPE)), ["run/fifo", "FIFO"]
    raise AssertionError(kind)


HOSTILE = ["dotdot", "dotdot-inside", "absolute", "symlink-then-write-through",
           "relative-symlink-then-write-through", "hardlink-absolute", "hardlink-dotdot",
           "hardlink-through-symlink", "long-names-then-write", "long-names-then-hardlink", "file-over-symlink",
           "hardlink-to-a-later-member", "hardlink-to-a-directory", "hardlink-to-a-symlink", "huge-header",
           "directory-over-a-file-then-symlink", "file-over-a-hardlink", "symlink-over-a-directory",
           "chained-headers", "sparse", "deep-name", "long-link-target", "empty-symlink-then-device",
           "global-headers", "chardev", "blockdev", "fifo"]


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_archive_is_refused(treeship, released, tmp_path, kind):
    repo, before = released
    archive, culprits = hostile(kind, tmp_path)
    res = treeship("release", archive, "--repo", repo, "--branch", BRANCH, "--allow-unchanged", rc=3)
    assert_error_line(res, archive, *culprits)
    assert list((tmp_path / "outside").iterdir()) == [], "something was written outside the tree"
    secret = (tmp_path / "host-secret").stat()
    assert (tmp_path / "host-secret").read_text() == "a file of the releasing machine\n"
    assert (stat.S_IMODE(secret.st_mode), secret.st_uid) == (0o644, os.getuid()), "a host file's mode or owner changed"
    assert_unchanged(repo, before)
    assert [p.name for p in (repo / "tmp").iterdir() if p.name.startswith("treeship-src-")] == []


@pytest.mark.parametrize("compression", ["gz", "zst"])
def test_hostile_member_in_a_compressed_archive_is_named(treeship, released, tmp_path, compression):
    """Refused at the member, with megabytes still to come: the refusal is the error, not 'corrupt'."""
    repo, before = released
    plain = tmp_path / "hostile.tar"
    with tarfile.open(plain, "w") as tf:
        _add(tf, "../evil", b"x")
        _add(tf, "after", os.urandom(2_000_000))
    if compression == "gz":
        archive = tmp_path / "hostile.tar.gz"
        archive.write_bytes(gzip.compress(plain.read_bytes()))
    else:
        archive = _zstd(plain, tmp_path / "hostile.tar.zst")
    res = treeship("release", archive, "--repo", repo, "--branch", BRANCH, "--allow-unchanged", rc=3)
    line = assert_error_line(res, archive, "../evil", "outside")
    assert "corrupt" not in line
    assert_unchanged(repo, before)


def broken(kind: str, tree: Path, tmp_path: Path) -> Path:
    """Not an archive, or one cut short, or one with 64 bytes flipped in the middle (which
    for the gzip lands in the sample tree's random bytes, stored as is: only its CRC can tell)."""
    if kind == "empty":
        p = tmp_path / "empty.tar"
        p.touch()
        return p
    if kind == "random-bytes":
        p = tmp_path / "random.tar.gz"
        p.write_bytes(os.urandom(20_000))
        return p
    if kind == "gzip-of-text":
        p = tmp_path / "notes.tar.gz"
        p.write_bytes(gzip.compress(b"not a tar inside\n" * 100))
        return p
    whole = make_archive(kind.split("-", 1)[1], tree, tmp_path)
    data = whole.read_bytes()
    if kind.startswith("truncated-"):
        whole.write_bytes(data[: len(data) // 2])
    elif kind.startswith("corrupt-"):
        mid = len(data) // 2
        whole.write_bytes(data[:mid] + bytes(b ^ 0x5A for b in data[mid:mid + 64]) + data[mid + 64:])
    return whole


BROKEN = ["empty", "random-bytes", "gzip-of-text", "truncated-tar", "truncated-tar.gz", "truncated-tar.zst",
          "corrupt-tar.gz", "corrupt-tar.bz2", "corrupt-tar.xz", "corrupt-tar.zst"]


@pytest.mark.parametrize("kind", BROKEN)
def test_broken_archive_is_refused(treeship, released, sample_tree, tmp_path, kind):
    repo, before = released
    (sample_tree / "etc" / "changed").write_text("so that a release would not be 'unchanged'\n")
    archive = broken(kind, sample_tree, tmp_path)
    res = treeship("release", archive, "--repo", repo, "--branch", BRANCH, rc=3)
    assert_error_line(res, archive)
    assert_unchanged(repo, before)


def test_a_directory_listed_again_is_made_once_and_keeps_its_listing(treeship, repo, tmp_path):
    """A directory may be listed more than once (and after its contents, as `find -depth`
    lists): made once, with the attributes of its listing (its parents' implicit making gives
    it none); tarfile would keep a record per listing to the end (200,000 listings of one
    directory in a 448 kB archive: 100 MB, 30 s)."""
    archive = tmp_path / "relisted.tar"
    with tarfile.open(archive, "w") as tf:
        _add(tf, "etc/shadow", b"x", mode=0o600)  # etc made as a parent first
        _add(tf, "etc", ftype=tarfile.DIRTYPE, mode=0o700)  # then listed
        for _ in range(2000):
            _add(tf, "d", ftype=tarfile.DIRTYPE, mode=0o750)
    treeship("release", archive, "--repo", repo, "--branch", "relisted", "--keep-ownership")
    assert _entry(repo, "relisted", "/etc")[0] == "d00700"
    assert _entry(repo, "relisted", "/d")[0] == "d00750"
