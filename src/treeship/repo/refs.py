"""Refs and commits: names checked and resolved, commits read, history walked, refs moved."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import layout
from ..errors import RepoError, StorageError, UsageError
from .core import GLib, OSTree, _Core, _from_variant


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


class _Refs(_Core):
    """Refs and commits."""

    # -- refs and commits -------------------------------------------------------------------

    def resolve(self, ref: str) -> str | None:
        """The commit a ref names, or None: the branch of that name if there is one, else what
        libostree makes of it (a checksum or a unique prefix of one, ``branch^``, ``remote:branch``).

        The branch comes first because libostree's ``resolve_rev`` tries a checksum prefix
        before a branch: a branch named ``b``, ``cafe`` or ``2024`` named any commit whose
        checksum starts so, and a release or a push took the wrong commit as the branch's head.
        """
        head = self._branch_head(ref)
        if head is not None:
            return head
        try:
            _, rev = self._repo.resolve_rev(ref, True)
        except GLib.Error as e:
            raise RepoError(f"cannot resolve {ref!r}: {e.message}") from None
        return rev

    def head(self, branch: str) -> str | None:
        """The commit local branch ``branch`` points at, read as a ref and nothing else; None if
        there is no such branch, whatever commit's checksum starts with its name (see resolve).
        For a name that must be a branch: a release's, a push's, a receiver's. A ref file
        libostree cannot read is a RepoError, not "no branch" (nothing may overwrite it)."""
        return self._branch_head(branch, strict=True)

    def _branch_head(self, name: str, strict: bool = False) -> str | None:
        """head(); for resolve (not ``strict``), None also where libostree should have its say."""
        try:
            OSTree.validate_rev(name)
        except GLib.Error:
            return None  # not a branch name: a checksum with ^, a remote:ref, …
        if not (self.path / "refs" / "heads" / name).is_file():
            return None
        try:
            _, refs = self._repo.list_refs(name, None)  # libostree reads it (an alias: the ref it names)
            value = refs.get(name)
            OSTree.validate_checksum_string(value or "")
        except GLib.Error as e:
            if strict:
                raise RepoError(f"{self.path}: branch {name}: unreadable ref ({e.message})") from None
            return None
        return value

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

    # -- moving refs ---------------------------------------------------------------------------

    def set_ref(self, branch: str, checksum: str | None) -> None:
        self._repo.transaction_set_ref(None, branch, checksum)

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
