"""Objects, for push and receive: where they live, whether they are here, a commit's
closure, reading them in archive form, checking received ones and placing them, commits
marked partial, the file system flushed before refs move."""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

from .. import closure, filerepo, layout, objects
from ..errors import RepoError
from ..future import Future
from .core import _OBJ_EXT, Gio, GLib, OSTree, _Core, _storage_error


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
            out.update(closure.tree_objects(self, commit, strict))
        except closure.MissingTree as e:
            raise RepoError(f"commit {commit}: incomplete: dirtree {e.checksum} is missing") from None
        return out

    def commit_links(self, checksum: str) -> tuple[str, str, str | None]:
        """The commit's root dirtree, root dirmeta and parent (see closure.Trees)."""
        v = self._commit_variant(checksum)
        hexsum = OSTree.checksum_from_bytes_v
        return hexsum(v.get_child_value(6)), hexsum(v.get_child_value(7)), OSTree.commit_get_parent(v)

    def dirtree_entries(self, checksum: str) -> tuple[list[tuple[bytes, str]], list[tuple[bytes, str, str]]] | None:
        """A dirtree's files and subdirectories (see closure.read_dirtree); None if it is not here."""

        def in_parent(checksum: str) -> bytes | None:  # libostree looks in a parent repository too
            try:
                _, tv = self._repo.load_variant(OSTree.ObjectType.DIR_TREE, checksum)
            except GLib.Error:
                return None
            return bytes(tv.get_data_as_bytes().get_data() or b"")

        return closure.read_dirtree(self.path, checksum, in_parent)

    def complete_commit(self, checksum: str | None) -> bool:
        """Here, and not marked partial: then its whole tree is here (libostree's own rule, and
        the receiver's: a commit it receives stays marked partial until its closure is checked)."""
        return bool(checksum) and self.has_object(checksum, OSTree.ObjectType.COMMIT)

    def check_closure(self, commit: str, placed: set[str] | frozenset[str] = frozenset()) -> str | None:
        """None when every object the commit's tree needs is here, else what is missing
        (see closure.check_closure)."""
        return closure.check_closure(self, str(self.path / "objects"), commit,
                                     "filez" if self.mode == "archive" else "file", placed)

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
        """Check an object received in archive form; raise TransferError if it is not
        ``checksum`` (see filerepo.verify_object: the same checks, without libostree)."""
        filerepo.verify_object(src, checksum, objtype, max_size)

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
        """Put what was written to the repository on stable storage, unless its ``core.fsync``
        is false (see filerepo.sync_in_background); read here, in the calling thread."""
        return filerepo.sync_in_background(self.path, not self._repo.get_disable_fsync())

    def mark_partial(self, commit: str, partial: bool) -> None:
        try:
            self._repo.mark_commit_partial(commit, partial)
        except GLib.Error as e:
            raise _storage_error(e, f"{self.path}: marking commit {commit} partial") from None
