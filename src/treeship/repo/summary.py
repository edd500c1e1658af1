"""The summary: regenerated in a shadow of the repository, signed, and published with its
signatures as one generation (``summary`` and ``summary.sig`` switched together)."""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .. import layout
from ..errors import SigningError, StorageError
from .core import GLib, OSTree, _Core, _storage_error

if TYPE_CHECKING:
    from . import Repo


SUMMARY_DIR = layout.SUMMARY_DIR


def _generation_name(refs: dict[str, str] | None = None) -> str:
    """A new generation's name: unique, and carrying a digest of the refs its summary lists."""
    return layout.generation_name(f"{time.time_ns():x}-{os.urandom(3).hex()}", refs)


def _switch_symlink(link: Path, target: str, workdir: Path) -> None:
    """Point ``link`` at ``target`` in one rename (a symlink made in ``workdir``, same filesystem)."""
    tmp = workdir / f".link-{os.urandom(4).hex()}"
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _later_mtime(path: Path, than: Path) -> None:
    """Make ``path``'s mtime later than ``than``'s (HTTP caches compare them), even within one second."""
    try:
        old = os.stat(than).st_mtime_ns
    except OSError:
        return
    if os.stat(path).st_mtime_ns <= old:
        os.utime(path, ns=(old + 1_000_000_000, old + 1_000_000_000))


class _Summary(_Core):
    """The summary and its signatures."""

    def regenerate_summary(self) -> None:
        try:
            self._repo.regenerate_summary(None, None)
        except GLib.Error as e:
            raise _storage_error(e, f"{self.path}: regenerating the summary") from None

    def publish_summary(self, workdir: Path, sign: Callable[[Repo], None] | None = None) -> None:
        """Regenerate the summary, sign it, and publish both in one rename.

        libostree writes a new summary in place (atomically), then deletes summary.sig: a
        crash in between leaves the old signatures beside the new summary, and until new
        ones are written, clients that verify find none. Two files cannot be replaced in one
        step, and a summary.sig holding old and new signatures is no way out either: a GPG
        client (libostree 2022.7, through gpgme) gives up when the *first* signature is bad.

        So ``summary`` and ``summary.sig`` are symlinks to ``treeship-summary/current/…``,
        and ``current`` names one generation directory holding both files. A new generation
        is made in ``workdir``: the summary regenerated in a shadow of the repository
        (symlinks to its config, objects, refs and deltas), signed there by
        ``sign(shadow_repo)``; then it is moved in, and ``current`` is switched in one rename.
        Whenever this stops, the two names resolve to one generation. A summary written by
        something else (``ostree summary -u``) is adopted first: its files become a
        generation of their own, so nothing a client sees changes before the switch.
        """
        shadow = workdir / "summary-repo"
        shadow.mkdir()
        try:
            for entry in os.scandir(self.path):
                if entry.name in ("summary", "summary.sig", "tmp", SUMMARY_DIR) or \
                        (entry.name.startswith(".") and entry.name != ".lock"):
                    continue
                os.symlink(os.path.abspath(entry.path), shadow / entry.name)
            if (self.path / "summary").exists():
                os.link(self.path / "summary", shadow / "summary")  # so that the new one's mtime is later
            shadow_repo = type(self).open(shadow)
            shadow_repo.regenerate_summary()
            listed = shadow_repo.summary_refs()  # named in the generation: a no-op push checks it without libostree
            if sign is not None:
                sign(shadow_repo)
            for entry in os.scandir(shadow):  # what libostree wrote beside the summary goes to the repo
                if entry.name in ("summary", "summary.sig", "tmp") or entry.is_symlink() or \
                        (entry.is_dir() and (self.path / entry.name).exists()):
                    continue
                os.replace(entry.path, self.path / entry.name)  # e.g. config (core.indexed-deltas)
            gens = self.path / SUMMARY_DIR
            gens.mkdir(exist_ok=True)
            previous = self._adopt_summary(workdir)
            gen = workdir / "generation"
            gen.mkdir()
            os.chmod(gen, 0o755)  # noqa: S103 - published: a web server reads it
            os.rename(shadow / "summary", gen / "summary")
            if (shadow / "summary.sig").exists():
                os.rename(shadow / "summary.sig", gen / "summary.sig")
                _later_mtime(gen / "summary.sig", self.path / "summary.sig")
            name = _generation_name(listed)
            os.rename(gen, gens / name)
            _switch_symlink(gens / "current", name, workdir)
            for d in gens.iterdir():  # keep the published generation and the one before it
                if d.name not in ("current", name, previous) and not d.is_symlink():
                    shutil.rmtree(d, ignore_errors=True)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise StorageError(f"{self.path}: no space left on device (publishing the summary)") from None
            raise StorageError(f"{self.path}: publishing the summary: {e.strerror}") from None

    def _adopt_summary(self, workdir: Path) -> str | None:
        """Make ``summary`` and ``summary.sig`` the symlinks publish_summary switches, each
        still showing what it showed; the name of the generation ``current`` names."""
        gens = self.path / SUMMARY_DIR
        current = gens / "current"
        names = ("summary", "summary.sig")
        ours = {n: f"{SUMMARY_DIR}/current/{n}" for n in names}
        if current.is_symlink() and all((self.path / n).is_symlink() and os.readlink(self.path / n) == ours[n]
                                        for n in names):
            return os.readlink(current)
        gen = workdir / "adopted"
        gen.mkdir()
        os.chmod(gen, 0o755)  # noqa: S103 - published: a web server reads it
        for n in names:
            if (self.path / n).exists():  # a regular file, or one of ours: what a client gets now
                os.link(self.path / n, gen / n)
        name = _generation_name()
        os.rename(gen, gens / name)
        _switch_symlink(current, name, workdir)  # the links that already pass through it show the same
        for n in names:
            if not ((self.path / n).is_symlink() and os.readlink(self.path / n) == ours[n]):
                _switch_symlink(self.path / n, ours[n], workdir)  # same content, through the link
        return name

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
        entries[key] = GLib.Variant("aay", signatures)
        data = GLib.Variant("a{sv}", entries).get_data_as_bytes().get_data()
        tmp = sig_path.with_name(f".summary.sig.{os.getpid()}")
        tmp.write_bytes(bytes(data or b""))
        os.replace(tmp, sig_path)
