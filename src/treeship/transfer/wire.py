"""The wire format, and nothing else: frames over a pair of file descriptors (and, for the
receiving end, the size of the pipe they arrive through: :func:`widen_pipe`).

A frame is ``type`` (1 byte) ``length`` (4 bytes, big-endian) ``payload``. Control
frames carry JSON objects; an object travels as OBJECT (1-byte OSTree object type +
32-byte binary checksum), then DATA chunks, then END. Lengths are bounded on reading, so a
hostile length field costs nothing; a silent peer hits the idle timeout, not a hang.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import select
import struct

from ..errors import RemoteError, StorageError, TransferError
from ..layout import OBJECT_TYPES  # noqa: F401 - OSTree's type numbers, as OBJECT frames carry them

TYPE_CHECKING = False  # not `from typing`: importing typing costs a receiver ~10 ms
if TYPE_CHECKING:
    from typing import Any

PROTOCOL_VERSION = 1
MAGIC = "treeship-push"
DELTA_CAPABILITY = "delta"  # HELLO: the peer takes static deltas (push --delta; see delta.py)

HELLO = b"H"  # JSON both ways: protocol, versions; the receiver adds its refs and mode
UPDATE = b"U"  # JSON pusher→receiver: the ref updates wanted, and --force
PREFLIGHT = b"P"  # JSON receiver→pusher: per ref, may it go on (policy known without objects)
QUERY = b"Q"  # JSON pusher→receiver: object names the pusher could send
MISSING = b"M"  # JSON receiver→pusher: the ones the receiver lacks
OBJECT = b"O"  # binary: object type (1 byte) + checksum (32 bytes)
DATA = b"D"  # binary: a chunk of the current object (archive form)
END = b"E"  # end of the current object
FINISH = b"F"  # JSON pusher→receiver: all objects sent; move the refs
STATUS = b"S"  # JSON receiver→pusher: one status per ref
ERROR = b"X"  # JSON either way: fatal, with a message (and the exit code it maps to: errors.RemoteError)
DELTA = b"L"  # JSON pusher→receiver: a static delta's files follow, each as DATA chunks + END (push --delta)

CONTROL_TYPES = {HELLO, UPDATE, PREFLIGHT, QUERY, MISSING, FINISH, STATUS, ERROR, DELTA}
ALL_TYPES = CONTROL_TYPES | {OBJECT, DATA, END}
MAX_CONTROL = 16 << 20  # a receiver's HELLO lists its refs: ~100 bytes each
MAX_DATA = 1 << 20
#: The largest payload of each frame type: what a peer can make the other hold, and parse,
#: before anything of it is checked. These are the pusher's, reading a receiver: its HELLO
#: lists every ref of the repository, PREFLIGHT and STATUS one entry per ref pushed.
FRAME_LIMITS = {OBJECT: 33, DATA: MAX_DATA, END: 0, HELLO: MAX_CONTROL, UPDATE: MAX_CONTROL, PREFLIGHT: MAX_CONTROL,
                QUERY: MAX_CONTROL, MISSING: MAX_CONTROL, FINISH: 64 << 10, STATUS: MAX_CONTROL,
                ERROR: 64 << 10, DELTA: 8 << 20}
#: The receiver's, reading a pusher, whom it need not trust as far: a pusher's HELLO is a
#: few names; an UPDATE of 6 MiB is ~30,000 refs, a QUERY of 50,000 names (QUERY_BATCH) up
#: to 3.9 MB; the frames only a receiver sends are not expected from a pusher at all.
RECEIVER_LIMITS = {**FRAME_LIMITS, HELLO: 64 << 10, UPDATE: 6 << 20, QUERY: 6 << 20,
                   PREFLIGHT: 64 << 10, MISSING: 64 << 10, STATUS: 64 << 10}
#: What a control frame's JSON may hold, per byte, before it is parsed: JSON objects or
#: arrays (a frame of "{}" would be ~60 bytes of memory per 2 bytes read, and nested ones
#: run the parser out of stack; each ref of an UPDATE or a STATUS is one object of ~170
#: bytes) and values (commas: "1," makes 36 bytes of Python of 2 bytes read; a ref in a
#: HELLO is ~80 bytes, an object name in a QUERY or MISSING 70 or more). A DELTA lists its
#: files as [name, size] pairs, at most delta.MAX_FILES of them.
_BYTES_PER_CONTAINER = 64
_BYTES_PER_VALUE = {QUERY: 64, MISSING: 64}
_MAX_CONTAINERS = {DELTA: 100_000 + 16}
_MAX_VALUES = {DELTA: 2 * 100_000 + 16}
CHUNK = 1 << 20
SENDFILE_FROM = 64 << 10  # Writer.send_file: files this large are copied by the kernel
PIPE_SIZE = 1 << 20  # Linux's pipe-max-size by default: the most an unprivileged process may ask for
_HEADER = struct.Struct(">cI")
_END_HEADER = _HEADER.pack(END, 0)


def widen_pipe(fd: int) -> None:
    """Give the pipe on ``fd`` a buffer of PIPE_SIZE (Linux makes it 64 kB), if ``fd`` is a
    pipe and the system allows it; otherwise leave it as it is.

    Why: a receiver's stdin is a pipe from sshd (or from the pusher). Through 64 kB, every
    64 kB of a push needs both processes woken once more: on two busy cores, a first push of
    53 MB went 15% faster and an incremental one 12% with 1 MB (docs/performance.md).
    """
    try:
        if fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < PIPE_SIZE:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:  # not a pipe (EBADF), or over a limit (EPERM): a smaller buffer only costs time
        pass


class Frame:
    """One frame as read: its type and payload. (A plain class, not a dataclass: importing
    dataclasses costs the receiver ~6 ms before it can answer HELLO, on every push.)"""

    __slots__ = ("type", "payload")

    def __init__(self, type: bytes, payload: bytes) -> None:  # noqa: A002 - the frame's type, as on the wire
        self.type = type
        self.payload = payload

    def __repr__(self) -> str:
        return f"Frame({self.type!r}, {self.payload[:40]!r}{'…' if len(self.payload) > 40 else ''})"

    def remote_error(self) -> RemoteError:
        """What an ERROR frame says, as the error the push ends with."""
        said = self.json()
        return RemoteError(f"remote error: {said.get('message', '?')}", said.get("exit_code"))

    def json(self) -> dict[str, Any]:
        payload = self.payload
        containers = _MAX_CONTAINERS.get(self.type, len(payload) // _BYTES_PER_CONTAINER + 16)
        if payload.count(b"{") + payload.count(b"[") > containers:
            raise TransferError(f"protocol error: frame {self.type!r} holds too many JSON objects or arrays")
        values = _MAX_VALUES.get(self.type, len(payload) // _BYTES_PER_VALUE.get(self.type, 16) + 16)
        if payload.count(b",") > values:
            raise TransferError(f"protocol error: frame {self.type!r} holds too many JSON values")
        try:
            obj = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise TransferError(f"protocol error: frame {self.type!r} is not valid JSON") from None
        if not isinstance(obj, dict):
            raise TransferError(f"protocol error: frame {self.type!r} is not a JSON object")
        return obj


def encode(ftype: bytes, payload: bytes = b"") -> bytes:
    return _HEADER.pack(ftype, len(payload)) + payload


def encode_json(ftype: bytes, obj: dict[str, Any]) -> bytes:
    return encode(ftype, json.dumps(obj, separators=(",", ":")).encode())


def _pread(fd: int, n: int, offset: int) -> bytes:
    """Exactly ``n`` bytes of ``fd`` from ``offset`` (a file's size was taken from fstat)."""
    try:
        data = os.pread(fd, n, offset)
        while len(data) < n:
            more = os.pread(fd, n - len(data), offset + len(data))
            if not more:
                raise StorageError("an object file shrank while it was being sent")
            data += more
    except OSError as e:
        raise StorageError(f"reading an object to send: {e.strerror}") from None
    return data


class Reader:
    """Buffered frame reader over a file descriptor, with an idle timeout."""

    def __init__(self, fd: int, timeout: float | None = None, limits: dict[bytes, int] = FRAME_LIMITS) -> None:
        self.fd = fd
        self.timeout = timeout
        self.limits = limits  # FRAME_LIMITS, or RECEIVER_LIMITS for a receiver
        self._buf = bytearray()
        self._pos = 0
        self.bytes_read = 0

    def _fill(self, need: int) -> None:
        while len(self._buf) - self._pos < need:
            if self._pos:
                del self._buf[: self._pos]
                self._pos = 0
            if self.timeout is not None:
                ready, _, _ = select.select([self.fd], [], [], self.timeout)
                if not ready:
                    raise TransferError(f"the peer sent nothing for {self.timeout:.0f} s; giving up")
            try:
                chunk = os.read(self.fd, max(CHUNK, need))
            except OSError as e:
                raise TransferError(f"connection lost: {e.strerror}") from None
            if not chunk:
                raise TransferError("connection closed by the peer")
            self._buf += chunk
            self.bytes_read += len(chunk)

    def read(self) -> Frame:
        self._fill(_HEADER.size)
        ftype, length = _HEADER.unpack_from(self._buf, self._pos)
        limit = self.limits.get(ftype)
        if limit is None:
            raise TransferError(f"protocol error: unknown frame type {ftype!r}")
        if length > limit:
            raise TransferError(f"protocol error: frame {ftype!r} of {length} bytes exceeds {limit}")
        self._fill(_HEADER.size + length)
        start = self._pos + _HEADER.size
        with memoryview(self._buf) as view:  # one copy (a bytearray slice, then bytes(), made two)
            payload = view[start:start + length].tobytes()
        self._pos = start + length
        return Frame(ftype, payload)

    def whole_data(self, limit: int) -> bytes | None:
        """The payload of one DATA frame and the END after it, if both are buffered already
        and the payload is 1 to ``limit`` bytes; else None, and nothing is consumed (the
        caller reads frame by frame). Most objects of a push are sent so, and this takes
        them without two Frames and a generator each: the reading thread is the
        receiver's busiest (docs/performance.md)."""
        pos = self._pos
        buf = self._buf
        if len(buf) - pos < 2 * _HEADER.size:
            return None
        ftype, length = _HEADER.unpack_from(buf, pos)
        end = pos + _HEADER.size + length
        if ftype != DATA or not 0 < length <= min(limit, MAX_DATA) or len(buf) < end + _HEADER.size \
                or buf[end:end + _HEADER.size] != _END_HEADER:
            return None
        with memoryview(buf) as view:
            payload = view[pos + _HEADER.size:end].tobytes()
        self._pos = end + _HEADER.size
        return payload

    def unread(self, limit: int) -> bytes:
        """Up to ``limit`` bytes received and not read as frames yet (to show in an error)."""
        return bytes(self._buf[self._pos:self._pos + limit])

    def expect(self, ftype: bytes) -> Frame:
        frame = self.read()
        if frame.type == ERROR:
            raise frame.remote_error()
        if frame.type != ftype:
            raise TransferError(f"protocol error: expected frame {ftype!r}, got {frame.type!r}")
        return frame


class Writer:
    """Frame writer over a file descriptor; small frames are batched into one write.

    With a ``timeout``, a peer that stops reading is given up on like one that stops
    writing: each write waits (select) until the descriptor can take at least PIPE_BUF
    bytes, then writes no more than that, so it never blocks longer than the timeout.
    """

    def __init__(self, fd: int, timeout: float | None = None) -> None:
        self.fd = fd
        self.timeout = timeout
        self._pending: list[bytes] = []
        self._pending_size = 0
        self.bytes_written = 0

    def send(self, ftype: bytes, payload: bytes = b"") -> None:
        self._pending.append(_HEADER.pack(ftype, len(payload)))
        self._pending.append(payload)
        self._pending_size += _HEADER.size + len(payload)
        if self._pending_size >= CHUNK:
            self.flush()

    def send_json(self, ftype: bytes, obj: dict[str, Any]) -> None:
        self.send(ftype, json.dumps(obj, separators=(",", ":")).encode())

    def send_file(self, fd: int) -> int:
        """The open file ``fd``, from its start, as DATA frames (none if it is empty); returns
        its size. Small files join the batch; from SENDFILE_FROM on, the kernel copies the
        file into the descriptor (``sendfile``) where Python would read it, join it into the
        batch and write it: a first push's large objects are most of its bytes, and on two
        busy cores every copy the pusher saves is CPU for the receiving end.
        """
        size = os.fstat(fd).st_size
        if size < SENDFILE_FROM or self.timeout is not None:  # sendfile cannot honour a timeout
            for offset in range(0, size, CHUNK):
                self.send(DATA, _pread(fd, min(CHUNK, size - offset), offset))
            return size
        for offset in range(0, size, CHUNK):
            n = min(CHUNK, size - offset)
            self._pending.append(_HEADER.pack(DATA, n))  # the header goes out with the batch before it
            self.flush()
            self._copy_file(fd, offset, n)
        return size

    def _copy_file(self, fd: int, offset: int, n: int) -> None:
        """``n`` bytes of ``fd`` from ``offset`` into the descriptor, by sendfile; by pread and
        write where the file system cannot send a file into a pipe."""
        end = offset + n
        try:
            while offset < end:
                sent = os.sendfile(self.fd, fd, offset, end - offset)
                if not sent:
                    raise StorageError("an object file shrank while it was being sent")
                offset += sent
                self.bytes_written += sent
        except BrokenPipeError:
            raise TransferError("connection closed by the peer") from None
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise StorageError(f"reading an object to send: {e.strerror}") from None
            while offset < end:
                block = _pread(fd, min(CHUNK, end - offset), offset)
                self._write(memoryview(block))
                offset += len(block)

    def flush(self) -> None:
        if not self._pending:
            return
        data = memoryview(b"".join(self._pending))
        self._pending.clear()
        self._pending_size = 0
        self._write(data)

    def _write(self, data: memoryview) -> None:
        try:
            while data:
                if self.timeout is not None:
                    _, ready, _ = select.select([], [self.fd], [], self.timeout)
                    if not ready:
                        raise TransferError(f"the peer read nothing for {self.timeout:.0f} s; giving up")
                    n = os.write(self.fd, data[:select.PIPE_BUF])
                else:
                    n = os.write(self.fd, data)
                data = data[n:]
                self.bytes_written += n
        except BrokenPipeError:
            raise TransferError("connection closed by the peer") from None
        except OSError as e:
            raise TransferError(f"connection lost: {e.strerror}") from None
