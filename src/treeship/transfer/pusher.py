"""The pushing end: work out what the receiver lacks and stream it in one pass.

Objects travel in archive form (content already compressed), content first, then
directory metadata and trees, each commit last with its signatures (.commitmeta). The
commit ids and signatures that land are byte-for-byte the local ones.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import layout, trace
from ..errors import PushRejected, RemoteError, RepoError, TransferError, TreeshipError, UsageError
from . import wire
from .ciphers import cipher_refused
from .transport import Connection, connect, receive_argv, resolve_remote

if TYPE_CHECKING:
    from ..repo import Repo
    from .delta import OutgoingDelta

QUERY_BATCH = 50_000
OBJECT_TYPES = wire.OBJECT_TYPES
_TYPE_NAMES = layout.TYPE_NAMES
# Send order: what others point at goes first; commits (with their signatures) last.
_ORDER = {"file": 0, "dirmeta": 1, "dirtree": 2, "commit": 3, "commitmeta": 4}

#: (objects done, bytes done, objects total, bytes total)
PushProgress = Callable[[int, int, int, int], None]


@dataclass
class RefResult:
    ref: str
    old: str | None
    new: str | None
    status: str
    reason: str = ""


@dataclass
class PushResult:
    remote: str
    refs: list[RefResult]
    objects_sent: int = 0
    bytes_sent: int = 0
    wire_bytes: int = 0
    seconds: float = 0.0
    messages: list[str] = field(default_factory=list)
    deltas: list[dict[str, Any]] = field(default_factory=list)  # push --delta: the static deltas sent
    created: str | None = None  # a local remote's repository, made by this push

    @property
    def ok(self) -> bool:
        return all(r.status in ("ok", "uptodate") for r in self.refs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def push(repo_path: str, remote: str, branches: list[str], *, force: bool = False, ssh_command: str | None = None,
         receive_command: str | None = None, progress: PushProgress | None = None, delta: bool = False,
         timeout: float | None = 600.0) -> PushResult:
    """Push ``branches`` of the repo at ``repo_path`` to ``remote``; raise PushRejected if a ref was refused.

    The SSH connection starts first, so its handshake overlaps loading libostree and
    resolving the branches.
    """
    started = time.monotonic()
    trace.mark("pusher: started")
    if not branches:
        raise UsageError("name at least one branch to push")
    for branch in branches:
        if not layout.plainly_valid_branch(branch):
            from ..repo.refs import validate_branch

            validate_branch(branch)  # a malformed name is a usage error, not "no such branch"
    if not Path(repo_path, "config").is_file():
        from ..repo import Repo

        Repo.open(repo_path)  # raises the precise error
    target = resolve_remote(repo_path, remote)
    creating = _new_local_repository(repo_path, remote, target.path) if target.kind == "local" else None
    argv = receive_argv(target, ssh_command=ssh_command, receive_command=receive_command,
                        create=target.kind == "local")
    # Without the cipher treeship prefers (transfer/ciphers.py): for an ssh that refuses it.
    plain = receive_argv(target, ssh_command=ssh_command, receive_command=receive_command,
                         create=target.kind == "local", prefer_cipher=False)
    conn = connect(argv)
    trace.mark("pusher: receiver process started (ssh or local)")
    while True:
        reader: wire.Reader | None = None
        try:
            from ..repo import Repo

            repo = Repo.open(repo_path)
            heads = {b: _head(repo, b, repo_path) for b in branches}
            trace.mark("pusher: libostree loaded")
            reader, writer = wire.Reader(conn.rfd, timeout=None), wire.Writer(conn.wfd)
            with _Watchdog(conn, timeout, lambda r=reader, w=writer: (r.bytes_read, w.bytes_written)) as dog:
                try:
                    result = _session(repo, reader, writer, str(target), heads, force, progress, delta)
                except TreeshipError:
                    if dog.fired:
                        raise TransferError(f"{target}: nothing moved either way for {timeout:.0f} s; "
                                            "gave up (the receiver keeps what arrived whole)") from None
                    raise
            break
        except TreeshipError as e:
            conn.close(kill=True)
            tail = conn.stderr_tail()
            if conn.argv != plain and isinstance(e, TransferError) and reader is not None \
                    and reader.bytes_read == 0 and cipher_refused(tail):
                conn = Connection(plain)  # once: `plain` is not retried
                continue
            if isinstance(e, TransferError) and tail and tail not in e.message and not e.message.startswith("remote"):
                raise TransferError(f"{e.message} ({tail}){_hint(tail)}") from None
            raise
        except BaseException:
            conn.close(kill=True)
            raise
    if conn.argv != argv:
        result.messages.append("ssh refused the cipher list treeship asks for; pushed with ssh's own choice "
                               "(a Ciphers line for this host in ~/.ssh/config saves the first try)")
    rc = conn.close()
    trace.mark("pusher: receiver exited")
    result.seconds = round(time.monotonic() - started, 3)
    if creating is not None and layout.is_repo(creating):
        result.created = creating
    if rc != 0 and result.ok:
        raise TransferError(f"receiver exited with status {rc}: {conn.stderr_tail() or 'no message'}")
    if not result.ok:
        bad = [r for r in result.refs if r.status == "rejected"]
        raise PushRejected("; ".join(f"{r.ref}: {r.reason}" for r in bad), result)
    return result


class _Watchdog:
    """Ends the connection when no byte has moved either way for ``seconds``: a receiver that
    hangs, or a link that died without a word (no RST, no keepalive answer), must not hang the
    pusher, nor the CI job running it, for ever. Progress is what the connection's streams
    moved, whatever the pusher was doing (reading an answer, or writing objects into a full pipe).
    """

    def __init__(self, conn: Connection, seconds: float | None, moved: Callable[[], tuple[int, int]]) -> None:
        self.conn, self.seconds, self.moved, self.fired = conn, seconds, moved, False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Watchdog:
        if self.seconds is not None:
            self._thread = threading.Thread(target=self._watch, name="treeship-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        assert self.seconds is not None
        moved, since = self.moved(), time.monotonic()
        while not self._stop.wait(min(1.0, self.seconds)):
            now = self.moved()
            if now != moved:
                moved, since = now, time.monotonic()
            elif time.monotonic() - since >= self.seconds:
                self.fired = True
                self.conn.proc.kill()  # the session's reads and writes then fail at once
                return


def _new_local_repository(repo_path: str, remote: str, path: str) -> str | None:
    """The absolute path of a local remote that does not exist yet (the receiver creates it),
    or None if it exists; UsageError where creating it would more likely be a mistake: a
    branch name where the remote was meant (``treeship push BRANCH BRANCH``), or a path
    whose parent directory does not exist (a typo makes no tree of directories)."""
    dest = os.path.abspath(path)
    if os.path.lexists(dest):
        return None
    if "/" in remote and layout.plainly_valid_branch(remote) \
            and os.path.isfile(os.path.join(repo_path, "refs", "heads", remote)):  # (a remote's name has no "/")
        raise UsageError(f"{remote!r} is a branch of {repo_path}, not a remote: treeship push REMOTE BRANCH...")
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        raise UsageError(f"{path}: no such repository, and {parent} does not exist (a push creates a local "
                         "repository only in a directory that exists)")
    return dest


#: the last words of ssh or of the server's shell (bash, dash), and what to do about them
_HINTS = (
    (("command not found", ": not found"), "is treeship installed on the server? --receive-command or "
                                           "$TREESHIP_RECEIVE names it where it is not on the PATH"),
    (("Host key verification failed",), "ssh does not know this host's key yet: connect once with ssh to "
                                        "check and accept it"),
    (("Permission denied (",), "the server accepts none of your keys: load one into ssh-agent, or name it "
                               "with --ssh-command 'ssh -i KEY'"),
)


def _hint(tail: str) -> str:
    """What to do about the last line the receiver's process printed, where it is a usual one."""
    return next((f": {hint}" for words, hint in _HINTS if any(w in tail for w in words)), "")


