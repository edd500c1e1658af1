"""How a pusher reaches a receiver: ``ssh … treeship receive`` or a local subprocess.

Both give the same thing — a process whose stdin/stdout carry the protocol — so the
local-path remote (the embedded default) runs exactly the code path SSH does.

This module is imported before click and the CLI, to start SSH as early as possible
(see entry.py). What runs before SSH starts keeps to ``os``: ``subprocess``, ``shlex`` and
``urllib.parse`` (with the ``re`` and ``enum`` they import) cost ~12 ms of a push's start,
so plain URLs, commands and paths are handled here and the process is started with
``os.posix_spawnp``; anything unusual goes to the standard modules, with the same result
(tests/test_transport.py checks both against each other).
"""

from __future__ import annotations

import _signal  # loaded by every Python at start-up (signal.py would import enum)
import os
import sys

from ..errors import UsageError

_PLAIN_NAME = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_PLAIN_PATH = _PLAIN_NAME | frozenset("/+=:,@~")
_PLAIN_WORDS = _PLAIN_NAME | frozenset(" /=:,@+")
_SHELL_SAFE = _PLAIN_NAME | frozenset("@%+=:,/")  # what shlex.quote leaves unquoted (\w and @%+=:,./-, ASCII)


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
        host = f"[{self.host.replace('%', '%25')}]" if self.host and ":" in self.host else self.host  # IPv6
        port = f":{self.port}" if self.port is not None else ""
        return f"ssh://{user}{host}{port}{self.path}"


def _plain_ssh_url(url: str) -> Target | None:
    """``ssh://[user@]host[:port]/path`` written plainly (ASCII names, a decimal port, no
    %-escapes, query or fragment), read as urlsplit reads it; None for anything else."""
    netloc, slash, path = url[len("ssh://"):].partition("/")
    user, at, hostport = netloc.rpartition("@")
    host, colon, port = hostport.partition(":")
    if not (slash and path and host) or not _PLAIN_NAME.issuperset(host) or not _PLAIN_PATH.issuperset(path) \
            or (at and not (user and _PLAIN_NAME.issuperset(user))) \
            or (colon and not (port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) <= 65535)):
        return None
    return Target("ssh", "/" + path, host.lower(), user or None, int(port) if port else None)


def parse_url(url: str) -> Target:
    """``ssh://[user@]host[:port]/path``, ``file:///path`` or a plain local path.

    Refused rather than guessed: an empty URL, one with spaces around it, and scp's
    ``host:path`` (and ``ssh:/host/path``), which would otherwise name a local directory
    that a push creates: a release reported as pushed that never left the machine.
    """
    if url.startswith("ssh://") and (plain := _plain_ssh_url(url)) is not None:
        return plain
    return _parse_url(url)


def _parse_url(url: str) -> Target:
    """parse_url through urllib.parse, for any URL."""
    if not url.strip():
        raise UsageError("empty remote URL (ssh://[user@]host[:port]/path, file:///path or a path)")
    if url != url.strip():
        raise UsageError(f"{url!r}: spaces around a remote URL")
    from urllib.parse import unquote, urlsplit

    if url.startswith(("ssh://", "file://")) and ("?" in url or "#" in url):
        raise UsageError(f"{url}: a remote URL has no query or fragment (write a '?' in a path as %3F, a '#' as %23)")
    if url.startswith("ssh://"):
        u = urlsplit(url)
        if not u.hostname or not u.path or u.path == "/":
            raise UsageError(f"{url}: an SSH remote is ssh://[user@]host[:port]/path")
        try:
            port = u.port
        except ValueError:
            raise UsageError(f"{url}: bad port") from None
        if port == 0:
            raise UsageError(f"{url}: bad port")
        # unquoted as the path is: a scoped IPv6 address is [fe80::1%25eth0] in a URL, fe80::1%eth0 to ssh
        return Target("ssh", unquote(u.path), unquote(u.hostname), unquote(u.username) if u.username else None, port)
    if url.startswith("file://"):
        u = urlsplit(url)
        if u.netloc not in ("", "localhost"):
            raise UsageError(f"{url}: a file:// URL names a local path (file:///path)")
        return Target("local", unquote(u.path))
    if "://" in url:
        raise UsageError(f"{url}: unsupported URL scheme (use ssh://, file:// or a path)")
    head = url.partition("/")[0]
    if ":" in head:
        scheme = head.partition(":")[0]
        if scheme in ("ssh", "file"):
            raise UsageError(f"{url}: a {scheme} URL begins {scheme}:// (or write ./{url} for a local directory)")
        raise UsageError(f"{url}: scp's host:path is not a remote here; write ssh://[user@]host[:port]/path "
                         f"(or ./{url} for a local directory)")
    return Target("local", url)


