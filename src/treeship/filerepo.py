"""An archive repository worked on through its files alone: what the receiver of a plain push
needs, without loading libostree.

Loading PyGObject and libostree costs a receiver ~40 ms of CPU, taken while objects stream,
when the two cores are what a push is short of (docs/performance.md). A push whose policy
asks nothing of libostree — no signature rules for its branches, no signed summary, no
deltas — into a repository in the plain form ostree writes (archive mode, no parent, refs
as files) needs only what OSTree's stable on-disk layout and GLib give: metadata objects
checked by GLib's own normal-form check (:mod:`treeship.gvariant`) and libostree's
structure rules (below, tested against libostree's), partial marks and refs as files, the
closure walked from the files, and the summary written as libostree writes it (or by
``ostree summary -u`` where the repository holds what only libostree should summarize). Where a
push turns out to need more (signatures in it, a ref file in another form), the receiver
loads libostree as before; :class:`FileRepo` asks it through ``fallback``.

Also here, since both ways use them: moving refs, the flush before they move, and waiting
for a lock.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from . import closure, layout, objects
from .errors import RepoError, StorageError, TransferError

TYPE_CHECKING = False  # not `from typing`: importing typing costs a receiver ~10 ms
if TYPE_CHECKING:
    from . import gvariant
    from .future import Future
    from .repo import Repo

_HEX64B = re.compile(rb"[0-9a-f]{64}\Z")
_SUFFIX = {number: layout.SUFFIX[name] for number, name in layout.TYPE_NAMES.items()}
_METADATA = {closure.DIRTREE: "(a(say)a(sayay))", closure.DIRMETA: "(uuua(ayay))",
             closure.COMMIT: "(a{sv}aya(say)sstayay)", layout.OBJECT_TYPES["commitmeta"]: "a{sv}"}
SUMMARY_TYPE = "(a(s(taya{sv}))a{sv})"
_PERMISSION_BITS = stat.S_IFMT(0o170000) | 0o7777  # libostree's validate_stat_mode_perms: nothing else


def verify_object(src: bytes | Path, checksum: str, objtype: int, max_size: int | None = None) -> None:
    """Check an object received in archive form; raise TransferError if it is not ``checksum``.

    Nothing is trusted: metadata is hashed and its GVariant structure validated (below);
    content is parsed and checksummed (see :func:`treeship.objects.content_checksum`), its
    expansion bounded by the size its header declares, which must not exceed ``max_size``.
    ``src`` is the object's bytes, or a file holding them (large objects).
    """
    if objtype == closure.FILE:
        objects.verify_content(src, checksum, max_size)
        return
    if objtype not in _METADATA:
        raise TransferError(f"object {checksum}: unknown object type {objtype}")
    data = src.read_bytes() if isinstance(src, Path) else src
    got = hashlib.sha256(data).hexdigest()
    if got != checksum:
        raise TransferError(f"object {checksum}.{_SUFFIX[objtype]}: checksum mismatch (hashes to {got})")
    validate_metadata(data, checksum, objtype)


def validate_metadata(data: bytes, checksum: str, objtype: int) -> None:
    """A dirtree, dirmeta or commit must be a GVariant of its type in normal form (GLib's
    judgement) that keeps libostree's structure rules (``ostree_validate_structureof_*``,
    2022.7): file names neither empty-of-meaning (``.``, ``..``) nor holding ``/``, 32-byte
    checksums, a directory's mode; TransferError if not."""
    from . import gvariant

    kind = _SUFFIX[objtype]
    name = f"{checksum}.{kind}"
    v = gvariant.normal(_METADATA[objtype], data)
    if v is None:
        raise TransferError(f"object {name}: not a valid {kind} (not in normal form)")
    why = _structure_fault(v, data, objtype)
    if why:
        raise TransferError(f"object {name}: invalid: {why}")


