"""The package's core: libostree loaded (the one ``gi.require_version``; the other modules
of :mod:`treeship.repo` take ``Gio``, ``GLib`` and ``OSTree`` from here), a repository
opened or created, its mode, transactions; the shared error and GVariant helpers.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gi

gi.require_version("OSTree", "1.0")
from gi.repository import Gio, GLib, OSTree  # noqa: E402

from .. import layout, trace  # noqa: E402
from ..errors import RepoError, StorageError, UsageError  # noqa: E402

if TYPE_CHECKING:
    from . import Repo

trace.mark("libostree loaded")  # (a plain push's receiver never gets here: tests/test_push.py)


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
_OBJ_EXT = layout.TYPE_NAMES  # libostree's numbers are layout's (tests/test_wire_types.py)


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


def aay(values: list[bytes]) -> GLib.Variant:
    """An ``aay`` of ``values``, each child made from its bytes at once: PyGObject's
    ``GLib.Variant("aay", values)`` builds every byte as a variant of its own (6 MB of
    signatures took over a minute; this takes milliseconds)."""
    ay = GLib.VariantType.new("ay")
    return GLib.Variant.new_array(ay, [GLib.Variant.new_from_bytes(ay, GLib.Bytes.new(v), True) for v in values])


def _from_variant(v: GLib.Variant) -> Any:
    if v.get_type_string() == "ay":
        return bytes(v.get_data_as_bytes().get_data() or b"")
    return v.unpack()


class _Core:
    """What every part of :class:`treeship.repo.Repo` stands on: the open repository."""

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
