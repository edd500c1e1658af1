"""Static deltas: generated (into the repository, or as files to send), superblocks and
parts parsed as untrusted data, applied offline into a bare-user repository."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import RepoError, StorageError, TransferError
from .core import _OBJ_EXT, Gio, GLib, OSTree, _Core

if TYPE_CHECKING:
    from . import Repo


# -- static deltas as `treeship push --delta` sends and applies them ----------------------------
#
# The formats are libostree's (ostree-repo-static-delta-private.h): a superblock
# (DELTA_SUPERBLOCK_TYPE) naming the parts by number, each part a compression byte ('x': xz,
# 0: none) then a DELTA_PART_TYPE variant. Everything received is parsed as untrusted data:
# GLib's GVariant accessors are safe on any bytes; shapes and lengths are checked here.

DELTA_SUPERBLOCK_TYPE = "(a{sv}tayay(a{sv}aya(say)sstayay)aya(uayttay)a(yaytt))"
DELTA_PART_TYPE = "(a(uuu)aa(ayay)ayay)"
MAX_OPERATIONS = 16 << 20  # a received part's operation stream (libostree's take a few bytes per object)


@dataclass(frozen=True)
class DeltaSuperblock:
    """What a static delta's superblock says (sizes in it are host-endian: not relied on)."""

    from_commit: str
    to_commit: str
    commit: bytes  # the ``to`` commit object, as it will land
    parts: list[tuple[str, list[tuple[str, int]]]]  # per part: its sha256, the objects it writes
    fallbacks: list[tuple[str, int]]  # objects the delta leaves out: they travel as objects


@dataclass
class DeltaPart:
    """A decompressed delta part, mapped from its file."""

    n_modes: int
    n_xattrs: int
    payload_size: int
    ops: bytes
    _payload: GLib.Bytes

    def payload(self, offset: int, length: int) -> bytes:
        return bytes(GLib.Bytes.new_from_bytes(self._payload, offset, length).get_data() or b"")


def _csum_v(v: GLib.Variant, what: str, empty_ok: bool = False) -> str:
    raw = bytes(v.get_data_as_bytes().get_data() or b"")
    if empty_ok and not raw:
        return ""
    if len(raw) != 32:
        raise TransferError(f"static delta: {what} is not a checksum")
    return raw.hex()


def _object_list(raw: bytes, what: str) -> list[tuple[str, int]]:
    if len(raw) % 33:
        raise TransferError(f"static delta: {what}: malformed object list")
    out = []
    for i in range(0, len(raw), 33):
        if raw[i] not in _OBJ_EXT:
            raise TransferError(f"static delta: {what}: unknown object type {raw[i]}")
        out.append((raw[i + 1:i + 33].hex(), raw[i]))
    return out


def parse_delta_superblock(data: bytes, expect: tuple[str, str] | None = None) -> DeltaSuperblock:
    """A superblock's content; TransferError when it is not a well-formed unsigned superblock,
    or (``expect``: source and target) not the delta from that commit to that one, carrying
    the target commit itself: told before its object lists are read."""
    v = GLib.Variant.new_from_bytes(GLib.VariantType.new(DELTA_SUPERBLOCK_TYPE), GLib.Bytes.new(data), False)
    if not v.is_normal_form():
        raise TransferError("static delta: the superblock is malformed (not in normal form)")
    source = _csum_v(v.get_child_value(2), "its source", empty_ok=True)
    to = _csum_v(v.get_child_value(3), "its target")
    commit_v = v.get_child_value(4)
    commit = bytes(commit_v.get_data_as_bytes().get_data() or b"")
    if expect is not None:
        if (source, to) != expect:
            raise TransferError("static delta: the superblock is not the delta announced")
        if hashlib.sha256(commit).hexdigest() != expect[1]:
            raise TransferError(f"static delta: the commit it carries does not hash to {expect[1]}")
    parts = []
    headers = v.get_child_value(6)
    for i in range(headers.n_children()):
        h = headers.get_child_value(i)
        parts.append((_csum_v(h.get_child_value(1), f"part {i}"),
                      _object_list(bytes(h.get_child_value(4).get_data_as_bytes().get_data() or b""), f"part {i}")))
    fallbacks = []
    fb = v.get_child_value(7)
    for i in range(fb.n_children()):
        f = fb.get_child_value(i)
        objtype = f.get_child_value(0).get_byte()
        if objtype not in _OBJ_EXT:
            raise TransferError(f"static delta: fallback {i}: unknown object type {objtype}")
        fallbacks.append((_csum_v(f.get_child_value(1), f"fallback {i}"), int(objtype)))
    return DeltaSuperblock(source, to, commit, parts, fallbacks)