def configured_remote_url(repo_path: str, name: str) -> str | None:
    """The URL of remote ``name`` in the repo's config, as `ostree remote add` writes it.

    Read directly (a key file, documented in ostree.repo-config(5)) so that the SSH
    connection can start before libostree is even loaded. Only the repository's own config,
    as libostree reads it for a repository that is not a system's (/ostree/repo) and as
    `ostree remote list` and `treeship remote list` show it: a remotes.d/ beside it is not
    read by either.
    """
    files = [os.path.join(repo_path, "config")]
    plain, url = _plain_remote_url(files, name)
    if plain:
        return url
    import configparser  # ~7 ms with the re it imports: only for a config out of the ordinary

    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read(files, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return None
    section = f'remote "{name}"'
    if parser.has_option(section, "url"):
        return parser.get(section, "url").strip()
    return None


def _plain_remote_url(files: list[str], name: str) -> tuple[bool, str | None]:
    """(True, the remote's URL or None) if every file is in the plain form ostree writes —
    ``[group]`` lines, lowercase ``key=value`` lines, ``#`` comments, empty lines — read as
    configparser reads it (the last value wins); (False, None) if configparser must read them."""
    section = f'remote "{name}"'
    url = None
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            continue  # configparser skips a file that is not there
        except (OSError, UnicodeDecodeError):
            return False, None
        group = None
        for line in text.split("\n"):  # as configparser splits (not splitlines: \x0b, \x1c… too)
            if not line or line.startswith("#"):
                continue
            if line.startswith("[") and line.endswith("]"):
                group = line[1:-1]
                if group in ("DEFAULT", ""):  # keys shown in every section; an error: configparser knows
                    return False, None
                continue
            key, eq, value = line.partition("=")
            if not eq or group is None or not key or key != key.strip() or key != key.lower() \
                    or ":" in key or line[0] in " \t;[":
                return False, None
            if group == section and key == "url":
                url = value.strip()
    return True, url


def resolve_remote(repo_path: str, remote: str) -> Target:
    """A remote name from the repo's config, or a URL / path given directly. (A remote's
    name never holds a "/", ostree refuses one: such a string is not looked up.)"""
    if "/" in remote:
        return parse_url(remote)
    url = configured_remote_url(repo_path, remote)
    if url is None:
        if remote.startswith("."):
            url = remote
        else:
            raise UsageError(f"unknown remote {remote!r} (add it with 'treeship remote add {remote} URL')")
    return parse_url(url)


def local_treeship() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "treeship")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "treeship"]


def receive_argv(target: Target, *, ssh_command: str | None = None, receive_command: str | None = None,
                 create: bool = False, prefer_cipher: bool = True) -> list[str]:
    """The command line that starts the receiver for ``target`` (``prefer_cipher``: with the
    cipher choice of transfer/ciphers.py, where it applies)."""
    if target.kind == "local":
        argv = [*local_treeship(), "receive", "--repo", os.path.abspath(target.path)]
        return argv + (["--create"] if create else [])
    ssh = split_command(ssh_command or os.environ.get("TREESHIP_SSH") or "ssh")
    if not ssh:
        raise UsageError("empty --ssh-command")
    remote = receive_command or os.environ.get("TREESHIP_RECEIVE") or "treeship"
    remote_cmd = f"{remote} receive --repo {shell_quote(target.path)}"
    dest = f"{target.user}@{target.host}" if target.user else str(target.host)
    port = ["-p", str(target.port)] if target.port is not None else []
    from .ciphers import cipher_options

    cipher = cipher_options(ssh) if prefer_cipher else []
    # At a terminal ssh may ask, as it does for git: a key's passphrase, a new host's key.
    # Anywhere else (CI, a script) it must fail at once rather than wait for an answer.
    batch = [] if _at_terminal() else ["-o", "BatchMode=yes"]
    return [*ssh, *cipher, *port, *batch, "-e", "none", "-T", "--", dest, remote_cmd]


def _at_terminal() -> bool:
    """Whether the pusher's stdin and stderr are a terminal (someone is there to answer)."""
    try:
        return os.isatty(0) and os.isatty(2)
    except OSError:
        return False


def split_command(command: str) -> list[str]:
    """``shlex.split(command)``; a command of plain words is split on spaces without it."""
    if _PLAIN_WORDS.issuperset(command):
        return command.split()
    import shlex

    try:
        return shlex.split(command)
    except ValueError as e:  # "No closing quotation", "No escaped character"
        raise UsageError(f"--ssh-command / $TREESHIP_SSH: {e}: {command}") from None


def shell_quote(word: str) -> str:
    """``shlex.quote(word)``; a word it would leave as it is is left so without it."""
    if word and _SHELL_SAFE.issuperset(word):
        return word
    import shlex

    return shlex.quote(word)


class _Timeout(Exception):
    pass


class _Child:
    """A started process whose stdin, stdout and stderr are new pipes: what a Connection
    needs of ``subprocess.Popen`` (which would cost ~10 ms to import before SSH starts)."""

    def __init__(self, argv: list[str]) -> None:
        ours: list[int] = []
        theirs: list[int] = []
        try:
            for child_reads in (True, False, False):
                r, w = os.pipe2(os.O_CLOEXEC)
                ours.append(w if child_reads else r)
                theirs.append(_above_stdio(r if child_reads else w))
            actions = [(os.POSIX_SPAWN_DUP2, fd, n) for n, fd in enumerate(theirs)]
            actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inherited_fds(set(theirs))]  # close_fds, as subprocess
            self.pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=actions,
                                       setsigdef=(_signal.SIGPIPE, _signal.SIGXFSZ))  # as subprocess restores them
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        self.stdin, self.stdout, self.stderr = ours
        self.returncode: int | None = None
        self.killed = False

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped without us (SIGCHLD ignored): gone, as Popen takes it
                self.returncode = 0
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        while self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
            except ChildProcessError:  # as in poll(); its pid may be another process's by now
                self.returncode = 0
                break
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, _signal.SIGKILL)
                self.killed = True
            except ProcessLookupError:
                pass


