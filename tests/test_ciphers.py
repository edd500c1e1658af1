"""The pusher's ssh asks for AES-GCM first where the CPU has AES instructions, and leaves
alone whoever chose a cipher (treeship/transfer/ciphers.py). The last test asks the real
ssh and sshd which cipher they agreed on."""

from __future__ import annotations

import fnmatch
import random
import subprocess
from pathlib import Path

import pytest

from pushkit import BRANCH, fsck, refs, release, write_tree
from sshd_server import SshServer
from treeship.transfer import ciphers
from treeship.transfer.ciphers import PREFERRED, _matches, cipher_options, cipher_refused
from treeship.transfer.transport import Target, receive_argv

AES_HERE = bool(cipher_options(["ssh", "-F", "/dev/null"]))  # this machine's CPU

X86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 aes avx2 pclmulqdq sha_ni\n\n"
X86_NO_AES = "processor\t: 0\nflags\t\t: fpu sse2 avx2 pclmulqdq\n\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd aes pmull sha1 sha2\n\n"
ARM_NO_PMULL = "processor\t: 0\nFeatures\t: fp asimd aes sha1\n\n"


@pytest.fixture
def machine(tmp_path: Path):
    """A home without ssh configuration, a system configuration, and a CPU, all in tmp_path."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    etc = tmp_path / "etc" / "ssh"
    etc.mkdir(parents=True)
    cpu = tmp_path / "cpuinfo"
    cpu.write_text(X86)

    def options(*ssh: str) -> list[str]:
        return cipher_options(list(ssh), cpuinfo=str(cpu), home=str(home), system_config=str(etc / "ssh_config"))

    options.home, options.etc, options.cpu = home, etc, cpu  # type: ignore[attr-defined]
    return options


def test_aes_gcm_first_where_nothing_chose_a_cipher(machine):
    assert machine("ssh") == ["-c", PREFERRED]
    assert machine("/usr/bin/ssh", "-i", "key", "-o", "BatchMode=yes", "-4v") == ["-c", PREFERRED]
    # only the order changes: the same six ciphers as OpenSSH's default set
    assert sorted(PREFERRED.split(",")) == sorted(["chacha20-poly1305@openssh.com", "aes128-ctr", "aes192-ctr",
                                                   "aes256-ctr", "aes128-gcm@openssh.com", "aes256-gcm@openssh.com"])


@pytest.mark.parametrize("cpuinfo, expected", [(X86, True), (ARM, True), (X86_NO_AES, False),
                                               (ARM_NO_PMULL, False), ("", False)])
def test_only_where_the_cpu_has_aes_and_carry_less_multiply(machine, cpuinfo, expected):
    machine.cpu.write_text(cpuinfo)
    assert (machine("ssh") != []) is expected


def test_no_cpuinfo_means_no_change(machine):
    machine.cpu.unlink()
    assert machine("ssh") == []


@pytest.mark.parametrize("ssh", [
    ["ssh", "-c", "aes256-ctr"],
    ["ssh", "-caes256-ctr"],
    ["ssh", "-4c", "aes256-ctr"],
    ["ssh", "-o", "Ciphers=aes256-ctr"],
    ["ssh", "-oCiphers aes256-ctr"],
    ["ssh", "-o", "  ciphers=^chacha20-poly1305@openssh.com"],
    ["dbclient"],
    ["/opt/bin/autossh", "-M", "0"],
    ["ssh", "-i"],  # not options ssh would take: not ours to read
    ["ssh", "jumphost"],
])
def test_a_cipher_chosen_in_the_command_is_left_alone(machine, ssh):
    assert machine(*ssh) == []


@pytest.mark.parametrize("where", ["user", "system", "included", "included-relative"])
def test_a_ciphers_line_in_any_configuration_is_left_alone(machine, where):
    user, system = machine.home / ".ssh" / "config", machine.etc / "ssh_config"
    line = "Host releases.example.org\n    Ciphers=aes256-ctr\n"
    if where == "user":
        user.write_text("Host *\n  ServerAliveInterval 30\n" + line)
    elif where == "system":
        system.write_text("# Ciphers aes256-ctr (a comment)\n" + line)
    elif where == "included":
        (machine.etc / "ssh_config.d").mkdir()
        (machine.etc / "ssh_config.d" / "10-other.conf").write_text("ForwardAgent no\n")
        (machine.etc / "ssh_config.d" / "50-policy.conf").write_text(line)
        system.write_text(f"Include {machine.etc}/ssh_config.d/*.conf\n")
    else:
        (machine.home / ".ssh" / "conf.d").mkdir()
        (machine.home / ".ssh" / "conf.d" / "work").write_text(line)
        user.write_text("Include conf.d/*\n")
    assert machine("ssh") == []


def test_comments_and_other_keywords_are_not_a_choice(machine):
    (machine.home / ".ssh" / "config").write_text("# Ciphers aes256-ctr\n  #Ciphers x\nHost *\n  Compression no\n")
    assert machine("ssh") == ["-c", PREFERRED]


def test_configuration_without_ciphers_is_read_through(machine):
    (machine.etc / "ssh_config.d").mkdir()
    (machine.etc / "ssh_config.d" / "20-systemd-ssh-proxy.conf").write_text("Host .host\n  ProxyCommand none\n")
    (machine.etc / "ssh_config.d" / "50-policy.conf.disabled").write_text("Ciphers aes256-ctr\n")
    (machine.etc / "ssh_config.d" / ".hidden.conf").write_text("Ciphers aes256-ctr\n")
    (machine.etc / "ssh_config").write_text("Include /etc/ssh/nonexistent.d/*.conf\n"
                                            f"Include {machine.etc}/ssh_config.d/*.conf\n"
                                            "Host *\n    SendEnv LANG LC_*\n    HashKnownHosts yes\n")
    (machine.home / ".ssh" / "config").write_text("Host releases\n  User alice\n  CipherFoo no\n")
    assert machine("ssh") == ["-c", PREFERRED]


@pytest.mark.parametrize("include", ["Include conf.d/[ab]*", "Include /etc/*/ssh_config", "Include ~/%d/x",
                                     'Include "with space/x"', "Include ~alice/.ssh/config",
                                     '"Ciphers" aes256-ctr', "Include /dev/stdin"])
def test_an_include_it_cannot_follow_for_sure_leaves_it_alone(machine, include):
    (machine.home / ".ssh" / "config").write_text(include + "\n")
    assert machine("ssh") == []


def test_includes_that_loop_leave_it_alone(machine):
    (machine.home / ".ssh" / "config").write_text("Include config\n")
    assert machine("ssh") == []


def test_with_dash_f_only_that_file_counts(machine, tmp_path):
    (machine.home / ".ssh" / "config").write_text("Ciphers aes256-ctr\n")
    (machine.etc / "ssh_config").write_text("Ciphers aes256-ctr\n")
    assert machine("ssh", "-F", "/dev/null") == ["-c", PREFERRED]
    assert machine("ssh", "-F", "none") == ["-c", PREFERRED]
    mine = tmp_path / "mine"
    mine.write_text("Host *\n  ciphers chacha20-poly1305@openssh.com\n")
    assert machine("ssh", "-F", str(mine)) == []
    mine.write_text("Host *\n  Compression no\n")
    assert machine("ssh", f"-F{mine}") == ["-c", PREFERRED]


def test_wildcards_match_as_glob_matches_them():
    rng = random.Random(7)
    for _ in range(3000):
        name = "".join(rng.choice("ab.c") for _ in range(rng.randint(0, 6)))
        pattern = "".join(rng.choice("ab.c*?") for _ in range(rng.randint(0, 5)))
        expected = fnmatch.fnmatchcase(name, pattern) and not (name.startswith(".") and not pattern.startswith("."))
        assert _matches(pattern, name) is expected, (pattern, name)


def test_the_home_is_the_password_databases(machine, monkeypatch, tmp_path):
    """As ssh's: $HOME pointing elsewhere (sudo -E, CI containers) does not hide ~/.ssh/config."""
    import pwd

    monkeypatch.setattr(pwd, "getpwuid", lambda uid: type("pw", (), {"pw_dir": str(machine.home)}))
    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
    assert ciphers._home() == str(machine.home)


