"""Turn a release SOURCE (a directory or a tar archive) into a directory to commit.

Archives are unpacked into a private temporary directory, refusing absolute paths,
``..``, anything written at or below a symlink the archive made (as ``ostree commit
--tree=tar`` refuses it; a symlink itself, absolute or not, is content and is kept), hard
links to anything but a regular file the archive made before, device nodes, and headers
too large to hold: a release must not carry what the extraction would not put back
faithfully for every user, and unpacking must not write or read outside the tree.
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
    absolute or climbs (``..``)."""
    if name.startswith("/"):
        return None
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    return None if ".." in parts else parts


class _Members:
    """What the archive has made so far, to judge each member by its path alone.

    Nothing here asks the file system where a path leads: ``os.path.realpath``, on which
    tarfile's own filters rely, stops resolving past PATH_MAX and takes the rest of the path
    as text, while the kernel follows every link (CVE-2025-4517, fixed in Python 3.11.13);
    an archive of long directory names and short symlinks then writes, or hard-links, outside
    the tree. So a member may not be written at or below a symlink the archive made, and a
    hard link must name a regular file the archive made before it.
    """

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self.symlinks: set[tuple[str, ...]] = set()
        self.files: set[tuple[str, ...]] = set()

    def check(self, member: tarfile.TarInfo) -> None:
        name = member.name
        try:
            name.encode()
            member.linkname.encode()
        except UnicodeEncodeError:  # tarfile keeps undecodable bytes as surrogates
            raise SourceError(f"{self.archive}: {name}: the name is not UTF-8 (OSTree stores names as UTF-8)") from None
        parts = _parts(name)
        if parts is None:
            why = "absolute path in the archive" if name.startswith("/") else "'..' leads outside the archive"
            raise SourceError(f"{self.archive}: {name}: {why}")
        self._not_through_symlinks(name, parts, member.issym())
        if member.islnk():
            target = _parts(member.linkname)
            if target is None or target in self.symlinks or target not in self.files \
                    or any(target[:i] in self.symlinks for i in range(1, len(target))):
                raise SourceError(f"{self.archive}: {name}: hard link to {member.linkname!r}, which is not a "
                                  "regular file earlier in the archive")
        self.symlinks.discard(parts)
        self.files.discard(parts)
        if member.issym():
            self.symlinks.add(parts)
        elif member.isreg() or member.islnk():
            self.files.add(parts)

    def _not_through_symlinks(self, name: str, parts: tuple[str, ...], is_symlink: bool) -> None:
        for i in range(1, len(parts)):
            if parts[:i] in self.symlinks:
                raise SourceError(f"{self.archive}: {name}: written through the symlink {'/'.join(parts[:i])!r} "
                                  "the archive made")
        if parts in self.symlinks and not is_symlink:  # opened or made where a symlink is: through it
            raise SourceError(f"{self.archive}: {name}: written over the symlink the archive made there")


MAX_HEADER = 1 << 20  # a long name, long link target or pax header held in memory: libarchive's bound


def _bounded_headers(archive: Path) -> type[tarfile.TarInfo]:
    """TarInfo that refuses a long-name, long-link or pax header over MAX_HEADER: tarfile
    reads such a header whole into memory (and copies it), so a 2 MB compressed archive
    claiming a 2 GiB name would take gigabytes before its first member."""

    class Bounded(tarfile.TarInfo):
        def _proc_member(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
            if self.type in _SPECIAL_HEADERS and self.size > MAX_HEADER:
                raise SourceError(f"{archive}: a {self.size}-byte header (a long name or extended attributes): "
                                  f"over the {MAX_HEADER} bytes a release takes")
            return super()._proc_member(tf)  # type: ignore[misc]

    return Bounded


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

    def member_filter(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
        if member.ischr() or member.isblk() or member.isfifo():
            raise SourceError(f"{archive}: {member.name}: device nodes and FIFOs cannot be released")
        # The member is extracted as given (modes are ours), so what tar_filter would only
        # rewrite must be refused here: an absolute name would be written outside ``path``,
        # and a hard link is made to a file on *this* machine (it checks no link target).
        made.check(member)
        if keep_ownership:
            xattrs = sorted(k.split(".", 2)[2] for k in member.pax_headers if k.startswith(_XATTR_KEYS))
            if xattrs:
                raise SourceError(f"{archive}: {member.name}: --keep-ownership cannot keep extended attributes "
                                  f"({', '.join(xattrs)}) from an archive; unpack it as root with "
                                  "'tar --xattrs -xpf' and release the directory")
        try:
            tarfile.tar_filter(member, path)  # (also, where realpath works: the path stays inside)
        except tarfile.FilterError as e:
            raise SourceError(f"{archive}: {member.name}: {e}") from None
        return member

    try:
        # errorlevel 2: an owner or mode that cannot be set (no CAP_CHOWN) is an error, not skipped
        with tarfile.open(fileobj=fileobj, mode="r|", tarinfo=_bounded_headers(archive),
                          errorlevel=2 if keep_ownership else 1) as tf:
            tf.extractall(dest, filter=member_filter, numeric_owner=keep_ownership)  # noqa: S202 - filtered
        while fileobj.read(1 << 20):  # to the end, where the decompressor checks the CRC
            pass
    except tarfile.ExtractError as e:
        raise SourceError(f"{archive}: cannot keep what it asks for: {e}") from None
    except tarfile.ReadError as e:
        raise SourceError(f"{archive}: not a readable tar archive ({e})") from None
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as e:
        raise SourceError(f"{archive}: corrupt archive ({e})") from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise StorageError(f"{archive}: no space left on device to unpack it in {dest.parent}") from None
        raise SourceError(f"{archive}: cannot unpack: {e.strerror or e}") from None