def _structure_fault(v: gvariant.Variant, data: bytes, objtype: int) -> str:
    """What libostree's structure rules refuse in a metadata object in normal form ("" if nothing)."""
    if objtype == closure.DIRTREE:
        try:
            files, dirs = objects.parse_dirtree(data)
        except ValueError:  # a checksum that is not 32 bytes (the framing holds: GLib said so)
            return "a checksum is not 32 bytes"
        for entry in (*files, *dirs):
            if entry[0] in (b".", b"..") or b"/" in entry[0]:
                return f"invalid file name {entry[0].decode()!r}"
        return ""
    if objtype == closure.DIRMETA:
        mode = int.from_bytes(data[8:12], "big")  # (uuua(ayay)): uid, gid, mode, big-endian
        if not stat.S_ISDIR(mode):
            return f"directory metadata mode {mode:o} is not a directory's"
        if mode & ~_PERMISSION_BITS:
            return f"directory metadata mode {mode:o} has bits beyond the permissions"
        return ""
    if objtype != closure.COMMIT:
        return ""  # a commitmeta: any a{sv} in normal form (its signatures are checked where used)
    parent = v.child(1).data()
    if parent and len(parent) != 32:
        return "the parent checksum is not 32 bytes"
    if len(v.child(6).data()) != 32 or len(v.child(7).data()) != 32:
        return "a root checksum is not 32 bytes"
    return ""


def _plain_archive_core(path: str | os.PathLike[str]) -> dict[str, str] | None:
    """The config's ``[core]`` (layout.core_config) of an archive repository of version 1
    without a parent; None for anything else (libostree opens version 1 only, and says so
    for any other)."""
    core = layout.core_config(path)
    if core is None or core.get("repo_version") != "1" or layout.mode(path, core) != "archive":
        return None
    return core


def _read_commit(path: Path, checksum: str) -> tuple[bytes, gvariant.Variant]:
    """A stored commit's bytes and its GVariant; RepoError if it is not there or not a valid
    commit (as a received one would be judged), StorageError if it cannot be read."""
    from . import gvariant

    try:
        with open(f"{path}/objects/{layout.object_relpath(checksum, 'commit')}", "rb") as f:
            data = f.read(layout.MAX_METADATA + 1)
    except FileNotFoundError:
        raise RepoError(f"commit {checksum}: not in this repository") from None
    except OSError as e:
        raise StorageError(f"{path}: reading commit {checksum}: {e.strerror}") from None
    v = gvariant.normal(_METADATA[closure.COMMIT], data)
    if v is None or _structure_fault(v, data, closure.COMMIT):
        raise RepoError(f"commit {checksum}: not a valid commit")
    return data, v


