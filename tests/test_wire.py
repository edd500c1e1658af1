"""wire.Writer.send_file: a file's bytes as DATA frames, through the batch or through
sendfile(2), exactly as sending the file's chunks would put them on the wire; and
wire.Reader.whole_data, which takes only the one shape it is for and leaves the rest."""

from __future__ import annotations

import errno
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from treeship.errors import StorageError, TransferError
from treeship.transfer import wire

SIZES = [0, 1, 4096, wire.SENDFILE_FROM - 1, wire.SENDFILE_FROM, wire.CHUNK - 1, wire.CHUNK,
         wire.CHUNK + 1, 3 * wire.CHUNK + 12345]


def _stream(send: Callable[[wire.Writer], None], timeout: float | None = None) -> bytes:
    """Everything a Writer puts into a pipe while ``send(writer)`` runs, then FINISH."""
    rfd, wfd = os.pipe()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(iter(lambda: os.read(rfd, 1 << 16), b"")), daemon=True)
    reader.start()
    try:
        writer = wire.Writer(wfd, timeout)
        send(writer)
        writer.send_json(wire.FINISH, {})
        writer.flush()
    finally:
        os.close(wfd)
        reader.join()
        os.close(rfd)
    return b"".join(got)


@pytest.mark.parametrize("size", SIZES)
def test_send_file_puts_the_same_frames_on_the_wire_as_its_chunks(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "object"
    path.write_bytes(data)

    def by_chunks(writer: wire.Writer) -> None:
        writer.send(wire.OBJECT, b"\x01" + bytes(32))
        for i in range(0, size, wire.CHUNK):
            writer.send(wire.DATA, data[i:i + wire.CHUNK])
        writer.send(wire.END)

    def by_file(writer: wire.Writer) -> None:
        writer.send(wire.OBJECT, b"\x01" + bytes(32))
        fd = os.open(path, os.O_RDONLY)
        try:
            assert writer.send_file(fd) == size
        finally:
            os.close(fd)
        writer.send(wire.END)

    expected = _stream(by_chunks)
    assert _stream(by_file) == expected
    assert _stream(by_file, timeout=30) == expected  # a Writer with a timeout reads and batches instead
    # and the receiving end reads it back as the file
    rfd, wfd = os.pipe()
    feeder = threading.Thread(target=lambda: (os.write(wfd, expected), os.close(wfd)), daemon=True)
    feeder.start()
    try:
        reader = wire.Reader(rfd)
        assert reader.read().type == wire.OBJECT
        body = []
        while (frame := reader.read()).type == wire.DATA:
            assert 0 < len(frame.payload) <= wire.MAX_DATA
            body.append(frame.payload)
        assert frame.type == wire.END and b"".join(body) == data
    finally:
        os.close(rfd)


def test_send_file_where_sendfile_is_refused_falls_back_to_reading(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that cannot sendfile into a pipe (EINVAL): the same bytes, read and written."""
    data = os.urandom(2 * wire.CHUNK + 7)
    path = tmp_path / "object"
    path.write_bytes(data)
    calls = []
    real = os.sendfile

    def refuse_after_one(out: int, fd: int, offset: int, n: int) -> int:
        calls.append(offset)
        if len(calls) > 1:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real(out, fd, offset, min(n, 1000))  # a short send first, then the refusal

    def by_file(writer: wire.Writer) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            writer.send_file(fd)
        finally:
            os.close(fd)

    def by_chunks(writer: wire.Writer) -> None:
        for i in range(0, len(data), wire.CHUNK):
            writer.send(wire.DATA, data[i:i + wire.CHUNK])

    expected = _stream(by_chunks)
    monkeypatch.setattr(os, "sendfile", refuse_after_one)
    assert _stream(by_file) == expected
    assert len(calls) >= 2


def test_an_object_file_shorter_than_its_size_said_is_a_local_error(tmp_path: Path) -> None:
    """send_file sends as many bytes as fstat said: a file cut meanwhile is the pusher's
    repository's problem (StorageError), not a lost connection."""
    path = tmp_path / "object"
    path.write_bytes(os.urandom(100))
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(StorageError, match="shrank"):
            wire._pread(fd, 200, 0)
    finally:
        os.close(fd)


def test_send_file_to_a_closed_peer_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "object"
    path.write_bytes(os.urandom(2 * wire.CHUNK))
    rfd, wfd = os.pipe()
    os.close(rfd)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(TransferError, match="connection closed by the peer"):
            wire.Writer(wfd).send_file(fd)
    finally:
        os.close(fd)
        os.close(wfd)


def _reader_after_object(rest: bytes) -> wire.Reader:
    """A Reader that has just read an OBJECT frame, ``rest`` buffered behind it (one read)."""
    rfd, wfd = os.pipe()
    os.write(wfd, wire.encode(wire.OBJECT, bytes(33)) + rest)
    os.close(wfd)
    reader = wire.Reader(rfd)
    assert reader.read().type == wire.OBJECT
    return reader


def test_whole_data_takes_one_buffered_data_frame_and_its_end() -> None:
    reader = _reader_after_object(wire.encode(wire.DATA, b"abc") + wire.encode(wire.END) + wire.encode(wire.FINISH))
    assert reader.whole_data(limit=3) == b"abc"
    assert reader.read().type == wire.FINISH


@pytest.mark.parametrize("rest", [
    wire.encode(wire.DATA, b"abc") + wire.encode(wire.DATA, b"d") + wire.encode(wire.END),  # two chunks
    wire.encode(wire.DATA, b"abc") + wire.encode(wire.END)[:-1],  # END not buffered whole
    wire.encode(wire.DATA, b"abc"),  # END not buffered at all
    wire.encode(wire.DATA, b"") + wire.encode(wire.END),  # an empty DATA frame (the receiver refuses it)
    wire.encode(wire.END),  # an empty object
    wire.encode(wire.FINISH, b"{}") + wire.encode(wire.END),
    b"",
])
def test_whole_data_leaves_anything_else_to_the_frame_by_frame_path(rest: bytes) -> None:
    reader = _reader_after_object(rest)
    assert reader.whole_data(limit=1 << 20) is None
    after: list[bytes] = []  # nothing was consumed: the frames read next are all that was sent
    with pytest.raises(TransferError, match="closed by the peer"):
        while True:
            frame = reader.read()
            after.append(wire.encode(frame.type, frame.payload))
    read_again = b"".join(after)
    assert rest.startswith(read_again) and len(rest) - len(read_again) < 5  # (a cut header is never a frame)


def test_an_end_with_a_payload_is_no_frame() -> None:
    """END carries nothing: a payload there was neither stored nor counted against a push's size."""
    reader = _reader_after_object(wire.encode(wire.DATA, b"abc") + wire.encode(wire.END, b"x"))
    assert reader.whole_data(limit=1 << 20) is None
    assert reader.read().payload == b"abc"
    with pytest.raises(TransferError, match="frame b'E' of 1 bytes exceeds 0"):
        reader.read()


def test_whole_data_leaves_a_payload_over_the_limit_to_the_frame_by_frame_path() -> None:
    reader = _reader_after_object(wire.encode(wire.DATA, b"abcd") + wire.encode(wire.END))
    assert reader.whole_data(limit=3) is None
    assert reader.read().payload == b"abcd"


def test_whole_data_leaves_a_frame_over_max_data_to_read_which_refuses_it() -> None:
    """A DATA frame past MAX_DATA can be buffered whole (the reader takes max(CHUNK, need)
    at once); whole_data must not take it, whatever limit it is given."""
    reader = wire.Reader(-1)
    reader._buf = bytearray(wire.encode(wire.DATA, bytes(wire.MAX_DATA + 1)) + wire.encode(wire.END))
    assert reader.whole_data(limit=1 << 40) is None
    with pytest.raises(TransferError, match="exceeds"):
        reader.read()


def _refs_json(ftype: bytes, n: int) -> bytes:
    """What a pusher or a receiver sends for ``n`` branches named as a large repository names them."""
    refs = [{"ref": f"app/org.example.Application{i}/x86_64/stable", "old": f"{i:064x}", "new": f"{i + 1:064x}"}
            for i in range(n)]
    if ftype == wire.HELLO:
        return json.dumps({"magic": wire.MAGIC, "protocol": 1, "refs": {r["ref"]: r["old"] for r in refs}}).encode()
    return json.dumps({"updates" if ftype == wire.UPDATE else "refs": refs}, separators=(",", ":")).encode()


@pytest.mark.parametrize(("ftype", "n", "limits"), [
    (wire.HELLO, 60_000, wire.FRAME_LIMITS),  # a receiver with 60,000 branches, to a pusher
    (wire.STATUS, 20_000, wire.FRAME_LIMITS),
    (wire.UPDATE, 20_000, wire.RECEIVER_LIMITS),  # a pusher moving 20,000 branches at once
])
def test_large_repositories_frames_are_taken(ftype: bytes, n: int, limits: dict[bytes, int]) -> None:
    """The limits bound what a hostile peer can cost, not what a large repository needs (an
    UPDATE of 1 MiB, ~5,500 refs, was the first version's: a reviewer's 6,000 branches failed)."""
    payload = _refs_json(ftype, n)
    r, w = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(w, wire.encode(ftype, payload)), os.close(w)))
    writer.start()
    try:
        frame = wire.Reader(r, limits=limits).read()
        assert frame.json()
    finally:
        writer.join()
        os.close(r)


def test_a_receiver_takes_only_a_small_hello() -> None:
    r, w = os.pipe()
    os.write(w, wire.encode(wire.HELLO, b" " * ((64 << 10) + 1))[:5])  # refused from the header alone
    os.close(w)
    with pytest.raises(TransferError, match="exceeds"):
        wire.Reader(r, limits=wire.RECEIVER_LIMITS).read()
    os.close(r)
