"""How a pusher reaches a receiver: ``ssh … treeship receive`` or a local subprocess.

Both give the same thing — a process whose stdin/stdout carry the protocol — so the
local-path remote (the embedded default) runs exactly the code path SSH does.

This module is imported before click and the CLI, to start SSH as early as possible
(see entry.py), so it keeps to a few light standard modules.
"""

from __future__ import annotations

import os
import select
import shlex
import subprocess
import sys
import threading
from collections import deque
from urllib.parse import unquote, urlsplit

from ..errors import UsageError


class Target:
    """Where a push goes: an SSH host and path, or a local path.

    (A plain class, not a dataclass: importing dataclasses would cost ~15 ms before SSH starts.)
    """

    __slots__ = ("kind", "path", "host", "user", "port")

    def __init__(self, kind: str, path: str, host: str | None = None, user: str | None = None,
                 port: int | None = None) -> None:
        self.kind = kind  # "ssh" | "local"
        self.path = path
        self.host = host
        self.user = user
        self.port = port

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Target) and all(getattr(self, a) == getattr(other, a) for a in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, a) for a in self.__slots__))

    def __repr__(self) -> str:
        return f"Target({', '.join(f'{a}={getattr(self, a)!r}' for a in self.__slots__)})"

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
    import configparser  # here: a push to a URL does without

    parser = configparser.ConfigParser(interpolation=None, strict=False)
    remotes_d = os.path.join(repo_path, "remotes.d")
    try:
        extra = sorted(os.path.join(remotes_d, n) for n in os.listdir(remotes_d) if n.endswith(".conf"))
    except OSError:
        extra = []
    try:
        parser.read([os.path.join(repo_path, "config"), *extra], encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return None
    section = f'remote "{name}"'
    if parser.has_option(section, "url"):
        return parser.get(section, "url").strip()
    return None


def resolve_remote(repo_path: str, remote: str) -> Target:
    """A remote name from the repo's config, or a URL / path given directly."""
    url = configured_remote_url(repo_path, remote)
    if url is None:
        if "://" in remote or "/" in remote or remote.startswith("."):
            url = remote
        else:
            raise UsageError(f"unknown remote {remote!r} (add it with 'treeship remote add {remote} URL')")
    return parse_url(url)


def local_treeship() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "treeship")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "treeship"]


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
                poller = select.poll()  # not select(): it cannot take a descriptor past 1023
                poller.register(fd, select.POLLIN)
                if not poller.poll(timeout * 1000):
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


_prestarted: dict[tuple[str, ...], Connection] = {}


def prestart(argv: list[str]) -> None:
    """Start a receiver before the CLI has loaded (entry.py): the SSH handshake, a quarter
    of a second, then overlaps loading click, the CLI and libostree. Taken by ``connect``;
    one nobody takes is killed by ``discard_prestarted`` on the way out."""
    try:
        _prestarted[tuple(argv)] = Connection(argv)
    except UsageError:
        pass  # the ordinary path will say it


def connect(argv: list[str]) -> Connection:
    """The receiver for ``argv``: the one started early for exactly this command line, or a new one."""
    return _prestarted.pop(tuple(argv), None) or Connection(argv)


def discard_prestarted() -> None:
    for conn in _prestarted.values():
        conn.close(kill=True)
    _prestarted.clear()

