"""``treeship push --delta``: a static delta from the receiver's head instead of objects.

For slow links. The pusher has libostree generate the delta (``static_delta_generate``,
MAJOR: rollsum and bsdiff against the receiver's head) into a temp dir — the repository is
not changed — and sends its files: DELTA (JSON: from, to, file names and sizes), then DATA
chunks and END per file (the superblock, then parts ``0``, ``1``…). Objects the delta leaves
out ("fallbacks": large new files) and the commit's signatures (.commitmeta) travel as
ordinary objects, verified and merged as in any push.

The receiver treats every byte as hostile until libostree has checksummed what it produces:

1. each file is written to the session dir, its size and sha256 checked against the DELTA
   frame and the superblock; the superblock must name the announced commits, and its embedded
   commit must hash to ``to``, a commit this push updates;
2. each part is decompressed here (bounded) and its operations scanned
   (:func:`scan_part`): a well-formed sequence, offsets inside the part, every object it
   writes of a declared size within the policy's limits, their total within the push limit;
   this also yields the objects the delta reads (its "read sources");
3. a child process (``python -m treeship.transfer.delta apply``) copies the source commit
   and the read sources into a temporary bare-user repository in the session dir (libostree
   2022.7 cannot apply a delta into an archive repository) and runs libostree's
   ``static_delta_execute_offline`` on it, which checks each part's sha256 and each object
   it writes (untrusted mode). It writes nowhere else (but for libostree's unnamed
   O_TMPFILE copy of a decompressed part, gone with the process). Whatever libostree does
   with a crafted delta (it has assertions on a part's contents) stays in that process,
   under a file-size limit;
4. every object the superblock says the delta writes is read back from the temporary
   repository in archive form and goes through the receiver's ordinary path — verified by
   libostree's content parser and checksum, then placed — and the commit from the superblock
   is handled like a received commit (partial until its closure is complete; refs move only
   after closure, policy, signatures and fast-forward, under the lock).

Nothing produced by the delta is visible before step 4 verified it; the session dir (and the
temporary repository in it) goes away with the session, or with the next session's sweep.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import trace
from ..errors import TransferError, TreeshipError
from ..layout import MAX_METADATA
from ..objects import collect
from . import wire

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from ..repo import DeltaPart, Repo
    from .receiver import Receiver

CAPABILITY = wire.DELTA_CAPABILITY
# 33 bytes per object the delta writes: room for ~127,000 objects, which the receiver holds
# as Python objects while it applies the delta (~40 MB); a pusher sends objects instead of a
# larger delta, as it would for a large change in any case
MAX_SUPERBLOCK = 4 << 20
MAX_PART = 512 << 20  # one part, decompressed (libostree makes parts of ~32 MB)
MAX_FILES = 100_000
KEEPALIVE = 20.0  # seconds between pings while the pusher generates (less if the receiver's idle timeout is short)
CHILD_TIMEOUT = 3600.0

_FILE, _DIRTREE, _DIRMETA = 1, 2, 3  # OSTree object types a part may write
_OP_SPLICE, _OP_OPEN, _OP_WRITE, _OP_SOURCE, _OP_UNSOURCE, _OP_CLOSE, _OP_BSPATCH = b"SowrRcB"


# -- scanning a part (pure) -------------------------------------------------------------------


@dataclass
class PartScan:
    sources: set[str]  # content objects the part reads (must be on the receiver)
    output: int  # bytes of the objects it writes, uncompressed, as declared


def _varint(ops: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(ops) or shift > 63:
            raise TransferError("static delta: truncated or overlong number in a part's operations")
        byte = ops[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def scan_part(part: DeltaPart, objects: list[tuple[str, int]], max_object: int) -> PartScan:
    """Check a part's operation stream and say what it reads and how much it writes.

    The grammar is libostree's (ostree-repo-static-delta-processing.c): ``S`` splice an
    object from the payload; ``o`` open a content object of a declared size, filled by ``w``
    (from the payload, or from the read source ``r`` names) or ``B`` (bspatch against the
    read source), then ``c`` close; ``R`` unset the read source. Objects are written in the
    order of the part's object list, each exactly once.
    """
    ops, payload_size = part.ops, part.payload_size
    sources: set[str] = set()  # only those a write or bspatch reads: each is copied whole to apply the part
    source = ""
    output = 0
    index = 0
    is_open = has_source = False
    size = written = 0
    i = 0

    def in_payload(offset: int, length: int) -> None:
        if offset + length > payload_size:
            raise TransferError("static delta: an operation points outside its part")

    def next_object(kinds: tuple[int, ...]) -> int:
        if index >= len(objects):
            raise TransferError("static delta: a part writes more objects than it lists")
        objtype = objects[index][1]
        if objtype not in kinds:
            raise TransferError(f"static delta: a part may not write an object of type {objtype} this way")
        return objtype

    def content_header(at: int) -> tuple[int, int]:
        mode, at = _varint(ops, at)
        xattrs, at = _varint(ops, at)
        if mode >= part.n_modes or xattrs >= part.n_xattrs:
            raise TransferError("static delta: a part names a file mode or xattr set it does not hold")
        length, at = _varint(ops, at)
        if length > max_object:
            raise TransferError(f"static delta: an object of {length} bytes exceeds the limit of {max_object}")
        return length, at

    while i < len(ops):
        op = ops[i]
        i += 1
        if op == _OP_SPLICE:
            if is_open:
                raise TransferError("static delta: an object opened inside another")
            if next_object((_FILE, _DIRTREE, _DIRMETA)) == _FILE:
                length, i = content_header(i)
            else:
                length, i = _varint(ops, i)
                if length > min(max_object, MAX_METADATA):
                    raise TransferError(f"static delta: a metadata object of {length} bytes exceeds the limit "
                                        f"of {min(max_object, MAX_METADATA)}")
            offset, i = _varint(ops, i)
            in_payload(offset, length)
            output += length
            index += 1
            has_source = False
        elif op == _OP_OPEN:
            if is_open:
                raise TransferError("static delta: an object opened inside another")
            next_object((_FILE,))
            size, i = content_header(i)
            is_open, written = True, 0
            output += size
        elif op == _OP_WRITE:
            length, i = _varint(ops, i)
            offset, i = _varint(ops, i)
            if not is_open:
                raise TransferError("static delta: a write with no object open")
            if has_source:
                sources.add(source)
            else:
                in_payload(offset, length)
            written += length
            if written > size:
                raise TransferError("static delta: writes past the declared size of an object")
        elif op == _OP_SOURCE:
            offset, i = _varint(ops, i)
            in_payload(offset, 32)  # libostree names it before ``o`` for a bspatch, inside for writes
            source = part.payload(offset, 32).hex()
            has_source = True
        elif op == _OP_UNSOURCE:
            has_source = False
        elif op == _OP_BSPATCH:
            offset, i = _varint(ops, i)
            length, i = _varint(ops, i)
            in_payload(offset, length)
            if not is_open or not has_source or written:
                raise TransferError("static delta: a bspatch with no object open or no source")
            sources.add(source)
            written = size
        elif op == _OP_CLOSE:
            if not is_open or written != size:
                raise TransferError("static delta: an object closed before it was complete")
            is_open = has_source = False
            index += 1
        else:
            raise TransferError(f"static delta: unknown operation {op} in a part")
    if is_open or index != len(objects):
        raise TransferError("static delta: a part does not write exactly the objects it lists")
    return PartScan(sources, output)


def decompress_part(src: Path, dst: Path, limit: int = MAX_PART) -> None:
    """A part file (compression byte, then xz or raw) → its variant, at most ``limit`` bytes."""
    total = 0
    with open(src, "rb") as f, open(dst, "wb") as out:
        kind = f.read(1)
        if kind == b"\0":
            while block := f.read(wire.CHUNK):
                total += len(block)
                if total > limit:
                    raise TransferError(f"static delta: a part exceeds {limit} bytes")
                out.write(block)
            return
        if kind != b"x":
            raise TransferError("static delta: a part has an unknown compression")
        dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        try:
            while not dec.eof:
                if dec.needs_input:
                    block = f.read(wire.CHUNK)
                    if not block:
                        raise TransferError("static delta: a part is truncated")
                else:
                    block = b""
                data = dec.decompress(block, max_length=wire.CHUNK)
                total += len(data)
                if total > limit:
                    raise TransferError(f"static delta: a part decompresses to more than {limit} bytes")
                out.write(data)
        except lzma.LZMAError as e:
            raise TransferError(f"static delta: a part is corrupt ({e})") from None
        if dec.unused_data or f.read(1):
            raise TransferError("static delta: trailing bytes after a part")


# -- the pusher's side ----------------------------------------------------------------------


@dataclass
class OutgoingDelta:
    from_commit: str
    to_commit: str
    files: list[tuple[str, Path]]  # ("superblock" | "0" | "1"…, path)
    fallbacks: list[tuple[str, int]]
    seconds: float  # to generate

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for _, p in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.from_commit, "to": self.to_commit, "bytes": self.size, "parts": len(self.files) - 1,
                "fallback_objects": len(self.fallbacks), "generate_s": round(self.seconds, 3)}


def prepare(repo: Repo, reader: wire.Reader, writer: wire.Writer, updates: list[tuple[str, str | None, str]],
            hello: dict[str, Any], workdir: Path) -> tuple[list[OutgoingDelta], list[str]]:
    """Generate one delta per (receiver's head, new commit); say why a ref gets objects instead.

    ``updates``: (ref, the receiver's head, new commit); ``hello``: the receiver's HELLO.
    Generating can take a while, so the connection is kept alive meanwhile with empty QUERY
    frames, well within the receiver's idle timeout.
    """
    from ..repo import OBJECT_TYPES

    notes: list[str] = []
    capabilities = hello.get("capabilities")
    idle = hello.get("idle_timeout")
    keepalive = min(KEEPALIVE, idle / 3) if isinstance(idle, (int, float)) and idle > 0 else KEEPALIVE
    if not isinstance(capabilities, list) or CAPABILITY not in capabilities:
        return [], ["--delta: the receiver cannot apply static deltas (an older treeship); sent objects instead"]
    pairs: dict[tuple[str, str], str] = {}
    for ref, old, new in updates:
        if old is None:
            notes.append(f"--delta: {ref}: the receiver has no such branch yet; sent objects instead")
        elif not repo.has_object(old, int(OBJECT_TYPES["commit"])):
            notes.append(f"--delta: {ref}: the receiver's head {old[:12]} is not in the local repository "
                         "(pull it to get deltas); sent objects instead")
        else:
            pairs.setdefault((old, new), ref)
    made: dict[tuple[str, str], OutgoingDelta | TreeshipError] = {}

    def generate() -> None:
        from ..repo import generate_delta_files, parse_delta_superblock

        for n, (old, new) in enumerate(pairs):
            started = time.monotonic()
            d = workdir / str(n)
            d.mkdir()
            try:
                superblock = generate_delta_files(repo, old, new, d)
                if (size := superblock.stat().st_size) > MAX_SUPERBLOCK:
                    raise TreeshipError(f"it changes more objects than a receiver takes in one delta "
                                        f"(a superblock of {size} bytes, at most {MAX_SUPERBLOCK})")
                sb = parse_delta_superblock(superblock.read_bytes())
            except TreeshipError as e:
                made[(old, new)] = e
                continue
            files = [("superblock", superblock)] + [(str(i), d / str(i)) for i in range(len(sb.parts))]
            made[(old, new)] = OutgoingDelta(old, new, files, sb.fallbacks, time.monotonic() - started)

    worker = threading.Thread(target=generate, name="treeship-delta", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(keepalive)
        if worker.is_alive():  # a ping the receiver answers: its idle timeout must not fire
            writer.send_json(wire.QUERY, {"objects": []})
            writer.flush()
            reader.expect(wire.MISSING)
    deltas = []
    for (old, new), ref in pairs.items():
        got = made.get((old, new))
        if isinstance(got, OutgoingDelta):
            deltas.append(got)
        else:
            why = got.message if got is not None else "no result"
            notes.append(f"--delta: {ref}: generating the delta failed ({why}); sent objects instead")
    return deltas, notes


def send(writer: wire.Writer, delta: OutgoingDelta, sent: Callable[[int], None]) -> None:
    """DELTA, then each file as DATA chunks and END."""
    writer.send_json(wire.DELTA, {"from": delta.from_commit, "to": delta.to_commit,
                                  "files": [[name, path.stat().st_size] for name, path in delta.files]})
    for _, path in delta.files:
        with open(path, "rb") as f:
            while block := f.read(wire.CHUNK):
                writer.send(wire.DATA, block)
                sent(len(block))
        writer.send(wire.END)


# -- the receiver's side ----------------------------------------------------------------------


def _check_hex(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise TransferError(f"protocol error: DELTA: bad {what} checksum")
    return value


def _files(msg: dict[str, Any]) -> list[tuple[str, int]]:
    raw = msg.get("files")
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_FILES:
        raise TransferError("protocol error: DELTA: bad file list")
    out = []
    for n, item in enumerate(raw):
        want = "superblock" if n == 0 else str(n - 1)
        if not (isinstance(item, list) and len(item) == 2 and item[0] == want and isinstance(item[1], int)
                and not isinstance(item[1], bool) and item[1] >= 0):
            raise TransferError("protocol error: DELTA: bad file list")
        out.append((want, item[1]))
    return out


def _receive_file(rx: Receiver, path: Path, size: int, limit: int) -> str:
    """One file of a delta (DATA… END) into ``path``; its sha256."""
    if size > limit:
        raise TransferError(f"static delta: a file of {size} bytes exceeds the limit of {limit} bytes")
    digest = hashlib.sha256()
    got = 0
    with open(path, "wb") as out:
        for payload in rx.data_chunks("a delta file"):
            got += len(payload)
            if got > size:
                raise TransferError("protocol error: a delta file is longer than announced")
            digest.update(payload)
            out.write(payload)
    if got != size:
        raise TransferError("protocol error: a delta file is shorter than announced")
    return digest.hexdigest()


def receive(rx: Receiver, frame: wire.Frame, workdir: Path, pool: Executor,
            targets: set[str]) -> tuple[str, bytes]:
    """Read one delta, apply it aside, verify and place every object it produced.

    Returns the new commit and its bytes: the caller places it as it would a received commit.
    ``targets``: the commits this push may update (a delta for anything else is refused).
    """
    from ..repo import OBJECT_TYPES, Repo, delta_superblock_without_fallbacks, open_delta_part, parse_delta_superblock

    msg = frame.json()
    old, new = _check_hex(msg.get("from"), "source"), _check_hex(msg.get("to"), "target")
    files = _files(msg)
    if new in rx.delta_targets:
        raise TransferError(f"protocol error: a second delta to {new[:12]}")
    rx.delta_targets.add(new)
    if new not in targets:
        raise TransferError(f"protocol error: a delta to {new[:12]}, which this push does not update")
    repo = rx.repo
    if not repo.has_object(old, int(OBJECT_TYPES["commit"])):
        raise TransferError(f"static delta from {old[:12]}: that commit is not here")
    d = Path(tempfile.mkdtemp(prefix="delta-", dir=workdir))
    try:
        sums = {name: _receive_file(rx, d / name, size, MAX_SUPERBLOCK if name == "superblock"
                                    else rx.policy.max_object_size) for name, size in files}
        trace.mark("receiver: delta files received")
        raw_sb = (d / "superblock").read_bytes()
        sb = parse_delta_superblock(raw_sb, expect=(old, new))  # checked before its object lists are read
        if len(sb.parts) != len(files) - 1:
            raise TransferError("static delta: the superblock lists other parts than were sent")
        sources: set[str] = set()
        produced: dict[str, int] = {}
        # What applying costs counts as if it had been sent, before anything is applied: what it
        # writes aside (each part decompressed, and every object it reads, copied whole into the
        # scratch repository) for the whole push, and the objects it declares it will write.
        aside = declared = 0

        def within_limit() -> None:
            if rx.received_bytes + rx.delta_cost + aside + declared > rx.policy.max_push_size:
                raise TransferError(f"push exceeds the limit of {rx.policy.max_push_size} bytes")

        for n, (csum, objects) in enumerate(sb.parts):
            if sums[str(n)] != csum:
                raise TransferError(f"static delta: part {n} is corrupt (checksum mismatch)")
            variant = d / f"{n}.variant"
            decompress_part(d / str(n), variant)
            aside += variant.stat().st_size
            scan = scan_part(open_delta_part(variant), objects, rx.policy.max_object_size)
            variant.unlink()
            declared += scan.output
            within_limit()
            sources |= scan.sources
            produced.update(objects)
        trace.mark("receiver: delta parts scanned")
        file_type = int(OBJECT_TYPES["file"])
        absent = [s for s in sorted(sources) if not repo.has_object(s, file_type)]
        if absent:
            raise TransferError(f"static delta: it reads object {absent[0]}, which is not here")
        aside += sum(repo.content_size(s) for s in sources)
        within_limit()
        rx.delta_cost += aside  # the objects it produces count as received, when they are placed
        offline = d / "superblock-offline"
        offline.write_bytes(delta_superblock_without_fallbacks(raw_sb))
        target = Repo.create(d / "repo", "bare-user")
        _apply_in_child(rx, d, target.path, offline, old, new, sorted(sources))
        trace.mark("receiver: delta applied aside")
        _import(rx, target, d, produced, pool)
        trace.mark("receiver: delta's objects checked and placed")
        return new, sb.commit
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _apply_in_child(rx: Receiver, d: Path, target: Path, superblock: Path, old: str, new: str,
                    sources: list[str]) -> None:
    spec = d / "apply.json"
    fsize = max(rx.policy.max_object_size, MAX_PART) + (1 << 20)
    spec.write_text(json.dumps({"target": str(target), "source": str(rx.repo.path), "superblock": str(superblock),
                                "from": old, "sources": sources, "fsize": fsize}))
    argv = [sys.executable, *(["-P"] if sys.version_info >= (3, 11) else []), "-m", "treeship.transfer.delta",
            "apply", str(spec)]
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=CHILD_TIMEOUT, check=False,
                           env={**os.environ, "TMPDIR": str(d)})
    except subprocess.TimeoutExpired:
        raise TransferError(f"static delta {old[:12]} → {new[:12]}: applying it took over {CHILD_TIMEOUT:.0f} s") \
            from None
    if p.returncode != 0:
        lines = [ln for ln in p.stderr.decode(errors="replace").splitlines() if ln.strip()]
        why = lines[-1].strip() if lines else "no message"
        if p.returncode < 0:
            why = f"libostree died ({signal.Signals(-p.returncode).name}: {why})"
        raise TransferError(f"static delta {old[:12]} → {new[:12]} rejected: {why[:300]}")


def _import(rx: Receiver, target: Repo, d: Path, produced: dict[str, int], pool: Executor) -> None:
    """Every object the delta wrote, from the bare-user repo in archive form, through the receiver's checks.

    Each worker reads one object (compressing it, as an archive repo stores it), then
    verifies and places it; a large object goes through a file, so memory stays bounded.
    """
    from ..repo import Repo

    repo = rx.repo
    limit = rx.policy.max_object_size
    opened = threading.local()  # an OstreeRepo per thread: libostree does not promise more

    def one(n: int, csum: str, objtype: int) -> int:
        source = getattr(opened, "repo", None)
        if source is None:
            source = opened.repo = Repo.open(target.path)
        data = _read_archive(source, csum, objtype, d / f"import-{n}",
                             limit if objtype == _FILE else min(limit, MAX_METADATA))
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        repo.install_object(data, csum, objtype)  # a file is moved into place, not copied
        return size

    jobs = [pool.submit(one, n, csum, objtype) for n, (csum, objtype) in enumerate(sorted(produced.items()))
            if not repo.has_object(csum, objtype)]
    # This thread takes queued jobs too (the receiver's pool has one worker): compressing and
    # checking release the GIL, so a delta's objects are read back on two cores.
    run_one = getattr(pool, "run_one", None)
    waiting = deque(jobs)
    try:
        while waiting:
            if waiting[0].done() or run_one is None or not run_one():
                rx.count_received(waiting.popleft().result())  # what this push adds counts, as objects would
    finally:
        for job in jobs:
            job.cancel()
        for job in jobs:
            if not job.cancelled():
                try:
                    job.result()
                except Exception:  # noqa: BLE001, S110 - the first error is the one raised
                    pass


def _read_archive(target: Repo, csum: str, objtype: int, spill: Path, limit: int) -> bytes | Path:
    """One object of the temporary repository in archive form: in memory, or in ``spill`` when large."""
    try:
        return collect(target.read_object_chunks(csum, objtype, wire.CHUNK), limit, spill, f"object {csum}")
    except TreeshipError:
        raise
    except Exception:  # noqa: BLE001 - OSError or GLib.Error: it is not in the temporary repository
        raise TransferError(f"static delta: it did not produce object {csum}") from None


# -- the child process that runs libostree on the delta ---------------------------------------


def _child(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    limit = int(spec["fsize"])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    from ..repo import Repo, apply_delta_offline

    try:
        apply_delta_offline(Repo.open(spec["target"]), Repo.open(spec["source"]), Path(spec["superblock"]),
                            spec["from"], list(spec["sources"]))
    except TreeshipError as e:
        print(" ".join(e.message.split()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "apply":
        sys.exit("usage: python -m treeship.transfer.delta apply SPEC.json (run by treeship receive)")
    sys.exit(_child(sys.argv[2]))