class FileRepo:
    """An archive repository in ostree's plain form, through its files (see the module).

    It answers the part of :class:`treeship.repo.Repo`'s interface that a receiver uses
    for a plain push, with the same meaning; ``fallback`` gives the libostree one for what
    is out of the ordinary.
    """

    mode = "archive"

    def __init__(self, path: str | os.PathLike[str], fsync: bool, fallback: Callable[[], Repo]) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._fallback = fallback
        self._store: objects.ObjectStore | None = None

    @classmethod
    def open(cls, path: str | os.PathLike[str], fallback: Callable[[], Repo]) -> FileRepo | None:
        """The repository through its files, or None where libostree must be asked: not an
        archive repository, a parent repository, a config ostree would not write, remote refs."""
        core = _plain_archive_core(path)
        if core is None or layout.remote_refs_present(path):
            return None
        fsync = core.get("fsync", "true")
        if fsync not in ("true", "false"):
            return None
        return cls(path, fsync == "true", fallback)

    # -- objects ---------------------------------------------------------------------------

    def verify_object(self, src: bytes | Path, checksum: str, objtype: int, max_size: int | None = None) -> None:
        verify_object(src, checksum, objtype, max_size)

    def place_object(self, src: bytes | Path, checksum: str, objtype: int) -> None:
        if self._store is None:
            self._store = objects.ObjectStore(self.path)
        self._store.place(src, checksum, _SUFFIX[objtype])

    def has_commit(self, checksum: str) -> bool:
        """In this repository's objects/ (partial or not, as libostree's has_object)."""
        return layout.is_stored(self.path, checksum, "commit")

    def mark_partial(self, commit: str, partial: bool) -> None:
        """``state/COMMIT.commitpartial``, an empty file, as libostree's mark_commit_partial."""
        state = self.path / "state"
        mark = state / f"{commit}.commitpartial"
        try:
            if partial:
                state.mkdir(mode=0o755, exist_ok=True)
                fd = os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
                os.close(fd)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(mark)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise StorageError(f"{self.path}: marking commit {commit} partial: no space left on device") from None
            raise StorageError(f"{self.path}: marking commit {commit} partial: {e.strerror}") from None

    def sync_in_background(self) -> Future[None]:
        """As Repo.sync_in_background (see sync_in_background)."""
        return sync_in_background(self.path, self.fsync)

    # -- commits and their trees (closure.Trees) ----------------------------------------------

    def _commit(self, checksum: str) -> gvariant.Variant:
        return _read_commit(self.path, checksum)[1]

    def commit_links(self, checksum: str) -> tuple[str, str, str | None]:
        v = self._commit(checksum)
        parent = v.child(1).data()
        return (v.child(6).data().hex(), v.child(7).data().hex(),
                parent.hex() if parent else None)

    def dirtree_entries(self, checksum: str) -> tuple[list[tuple[bytes, str]], list[tuple[bytes, str, str]]] | None:
        return closure.read_dirtree(self.path, checksum)

    def complete_commit(self, checksum: str | None) -> bool:
        return bool(checksum) and layout.has_object(self.path, checksum, "commit")

    def check_closure(self, commit: str, placed: set[str] | frozenset[str] = frozenset()) -> str | None:
        return closure.check_closure(self, f"{self.path}/objects", commit, "filez", placed)

    def is_ancestor(self, ancestor: str, commit: str) -> bool:
        """True when ``ancestor`` is ``commit`` or one of its parents (as far as history is here)."""
        cur: str | None = commit
        while cur:
            if cur == ancestor:
                return True
            if not self.has_commit(cur):
                return False
            cur = self.commit_links(cur)[2]
        return False

    def ref_binding(self, checksum: str) -> list[str] | None:
        """The commit's ``ostree.ref-binding`` (None: none); ValueError if it is not an ``as``."""
        value = self._commit(checksum).child(0).lookup("ostree.ref-binding")
        if value is None:
            return None
        if value.type_string != "as":
            raise ValueError(f"ostree.ref-binding is an {value.type_string}, not a list of branch names")
        return value.strings()

    # -- refs -------------------------------------------------------------------------------------

    def head(self, branch: str) -> str | None:
        """As Repo.head: the commit ``refs/heads/BRANCH`` names; libostree reads any other form."""
        ref = self.path / "refs" / "heads" / branch
        if not ref.is_file():
            return None
        try:
            with open(ref, "rb") as f:
                raw = f.read(66)
        except OSError:
            raw = b""
        value = raw[:-1] if raw.endswith(b"\n") else raw
        return value.decode() if _HEX64B.match(value) else self._fallback().head(branch)

    def refs(self) -> dict[str, str]:
        heads = layout.heads(self.path)
        return heads if heads is not None else self._fallback().refs()

    def ref_conflict(self, name: str, others: Iterable[str] = ()) -> str | None:
        return ref_conflict(self.path, name, others)

    def set_refs(self, refs: dict[str, str | None], workdir: Path | None = None) -> None:
        set_refs(self.path, refs, workdir)

    # -- the summary ------------------------------------------------------------------------------

    def summary_refs(self) -> dict[str, str] | None:
        """The refs the published summary lists (None: no summary, or unreadable)."""
        try:
            return listed_refs((self.path / "summary").read_bytes())
        except OSError:
            return None

    def publish_summary(self, workdir: Path, sign: Callable[[Repo], None] | None = None) -> None:
        """As Repo.publish_summary: the summary written here (write_summary) where the repository
        is as plain as the push, else by ``ostree summary -u`` (a ~15 ms process, where loading
        libostree here costs ~40 ms of CPU); signing it needs libostree."""
        import shutil

        if sign is not None:
            self._fallback().publish_summary(workdir, sign)
            return
        from . import generations

        def regenerate(shadow: Path) -> dict[str, str] | None:
            with _repository_lock(self.path):  # as libostree's regenerate_summary takes it
                listed = write_summary(self.path, shadow, self.fsync)
            if listed is not None:
                return listed
            ostree = shutil.which("ostree")
            if ostree is None:
                raise StorageError("regenerating the summary needs the ostree command, which is not on PATH")
            return _ostree_summary(ostree, shadow)

        generations.publish(self.path, workdir, regenerate)


