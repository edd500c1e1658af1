"""GLib's GVariant through ``ctypes``: untrusted metadata checked by GLib's own code without
PyGObject.

A plain push's receiver does without libostree (see :mod:`treeship.filerepo`): loading
PyGObject and libostree costs it ~40 ms of CPU while objects stream, which is what the two
cores are short of. It still needs GLib's judgement of a received dirtree, dirmeta or commit
(is it a GVariant of its type in normal form?) and a few of a commit's fields. That is
``libglib-2.0.so.0``, which libostree links against anyway, reached here in about a
millisecond; nothing of GLib's validation is written again in Python.

Writing is simpler than judging: :func:`serialize` writes the few shapes a summary needs
in pure Python (GLib's own serializer would need a GVariant built call by call).
"""

from __future__ import annotations

import ctypes

TYPE_CHECKING = False  # not `from typing`: importing typing costs a receiver ~10 ms
if TYPE_CHECKING:
    from typing import Any

_glib = ctypes.CDLL("libglib-2.0.so.0")
_P = ctypes.c_void_p

for _name, _res, _args in (
    ("g_variant_type_new", _P, [ctypes.c_char_p]),
    ("g_variant_type_free", None, [_P]),
    ("g_bytes_new", _P, [ctypes.c_char_p, ctypes.c_size_t]),
    ("g_bytes_unref", None, [_P]),
    ("g_variant_new_from_bytes", _P, [_P, _P, ctypes.c_int]),
    ("g_variant_ref_sink", _P, [_P]),
    ("g_variant_unref", None, [_P]),
    ("g_variant_is_normal_form", ctypes.c_int, [_P]),
    ("g_variant_n_children", ctypes.c_size_t, [_P]),
    ("g_variant_get_child_value", _P, [_P, ctypes.c_size_t]),
    ("g_variant_get_size", ctypes.c_size_t, [_P]),
    ("g_variant_get_data", _P, [_P]),
    ("g_variant_get_type_string", ctypes.c_char_p, [_P]),
    ("g_variant_get_variant", _P, [_P]),
    ("g_variant_lookup_value", _P, [_P, ctypes.c_char_p, _P]),
):
    _f = getattr(_glib, _name)
    _f.restype, _f.argtypes = _res, _args


class Variant:
    """One GVariant (a reference held, dropped when this is collected); read-only accessors."""

    __slots__ = ("_ptr",)

    def __init__(self, ptr: int) -> None:
        self._ptr = ptr

    def __del__(self) -> None:
        if self._ptr and _glib is not None:  # (None: the interpreter is tearing the module down)
            _glib.g_variant_unref(self._ptr)
            self._ptr = None

    @classmethod
    def untrusted(cls, type_string: str, data: bytes) -> Variant:
        """``data`` as a GVariant of ``type_string``, not trusted (GLib copies the bytes)."""
        vtype = _glib.g_variant_type_new(type_string.encode())
        blob = _glib.g_bytes_new(data, len(data))
        try:
            return cls(_glib.g_variant_ref_sink(_glib.g_variant_new_from_bytes(vtype, blob, 0)))
        finally:
            _glib.g_bytes_unref(blob)
            _glib.g_variant_type_free(vtype)

    def is_normal_form(self) -> bool:
        return bool(_glib.g_variant_is_normal_form(self._ptr))

    @property
    def type_string(self) -> str:
        return _glib.g_variant_get_type_string(self._ptr).decode()

    def __len__(self) -> int:
        if self.type_string[0] not in "a({":  # GLib aborts the process when asked otherwise
            raise TypeError(f"a GVariant of type {self.type_string} has no children")
        return _glib.g_variant_n_children(self._ptr)

    def child(self, i: int) -> Variant:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return Variant(_glib.g_variant_get_child_value(self._ptr, i))

    def data(self) -> bytes:
        """The serialized bytes (for ``ay``: the bytes themselves)."""
        size = _glib.g_variant_get_size(self._ptr)
        return ctypes.string_at(_glib.g_variant_get_data(self._ptr), size) if size else b""

    def string(self) -> str:
        """An ``s``: its bytes less the final NUL (GLib's normal form makes them UTF-8)."""
        return self.data()[:-1].decode()

    def unboxed(self) -> Variant:
        """A ``v``'s value."""
        if self.type_string != "v":  # GLib aborts the process when asked otherwise
            raise TypeError(f"a GVariant of type {self.type_string} holds no variant")
        return Variant(_glib.g_variant_get_variant(self._ptr))

    def lookup(self, key: str) -> Variant | None:
        """In an ``a{sv}``: the value under ``key`` (unboxed), or None."""
        if self.type_string != "a{sv}":
            raise TypeError(f"a GVariant of type {self.type_string} is no a{{sv}}")
        ptr = _glib.g_variant_lookup_value(self._ptr, key.encode(), None)
        return Variant(ptr) if ptr else None

    def strings(self) -> list[str]:
        """An ``as``'s strings."""
        return [self.child(i).string() for i in range(len(self))]


