"""The summary: regenerated in a shadow of the repository, signed, and published with its
signatures as one generation (``summary`` and ``summary.sig`` switched together)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .. import generations, layout
from ..errors import SigningError
from .core import GLib, OSTree, _Core, _storage_error, aay

if TYPE_CHECKING:
    from . import Repo


SUMMARY_DIR = layout.SUMMARY_DIR


class _Summary(_Core):
    """The summary and its signatures."""

    def regenerate_summary(self) -> None:
        try:
            self._repo.regenerate_summary(None, None)
        except GLib.Error as e:
            raise _storage_error(e, f"{self.path}: regenerating the summary") from None

    def publish_summary(self, workdir: Path, sign: Callable[[Repo], None] | None = None) -> None:
        """Regenerate the summary, sign it with ``sign(shadow_repo)``, and publish both in one
        rename (see generations.publish)."""

        def regenerate(shadow: Path) -> dict[str, str] | None:
            shadow_repo = type(self).open(shadow)
            shadow_repo.regenerate_summary()
            listed = shadow_repo.summary_refs()  # named in the generation: a no-op push checks it without libostree
            if sign is not None:
                sign(shadow_repo)
            return listed

        generations.publish(self.path, workdir, regenerate)

    def summary_refs(self) -> dict[str, str] | None:
        """The refs the published summary lists (None: no summary, or unreadable)."""
        try:
            data = (self.path / "summary").read_bytes()
        except OSError:
            return None
        v = GLib.Variant.new_from_bytes(GLib.VariantType.new("(a(s(taya{sv}))a{sv})"), GLib.Bytes.new(data), False)
        if not v.is_normal_form():
            return None
        entries = v.get_child_value(0)
        out = {}
        for i in range(entries.n_children()):
            entry = entries.get_child_value(i)
            out[entry.get_child_value(0).get_string()] = OSTree.checksum_from_bytes_v(
                entry.get_child_value(1).get_child_value(1))
        return out

    def sign_summary_gpg(self, key_ids: list[str], homedir: str | None) -> None:
        try:
            self._repo.add_gpg_signature_summary(key_ids, homedir, None)
        except GLib.Error as e:
            raise SigningError(f"signing the summary with GPG: {e.message}") from None

    def summary_bytes(self) -> bytes:
        return (self.path / "summary").read_bytes()

    def add_summary_signatures(self, key: str, signatures: list[bytes]) -> None:
        """Append signatures to summary.sig (replaced atomically, so readers see old or new)."""
        sig_path = self.path / "summary.sig"
        entries: dict[str, GLib.Variant] = {}
        if sig_path.exists():
            old = GLib.Variant.new_from_bytes(GLib.VariantType.new("a{sv}"), GLib.Bytes.new(sig_path.read_bytes()),
                                              False)
            entries = {old.get_child_value(i).get_child_value(0).get_string():
                       old.get_child_value(i).get_child_value(1).get_variant() for i in range(old.n_children())}
        entries[key] = aay(signatures)
        data = GLib.Variant("a{sv}", entries).get_data_as_bytes().get_data()
        tmp = sig_path.with_name(f".summary.sig.{os.getpid()}")
        tmp.write_bytes(bytes(data or b""))
        os.replace(tmp, sig_path)