def _expect_hello(reader: wire.Reader) -> wire.Frame:
    """The receiver's HELLO; where the first bytes are no frame at all, the error shows them:
    most often text that a login banner or the account's shell start-up files printed."""
    try:
        return reader.expect(wire.HELLO)
    except TransferError as e:
        text = reader.unread(80)
        if not e.message.startswith("protocol error") or not text or text[:1] in reader.limits:
            raise  # (a frame that breaks a rule is no text)
        from ..errors import printable

        shown = printable((text.partition(b"\n")[0] or text).decode("utf-8", "replace"))  # its first line
        raise TransferError(f"the remote sent {shown!r} before treeship spoke (a login banner, or the server "
                            f"account's shell start-up files printing to stdout? see docs/server.md); "
                            f"{e.message}") from None


def _remote_refs(hello: dict[str, Any]) -> dict[str, str]:
    """The receiver's branches from its HELLO, checked: they name commits this pusher may look up."""
    refs = hello.get("refs") or {}
    if not isinstance(refs, dict) or not all(isinstance(k, str) and isinstance(v, str) and len(v) == 64
                                             and not v.strip("0123456789abcdef") for k, v in refs.items()):
        raise TransferError("protocol error: the receiver's HELLO lists malformed refs")
    return refs


def _statuses(msg: dict[str, Any], what: str, asked: dict[str, str]) -> dict[str, tuple[str, str]]:
    """(status, reason) for each branch this push asked to move, as PREFLIGHT or STATUS gives
    them: exactly one each, nothing else. A receiver that leaves one out, or adds another,
    must not make a push look done (or make the pusher send what it was not asked to)."""
    entries = msg.get("refs")
    if not isinstance(entries, list):
        raise TransferError(f"protocol error: {what} without a list of refs")
    out: dict[str, tuple[str, str]] = {}
    for e in entries:
        ref = e.get("ref") if isinstance(e, dict) else None
        if not isinstance(ref, str) or ref not in asked or ref in out:
            raise TransferError(f"protocol error: {what} names a branch this push did not ask for, or one twice")
        status, reason = e.get("status"), e.get("reason", "")
        if status not in ("ok", "uptodate", "rejected") or not isinstance(reason, str):
            raise TransferError(f"protocol error: {what} gives {ref} a malformed status")
        out[ref] = (status, reason)
    if len(out) != len(asked):
        raise TransferError(f"protocol error: {what} leaves out {next(b for b in asked if b not in out)}")
    return out


