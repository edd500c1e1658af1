"""Reading releases back: a branch's history and one release's record."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from . import __version__
from .errors import ProvenanceError
from .provenance import METADATA_KEY, parse_stored
from .provenance.spdx import to_spdx
from .repo import Repo
from .signing import ED25519_KEY, GPG_KEY


@dataclass
class ReleaseRecord:
    """One release as stored: the commit, its metadata, and which signatures it carries."""

    commit: str
    parent: str | None
    version: str | None
    date: str
    timestamp: int
    subject: str
    body: str
    ref_binding: list[str]
    gpg_signatures: int
    ed25519_signatures: int
    root_contents: str
    root_metadata: str
    metadata: dict[str, Any]

    @property
    def signed(self) -> bool:
        return bool(self.gpg_signatures or self.ed25519_signatures)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["signed"] = self.signed
        return d


def record(repo: Repo, checksum: str) -> ReleaseRecord:
    c = repo.commit(checksum)
    detached = repo.detached_metadata(checksum)
    return ReleaseRecord(
        commit=c.checksum, parent=c.parent, version=c.metadata.get("version"),
        date=datetime.fromtimestamp(c.timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        timestamp=c.timestamp, subject=c.subject, body=c.body,
        ref_binding=list(c.metadata.get("ostree.ref-binding", [])),
        gpg_signatures=len(detached.get(GPG_KEY, [])), ed25519_signatures=len(detached.get(ED25519_KEY, [])),
        root_contents=c.root_contents, root_metadata=c.root_metadata,
        metadata={k: v for k, v in c.metadata.items() if isinstance(v, (str, int, bool, list))},
    )


def log(repo: Repo, ref: str, limit: int | None = None) -> list[ReleaseRecord]:
    """Releases reachable from ``ref`` by parent links, newest first (stops at a gap)."""
    out: list[ReleaseRecord] = []
    checksum: str | None = repo.require(ref)
    while checksum and repo.has_commit(checksum) and (limit is None or len(out) < limit):
        rec = record(repo, checksum)
        out.append(rec)
        checksum = rec.parent
    return out


def provenance(repo: Repo, ref: str) -> dict[str, Any] | None:
    """The manifest stored in the release's metadata, or None if it has none."""
    checksum = repo.require(ref)
    text = repo.commit(checksum).metadata.get(METADATA_KEY)
    if text is None:
        return None
    return parse_stored(text, f"{ref} ({checksum[:12]})")


def spdx_document(repo: Repo, ref: str) -> dict[str, Any]:
    """The release's provenance as an SPDX 2.3 document (created: the commit's timestamp)."""
    checksum = repo.require(ref)
    manifest = provenance(repo, checksum)
    if manifest is None:
        raise ProvenanceError(f"{ref}: this release carries no provenance manifest")
    rec = record(repo, checksum)
    name = ref if ref in repo.refs() else (rec.ref_binding[0] if rec.ref_binding else ref)
    return to_spdx(manifest, commit=checksum, name=name, version=rec.version, created=rec.date,
                   tool_version=__version__)
