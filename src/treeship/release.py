"""A tree, its provenance and options become one signed commit on a branch.

Everything happens inside one repository transaction: the ref moves only after the
commit and all its signatures are written, so a failure at any point (bad key, full
disk, interrupted process) leaves the branch where it was and nothing half-written.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import signing, source
from .errors import UnchangedError
from .provenance import METADATA_KEY, Manifest
from .repo import FileProgress, Repo, validate_branch

VERSION_KEY = "version"
REF_BINDING_KEY = "ostree.ref-binding"
COLLECTION_BINDING_KEY = "ostree.collection-binding"
TOOL_KEY = "treeship.tool"


@dataclass
class ReleaseOptions:
    source: str
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
    parent = repo.resolve(opts.branch)

    metadata: dict[str, Any] = {VERSION_KEY: version, REF_BINDING_KEY: [opts.branch]}
    if repo.collection_id:
        metadata[COLLECTION_BINDING_KEY] = repo.collection_id
    if opts.manifest is not None:
        metadata[METADATA_KEY] = opts.manifest.stored
    from . import __version__

    metadata[TOOL_KEY] = f"treeship {__version__}"

    sig_report: list[dict[str, str]] = []
    with source.prepared(opts.source, keep_ownership=opts.keep_ownership,
                         workdir=_tmpdir_for(repo)) as tree, repo.transaction():
        mtree, tree_stats = repo.write_tree(tree, canonical=not opts.keep_ownership, progress=progress)
        if opts.manifest_path and opts.manifest is not None:
            repo.add_file(mtree, opts.manifest_path, opts.manifest.stored.encode())
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
        elements=opts.manifest.element_count if opts.manifest else 0,
        signatures=sig_report, seconds=round(time.monotonic() - started, 3))


def _tmpdir_for(repo: Repo) -> str | None:
    """Unpack archives next to the repo (same filesystem, and its tmp/ is ours to use)."""
    tmp = repo.path / "tmp"
    return str(tmp) if tmp.is_dir() and os.access(tmp, os.W_OK) else None
