"""The published summary: ``summary`` and ``summary.sig`` switched together, one generation
at a time, whatever regenerates and signs it (libostree in-process, or ``ostree summary -u``
for a plain push's receiver: see :mod:`treeship.filerepo`)."""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from . import layout
from .errors import StorageError

SUMMARY_DIR = layout.SUMMARY_DIR


def _generation_name(refs: dict[str, str] | None = None) -> str:
    """A new generation's name: unique, and carrying a digest of the refs its summary lists."""
    return layout.generation_name(f"{time.time_ns():x}-{os.urandom(3).hex()}", refs)


def _switch_symlink(link: Path, target: str, workdir: Path) -> None:
    """Point ``link`` at ``target`` in one rename (a symlink made in ``workdir``, same filesystem)."""
    tmp = workdir / f".link-{os.urandom(4).hex()}"
    os.symlink(target, tmp)
    os.replace(tmp, link)


def later_mtime(path: str | os.PathLike[str], than: str | os.PathLike[str]) -> None:
    """Make ``path``'s mtime later than ``than``'s, even within one second: HTTP caches (and
    clients' If-Modified-Since) compare mtimes, so a file published in place of another must
    not look older or the same. Best effort: nothing to compare with (``than`` is missing, or
    cannot be looked at) leaves ``path`` as it is."""
    try:
        old = os.stat(than).st_mtime_ns
    except OSError:
        return
    if os.stat(path).st_mtime_ns <= old:
        os.utime(path, ns=(old + 1_000_000_000, old + 1_000_000_000))


def publish(path: Path, workdir: Path, regenerate: Callable[[Path], dict[str, str] | None]) -> None:
    """Regenerate the summary, sign it, and publish both in one rename.

    libostree writes a new summary in place (atomically), then deletes summary.sig: a
    crash in between leaves the old signatures beside the new summary, and until new
    ones are written, clients that verify find none. Two files cannot be replaced in one
    step, and a summary.sig holding old and new signatures is no way out either: a GPG
    client (libostree 2022.7, through gpgme) gives up when the *first* signature is bad.

    So ``summary`` and ``summary.sig`` are symlinks to ``treeship-summary/current/…``,
    and ``current`` names one generation directory holding both files. A new generation
    is made in ``workdir``: the summary regenerated in a shadow of the repository
    (symlinks to its config, objects, refs and deltas) and signed there by
    ``regenerate(shadow)``, which returns the refs the summary lists (None: unknown); then
    it is moved in, and ``current`` is switched in one rename.
    Whenever this stops, the two names resolve to one generation. A summary written by
    something else (``ostree summary -u``) is adopted first: its files become a
    generation of their own, so nothing a client sees changes before the switch.
    """
    shadow = workdir / "summary-repo"
    shadow.mkdir()
    try:
        for entry in os.scandir(path):
            if entry.name in ("summary", "summary.sig", "tmp", SUMMARY_DIR) or \
                    (entry.name.startswith(".") and entry.name != ".lock"):
                continue
            os.symlink(os.path.abspath(entry.path), shadow / entry.name)
        if (path / "summary").exists():
            os.link(path / "summary", shadow / "summary")  # so that the new one's mtime is later
        listed = regenerate(shadow)  # named in the generation: a no-op push checks it without libostree
        for entry in os.scandir(shadow):  # what was written beside the summary goes to the repo
            if entry.name in ("summary", "summary.sig", "tmp") or entry.is_symlink() or \
                    (entry.is_dir() and (path / entry.name).exists()):
                continue
            os.replace(entry.path, path / entry.name)  # e.g. config (core.indexed-deltas)
        gens = path / SUMMARY_DIR
        gens.mkdir(exist_ok=True)
        previous = _adopt(path, workdir)
        gen = workdir / "generation"
        gen.mkdir()
        os.chmod(gen, 0o755)  # noqa: S103 - published: a web server reads it
        os.rename(shadow / "summary", gen / "summary")
        if (shadow / "summary.sig").exists():
            os.rename(shadow / "summary.sig", gen / "summary.sig")
            later_mtime(gen / "summary.sig", path / "summary.sig")
        name = _generation_name(listed)
        os.rename(gen, gens / name)
        _switch_symlink(gens / "current", name, workdir)
        for d in gens.iterdir():  # keep the published generation and the one before it
            if d.name not in ("current", name, previous) and not d.is_symlink():
                shutil.rmtree(d, ignore_errors=True)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise StorageError(f"{path}: no space left on device (publishing the summary)") from None
        raise StorageError(f"{path}: publishing the summary: {e.strerror}") from None


def _adopt(path: Path, workdir: Path) -> str | None:
    """Make ``summary`` and ``summary.sig`` the symlinks publish switches, each
    still showing what it showed; the name of the generation ``current`` names."""
    gens = path / SUMMARY_DIR
    current = gens / "current"
    names = ("summary", "summary.sig")
    ours = {n: f"{SUMMARY_DIR}/current/{n}" for n in names}
    if current.is_symlink() and all((path / n).is_symlink() and os.readlink(path / n) == ours[n]
                                    for n in names):
        return os.readlink(current)
    gen = workdir / "adopted"
    gen.mkdir()
    os.chmod(gen, 0o755)  # noqa: S103 - published: a web server reads it
    for n in names:
        if (path / n).exists():  # a regular file, or one of ours: what a client gets now
            os.link(path / n, gen / n)
    name = _generation_name()
    os.rename(gen, gens / name)
    _switch_symlink(current, name, workdir)  # the links that already pass through it show the same
    for n in names:
        if not ((path / n).is_symlink() and os.readlink(path / n) == ours[n]):
            _switch_symlink(path / n, ours[n], workdir)  # same content, through the link
    return name