def write_summary(repo: Path, shadow: Path, fsync: bool = True) -> dict[str, str] | None:
    """Write into ``shadow`` (see generations.publish) the summary libostree 2022.7's
    ``regenerate_summary`` writes for ``repo``, and return the refs it lists; None (nothing
    written) where the repository holds what only libostree should summarize: static deltas
    or their indexes, a collection ID, tombstone commits, mirrored refs, refs not in plain form.

    Each branch: the size of its commit object, its checksum, and the commit's timestamp and
    ``version``; then the repository's mode, the time, no tombstones, indexed deltas. As
    libostree does, ``core.indexed-deltas=true`` is added to the config if it is not there
    (written beside the summary in ``shadow``, moved into the repository with it); flushed
    as libostree flushes them. tests/test_filerepo.py compares both files with libostree's.
    """
    from . import gvariant

    core = _plain_archive_core(repo)
    if core is None or any(k in core for k in ("collection-id", "tombstone-commits")):
        return None
    if any(layout.has_entries(repo / d) for d in ("deltas", "delta-indexes", "refs/mirrors", "refs/remotes")):
        return None
    config = None
    if core.get("indexed-deltas") != "true":
        if "indexed-deltas" in core:
            return None
        config = _with_indexed_deltas((repo / "config").read_bytes().decode())
        if config is None:
            return None
    heads = layout.heads(repo)
    if heads is None:
        return None
    refs = []
    for name in sorted(heads):  # strcmp order: UTF-8 bytes sort as their code points
        try:
            data, v = _read_commit(repo, heads[name])
        except (RepoError, StorageError):
            return None  # libostree says what it makes of it
        meta: dict[str, tuple[str, object]] = {}
        version = v.child(0).lookup("version")
        if version is not None and version.type_string == "s":
            meta["ostree.commit.version"] = ("s", version.string())
        meta["ostree.commit.timestamp"] = ("t", int.from_bytes(v.child(5).data(), "little"))  # stored big-endian
        refs.append((name, (len(data), bytes.fromhex(heads[name]), meta)))
    import time

    extra = {"ostree.summary.mode": ("s", core["mode"]),  # as the config says it; in libostree's order
             "ostree.summary.last-modified": ("t", int.from_bytes(int(time.time()).to_bytes(8, "big"), "little")),
             "ostree.summary.tombstone-commits": ("b", False), "ostree.summary.indexed-deltas": ("b", True)}
    if config is not None:  # the shadow's own file, not the repository's; flushed whatever core.fsync says
        replace_file(shadow / "config", config.encode(), shadow)
    replace_file(shadow / "summary", gvariant.serialize(SUMMARY_TYPE, (refs, extra)), shadow,
                 flush=fsync)  # as libostree writes the summary
    return dict(heads)


@contextlib.contextmanager
def _repository_lock(path: Path, timeout: float = 300.0) -> Iterator[None]:
    """libostree's exclusive repository lock (a record lock on ``.lock``; its OFD locks and
    these exclude each other), so that an ``ostree prune`` or ``static-delta generate`` run
    meanwhile is not half seen; waited for as long as libostree's default lock timeout."""
    import fcntl

    try:
        fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
    except OSError as e:
        raise StorageError(f"{path}: opening the repository lock: {e.strerror}") from None
    try:
        try:
            taken = lock_exclusively(fd, fcntl.lockf, timeout)
        except OSError as e:
            raise StorageError(f"{path}: taking the repository lock: {e.strerror}") from None
        if not taken:
            raise StorageError(f"{path}: the repository has been locked for {timeout:.0f} s "
                               "(an ostree command running on it?)")
        yield
    finally:
        os.close(fd)  # (releases the lock)


