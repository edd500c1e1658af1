"""The only module that touches libostree (PyGObject ``gi.repository.OSTree``).

Everything above speaks plain Python: checksums are hex strings, metadata values are
str / list[str] / int / bool / bytes. libostree errors become :mod:`treeship.errors`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gi

gi.require_version("OSTree", "1.0")
from gi.repository import Gio, GLib, OSTree  # noqa: E402

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
        p = Path(path)
        return (p / "config").is_file() and (p / "objects").is_dir()

    @property
    def mode(self) -> str:
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
                self._walk(source, mtree, pool, store, walk)
                for parent, name, fut in walk.futures:
                    parent.replace_file(name, fut.result())
            except BaseException:
                for _, _, fut in walk.futures:
                    fut.cancel()
                raise
        stats = TreeStats(files=walk.files, bytes=walk.bytes, dirs=walk.dirs, symlinks=walk.symlinks)
        return mtree, stats

    def _walk(self, directory: Path, mtree: OSTree.MutableTree, pool: ThreadPoolExecutor,
              store: Callable[[str, Gio.FileInfo, int], str], walk: _Walk) -> None:
        st = _lstat(directory)
        mtree.set_metadata_checksum(self._dirmeta(0, 0, canonical_mode(st.st_mode)))
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
                self._walk(Path(entry.path), sub, pool, store, walk)
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

    def reachable(self, commit: str) -> set[tuple[str, int]]:
        """Every object of a commit's closure (commit, dirtrees, dirmetas, files)."""
        try:
            _, objs = self._repo.traverse_commit(commit, 0, None)
        except GLib.Error as e:
            raise RepoError(f"commit {commit}: incomplete or unreadable: {e.message}") from None
        return {(k[0], int(k[1])) for k in (key.unpack() for key in objs)}

    def check_closure(self, commit: str) -> str | None:
        """None when every object the commit needs is present, else what is missing."""
        try:
            self._repo.traverse_commit(commit, 0, None)
        except GLib.Error as e:
            return e.message
        return None

    def read_object_chunks(self, checksum: str, objtype: int, chunk: int = 1 << 20) -> Iterator[bytes]:
        """An object in archive form (content compressed), as the receiver stores it."""
        if objtype != OSTree.ObjectType.FILE or self.mode == "archive":
            path = self.path / "objects" / self.object_relpath(checksum, objtype)
            with open(path, "rb") as f:
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

    def verify_object(self, src: bytes | Path, checksum: str, objtype: int) -> None:
        """Check an object received in archive form; raise TransferError if it is not ``checksum``.

        Nothing is trusted: metadata is hashed and its GVariant structure validated; content
        is parsed and checksummed by libostree itself. ``src`` is the object's bytes, or a
        file holding them (large objects).
        """
        if objtype == OSTree.ObjectType.FILE:
            if isinstance(src, Path):
                inp = Gio.File.new_for_path(str(src)).read(None)
                size = src.stat().st_size
            else:
                inp = Gio.MemoryInputStream.new_from_bytes(GLib.Bytes.new(src))
                size = len(src)
            try:
                _, stream, fi, xattrs = OSTree.content_stream_parse(True, inp, size, False, None)
                _, raw = OSTree.checksum_file_from_input(fi, xattrs, stream, objtype, None)
            except GLib.Error as e:
                raise TransferError(f"object {checksum}.file: malformed: {e.message}") from None
            finally:
                inp.close(None)
            got = OSTree.checksum_from_bytes(raw)
            if got != checksum:
                raise TransferError(f"object {checksum}.file: checksum mismatch (content hashes to {got})")
            return
        data = src.read_bytes() if isinstance(src, Path) else src
        got = hashlib.sha256(data).hexdigest()
        if got != checksum:
            raise TransferError(f"object {checksum}.{_OBJ_EXT[objtype]}: checksum mismatch (hashes to {got})")
        _validate_metadata(data, checksum, objtype)

    def place_object(self, src: bytes | Path, checksum: str, objtype: int) -> None:
        """Make a verified object visible under objects/, as received (no recompression).

        The file appears under its name only complete: an unnamed O_TMPFILE linked into
        place, or a temp file renamed; an interrupted write leaves nothing readable.
        """
        if self.mode != "archive":
            raise RepoError(f"{self.path}: receiving needs an archive-mode repository, this one is {self.mode}")
        dest = self.path / "objects" / self.object_relpath(checksum, objtype)
        try:
            dest.parent.mkdir(mode=0o755, exist_ok=True)
            if isinstance(src, Path):
                os.chmod(src, 0o644)
                os.replace(src, dest)
            else:
                _write_new_file(dest, src)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise StorageError(f"{self.path}: no space left on device") from None
            raise StorageError(f"{self.path}: storing {dest.name}: {e.strerror}") from None

    def install_object(self, src: bytes | Path, checksum: str, objtype: int) -> None:
        """Verify, then make visible: no object is readable before it is checked."""
        self.verify_object(src, checksum, objtype)
        self.place_object(src, checksum, objtype)

    def mark_partial(self, commit: str, partial: bool) -> None:
        self._repo.mark_commit_partial(commit, partial)

    def merge_detached_signatures(self, commit: str, data: bytes) -> None:
        """Add the signatures of a received .commitmeta to the commit's own, never dropping any."""
        try:
            v = GLib.Variant.new_from_bytes(GLib.VariantType.new("a{sv}"), GLib.Bytes.new(data), False)
            if not v.is_normal_form():
                raise TransferError(f"{commit}.commitmeta: not in normal form")
            incoming = {v.get_child_value(i).get_child_value(0).get_string():
                        v.get_child_value(i).get_child_value(1).get_variant() for i in range(v.n_children())}
        except GLib.Error as e:
            raise TransferError(f"{commit}.commitmeta: malformed: {e.message}") from None
        for key, val in incoming.items():
            if val.get_type_string() != "aay":
                continue
            sigs = [bytes(val.get_child_value(j).get_data_as_bytes().get_data() or b"")
                    for j in range(val.n_children())]
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

    def set_refs(self, refs: dict[str, str | None]) -> None:
        """Move several refs in one transaction (None deletes)."""
        with self.transaction():
            for name, checksum in refs.items():
                self._repo.transaction_set_ref(None, name, checksum)

    def regenerate_summary(self) -> None:
        try:
            self._repo.regenerate_summary(None, None)
        except GLib.Error as e:
            raise _storage_error(e, f"{self.path}: regenerating the summary") from None

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


def _write_new_file(dest: Path, data: bytes) -> None:
    """Create ``dest`` holding ``data``, visible only once complete (O_TMPFILE + linkat)."""
    dfd = os.open(dest.parent, os.O_DIRECTORY | os.O_RDONLY)
    try:
        try:
            fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o644, dir_fd=dfd)
        except OSError:  # no O_TMPFILE here: a temp name, then rename
            tmp = dest.parent / f".tmp-{dest.name}-{os.getpid()}-{threading.get_ident()}"
            tmp.write_bytes(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, 0o644)
            try:
                # dst_dir_fd makes CPython call linkat(AT_SYMLINK_FOLLOW), which follows /proc's link.
                os.link(f"/proc/self/fd/{fd}", dest.name, dst_dir_fd=dfd, follow_symlinks=True)
            except FileExistsError:
                pass  # the same verified object, placed by a concurrent push
        finally:
            os.close(fd)
    finally:
        os.close(dfd)
