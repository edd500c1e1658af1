"""Remotes: the ``[remote …]`` entries of the repository's config."""

from __future__ import annotations

from ..errors import RepoError, UsageError
from .core import GLib, OSTree, _Core


class _Remotes(_Core):
    """Remotes."""

    def remote_url(self, name: str) -> str | None:
        try:
            _, url = self._repo.remote_get_url(name)
        except GLib.Error:
            return None
        return url

    def remote_add(self, name: str, url: str) -> None:
        try:
            OSTree.validate_remote_name(name)
        except GLib.Error as e:
            raise UsageError(f"invalid remote name {name!r}: {e.message}") from None
        opts = GLib.Variant("a{sv}", {"gpg-verify": GLib.Variant("b", False)})
        try:
            self._repo.remote_add(name, url, opts, None)
        except GLib.Error as e:
            raise RepoError(f"remote {name!r}: {e.message}") from None

    def remotes(self) -> dict[str, str]:
        return {n: self.remote_url(n) or "" for n in (self._repo.remote_list() or [])}