def lock_exclusively(fd: int, take: Callable[[int, int], object], timeout: float | None) -> bool:
    """Take an exclusive lock on ``fd`` with ``take`` (``fcntl.flock``, or ``fcntl.lockf`` for
    libostree's record lock), waiting up to ``timeout`` seconds (None: as long as it takes);
    False if it was still held then. OSError for anything but the lock being held."""
    import fcntl
    import time

    if timeout is None:
        take(fd, fcntl.LOCK_EX)
        return True
    deadline = time.monotonic() + timeout
    while True:
        try:
            take(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):  # held: flock says EAGAIN, lockf either
                raise
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _with_indexed_deltas(text: str) -> str | None:
    """The config with ``indexed-deltas=true`` as libostree rewrites it: after the last key of
    ``[core]``. None unless the config is already as GLib's key file writes one (groups of
    ``key=value`` lines, one blank line before each group but the first, no comments):
    libostree's rewrite drops comments and redoes blank lines by GLib's rules."""
    lines = text.split("\n")
    if not text.endswith("\n") or lines.count("[core]") != 1 or not lines[0].startswith("["):
        return None
    for i, line in enumerate(lines[:-1]):
        is_group = line.startswith("[") and line.endswith("]")
        if line.startswith("#") or (not line and not lines[i + 1].startswith("[")) or \
                (is_group and i > 0 and lines[i - 1]) or not (is_group or not line or "=" in line):
            return None
    start = lines.index("[core]") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
    keys = end - 1  # the group's keys, then one blank line (before the next group, or the final newline's)
    if keys <= start or lines[keys] or not all("=" in line and not line.startswith("#") for line in lines[start:keys]):
        return None
    lines.insert(keys, "indexed-deltas=true")
    return "\n".join(lines)


def _ostree_summary(ostree: str, repo: Path) -> dict[str, str] | None:
    """``ostree summary -u`` in ``repo``; the refs the new summary lists."""
    import subprocess

    done = subprocess.run([ostree, "summary", "-u", f"--repo={repo}"], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip().splitlines()
        raise StorageError(f"{repo}: ostree summary -u: {why[-1] if why else f'exit status {done.returncode}'}")
    return listed_refs((repo / "summary").read_bytes())


def listed_refs(data: bytes) -> dict[str, str] | None:
    """The refs a summary lists (None: not a summary in normal form)."""
    from . import gvariant

    v = gvariant.normal(SUMMARY_TYPE, data)
    if v is None:
        return None
    entries = v.child(0)
    out = {}
    for i in range(len(entries)):
        entry = entries.child(i)
        out[entry.child(0).string()] = entry.child(1).child(1).data().hex()
    return out


# -- refs and the flush, for both ways of working on a repository -----------------------------------


def ref_conflict(path: Path, name: str, others: Iterable[str] = ()) -> str | None:
    """Why branch ``name`` cannot exist next to the refs here (and ``others``): refs are
    files under refs/heads/, so ``a`` and ``a/b`` exclude each other. None if it can."""
    heads = path / "refs" / "heads"
    parts = name.split("/")
    for i in range(1, len(parts)):
        prefix = "/".join(parts[:i])
        if (heads / prefix).is_file() or prefix in others:
            return f"branch {prefix!r} exists, so no branch can be named {prefix}/…"
    if (heads / name).is_dir() or any(o.startswith(f"{name}/") for o in others):
        return f"branches named {name}/… exist, so no branch can be named {name}"
    return None


def set_refs(path: Path, refs: dict[str, str | None], workdir: Path | None = None) -> None:
    """Move refs (None deletes): every ref its new value, or, should moving one fail, every
    ref its old one.

    Each new ref file is written and flushed in ``workdir`` (default tmp/) first, with a copy
    of each ref it replaces (flushed only if it is put back): what can run out of space is
    done before anything moves. Then each is renamed over refs/heads/NAME; if a rename
    fails, those done are renamed back, and directories made on the way removed.
    libostree's own ref writes (transaction_set_ref) use a temp name inside refs/heads/,
    which a crash leaves behind as a stray branch (``main/tmp.AbC123``). Here a crash leaves
    each ref its old or new value, and nothing else under refs/ (as with libostree, a crash
    between two renames leaves the refs before it moved: see docs/reliability.md).
    """
    heads = path / "refs" / "heads"
    work = workdir or path / "tmp"
    aside: list[str] = []
    moved: list[tuple[str, str | None]] = []  # ref, its copy from before (None: there was none)
    name = ""
    try:
        try:
            plan = []
            for name, checksum in refs.items():
                dest = heads / name
                old = _read_ref(dest)
                before = _write_aside(work, old, aside, flush=False) if old is not None else None
                if checksum is not None:
                    plan.append((name, _write_aside(work, f"{checksum}\n".encode(), aside), before))
                else:
                    plan.append((name, None, before))
            for name, new, before in plan:
                _put_ref(heads, name, new)
                moved.append((name, before))
        except OSError:
            for done, before in reversed(moved):  # back as they were, as far as that goes
                with contextlib.suppress(OSError):
                    if before is not None:
                        _flush_file(before)
                    _put_ref(heads, done, before)
            _prune_empty(heads, refs)  # directories made for a ref that then failed
            raise
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise StorageError(f"{path}: no space left on device (writing ref {name})") from None
        raise StorageError(f"{path}: writing ref {name}: {e.strerror}") from None
    finally:
        for tmp in aside:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _prune_empty(heads: Path, names: Iterable[str]) -> None:
    """Remove the empty directories on the way to these refs (an empty refs/heads/a/ would
    keep a branch ``a`` from being made)."""
    for name in names:
        for parent in Path(name).parents[:-1]:
            with contextlib.suppress(OSError):
                (heads / parent).rmdir()


def _read_ref(dest: Path) -> bytes | None:
    try:
        return dest.read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def _write_aside(work: Path, data: bytes, aside: list[str], flush: bool = True) -> str:
    """A 0644 file holding ``data`` in ``work``, to be renamed into place; flushed unless
    ``flush`` is false (the copies of old refs: flushed only if they are put back)."""
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=work, prefix=".new-")
    aside.append(tmp)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        if flush:
            f.flush()
            os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    return tmp


