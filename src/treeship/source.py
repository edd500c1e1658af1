"""Turn a release SOURCE (a directory or a tar archive) into a directory to commit.

Archives are unpacked into a private temporary directory, refusing absolute paths,
``..``, anything written through a symlink or a file the archive made (a symlink itself,
absolute or not, is content and is kept), a path made twice unless both are directories,
hard links to anything but a regular file the archive made before, device nodes, sparse
members, and headers too large to hold: a release must not carry what the extraction
would not put back faithfully for every user, and unpacking must not write or read
outside the tree (see _Members).
"""

from __future__ import annotations

import bz2
import errno
import gzip
import lzma
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from .errors import SourceError, StorageError

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Decompressed here, not by tarfile's stream mode: that never checks the CRC at the end of a
# gzip (nor reads an xz/bz2 stream to its end), so a corrupt archive would be released.
_DECOMPRESSORS: dict[bytes, Callable[[IO[bytes]], IO[bytes]]] = {
    b"\x1f\x8b": lambda f: gzip.GzipFile(fileobj=f, mode="rb"),
    b"BZh": lambda f: bz2.BZ2File(f, "rb"),
    b"\xfd7zXZ\x00": lambda f: lzma.LZMAFile(f, "rb"),
}


def _stat_source(path: Path) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise SourceError(f"{path}: dangling symlink") from None
        raise SourceError(f"{path}: no such file or directory") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SourceError(f"{path}: symlink loop") from None
        raise SourceError(f"{path}: {e.strerror}") from None


@contextmanager
def prepared(source: str | os.PathLike[str], *, keep_ownership: bool = False,
             workdir: str | None = None) -> Iterator[Path]:
    """Yield a directory holding the tree to release."""
    path = Path(source)
    st = _stat_source(path)
    if stat.S_ISDIR(st.st_mode):
        if not os.access(path, os.R_OK | os.X_OK):
            raise SourceError(f"{path}: permission denied")
        # A symlink to a build directory (result -> build-123) releases the directory itself.
        yield Path(os.path.realpath(path)) if path.is_symlink() else path
        return
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(f"{path}: not a directory or a tar archive")
    with tempfile.TemporaryDirectory(prefix="treeship-src-", dir=workdir) as tmp:
        dest = Path(tmp) / "tree"
        # What the archive does not say (the root, parents it does not list) is 0755, not the umask's.
        old_umask = os.umask(0o022)
        try:
            dest.mkdir(mode=0o755)
            extract_tar(path, dest, keep_ownership=keep_ownership)
        finally:
            os.umask(old_umask)
        yield dest