def _head(repo: Repo, branch: str, repo_path: str) -> str:
    """A branch to push: its own head (never a commit whose checksum starts with its name)."""
    head = repo.head(branch)
    if head is None:
        raise RepoError(f"{branch}: no such branch in {repo_path}")
    return head


def _session(repo: Repo, reader: wire.Reader, writer: wire.Writer, remote: str, heads: dict[str, str], force: bool,
             progress: PushProgress | None, use_delta: bool = False) -> PushResult:
    writer.send_json(wire.HELLO, {"magic": wire.MAGIC, "protocol": wire.PROTOCOL_VERSION,
                                  "capabilities": [wire.DELTA_CAPABILITY]})
    writer.flush()
    # While SSH connects and the receiver starts (a quarter of a second), list what the new
    # commits hold, and what their parents hold: the receiver's head is most often the
    # parent (the release before). Off the critical path here.
    closures: dict[str, set[tuple[str, int]]] = {}
    for c in set(heads.values()):
        try:
            closures[c] = repo.reachable(c)
        except RepoError:
            pass  # incomplete here: fine if the receiver has it already; if not, _candidates says so
    parents = {p for c in closures if (p := repo.commit(c).parent) and repo.has_commit(p)}
    held = {p: repo.reachable(p, strict=False) for p in parents - set(closures)}
    trace.mark("pusher: closures walked")
    hello = _expect_hello(reader).json()
    trace.mark("pusher: hello")
    if hello.get("magic") != wire.MAGIC or hello.get("protocol") != wire.PROTOCOL_VERSION:
        raise TransferError(f"{remote}: the receiver speaks another protocol ({hello.get('protocol')!r})")
    remote_refs = _remote_refs(hello)
    # A receiver with no objects at all lacks every one: no QUERY (its answer would be a round
    # trip, and a listing of everything, between PREFLIGHT and the first object).
    ask = not (hello.get("empty") is True and not remote_refs)
    updates = [{"ref": b, "old": remote_refs.get(b), "new": c} for b, c in heads.items()]
    writer.send_json(wire.UPDATE, {"updates": updates, "force": force})
    writer.flush()
    # While the receiver checks the updates: what it may lack, for every ref that may go on;
    # asked right away, so the answer comes one round trip sooner (that is a WAN's latency).
    moving = [u["new"] for u in updates if u["new"] != u["old"]]
    candidates = _candidates(repo, moving, remote_refs, closures, held)
    early = _ask(writer, _in_send_order(set().union(*candidates.values()))) \
        if candidates and ask and not use_delta else None
    pre = reader.expect(wire.PREFLIGHT).json()
    trace.mark("pusher: preflight")
    preflight = _statuses(pre, "PREFLIGHT", heads)
    # What moves is what this push asked for (never what a receiver says): only the status is its.
    results = [RefResult(u["ref"], u["old"], u["new"], *preflight[u["ref"]]) for u in updates]
    result = PushResult(remote, results)
    go = [r for r in results if r.status == "ok"]
    if not go:
        result.wire_bytes = writer.bytes_written
        return result
    if use_delta:
        import tempfile

        from . import delta
    with tempfile.TemporaryDirectory(prefix="treeship-delta-") if use_delta else nullcontext("") as workdir:
        deltas: list[OutgoingDelta] = []
        if use_delta:
            deltas, notes = delta.prepare(repo, reader, writer, [(r.ref, r.old, r.new) for r in go if r.new],
                                          hello, Path(workdir))
            result.messages += notes
        try:
            _send(repo, reader, writer, go, remote_refs, deltas, result, progress, candidates, early, ask)
        except TransferError as e:
            said = _remote_error(reader)  # a receiver that gives up says why before it hangs up
            if said is None:
                raise
            raise said from e
    status = reader.expect(wire.STATUS).json()
    trace.mark("pusher: status")
    final = _statuses(status, "STATUS", heads)
    for r in results:
        r.status, r.reason = final[r.ref]
    warnings = status.get("warnings", [])
    result.messages += [w for w in warnings if isinstance(w, str)] if isinstance(warnings, list) else []
    result.wire_bytes = writer.bytes_written
    return result


