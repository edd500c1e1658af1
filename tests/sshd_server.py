"""A real OpenSSH server on 127.0.0.1 for tests and benchmarks (no pytest needed here).

Its own host key, config and authorized_keys live in a private directory; it runs in the
foreground of a child process and is stopped by PID. Client keys are made on demand,
each with the authorized_keys options (``restrict,command=…``) the caller wants.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ClientKey:
    path: Path
    server: SshServer

    @property
    def ssh_command(self) -> str:
        """For `treeship push --ssh-command` / $TREESHIP_SSH: this key only, no known_hosts."""
        return " ".join(shlex.quote(a) for a in self.ssh_argv)

    @property
    def ssh_argv(self) -> list[str]:
        return ["ssh", "-i", str(self.path), "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
                "-F", "/dev/null"]

    def url(self, path: str | os.PathLike[str]) -> str:
        return f"ssh://{self.server.user}@127.0.0.1:{self.server.port}{os.path.abspath(path)}"


class SshServer:
    """``with SshServer(workdir, path_dirs=[venv/bin]) as server: key = server.add_key(...)``"""

    def __init__(self, workdir: Path, path_dirs: list[str] | None = None) -> None:
        self.dir = Path(workdir)
        self.port = free_port()
        self.user = os.environ.get("USER") or _whoami()
        self.path_dirs = path_dirs or []
        self.proc: subprocess.Popen[bytes] | None = None
        self._n = 0

    def __enter__(self) -> SshServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        hostkey = self.dir / "host_ed25519"
        if not hostkey.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey)], check=True)
        (self.dir / "authorized_keys").touch(mode=0o600)
        path = ":".join([*self.path_dirs, "/usr/local/bin", "/usr/bin", "/bin"])
        config = self.dir / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {hostkey}",
            f"PidFile {self.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
            "StrictModes no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "AllowTcpForwarding no",
            "X11Forwarding no",
            "PrintMotd no",
            "LogLevel ERROR",
            f"SetEnv PATH={path}",
            "",
        ]))
        self.log = open(self.dir / "sshd.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.dir / 'sshd.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("sshd did not accept connections within 30 s")
            time.sleep(0.05)  # polling for readiness, not a synchronisation by sleeping

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "log"):
            self.log.close()

    def add_key(self, options: str = "", name: str | None = None) -> ClientKey:
        """A new client key, authorized with ``options`` (e.g. 'restrict,command="…"')."""
        self._n += 1
        path = self.dir / (name or f"client{self._n}")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
        pub = (path.with_suffix(".pub") if path.suffix else Path(f"{path}.pub")).read_text().strip()
        with open(self.dir / "authorized_keys", "a") as f:
            f.write(f"{options} {pub}\n" if options else f"{pub}\n")
        return ClientKey(path, self)


def _whoami() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name