def normal(type_string: str, data: bytes) -> Variant | None:
    """``data`` as a GVariant of ``type_string`` if it is one in normal form (the one
    serialization GLib would write), else None."""
    v = Variant.untrusted(type_string, data)
    return v if v.is_normal_form() else None


# -- writing: what a summary needs, in pure Python ---------------------------------------------

def _split(t: str) -> tuple[str, str]:
    """The first complete type in ``t`` and the rest."""
    c = t[0]
    if c == "a":
        first, rest = _split(t[1:])
        return "a" + first, rest
    if c in "({":
        close = ")" if c == "(" else "}"
        i, members = 1, []
        while t[i] != close:
            m, _ = _split(t[i:])
            members.append(m)
            i += len(m)
        return t[:i + 1], t[i + 1:]
    return c, t[1:]


def _members(t: str) -> list[str]:
    inner, out = t[1:-1], []
    while inner:
        m, inner = _split(inner)
        out.append(m)
    return out


_FIXED = {"b": 1, "y": 1, "n": 2, "q": 2, "i": 4, "u": 4, "x": 8, "t": 8, "d": 8, "h": 4}


def _alignment(t: str) -> int:
    if t in _FIXED:
        return _FIXED[t]
    if t in ("s", "o", "g"):
        return 1
    if t == "v":
        return 8
    if t[0] == "a":
        return _alignment(t[1:])
    return max((_alignment(m) for m in _members(t)), default=1)


def _fixed_size(t: str) -> int | None:
    if t in _FIXED:
        return _FIXED[t]
    if t[0] in "({":
        size = 0
        for m in _members(t):
            f = _fixed_size(m)
            if f is None:
                return None
            size += -size % _alignment(m) + f
        size += -size % _alignment(t)
        return size or 1
    return None


def _offset_size(body: int, n: int) -> int:
    for w, limit in ((1, 0xFF), (2, 0xFFFF), (4, 0xFFFFFFFF)):
        if body + w * n <= limit:
            return w
    return 8


def serialize(t: str, value: Any) -> bytes:
    """``value`` as GLib serializes a GVariant of type ``t`` (gvariant-serialiser.c; checked
    against GLib in tests/test_filerepo.py): numbers little-endian, containers padded to
    their members' alignment, framing offsets as small as the container allows. Python
    values: int, bool, str, bytes (``ay``), lists and tuples, dicts (``a{..}``), and
    ``(type, value)`` for a ``v``."""
    if t in _FIXED:
        if t == "b":
            return b"\1" if value else b"\0"
        return int(value).to_bytes(_FIXED[t], "little", signed=t in "nixh")
    if t in ("s", "o", "g"):
        return str(value).encode() + b"\0"
    if t == "v":
        vt, inner = value
        return serialize(vt, inner) + b"\0" + vt.encode()
    if t[0] == "a":
        et = t[1:]
        if et[0] == "{":
            items = list(value.items()) if isinstance(value, dict) else list(value)
        else:
            items = list(value)
        if et == "y":
            return bytes(items)
        fixed = _fixed_size(et)
        align = _alignment(et)
        out = bytearray()
        ends = []
        for item in items:
            out += bytes(-len(out) % align)
            out += serialize(et, item)
            ends.append(len(out))
        if fixed is not None or not items:
            return bytes(out)
        w = _offset_size(len(out), len(ends))
        return bytes(out) + b"".join(e.to_bytes(w, "little") for e in ends)
    members = _members(t)
    out = bytearray()
    ends = []
    for i, (m, v) in enumerate(zip(members, value, strict=True)):
        out += bytes(-len(out) % _alignment(m))
        out += serialize(m, v)
        if _fixed_size(m) is None and i < len(members) - 1:
            ends.append(len(out))
    fixed = _fixed_size(t)
    if fixed is not None:
        out += bytes(-len(out) % _alignment(t))
        return bytes(out) or b"\0"
    if not ends:
        return bytes(out)
    w = _offset_size(len(out), len(ends))
    return bytes(out) + b"".join(e.to_bytes(w, "little") for e in reversed(ends))