def test_the_cipher_goes_before_the_destination(monkeypatch):
    monkeypatch.setattr(ciphers, "_cpu_has_aes", lambda cpuinfo: True)
    monkeypatch.setattr(ciphers, "_home", lambda: "/nonexistent")
    target = Target("ssh", "/srv/releases", "h", "u", 2222)
    argv = receive_argv(target, ssh_command="ssh -F /dev/null")
    assert argv[:5] == ["ssh", "-F", "/dev/null", "-c", PREFERRED]
    assert argv[argv.index("--"):] == ["--", "u@h", "treeship receive --repo /srv/releases"]
    assert receive_argv(target, ssh_command="ssh -F /dev/null", prefer_cipher=False)[:5] == \
        ["ssh", "-F", "/dev/null", "-p", "2222"]


@pytest.mark.parametrize("line, refused", [
    ("Unknown cipher type 'aes128-gcm@openssh.com,chacha20-poly1305@openssh.com'", True),
    ("command-line line 0: Bad SSH2 cipher spec '^aes128-gcm@openssh.com'.", True),
    ("Unable to negotiate with 10.0.0.1 port 22: no matching cipher found. Their offer: aes256-cbc", True),
    ("Permission denied (publickey).", False),
    ("", False),
])
def test_what_counts_as_ssh_refusing_the_cipher(line, refused):
    assert cipher_refused(line) is refused


