"""What treeship reads from an OSTree repository's files without loading libostree.

Loading PyGObject and libostree costs a process 50-80 ms, about a third of what a no-op
push costs above ``ssh host true``. The first exchanges of a push need only refs, the
repository's mode and whether the published summary is current: small files in OSTree's
stable on-disk layout (``refs/heads/BRANCH`` holds a checksum, ``config`` is a key file).
Everything here answers exactly or says "don't know" (None), and the caller then asks
libostree through :mod:`treeship.repo`, which stays the only module that loads it.
"""

from __future__ import annotations

import configparser
import os
import re
from pathlib import Path

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
# The ASCII part of libostree's OSTREE_REF_REGEXP: a name matching this is valid there too.
_ASCII_REF = re.compile(r"(?:[A-Za-z0-9_][-._A-Za-z0-9_]*/)*[A-Za-z0-9_][-._A-Za-z0-9_]*\Z")
SUMMARY_DIR = "treeship-summary"
_DIGEST_MARK = ".refs-"
_MODES = {"archive", "archive-z2", "bare", "bare-user", "bare-user-only"}  # ostree_repo_mode_from_string
_MODE_ALIASES = {"archive-z2": "archive"}


def is_repo(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    return (p / "config").is_file() and (p / "objects").is_dir()


def plainly_valid_branch(name: str) -> bool:
    """True if ``name`` is certainly a valid OSTree ref name (False: ask libostree)."""
    return bool(_ASCII_REF.match(name)) and ".." not in name.split("/")


def mode(path: str | os.PathLike[str]) -> str | None:
    """The repository's ``core.mode``, or None where libostree should be asked (a parent repo)."""
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        cp.read_string(Path(path, "config").read_text())
    except (OSError, UnicodeDecodeError, configparser.Error):
        return None
    if not cp.has_section("core") or cp.has_option("core", "parent"):
        return None
    name = cp.get("core", "mode", fallback="bare").strip()
    return _MODE_ALIASES.get(name, name) if name in _MODES else None


def heads(path: str | os.PathLike[str]) -> dict[str, str] | None:
    """Every branch under refs/heads and its commit; None if one is unreadable or odd."""
    root = Path(path, "refs", "heads")
    out: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(root, followlinks=False):
        for name in files:
            full = os.path.join(dirpath, name)
            try:
                value = Path(full).read_text().strip()
            except (OSError, UnicodeDecodeError):
                return None
            if not _HEX64.match(value):
                return None  # an alias to another ref, or damage: libostree knows
            out[os.path.relpath(full, root)] = value
    return out


_SUFFIX = {"file": "filez", "dirtree": "dirtree", "dirmeta": "dirmeta", "commit": "commit",
           "commitmeta": "commitmeta"}


def has_object(path: str | os.PathLike[str], checksum: str, objtype: str) -> bool:
    """In an archive repository: the object is stored, and a commit is not marked partial
    (``state/CHECKSUM.commitpartial``, as libostree marks it), as Repo.has_object tells it."""
    if not os.path.exists(f"{path}/objects/{checksum[:2]}/{checksum[2:]}.{_SUFFIX[objtype]}"):
        return False
    return objtype != "commit" or not os.path.exists(f"{path}/state/{checksum}.commitpartial")


def remote_refs_present(path: str | os.PathLike[str]) -> bool:
    """Whether refs/remotes holds anything (then libostree lists those refs too)."""
    try:
        return any(True for _ in os.scandir(Path(path, "refs", "remotes")))
    except OSError:
        return False


def refs_digest(refs: dict[str, str]) -> str:
    """A short digest of a ref listing, as published summaries record it in their name."""
    import hashlib  # here: a no-op push's receiver does without

    text = "".join(f"{name} {refs[name]}\n" for name in sorted(refs))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def generation_name(stamp: str, refs: dict[str, str] | None) -> str:
    """A summary generation's directory name; it carries the digest of the refs it lists."""
    return stamp + (_DIGEST_MARK + refs_digest(refs) if refs is not None else "")


def summary_lists(path: str | os.PathLike[str], refs: dict[str, str]) -> bool | None:
    """Whether the published summary lists exactly ``refs``; None if that cannot be told here.

    Told from the name of the generation that ``summary`` resolves to, when treeship
    published it (see Repo.publish_summary); for any other summary, None.
    """
    p = Path(path)
    try:
        if os.readlink(p / "summary") != f"{SUMMARY_DIR}/current/summary":
            return None
        name = os.readlink(p / SUMMARY_DIR / "current")
    except OSError:
        return None
    if _DIGEST_MARK not in name:
        return None
    return name.rsplit(_DIGEST_MARK, 1)[1] == refs_digest(refs)
