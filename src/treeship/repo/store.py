"""Objects, for push and receive: where they live, whether they are here, a commit's
closure, reading them in archive form, checking received ones and placing them, commits
marked partial, the file system flushed before refs move."""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from functools import cached_property
from pathlib import Path

from .. import layout, objects
from ..errors import RepoError, StorageError, TransferError
from .core import _OBJ_EXT, Gio, GLib, OSTree, _Core, _storage_error

_META_TYPES = {int(OSTree.ObjectType.DIR_TREE): ("(a(say)a(sayay))", OSTree.validate_structureof_dirtree),
               int(OSTree.ObjectType.DIR_META): ("(uuua(ayay))", OSTree.validate_structureof_dirmeta),
               int(OSTree.ObjectType.COMMIT): ("(a{sv}aya(say)sstayay)", OSTree.validate_structureof_commit),
               int(OSTree.ObjectType.COMMIT_META): ("a{sv}", None)}


class _MissingTree(Exception):
    """A dirtree a walk needs is not in the repository."""

    def __init__(self, checksum: str) -> None:
        super().__init__(checksum)
        self.checksum = checksum


class _Store(_Core):
    """Objects, for push and receive."""

    # -- objects, for push and receive ---------------------------------------------------------

    def object_relpath(self, checksum: str, objtype: int) -> str:
        """Where an object lives under objects/ (archive repos store content as .filez)."""
        ext = _OBJ_EXT[objtype]
        if objtype == OSTree.ObjectType.FILE and self.mode == "archive":
            ext = "filez"
        return layout.object_relpath(checksum, ext)

    def has_object(self, checksum: str, objtype: int) -> bool:
        """Present and usable: a commit marked partial (its closure not yet checked) is not."""
        if objtype == OSTree.ObjectType.COMMIT_META:
            return (self.path / "objects" / self.object_relpath(checksum, objtype)).exists()
        _, present = self._repo.has_object(objtype, checksum, None)
        if present and objtype == OSTree.ObjectType.COMMIT:
            _, _, state = self._repo.load_commit(checksum)
            return not (state & OSTree.RepoCommitState.PARTIAL)
        return bool(present)

    def reachable(self, commit: str, strict: bool = True) -> set[tuple[str, int]]:
        """Every object of a commit's closure (commit, dirtrees, dirmetas, files).

        ``strict``: raise RepoError if a dirtree is missing (else leave that subtree out).
        """
        out = {(commit, int(OSTree.ObjectType.COMMIT))}
        try:
            out.update(self._tree_objects(commit, strict))
        except _MissingTree as e:
            raise RepoError(f"commit {commit}: incomplete: dirtree {e.checksum} is missing") from None
        return out

    def _tree_objects(self, commit: str, strict: bool = True,
                      skip_complete_parent: bool = False) -> Iterator[tuple[str, int]]:
        """(checksum, type) of the dirtrees, dirmetas and files under a commit, each dirtree once.

        Our own walk, dirtrees read by :func:`objects.parse_dirtree`: libostree's
        ``traverse_commit`` takes several times as long and, on a commit marked partial,
        silently skips missing dirtrees. Raises _MissingTree (if ``strict``).

        ``skip_complete_parent``: where the commit's parent is complete (see _complete_commit),
        leave out what the two trees share at the same paths — a subtree whose dirtree is the
        parent's there, a file the parent's directory lists under the same name and checksum
        (each dirmeta is still listed): what is left is what changed.
        """
        try:
            v = self._commit_variant(commit)
        except RepoError:
            if strict:
                raise
            return
        hexsum = OSTree.checksum_from_bytes_v
        file_t, tree_t, meta_t = (int(OSTree.ObjectType.FILE), int(OSTree.ObjectType.DIR_TREE),
                                  int(OSTree.ObjectType.DIR_META))
        old_root = None
        if skip_complete_parent and self._complete_commit(parent := OSTree.commit_get_parent(v)):
            old_root = hexsum(self._commit_variant(parent).get_child_value(6))
        stack: list[tuple[str, str, str | None]] = [(hexsum(v.get_child_value(6)), hexsum(v.get_child_value(7)),
                                                     old_root)]
        trees: set[str] = set()
        while stack:
            tree, meta, old = stack.pop()  # old: the parent's dirtree at the same path, if complete
            yield meta, meta_t
            if tree == old or tree in trees:
                continue
            trees.add(tree)
            entries = self._dirtree_entries(tree)
            if entries is None:
                if strict:
                    raise _MissingTree(tree)
                continue
            yield tree, tree_t
            old_entries = self._dirtree_entries(old) if old else None
            old_files = set(old_entries[0]) if old_entries else set()
            old_dirs = {name: subtree for name, subtree, _ in old_entries[1]} if old_entries else {}
            files, dirs = entries
            for entry in files:
                if entry not in old_files:
                    yield entry[1], file_t
            for name, subtree, submeta in dirs:
                stack.append((subtree, submeta, old_dirs.get(name)))

    def _dirtree_entries(self, checksum: str) -> tuple[list[tuple[bytes, str]], list[tuple[bytes, str, str]]] | None:
        """A dirtree's files and subdirectories (see objects.parse_dirtree); None if it is not here."""
        try:
            with open(f"{self.path}/objects/{layout.object_relpath(checksum, 'dirtree')}", "rb") as f:
                data = f.read()
        except FileNotFoundError:
            try:  # not in this repository's own objects/: libostree looks in a parent repository too
                _, tv = self._repo.load_variant(OSTree.ObjectType.DIR_TREE, checksum)
            except GLib.Error:
                return None
            data = bytes(tv.get_data_as_bytes().get_data() or b"")
        try:
            return objects.parse_dirtree(data)
        except ValueError as e:
            raise RepoError(f"{self.path}: dirtree {checksum}: {e}") from None

    def _complete_commit(self, checksum: str | None) -> bool:
        """Here, and not marked partial: then its whole tree is here (libostree's own rule, and
        the receiver's: a commit it receives stays marked partial until its closure is checked)."""
        return bool(checksum) and self.has_object(checksum, OSTree.ObjectType.COMMIT)

    def check_closure(self, commit: str, placed: set[str] | frozenset[str] = frozenset()) -> str | None:
        """None when every object the commit's tree needs is here, else what is missing.

        Parents are not part of the closure (OSTree keeps partial history). What the commit
        shares with a complete parent is not walked (see _tree_objects): an incremental push
        checks what changed, not the whole tree. ``placed``: objects the caller has itself just
        placed here, as ``XX/REST.SUFFIX`` (type and all: a dirtree is no dirmeta), not looked
        up again (a first push: thousands).
        """
        suffix = {int(OSTree.ObjectType.FILE): "filez" if self.mode == "archive" else "file",
                  int(OSTree.ObjectType.DIR_META): "dirmeta"}
        objects_dir = str(self.path / "objects")
        seen: set[str] = set()  # by path, type and all: a content object is no dirmeta of the same checksum
        try:
            for csum, objtype in self._tree_objects(commit, skip_complete_parent=True):
                if objtype in suffix:
                    relpath = layout.object_relpath(csum, suffix[objtype])
                    if relpath in seen:
                        continue
                    if relpath not in placed and not os.path.exists(f"{objects_dir}/{relpath}"):
                        kind = "content object" if objtype == int(OSTree.ObjectType.FILE) else "dirmeta"
                        return f"{kind} {csum} is missing"
                    seen.add(relpath)
        except RepoError as e:
            return e.message
        except _MissingTree as e:
            return f"dirtree {e.checksum} is missing"
        return None

    def content_size(self, checksum: str) -> int:
        """A content object's uncompressed size (0 for a symlink), wherever libostree finds it
        (this repository, or its parent)."""
        try:
            _, _, info, _ = self._repo.load_file(checksum, None)
        except GLib.Error as e:
            raise _storage_error(e, f"{self.path}: reading object {checksum}.file") from None
        return int(info.get_size()) if info.get_file_type() == Gio.FileType.REGULAR else 0

    def open_stored_object(self, checksum: str, objtype: int) -> int | None:
        """A read-only descriptor on the object's file where it is stored as it travels (every
        object of an archive repository, metadata of any); None where content must be
        converted first (a bare repository: read_object_chunks). The caller closes it."""
        if objtype == OSTree.ObjectType.FILE and self.mode != "archive":
            return None
        return os.open(f"{self.path}/objects/{self.object_relpath(checksum, objtype)}", os.O_RDONLY | os.O_CLOEXEC)

    def read_object_chunks(self, checksum: str, objtype: int, chunk: int = 1 << 20) -> Iterator[bytes]:
        """An object in archive form (content compressed), as the receiver stores it."""
        fd = self.open_stored_object(checksum, objtype)
        if fd is not None:
            with open(fd, "rb", buffering=0) as f:
                while block := f.read(chunk):
                    yield block
            return
        _, inp, fi, xattrs = self._repo.load_file(checksum, None)
        _, stream = OSTree.raw_file_to_archive_z2_stream(inp or Gio.MemoryInputStream.new(), fi, xattrs, None)
        while True:
            data = stream.read_bytes(chunk, None).get_data()
            if not data:
                return
            yield bytes(data)

    def verify_object(self, src: bytes | Path, checksum: str, objtype: int, max_size: int | None = None) -> None:
        """Check an object received in archive form; raise TransferError if it is not ``checksum``.

        Nothing is trusted: metadata is hashed and its GVariant structure validated; content
        is parsed and checksummed (see :func:`treeship.objects.content_checksum`), its
        expansion bounded by the size its header declares, which must not exceed
        ``max_size``. ``src`` is the object's bytes, or a file holding them (large objects).
        """
        if objtype == OSTree.ObjectType.FILE:
            objects.verify_content(src, checksum, max_size)
            return
        data = src.read_bytes() if isinstance(src, Path) else src
        got = hashlib.sha256(data).hexdigest()
        if got != checksum:
            raise TransferError(f"object {checksum}.{_OBJ_EXT[objtype]}: checksum mismatch (hashes to {got})")
        _validate_metadata(data, checksum, objtype)

    @cached_property
    def store(self) -> objects.ObjectStore:
        return objects.ObjectStore(self.path)

    def place_object(self, src: bytes | Path, checksum: str, objtype: int) -> None:
        """Make a verified object visible under objects/, as received (see ObjectStore.place)."""
        mode = self.mode
        if mode != "archive":
            raise RepoError(f"{self.path}: receiving needs an archive-mode repository, this one is {mode}")
        self.store.place(src, checksum, "filez" if objtype == OSTree.ObjectType.FILE else _OBJ_EXT[objtype])

    def install_object(self, src: bytes | Path, checksum: str, objtype: int, max_size: int | None = None) -> None:
        """Verify, then make visible: no object is readable before it is checked."""
        self.verify_object(src, checksum, objtype, max_size)
        self.place_object(src, checksum, objtype)

    def sync_in_background(self) -> Future[None]:
        """Put what was written to the repository on stable storage (one ``syncfs``, as
        libostree does before a transaction moves refs), unless its ``core.fsync`` is false;
        the flush runs in a thread of its own, since it waits for the disk and the caller can
        go on meanwhile (the receiver checks closures). ``result()`` waits for it and raises
        what it raised. Whether to flush is read here, in the calling thread.

        A push writes its objects without flushing each (thousands of fsyncs cost far more
        than one syncfs). This is the line after which the receiver calls a commit complete
        or points a ref at it: a power cut must not leave a ref to objects the disk never got.
        """
        done: Future[None] = Future()
        if self._repo.get_disable_fsync():
            done.set_result(None)
            return done

        def flush() -> None:
            try:
                _flush(self.path)
            except BaseException as e:  # noqa: BLE001 - raised by result(), in the caller's thread
                done.set_exception(e)
            else:
                done.set_result(None)

        threading.Thread(target=flush, name="treeship-sync", daemon=True).start()
        return done

    def mark_partial(self, commit: str, partial: bool) -> None:
        try:
            self._repo.mark_commit_partial(commit, partial)
        except GLib.Error as e:
            raise _storage_error(e, f"{self.path}: marking commit {commit} partial") from None


