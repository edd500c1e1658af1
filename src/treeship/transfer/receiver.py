"""The receiving end of a push (``treeship receive``), typically an SSH forced command.

Invariants (each has a test): an object becomes visible only after it is checksummed
here; a commit stays marked partial until its whole closure is present; a ref moves only
after closure, policy, signatures and fast-forward are all checked, under a lock; if any
ref of a push is refused, none moves (a crash while writing them leaves each at its old
or new value). Whatever arrived is kept, so a retry sends only what is still missing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import __version__, layout, trace
from ..errors import RepoError, StorageError, TransferError, TreeshipError
from ..future import Future
from ..policy import Policy
from . import wire

TYPE_CHECKING = False  # not `from typing`: importing typing costs a receiver ~10 ms
if TYPE_CHECKING:
    from typing import Any

    from ..filerepo import FileRepo
    from ..repo import Repo

OBJECT_TYPES = wire.OBJECT_TYPES

_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")  # not "$": it matches before a final "\n"
_TYPE_NAMES = layout.TYPE_NAMES
MAX_SIGNATURES = 16 << 20  # all the .commitmeta of one push: held until the refs move
MAX_COMMITS = 100_000  # commits in one push (each is held until the end; a history of 10,000 is long)
FRAME_COST = 43  # what an object's OBJECT and END frames count against the push's size, data aside
MAX_IN_FLIGHT = 16 << 20  # bytes of received objects queued for verification in memory
INLINE_BELOW = 256 << 10  # objects smaller than this are checked by the reading thread itself (_Verifier)
WORKER_NICE = 19  # the verify thread's nice value: see _Verifier
LOCK_NAME = ".treeship-receive.lock"
ADOPT_SECONDS = 5.0  # what one sweep spends adopting a killed receiver's staged objects (see _SessionDir)
TMP_PREFIX = "treeship-receive-"
_BOOT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class Update:
    """One ref update of a push. (A plain class, not a dataclass: see wire.Frame.)"""

    __slots__ = ("new", "old", "reason", "ref", "status")

    def __init__(self, ref: str, old: str | None, new: str | None, status: str = "ok", reason: str = "") -> None:
        self.ref = ref
        self.old = old  # what the pusher saw on the receiver
        self.new = new  # None: delete
        self.status = status  # ok | rejected | uptodate
        self.reason = reason

    def __repr__(self) -> str:
        return f"Update({self.to_dict()!r})"

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "old": self.old, "new": self.new, "status": self.status, "reason": self.reason}

    def reject(self, reason: str) -> None:
        self.status, self.reason = "rejected", reason


def parse_object_name(name: Any) -> tuple[str, int]:
    """``<64 hex>.<type>`` → (checksum, type); anything else is a protocol error."""
    if not isinstance(name, str) or "." not in name:
        raise TransferError(f"protocol error: bad object name {str(name)[:80]!r}")
    csum, _, tname = name.partition(".")
    if not _HEX64.match(csum) or tname not in OBJECT_TYPES:
        raise TransferError(f"protocol error: bad object name {name[:80]!r}")
    return csum, int(OBJECT_TYPES[tname])


def serve(repo_path: str, config: str | None, key_id: str | None, timeout: float, create: bool) -> None:
    """``treeship receive``: one push session on stdin/stdout."""
    from ..policy import load

    pol = load(config)
    for fd in (0, 1, 2):  # a closed one would be taken by the next open (the protocol's, say): fill it
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    wire.widen_pipe(0)  # objects arrive in 1 MB reads, not 64 kB ones
    proto_out = os.dup(1)
    os.dup2(2, 1)  # nothing printed by accident can corrupt the protocol stream
    Receiver(repo_path, pol, key_id, 0, proto_out, timeout=timeout, create=create).run()


def _validate_branch(name: str) -> None:
    if not layout.plainly_valid_branch(name):
        from ..repo import validate_branch  # loads libostree: only for names out of the ordinary

        validate_branch(name)


class Receiver:
    """One push session over a pair of file descriptors.

    libostree is loaded only once objects are on their way: the HELLO, the preflight and
    a no-op push are answered from the repository's files (see :mod:`treeship.layout`).
    A plain push (see _plain_policy) does without it altogether: its objects, commits, refs
    and summary are worked on through the files (:mod:`treeship.filerepo`).
    """

    def __init__(self, repo_path: str, policy: Policy, key_id: str | None, rfd: int, wfd: int,
                 timeout: float | None = 300.0, create: bool = False) -> None:
        self.repo_path = repo_path
        self.policy = policy
        self.key_id = key_id
        self.reader = wire.Reader(rfd, timeout, wire.RECEIVER_LIMITS)
        self.writer = wire.Writer(wfd, timeout)
        self.create = create
        self.received_bytes = 0
        self.warnings: list[str] = []
        self.closure: dict[str, str | None] = {}  # commit → what is missing (None: complete)
        self.signatures: dict[str, dict[str, list[bytes]]] = {}  # commit → signatures received for it
        self.commitmeta: dict[str, bytes] = {}  # commit → its received .commitmeta, merged once refs move
        self.added: dict[str, dict[str, list[bytes]]] = {}  # commit → the signatures this push adds to it
        self.vouched: set[tuple[str, bytes]] = set()  # (commit, signature) added, found good by a rule
        self.delta_targets: set[str] = set()  # push --delta: one delta per commit (see delta.py)
        self.delta_cost = 0  # push --delta: bytes applying them wrote aside, counted against the limit
        self.heads: dict[str, str] | None = None  # the branches as the session began (None: ask libostree)

        self._repo: Repo | None = None
        self._loader: threading.Thread | None = None
        self._load_error: BaseException | None = None
        self._plain = False  # the repository and this push's policy need nothing of libostree
        self._following = False  # objects are on their way (see _objects_follow)
        self._files: FileRepo | None = None

    @property
    def dest(self) -> Repo | FileRepo:
        """The receiving repository as this push works on its objects, commits and refs: through
        its files alone for a plain push (libostree never loaded), else through libostree."""
        if not self._plain:
            return self.repo
        if self._files is None:
            from ..filerepo import FileRepo

            self._files = FileRepo.open(self.repo_path, lambda: self.repo)
            if self._files is None:  # the config is not as ostree writes it (after all)
                self._plain = False
                return self.repo
        return self._files

    @property
    def repo(self) -> Repo:
        """The repository through libostree: loaded by a thread started once the pusher knows
        what to send (see _answer_query), so that its ~60 ms overlap receiving content objects."""
        if self._loader is not None:
            self._loader.join()
            self._loader = None
            if self._load_error is not None:
                raise self._load_error
        if self._repo is None:
            from ..repo import Repo

            self._repo = Repo.open(self.repo_path)
        return self._repo

    def _objects_follow(self) -> None:
        """Objects are on their way: libostree starts loading (unless this push is plain)."""
        if self._following or self._repo is not None:
            return
        self._following = True
        from ..heap import keep_freed_memory

        # Objects follow, their buffers freed and taken again thousands of times. Set while
        # this is the only thread (mallopt is not safe against other threads allocating).
        keep_freed_memory()
        if self._plain:
            return

        def load() -> None:
            try:
                from ..repo import Repo

                self._repo = Repo.open(self.repo_path)
            except BaseException as e:  # noqa: BLE001 - raised in the main thread by .repo
                self._load_error = e

        self._loader = threading.Thread(target=load, name="treeship-load", daemon=True)
        self._loader.start()

    def _session_dir(self) -> _SessionDir:
        return _SessionDir(Path(self.repo_path, "tmp"), self.policy.max_object_size)

    def _present(self, objects: list[tuple[str, int]]) -> list[bool]:
        """Repo.has_object for each, told from the files where the layout is plain (see
        layout.objects_present)."""
        if self.heads is not None:
            return layout.objects_present(self.repo_path, [(c, _TYPE_NAMES[t]) for c, t in objects])
        return [self.repo.has_object(c, t) for c, t in objects]

    def run(self) -> None:
        try:
            self._run()
        finally:
            if self._loader is not None:  # never leave the process while it is half-way through imports
                self._loader.join()

    def _run(self) -> None:
        try:
            try:
                self._session()
            except OSError as e:  # what the repo layer did not already word: the pusher is told too
                if e.errno == errno.ENOSPC:
                    raise StorageError(f"{self.repo_path}: no space left on device") from None
                raise StorageError(f"{self.repo_path}: {e.strerror or e}") from None
        except TreeshipError as e:
            try:
                said = {"message": e.message, **({"exit_code": e.exit_code} if e.destination else {})}
                self.writer.send_json(wire.ERROR, said)
                self.writer.flush()
            except TreeshipError:
                pass
            raise

    # -- phases ---------------------------------------------------------------------------------

    def _session(self) -> None:
        trace.mark("receiver: started")
        hello = self.reader.expect(wire.HELLO).json()
        if hello.get("magic") != wire.MAGIC:
            raise TransferError("protocol error: not a treeship pusher")
        if hello.get("protocol") != wire.PROTOCOL_VERSION:
            raise TransferError(f"protocol version {hello.get('protocol')!r} not supported "
                                f"(this receiver speaks {wire.PROTOCOL_VERSION})")
        try:
            if not layout.is_repo(self.repo_path):
                from ..repo import Repo

                if self.create:
                    Repo.create(self.repo_path, "archive")
                else:
                    Repo.open(self.repo_path)  # raises the precise error
            plain = layout.mode(self.repo_path)
            mode = plain or self.repo.mode
            if mode != "archive":
                raise RepoError(f"{self.repo_path}: a receiving repository must be in archive mode, "
                                f"not {mode} (it is what clients pull over HTTP)")
        except TreeshipError as e:
            e.destination = True  # no retry alone fixes it: the pusher exits with its code
            raise
        # Objects a receiver killed mid-push had staged: in objects/ before anyone asks what is here.
        self._session_dir().sweep(adopt=True)
        self.heads = None if layout.remote_refs_present(self.repo_path) else layout.heads(self.repo_path)
        refs = self.heads if self.heads is not None else self.repo.refs()
        # Nothing here (no parent repository either): the pusher sends everything without asking.
        empty = plain is not None and refs == {} and layout.holds_no_objects(self.repo_path)
        self._plain = plain is not None and self.heads is not None and self._plain_policy([])
        self.writer.send_json(wire.HELLO, {"magic": wire.MAGIC, "protocol": wire.PROTOCOL_VERSION,
                                           "server": f"treeship {__version__}", "mode": mode,
                                           "refs": refs, "empty": empty, "key_id": self.key_id,
                                           "capabilities": [wire.DELTA_CAPABILITY],
                                           "idle_timeout": self.reader.timeout})
        self.writer.flush()
        updates = self._read_updates()
        self._plain = self._plain and self._plain_policy(updates)
        # The commits this push moves a branch to: the only ones signatures or a delta may come for.
        self.targets = {u.new for u in updates if u.status == "ok" and u.new}
        self.writer.send_json(wire.PREFLIGHT, {"refs": [u.to_dict() for u in updates]})
        self.writer.flush()
        trace.mark("receiver: preflight sent")
        if not any(u.status == "ok" for u in updates):
            if updates and all(u.status == "uptodate" for u in updates):
                self._repair_summary()
            return
        with self._session_dir() as tmp:
            commits, metas, placed = self._receive_objects(tmp)
            repo = self.dest
            trace.mark("receiver: objects received")
            for csum, data in metas.items():
                # Signatures only for the commits this push moves a branch to, checked with the
                # refs and merged only if they move: nobody adds signatures to others' commits.
                if csum not in self.targets:
                    raise TransferError(f"signatures for commit {csum}, which no branch of this push is moving to")
                self.signatures[csum] = self.repo.parse_signatures(csum, data)
                self.commitmeta[csum] = data
            commit_type = int(OBJECT_TYPES["commit"])
            with self._locked():
                # Under the lock that moving refs takes: a commit another push has found complete
                # (and may point a ref at) is already here, and is never marked partial again.
                # Here means in this repository's own objects/, which clients pull from.
                for csum, path in commits.items():
                    if not layout.is_stored(self.repo_path, csum, "commit"):
                        repo.mark_partial(csum, True)  # until its closure is known to be here
                        repo.place_object(path, csum, commit_type)
            # On stable storage before a commit is called complete or a ref points at it; the
            # flush waits for the disk while the closures are checked.
            flushed = repo.sync_in_background()
            try:
                for csum in commits:
                    self.closure[csum] = repo.check_closure(csum, placed)
            except BaseException:
                flushed.exception()  # waited for; the closure check's error is the one raised
                raise
            flushed.result()
            for csum, missing in self.closure.items():
                if missing is None:
                    repo.mark_partial(csum, False)
        trace.mark("receiver: closures checked")
        self._move_refs(updates)
        trace.mark("receiver: refs moved, published")
        self.writer.send_json(wire.STATUS, {"refs": [u.to_dict() for u in updates],
                                            "received_bytes": self.received_bytes, "warnings": self.warnings})
        self.writer.flush()

    def _plain_policy(self, updates: list[Update]) -> bool:
        """Whether the policy asks nothing of libostree for these ref updates: no signature
        rules for their branches, no signed summary, no deltas."""
        s = self.policy.summary
        return not (s.gpg_sign or s.ed25519_secret or self.policy.deltas) and \
            not any(self.policy.signature_rules(u.ref) for u in updates)

    def _read_updates(self) -> list[Update]:
        msg = self.reader.expect(wire.UPDATE).json()
        force = msg.get("force", False) is True
        raw = msg.get("updates")
        if not isinstance(raw, list) or not raw:
            raise TransferError("protocol error: UPDATE lists no refs")
        updates: list[Update] = []
        seen: set[str] = set()
        for item in raw:
            if not isinstance(item, dict) or not isinstance(item.get("ref"), str):
                raise TransferError("protocol error: malformed ref update")
            ref, new, old = item["ref"], item.get("new"), item.get("old")
            for value in (new, old):
                if value is not None and (not isinstance(value, str) or not _HEX64.match(value)):
                    raise TransferError(f"protocol error: {ref[:80]!r}: bad commit checksum")
            u = Update(ref, old, new)
            updates.append(u)
            try:
                _validate_branch(ref)
            except TreeshipError as e:
                u.reject(e.message)
                continue
            if ref in seen:
                u.reject("listed twice")
                continue
            seen.add(ref)
            self._preflight(u, force)
        if any(u.status == "rejected" for u in updates):  # all or nothing: a refused push sends nothing
            for u in updates:
                if u.status == "ok":
                    u.reject("not moved: another ref of this push was rejected")
        self.force = force
        return updates

    def _preflight(self, u: Update, force: bool) -> None:
        """Everything decidable before objects travel: key rights, protection, no-ops."""
        reason = self.policy.may_write(self.key_id, u.ref)
        if reason:
            u.reject(reason)
            return
        current = self.heads.get(u.ref) if self.heads is not None else self.repo.head(u.ref)
        if u.new is None:
            if self.policy.is_protected(u.ref):
                u.reject("protected branch: it can never be deleted")
            elif not (force and self.policy.may_force(self.key_id, u.ref)):
                u.reject("deleting a branch needs --force where the policy allows it")
            elif current is None:
                u.status, u.reason = "uptodate", "no such branch"
            return
        if current == u.new:
            u.status, u.reason = "uptodate", "already there"
            return
        if current and self._present([(u.new, int(OBJECT_TYPES["commit"]))])[0] \
                and not self.dest.is_ancestor(current, u.new):
            self._check_rewind(u, force)

    def _check_rewind(self, u: Update, force: bool) -> None:
        if self.policy.is_protected(u.ref):
            u.reject("non-fast-forward: protected branch, it can never be rewound")
        elif not force:
            u.reject("non-fast-forward (use --force where the policy allows it)")
        elif not self.policy.may_force(self.key_id, u.ref):
            u.reject("non-fast-forward: --force is not allowed on this branch for this key")

    def _receive_objects(self, tmp: Path) -> tuple[dict[str, bytes | Path], dict[str, bytes], set[str]]:
        """Read objects until FINISH; verify and place each in a worker while reading goes on.
        Returns the commits and signatures received, and the objects placed (``XX/REST.SUFFIX``)."""
        commits: dict[str, bytes | Path] = {}
        metas: dict[str, bytes] = {}
        pending: deque[tuple[Future[None], int]] = deque()
        in_flight = 0  # bytes held in memory by queued jobs: bounded, whatever the push size
        commit_bytes = signature_bytes = 0
        counter = 0
        store = None  # made at the first object: a QUERY is answered before anything is imported
        with _Verifier() as pool:
            try:
                while True:
                    frame = self.reader.read()
                    if frame.type == wire.OBJECT:
                        if store is None:
                            from ..filerepo import verify_object
                            from ..objects import ObjectStore

                            # No libostree: content goes on while it loads. New objects/XX
                            # directories are filled aside and moved in whole (ObjectStore).
                            store = ObjectStore(self.repo_path, staging=f"{tmp}/objects")
                            self._objects_follow()  # (already where a QUERY came first)
                        counter += 1
                        csum, objtype, data = self._read_object(frame, tmp, counter)
                        name = _TYPE_NAMES[objtype]
                        if name == "commit":
                            if csum not in commits and len(commits) >= MAX_COMMITS:
                                raise TransferError(f"push of more than {MAX_COMMITS} commits")
                            verify_object(data, csum, objtype)  # as it arrives: none held unchecked
                            if isinstance(data, bytes):
                                commit_bytes += len(data)
                                if commit_bytes > MAX_IN_FLIGHT:  # many commits: keep them on disk
                                    path = tmp / f"{counter}.commit"
                                    path.write_bytes(data)
                                    data = path
                            commits[csum] = data
                        elif name == "commitmeta":
                            # Refused at once, not after FINISH: nobody may pile up signatures.
                            if csum not in self.targets:
                                raise TransferError(f"signatures for commit {csum}, "
                                                    "which no branch of this push is moving to")
                            if csum in metas:
                                raise TransferError(f"signatures for commit {csum} sent twice")
                            metas[csum] = data.read_bytes() if isinstance(data, Path) else data
                            signature_bytes += len(metas[csum])
                            if signature_bytes > MAX_SIGNATURES:
                                raise TransferError(f"the signatures of this push exceed {MAX_SIGNATURES} bytes")
                        elif name != "file":  # dirtree, dirmeta: small, checked here (by GLib: filerepo)
                            verify_object(data, csum, objtype, self.policy.max_object_size)
                            store.place(data, csum, name)
                        elif isinstance(data, bytes) and len(data) < INLINE_BELOW:
                            store.install_content(data, csum, self.policy.max_object_size)
                        else:
                            size = len(data) if isinstance(data, bytes) else 0
                            pending.append((pool.submit_steps(store.install_steps(data, csum,
                                                                                  self.policy.max_object_size)), size))
                            in_flight += size
                        while pending and (pending[0][0].done() or in_flight > MAX_IN_FLIGHT):
                            if not pending[0][0].done() and pool.run_one():
                                continue  # at the memory bound: check a queued object here, not wait
                            fut, size = pending.popleft()
                            pool.result(fut)
                            in_flight -= size
                    elif frame.type == wire.DELTA:  # push --delta: see delta.py
                        from . import delta

                        for fut, _ in pending:
                            pool.result(fut)
                        pending.clear()
                        in_flight = 0
                        # Its own worker, at the normal priority: a delta's jobs are not in
                        # steps, so none could be handed back from a starved thread.
                        with _Verifier(nice=None) as delta_pool:
                            csum, data = delta.receive(self, frame, tmp, delta_pool, self.targets)
                        from ..filerepo import verify_object

                        verify_object(data, csum, int(OBJECT_TYPES["commit"]))
                        commits[csum] = data
                    elif frame.type == wire.QUERY:
                        self._answer_query(frame)
                    elif frame.type == wire.FINISH:
                        pool.run_all()  # the last large objects: checked on two threads
                        break
                    elif frame.type == wire.ERROR:
                        raise TransferError(f"pusher error: {frame.json().get('message', '?')}")
                    else:
                        raise TransferError(f"protocol error: unexpected frame {frame.type!r}")
                for fut, _ in pending:
                    pool.result(fut)
            except BaseException:
                # Objects that arrived whole are kept (a retry will not resend them): let the
                # queued checks finish; their own failures only mean those objects are dropped.
                for fut, _ in pending:
                    try:
                        pool.result(fut)
                    except Exception:  # noqa: BLE001, S110 - the first error is the one raised
                        pass
                if store is not None:
                    with contextlib.suppress(TreeshipError):  # the first error is the one raised
                        store.unstage()
                raise
        if store is None:
            return commits, metas, set()
        store.unstage()  # before any commit is placed: what it points at first
        return commits, metas, store.placed

    def _answer_query(self, frame: wire.Frame) -> None:
        trace.mark("receiver: query")
        names = frame.json().get("objects")
        if not isinstance(names, list):
            raise TransferError("protocol error: QUERY without an object list")
        asked = [parse_object_name(name) for name in names]
        # signatures (.commitmeta) are merged, never assumed present
        missing = [name for name, (_, t), here in zip(names, asked, self._present(asked), strict=True)
                   if _TYPE_NAMES[t] == "commitmeta" or not here]
        self.writer.send_json(wire.MISSING, {"objects": missing})
        self.writer.flush()
        trace.mark("receiver: missing sent")
        # Objects follow, content first, which needs no libostree: it loads meanwhile. (Not
        # earlier: importing it holds the GIL, and answering this query would wait for it.)
        self._objects_follow()

    def count_received(self, n: int) -> None:
        """Count ``n`` more bytes against the policy's limit on one push."""
        self.received_bytes += n
        if self.received_bytes > self.policy.max_push_size:
            raise TransferError(f"push exceeds the limit of {self.policy.max_push_size} bytes")

    def data_chunks(self, what: str) -> Iterator[bytes]:
        """The DATA payloads up to END (an object, a delta file), each counted against the push limit."""
        while True:
            frame = self.reader.read()
            if frame.type == wire.END:
                return
            if frame.type != wire.DATA:
                raise TransferError(f"protocol error: {frame.type!r} inside {what}")
            if not frame.payload:  # a pusher never sends one; a flood of them would cost for nothing
                raise TransferError(f"protocol error: empty DATA frame inside {what}")
            self.count_received(len(frame.payload))
            yield frame.payload

    def _read_object(self, frame: wire.Frame, tmp: Path, n: int) -> tuple[str, int, bytes | Path]:
        """One object's bytes: in memory, or spilled to a file past objects.SPILL_SIZE."""
        if len(frame.payload) != 33:
            raise TransferError("protocol error: malformed OBJECT frame")
        objtype = frame.payload[0]
        if objtype not in _TYPE_NAMES:
            raise TransferError(f"protocol error: unknown object type {objtype}")
        csum = frame.payload[1:].hex()
        self.count_received(FRAME_COST)  # its OBJECT and END frames count too: no object is free
        from ..objects import collect  # here: a no-op push does without objects.py (and zlib-ng)

        name = _TYPE_NAMES[objtype]
        limit = layout.MAX_METADATA if name == "commitmeta" else \
            self.policy.max_object_size if name == "file" else min(layout.MAX_METADATA, self.policy.max_object_size)
        data = self.reader.whole_data(limit)
        if data is None:
            data = collect(self.data_chunks(f"object {csum}"), limit, f"{tmp}/{n}.{name}", f"object {csum}.{name}")
        else:
            self.count_received(len(data))
        return csum, objtype, data

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The receiver lock: placing commits, and checking then moving refs, one push at a time.

        Waited for as long as the idle timeout: a receiver stuck while holding it (a hung
        disk, say) must not hang every push after it as well.
        """
        from ..filerepo import lock_exclusively

        with open(Path(self.repo_path, LOCK_NAME), "a+") as lock:
            limit = self.reader.timeout
            if not lock_exclusively(lock.fileno(), fcntl.flock, limit):
                raise TransferError(f"another push has held this repository's lock for {limit:.0f} s; "
                                    "giving up (nothing of this push has moved)")
            yield

    def _move_refs(self, updates: list[Update]) -> None:
        repo = self.dest
        live = [u for u in updates if u.status == "ok"]
        for u in live:
            if u.new is None:
                continue
            if u.new in self.closure:
                missing = self.closure[u.new]
            else:
                missing = repo.check_closure(u.new) if repo.has_commit(u.new) else "commit not received"
            if missing:
                u.reject(f"incomplete commit {u.new[:12]}: {missing}")
                continue
            try:
                binding = repo.ref_binding(u.new)
            except ValueError:
                u.reject(f"commit {u.new[:12]}: malformed ostree.ref-binding (not a list of branch names)")
                continue
            if binding is not None and u.ref not in binding:
                u.reject(f"commit {u.new[:12]} is bound to {', '.join(binding) or 'no branch'}, not this one")
                continue
            self._check_signatures(u)
        # Ancestry walked before the lock (a long history takes a while); under it, again only
        # for a branch that another push moved meanwhile.
        descends = {(current, u.new): repo.is_ancestor(current, u.new) for u in live
                    if u.status == "ok" and u.new and (current := repo.head(u.ref)) and current != u.new}
        with self._locked():
            for u in live:
                if u.status != "ok" or u.new is None:
                    continue
                current = repo.head(u.ref)
                if current and current != u.new:
                    known = descends.get((current, u.new))
                    if not (known if known is not None else repo.is_ancestor(current, u.new)):
                        self._check_rewind(u, self.force)
                        continue
                conflict = repo.ref_conflict(u.ref, [o.ref for o in live if o is not u and o.new])
                if conflict:
                    u.reject(conflict)
            heads = set(repo.refs().values()) if self.added else set()
            for u in live:
                if u.status == "ok" and u.new in heads:
                    why = self._unvouched(u.new)
                    if why:
                        u.reject(why)
            if any(u.status == "rejected" for u in updates):
                for u in live:
                    if u.status == "ok":
                        u.reject("not moved: another ref of this push was rejected")
                return
            previous = {u.ref: repo.head(u.ref) for u in live}
            with self._session_dir() as work:
                for u in live:
                    if u.new:
                        repo.mark_partial(u.new, False)  # its closure is complete: checked above
                        if u.new in self.commitmeta:
                            self.repo.merge_detached_signatures(u.new, self.commitmeta[u.new])
                repo.set_refs({u.ref: u.new for u in live}, work)
                if live:
                    try:
                        self._publish(live, previous, work)
                    except TreeshipError as e:
                        # The refs have moved: say so, and that the published metadata is stale.
                        self.warnings.append(f"refs updated, but publishing failed: {e.message}")

    def _repair_summary(self) -> None:
        """A push where every ref was already there: if a receiver died between moving refs and
        publishing, the summary still lists the old ones; publish it now."""
        with self._locked():
            self._session_dir().sweep()  # what a receiver killed earlier left
            heads = layout.heads(self.repo_path)
            if heads is not None and layout.summary_lists(self.repo_path, heads):
                return  # told without loading libostree
            repo = self.dest
            listed = repo.summary_refs()
            if listed == {k: v for k, v in repo.refs().items() if ":" not in k}:
                return
            with self._session_dir() as work:
                try:
                    self._publish([], {}, work)
                except TreeshipError as e:
                    self.warnings.append(f"republishing the summary failed: {e.message}")

    def _check_signatures(self, u: Update) -> None:
        """The policy's rules, over the commit's signatures and those this push brings (not yet written).

        Also notes which signatures this push adds to the commit, and which of those a rule
        found good: see _unvouched, for commits other branches point at.
        """
        assert u.new is not None
        rules = self.policy.signature_rules(u.ref)
        incoming = self.signatures.get(u.new, {})
        existing = self.repo.detached_metadata(u.new) if incoming else {}
        added: dict[str, list[bytes]] = {}
        for key, sigs in incoming.items():
            have = set(existing.get(key) or [])  # a set: thousands of signatures compared with thousands
            if new := [s for s in dict.fromkeys(sigs) if s not in have]:
                added[key] = new
        if added:
            self.added[u.new] = added
            if self._merged_size(u.new, added) > layout.MAX_METADATA:
                u.reject(f"the signatures of {u.new[:12]} would exceed {layout.MAX_METADATA >> 20} MiB, "
                         "more than ostree clients accept")
                return
        if not rules:
            return
        from .. import signing  # here, after the rules: importing it (PyNaCl) costs a push ~8 ms
        from ..repo import ED25519_KEY, GPG_KEY

        new_gpg = added.get(GPG_KEY, [])
        new_ed = added.get(ED25519_KEY, [])
        data = self.repo.commit_bytes(u.new) if new_gpg or new_ed else b""
        for rule in rules:
            keys = [k for spec in rule.ed25519_keys for k in signing.load_ed25519_public(spec)]
            try:
                checks = signing.verify(self.repo, u.new, gpg_homedir=rule.gpg_homedir,
                                        gpg_keyring=rule.gpg_keyring, ed25519_keys=keys).signatures
                checks += [signing.ed25519_check_data(data, sig, keys) for sig in new_ed]
                checks += [signing.gpg_check_data(self.repo, data, sig, rule.gpg_homedir, rule.gpg_keyring)
                           for sig in new_gpg]
            except TreeshipError as e:
                u.reject(f"signature check failed: {e.message}")
                return
            result = signing.Verification(u.new, checks)
            if result.bad:
                why = "; ".join(dict.fromkeys(c.detail for c in result.bad if c.detail))
                u.reject(f"bad signature on {u.new[:12]}" + (f" ({why})" if why else ""))
                return
            if not result.good:
                u.reject(f"commit {u.new[:12]} is not signed by a key the policy trusts")
                return
            fresh = new_ed + new_gpg  # checked last, in this order
            for sig, check in zip(fresh, checks[len(checks) - len(fresh):], strict=True):
                if check.status == "good":
                    self.vouched.add((u.new, sig))

    def _merged_size(self, commit: str, added: dict[str, list[bytes]]) -> int:
        """About how large the commit's detached metadata grows with ``added`` (an upper bound:
        GVariant framing is at most 8 bytes per element here)."""
        try:
            size = os.stat(f"{self.repo_path}/objects/{layout.object_relpath(commit, 'commitmeta')}").st_size
        except OSError:
            size = 0
        return size + sum(len(key) + 16 + sum(len(s) + 8 for s in sigs) for key, sigs in added.items())

    def _unvouched(self, commit: str) -> str:
        """Why this push may not add its signatures to ``commit``, which another branch points at
        ("" if it may). Signatures travel with their commit; but to one that other branches
        point at, under rules of their own, a push may add only OSTree signatures that a key
        the policy trusts (for a branch this push moves to it) made. Else a key allowed on one
        branch could attach junk to another branch's commit and make it fail verification
        from then on (signatures are never taken away). Asked under the receiver lock, just
        before the signatures are merged."""
        from ..repo import ED25519_KEY, GPG_KEY

        added = self.added.get(commit, {})
        other = sorted(key for key in added if key not in (GPG_KEY, ED25519_KEY))
        if other:
            return (f"commit {commit[:12]} is another branch's head: a push may add to it only signatures the "
                    f"policy checks, not {', '.join(other)}")
        if any((commit, sig) not in self.vouched for sigs in added.values() for sig in sigs):
            return (f"commit {commit[:12]} is another branch's head: a push may add to it only signatures that a "
                    "key the policy trusts made")
        return ""

    def _publish(self, moved: list[Update], previous: dict[str, str | None], work: Path) -> None:
        """Deltas, then the summary and its signatures, published together (see Repo.publish_summary)."""
        repo = self.dest
        if self.policy.deltas:
            for u in moved:
                if u.new and previous.get(u.ref) and previous[u.ref] != u.new:
                    repo.generate_delta(previous[u.ref], u.new)
        s = self.policy.summary

        def sign(shadow: Repo) -> None:
            if s.gpg_sign:
                shadow.sign_summary_gpg(s.gpg_sign, s.gpg_homedir)
            if s.ed25519_secret:
                from .. import signing

                key = signing.load_ed25519_secret(s.ed25519_secret)
                shadow.add_summary_signatures(signing.ED25519_KEY,
                                              [key.signing_key.sign(shadow.summary_bytes()).signature])

        repo.publish_summary(work, sign if s.gpg_sign or s.ed25519_secret else None)


def _real_dir(path: Path) -> bool:
    """A directory, not a symlink to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _boot_id() -> str:
    """This boot's id (Linux), or "" where it cannot be read."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        return ""
    return boot if _BOOT_ID.fullmatch(boot) else ""


class _SessionDir:
    """A private directory under the repository's tmp/, locked while in use; stale ones are
    swept, and what they hold is adopted where it can be.

    Its name carries the boot id, so that the objects a receiver killed in this boot left
    staged (see objects.ObjectStore) can be adopted into the repository by a later sweep."""

    def __init__(self, tmp_root: Path, max_size: int | None) -> None:
        self.root = tmp_root
        self.max_size = max_size  # the policy's, for objects adopted by sweep()

    def __enter__(self) -> Path:
        self.root.mkdir(exist_ok=True)
        self.sweep()
        # Made and locked under a name the sweep skips, then renamed: a concurrent session's
        # sweep must never see (and remove) this directory before its lock is held.
        import tempfile

        fresh = Path(tempfile.mkdtemp(prefix=f".{TMP_PREFIX}{_boot_id() or 'unknown'}-", dir=self.root))
        self._lock = open(fresh / ".lock", "w")  # noqa: SIM115 - held for the session
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.path = self.root / fresh.name[1:]
        os.rename(fresh, self.path)
        return self.path

    def __exit__(self, *exc: object) -> None:
        import shutil  # here: importing it costs the receiver ~2 ms before HELLO

        shutil.rmtree(self.path, ignore_errors=True)
        self._lock.close()

    def sweep(self, adopt: bool = False) -> None:
        """Remove the directories of sessions that are over; with ``adopt`` (once a push,
        before HELLO), having first moved into the repository the objects a receiver killed
        in this boot had staged whole (a retry then need not send them again), for at most
        ADOPT_SECONDS: a directory not done with is kept for the next push's. Without
        ``adopt``, such a directory is left alone (the other sweeps of a push, one of them
        under the receiver lock, must not spend that time)."""
        try:
            names = [n for n in os.listdir(self.root) if n.startswith(TMP_PREFIX)]
        except OSError:  # no tmp/ yet
            return
        boot = _boot_id() if names else ""
        deadline = time.monotonic() + ADOPT_SECONDS
        for name in names:
            d = self.root / name
            try:
                if not _real_dir(d):  # not a session's: a symlink would lead out of the repository
                    os.unlink(d)
                    continue
                # Not following a symlink, not waiting on a FIFO: whatever sits there, one call.
                fd = os.open(d / ".lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             0o644)
                with open(fd, "w") as f:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        continue
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    if boot and name.startswith(f"{TMP_PREFIX}{boot}-") and _real_dir(d / "objects"):
                        if not adopt:
                            continue
                        from ..objects import adopt_staged

                        if not adopt_staged(self.root.parent, d / "objects", self.max_size, deadline)[1]:
                            continue  # the rest at the next push's sweep: kept, its lock released
                    import shutil

                    shutil.rmtree(d, ignore_errors=True)
            except OSError:
                continue  # in use by a live session (or, adopting, a file system error: swept next time)


class _Verifier:
    """Checks large objects in one worker thread while the reading thread goes on.

    Small objects are checked by the reading thread itself: with a pool of workers, a push
    of thousands of small files spent its time handing them over (88k futex calls for
    3,235 objects). Inflating and hashing release the GIL, so the worker and the reader
    overlap; at the end (and at the memory bound) the reader takes queued jobs too, so the
    last large objects are checked on two threads. ``submit`` returns a Future
    (:mod:`treeship.future`), as a ThreadPoolExecutor's does (delta.py uses it so, as a
    concurrent.futures.Executor).

    The worker runs at the lowest priority (nice 19, its thread only). On a machine whose
    cores are all busy during a push (on two: ssh, sshd, the pusher and both threads here),
    the reading thread, which moves the stream, then goes first (and, where the kernel does
    not group a session's threads for scheduling, sshd too), and the worker has what is
    left: a first push over the loopback sshd took 1–4% less (docs/performance.md, item
    25). Starved by other work, the worker could then hold up the reader when it waits for
    a result; so a job submitted in steps (``submit_steps``: objects.Steps, at most a
    megabyte of inflating each) is handed back between two steps when :meth:`result` wants
    it, and the reader finishes it at its own priority. (A starved worker holding the GIL
    or this pool's lock can still delay the reader; it holds either only briefly, between
    two calls into C.)
    """

    def __init__(self, nice: int | None = WORKER_NICE) -> None:
        self._nice = nice  # the worker's nice value; None: as the process's
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None  # started by the first job: most pushes' first frames need none
        self._stepped: dict[Future[Any], _Job] = {}

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="treeship-verify", daemon=True)
        self._thread.start()

    def __enter__(self) -> _Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        self.run_all()  # nothing is left unrun

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        if kwargs:
            raise TypeError("keyword arguments are not passed on")
        return self._queue(_Job(fn, args, None))

    def submit_steps(self, steps: Any) -> Future[Any]:
        """Run a generator (objects.Steps) to its end; the Future gets its return value."""
        job = _Job(None, (), steps)
        fut = self._queue(job)
        self._stepped[fut] = job
        return fut

    def _queue(self, job: _Job) -> Future[Any]:
        if self._thread is None:
            self._start()
        job.fut = Future()
        with self._cond:
            self._jobs.append(job)
            self._cond.notify()
        return job.fut

    def result(self, fut: Future[Any]) -> Any:
        """``fut.result()``, not waiting on the worker where that can be helped: a queued job
        is run here; a stepped one the worker is running is handed back after its step."""
        job = self._stepped.get(fut)
        if job is not None:
            try:
                with self._cond:
                    if job in self._jobs:
                        self._jobs.remove(job)
                        job.handed = True
                    elif not fut.done():
                        job.wanted = True
                        self._cond.wait_for(lambda: job.handed or fut.done())
                if job.handed and not fut.done():
                    self._run(job)
            except BaseException:
                # Interrupted (a signal, say) before the job was done: it goes back to the
                # queue, for the worker or for the next result() (a receiver's error path
                # waits for every pending job), never left with no thread to finish it.
                with self._cond:
                    if not fut.done():
                        if job.handed:
                            job.handed = False
                            self._jobs.appendleft(job)
                            self._cond.notify_all()
                        job.wanted = False
                raise
            del self._stepped[fut]
        return fut.result()

    def run_one(self) -> bool:
        """Run one queued job in the calling thread; False if none was queued."""
        with self._cond:
            if not self._jobs:
                return False
            job = self._jobs.popleft()
        self._run(job)
        return True

    def run_all(self) -> None:
        while self.run_one():
            pass

    def _work(self) -> None:
        if self._nice is not None and sys.platform == "linux":
            with contextlib.suppress(OSError):  # Linux: the nice value of this thread alone
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return
                job = self._jobs.popleft()
            self._run(job, worker=True)

    def _run(self, job: _Job, worker: bool = False) -> None:
        fut = job.fut
        if job.steps is None:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(job.fn(*job.args))
                except BaseException as e:  # noqa: BLE001 - handed to whoever waits on the future
                    fut.set_exception(e)
            return
        if not job.started:
            if not fut.set_running_or_notify_cancel():
                return
            job.started = True
        try:
            while True:
                if worker and job.wanted:
                    with self._cond:
                        job.handed = True
                        self._cond.notify_all()
                    return
                next(job.steps)
        except StopIteration as done:
            fut.set_result(done.value)
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits on the future
            fut.set_exception(e)
        with self._cond:
            self._cond.notify_all()  # result() may be waiting for this job to be done


class _Job:
    """One job of a _Verifier: ``fn(*args)``, or a generator run in steps."""

    __slots__ = ("fn", "args", "steps", "fut", "started", "wanted", "handed")

    def __init__(self, fn: Any, args: tuple[Any, ...], steps: Any) -> None:
        self.fn, self.args, self.steps = fn, args, steps
        self.fut: Future[Any]
        self.started = False  # its Future is running
        self.wanted = False  # result() waits for it: the worker hands it back after this step
        self.handed = False  # the worker let go of it (or never had it): whoever waits runs the rest