def _send(repo: Repo, reader: wire.Reader, writer: wire.Writer, go: list[RefResult], remote_refs: dict[str, str],
          deltas: list[OutgoingDelta], result: PushResult, progress: PushProgress | None,
          candidates: dict[str, set[tuple[str, int]]], early: _Asked | None = None, ask: bool = True) -> None:
    """The objects the receiver lacks (``ask``: as it says; else all of them), then the static
    deltas (push --delta), then FINISH."""
    by_delta = {d.to_commit for d in deltas}
    wanted: set[tuple[str, int]] = set()
    for r in go:
        if r.new and r.new not in by_delta:
            if r.new not in candidates:  # the receiver's refs moved since its HELLO: ask again for this one
                candidates.update(_candidates(repo, [r.new], remote_refs, {r.new: repo.reachable(r.new)}))
            wanted |= candidates[r.new]
    for d in deltas:  # what a delta leaves out travels as objects: large new files, the signatures,
        wanted.update(d.fallbacks)  # the commits between the two (the receiver checks fast-forward)
        if repo.detached_metadata(d.to_commit):
            wanted.add((d.to_commit, int(OBJECT_TYPES["commitmeta"])))
        parent = repo.commit(d.to_commit).parent
        while parent and parent != d.from_commit and repo.has_commit(parent):
            wanted.add((parent, int(OBJECT_TYPES["commit"])))
            parent = repo.commit(parent).parent
    trace.mark("pusher: candidates walked")
    missing = _query(reader, writer, _in_send_order(wanted), early) if ask else _in_send_order(wanted)
    total_bytes = sum(_size(repo, c, t) for c, t in missing) + sum(d.size for d in deltas) if progress else 0
    total_objects = len(missing) + len(deltas)
    done_objects = done_bytes = 0
    for csum, objtype in missing:
        writer.send(wire.OBJECT, bytes([objtype]) + bytes.fromhex(csum))
        fd = repo.open_stored_object(csum, objtype)
        if fd is None:
            for chunk in repo.read_object_chunks(csum, objtype, wire.CHUNK):
                writer.send(wire.DATA, chunk)
                done_bytes += len(chunk)
        else:
            try:
                done_bytes += writer.send_file(fd)
            finally:
                os.close(fd)
        writer.send(wire.END)
        done_objects += 1
        if progress:
            progress(done_objects, done_bytes, total_objects, total_bytes)
    result.objects_sent = done_objects
    trace.mark("pusher: objects sent")
    done = [done_objects, done_bytes]

    def sent(n: int) -> None:
        done[1] += n
        if progress:
            progress(done[0], done[1], total_objects, total_bytes)

    if deltas:
        from . import delta
    for d in deltas:
        delta.send(writer, d, sent)
        done[0] += 1
        result.deltas.append(d.to_dict())
    writer.send_json(wire.FINISH, {})
    writer.flush()
    result.bytes_sent = done[1]


