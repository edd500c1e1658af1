"""The only module that touches libostree (PyGObject ``gi.repository.OSTree``).

Everything above speaks plain Python: checksums are hex strings, metadata values are
str / list[str] / int / bool / bytes. libostree errors become :mod:`treeship.errors`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import struct
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import gi

gi.require_version("OSTree", "1.0")
from gi.repository import Gio, GLib, OSTree  # noqa: E402

from . import layout, objects  # noqa: E402
from .errors import (  # noqa: E402
    RepoError,
    SigningError,
    SourceError,
    StorageError,
    TransferError,
    UsageError,
)

MODES = {"archive": OSTree.RepoMode.ARCHIVE, "bare-user": OSTree.RepoMode.BARE_USER}
_MODE_NAMES = {
    OSTree.RepoMode.ARCHIVE: "archive",
    OSTree.RepoMode.BARE_USER: "bare-user",
    OSTree.RepoMode.BARE: "bare",
    OSTree.RepoMode.BARE_USER_ONLY: "bare-user-only",
}

OBJECT_TYPES = {"file": OSTree.ObjectType.FILE, "dirtree": OSTree.ObjectType.DIR_TREE,
                "dirmeta": OSTree.ObjectType.DIR_META, "commit": OSTree.ObjectType.COMMIT,
                "commitmeta": OSTree.ObjectType.COMMIT_META}
_OBJ_EXT = {int(v): k for k, v in OBJECT_TYPES.items()}
_META_TYPES = {int(OSTree.ObjectType.DIR_TREE): ("(a(say)a(sayay))", OSTree.validate_structureof_dirtree),
               int(OSTree.ObjectType.DIR_META): ("(uuua(ayay))", OSTree.validate_structureof_dirmeta),
               int(OSTree.ObjectType.COMMIT): ("(a{sv}aya(say)sstayay)", OSTree.validate_structureof_commit),
               int(OSTree.ObjectType.COMMIT_META): ("a{sv}", None)}

#: Called from worker threads after each file is stored: (files, bytes) just done.
FileProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class Commit:
    """A commit as read back from the repository."""

    checksum: str
    parent: str | None
    subject: str
    body: str
    timestamp: int
    metadata: dict[str, Any]
    root_contents: str
    root_metadata: str


@dataclass(frozen=True)
class TreeStats:
    """What a tree walk saw: the regular files and their bytes (before compression)."""

    files: int = 0
    bytes: int = 0
    dirs: int = 0
    symlinks: int = 0


@dataclass
class GpgSignature:
    """One GPG signature of a commit as libostree's verifier reports it."""

    fingerprint: str
    user: str
    valid: bool
    key_missing: bool
    problem: str | None = None


@dataclass
class _Walk:
    """Mutable state of one parallel tree write."""

    futures: list[tuple[Any, str, Future[str]]] = field(default_factory=list)
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


def _gpg_signatures(result: OSTree.GpgVerifyResult) -> list[GpgSignature]:
    A = OSTree.GpgSignatureAttr
    attrs = [A.VALID, A.FINGERPRINT, A.USER_NAME, A.USER_EMAIL, A.KEY_MISSING,
             A.SIG_EXPIRED, A.KEY_EXPIRED, A.KEY_REVOKED]
    sigs = []
    for i in range(result.count_all()):
        valid, fpr, name, email, missing, sig_exp, key_exp, revoked = result.get(i, attrs).unpack()
        problem = None
        if missing:
            problem = "public key not in the given keyring"
        elif revoked:
            problem = "key revoked"
        elif key_exp:
            problem = "key expired"
        elif sig_exp:
            problem = "signature expired"
        elif not valid:
            problem = "BAD signature"
        user = f"{name} <{email}>" if email else name
        sigs.append(GpgSignature(fingerprint=fpr, user=user, valid=bool(valid), key_missing=bool(missing),
                                 problem=problem))
    return sigs


def validate_branch(name: str) -> None:
    """Reject what OSTree would not accept as a ref name, with the reason."""
    if layout.plainly_valid_branch(name):
        return
    if not name or any(c.isspace() or unicodedata.category(c)[0] == "C" for c in name):
        # libostree's pattern ends in '$', which also matches before a final newline
        raise UsageError(f"invalid branch name {name!r}: no spaces or control characters")
    try:
        OSTree.validate_rev(name)
    except GLib.Error:
        # Not libostree's message: it repeats the name raw, control characters included.
        raise UsageError(f"invalid branch name {name!r}: use components of letters, digits, '_', '-' and '.' "
                         "(not starting with '-' or '.'), separated by single '/'") from None
    if name.startswith("/") or name.endswith("/") or "//" in name or ".." in name.split("/"):
        raise UsageError(f"invalid branch name {name!r}: empty or '..' path component")


def _storage_error(e: GLib.Error, what: str) -> Exception:
    if _is_enospc(e):
        return _no_space(e, what)
    return StorageError(f"{what}: {e.message}")


def _is_enospc(e: BaseException) -> bool:
    if isinstance(e, OSError):
        return e.errno == errno.ENOSPC
    # libostree refuses a write that would eat into core.min-free-space-* with a plain error
    return isinstance(e, GLib.Error) and (e.matches(Gio.io_error_quark(), Gio.IOErrorEnum.NO_SPACE)
                                          or "min-free-space" in (e.message or ""))


def _no_space(e: BaseException, what: object) -> StorageError:
    detail = f" ({e.message})" if isinstance(e, GLib.Error) and "min-free-space" in (e.message or "") else ""
    return StorageError(f"{what}: no space left on device{detail}")


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


