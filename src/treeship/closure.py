"""A commit's closure: the walk over its tree, and whether everything it needs is here.

One walk for both ways of reading a repository: through libostree
(:class:`treeship.repo.Repo`) and through its files alone (:class:`treeship.filerepo.FileRepo`,
a plain push's receiver). Each provides the three readers of :class:`Trees`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from . import layout, objects
from .errors import RepoError

TYPE_CHECKING = False  # not `from typing`: importing typing costs a receiver ~10 ms
SEEN_AT_MOST = 100_000  # objects check_closure remembers having found
if TYPE_CHECKING:
    from typing import Protocol

    class Trees(Protocol):
        def commit_links(self, checksum: str) -> tuple[str, str, str | None]:
            """The commit's root dirtree, root dirmeta and parent; RepoError if it is not here."""

        def dirtree_entries(self, checksum: str) -> tuple[list[tuple[bytes, str]],
                                                          list[tuple[bytes, str, str]]] | None:
            """A dirtree's files and subdirectories (objects.parse_dirtree); None if it is not here."""

        def complete_commit(self, checksum: str | None) -> bool:
            """Here and not marked partial: then its whole tree is here (libostree's own rule,
            and the receiver's: a commit it receives stays partial until its closure is checked)."""

# OSTree's object types (OstreeObjectType), as the wire and libostree number them
FILE, DIRTREE, DIRMETA, COMMIT = (layout.OBJECT_TYPES[t] for t in ("file", "dirtree", "dirmeta", "commit"))


def read_dirtree(path: str | os.PathLike[str], checksum: str, elsewhere: Callable[[str], bytes | None] | None = None
                 ) -> tuple[list[tuple[bytes, str]], list[tuple[bytes, str, str]]] | None:
    """A dirtree's files and subdirectories (objects.parse_dirtree), read from the objects/
    of the repository at ``path`` or, where it is not there, from ``elsewhere(checksum)``
    (None: not there either); None if it is nowhere. RepoError if it does not parse."""
    try:
        with open(f"{path}/objects/{layout.object_relpath(checksum, 'dirtree')}", "rb") as f:
            data: bytes | None = f.read()
    except FileNotFoundError:
        data = elsewhere(checksum) if elsewhere is not None else None
        if data is None:
            return None
    try:
        return objects.parse_dirtree(data)
    except ValueError as e:
        raise RepoError(f"{path}: dirtree {checksum}: {e}") from None


class MissingTree(Exception):
    """A dirtree a walk needs is not in the repository."""

    def __init__(self, checksum: str) -> None:
        super().__init__(checksum)
        self.checksum = checksum


def tree_objects(repo: Trees, commit: str, strict: bool = True,
                 skip_complete_parent: bool = False) -> Iterator[tuple[str, int]]:
    """(checksum, type) of the dirtrees, dirmetas and files under a commit, each dirtree once.

    Dirtrees are read by :func:`objects.parse_dirtree`: libostree's ``traverse_commit`` takes
    several times as long and, on a commit marked partial, silently skips missing dirtrees.
    Raises MissingTree (if ``strict``).

    ``skip_complete_parent``: where the commit's parent is complete, leave out what the two
    trees share at the same paths — a subtree whose dirtree is the parent's there, a file the
    parent's directory lists under the same name and checksum (each dirmeta is still
    listed): what is left is what changed.
    """
    try:
        root, root_meta, parent = repo.commit_links(commit)
    except RepoError:
        if strict:
            raise
        return
    old_root = None
    if skip_complete_parent and parent and repo.complete_commit(parent):
        old_root = repo.commit_links(parent)[0]
    stack: list[tuple[str, str, str | None]] = [(root, root_meta, old_root)]
    trees: set[str] = set()
    while stack:
        tree, meta, old = stack.pop()  # old: the parent's dirtree at the same path, if complete
        yield meta, DIRMETA
        if tree == old or tree in trees:
            continue
        trees.add(tree)
        entries = repo.dirtree_entries(tree)
        if entries is None:
            if strict:
                raise MissingTree(tree)
            continue
        yield tree, DIRTREE
        old_entries = repo.dirtree_entries(old) if old else None
        old_files = set(old_entries[0]) if old_entries else set()
        old_dirs = {name: subtree for name, subtree, _ in old_entries[1]} if old_entries else {}
        files, dirs = entries
        for entry in files:
            if entry not in old_files:
                yield entry[1], FILE
        for name, subtree, submeta in dirs:
            stack.append((subtree, submeta, old_dirs.get(name)))


def check_closure(repo: Trees, objects_dir: str, commit: str, content_suffix: str = "filez",
                  placed: set[str] | frozenset[str] = frozenset()) -> str | None:
    """None when every object the commit's tree needs is in ``objects_dir``, else what is missing.

    Parents are not part of the closure (OSTree keeps partial history). What the commit
    shares with a complete parent is not walked (see tree_objects): an incremental push
    checks what changed, not the whole tree. ``placed``: objects the caller has itself just
    placed here, as ``XX/REST.SUFFIX`` (type and all: a dirtree is no dirmeta), not looked
    up again (a first push: thousands).
    """
    suffix = {FILE: content_suffix, DIRMETA: "dirmeta"}
    # by path, type and all (a content object is no dirmeta of the same checksum); the first
    # SEEN_AT_MOST only, so that memory stays bounded however large the tree (past them, an
    # object met twice is looked up twice)
    seen: set[str] = set()
    try:
        for csum, objtype in tree_objects(repo, commit, skip_complete_parent=True):
            if objtype in suffix:
                relpath = layout.object_relpath(csum, suffix[objtype])
                if relpath in seen:
                    continue
                if relpath not in placed and not os.path.exists(f"{objects_dir}/{relpath}"):
                    kind = "content object" if objtype == FILE else "dirmeta"
                    return f"{kind} {csum} is missing"
                if len(seen) < SEEN_AT_MOST:
                    seen.add(relpath)
    except RepoError as e:
        return e.message
    except MissingTree as e:
        return f"dirtree {e.checksum} is missing"
    return None
