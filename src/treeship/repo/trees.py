"""Trees: a directory written as a tree (in parallel, or by libostree's own walk), files
added to it, the tree and its commit written; two commits' trees compared."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RepoError, SourceError, StorageError, UsageError
from .core import Gio, GLib, OSTree, _Core, _is_enospc, _no_space, _storage_error

#: Called from worker threads after each file is stored: (files, bytes) just done.
FileProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class TreeStats:
    """What a tree walk saw: the regular files and their bytes (before compression)."""

    files: int = 0
    bytes: int = 0
    dirs: int = 0
    symlinks: int = 0


@dataclass
class _Walk:
    """Mutable state of one parallel tree write."""

    futures: list[tuple[Any, str, Future[str], int | None]] = field(default_factory=list)
    # O_PATH descriptors handed to the workers and not yet closed: at most this many
    slots: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(128))
    files: int = 0
    bytes: int = 0
    dirs: int = 0
    symlinks: int = 0


@dataclass(frozen=True)
class TreeChange:
    """One path that differs between two trees. ``type``: ``file`` or ``symlink``."""

    path: str
    change: str  # "added" | "removed" | "modified"
    type: str
    old_size: int | None
    new_size: int | None
    old_mode: int | None
    new_mode: int | None


def _to_variant(value: Any) -> GLib.Variant:
    if isinstance(value, GLib.Variant):
        return value
    if isinstance(value, bool):
        return GLib.Variant("b", value)
    if isinstance(value, int):
        return GLib.Variant("t", value)
    if isinstance(value, str):
        return GLib.Variant("s", value)
    if isinstance(value, bytes):
        return GLib.Variant("ay", value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return GLib.Variant("as", value)
    raise TypeError(f"cannot store {type(value).__name__} in commit metadata")


def _file_info(mode: int, uid: int, gid: int, size: int = 0, target: str | None = None) -> Gio.FileInfo:
    fi = Gio.FileInfo.new()
    fi.set_attribute_uint32("unix::uid", uid)
    fi.set_attribute_uint32("unix::gid", gid)
    fi.set_attribute_uint32("unix::mode", mode)
    if stat.S_ISDIR(mode):
        fi.set_file_type(Gio.FileType.DIRECTORY)
    elif stat.S_ISLNK(mode):
        fi.set_file_type(Gio.FileType.SYMBOLIC_LINK)
        fi.set_symlink_target(target or "")
    else:
        fi.set_file_type(Gio.FileType.REGULAR)
        fi.set_size(size)
    return fi


def canonical_mode(mode: int) -> int:
    """OSTree's ``--canonical-permissions``: no setuid/setgid/sticky, no group/other write."""
    return stat.S_IFMT(mode) | (stat.S_IMODE(mode) & 0o755)