def _candidates(repo: Repo, commits: list[str], remote_refs: dict[str, str],
                closures: dict[str, set[tuple[str, int]]],
                held: dict[str, set[tuple[str, int]]] | None = None) -> dict[str, set[tuple[str, int]]]:
    """Per new commit: its objects (``closures``), less those of remote heads we have too
    (they are there; ``held`` may list some already), plus the commits between it and a
    remote head; the receiver settles the rest when asked."""
    if not commits:
        return {}
    held = held or {}
    heads = set(remote_refs.values())
    have: set[tuple[str, int]] = set()
    for head in heads:
        if head in held:
            have |= held[head]
        elif head not in commits and repo.has_commit(head):
            have |= repo.reachable(head, strict=False)  # a partial copy here lists less: we ask for more
    out: dict[str, set[tuple[str, int]]] = {}
    for c in commits:
        wanted = (closures[c] if c in closures else repo.reachable(c)) - have
        if repo.detached_metadata(c):
            wanted.add((c, int(OBJECT_TYPES["commitmeta"])))
        wanted |= {(p, int(OBJECT_TYPES["commit"])) for p in _between(repo, c, heads)}
        out[c] = wanted
    return out


def _between(repo: Repo, commit: str, heads: set[str], limit: int = 10_000) -> list[str]:
    """The parents of ``commit`` down to (not including) one of the receiver's ``heads``.

    Two releases made between pushes: the receiver has v1, the push is v3, whose parent v2
    it has never seen. To tell that v3 fast-forwards v1 it needs v2's commit object (only
    that: v2 stays marked partial there, as in a shallow pull). Nothing when no head is
    found in the local history: then there is no fast-forward to show.
    """
    chain: list[str] = []
    cur = repo.commit(commit).parent
    while cur and cur not in heads and len(chain) < limit:
        if not repo.has_commit(cur):
            return []
        chain.append(cur)
        cur = repo.commit(cur).parent
    return chain if cur in heads else []


def _remote_error(reader: wire.Reader, wait: float = 5.0) -> RemoteError | None:
    """The ERROR frame the receiver sent before the connection broke, if any."""
    reader.timeout = wait
    try:
        for _ in range(1000):  # what is left of MISSING answers and the like, then ERROR
            frame = reader.read()
            if frame.type == wire.ERROR:
                return frame.remote_error()
    except TransferError:
        pass
    return None


def _in_send_order(objects: set[tuple[str, int]]) -> list[tuple[str, int]]:
    return sorted(objects, key=lambda o: (_ORDER[_TYPE_NAMES[o[1]]], o[0]))


@dataclass
class _Asked:
    """A QUERY sent ahead of PREFLIGHT, its MISSING answer not read yet."""

    names: list[str]


def _ask(writer: wire.Writer, objects: list[tuple[str, int]]) -> _Asked | None:
    """Send one QUERY for ``objects`` now (None: too many for one; they are asked in batches later)."""
    if len(objects) > QUERY_BATCH:
        return None
    names = [f"{c}.{_TYPE_NAMES[t]}" for c, t in objects]
    try:
        writer.send_json(wire.QUERY, {"objects": names})
        writer.flush()
    except TransferError:
        # A receiver that refused every ref answers PREFLIGHT and hangs up without reading
        # this: its answer is in the pipe. (One that is really gone is found out reading it.)
        return None
    return _Asked(names)


def _query(reader: wire.Reader, writer: wire.Writer, objects: list[tuple[str, int]],
           early: _Asked | None = None) -> list[tuple[str, int]]:
    """Ask the receiver which candidates it lacks, in batches; keep the send order. What
    ``early`` asked already is answered by the MISSING that follows it."""
    missing: set[str] = set()
    known: set[str] = set()
    if early is not None:
        missing.update(_names(reader.expect(wire.MISSING).json()))
        known.update(early.names)
    names = [f"{c}.{_TYPE_NAMES[t]}" for c, t in objects]
    rest = [n for n in names if n not in known]
    for i in range(0, len(rest), QUERY_BATCH):
        writer.send_json(wire.QUERY, {"objects": rest[i:i + QUERY_BATCH]})
        writer.flush()
        answer = _names(reader.expect(wire.MISSING).json())
        missing.update(answer)
    return [o for o, n in zip(objects, names, strict=True) if n in missing]


def _names(missing: dict[str, Any]) -> list[str]:
    """The object names a MISSING answer lists (only those asked about are ever sent)."""
    names = missing.get("objects", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise TransferError("protocol error: MISSING without a list of object names")
    return names


def _size(repo: Repo, checksum: str, objtype: int) -> int:
    try:
        return os.stat(f"{repo.path}/objects/{repo.object_relpath(checksum, objtype)}").st_size
    except OSError:
        return 0
