"""Shared fixtures: the real CLI as a subprocess, a real GnuPG home, real keys and trees."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

EXAMPLE_MANIFEST = {
    "schema": "treeship.provenance/v1",
    "build": {"tool": "buildstream", "tool_version": "1.6.8", "project": "baserock",
              "target": "bootstrap/stage3-sysroot.bst", "options": {"arch": "x86_64"},
              "created": "2026-11-26T08:00:00Z"},
    "elements": [
        {"name": "bootstrap/gcc.bst", "kind": "autotools", "cache_key": "a" * 64,
         "sources": [{"kind": "git", "url": "https://gitlab.example.org/gcc.git",
                      "ref": "gcc-14.2.0-3-g0123456", "commit": "0123456789abcdef0123456789abcdef01234567"}],
         "build_depends": ["bootstrap/binutils.bst"], "runtime_depends": []},
        {"name": "bootstrap/binutils.bst", "kind": "autotools", "cache_key": "b" * 64,
         "sources": [{"kind": "tar", "url": "https://ftp.example.org/binutils-2.43.tar.xz",
                      "ref": "c" * 64}],
         "build_depends": [], "runtime_depends": []},
    ],
}


def treeship_command() -> list[str]:
    exe = Path(sys.executable).with_name("treeship")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "treeship"]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout)


@pytest.fixture
def treeship(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run the real `treeship` CLI; assert the exit code (``rc=None`` to skip that)."""
    monkeypatch.delenv("TREESHIP_REPO", raising=False)

    def run(*args: str | os.PathLike[str], rc: int | None = 0, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> Result:
        full_env = dict(os.environ)
        full_env.pop("TREESHIP_REPO", None)
        full_env.update(env or {})
        p = subprocess.run([*treeship_command(), *map(str, args)], capture_output=True, text=True,
                           env=full_env, cwd=cwd or tmp_path, timeout=300, check=False)
        if rc is not None:
            assert p.returncode == rc, f"exit {p.returncode} != {rc}\nstdout: {p.stdout}\nstderr: {p.stderr}"
        return Result(p.returncode, p.stdout, p.stderr)

    return run


def ostree(*args: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """The `ostree` CLI: the independent checker."""
    return subprocess.run(["ostree", *map(str, args)], capture_output=True, text=True, check=check, timeout=300)


@dataclass
class GpgKey:
    homedir: Path
    fingerprint: str


def _make_gpg_home(path: Path, name: str) -> GpgKey:
    # A keyring file (pubring.gpg, not pubring.kbx) so that `ostree show --gpg-homedir`,
    # which reads *.gpg keyrings from the directory, finds the public key too.
    path.mkdir(mode=0o700)
    (path / "pubring.gpg").touch()
    subprocess.run(["gpg", "--homedir", str(path), "--batch", "--passphrase", "", "--quick-gen-key",
                    f"{name} <{name.lower().replace(' ', '.')}@example.org>", "ed25519", "sign", "never"],
                   check=True, capture_output=True)
    out = subprocess.run(["gpg", "--homedir", str(path), "--batch", "--with-colons", "--list-keys"],
                         check=True, capture_output=True, text=True).stdout
    fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
    return GpgKey(path, fpr)


@pytest.fixture(scope="session")
def gpg_key(tmp_path_factory: pytest.TempPathFactory):
    """A real GnuPG home with one signing key, made once per test session."""
    key = _make_gpg_home(tmp_path_factory.mktemp("gpg") / "home", "Release Signer")
    yield key
    subprocess.run(["gpgconf", "--homedir", str(key.homedir), "--kill", "all"], check=False, capture_output=True)


@pytest.fixture(scope="session")
def other_gpg_key(tmp_path_factory: pytest.TempPathFactory):
    """A second, untrusted GnuPG key in its own home."""
    key = _make_gpg_home(tmp_path_factory.mktemp("gpg-other") / "home", "Someone Else")
    yield key
    subprocess.run(["gpgconf", "--homedir", str(key.homedir), "--kill", "all"], check=False, capture_output=True)


@dataclass
class Ed25519Key:
    secret: Path
    public: Path

    @property
    def public_b64(self) -> str:
        return self.public.read_text().strip()


@pytest.fixture(scope="session")
def ed25519_key(tmp_path_factory: pytest.TempPathFactory) -> Ed25519Key:
    from treeship.signing import generate_ed25519

    secret, public = generate_ed25519(tmp_path_factory.mktemp("ed25519") / "release")
    return Ed25519Key(secret, public)


@pytest.fixture(scope="session")
def other_ed25519_key(tmp_path_factory: pytest.TempPathFactory) -> Ed25519Key:
    from treeship.signing import generate_ed25519

    secret, public = generate_ed25519(tmp_path_factory.mktemp("ed25519-other") / "other")
    return Ed25519Key(secret, public)


def make_tree(root: Path) -> Path:
    """A small tree with what a sysroot has: dirs, executables, setuid, symlinks, empty files."""
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "lib").mkdir()
    (root / "etc").mkdir()
    (root / "empty-dir").mkdir()
    (root / "usr" / "bin" / "hello").write_text("#!/bin/sh\necho hello\n")
    (root / "usr" / "bin" / "hello").chmod(0o755)
    (root / "usr" / "bin" / "su").write_bytes(b"\x7fELF" + bytes(range(256)) * 40)
    (root / "usr" / "bin" / "su").chmod(0o4755)
    (root / "usr" / "lib" / "libfoo.so.1").write_bytes(os.urandom(200_000))
    (root / "usr" / "lib" / "libfoo.so").symlink_to("libfoo.so.1")
    (root / "etc" / "os-release").write_text("NAME=Example\nVERSION=1\n")
    (root / "etc" / "shadow").write_text("root:*:1::::::\n")
    (root / "etc" / "shadow").chmod(0o600)
    (root / "etc" / "empty").touch()
    return root


@pytest.fixture
def sample_tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "tree")


@pytest.fixture
def manifest_file(tmp_path: Path) -> Path:
    p = tmp_path / "provenance.json"
    p.write_text(json.dumps(EXAMPLE_MANIFEST, indent=1))
    return p


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """Where the test's releases repository goes (not created yet)."""
    return tmp_path / "releases"


def pytest_report_header(config: pytest.Config) -> str:
    have = {tool: bool(shutil.which(tool)) for tool in ("ostree", "gpg", "zstd")}
    return "tools: " + ", ".join(f"{k}={'yes' if v else 'MISSING'}" for k, v in have.items())


# The push tests' fixtures live with their helpers in pushkit.py (tests/test_push.py,
# tests/reliability/, tests/security/); imported here so that one sshd serves them all.
from pushkit import server, sshd  # noqa: E402, F401
