"""The only package that touches libostree (PyGObject ``gi.repository.OSTree``).

Everything above speaks plain Python: checksums are hex strings, metadata values are
str / list[str] / int / bool / bytes. libostree errors become :mod:`treeship.errors`.

:class:`Repo` is one class, put together from one part per job:

- :mod:`.core`: libostree loaded; open, create, mode, transactions; shared helpers
- :mod:`.refs`: refs and commits: resolve, read, history, ref names, moving refs
- :mod:`.signatures`: detached metadata, GPG sign/verify (commits and arbitrary data)
- :mod:`.trees`: writing trees (parallel) and commits; comparing two commits' trees
- :mod:`.store`: objects for push and receive: closure, checks, placing, partial, sync
- :mod:`.summary`: the summary, regenerated, signed and published as one generation
- :mod:`.deltas`: static deltas: generated, parsed as untrusted data, applied offline
- :mod:`.remotes`: remotes in the repository's config

Every name other modules use is imported from here (``from treeship.repo import …``).
"""

from __future__ import annotations

from .core import MODES, OBJECT_TYPES
from .deltas import (
    DELTA_PART_TYPE,
    DELTA_SUPERBLOCK_TYPE,
    DeltaPart,
    DeltaSuperblock,
    _Deltas,
    apply_delta_offline,
    delta_superblock_without_fallbacks,
    generate_delta_files,
    open_delta_part,
    parse_delta_superblock,
)
from .refs import Commit, _Refs, validate_branch
from .remotes import _Remotes
from .signatures import ED25519_KEY, GPG_KEY, GpgSignature, _Signatures
from .store import _Store
from .summary import SUMMARY_DIR, _Summary
from .trees import FileProgress, TreeChange, TreeStats, _Trees, canonical_mode

__all__ = [
    "DELTA_PART_TYPE",
    "DELTA_SUPERBLOCK_TYPE",
    "ED25519_KEY",
    "GPG_KEY",
    "MODES",
    "OBJECT_TYPES",
    "SUMMARY_DIR",
    "Commit",
    "DeltaPart",
    "DeltaSuperblock",
    "FileProgress",
    "GpgSignature",
    "Repo",
    "TreeChange",
    "TreeStats",
    "apply_delta_offline",
    "canonical_mode",
    "delta_superblock_without_fallbacks",
    "generate_delta_files",
    "open_delta_part",
    "parse_delta_superblock",
    "validate_branch",
]


class Repo(_Refs, _Signatures, _Trees, _Store, _Summary, _Deltas, _Remotes):
    """An open OSTree repository."""