def _terminal_state() -> tuple[int, list[object]] | None:
    """The controlling terminal and its settings, where ssh may ask there (see receive_argv):
    ssh turns echo off to read a passphrase and turns it back on from its signal handlers,
    which a SIGKILL does not run."""
    if not _at_terminal():
        return None
    try:
        import termios

        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except (ImportError, OSError):
        return None
    try:
        return fd, termios.tcgetattr(fd)
    except termios.error:
        os.close(fd)
        return None


def _inherited_fds(keep: set[int]) -> list[int]:
    """This process's descriptors above 2 that a child would inherit (Python makes its own
    close-on-exec; one this process was started with may not be), but for ``keep``."""
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        return []
    out = []
    for fd in fds:
        if fd > 2 and fd not in keep:
            try:
                if os.get_inheritable(fd):
                    out.append(fd)
            except OSError:  # the listing's own descriptor, closed since
                continue
    return out


def _above_stdio(fd: int) -> int:
    """``fd``, or a close-on-exec copy of it numbered 3 or more. A pipe end that landed on
    0–2 (this process's own stdio was closed) could be overwritten by an earlier of the
    child's dup2s before its own, or (with a C library older than glibc 2.29) keep its
    close-on-exec flag when dup2'd onto itself; the child would start without that stream."""
    if fd > 2:
        return fd
    import fcntl

    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(fd)


class Connection:
    """A running receiver process; its stdin/stdout are the protocol's byte streams."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        if any("\0" in a for a in argv):  # a %00 in a URL, say: no program can take it
            raise UsageError("cannot run the receiver: a NUL character in its command line")
        self._terminal = _terminal_state()
        try:
            self.proc = _Child(argv)
        except OSError as e:
            self._forget_terminal()
            raise UsageError(f"cannot run {argv[0]}: {e.strerror}") from None
        self.wfd = self.proc.stdin
        self.rfd = self.proc.stdout
        import threading  # after the process has started (~3 ms)

        self._stderr: list[str] = []
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()

    def _read_stderr(self) -> None:
        with open(self.proc.stderr, "rb") as stream:
            for raw in stream:
                line = raw.decode(errors="replace").rstrip()
                if line:
                    self._stderr.append(line)
                    del self._stderr[:-20]

    def _wait(self, timeout: float) -> int:
        """Wait for the receiver to exit, woken by the kernel (a pidfd) rather than by polling
        (Popen.wait(timeout) slept in steps of up to 50 ms, a sixth of a no-op push)."""
        if self.proc.poll() is None:
            import select

            try:
                fd = os.pidfd_open(self.proc.pid)
            except ProcessLookupError:  # gone and reaped meanwhile
                return self.proc.wait()
            except OSError:  # no pidfd (Linux before 5.3): ask every 10 ms
                import time

                deadline = time.monotonic() + timeout
                while self.proc.poll() is None:
                    if time.monotonic() > deadline:
                        raise _Timeout from None
                    time.sleep(0.01)
                return self.proc.wait()
            try:
                poller = select.poll()  # not select(): it cannot take a descriptor past 1023
                poller.register(fd, select.POLLIN)
                if not poller.poll(timeout * 1000):
                    raise _Timeout
            finally:
                os.close(fd)
        return self.proc.wait()

    def stderr_tail(self) -> str:
        """The last line the receiver (or ssh) printed on stderr, for error messages."""
        if self.proc.poll() is None:
            try:
                self._wait(timeout=5)
            except _Timeout:
                return ""
        self._drain.join(timeout=5)
        return self._stderr[-1] if self._stderr else ""

    def close(self, kill: bool = False) -> int:
        if self.wfd >= 0:
            try:
                os.close(self.wfd)
            except OSError:
                pass
            self.wfd = -1
        if kill:
            self.proc.kill()
        try:
            rc = self._wait(timeout=60)
        except _Timeout:
            self.proc.kill()
            rc = self.proc.wait()
        if self.rfd >= 0:
            os.close(self.rfd)  # it has exited: nothing more will come
            self.rfd = -1
        if self._terminal is not None and self.proc.killed:  # killed while it may have been asking
            import termios

            fd, settings = self._terminal
            try:
                if os.tcgetpgrp(fd) == os.getpgrp():  # in the background, the call would stop us (SIGTTOU)
                    termios.tcsetattr(fd, termios.TCSANOW, settings)
            except (OSError, termios.error):
                pass
        self._forget_terminal()
        return rc

    def _forget_terminal(self) -> None:
        if self._terminal is not None:
            os.close(self._terminal[0])
            self._terminal = None


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

