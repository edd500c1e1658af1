"""Where a manifest's source came from, as the URIs that SPDX and SLSA expect.

Pure functions over one source record (``kind``, ``url``, ``ref``, ``commit``, ``sha256``).
"""

from __future__ import annotations

import re
from typing import Any

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SCP_LIKE = re.compile(r"^(?:(?P<user>[^@/:]+)@)?(?P<host>[^/:]+):(?P<path>(?!//).+)$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

#: Source kinds whose ``ref`` is the sha256 of the downloaded file (BuildStream's).
SHA256_REF_KINDS = {"tar", "zip", "remote", "deb", "downloadablefile"}
#: Version control systems SPDX knows in a download location (``<vcs>+<url>@<revision>``).
VCS = ("git", "hg", "svn", "bzr")


def vcs(src: dict[str, Any]) -> str | None:
    """``git`` for ``git``, ``git_tag``, ``git_repo``…: the VCS a source kind fetches from."""
    kind = str(src.get("kind") or "")
    return next((v for v in VCS if kind == v or kind.startswith(f"{v}_")), None)


def transport_url(url: str) -> str:
    """A URL with a scheme: scp-like ``user@host:path`` becomes ``ssh://user@host/path``."""
    if _SCHEME.match(url):
        return url
    m = _SCP_LIKE.match(url)
    if m and not url.startswith("/"):
        user = f"{m['user']}@" if m["user"] else ""
        return f"ssh://{user}{m['host']}/{m['path'].lstrip('/')}"
    if url.startswith("/"):
        return f"file://{url}"
    return url


def vcs_uri(src: dict[str, Any], revision: str | None) -> str | None:
    """``git+https://host/repo.git@<revision>``; None when the source has no URL."""
    url = src.get("url")
    tool = vcs(src)
    if not url or tool is None:
        return None
    base = url if url.startswith(f"{tool}+") else f"{tool}+{transport_url(url)}"
    return f"{base}@{revision}" if revision else base


def download_location(src: dict[str, Any]) -> str | None:
    """An SPDX download location pinning the exact revision: the commit for a VCS, else the URL."""
    if vcs(src):
        return vcs_uri(src, src.get("commit") or src.get("ref"))
    url = src.get("url")
    return transport_url(url) if url else None


def sha256_of(src: dict[str, Any]) -> str | None:
    """The sha256 of what the source downloads, when the manifest knows it."""
    if src.get("sha256"):
        return str(src["sha256"])
    ref = src.get("ref")
    if src.get("kind") in SHA256_REF_KINDS and isinstance(ref, str) and _HEX64.match(ref):
        return ref
    return None


def source_name(element: str, index: int, src: dict[str, Any]) -> str:
    """A readable name: the URL's (or local path's) last component (``gcc`` for ``…/gcc.git``)."""
    url = str(src.get("url") or src.get("path") or "").rstrip("/")
    last = re.split(r"[/:]", url)[-1] if url else ""
    last = re.sub(r"\.git$", "", last)
    return last or f"{element} source {index + 1}"
