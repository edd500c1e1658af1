"""GLib's GVariant through ``ctypes``: untrusted metadata checked by GLib's own code without
PyGObject.

A plain push's receiver does without libostree (see :mod:`treeship.filerepo`): loading
PyGObject and libostree costs it ~40 ms of CPU while objects stream, which is what the two
cores are short of. It still needs GLib's judgement of a received dirtree, dirmeta or commit
(is it a GVariant of its type in normal form?) and a few of a commit's fields. That is
``libglib-2.0.so.0``, which libostree links against anyway, reached here in about a
millisecond; nothing of GLib's validation is written again in Python.
"""

from __future__ import annotations

import ctypes

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
        if self._ptr:
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
        return Variant(_glib.g_variant_get_variant(self._ptr))

    def lookup(self, key: str) -> Variant | None:
        """In an ``a{sv}``: the value under ``key`` (unboxed), or None."""
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
