"""Refs and commits: names checked and resolved, commits read, history walked, refs moved."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import filerepo, layout
from ..errors import RepoError, UsageError
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

    def ref_binding(self, checksum: str) -> list[str] | None:
        """The commit's ``ostree.ref-binding`` (None: none); ValueError if it is not an ``as``
        (libostree's clients read it as one: ``^a&s``)."""
        value = self._commit_variant(checksum).get_child_value(0).lookup_value("ostree.ref-binding", None)
        if value is None:
            return None
        if value.get_type_string() != "as":
            raise ValueError(f"ostree.ref-binding is an {value.get_type_string()}, not a list of branch names")
        return list(value.unpack())

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
        """Why branch ``name`` cannot exist next to the refs here (see filerepo.ref_conflict)."""
        return filerepo.ref_conflict(self.path, name, others)

    def set_refs(self, refs: dict[str, str | None], workdir: Path | None = None) -> None:
        """Move refs (None deletes), each atomically (see filerepo.set_refs)."""
        filerepo.set_refs(self.path, refs, workdir)
