"""Content objects as a push receives them, checked and stored without libostree.

Almost every object of a push is a content object (``.filez``). Checking one is sha256
over its inflated content, and storing it is one new file: neither needs libostree, and
doing both here lets objects be received while the receiver is still loading it (about
60 ms), or without loading it at all (a plain push: see :mod:`treeship.filerepo`). The
format is OSTree's (ostree-core-private.h); a header other than a plain regular file's (a
symlink, extended attributes) is checked by GLib (:func:`check_archive_header`), and
``ostree fsck`` in the tests cross-checks.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import struct
import threading
from collections.abc import Callable, Generator, Iterable
from pathlib import Path

from .errors import StorageError, TransferError
from .layout import object_relpath

# zlib-ng inflates raw deflate ~1.7x faster than zlib and refuses what zlib refuses: the
# Huffman-code rules of zlib's inflate_table, which it shares. ISA-L, ~1.3x faster again,
# accepts incomplete codes that zlib refuses ("invalid distances set"): the receiver would
# store under its checksum an object that libostree (zlib) cannot inflate, and a key allowed
# one branch could plant it for another branch's release to find "present" (docs/reliability.md).
try:
    from zlib_ng import zlib_ng as _inflate
except ImportError:  # a platform without its wheel: the standard library's zlib, same API and verdicts
    import zlib as _inflate  # type: ignore[no-redef]

SPILL_SIZE = 4 << 20  # a received object larger than this goes to a file, not memory
TRACKED_AT_MOST = 100_000  # placed objects remembered by name: memory stays bounded whatever the push
_HEX_DIGITS = frozenset("0123456789abcdef")
_MODE_BITS = stat.S_IFMT(0o170000) | 0o7777  # what ostree_validate_structureof_file_mode allows besides the type


def _plain_regular_header(hb: bytes, mode: int) -> bool:
    """A regular file's header without extended attributes: 26 bytes, in its one normal form.

    ``(tuuuusa(ayay))`` with the target "" and no xattrs serializes as the five numbers
    (24 bytes), the target's NUL, no bytes for the empty array, and one framing offset (25)
    marking where the target ends. Numbers have no invalid values; the mode must be a
    regular file's with no bits beyond the permissions (ostree_validate_structureof_file_mode).
    """
    return (len(hb) == 26 and hb[24] == 0 and hb[25] == 25 and stat.S_ISREG(mode)
            and not mode & ~_MODE_BITS)


class ObjectStore:
    """The objects/ directory of an archive repository, for placing verified objects.

    With ``staging`` (a directory of this push's own on the same file system), an object
    whose ``objects/XX`` directory does not exist yet is written straight under its name into
    ``staging/XX``, and :meth:`unstage` later moves each such directory into ``objects/`` with
    one rename. Until then nothing in it is readable where clients look, so it need not be
    made whole before it is named: one ``openat`` where an unnamed file and a ``linkat`` cost
    a third more system time per object (a first push places thousands; measured in
    docs/performance.md). Directories that exist already get objects one by one, as without.
    """

    def __init__(self, repo_path: str | os.PathLike[str], staging: str | None = None) -> None:
        self.path = Path(repo_path)
        self.staging = staging
        self._fd: int | None = None
        self._staging_fd: int | None = None
        self._dirs: set[str] = set()  # objects/XX directories known to exist
        self._staged: set[str] = set()  # staging/XX directories made, not yet moved into objects/
        self._tainted: set[str] = set()  # staged directories where a write failed: moved file by file
        self._listed: set[str] | None = None  # objects/XX present when staging began
        self._lock = threading.Lock()
        # XX/REST.SUFFIX of what was placed (a closure check need not stat them): the first
        # TRACKED_AT_MOST, ~200 bytes each; past them, a closure check stats as for any object
        self.placed: set[str] = set()

    def close(self) -> None:
        for fd in (self._fd, self._staging_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._staging_fd = None

    def __del__(self) -> None:
        self.close()

    def _open(self) -> None:
        """The directory descriptors, all or none (a failure leaves the store as it was)."""
        with self._lock:
            if self._fd is not None:
                return
            fd = os.open(self.path / "objects", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                if self.staging is not None:
                    listed = set(os.listdir(self.path / "objects"))
                    os.makedirs(self.staging, exist_ok=True)
                    self._staging_fd = os.open(self.staging, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                    self._listed = listed
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd

    def place(self, src: bytes | Path, checksum: str, suffix: str) -> None:
        """Make a verified object visible as objects/XX/REST.SUFFIX, as received (no recompression).

        The file appears under its name only complete: an unnamed O_TMPFILE linked into
        place, or a temp file renamed; an interrupted write leaves nothing readable (a staged
        one is readable nowhere until :meth:`unstage`). This is on a push's hot path
        (thousands of files): directory descriptors, plain strings, and the existing
        objects/XX directories looked up once. ``placed`` records it by its path under
        objects/, type and all.
        """
        relpath = object_relpath(checksum, suffix)
        directory, _, name = relpath.partition("/")
        staged = False
        try:
            if self._fd is None:
                self._open()
            if directory not in self._dirs:
                self._make_dir(directory)
            staged = directory in self._staged
            if isinstance(src, Path):
                os.chmod(src, 0o644)
                os.replace(src, relpath, dst_dir_fd=self._staging_fd if staged else self._fd)
            elif staged:
                write_staged_file(self._staging_fd, relpath, src)
            else:
                write_new_file(self._fd, directory, name, src)
            if len(self.placed) < TRACKED_AT_MOST:
                self.placed.add(relpath)
        except OSError as e:
            if staged:  # a file cut short may be left there (if removing it failed too)
                self._tainted.add(directory)
            if e.errno == errno.ENOSPC:
                raise StorageError(f"{self.path}: no space left on device") from None
            raise StorageError(f"{self.path}: storing {name}: {e.strerror}") from None

    def _make_dir(self, directory: str) -> None:
        with self._lock:  # the reading thread and the verify thread must decide alike
            if directory in self._dirs:
                return
            if self._listed is not None and directory not in self._listed:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(directory, 0o755, dir_fd=self._staging_fd)
                self._staged.add(directory)
            else:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(directory, 0o755, dir_fd=self._fd)
            self._dirs.add(directory)

    def unstage(self) -> None:
        """Move the staged directories into objects/: each with one rename, or object by object
        where objects/XX has appeared meanwhile (made by a concurrent push, say) or where a
        write failed (only files written whole, 0644, are moved). Call it once no place() is
        under way; objects placed later go straight to objects/."""
        with self._lock:
            staged, self._staged, self._listed = sorted(self._staged), set(), None
        try:
            for directory in staged:
                if directory not in self._tainted:
                    try:
                        # A rename replaces an empty objects/XX (harmless: nothing is in it) and
                        # fails on one that holds something.
                        os.rename(directory, directory, src_dir_fd=self._staging_fd, dst_dir_fd=self._fd)
                        continue
                    except OSError as e:
                        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                            raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(directory, 0o755, dir_fd=self._fd)
                for name in os.listdir(f"{self.staging}/{directory}"):
                    if _written_whole(os.stat(f"{directory}/{name}", dir_fd=self._staging_fd, follow_symlinks=False)):
                        os.rename(f"{directory}/{name}", f"{directory}/{name}",
                                  src_dir_fd=self._staging_fd, dst_dir_fd=self._fd)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise StorageError(f"{self.path}: no space left on device") from None
            raise StorageError(f"{self.path}: moving received objects into objects/: {e.strerror}") from None

    def install_content(self, src: bytes | Path, checksum: str, max_size: int | None = None) -> None:
        """Check a received content object, then make it visible. (The reading thread's way,
        for small objects: in one go, with content_checksum's in-memory path up to _PLAIN_MAX.)"""
        verify_content(src, checksum, max_size)
        self.place(src, checksum, "filez")

    def install_steps(self, src: bytes | Path, checksum: str, max_size: int | None = None) -> Steps[None]:
        """:meth:`install_content` in steps, at most a megabyte inflated each (see ``Steps`` in this module)."""
        _match(checksum, (yield from checksum_steps(src, checksum, max_size)))
        self.place(src, checksum, "filez")


def collect(chunks: Iterable[bytes], limit: int, spill: str | Path, what: str) -> bytes | Path:
    """An object's bytes from its chunks: in memory, or in the file ``spill`` once past
    SPILL_SIZE (returned as a Path), so memory stays bounded whatever its size;
    TransferError past ``limit``. (``spill`` may be a plain string: a Path per object
    costs a push of thousands of small objects more than it is worth.)"""
    held: list[bytes] = []
    size = 0
    out = None
    try:
        for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise TransferError(f"{what} exceeds the limit of {limit} bytes")
            if out is not None:
                out.write(chunk)
                continue
            held.append(chunk)
            if size > SPILL_SIZE:
                out = open(spill, "wb")  # noqa: SIM115 - closed below
                out.writelines(held)
                held = []
    finally:
        if out is not None:
            out.close()
    if out is not None:
        return Path(spill)
    return b"".join(held) if len(held) != 1 else held[0]


def check_archive_header(hb: bytes, bad: str) -> None:
    """A content object's ``(tuuuusa(ayay))`` header that is not a plain regular file's (a
    symlink, extended attributes): in normal form (GLib's judgement, through
    :mod:`treeship.gvariant`), with a mode libostree allows (ostree_validate_structureof_file_mode:
    a regular file or a symlink, no bits beyond the permissions)."""
    from .gvariant import normal

    if normal("(tuuuusa(ayay))", hb) is None:
        raise TransferError(f"{bad}: header not in normal form")
    mode = struct.unpack_from(">I", hb, 16)[0]
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise TransferError(f"{bad}: invalid file mode {mode:o}: not a regular file or a symlink")
    if mode & ~_MODE_BITS:
        raise TransferError(f"{bad}: invalid file mode {mode:o}: bits beyond the permissions")


def verify_content(src: bytes | Path, checksum: str, max_size: int | None = None, plain_only: bool = False) -> None:
    """Raise TransferError unless ``src`` (archive form) is the content object ``checksum``
    (``plain_only``: and a regular file without extended attributes, the one header adoption takes)."""
    _match(checksum, content_checksum(src, checksum, max_size, plain_only))


def _match(checksum: str, got: str) -> None:
    if got != checksum:
        raise TransferError(f"object {checksum}.file: checksum mismatch (content hashes to {got})")


# Steps[T]: work done in steps. Each ``next()`` does a bounded piece (here: inflating and
# hashing at most a megabyte, in or out); the generator's return value is the result. The
# receiver's verify thread runs large objects so, at a low priority, and hands a job back
# between two steps when the reading thread needs its result (transfer/receiver.py,
# _Verifier): one step is the longest the reading thread waits on a starved thread.
TYPE_CHECKING = False  # not `from typing`: importing typing costs a receiver ~3 ms
if TYPE_CHECKING:
    from typing import TypeVar

    T = TypeVar("T")
    Steps = Generator[None, None, T]


def finish(steps: Steps[T]) -> T:
    """Run ``steps`` to the end; its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


_MAX_ARCHIVE_HEADER = 16 << 20


_INFLATE_CHUNK = 1 << 20
_MAX_CONTENT = 1 << 62  # a content size past this is no file's (inflate's output bound is a signed 64-bit)


def _gvariant_offset_size(total: int) -> int:
    """Bytes per framing offset in a serialized GVariant container of ``total`` bytes (gvariant-serialiser.c)."""
    return 8 if total > 0xFFFFFFFF else 4 if total > 0xFFFF else 2 if total > 0xFF else 1 if total else 0


def content_checksum(src: bytes | Path, checksum: str, max_size: int | None, plain_only: bool = False) -> str:
    """The content checksum of an object in archive form (``.filez``), its expansion bounded
    (see :func:`checksum_steps`)."""
    if isinstance(src, bytes):
        got = _plain_checksum(src, max_size, _PLAIN_MAX)
        if got is not None:
            return got
    return finish(_general_steps(src, checksum, max_size, plain_only))


def checksum_steps(src: bytes | Path, checksum: str, max_size: int | None) -> Steps[str]:
    """:func:`content_checksum` in steps (see ``Steps`` in this module): none inflates more
    than a megabyte of input or of output."""
    if isinstance(src, bytes):
        got = _plain_checksum(src, max_size, _INFLATE_CHUNK)
        if got is not None:
            return got
    return (yield from _general_steps(src, checksum, max_size, False))


def _general_steps(src: bytes | Path, checksum: str, max_size: int | None, plain_only: bool) -> Steps[str]:
    """The content checksum of anything: a step per inflate call (at most a megabyte in or out).

    The format (libostree's ostree-core-private.h): a u32 BE header length, 4 bytes of
    padding, a ``(tuuuusa(ayay))`` header (size, uid, gid, mode, rdev, symlink target,
    xattrs; numbers big-endian), then the content as raw deflate. The checksum is the sha256
    of the ``(uuuusa(ayay))`` file header (with the same length prefix) followed by the
    uncompressed content: the archive header in normal form less its size, re-framed.

    libostree's own check (``checksum_file_from_input``) inflates to the end of the stream,
    however far that is: a few kilobytes that expand to terabytes would keep the receiver
    busy for hours. Here the size the header declares must be within ``max_size``, and
    inflating stops one byte past it. zlib-ng (or zlib) and hashlib release the GIL, so a
    verify thread runs in parallel with the reading one; ``ostree fsck`` in the tests
    cross-checks, and a differential test holds the verdicts to the standard library's zlib.
    """
    bad = f"object {checksum}.file: malformed"
    with open(src, "rb") if isinstance(src, Path) else contextlib.nullcontext(memoryview(src)) as f:
        read = f.read if isinstance(src, Path) else _reader(f)
        head = read(8)
        if len(head) < 8:
            raise TransferError(f"{bad}: truncated header")
        hlen = int.from_bytes(head[:4], "big")
        if not 26 <= hlen <= _MAX_ARCHIVE_HEADER:  # 26: the smallest (tuuuusa(ayay))
            raise TransferError(f"{bad}: header length {hlen} out of range")
        hb = bytes(read(hlen))
        if len(hb) < hlen:
            raise TransferError(f"{bad}: truncated header")
        size, _uid, _gid, mode, rdev = struct.unpack_from(">QIIII", hb)
        if not _plain_regular_header(hb, mode):
            if plain_only:
                raise TransferError(f"{bad}: not a plain regular file")
            check_archive_header(hb, bad)
        is_link = stat.S_ISLNK(mode)
        w = _gvariant_offset_size(hlen)
        end_target = int.from_bytes(hb[hlen - w:], "little")  # where the symlink target (s) ends
        if rdev != 0 or (not is_link and end_target != 25):  # a regular file's target is "" (one NUL)
            raise TransferError(f"{bad}: inconsistent header")
        if is_link:
            size = 0  # a symlink's content is its target, in the header; nothing is inflated
        elif max_size is not None and size > max_size:
            raise TransferError(f"object {checksum}.file: its content expands to {size} bytes, "
                                f"over the limit of {max_size} bytes")
        elif size > _MAX_CONTENT:  # (no limit given) a bound for the arithmetic below, far past any file
            raise TransferError(f"{bad}: its header declares {size} bytes of content")
        body = hb[8:hlen - w]
        w2 = next(n for n in (1, 2, 4, 8) if len(body) + n <= (1 << (8 * n)) - 1)
        file_header = body + (end_target - 8).to_bytes(w2, "little")
        h = hashlib.sha256(len(file_header).to_bytes(4, "big") + bytes(4) + file_header)
        inflater = _inflate.decompressobj(-15)
        produced = 0
        body_sent = False
        while chunk := read(_INFLATE_CHUNK):
            if inflater.eof:
                raise TransferError(f"{bad}: data after the end of its content")
            while True:  # at most a megabyte out per call: a few kilobytes may inflate to gigabytes
                bound = min(_INFLATE_CHUNK, size - produced + 1)
                try:
                    out = inflater.decompress(chunk, bound)
                except _inflate.error as e:
                    raise TransferError(f"{bad}: its content does not inflate ({e})") from None
                produced += len(out)
                if produced > size:
                    raise TransferError(f"{bad}: its content is longer than the {size} bytes its header says")
                h.update(out)
                yield
                chunk = inflater.unconsumed_tail
                if inflater.eof:
                    if chunk or inflater.unused_data:
                        raise TransferError(f"{bad}: data after the end of its content")
                    break
                if not chunk and len(out) < bound:  # all taken in, nothing held back (a full
                    break  # call may leave output pending with no input left: ask again)
                if chunk and not out:  # input left, nothing out: inflate does not do that; a guard
                    raise TransferError(f"{bad}: its content does not inflate (no progress)")
            body_sent = True
        # A symlink's body is empty as libostree writes it; one sent anyway must be a whole,
        # empty deflate stream (not, say, a megabyte of empty blocks that never ends).
        if produced != size or not (inflater.eof or (is_link and not body_sent)):
            raise TransferError(f"{bad}: its content is not the {size} bytes its header says")
    return h.hexdigest()


_PLAIN_START = (26).to_bytes(4, "big") + bytes(4)  # a plain regular file's archive header: 26 bytes
_PLAIN_FILE_HEADER = (18).to_bytes(4, "big") + bytes(4)  # ... and the file header hashed: 17 + 1
_NUMBERS = struct.Struct(">QIIII")
_PLAIN_MAX = 4 << 20  # content inflated in one call by _plain_checksum, at most


def _plain_checksum(data: bytes, max_size: int | None, whole: int = _PLAIN_MAX) -> str | None:
    """content_checksum of an object held in memory with the plain regular header, when all is
    well; None for anything else, which content_checksum's general path judges (and names).

    Most objects of a push are such, and small: this is the reading thread's share of each
    (docs/performance.md), without the general path's reader, header arithmetic and loop;
    the bytes hashed are the same (the header re-framed as content_checksum explains). Only
    content up to ``whole`` bytes is taken (_PLAIN_MAX; a megabyte for checksum_steps): it
    is inflated in one piece.
    """
    if not data.startswith(_PLAIN_START) or len(data) < 34:
        return None
    size, _uid, _gid, mode, rdev = _NUMBERS.unpack_from(data, 8)
    if rdev or size > whole or (max_size is not None and size > max_size) \
            or not _plain_regular_header(data[8:34], mode):
        return None  # (a larger one is inflated piecewise by the general path: memory stays bounded)
    inflater = _inflate.decompressobj(-15)
    try:
        out = inflater.decompress(memoryview(data)[34:], size + 1)
    except _inflate.error:
        return None
    if len(out) != size or not inflater.eof or inflater.unused_data:
        return None
    h = hashlib.sha256(_PLAIN_FILE_HEADER)
    h.update(data[16:33])  # uid, gid, mode, rdev, the symlink target's NUL
    h.update(b"\x11")  # where that target ends, now 8 bytes sooner (no size)
    h.update(out)
    return h.hexdigest()


def parse_dirtree(data: bytes) -> tuple[list[tuple[bytes, str]], list[tuple[bytes, str, str]]]:
    """A dirtree's entries read without GLib: ``(name, content checksum)`` per file and
    ``(name, dirtree, dirmeta)`` per subdirectory, checksums in hex, names as stored.

    The format is ``(a(say)a(sayay))`` in GVariant's serialization (gvariant-serialiser.c):
    an array of variable-size elements ends in a table of where each element ends, and a
    tuple ends in where each of its variable-size members but the last ends, last member's
    first. Every element here is byte-aligned, so there is no padding to skip. This is for
    objects already in a repository (checked when they arrived, or written by libostree):
    walking a tree's thousands of entries through PyGObject costs several times as much.
    Raises ValueError where the framing does not hold together.
    """
    n = len(data)
    w = _gvariant_offset_size(n)
    files_end = int.from_bytes(data[n - w:], "little")
    if not 0 <= files_end <= n - w:
        raise ValueError("dirtree: framing offset out of range")
    files = []
    for e in _array_elements(data[:files_end]):
        ew = _gvariant_offset_size(len(e))
        name_end = int.from_bytes(e[len(e) - ew:], "little")
        csum = e[name_end:len(e) - ew]
        if not 1 <= name_end <= len(e) - ew or e[name_end - 1] != 0 or len(csum) != 32:
            raise ValueError("dirtree: malformed file entry")
        files.append((e[:name_end - 1], csum.hex()))
    dirs = []
    for e in _array_elements(data[files_end:n - w]):
        ew = _gvariant_offset_size(len(e))
        name_end = int.from_bytes(e[len(e) - ew:], "little")
        tree_end = int.from_bytes(e[len(e) - 2 * ew:len(e) - ew], "little")
        tree, meta = e[name_end:tree_end], e[tree_end:len(e) - 2 * ew]
        if not 1 <= name_end <= tree_end <= len(e) - 2 * ew or e[name_end - 1] != 0 \
                or len(tree) != 32 or len(meta) != 32:
            raise ValueError("dirtree: malformed directory entry")
        dirs.append((e[:name_end - 1], tree.hex(), meta.hex()))
    return files, dirs


def _array_elements(data: bytes) -> list[bytes]:
    """The elements of a serialized GVariant array of byte-aligned, variable-size elements."""
    n = len(data)
    if n == 0:
        return []
    w = _gvariant_offset_size(n)
    table = int.from_bytes(data[n - w:], "little")  # the last element's end: where the table starts
    count, rest = divmod(n - table, w) if table <= n - w else (0, 1)
    if rest or count == 0:
        raise ValueError("array framing offsets out of range")
    out = []
    start = 0
    for i in range(table, n, w):
        end = int.from_bytes(data[i:i + w], "little")
        if not start <= end <= table:
            raise ValueError("array framing offsets out of order")
        out.append(data[start:end])
        start = end
    return out


def _reader(view: memoryview) -> Callable[[int], memoryview]:
    pos = 0

    def read(n: int) -> memoryview:
        nonlocal pos
        out = view[pos:pos + n]
        pos += len(out)
        return out

    return read


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race with other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o777  # unknown: assume the worst, so files are always chmodded


_CHMOD_NEEDED = bool(_umask() & 0o644)


def write_staged_file(dir_fd: int, path: str, data: bytes) -> None:
    """Create ``path`` (relative to ``dir_fd``, a directory nobody reads yet) holding ``data``;
    removed again if it cannot be written whole. The same object twice is written once.

    It is made 0600 and turned 0644 once written whole: should the process be killed
    meanwhile, :func:`adopt_staged` knows a finished file from one cut short."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        return
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, 0o644)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path, dir_fd=dir_fd)
        raise
    finally:
        os.close(fd)


def _written_whole(st: os.stat_result) -> bool:
    """A staged file that write_staged_file finished: regular, and turned 0644 last."""
    return stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644


_STAGED_NAME = re.compile(r"[0-9a-f]{62}\.filez")


def adopt_staged(repo_path: str | os.PathLike[str], staging: str | os.PathLike[str],
                 max_size: int | None = None, deadline: float | None = None) -> tuple[int, bool]:
    """Move into objects/ the content objects a receiver that was killed had staged whole,
    checked again; say how many, and whether every staged file was judged.

    A staged file is 0644 only once written whole (write_staged_file), and each was verified
    before it was written; still, a file's mode is no checksum, so each is hashed again
    here (this runs only after a receiver was killed). Only plain content objects that are
    ours — regular, not linked elsewhere, 0644, this user's — in real directories are taken,
    each judged, hashed and linked in through one descriptor (what is checked is what
    lands); dirtrees, dirmetas and objects with symlink or xattr headers (chosen to keep this
    to the one header form checked byte for byte, when the others still needed libostree)
    are left to be sent again, and everything left is deleted with the directory. The
    caller adopts only what a receiver of the same boot left: after a crash, data never
    flushed may not be what was written (libostree keeps its own staging directories by the
    same rule).

    Past ``deadline`` (``time.monotonic()``) it stops, and what is left waits for a later
    sweep: a push waits for this before its first answer (966,000 staged objects took 68 s).
    Every file judged is gone from the staging directory afterwards, adopted or not (one not
    adopted would have gone with the directory), so that each sweep makes progress.
    """
    import time

    objects_fd = os.open(f"{repo_path}/objects", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    adopted = 0
    try:
        for directory in os.listdir(staging):
            if not (len(directory) == 2 and _HEX_DIGITS.issuperset(directory)
                    and stat.S_ISDIR(os.lstat(f"{staging}/{directory}").st_mode)):
                continue
            for name in os.listdir(f"{staging}/{directory}"):
                if deadline is not None and time.monotonic() >= deadline:
                    return adopted, False
                if _STAGED_NAME.fullmatch(name):
                    adopted += _adopt_one(objects_fd, f"{staging}/{directory}", directory, name, max_size)
                with contextlib.suppress(OSError):
                    os.unlink(f"{staging}/{directory}/{name}")  # judged: adopted, or never to be
        return adopted, True
    finally:
        os.close(objects_fd)


def _adopt_one(objects_fd: int, path: str, directory: str, name: str, max_size: int | None) -> bool:
    src = f"{path}/{name}"
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not (_written_whole(st) and st.st_uid == os.geteuid() and st.st_nlink == 1):
            return False
        if os.path.exists(f"/proc/self/fd/{objects_fd}/{directory}/{name}"):
            return False  # here already (the retry sent it): nothing to hash
        try:
            verify_content(Path(f"/proc/self/fd/{fd}"), directory + name[:62], max_size, plain_only=True)
        except TransferError:
            return False
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o755, dir_fd=objects_fd)
        _link_in(fd, f"{directory}/{name}", objects_fd)
        os.unlink(src)
        return True
    finally:
        os.close(fd)


def write_new_file(dir_fd: int, directory: str, name: str, data: bytes) -> None:
    """Create ``directory/name`` (relative to ``dir_fd``) holding ``data``, visible only once
    complete (O_TMPFILE + linkat)."""
    dest = f"{directory}/{name}"
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    except OSError as e:  # no O_TMPFILE on this file system: a temp name, then rename
        if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
        tmp = f"{directory}/.tmp-{name}-{os.getpid()}-{threading.get_ident()}"
        try:
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644, dir_fd=dir_fd),
                      "wb") as f:
                f.write(data)
                os.fchmod(f.fileno(), 0o644)
            os.replace(tmp, dest, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        return
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if _CHMOD_NEEDED:
            os.fchmod(fd, 0o644)
        _link_in(fd, dest, dir_fd)
    finally:
        os.close(fd)


def _link_in(fd: int, path: str, dir_fd: int) -> None:
    """Name the file open as ``fd`` ``path`` (relative to ``dir_fd``); a file already there is
    the same verified object (placed by a concurrent push, say) and stays."""
    with contextlib.suppress(FileExistsError):
        # dst_dir_fd makes CPython call linkat(AT_SYMLINK_FOLLOW), which follows /proc's link.
        os.link(f"/proc/self/fd/{fd}", path, dst_dir_fd=dir_fd, follow_symlinks=True)
