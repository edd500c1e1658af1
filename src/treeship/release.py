"""A tree, its provenance and options become one signed commit on a branch.

Everything happens inside one repository transaction: the ref moves only after the
commit and all its signatures are written, so a failure at any point (bad key, full
disk, interrupted process) leaves the branch where it was and nothing half-written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import signing, source
from .errors import UnchangedError, UsageError
from .provenance import METADATA_KEY, Manifest
from .repo import FileProgress, Repo, validate_branch

if TYPE_CHECKING:
    from .provenance.buildstream import BstRequest

VERSION_KEY = "version"
REF_BINDING_KEY = "ostree.ref-binding"
COLLECTION_BINDING_KEY = "ostree.collection-binding"
TOOL_KEY = "treeship.tool"


@dataclass
class ReleaseOptions:
    source: str | None          # a directory or tar archive; None with ``bst``
    branch: str
    repo: str
    version: str | None = None
    manifest: Manifest | None = None
    subject: str | None = None
    body: str = ""
    gpg_keys: list[str] = field(default_factory=list)
    gpg_homedir: str | None = None
    ed25519_secret_files: list[str] = field(default_factory=list)
    manifest_path: str | None = None
    keep_ownership: bool = False
    allow_unchanged: bool = False
    timestamp: int | None = None
    bst: BstRequest | None = None  # a BuildStream element: checked out, provenance recorded (instead of SOURCE)


@dataclass
class ReleaseResult:
    commit: str
    branch: str
    version: str
    parent: str | None
    subject: str
    repo: str
    files: int
    bytes: int
    elements: int
    signatures: list[dict[str, str]]
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_version(now: datetime | None = None) -> str:
    """A sortable UTC timestamp, used when no --version is given."""
    return (now or datetime.now(UTC)).strftime("%Y%m%d.%H%M%S")


def open_or_create(path: str) -> Repo:
    """Open the releases repo, creating an archive-mode one if nothing is there yet."""
    p = Path(path)
    if Repo.is_repo(p) or (p.exists() and not p.is_dir()) or (p.is_dir() and any(p.iterdir())):
        return Repo.open(p)
    return Repo.create(p, "archive")


def release(opts: ReleaseOptions, progress: FileProgress | None = None) -> ReleaseResult:
    """Commit ``opts.source`` to ``opts.branch``; sign; move the ref last."""
    started = time.monotonic()
    validate_branch(opts.branch)
    # Everything that can be checked cheaply is checked before any byte is written.
    secrets = [signing.load_ed25519_secret(f) for f in opts.ed25519_secret_files]
    for key_id in opts.gpg_keys:
        signing.gpg_check_secret_key(key_id, opts.gpg_homedir)
    version = opts.version or default_version()
    subject = opts.subject or f"{opts.branch} {version}"
    repo = open_or_create(opts.repo)
    parent = repo.head(opts.branch)

    sig_report: list[dict[str, str]] = []
    with _prepared(opts, repo) as (tree, manifest, warnings), repo.transaction():
        metadata: dict[str, Any] = {VERSION_KEY: version, REF_BINDING_KEY: [opts.branch]}
        if repo.collection_id:
            metadata[COLLECTION_BINDING_KEY] = repo.collection_id
        if manifest is not None:
            metadata[METADATA_KEY] = manifest.stored
        from . import __version__

        metadata[TOOL_KEY] = f"treeship {__version__}"
        mtree, tree_stats = repo.write_tree(tree, canonical=not opts.keep_ownership, progress=progress)
        if opts.manifest_path and manifest is not None:
            repo.add_file(mtree, opts.manifest_path, manifest.stored.encode())
        contents, meta, root = repo.write_mtree(mtree)
        if parent and not opts.allow_unchanged:
            head = repo.commit(parent)
            if (head.root_contents, head.root_metadata) == (contents, meta):
                raise UnchangedError(
                    f"{opts.branch}: tree is identical to the branch head {parent[:12]}; nothing released "
                    "(use --allow-unchanged to release it anyway)")
        checksum = repo.write_commit(parent, subject, opts.body, metadata, root, opts.timestamp)
        signing.gpg_sign(repo, checksum, opts.gpg_keys, opts.gpg_homedir)
        sig_report += [{"type": "gpg", "key": k} for k in opts.gpg_keys]
        for pub in signing.ed25519_sign(repo, checksum, secrets):
            sig_report.append({"type": "ed25519", "key": pub})
        repo.set_ref(opts.branch, checksum)
    return ReleaseResult(
        commit=checksum, branch=opts.branch, version=version, parent=parent, subject=subject,
        repo=str(repo.path), files=tree_stats.files, bytes=tree_stats.bytes,
        elements=manifest.element_count if manifest else 0,
        signatures=sig_report, seconds=round(time.monotonic() - started, 3), warnings=warnings)


@contextmanager
def _prepared(opts: ReleaseOptions, repo: Repo) -> Iterator[tuple[Path, Manifest | None, list[str]]]:
    """The tree to commit, its manifest and warnings: SOURCE as given, or a BuildStream checkout
    whose provenance treeship records itself."""
    if opts.bst is not None:
        from .provenance import buildstream

        with buildstream.prepared(opts.bst, workdir=_tmpdir_for(repo)) as (tree, collected):
            yield tree, collected.manifest, collected.warnings
        return
    if opts.source is None:
        raise UsageError("nothing to release: give SOURCE or a BuildStream element")
    with source.prepared(opts.source, keep_ownership=opts.keep_ownership, workdir=_tmpdir_for(repo)) as tree:
        yield tree, opts.manifest, []


def _tmpdir_for(repo: Repo) -> str | None:
    """Unpack archives next to the repo (same filesystem, and its tmp/ is ours to use)."""
    tmp = repo.path / "tmp"
    return str(tmp) if tmp.is_dir() and os.access(tmp, os.W_OK) else None