def _flush_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _put_ref(heads: Path, name: str, tmp: str | None) -> None:
    """Rename ``tmp`` over refs/heads/NAME, or (None) delete the ref and its emptied directories."""
    dest = heads / name
    if tmp is None:
        dest.unlink(missing_ok=True)
        _prune_empty(heads, [name])
        return
    from .generations import later_mtime

    dest.parent.mkdir(parents=True, exist_ok=True)
    later_mtime(tmp, dest)
    os.replace(tmp, dest)


def replace_file(dest: Path, data: bytes, workdir: Path, flush: bool = True) -> None:
    """Replace ``dest`` by ``data`` in one rename from ``workdir`` (same filesystem), flushed
    first (unless ``flush`` is false: a repository whose config says ``fsync=false``); its
    mtime moves forward even within the same second (HTTP caches compare it)."""
    from .generations import later_mtime

    aside: list[str] = []
    try:
        tmp = _write_aside(workdir, data, aside, flush)
        later_mtime(tmp, dest)
        os.replace(tmp, dest)
    except BaseException:
        for leftover in aside:
            with contextlib.suppress(OSError):
                os.unlink(leftover)
        raise


def sync_in_background(path: Path, enabled: bool = True) -> Future[None]:
    """Put what was written to the repository on stable storage (one ``syncfs``, as
    libostree does before a transaction moves refs), unless ``enabled`` is false (its
    ``core.fsync``); the flush runs in a thread of its own, since it waits for the disk and
    the caller can go on meanwhile (the receiver checks closures). ``result()`` waits for it
    and raises what it raised.

    A push writes its objects without flushing each (thousands of fsyncs cost far more
    than one syncfs). This is the line after which the receiver calls a commit complete
    or points a ref at it: a power cut must not leave a ref to objects the disk never got.
    """
    from .future import Future

    done: Future[None] = Future()
    if not enabled:
        done.set_result(None)
        return done

    def run() -> None:
        try:
            flush(path)
        except BaseException as e:  # noqa: BLE001 - raised by result(), in the caller's thread
            done.set_exception(e)
        else:
            done.set_result(None)

    threading.Thread(target=run, name="treeship-sync", daemon=True).start()
    return done


def flush(path: Path) -> None:
    """One syncfs(2) on the file system holding ``path``; StorageError if it fails."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _syncfs(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise StorageError(f"{path}: flushing to disk failed: {e.strerror or e}") from None


def _syncfs(fd: int) -> None:
    """syncfs(2) on the file system holding ``fd`` (the standard library has only sync(2),
    which would wait for every file system of the machine)."""
    import ctypes

    call = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    if call is None:  # not glibc: the whole machine, then
        os.sync()
        return
    if call(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
