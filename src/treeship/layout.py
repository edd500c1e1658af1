"""What treeship reads from an OSTree repository's files without loading libostree.

Loading PyGObject and libostree costs a process 50-80 ms, about a third of what a no-op
push costs above ``ssh host true``. The first exchanges of a push need only refs, the
repository's mode and whether the published summary is current: small files in OSTree's
stable on-disk layout (``refs/heads/BRANCH`` holds a checksum, ``config`` is a key file).
Everything here answers exactly or says "don't know" (None), and the caller then asks
libostree through :mod:`treeship.repo`, which stays the only package that loads it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_HEX64B = re.compile(rb"[0-9a-f]{64}\Z")
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


_OTHER_LINE_BREAKS = re.compile("[\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
_KEY_LINE = re.compile(r"([A-Za-z0-9_.-]+)=(\S(?:.*\S)?)?\Z")


def core_config(path: str | os.PathLike[str]) -> dict[str, str] | None:
    """The ``[core]`` group of the repository's config, or None where libostree should read it.

    Read only from a config in the plain form ostree writes (``[group]`` lines, ``key=value``
    lines, ``#`` comments, blank lines). Anything else — spaces around ``=`` or a value,
    another comment style, a repeated key — is left to GLib's key-file parser, whose reading
    configparser would not match exactly.
    """
    try:
        text = Path(path, "config").read_bytes().decode()  # not read_text: it would turn "\r\n" into "\n"
    except (OSError, UnicodeDecodeError):
        return None
    if _OTHER_LINE_BREAKS.search(text):
        return None  # GLib ends lines at "\n" alone; str.splitlines would also end them at these
    group = None
    core: dict[str, str] = {}
    for line in text.split("\n"):
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]") and "[" not in line[1:] and "]" not in line[:-1]:
            group = line[1:-1]
            continue
        m = _KEY_LINE.match(line)
        if m is None or group is None:
            return None
        if group == "core":
            if m.group(1) in core:
                return None
            core[m.group(1)] = m.group(2) or ""
    return core


def mode(path: str | os.PathLike[str], core: dict[str, str] | None = None) -> str | None:
    """The repository's ``core.mode`` (from ``core``, its core_config, if given), or None where
    libostree should be asked: a config not in the plain form (see core_config), or a
    ``parent`` repository."""
    if core is None:
        core = core_config(path)
    if core is None or "parent" in core:
        return None
    name = core.get("mode", "bare")
    return _MODE_ALIASES.get(name, name) if name in _MODES else None


def heads(path: str | os.PathLike[str]) -> dict[str, str] | None:
    """Every branch under refs/heads and its commit; None if anything is not as ostree
    writes it (a checksum and a newline in a regular file, or a symlink to one: an alias)."""
    out: dict[str, str] = {}

    def walk(directory: str, prefix: str) -> bool:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return False
        for e in entries:
            name = prefix + e.name
            if e.is_dir(follow_symlinks=False):
                if not walk(e.path, name + "/"):
                    return False
                continue
            if not (e.is_file(follow_symlinks=False) or (e.is_symlink() and os.path.isfile(e.path))):
                return False  # a FIFO would block a read; a link to a directory libostree refuses
            if not plainly_valid_branch(name):
                return False  # libostree skips a name it does not take for a ref (`main.bak~`): it knows
            try:
                with open(e.path, "rb") as f:
                    raw = f.read(66)
            except OSError:
                return False
            value = raw[:-1] if raw.endswith(b"\n") else raw
            if not _HEX64B.match(value):
                return False  # damage, or a form libostree may read otherwise: it knows
            out[name] = value.decode()
        return True

    return out if walk(os.path.join(path, "refs", "heads"), "") else None


#: OSTree's object types, numbered as OstreeObjectType (part of its stable format) and as the
#: wire's OBJECT frames carry them; the one table the pusher, the receiver and the closure
#: walk read (repo/core.py maps the same names to libostree's enum; tests/test_wire_types.py
#: keeps the two equal).
OBJECT_TYPES = {"file": 1, "dirtree": 2, "dirmeta": 3, "commit": 4, "commitmeta": 6}
#: libostree's OSTREE_MAX_METADATA_SIZE (2022.7): its clients will not pull a dirtree,
#: dirmeta, commit or .commitmeta larger; a receiver checks each in memory
MAX_METADATA = 10 << 20
TYPE_NAMES = {number: name for name, number in OBJECT_TYPES.items()}
#: Each type's file suffix under objects/ in an archive repository (content is compressed).
SUFFIX = {"file": "filez", "dirtree": "dirtree", "dirmeta": "dirmeta", "commit": "commit", "commitmeta": "commitmeta"}


def object_relpath(checksum: str, suffix: str) -> str:
    """Where an object lives under ``objects/``: ``XX/REST.SUFFIX``, XX the checksum's first
    two hex digits (OSTree's stable layout; content is ``filez`` in an archive repository)."""
    return f"{checksum[:2]}/{checksum[2:]}.{suffix}"


def is_stored(path: str | os.PathLike[str], checksum: str, objtype: str) -> bool:
    """The object's file is in this archive repository's own ``objects/`` (partial or not; a
    parent repository's, where libostree's has_object also looks, does not count)."""
    return os.path.exists(f"{path}/objects/{object_relpath(checksum, SUFFIX[objtype])}")


def has_object(path: str | os.PathLike[str], checksum: str, objtype: str) -> bool:
    """In an archive repository: the object is stored, and a commit is not marked partial
    (``state/CHECKSUM.commitpartial``, as libostree marks it), as Repo.has_object tells it."""
    if not is_stored(path, checksum, objtype):
        return False
    return objtype != "commit" or not os.path.exists(f"{path}/state/{checksum}.commitpartial")


LIST_FROM = 4  # objects asked about in one objects/XX directory from which listing it beats a stat each


def objects_present(path: str | os.PathLike[str], objects: list[tuple[str, str]]) -> list[bool]:
    """has_object for many (checksum, type) at once, in order. Where several fall in one
    objects/XX directory it is listed once instead: a first push asks about thousands of
    objects, and a stat each (most of them failing) took ~12 ms of its start. One listing
    at a time is held: in a repository of millions of objects they would add up."""
    out: list[bool | None] = [None] * len(objects)
    per_dir: dict[str, list[int]] = {}
    for i, (checksum, objtype) in enumerate(objects):
        if objtype == "commit":
            out[i] = has_object(path, checksum, objtype)
        else:
            per_dir.setdefault(checksum[:2], []).append(i)
    for directory, indices in per_dir.items():
        listing = _existing(f"{path}/objects/{directory}") if len(indices) >= LIST_FROM else None
        for i in indices:
            checksum, objtype = objects[i]
            if listing is not None:
                out[i] = object_relpath(checksum, SUFFIX[objtype]).partition("/")[2] in listing
            else:
                out[i] = has_object(path, checksum, objtype)
    return [bool(x) for x in out]


def _existing(directory: str) -> frozenset[str] | None:
    """The names in ``directory`` that os.path.exists would find (a symlink only if its
    target is there); empty if there is no such directory; None if it cannot be listed."""
    try:
        with os.scandir(directory) as entries:
            return frozenset(e.name for e in entries if not e.is_symlink() or os.path.exists(e.path))
    except (FileNotFoundError, NotADirectoryError):
        return frozenset()
    except OSError:  # unreadable, say: ask object by object, as has_object does
        return None


def has_entries(directory: Path) -> bool | None:
    """Whether ``directory`` holds anything; None where it cannot be listed (or is not there)."""
    try:
        with os.scandir(directory) as entries:
            return next(entries, None) is not None
    except OSError:
        return None


def holds_no_objects(path: str | os.PathLike[str]) -> bool:
    """Whether ``objects/`` has no entry at all: a repository nothing was ever committed or
    pushed into (not even half a push: that leaves objects/XX directories)."""
    return has_entries(Path(path, "objects")) is False


def remote_refs_present(path: str | os.PathLike[str]) -> bool:
    """Whether refs/remotes holds anything (then libostree lists those refs too)."""
    return has_entries(Path(path, "refs", "remotes")) is True


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