_ARCHIVE_HEADER = GLib.VariantType.new("(tuuuusa(ayay))")


def check_archive_header(hb: bytes, bad: str) -> None:
    """A content object's ``(tuuuusa(ayay))`` header: in normal form, with a valid file mode.
    (objects.py vouches for plain regular files itself; this is for the others.)"""
    header = GLib.Variant.new_from_bytes(_ARCHIVE_HEADER, GLib.Bytes.new(hb), False)
    if not header.is_normal_form():
        raise TransferError(f"{bad}: header not in normal form")
    try:
        OSTree.validate_structureof_file_mode(struct.unpack_from(">I", hb, 16)[0])
    except GLib.Error as e:
        raise TransferError(f"{bad}: {e.message}") from None


def _validate_metadata(data: bytes, checksum: str, objtype: int) -> None:
    """A metadata object must be a well-formed GVariant of its type, in normal form."""
    vtype, validator = _META_TYPES[objtype]
    name = f"{checksum}.{_OBJ_EXT[objtype]}"
    v = GLib.Variant.new_from_bytes(GLib.VariantType.new(vtype), GLib.Bytes.new(data), False)
    if not v.is_normal_form():
        raise TransferError(f"object {name}: not a valid {_OBJ_EXT[objtype]} (not in normal form)")
    if validator is not None:
        try:
            validator(v)
        except GLib.Error as e:
            raise TransferError(f"object {name}: invalid: {e.message}") from None


def _flush(path: Path) -> None:
    """One syncfs(2) on the file system holding ``path``; StorageError if it fails."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _syncfs(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise StorageError(f"{path}: flushing to disk failed: {e.strerror or e}") from None


def _syncfs(fd: int) -> None:
    """syncfs(2) on the file system holding ``fd`` (the standard library has only sync(2),
    which would wait for every file system of the machine)."""
    import ctypes

    call = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    if call is None:  # not glibc: the whole machine, then
        os.sync()
        return
    if call(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