def test_ssh_and_sshd_agree_on_aes_gcm(sshd: SshServer):
    """The real ssh takes the option, and the real sshd agrees to it (or, where the CPU has no
    AES instructions, to OpenSSH's own first choice)."""
    key = sshd.add_key('restrict,command="true"')
    argv = receive_argv(Target("ssh", "/nowhere", "127.0.0.1", sshd.user, sshd.port),
                        ssh_command=key.ssh_command + " -v")
    out = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    agreed = [line.split("cipher: ")[1].split()[0] for line in out.stderr.splitlines()
              if "kex: client->server cipher:" in line]
    ours = cipher_options(["ssh", "-F", "/dev/null"])
    assert agreed == ["aes128-gcm@openssh.com" if ours else "chacha20-poly1305@openssh.com"]


def _fake_ssh(path: Path, calls: Path, body: str) -> Path:
    """An executable named ssh (so treeship takes it for OpenSSH's) that logs its arguments."""
    path.parent.mkdir(exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n{body}')
    path.chmod(0o755)
    return path


@pytest.mark.skipif(not AES_HERE, reason="no AES instructions here: treeship adds no -c")
def test_an_ssh_that_refuses_the_cipher_gets_a_second_try_without_it(treeship, server, tmp_path):
    """An ssh built without AES-GCM (no OpenSSL, say) refuses the whole -c list: the push goes
    on without it, over one more connection, instead of failing where it worked before."""
    srv = server()
    local = tmp_path / "local"
    commit = release(treeship, write_tree(tmp_path / "tree"), local)
    calls = tmp_path / "calls"
    fake = _fake_ssh(tmp_path / "bin" / "ssh", calls, """for a in "$@"; do
    if [ "$a" = "-c" ]; then echo "Unknown cipher type 'aes128-gcm@openssh.com'" >&2; exit 255; fi
done
exec /usr/bin/ssh "$@"
""")
    assert srv.ssh.startswith("ssh ")
    out = treeship("push", "--repo", local, "--ssh-command", f"{fake} {srv.ssh[4:]}", srv.url, BRANCH,
                   "--json").json()
    assert out["ok"] and refs(srv.repo) == {BRANCH: commit}
    fsck(srv.repo)
    tries = calls.read_text().splitlines()
    assert len(tries) == 2 and " -c " in f" {tries[0]} " and " -c " not in f" {tries[1]} "


def test_a_refusal_that_is_not_about_ciphers_is_not_retried(treeship, server, tmp_path):
    srv = server()
    local = tmp_path / "local"
    release(treeship, write_tree(tmp_path / "tree"), local)
    calls = tmp_path / "calls"
    fake = _fake_ssh(tmp_path / "bin" / "ssh", calls, 'echo "Permission denied (publickey)." >&2\nexit 255\n')
    r = treeship("push", "--repo", local, "--ssh-command", str(fake), srv.url, BRANCH, rc=None)
    assert r.returncode != 0 and "Permission denied" in r.stderr
    assert len(calls.read_text().splitlines()) == 1