def _from_variant(v: GLib.Variant) -> Any:
    if v.get_type_string() == "ay":
        return bytes(v.get_data_as_bytes().get_data() or b"")
    return v.unpack()


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


class _MissingTree(Exception):
    """A dirtree a walk needs is not in the repository."""

    def __init__(self, checksum: str) -> None:
        super().__init__(checksum)
        self.checksum = checksum


class Repo:
    """An open OSTree repository."""

    def __init__(self, path: Path, repo: OSTree.Repo) -> None:
        self.path = path
        self._repo = repo
        self._dirmeta_cache: dict[tuple[int, int, int], str] = {}
        self._lock = threading.Lock()

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Repo:
        p = Path(path)
        if not p.exists():
            raise RepoError(f"{p}: no repository here (create one with 'treeship init --repo {p}')")
        if not (p / "config").is_file() or not (p / "objects").is_dir():
            raise RepoError(f"{p}: not an OSTree repository")
        repo = OSTree.Repo.new(Gio.File.new_for_path(str(p)))
        try:
            repo.open(None)
        except GLib.Error as e:
            raise RepoError(f"{p}: not a usable OSTree repository: {e.message}") from None
        return cls(p, repo)

    @classmethod
    def create(cls, path: str | os.PathLike[str], mode: str = "archive", collection_id: str | None = None) -> Repo:
        p = Path(path)
        if mode not in MODES:
            raise UsageError(f"unknown repository mode {mode!r} (choose from {', '.join(MODES)})")
        if p.exists() and not p.is_dir():
            raise RepoError(f"{p}: exists and is not a directory")
        if p.is_dir() and any(p.iterdir()):
            raise RepoError(f"{p}: directory is not empty and is not an OSTree repository")
        if collection_id is not None:
            try:
                OSTree.validate_collection_id(collection_id)
            except GLib.Error as e:
                raise UsageError(f"invalid collection ID {collection_id!r}: {e.message}") from None
        repo = OSTree.Repo.new(Gio.File.new_for_path(str(p)))
        if collection_id:
            repo.set_collection_id(collection_id)
        try:
            p.mkdir(parents=True, exist_ok=True)
            repo.create(MODES[mode], None)
        except (GLib.Error, OSError) as e:
            raise StorageError(f"{p}: cannot create repository: {getattr(e, 'message', e)}") from None
        return cls.open(p)

    @staticmethod
    def is_repo(path: str | os.PathLike[str]) -> bool:
        return layout.is_repo(path)

    @cached_property
    def mode(self) -> str:
        """Asked once: a repository's mode does not change while it is open (and objects'
        paths, on a push's hot path, depend on it)."""
        return _MODE_NAMES.get(self._repo.get_mode(), "unknown")

    @property
    def collection_id(self) -> str | None:
        return self._repo.get_collection_id()

    # -- refs and commits -------------------------------------------------------------------

    def resolve(self, ref: str) -> str | None:
        """The commit a ref (branch, ``branch^``, checksum, prefix) names, or None."""
        try:
            _, rev = self._repo.resolve_rev(ref, True)
        except GLib.Error as e:
            raise RepoError(f"cannot resolve {ref!r}: {e.message}") from None
        return rev

    def require(self, ref: str) -> str:
        rev = self.resolve(ref)
        if rev is None:
            raise RepoError(f"{ref}: no such branch or commit in {self.path}")
        return rev

    def refs(self) -> dict[str, str]:
        _, refs = self._repo.list_refs(None, None)
        return dict(refs)

    def has_commit(self, checksum: str) -> bool:
        _, present = self._repo.has_object(OSTree.ObjectType.COMMIT, checksum, None)
        return bool(present)

    def _commit_variant(self, checksum: str) -> GLib.Variant:
        try:
            _, v = self._repo.load_variant(OSTree.ObjectType.COMMIT, checksum)
        except GLib.Error as e:
            raise RepoError(f"commit {checksum}: {e.message}") from None
        return v

    def commit(self, checksum: str) -> Commit:
        v = self._commit_variant(checksum)
        meta = v.get_child_value(0)
        metadata = {meta.get_child_value(i).get_child_value(0).get_string():
                    _from_variant(meta.get_child_value(i).get_child_value(1).get_variant())
                    for i in range(meta.n_children())}
        return Commit(
            checksum=checksum,
            parent=OSTree.commit_get_parent(v),
            subject=v.get_child_value(3).get_string(),
            body=v.get_child_value(4).get_string(),
            timestamp=OSTree.commit_get_timestamp(v),
            metadata=metadata,
            root_contents=OSTree.checksum_from_bytes_v(v.get_child_value(6)),
            root_metadata=OSTree.checksum_from_bytes_v(v.get_child_value(7)),
        )

    def commit_bytes(self, checksum: str) -> bytes:
        """The ``.commit`` object's bytes: what the commit checksum and signatures cover."""
        data = self._commit_variant(checksum).get_data_as_bytes().get_data()
        return bytes(data or b"")

    def detached_metadata(self, checksum: str) -> dict[str, Any]:
        try:
            _, v = self._repo.read_commit_detached_metadata(checksum, None)
        except GLib.Error as e:
            raise RepoError(f"commit {checksum}: cannot read signatures: {e.message}") from None
        if v is None:
            return {}
        out: dict[str, Any] = {}
        for i in range(v.n_children()):
            entry = v.get_child_value(i)
            key = entry.get_child_value(0).get_string()
            val = entry.get_child_value(1).get_variant()
            if val.get_type_string() == "aay":
                out[key] = [bytes(val.get_child_value(j).get_data_as_bytes().get_data() or b"")
                            for j in range(val.n_children())]
            else:
                out[key] = _from_variant(val)
        return out

    def _raw_detached(self, checksum: str) -> dict[str, GLib.Variant]:
        _, v = self._repo.read_commit_detached_metadata(checksum, None)
        if v is None:
            return {}
        return {v.get_child_value(i).get_child_value(0).get_string():
                v.get_child_value(i).get_child_value(1).get_variant() for i in range(v.n_children())}

    def append_detached_signatures(self, checksum: str, key: str, signatures: list[bytes]) -> None:
        """Add raw signatures under ``key`` (type ``aay``), keeping every other entry."""
        entries = self._raw_detached(checksum)
        old = entries.get(key)
        existing: list[bytes] = []
        if old is not None:
            existing = [bytes(old.get_child_value(j).get_data_as_bytes().get_data() or b"")
                        for j in range(old.n_children())]
        merged = existing + [s for s in signatures if s not in existing]
        entries[key] = GLib.Variant("aay", merged)
        try:
            self._repo.write_commit_detached_metadata(checksum, GLib.Variant("a{sv}", entries), None)
        except GLib.Error as e:
            raise _storage_error(e, f"writing signatures of {checksum}") from None

    # -- GPG (libostree's own code, so `ostree` agrees by construction) -----------------------

    def gpg_sign(self, checksum: str, key_id: str, homedir: str | None) -> None:
        try:
            self._repo.sign_commit(checksum, key_id, homedir, None)
        except GLib.Error as e:
            raise SigningError(f"GPG signing with key {key_id!r} failed: {e.message}") from None

    def gpg_verify(self, checksum: str, keyring_dir: str | None, keyring_file: str | None) -> list[GpgSignature]:
        """Every GPG signature on the commit, checked against the given keyrings only."""
        if not self.detached_metadata(checksum).get("ostree.gpgsigs"):
            return []
        d = Gio.File.new_for_path(keyring_dir) if keyring_dir else None
        f = Gio.File.new_for_path(keyring_file) if keyring_file else None
        try:
            result = self._repo.verify_commit_ext(checksum, d, f, None)
        except GLib.Error as e:
            raise RepoError(f"commit {checksum}: GPG verification could not run: {e.message}") from None
        return _gpg_signatures(result)

    def gpg_sign_data(self, data: bytes, key_id: str, homedir: str | None) -> bytes:
        """A binary OpenPGP detached signature over ``data`` (``gpg --verify SIG DATA`` checks it)."""
        empty = GLib.Variant("a{sv}", {}).get_data_as_bytes()
        try:
            _, out = self._repo.gpg_sign_data(GLib.Bytes.new(data), empty, [key_id], homedir, None)
        except GLib.Error as e:
            raise SigningError(f"GPG signing with key {key_id!r} failed: {e.message}") from None
        # libostree returns an a{sv} holding the signatures under ostree.gpgsigs (aay)
        v = GLib.Variant.new_from_bytes(GLib.VariantType.new("a{sv}"), out, False)
        sigs = v.lookup_value("ostree.gpgsigs", GLib.VariantType.new("aay"))
        if sigs is None or sigs.n_children() != 1:
            raise SigningError(f"GPG signing with key {key_id!r} produced no signature")
        return bytes(sigs.get_child_value(0).get_data_as_bytes().get_data() or b"")

    def gpg_verify_data(self, data: bytes, signature: bytes, keyring_dir: str | None,
                        keyring_file: str | None) -> list[GpgSignature]:
        """Check a detached OpenPGP signature over ``data`` against the given keyrings only.

        Raises RepoError when the signature bytes are not OpenPGP data at all.
        """
        d = Gio.File.new_for_path(keyring_dir) if keyring_dir else None
        f = Gio.File.new_for_path(keyring_file) if keyring_file else None
        try:
            result = self._repo.gpg_verify_data(None, GLib.Bytes.new(data), GLib.Bytes.new(signature), d, f, None)
        except GLib.Error as e:
            raise RepoError(f"GPG verification could not run: {e.message}") from None
        return _gpg_signatures(result)

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

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Objects become visible, and refs move, only if the block finishes."""
        try:
            self._repo.prepare_transaction(None)
        except GLib.Error as e:
            raise _storage_error(e, f"{self.path}: cannot start a transaction") from None
        try:
            yield
        except BaseException:
            self._abort_transaction()
            raise
        try:
            self._repo.commit_transaction(None)
        except GLib.Error as e:
            self._abort_transaction()
            raise _storage_error(e, f"{self.path}: committing the transaction") from None

    def _abort_transaction(self) -> None:
        """Abort, and delete what was staged.

        libostree leaves an aborted transaction's staging directory in tmp/ and the next
        transaction reuses it, moving its objects (an unsigned commit, say) into objects/
        on commit. It keeps the directory open while the transaction runs, and locked, so
        it is found through /proc/self/fd and emptied before the lock is released.
        """
        tmp = os.path.realpath(self.path / "tmp")
        staged = set()
        try:
            for fd in os.listdir("/proc/self/fd"):
                try:
                    target = os.readlink(f"/proc/self/fd/{fd}")
                except OSError:
                    continue
                if os.path.dirname(target) == tmp and os.path.basename(target).startswith("staging-") \
                        and os.path.isdir(target):
                    staged.add(target)
        except OSError:
            pass
        for d in staged:
            shutil.rmtree(d, ignore_errors=True)
        try:
            self._repo.abort_transaction(None)
        except GLib.Error:
            pass

    def set_ref(self, branch: str, checksum: str | None) -> None:
        self._repo.transaction_set_ref(None, branch, checksum)

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

    def _write_file(self, path: str, fi: Gio.FileInfo) -> str:
        if fi.get_file_type() == Gio.FileType.REGULAR:
            inp = Gio.File.new_for_path(path).read(None)
            try:
                _, stream, length = OSTree.raw_file_to_content_stream(inp, fi, None, None)
                _, raw = self._repo.write_content(None, stream, length, None)
            finally:
                inp.close(None)
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
        if not canonical:
            return self._write_tree_libostree(source, progress)
        mtree = OSTree.MutableTree.new()
        walk = _Walk()
        nworkers = workers or max(2, os.cpu_count() or 2)
        first_error: list[BaseException] = []

        def store(path: str, fi: Gio.FileInfo, size: int) -> str:
            if first_error:
                raise first_error[0]
            try:
                csum = self._write_file(path, fi)
            except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                err = _file_error(e, path, self.path)
                if not first_error:
                    first_error.append(err)
                raise err from None
            if progress:
                progress(1, size)
            return csum

        with ThreadPoolExecutor(nworkers, thread_name_prefix="treeship-write") as pool:
            try:
                self._walk(source, _lstat(source).st_mode, mtree, pool, store, walk)
                for parent, name, fut in walk.futures:
                    parent.replace_file(name, fut.result())
            except BaseException:
                for _, _, fut in walk.futures:
                    fut.cancel()
                raise
        stats = TreeStats(files=walk.files, bytes=walk.bytes, dirs=walk.dirs, symlinks=walk.symlinks)
        return mtree, stats

    def _walk(self, directory: Path, mode: int, mtree: OSTree.MutableTree, pool: ThreadPoolExecutor,
              store: Callable[[str, Gio.FileInfo, int], str], walk: _Walk) -> None:
        """``mode``: the directory's own, from the lstat its parent already made."""
        mtree.set_metadata_checksum(self._dirmeta(0, 0, canonical_mode(mode)))
        walk.dirs += 1
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as e:
            raise SourceError(f"{directory}: cannot read directory: {e.strerror}") from None
        for entry in entries:
            est = _lstat(Path(entry.path))
            mode = est.st_mode
            if stat.S_ISDIR(mode):
                _, sub = mtree.ensure_dir(entry.name)
                self._walk(Path(entry.path), mode, sub, pool, store, walk)
            elif stat.S_ISREG(mode):
                fi = _file_info(canonical_mode(mode), 0, 0, est.st_size)
                walk.files += 1
                walk.bytes += est.st_size
                walk.futures.append((mtree, entry.name, pool.submit(store, entry.path, fi, est.st_size)))
            elif stat.S_ISLNK(mode):
                try:
                    target = os.readlink(entry.path)
                except OSError as e:
                    raise SourceError(f"{entry.path}: cannot read symlink: {e.strerror}") from None
                fi = _file_info(stat.S_IFLNK | 0o777, 0, 0, 0, target)
                walk.symlinks += 1
                walk.futures.append((mtree, entry.name, pool.submit(store, entry.path, fi, 0)))
            else:
                raise SourceError(f"{entry.path}: {_kind(mode)}; a release holds only files, directories and symlinks")

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

    # -- objects, for push and receive ---------------------------------------------------------

    def object_relpath(self, checksum: str, objtype: int) -> str:
        """Where an object lives under objects/ (archive repos store content as .filez)."""
        ext = _OBJ_EXT[objtype]
        if objtype == OSTree.ObjectType.FILE and self.mode == "archive":
            ext = "filez"
        return f"{checksum[:2]}/{checksum[2:]}.{ext}"

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

    def _tree_objects(self, commit: str, strict: bool = True) -> Iterator[tuple[str, int]]:
        """(checksum, type) of the dirtrees, dirmetas and files under a commit, each dirtree once.

        Our own walk, dirtrees read by :func:`objects.parse_dirtree`: libostree's
        ``traverse_commit`` takes several times as long and, on a commit marked partial,
        silently skips missing dirtrees. Raises _MissingTree (if ``strict``).
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
        stack = [(hexsum(v.get_child_value(6)), hexsum(v.get_child_value(7)))]
        trees: set[str] = set()
        while stack:
            tree, meta = stack.pop()
            yield meta, meta_t
            if tree in trees:
                continue
            trees.add(tree)
            entries = self._dirtree_entries(tree)
            if entries is None:
                if strict:
                    raise _MissingTree(tree)
                continue
            yield tree, tree_t
            files, dirs = entries
            for _, csum in files:
                yield csum, file_t
            for _, subtree, submeta in dirs:
                stack.append((subtree, submeta))

    def _dirtree_entries(self, checksum: str) -> tuple[list[tuple[bytes, str]], list[tuple[bytes, str, str]]] | None:
        """A dirtree's files and subdirectories (see objects.parse_dirtree); None if it is not here."""
        try:
            with open(f"{self.path}/objects/{checksum[:2]}/{checksum[2:]}.dirtree", "rb") as f:
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

    def check_closure(self, commit: str) -> str | None:
        """None when every object the commit's tree needs is here, else what is missing.

        Parents are not part of the closure (OSTree keeps partial history). Where the
        commit's parent is complete (see _complete_commit), a directory whose dirtree is the
        parent's at the same path is complete too, and a file the parent's directory lists
        under the same name and checksum is here: the walk goes only where the trees
        differ, so an incremental push checks what changed, not the whole tree.
        """
        objects_dir = str(self.path / "objects")
        file_suffix = "filez" if self.mode == "archive" else "file"
        try:
            v = self._commit_variant(commit)
        except RepoError as e:
            return e.message
        hexsum = OSTree.checksum_from_bytes_v
        parent = OSTree.commit_get_parent(v)
        old_root = None
        if self._complete_commit(parent):
            old_root = hexsum(self._commit_variant(parent).get_child_value(6))
        stack: list[tuple[str, str, str | None]] = [(hexsum(v.get_child_value(6)), hexsum(v.get_child_value(7)),
                                                     old_root)]
        seen: set[str] = set()
        while stack:
            tree, meta, old = stack.pop()
            if meta not in seen:
                if not os.path.exists(f"{objects_dir}/{meta[:2]}/{meta[2:]}.dirmeta"):
                    return f"dirmeta {meta} is missing"
                seen.add(meta)
            if tree == old or tree in seen:
                continue
            seen.add(tree)
            try:
                entries = self._dirtree_entries(tree)
                old_entries = self._dirtree_entries(old) if old else None
            except RepoError as e:
                return e.message
            if entries is None:
                return f"dirtree {tree} is missing"
            files, dirs = entries
            old_files: set[tuple[bytes, str]] = set(old_entries[0]) if old_entries else set()
            old_dirs = {name: subtree for name, subtree, _ in old_entries[1]} if old_entries else {}
            for entry in files:
                csum = entry[1]
                if entry in old_files or csum in seen:
                    continue
                if not os.path.exists(f"{objects_dir}/{csum[:2]}/{csum[2:]}.{file_suffix}"):
                    return f"content object {csum} is missing"
                seen.add(csum)
            for name, subtree, submeta in dirs:
                stack.append((subtree, submeta, old_dirs.get(name)))
        return None

    def read_object_chunks(self, checksum: str, objtype: int, chunk: int = 1 << 20) -> Iterator[bytes]:
        """An object in archive form (content compressed), as the receiver stores it."""
        if objtype != OSTree.ObjectType.FILE or self.mode == "archive":
            with open(f"{self.path}/objects/{self.object_relpath(checksum, objtype)}", "rb", buffering=0) as f:
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

    def sync(self) -> None:
        """Put what was written to the repository on stable storage (one ``syncfs``, as
        libostree does before a transaction moves refs), unless its ``core.fsync`` is false.

        A push writes its objects without flushing each (thousands of fsyncs cost far more
        than one syncfs). This is the line after which the receiver calls a commit complete
        or points a ref at it: a power cut must not leave a ref to objects the disk never got.
        """
        if self._repo.get_disable_fsync():
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                _syncfs(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise StorageError(f"{self.path}: flushing to disk failed: {e.strerror or e}") from None

    def mark_partial(self, commit: str, partial: bool) -> None:
        try:
            self._repo.mark_commit_partial(commit, partial)
        except GLib.Error as e:
            raise _storage_error(e, f"{self.path}: marking commit {commit} partial") from None

    @staticmethod
    def parse_signatures(commit: str, data: bytes) -> dict[str, list[bytes]]:
        """The signatures (``aay`` entries) of a received .commitmeta; TransferError if malformed."""
        try:
            v = GLib.Variant.new_from_bytes(GLib.VariantType.new("a{sv}"), GLib.Bytes.new(data), False)
            if not v.is_normal_form():
                raise TransferError(f"{commit}.commitmeta: not in normal form")
            incoming = {v.get_child_value(i).get_child_value(0).get_string():
                        v.get_child_value(i).get_child_value(1).get_variant() for i in range(v.n_children())}
        except GLib.Error as e:
            raise TransferError(f"{commit}.commitmeta: malformed: {e.message}") from None
        return {key: [bytes(val.get_child_value(j).get_data_as_bytes().get_data() or b"")
                      for j in range(val.n_children())]
                for key, val in incoming.items() if val.get_type_string() == "aay"}

    def merge_detached_signatures(self, commit: str, data: bytes) -> None:
        """Add the signatures of a received .commitmeta to the commit's own, never dropping any."""
        for key, sigs in self.parse_signatures(commit, data).items():
            self.append_detached_signatures(commit, key, sigs)

    def is_ancestor(self, ancestor: str, commit: str) -> bool:
        """True when ``ancestor`` is ``commit`` or one of its parents (as far as history is here)."""
        cur: str | None = commit
        while cur:
            if cur == ancestor:
                return True
            _, present = self._repo.has_object(OSTree.ObjectType.COMMIT, cur, None)
            if not present:
                return False
            cur = OSTree.commit_get_parent(self._commit_variant(cur))
        return False

    def ref_conflict(self, name: str, others: Iterable[str] = ()) -> str | None:
        """Why branch ``name`` cannot exist next to the refs here (and ``others``): refs are
        files under refs/heads/, so ``a`` and ``a/b`` exclude each other. None if it can."""
        heads = self.path / "refs" / "heads"
        parts = name.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if (heads / prefix).is_file() or prefix in others:
                return f"branch {prefix!r} exists, so no branch can be named {prefix}/…"
        if (heads / name).is_dir() or any(o.startswith(f"{name}/") for o in others):
            return f"branches named {name}/… exist, so no branch can be named {name}"
        return None

    def set_refs(self, refs: dict[str, str | None], workdir: Path | None = None) -> None:
        """Move refs (None deletes), each atomically: written to a temp file in ``workdir``
        (default tmp/), flushed, then renamed over refs/heads/NAME.

        libostree's own ref writes (transaction_set_ref) use a temp name inside refs/heads/,
        which a crash leaves behind as a stray branch (``main/tmp.AbC123``). Here a crash
        leaves each ref its old or new value, and nothing else under refs/.
        """
        heads = self.path / "refs" / "heads"
        work = workdir or self.path / "tmp"
        for name, checksum in refs.items():
            dest = heads / name
            try:
                if checksum is None:
                    dest.unlink(missing_ok=True)
                    for parent in dest.relative_to(heads).parents[:-1]:  # empty directories go too
                        with contextlib.suppress(OSError):
                            (heads / parent).rmdir()
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                _replace_file(dest, f"{checksum}\n".encode(), work)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise StorageError(f"{self.path}: no space left on device (writing ref {name})") from None
                raise StorageError(f"{self.path}: writing ref {name}: {e.strerror}") from None

    def regenerate_summary(self) -> None:
        try:
            self._repo.regenerate_summary(None, None)
        except GLib.Error as e:
            raise _storage_error(e, f"{self.path}: regenerating the summary") from None

    def publish_summary(self, workdir: Path, sign: Callable[[Repo], None] | None = None) -> None:
        """Regenerate the summary, sign it, and publish both in one rename.

        libostree writes a new summary in place (atomically), then deletes summary.sig: a
        crash in between leaves the old signatures beside the new summary, and until new
        ones are written, clients that verify find none. Two files cannot be replaced in one
        step, and a summary.sig holding old and new signatures is no way out either: a GPG
        client (libostree 2022.7, through gpgme) gives up when the *first* signature is bad.

        So ``summary`` and ``summary.sig`` are symlinks to ``treeship-summary/current/…``,
        and ``current`` names one generation directory holding both files. A new generation
        is made in ``workdir``: the summary regenerated in a shadow of the repository
        (symlinks to its config, objects, refs and deltas), signed there by
        ``sign(shadow_repo)``; then it is moved in, and ``current`` is switched in one rename.
        Whenever this stops, the two names resolve to one generation. A summary written by
        something else (``ostree summary -u``) is adopted first: its files become a
        generation of their own, so nothing a client sees changes before the switch.
        """
        shadow = workdir / "summary-repo"
        shadow.mkdir()
        try:
            for entry in os.scandir(self.path):
                if entry.name in ("summary", "summary.sig", "tmp", SUMMARY_DIR) or \
                        (entry.name.startswith(".") and entry.name != ".lock"):
                    continue
                os.symlink(os.path.abspath(entry.path), shadow / entry.name)
            if (self.path / "summary").exists():
                os.link(self.path / "summary", shadow / "summary")  # so that the new one's mtime is later
            shadow_repo = Repo.open(shadow)
            shadow_repo.regenerate_summary()
            listed = shadow_repo.summary_refs()  # named in the generation: a no-op push checks it without libostree
            if sign is not None:
                sign(shadow_repo)
            for entry in os.scandir(shadow):  # what libostree wrote beside the summary goes to the repo
                if entry.name in ("summary", "summary.sig", "tmp") or entry.is_symlink() or \
                        (entry.is_dir() and (self.path / entry.name).exists()):
                    continue
                os.replace(entry.path, self.path / entry.name)  # e.g. config (core.indexed-deltas)
            gens = self.path / SUMMARY_DIR
            gens.mkdir(exist_ok=True)
            previous = self._adopt_summary(workdir)
            gen = workdir / "generation"
            gen.mkdir()
            os.chmod(gen, 0o755)  # noqa: S103 - published: a web server reads it
            os.rename(shadow / "summary", gen / "summary")
            if (shadow / "summary.sig").exists():
                os.rename(shadow / "summary.sig", gen / "summary.sig")
                _later_mtime(gen / "summary.sig", self.path / "summary.sig")
            name = _generation_name(listed)
            os.rename(gen, gens / name)
            _switch_symlink(gens / "current", name, workdir)
            for d in gens.iterdir():  # keep the published generation and the one before it
                if d.name not in ("current", name, previous) and not d.is_symlink():
                    shutil.rmtree(d, ignore_errors=True)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise StorageError(f"{self.path}: no space left on device (publishing the summary)") from None
            raise StorageError(f"{self.path}: publishing the summary: {e.strerror}") from None

    def _adopt_summary(self, workdir: Path) -> str | None:
        """Make ``summary`` and ``summary.sig`` the symlinks publish_summary switches, each
        still showing what it showed; the name of the generation ``current`` names."""
        gens = self.path / SUMMARY_DIR
        current = gens / "current"
        names = ("summary", "summary.sig")
        ours = {n: f"{SUMMARY_DIR}/current/{n}" for n in names}
        if current.is_symlink() and all((self.path / n).is_symlink() and os.readlink(self.path / n) == ours[n]
                                        for n in names):
            return os.readlink(current)
        gen = workdir / "adopted"
        gen.mkdir()
        os.chmod(gen, 0o755)  # noqa: S103 - published: a web server reads it
        for n in names:
            if (self.path / n).exists():  # a regular file, or one of ours: what a client gets now
                os.link(self.path / n, gen / n)
        name = _generation_name()
        os.rename(gen, gens / name)
        _switch_symlink(current, name, workdir)  # the links that already pass through it show the same
        for n in names:
            if not ((self.path / n).is_symlink() and os.readlink(self.path / n) == ours[n]):
                _switch_symlink(self.path / n, ours[n], workdir)  # same content, through the link
        return name

    def summary_refs(self) -> dict[str, str] | None:
        """The refs the published summary lists (None: no summary, or unreadable)."""
        try:
            data = (self.path / "summary").read_bytes()
        except OSError:
            return None
        v = GLib.Variant.new_from_bytes(GLib.VariantType.new("(a(s(taya{sv}))a{sv})"), GLib.Bytes.new(data), False)
        if not v.is_normal_form():
            return None
        entries = v.get_child_value(0)
        out = {}
        for i in range(entries.n_children()):
            entry = entries.get_child_value(i)
            out[entry.get_child_value(0).get_string()] = OSTree.checksum_from_bytes_v(
                entry.get_child_value(1).get_child_value(1))
        return out

    def sign_summary_gpg(self, key_ids: list[str], homedir: str | None) -> None:
        try:
            self._repo.add_gpg_signature_summary(key_ids, homedir, None)
        except GLib.Error as e:
            raise SigningError(f"signing the summary with GPG: {e.message}") from None

    def summary_bytes(self) -> bytes:
        return (self.path / "summary").read_bytes()

    def add_summary_signatures(self, key: str, signatures: list[bytes]) -> None:
        """Append signatures to summary.sig (replaced atomically, so readers see old or new)."""
        sig_path = self.path / "summary.sig"
        entries: dict[str, GLib.Variant] = {}
        if sig_path.exists():
            old = GLib.Variant.new_from_bytes(GLib.VariantType.new("a{sv}"), GLib.Bytes.new(sig_path.read_bytes()),
                                              False)
            entries = {old.get_child_value(i).get_child_value(0).get_string():
                       old.get_child_value(i).get_child_value(1).get_variant() for i in range(old.n_children())}
        entries[key] = GLib.Variant("aay", signatures)
        data = GLib.Variant("a{sv}", entries).get_data_as_bytes().get_data()
        tmp = sig_path.with_name(f".summary.sig.{os.getpid()}")
        tmp.write_bytes(bytes(data or b""))
        os.replace(tmp, sig_path)

    def generate_delta(self, from_commit: str | None, to_commit: str) -> None:
        try:
            # params must be a dict, even empty: libostree 2022.7 dereferences a NULL one (SIGSEGV)
            self._repo.static_delta_generate(OSTree.StaticDeltaGenerateOpt.MAJOR, from_commit, to_commit,
                                             None, GLib.Variant("a{sv}", {}), None)
        except GLib.Error as e:
            raise StorageError(f"static delta {from_commit} → {to_commit}: {e.message}") from None

    def remote_url(self, name: str) -> str | None:
        try:
            _, url = self._repo.remote_get_url(name)
        except GLib.Error:
            return None
        return url

    def remote_add(self, name: str, url: str) -> None:
        try:
            OSTree.validate_remote_name(name)
        except GLib.Error as e:
            raise UsageError(f"invalid remote name {name!r}: {e.message}") from None
        opts = GLib.Variant("a{sv}", {"gpg-verify": GLib.Variant("b", False)})
        try:
            self._repo.remote_add(name, url, opts, None)
        except GLib.Error as e:
            raise RepoError(f"remote {name!r}: {e.message}") from None

    def remotes(self) -> dict[str, str]:
        return {n: self.remote_url(n) or "" for n in (self._repo.remote_list() or [])}


def _lstat(path: Path) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as e:
        raise SourceError(f"{path}: {e.strerror}") from None


def _kind(mode: int) -> str:
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "an unsupported file type"


def _check_special_files(source: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(source):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
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


SUMMARY_DIR = layout.SUMMARY_DIR


def _generation_name(refs: dict[str, str] | None = None) -> str:
    """A new generation's name: unique, and carrying a digest of the refs its summary lists."""
    return layout.generation_name(f"{time.time_ns():x}-{os.urandom(3).hex()}", refs)


def _switch_symlink(link: Path, target: str, workdir: Path) -> None:
    """Point ``link`` at ``target`` in one rename (a symlink made in ``workdir``, same filesystem)."""
    tmp = workdir / f".link-{os.urandom(4).hex()}"
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _later_mtime(path: Path, than: Path) -> None:
    """Make ``path``'s mtime later than ``than``'s (HTTP caches compare them), even within one second."""
    try:
        old = os.stat(than).st_mtime_ns
    except OSError:
        return
    if os.stat(path).st_mtime_ns <= old:
        os.utime(path, ns=(old + 1_000_000_000, old + 1_000_000_000))


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


def _replace_file(dest: Path, data: bytes, workdir: Path) -> None:
    """Replace ``dest`` by ``data`` in one rename from ``workdir`` (same filesystem), flushed
    first; its mtime moves forward even within the same second (HTTP caches compare it)."""
    fd, tmp = tempfile.mkstemp(dir=workdir, prefix=".new-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        try:
            old = os.stat(dest).st_mtime_ns
        except FileNotFoundError:
            old = None
        if old is not None and os.stat(tmp).st_mtime_ns <= old:
            os.utime(tmp, ns=(old + 1_000_000_000, old + 1_000_000_000))
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# -- static deltas as `treeship push --delta` sends and applies them ----------------------------
#
# The formats are libostree's (ostree-repo-static-delta-private.h): a superblock
# (DELTA_SUPERBLOCK_TYPE) naming the parts by number, each part a compression byte ('x': xz,
# 0: none) then a DELTA_PART_TYPE variant. Everything received is parsed as untrusted data:
# GLib's GVariant accessors are safe on any bytes; shapes and lengths are checked here.

DELTA_SUPERBLOCK_TYPE = "(a{sv}tayay(a{sv}aya(say)sstayay)aya(uayttay)a(yaytt))"
DELTA_PART_TYPE = "(a(uuu)aa(ayay)ayay)"


@dataclass(frozen=True)
class DeltaSuperblock:
    """What a static delta's superblock says (sizes in it are host-endian: not relied on)."""

    from_commit: str
    to_commit: str
    commit: bytes  # the ``to`` commit object, as it will land
    parts: list[tuple[str, list[tuple[str, int]]]]  # per part: its sha256, the objects it writes
    fallbacks: list[tuple[str, int]]  # objects the delta leaves out: they travel as objects


@dataclass
class DeltaPart:
    """A decompressed delta part, mapped from its file."""

    n_modes: int
    n_xattrs: int
    payload_size: int
    ops: bytes
    _payload: GLib.Bytes

    def payload(self, offset: int, length: int) -> bytes:
        return bytes(GLib.Bytes.new_from_bytes(self._payload, offset, length).get_data() or b"")


def _csum_v(v: GLib.Variant, what: str, empty_ok: bool = False) -> str:
    raw = bytes(v.get_data_as_bytes().get_data() or b"")
    if empty_ok and not raw:
        return ""
    if len(raw) != 32:
        raise TransferError(f"static delta: {what} is not a checksum")
    return raw.hex()


def _object_list(raw: bytes, what: str) -> list[tuple[str, int]]:
    if len(raw) % 33:
        raise TransferError(f"static delta: {what}: malformed object list")
    out = []
    for i in range(0, len(raw), 33):
        if raw[i] not in _OBJ_EXT:
            raise TransferError(f"static delta: {what}: unknown object type {raw[i]}")
        out.append((raw[i + 1:i + 33].hex(), raw[i]))
    return out


def parse_delta_superblock(data: bytes) -> DeltaSuperblock:
    """A superblock's content; TransferError when it is not a well-formed unsigned superblock."""
    v = GLib.Variant.new_from_bytes(GLib.VariantType.new(DELTA_SUPERBLOCK_TYPE), GLib.Bytes.new(data), False)
    if not v.is_normal_form():
        raise TransferError("static delta: the superblock is malformed (not in normal form)")
    to = _csum_v(v.get_child_value(3), "its target")
    commit_v = v.get_child_value(4)
    commit = bytes(commit_v.get_data_as_bytes().get_data() or b"")
    parts = []
    headers = v.get_child_value(6)
    for i in range(headers.n_children()):
        h = headers.get_child_value(i)
        parts.append((_csum_v(h.get_child_value(1), f"part {i}"),
                      _object_list(bytes(h.get_child_value(4).get_data_as_bytes().get_data() or b""), f"part {i}")))
    fallbacks = []
    fb = v.get_child_value(7)
    for i in range(fb.n_children()):
        f = fb.get_child_value(i)
        objtype = f.get_child_value(0).get_byte()
        if objtype not in _OBJ_EXT:
            raise TransferError(f"static delta: fallback {i}: unknown object type {objtype}")
        fallbacks.append((_csum_v(f.get_child_value(1), f"fallback {i}"), int(objtype)))
    return DeltaSuperblock(_csum_v(v.get_child_value(2), "its source", empty_ok=True), to, commit, parts, fallbacks)


def delta_superblock_without_fallbacks(data: bytes) -> bytes:
    """The same superblock with an empty fallback list (libostree's offline apply refuses any).

    The fallback objects travel as objects; nothing in the parts reads them.
    """
    v = GLib.Variant.new_from_bytes(GLib.VariantType.new(DELTA_SUPERBLOCK_TYPE), GLib.Bytes.new(data), False)
    children = [v.get_child_value(i) for i in range(7)]
    children.append(GLib.Variant.new_array(GLib.VariantType.new("(yaytt)"), []))
    return bytes(GLib.Variant.new_tuple(*children).get_data_as_bytes().get_data() or b"")


def open_delta_part(path: Path) -> DeltaPart:
    """A decompressed part (the variant, without the compression byte), mapped read-only."""
    try:
        mapped = GLib.MappedFile.new(str(path), False)
    except GLib.Error as e:
        raise TransferError(f"static delta: cannot read a part: {e.message}") from None
    v = GLib.Variant.new_from_bytes(GLib.VariantType.new(DELTA_PART_TYPE), mapped.get_bytes(), False)
    if not v.is_normal_form():
        raise TransferError("static delta: a part is malformed (not in normal form)")
    payload = v.get_child_value(2)
    return DeltaPart(v.get_child_value(0).n_children(), v.get_child_value(1).n_children(), payload.n_children(),
                     bytes(v.get_child_value(3).get_data_as_bytes().get_data() or b""), payload.get_data_as_bytes())


def generate_delta_files(repo: Repo, from_commit: str, to_commit: str, directory: Path) -> Path:
    """Write a static delta ``from_commit`` → ``to_commit`` as files: ``superblock``, ``0``, ``1``…

    The repository itself is not changed (no deltas/ entry). Returns the superblock's path.
    """
    superblock = directory / "superblock"
    params = {"filename": GLib.Variant("ay", str(superblock).encode() + b"\0"),
              "inline-parts": GLib.Variant("b", False)}
    try:
        repo._repo.static_delta_generate(OSTree.StaticDeltaGenerateOpt.MAJOR, from_commit, to_commit, None,
                                         GLib.Variant("a{sv}", params), None)
    except GLib.Error as e:
        raise RepoError(f"static delta {from_commit[:12]} → {to_commit[:12]}: {e.message}") from None
    return superblock


def apply_delta_offline(target: Repo, source: Repo, superblock: Path, from_commit: str,
                        read_sources: list[str]) -> None:
    """Apply a delta into ``target`` (a bare-user repo): its source commit and the objects it reads first.

    Those come from ``source`` (the receiver's archive repo; trusted: it verified them).
    libostree checks each part's checksum and each object it writes (untrusted mode).
    """
    try:
        with target.transaction():
            target._repo.import_object_from_with_trust(source._repo, OSTree.ObjectType.COMMIT, from_commit, True, None)
            for csum in read_sources:
                target._repo.import_object_from_with_trust(source._repo, OSTree.ObjectType.FILE, csum, True, None)
            target._repo.static_delta_execute_offline(Gio.File.new_for_path(str(superblock)), False, None)
    except GLib.Error as e:
        raise TransferError(f"applying the static delta failed: {e.message}") from None
