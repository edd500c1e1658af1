"""How a pusher reaches a receiver: ``ssh … treeship receive`` or a local subprocess.

Both give the same thing — a process whose stdin/stdout carry the protocol — so the
local-path remote (the embedded default) runs exactly the code path SSH does.
"""

from __future__ import annotations

import configparser
import os
import select
import shlex
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import UsageError


@dataclass(frozen=True)
class Target:
    """Where a push goes: an SSH host and path, or a local path."""

    kind: str  # "ssh" | "local"
    path: str
    host: str | None = None
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        if self.kind == "local":
            return self.path
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"ssh://{user}{self.host}{port}{self.path}"


def parse_url(url: str) -> Target:
    """``ssh://[user@]host[:port]/path``, ``file:///path`` or a plain local path."""
    if url.startswith("ssh://"):
        u = urlsplit(url)
        if not u.hostname or not u.path or u.path == "/":
            raise UsageError(f"{url}: an SSH remote is ssh://[user@]host[:port]/path")
        try:
            port = u.port
        except ValueError:
            raise UsageError(f"{url}: bad port") from None
        return Target("ssh", unquote(u.path), u.hostname, unquote(u.username) if u.username else None, port)
    if url.startswith("file://"):
        u = urlsplit(url)
        if u.netloc not in ("", "localhost"):
            raise UsageError(f"{url}: a file:// URL names a local path (file:///path)")
        return Target("local", unquote(u.path))
    if "://" in url:
        raise UsageError(f"{url}: unsupported URL scheme (use ssh://, file:// or a path)")
    return Target("local", url)


def configured_remote_url(repo_path: str, name: str) -> str | None:
    """The URL of remote ``name`` in the repo's config (or remotes.d/), as `ostree remote add` writes it.

    Read directly (a key file, documented in ostree.repo-config(5)) so that the SSH
    connection can start before libostree is even loaded.
    """
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    files = [Path(repo_path, "config"), *sorted(Path(repo_path, "remotes.d").glob("*.conf"))]
    try:
        parser.read([str(f) for f in files], encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return None
    section = f'remote "{name}"'
    if parser.has_option(section, "url"):
        return parser.get(section, "url").strip()
    return None


def local_treeship() -> list[str]:
    exe = Path(sys.executable).with_name("treeship")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "treeship"]


def receive_argv(target: Target, *, ssh_command: str | None = None, receive_command: str | None = None,
                 create: bool = False) -> list[str]:
    """The command line that starts the receiver for ``target``."""
    if target.kind == "local":
        argv = [*local_treeship(), "receive", "--repo", os.path.abspath(target.path)]
        return argv + (["--create"] if create else [])
    ssh = shlex.split(ssh_command or os.environ.get("TREESHIP_SSH") or "ssh")
    if not ssh:
        raise UsageError("empty --ssh-command")
    remote = receive_command or os.environ.get("TREESHIP_RECEIVE") or "treeship"
    remote_cmd = f"{remote} receive --repo {shlex.quote(target.path)}"
    dest = f"{target.user}@{target.host}" if target.user else str(target.host)
    port = ["-p", str(target.port)] if target.port else []
    return [*ssh, *port, "-o", "BatchMode=yes", "-e", "none", "-T", "--", dest, remote_cmd]


class Connection:
    """A running receiver process; its stdin/stdout are the protocol's byte streams."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, bufsize=0)
        except OSError as e:
            raise UsageError(f"cannot run {argv[0]}: {e.strerror}") from None
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.wfd = self.proc.stdin.fileno()
        self.rfd = self.proc.stdout.fileno()
        self._stderr: deque[str] = deque(maxlen=20)
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._stderr.append(line)

    def _wait(self, timeout: float) -> int:
        """Wait for the receiver to exit, woken by the kernel (a pidfd) rather than by polling:
        Popen.wait(timeout) sleeps in steps of up to 50 ms, a sixth of a no-op push."""
        if self.proc.returncode is None:
            try:
                fd = os.pidfd_open(self.proc.pid)
            except (OSError, AttributeError):  # already reaped, or not Linux ≥ 5.3
                return self.proc.wait(timeout)
            try:
                if not select.select([fd], [], [], timeout)[0]:
                    raise subprocess.TimeoutExpired(self.argv, timeout)
            finally:
                os.close(fd)
        return self.proc.wait()

    def stderr_tail(self) -> str:
        """The last line the receiver (or ssh) printed on stderr, for error messages."""
        if self.proc.poll() is None:
            try:
                self._wait(timeout=5)
            except subprocess.TimeoutExpired:
                return ""
        self._drain.join(timeout=5)
        return self._stderr[-1] if self._stderr else ""

    def close(self, kill: bool = False) -> int:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        if kill:
            self.proc.kill()
        try:
            return self._wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