def extract_tar(archive: Path, dest: Path, *, keep_ownership: bool = False) -> None:
    """Unpack .tar, .tar.gz, .tar.bz2, .tar.xz or .tar.zst (detected by content)."""
    try:
        with open(archive, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise SourceError(f"{archive}: {e.strerror}") from None
    if magic.startswith(_ZSTD_MAGIC):
        zstd = shutil.which("zstd")
        if zstd is None:
            raise SourceError(f"{archive}: a zstd archive needs the 'zstd' program")
        proc = subprocess.Popen([zstd, "-dc", "--", str(archive)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        failed = True
        try:
            _extract_stream(archive, proc.stdout, dest, keep_ownership)
            failed = False
        finally:
            proc.stdout.close()
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            rc = proc.wait()
            # Killed by a signal (SIGPIPE: we stopped reading at a refused member): that refusal is the error.
            if rc > 0 or (rc < 0 and not failed):
                raise SourceError(f"{archive}: zstd failed: {err.splitlines()[-1] if err else 'corrupt archive'}")
        return
    decompress = next((d for m, d in _DECOMPRESSORS.items() if magic.startswith(m)), None)
    try:
        with open(archive, "rb") as f:
            _extract_stream(archive, decompress(f) if decompress else f, dest, keep_ownership)
    except OSError as e:
        raise SourceError(f"{archive}: {e.strerror}") from None


def _parts(name: str) -> tuple[str, ...] | None:
    """A member's path as its components (``.`` and empty ones dropped); None if it is
    absolute, climbs (``..``) or holds a NUL."""
    if name.startswith("/") or "\0" in name:
        return None
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    return None if ".." in parts else parts


_DIR, _FILE, _SYMLINK = "a directory", "a file", "a symlink"


MAX_NAME = 4096  # bytes in a member's name or link target (PATH_MAX)
MAX_DEPTH = 900  # directories a member is nested in (the tree walk stops short of Python's recursion limit)


class _Members:
    """What the archive has made so far, by path, to judge each member by its path alone.

    Nothing here asks the file system where a path leads: ``os.path.realpath``, on which
    tarfile's own filters rely, stops resolving past PATH_MAX and takes the rest of the path
    as text, while the kernel follows every link (CVE-2025-4517, fixed in Python 3.11.13);
    an archive of long directory names and short symlinks then writes, or hard-links, outside
    the tree. And what tarfile does to a path already made is no safer: a directory member
    over a file has its mode, owner and time set at the very end, through whatever is there
    by then (a symlink to a file of this machine); a file over a hard link writes into the
    other name too. So: nothing at or below a symlink or a file the archive made; no path
    made twice, unless both are directories; a hard link only to a regular file made before.
    (Parents the archive does not list are directories tarfile makes: recorded as such.)
    Paths are kept as a tree, a node per component: a check costs the member's depth.
    """

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self.root: dict[str, list] = {}  # component -> [kind, its children (a directory's) or None, listed]

    def check(self, member: tarfile.TarInfo) -> bool:
        """SourceError if the member may not be made; False for a directory made already."""
        name = member.name
        try:
            longest = max(len(name.encode()), len(member.linkname.encode()))
        except UnicodeEncodeError:  # tarfile keeps undecodable bytes as surrogates
            raise SourceError(f"{self.archive}: {name}: the name is not UTF-8 (OSTree stores names as UTF-8)") from None
        if longest > MAX_NAME:
            raise SourceError(f"{self.archive}: {name[:200]}...: a name or link target over {MAX_NAME} bytes")
        parts = _parts(name)
        if parts is None:
            why = "absolute path in the archive" if name.startswith("/") else \
                "'..' leads outside the archive" if "\0" not in name else "a NUL in the name"
            raise SourceError(f"{self.archive}: {name}: {why}")
        if len(parts) > MAX_DEPTH:
            raise SourceError(f"{self.archive}: {name[:200]}...: nested deeper than {MAX_DEPTH} directories")
        if member.issym() and not member.linkname:
            raise SourceError(f"{self.archive}: {name}: a symlink to nothing (an empty target)")
        kind = _DIR if member.isdir() else _SYMLINK if member.issym() else _FILE
        if not parts:  # the tree's root ("./")
            if kind != _DIR:
                raise SourceError(f"{self.archive}: {name}: the root of the tree as {kind}")
            return True
        entry, above = self._find(parts)
        if above is not None:
            raise SourceError(f"{self.archive}: {name}: written through {above[0]} the archive made, "
                              f"{'/'.join(parts[:above[1]])!r}")
        before = entry[0] if entry else None
        if before is not None and not (before == kind == _DIR):
            raise SourceError(f"{self.archive}: {name}: made twice, {before} and then {kind} (a release takes "
                              "each path once; a directory may be listed again)")
        if member.islnk():
            target = _parts(member.linkname)
            found, through = self._find(target) if target else (None, None)
            if target is None or target == parts or through is not None or not found or found[0] != _FILE:
                raise SourceError(f"{self.archive}: {name}: hard link to {member.linkname!r}, which is not a "
                                  "regular file earlier in the archive")
        if entry is not None:  # (a directory, again: made once with the attributes it was first listed with)
            if entry[2]:
                return False
            entry[2] = True  # made before as a parent, listed now
            return True
        children = self.root
        for comp in parts[:-1]:
            children = children.setdefault(comp, [_DIR, {}, False])[1]
        children[parts[-1]] = [kind, {} if kind == _DIR else None, True]
        return True

    def _find(self, parts: tuple[str, ...]) -> tuple[list | None, tuple[str, int] | None]:
        """The entry the archive made at ``parts`` (None: nothing yet); or, where a component
        above it is no directory, what it is and how many components lead to it."""
        children = self.root
        for i, comp in enumerate(parts):
            entry = children.get(comp)
            if entry is None or i == len(parts) - 1:
                return entry, None
            if entry[0] != _DIR:
                return None, (entry[0], i + 1)
            children = entry[1]
        return None, None


# Long names, long link targets and pax headers are read whole into memory by tarfile, and
# a chain of them before one member recursively: bounded in bytes and in number. Global pax
# headers accumulate for the whole archive, and are copied into every member that has a pax
# header of its own: bounded in all, and small (git archive writes one of 52 bytes).
MAX_HEADER = 1 << 20
MAX_GLOBAL = 64 << 10
MAX_HEADERS = 64 << 20  # of all members' headers together: a few hundred bytes each in a real archive
MAX_CHAIN = 16


def _bounded_headers(archive: Path) -> type[tarfile.TarInfo]:
    """TarInfo that keeps what tarfile reads before a member bounded (a 0.5 MB .tar.gz
    claiming a 512 MiB name took 1.6 GB; 300 chained 1 MiB headers ran Python out of stack),
    and refuses sparse members, whose maps tarfile also reads whole (5 million entries in
    20 kB of archive took 556 MB; a 122-byte archive holds a 1 GiB hole)."""
    seen = {"member": 0, "chain": 0, "global": 0, "all": 0}

    def too_much(what: str) -> SourceError:
        return SourceError(f"{archive}: {what}: more than a release takes")

    class Bounded(tarfile.TarInfo):
        def _proc_member(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
            if self.type == tarfile.GNUTYPE_SPARSE:
                raise _sparse(archive, self.name)
            if self.type in _SPECIAL_HEADERS:
                key = "global" if self.type == tarfile.XGLTYPE else "member"
                seen[key] += self.size
                seen["all"] += self.size
                seen["chain"] += 1
                if seen["all"] > MAX_HEADERS:
                    raise too_much(f"headers (long names, extended attributes) of over {MAX_HEADERS} bytes in all")
                if seen[key] > (MAX_GLOBAL if key == "global" else MAX_HEADER):
                    raise too_much(f"global pax headers of over {MAX_GLOBAL} bytes in all" if key == "global" else
                                   f"headers (long names, extended attributes) of over {MAX_HEADER} bytes "
                                   "before one member")
                if seen["chain"] > MAX_CHAIN:
                    raise too_much(f"over {MAX_CHAIN} headers before one member")
            else:
                seen["member"] = seen["chain"] = 0
            return super()._proc_member(tf)  # type: ignore[misc]

        def _proc_gnusparse_00(self, *args: object) -> None:
            raise _sparse(archive, self.name)

        _proc_gnusparse_01 = _proc_gnusparse_10 = _proc_gnusparse_00

    return Bounded


def _sparse(archive: Path, name: str) -> SourceError:
    return SourceError(f"{archive}: {name}: a sparse member (tar --sparse): not taken, its holes are unbounded; "
                       "make the archive without --sparse")


class _Strict(tarfile.TarFile):
    """tarfile, read as a stream, without what it does past our checks.

    A link it cannot make is an error, not a copy of another member found further on in
    the archive (extracted unfiltered, or the link dropped in silence: tarfile's fallback);
    and a member's record is not kept once it is extracted (tarfile keeps them all, pax
    headers and all: 1 GB of memory per MB of a crafted archive)."""

    source_name: Path | str = "archive"  # for messages: the archive's path

    def makelink(self, tarinfo: tarfile.TarInfo, targetpath: str) -> None:
        try:
            if tarinfo.issym():
                os.symlink(tarinfo.linkname, targetpath)
            else:
                os.link(tarinfo._link_target, targetpath, follow_symlinks=False)  # type: ignore[attr-defined]
        except OSError as e:
            raise SourceError(f"{self.source_name}: {tarinfo.name}: cannot make this link: {e.strerror}") from None

    def next(self) -> tarfile.TarInfo | None:
        member = super().next()
        self.members.clear()  # (iterating a stream asks next() again when the list is exhausted)
        return member


_SPECIAL_HEADERS = {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                    tarfile.SOLARIS_XHDTYPE}


_XATTR_KEYS = ("SCHILY.xattr.", "LIBARCHIVE.xattr.")  # pax headers that carry extended attributes


def _extract_stream(archive: Path, fileobj: IO[bytes], dest: Path, keep_ownership: bool) -> None:
    # --keep-ownership keeps what the unpacked files have: owners only root can set (tarfile
    # does not even try otherwise), and no xattrs (tarfile does not restore them). Refused
    # where the release would silently differ from the archive.
    if keep_ownership and os.geteuid() != 0:
        raise SourceError(f"{archive}: --keep-ownership with an archive needs root, to give its files their "
                          "owners; unpack it as root and release the directory, or leave --keep-ownership out")
    made = _Members(archive)

    def member_filter(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        # The member is extracted as given (modes are ours). tarfile's own filters are not
        # asked: their one check _Members does not make, a path's realpath, is the CVE
        # (and costs a lstat per component of every member: minutes for a small archive).
        if member.ischr() or member.isblk() or member.isfifo():
            raise SourceError(f"{archive}: {member.name}: device nodes and FIFOs cannot be released")
        if not made.check(member):
            return None  # a directory listed again: made once (tarfile would keep every listing to the end)
        if keep_ownership:
            xattrs = sorted(k.split(".", 2)[2] for k in member.pax_headers if k.startswith(_XATTR_KEYS))
            if xattrs:
                raise SourceError(f"{archive}: {member.name}: --keep-ownership cannot keep extended attributes "
                                  f"({', '.join(xattrs)}) from an archive; unpack it as root with "
                                  "'tar --xattrs -xpf' and release the directory")
        member.pax_headers = {}  # read; a directory's record is kept to the end (its attributes are set last)
        return member

    try:
        # errorlevel 2: an owner or mode that cannot be set (no CAP_CHOWN) is an error, not skipped
        with _Strict.open(fileobj=fileobj, mode="r|", tarinfo=_bounded_headers(archive),
                          errorlevel=2 if keep_ownership else 1) as tf:
            tf.source_name = archive
            tf.extractall(dest, filter=member_filter, numeric_owner=keep_ownership)  # noqa: S202 - filtered
        while fileobj.read(1 << 20):  # to the end, where the decompressor checks the CRC
            pass
    except tarfile.ExtractError as e:
        raise SourceError(f"{archive}: cannot keep what it asks for: {e}") from None
    except RecursionError:  # (chained headers, deep paths: bounded above; this is the backstop)
        raise SourceError(f"{archive}: nested too deep to unpack") from None
    except tarfile.ReadError as e:
        raise SourceError(f"{archive}: not a readable tar archive ({e})") from None
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as e:
        raise SourceError(f"{archive}: corrupt archive ({e})") from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise StorageError(f"{archive}: no space left on device to unpack it in {dest.parent}") from None
        raise SourceError(f"{archive}: cannot unpack: {e.strerror or e}") from None