class _Trees(_Core):
    """Writing trees and commits; comparing trees."""

    # -- reading trees --------------------------------------------------------------------------

    def diff_trees(self, old: str, new: str) -> list[TreeChange]:
        """Files and symlinks added, removed or modified from commit ``old`` to ``new``.

        Walks both commits' dirtree objects, skipping every subtree whose checksum is the same
        on both sides (libostree's ``diff_dirs`` takes output arrays PyGObject cannot fill).
        A file is modified when its content object differs: content, mode or owner.
        Directories themselves are not reported; a path that changes type is removed and added.
        """
        out: list[TreeChange] = []
        self._diff_dir("", self.commit(old).root_contents, self.commit(new).root_contents, out)
        return out

    def _dirtree(self, checksum: str | None) -> tuple[dict[str, str], dict[str, str]]:
        if checksum is None:
            return {}, {}
        try:
            _, v = self._repo.load_variant(OSTree.ObjectType.DIR_TREE, checksum)
        except GLib.Error as e:
            raise RepoError(f"tree {checksum}: {e.message}") from None
        files_v, dirs_v = v.get_child_value(0), v.get_child_value(1)
        files = {}
        for i in range(files_v.n_children()):
            entry = files_v.get_child_value(i)
            files[entry.get_child_value(0).get_string()] = OSTree.checksum_from_bytes_v(entry.get_child_value(1))
        dirs = {}
        for i in range(dirs_v.n_children()):
            entry = dirs_v.get_child_value(i)
            dirs[entry.get_child_value(0).get_string()] = OSTree.checksum_from_bytes_v(entry.get_child_value(1))
        return files, dirs

    def _diff_dir(self, prefix: str, old: str | None, new: str | None, out: list[TreeChange]) -> None:
        if old == new:
            return
        old_files, old_dirs = self._dirtree(old)
        new_files, new_dirs = self._dirtree(new)
        for name in sorted(old_files.keys() | new_files.keys() | old_dirs.keys() | new_dirs.keys()):
            path = f"{prefix}{name}"
            a, b = old_files.get(name), new_files.get(name)
            if a and b:
                if a != b:
                    ta, sa, ma = self._file_summary(a)
                    tb, sb, mb = self._file_summary(b)
                    if ta != tb:
                        out.append(TreeChange(path, "removed", ta, sa, None, ma, None))
                        out.append(TreeChange(path, "added", tb, None, sb, None, mb))
                    else:
                        out.append(TreeChange(path, "modified", tb, sa, sb, ma, mb))
            elif a:
                ta, sa, ma = self._file_summary(a)
                out.append(TreeChange(path, "removed", ta, sa, None, ma, None))
            elif b:
                tb, sb, mb = self._file_summary(b)
                out.append(TreeChange(path, "added", tb, None, sb, None, mb))
            if name in old_dirs or name in new_dirs:
                self._diff_dir(f"{path}/", old_dirs.get(name), new_dirs.get(name), out)

    def _file_summary(self, checksum: str) -> tuple[str, int, int]:
        """(type, size, mode) of a content object; the size of a symlink is its target's length."""
        try:
            _, inp, fi, _ = self._repo.load_file(checksum, None)
        except GLib.Error as e:
            raise RepoError(f"file {checksum}: {e.message}") from None
        if inp is not None:
            inp.close(None)
        mode = fi.get_attribute_uint32("unix::mode")
        if fi.get_file_type() == Gio.FileType.SYMBOLIC_LINK:
            return "symlink", len((fi.get_symlink_target() or "").encode()), mode
        return "file", fi.get_size(), mode

    # -- writing ------------------------------------------------------------------------------

    def _dirmeta(self, uid: int, gid: int, mode: int) -> str:
        key = (uid, gid, mode)
        with self._lock:
            cached = self._dirmeta_cache.get(key)
        if cached:
            return cached
        v = OSTree.create_directory_metadata(_file_info(mode, uid, gid), None)
        _, raw = self._repo.write_metadata(OSTree.ObjectType.DIR_META, None, v, None)
        csum = OSTree.checksum_from_bytes(raw)
        with self._lock:
            self._dirmeta_cache[key] = csum
        return csum

    def _write_file(self, path: str, fi: Gio.FileInfo, seen: os.stat_result, where: int | None = None) -> str:
        """Store one file of the tree. A regular file is the one the walk looked at (``seen``,
        its lstat): ``where``, an ``O_PATH`` descriptor the walk opened from its directory's
        descriptor and checked (without it, ``path`` is opened, not following a symlink), is
        read through /proc/self/fd — the same inode, whatever has happened to the path since —
        and the file must not have changed once read. A tree being rebuilt while it is
        released would otherwise give a signed release a file it never held (a symlink's
        target, a file of this machine) or an object whose header and content disagree (it
        grew or shrank: ostree cannot check out). (With --keep-ownership libostree's own walk
        reads the tree, and none of this applies.)"""
        if fi.get_file_type() == Gio.FileType.REGULAR:
            fd = _reopen(where, path) if where is not None else \
                _open_as_seen(None, path, path, seen, os.O_RDONLY | os.O_NONBLOCK)
            inp = Gio.UnixInputStream.new(fd, True)
            kept = -1
            try:
                kept = os.dup(fd)  # the write closes the stream: this stays, to be looked at after
                _, stream, length = OSTree.raw_file_to_content_stream(inp, fi, None, None)
                _, raw = self._repo.write_content(None, stream, length, None)
                _same_file(path, seen, os.fstat(kept))  # (checked against seen when opened, too)
            finally:
                inp.close(None)
                if kept >= 0:
                    os.close(kept)
        else:
            _, stream, length = OSTree.raw_file_to_content_stream(Gio.MemoryInputStream.new(), fi, None, None)
            _, raw = self._repo.write_content(None, stream, length, None)
        return OSTree.checksum_from_bytes(raw)

    def write_bytes_file(self, data: bytes, mode: int = 0o100644) -> str:
        """Store ``data`` as a root-owned regular file; return its content checksum."""
        fi = _file_info(mode, 0, 0, len(data))
        inp = Gio.MemoryInputStream.new_from_bytes(GLib.Bytes.new(data))
        _, stream, length = OSTree.raw_file_to_content_stream(inp, fi, None, None)
        try:
            _, raw = self._repo.write_content(None, stream, length, None)
        except GLib.Error as e:
            raise _storage_error(e, "writing a file into the release") from None
        return OSTree.checksum_from_bytes(raw)

    def write_tree(self, source: Path, *, canonical: bool = True, progress: FileProgress | None = None,
                   workers: int | None = None) -> tuple[OSTree.MutableTree, TreeStats]:
        """Store a directory's content; return the mutable tree describing it.

        Canonical permissions (the default) compress files on every core: the result is
        byte-identical to ``ostree commit --canonical-permissions`` (tested). With
        ``canonical=False`` libostree's own walk keeps owners, modes and xattrs.
        """
        try:
            if not canonical:
                return self._write_tree_libostree(source, progress)
            return self._write_tree_parallel(source, progress, workers)
        except RecursionError:  # the walks recurse (os.walk too): a tree ~1,000 directories deep
            raise SourceError(f"{source}: directories nested too deep to release "
                              f"(more than about {sys.getrecursionlimit() - 50} levels)") from None

    def _write_tree_parallel(self, source: Path, progress: FileProgress | None,
                             workers: int | None) -> tuple[OSTree.MutableTree, TreeStats]:
        mtree = OSTree.MutableTree.new()
        walk = _Walk()
        nworkers = workers or max(2, os.cpu_count() or 2)
        first_error: list[BaseException] = []

        def store(where: int | None, path: str, fi: Gio.FileInfo, seen: os.stat_result) -> str:
            try:
                if first_error:
                    raise first_error[0]
                try:
                    csum = self._write_file(path, fi, seen, where)
                except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                    err = _file_error(e, path, self.path)
                    if not first_error:
                        first_error.append(err)
                    raise err from None
            finally:
                if where is not None:
                    os.close(where)
                    walk.slots.release()
            if progress:
                progress(1, seen.st_size if stat.S_ISREG(seen.st_mode) else 0)
            return csum

        _more_descriptors()
        try:
            root = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise SourceError(f"{source}: {e.strerror}") from None
        try:
            with ThreadPoolExecutor(nworkers, thread_name_prefix="treeship-write") as pool:
                try:
                    self._walk(root, str(source), os.fstat(root).st_mode, mtree, pool, store, walk)
                    for parent, name, fut, _ in walk.futures:
                        parent.replace_file(name, fut.result())
                except BaseException:
                    for _, _, fut, where in walk.futures:
                        if fut.cancel() and where is not None:  # never run: its descriptor is ours to close
                            os.close(where)
                    raise
        finally:
            os.close(root)
        stats = TreeStats(files=walk.files, bytes=walk.bytes, dirs=walk.dirs, symlinks=walk.symlinks)
        return mtree, stats

    def _walk(self, dir_fd: int, directory: str, mode: int, mtree: OSTree.MutableTree, pool: ThreadPoolExecutor,
              store: Callable[[int | None, str, Gio.FileInfo, os.stat_result], str], walk: _Walk) -> None:
        """One directory, read through its descriptor: entries looked at with ``dir_fd``,
        subdirectories opened from it without following a symlink and checked to be what
        was looked at, files handed to the workers as ``O_PATH`` descriptors. Nothing goes
        by path, so a directory swapped for a symlink while the tree is released (to one of
        this machine's) cannot lead the walk there. ``mode``: the directory's own."""
        mtree.set_metadata_checksum(self._dirmeta(0, 0, canonical_mode(mode)))
        walk.dirs += 1
        try:
            names = sorted(os.listdir(dir_fd))
        except OSError as e:
            raise SourceError(f"{directory}: cannot read directory: {e.strerror}") from None
        for name in names:
            path = f"{directory}/{name}"
            _utf8_name(path)
            try:
                est = os.lstat(name, dir_fd=dir_fd)
            except OSError as e:
                raise SourceError(f"{path}: {e.strerror}") from None
            mode = est.st_mode
            if stat.S_ISDIR(mode):
                sub_fd = _open_as_seen(dir_fd, name, path, est, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    _, sub = mtree.ensure_dir(name)
                    self._walk(sub_fd, path, mode, sub, pool, store, walk)
                finally:
                    os.close(sub_fd)
            elif stat.S_ISREG(mode):
                fi = _file_info(canonical_mode(mode), 0, 0, est.st_size)
                walk.files += 1
                walk.bytes += est.st_size
                walk.slots.acquire()  # descriptors held for the workers: bounded
                try:
                    where = _open_as_seen(dir_fd, name, path, est, os.O_PATH)
                except BaseException:
                    walk.slots.release()
                    raise
                walk.futures.append((mtree, name, pool.submit(store, where, path, fi, est), where))
            elif stat.S_ISLNK(mode):
                try:
                    target = os.readlink(name, dir_fd=dir_fd)
                except OSError as e:
                    raise SourceError(f"{path}: cannot read symlink: {e.strerror}") from None
                fi = _file_info(stat.S_IFLNK | 0o777, 0, 0, 0, target)
                walk.symlinks += 1
                walk.futures.append((mtree, name, pool.submit(store, None, path, fi, est), None))
            else:
                raise SourceError(f"{path}: {_kind(mode)}; a release holds only files, directories and symlinks")

    def _write_tree_libostree(self, source: Path,
                              progress: FileProgress | None) -> tuple[OSTree.MutableTree, TreeStats]:
        counts = {"files": 0, "bytes": 0, "dirs": 0, "symlinks": 0}
        bad: list[str] = []

        def commit_filter(repo: OSTree.Repo, path: str, fi: Gio.FileInfo, *_: Any) -> OSTree.RepoCommitFilterResult:
            ftype = fi.get_file_type()
            if ftype == Gio.FileType.REGULAR:
                counts["files"] += 1
                counts["bytes"] += fi.get_size()
                if progress:
                    progress(1, fi.get_size())
            elif ftype == Gio.FileType.DIRECTORY:
                counts["dirs"] += 1
            elif ftype == Gio.FileType.SYMBOLIC_LINK:
                counts["symlinks"] += 1
            else:
                bad.append(path)
                return OSTree.RepoCommitFilterResult.SKIP
            return OSTree.RepoCommitFilterResult.ALLOW

        # Refuse special files before writing anything: libostree would fail obscurely.
        _check_special_files(source)
        modifier = OSTree.RepoCommitModifier.new(OSTree.RepoCommitModifierFlags.NONE, commit_filter)
        mtree = OSTree.MutableTree.new()
        try:
            self._repo.write_directory_to_mtree(Gio.File.new_for_path(str(source)), mtree, modifier, None)
        except GLib.Error as e:
            if _is_enospc(e):
                raise _storage_error(e, f"{self.path}") from None
            raise SourceError(f"{source}: {e.message}") from None
        if bad:
            raise SourceError(f"{source}{bad[0]}: not a regular file, directory or symlink")
        return mtree, TreeStats(**counts)

    def add_file(self, mtree: OSTree.MutableTree, path_in_tree: str, data: bytes) -> None:
        """Put ``data`` at ``path_in_tree`` (parents created 0755, root-owned)."""
        parts = [p for p in path_in_tree.strip("/").split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            raise UsageError(f"invalid path in tree {path_in_tree!r}")
        csum = self.write_bytes_file(data)
        try:
            _, parent = mtree.ensure_parent_dirs(parts, self._dirmeta(0, 0, stat.S_IFDIR | 0o755))
            if parts[-1] in parent.get_subdirs():
                raise UsageError(f"cannot write {path_in_tree}: a directory of that name is in the tree")
            parent.replace_file(parts[-1], csum)
        except GLib.Error as e:
            raise UsageError(f"cannot write {path_in_tree} into the tree: {e.message}") from None

    def write_mtree(self, mtree: OSTree.MutableTree) -> tuple[str, str, Any]:
        """Write the dirtree objects; return (contents checksum, metadata checksum, root)."""
        try:
            _, root = self._repo.write_mtree(mtree, None)
        except GLib.Error as e:
            raise _storage_error(e, f"{self.path}: writing the tree") from None
        return root.tree_get_contents_checksum(), root.tree_get_metadata_checksum(), root

    def write_commit(self, parent: str | None, subject: str, body: str, metadata: dict[str, Any],
                     root: Any, timestamp: int | None = None) -> str:
        meta = GLib.Variant("a{sv}", {k: _to_variant(v) for k, v in metadata.items()})
        try:
            if timestamp is None:
                _, csum = self._repo.write_commit(parent, subject, body, meta, root, None)
            else:
                _, csum = self._repo.write_commit_with_time(parent, subject, body, meta, root, timestamp, None)
        except GLib.Error as e:
            raise _storage_error(e, f"{self.path}: writing the commit") from None
        return csum


def _more_descriptors() -> None:
    """The walk holds a descriptor per directory level (up to ~950) and up to 128 files':
    the soft limit on open files (often 1024) raised to the hard one, as far as it goes."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1 << 20), hard))


def _open_as_seen(dir_fd: int | None, name: str, path: str, seen: os.stat_result, flags: int) -> int:
    """``name`` opened from ``dir_fd`` (None: ``path`` as it is) with ``flags``, not following a
    symlink and not waiting (a FIFO), if it is still what ``seen`` (its lstat) was: the same
    type and inode (a regular file: also its size and time). SourceError otherwise."""
    try:
        fd = os.open(name if dir_fd is not None else path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SourceError(f"{path}: replaced by a symlink while being released") from None
        if e.errno == errno.ENOTDIR:
            raise SourceError(f"{path}: replaced while being released") from None
        if e.errno in (errno.EMFILE, errno.ENFILE):
            raise SourceError(f"{path}: too many open files for a tree this deep (a descriptor per level: "
                              "raise the limit, ulimit -n)") from None
        raise SourceError(f"{path}: {e.strerror}") from None
    try:
        now = os.fstat(fd)
        if stat.S_ISDIR(seen.st_mode):
            if not stat.S_ISDIR(now.st_mode) or (now.st_dev, now.st_ino) != (seen.st_dev, seen.st_ino):
                raise SourceError(f"{path}: replaced while being released")
        else:
            _same_file(path, seen, now)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _reopen(where: int, path: str) -> int:
    """The file an ``O_PATH`` descriptor holds, opened for reading (through /proc/self/fd:
    the same inode, not a path looked up again)."""
    try:
        return os.open(f"/proc/self/fd/{where}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SourceError(f"{path}: {e.strerror} (reading it through /proc/self/fd)") from None


def _same_file(path: str, seen: os.stat_result, now: os.stat_result) -> None:
    """SourceError unless ``now`` is the regular file ``seen`` was, unchanged."""
    if not stat.S_ISREG(now.st_mode):
        raise SourceError(f"{path}: replaced by {_kind(now.st_mode)} while being released")
    if (now.st_dev, now.st_ino) != (seen.st_dev, seen.st_ino):
        raise SourceError(f"{path}: replaced by another file while being released")
    if (now.st_size, now.st_mtime_ns) != (seen.st_size, seen.st_mtime_ns):
        raise SourceError(f"{path}: changed while being released ({seen.st_size} bytes, now {now.st_size})")


def _lstat(path: Path) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as e:
        raise SourceError(f"{path}: {e.strerror}") from None


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "an unsupported file type"


def _utf8_name(path: str) -> None:
    """SourceError unless the file's name is UTF-8: OSTree stores names as UTF-8 strings."""
    try:
        os.path.basename(path).encode()
    except UnicodeEncodeError:
        raise SourceError(f"{path}: the file name is not UTF-8 (OSTree stores names as UTF-8)") from None


def _check_special_files(source: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(source):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            _utf8_name(p)
            mode = _lstat(Path(p)).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
                raise SourceError(f"{p}: {_kind(mode)}; a release holds only files, directories and symlinks")
            # libostree's own error would name only the base name
            need = os.R_OK | os.X_OK if stat.S_ISDIR(mode) else os.R_OK if stat.S_ISREG(mode) else 0
            if need and not os.access(p, need):
                raise SourceError(f"{p}: permission denied")


def _file_error(e: BaseException, source_path: str, repo_path: Path) -> BaseException:
    """Say whose fault a failed file write was: the source's (unreadable) or the repo's."""
    if _is_enospc(e):
        return _no_space(e, repo_path)
    if isinstance(e, GLib.Error):
        if e.matches(Gio.io_error_quark(), Gio.IOErrorEnum.PERMISSION_DENIED) or \
                e.matches(Gio.io_error_quark(), Gio.IOErrorEnum.NOT_FOUND):
            return SourceError(f"{source_path}: {e.message}")
        return StorageError(f"{repo_path}: storing {source_path}: {e.message}")
    if isinstance(e, OSError):
        return SourceError(f"{source_path}: {e.strerror}")
    return e
