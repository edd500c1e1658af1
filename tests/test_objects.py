"""Content objects checked without libostree (treeship/objects.py) agree with libostree.

Objects are made by the real `ostree commit`; each is checked by objects.verify_content,
and headers altered in ways only libostree's own check could judge must be judged alike.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from conftest import ostree
from treeship import objects
from treeship.errors import TransferError


@pytest.fixture
def archive_objects(tmp_path: Path) -> list[Path]:
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "tool").write_bytes(os.urandom(3000) * 20)
    (tree / "bin" / "tool").chmod(0o4755)  # setuid: allowed permission bits
    (tree / "empty").write_bytes(b"")
    (tree / "link").symlink_to("bin/tool")
    repo = tmp_path / "repo"
    ostree("init", f"--repo={repo}", "--mode=archive")
    ostree("commit", f"--repo={repo}", "--branch=t", "--owner-uid=0", "--owner-gid=0", str(tree))
    return sorted(repo.glob("objects/*/*.filez"))


def _checksum(p: Path) -> str:
    return p.parent.name + p.stem


def test_every_object_ostree_wrote_is_accepted(archive_objects):
    assert len(archive_objects) == 3
    plain = 0
    for p in archive_objects:
        data = p.read_bytes()
        hb = data[8:8 + int.from_bytes(data[:4], "big")]
        plain += objects._plain_regular_header(hb, struct.unpack_from(">I", hb, 16)[0])
        objects.verify_content(data, _checksum(p))
        objects.verify_content(p, _checksum(p))  # the spilled form, read from a file
    assert plain == 2  # the two regular files take the fast path; the symlink goes through libostree


@pytest.mark.parametrize("mode, ok", [
    (0o100644, True), (0o104755, True),
    (0o040755, False),  # a directory is not a content object
    (0o120777, False),  # a symlink's header must name its target: not the 26-byte form
    (0o100644 | 0o200000, False),  # bits beyond the permissions
])
def test_altered_modes_are_judged_as_libostree_judges_them(archive_objects, mode, ok):
    regular = next(p for p in archive_objects
                   if objects._plain_regular_header(*_header(p.read_bytes())))
    data = bytearray(regular.read_bytes())
    original = _header(bytes(data))[1]
    struct.pack_into(">I", data, 8 + 16, mode)
    hb = bytes(data[8:8 + 26])
    fast = objects._plain_regular_header(hb, mode)
    assert fast == (ok and mode & 0o170000 == 0o100000)
    try:
        from treeship.repo import check_archive_header

        check_archive_header(hb, "x")
        libostree_ok = True
    except TransferError:
        libostree_ok = False
    assert fast <= libostree_ok  # the fast path never accepts what libostree refuses
    if mode & 0o170000 == 0o100000:
        assert fast == libostree_ok  # and for regular files they agree exactly
    if mode != original:
        with pytest.raises(TransferError):  # the mode is hashed: any change is a different object
            objects.verify_content(bytes(data), _checksum(regular))


def _header(data: bytes) -> tuple[bytes, int]:
    hb = data[8:8 + int.from_bytes(data[:4], "big")]
    return hb, struct.unpack_from(">I", hb, 16)[0]