def delta_superblock_without_fallbacks(data: bytes) -> bytes:
    """The same superblock with an empty fallback list (libostree's offline apply refuses any).

    The fallback objects travel as objects; nothing in the parts reads them.
    """
    v = GLib.Variant.new_from_bytes(GLib.VariantType.new(DELTA_SUPERBLOCK_TYPE), GLib.Bytes.new(data), False)
    children = [v.get_child_value(i) for i in range(7)]
    children.append(GLib.Variant.new_array(GLib.VariantType.new("(yaytt)"), []))
    return bytes(GLib.Variant.new_tuple(*children).get_data_as_bytes().get_data() or b"")


def open_delta_part(path: Path) -> DeltaPart:
    """A decompressed part (the variant, without the compression byte), mapped read-only."""
    try:
        mapped = GLib.MappedFile.new(str(path), False)
    except GLib.Error as e:
        raise TransferError(f"static delta: cannot read a part: {e.message}") from None
    v = GLib.Variant.new_from_bytes(GLib.VariantType.new(DELTA_PART_TYPE), mapped.get_bytes(), False)
    if not v.is_normal_form():
        raise TransferError("static delta: a part is malformed (not in normal form)")
    payload, ops = v.get_child_value(2), v.get_child_value(3)
    if ops.get_size() > MAX_OPERATIONS:  # copied below; libostree's are a few bytes per object
        raise TransferError(f"static delta: a part's operations take {ops.get_size()} bytes, "
                            f"over the limit of {MAX_OPERATIONS}")
    return DeltaPart(v.get_child_value(0).n_children(), v.get_child_value(1).n_children(), payload.n_children(),
                     bytes(ops.get_data_as_bytes().get_data() or b""), payload.get_data_as_bytes())


def generate_delta_files(repo: Repo, from_commit: str, to_commit: str, directory: Path) -> Path:
    """Write a static delta ``from_commit`` → ``to_commit`` as files: ``superblock``, ``0``, ``1``…

    The repository itself is not changed (no deltas/ entry). Returns the superblock's path.
    """
    superblock = directory / "superblock"
    params = {"filename": GLib.Variant("ay", str(superblock).encode() + b"\0"),
              "inline-parts": GLib.Variant("b", False)}
    try:
        repo._repo.static_delta_generate(OSTree.StaticDeltaGenerateOpt.MAJOR, from_commit, to_commit, None,
                                         GLib.Variant("a{sv}", params), None)
    except GLib.Error as e:
        raise RepoError(f"static delta {from_commit[:12]} → {to_commit[:12]}: {e.message}") from None
    return superblock


def apply_delta_offline(target: Repo, source: Repo, superblock: Path, from_commit: str,
                        read_sources: list[str]) -> None:
    """Apply a delta into ``target`` (a bare-user repo): its source commit and the objects it reads first.

    Those come from ``source`` (the receiver's archive repo; trusted: it verified them).
    libostree checks each part's checksum and each object it writes (untrusted mode).
    """
    try:
        with target.transaction():
            target._repo.import_object_from_with_trust(source._repo, OSTree.ObjectType.COMMIT, from_commit, True, None)
            for csum in read_sources:
                target._repo.import_object_from_with_trust(source._repo, OSTree.ObjectType.FILE, csum, True, None)
            target._repo.static_delta_execute_offline(Gio.File.new_for_path(str(superblock)), False, None)
    except GLib.Error as e:
        raise TransferError(f"applying the static delta failed: {e.message}") from None


class _Deltas(_Core):
    """Static deltas in the repository itself."""

    def generate_delta(self, from_commit: str | None, to_commit: str) -> None:
        try:
            # params must be a dict, even empty: libostree 2022.7 dereferences a NULL one (SIGSEGV)
            self._repo.static_delta_generate(OSTree.StaticDeltaGenerateOpt.MAJOR, from_commit, to_commit,
                                             None, GLib.Variant("a{sv}", {}), None)
        except GLib.Error as e:
            raise StorageError(f"static delta {from_commit} → {to_commit}: {e.message}") from None
