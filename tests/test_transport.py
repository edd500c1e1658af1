"""transport.py's plain paths against the standard modules they stand in for.

Before SSH starts, a push reads plain URLs, commands, paths and repo configs itself and
starts ssh with os.posix_spawnp, sparing ~12 ms of imports (subprocess, shlex, urllib.parse,
configparser, re). Here each shortcut must give what the standard module gives, and the
process must start as subprocess would start it.
"""

from __future__ import annotations

import configparser
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treeship.errors import UsageError
from treeship.transfer import transport
from treeship.transfer.transport import Connection

NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", min_size=1, max_size=12)
PATH = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789._-/+=:,@~", min_size=1, max_size=30)
PORT = st.one_of(st.none(), st.integers(0, 65535).map(str), st.sampled_from(["00022", "65536", "99999", "", "2x"]))


def _general(url: str) -> transport.Target | str:
    try:
        return transport._parse_url(url)
    except UsageError as e:
        return e.message


@settings(max_examples=400, deadline=None)
@given(user=st.one_of(st.none(), st.just(""), NAME), host=NAME, port=PORT, path=PATH)
def test_plain_ssh_urls_read_as_urlsplit_reads_them(user, host, port, path):
    url = "ssh://" + (f"{user}@" if user is not None else "") + host + (f":{port}" if port is not None else "") \
        + "/" + path
    plain = transport._plain_ssh_url(url)
    if plain is not None:
        assert plain == _general(url), url
    got = _general(url) if plain is None else plain
    try:
        assert transport.parse_url(url) == got
    except UsageError as e:
        assert e.message == got


@pytest.mark.parametrize("url", ["ssh://Alice@Host.Example:2222/srv/r", "ssh://h/%7Euser/r", "ssh://h/r?x",
                                 "ssh://[::1]:22/r", "ssh://u%40x@h/r", "ssh://h:/r", "ssh://h/", "ssh://h",
                                 "ssh://@h/r", "ssh://h:70000/r", "ssh://h:2222/r#f", "ssh://h/a b"])
def test_urls_out_of_the_ordinary_read_as_before(url):
    assert (transport._plain_ssh_url(url) or _general(url)) == _general(url)
    if transport._plain_ssh_url(url) is None:
        try:
            assert transport.parse_url(url) == _general(url)
        except UsageError as e:
            assert e.message == _general(url)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="abcXYZ019 ._-/=:,@+'\"\\#~\t$*", max_size=40))
def test_commands_split_as_shlex_splits_them(command):
    try:
        expected = shlex.split(command)
    except ValueError as e:  # an unclosed quote: shlex's words, as one usage error
        with pytest.raises(UsageError, match=str(e)):
            transport.split_command(command)
        return
    assert transport.split_command(command) == expected


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="abcXYZ019 ._-/=:,@+%'\"\\#~\t$*é", max_size=30))
def test_paths_quoted_as_shlex_quotes_them(word):
    assert transport.shell_quote(word) == shlex.quote(word)


def _configparser_url(files: list[Path], name: str) -> str | None:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read([str(f) for f in files], encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return None
    section = f'remote "{name}"'
    return parser.get(section, "url").strip() if parser.has_option(section, "url") else None


CONFIGS = [
    '[core]\nrepo_version=1\nmode=archive-z2\n\n[remote "releases"]\nurl=ssh://r@h:2222/srv/r\ngpg-verify=false\n',
    '[core]\nmode=archive\n[remote "releases"]\nurl=ssh://a/x\n[remote "releases"]\nurl=ssh://b/y\n',
    '# made by hand\n[remote "other"]\nurl=ssh://o/x\n',
    '[remote "releases"]\nurl = ssh://spaced/x\n',
    '[remote "releases"]\nURL=ssh://upper/x\n',
    '[remote "releases"]\nurl: ssh://colon/x\n',
    '[remote "releases"]\nurl=ssh://cont/x\n  more\n',
    '; a comment\n[remote "releases"]\nurl=ssh://semi/x\n',
    '[DEFAULT]\nurl=ssh://default/x\n[remote "releases"]\ngpg-verify=false\n',
    'url=ssh://nosection/x\n',
    '[remote "releases"]\nurl=\n',
    '[remote "releases"]\nurl=ssh://e/v\x0burl=ssh://f/u\n',  # one line to configparser, two to splitlines
    '[]\nurl=ssh://empty-section/x\n',
]


@pytest.mark.parametrize("text", CONFIGS)
def test_remote_urls_read_as_configparser_reads_them(tmp_path, text):
    (tmp_path / "config").write_text(text)
    for name in ("releases", "other", "missing"):
        assert transport.configured_remote_url(str(tmp_path), name) == _configparser_url([tmp_path / "config"], name), \
            (text, name)


def test_a_remotes_d_beside_the_config_is_not_read_as_libostree_does_not_read_it(tmp_path):
    """For a repository that is not a system's, libostree (and so `ostree remote list`) reads
    remotes from the repository's config alone; a push must not find a remote there that
    neither lists."""
    subprocess.run(["ostree", "init", "--repo", str(tmp_path), "--mode=archive"], check=True)
    (tmp_path / "remotes.d").mkdir()
    (tmp_path / "remotes.d" / "r.conf").write_text('[remote "hidden"]\nurl=ssh://h/x\n')
    listed = subprocess.run(["ostree", "remote", "list", "--repo", str(tmp_path)], capture_output=True, text=True,
                            check=True).stdout
    assert "hidden" not in listed
    assert transport.configured_remote_url(str(tmp_path), "hidden") is None


@pytest.mark.parametrize(("url", "why"), [
    ("", "empty remote URL"),
    ("   ", "empty remote URL"),
    (" ssh://h/r", "spaces around"),
    ("ssh://h/r\n", "spaces around"),
    ("releases.example.org:/srv/releases", "scp's host:path"),
    ("alice@host:srv/releases", "scp's host:path"),
    ("ssh:/releases.example.org/srv", "a ssh URL begins ssh://"),
    ("file:/srv/releases", "a file URL begins file://"),
    ("ssh://h/r?x=1", "no query or fragment"),
    ("ssh://h/r#f", "no query or fragment"),
    ("file:///tmp/q?x=1", "no query or fragment"),
    ("ssh://h:0/r", "bad port"),
    ("ssh://h:00/r", "bad port"),
])
def test_a_remote_url_that_would_be_misread_is_refused(url, why):
    """Each of these once named some other place: scp's form and a mistyped scheme a local
    directory (which a push then created, reporting success), a query a shorter path, port
    0 port 22."""
    with pytest.raises(UsageError, match=why):
        transport.parse_url(url)


@pytest.mark.parametrize(("url", "target"), [
    ("./host:path", transport.Target("local", "./host:path")),
    ("/srv/a:b", transport.Target("local", "/srv/a:b")),
    ("ssh://h/r%3Fx", transport.Target("ssh", "/r?x", "h")),
    ("ssh://[::1]:2222/r", transport.Target("ssh", "/r", "::1", None, 2222)),
])
def test_what_those_refusals_leave_possible(url, target):
    assert transport.parse_url(url) == target


def test_an_ipv6_host_prints_in_brackets():
    assert str(transport.parse_url("ssh://u@[::1]:2222/r")) == "ssh://u@[::1]:2222/r"
    assert str(transport.parse_url("ssh://[fe80::1]/r")) == "ssh://[fe80::1]/r"


def test_a_scoped_ipv6_address_reaches_ssh_unquoted():
    """In a URL the zone's % is %25 (RFC 6874); ssh takes fe80::1%eth0."""
    target = transport.parse_url("ssh://[fe80::1%25eth0]:22/r")
    assert target.host == "fe80::1%eth0"
    assert "fe80::1%eth0" in transport.receive_argv(target, ssh_command="ssh")
    assert str(target) == "ssh://[fe80::1%25eth0]:22/r"


def test_a_remote_given_as_a_url_or_path_is_not_looked_up(tmp_path):
    (tmp_path / "config").write_text('[core]\nmode=archive\n')
    assert transport.resolve_remote(str(tmp_path), "ssh://h/r") == transport.Target("ssh", "/r", "h")
    assert transport.resolve_remote(str(tmp_path), "./world") == transport.Target("local", "./world")
    with pytest.raises(UsageError, match="unknown remote 'nope'"):
        transport.resolve_remote(str(tmp_path), "nope")


def test_the_receiver_process_starts_as_subprocess_would_start_it():
    """Its standard streams are the three pipes, and SIGPIPE is back to its default (Python
    ignores it, and an ignored signal would be inherited)."""
    conn = Connection(["sh", "-c", "grep SigIgn /proc/self/status; read line; echo \"got $line\"; echo oops >&2"])
    os.write(conn.wfd, b"hello\n")
    out = b""
    while chunk := os.read(conn.rfd, 4096):
        out += chunk
        if b"got" in out:
            break
    assert conn.close() == 0
    assert conn.stderr_tail() == "oops"
    ignored = int(out.split(b"SigIgn:")[1].split()[0], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)), hex(ignored)
    assert b"got hello" in out


def test_a_pusher_whose_own_stdio_is_closed_still_gives_the_receiver_its_streams(tmp_path):
    """With 0-2 closed, the new pipes land on them: each must still end up as the right
    stream of the child (transport._above_stdio moves them out of the way first)."""
    script = (
        "import os, sys\n"
        "from treeship.transfer.transport import Connection\n"
        "for fd in (0, 1, 2): os.close(fd)\n"
        "conn = Connection(['sh', '-c', 'read line; echo \"got $line\"'])\n"
        "os.write(conn.wfd, b'hello\\n')\n"
        "data = os.read(conn.rfd, 100)\n"
        "rc = conn.close()\n"
        f"open({str(tmp_path / 'out')!r}, 'wb').write(data + b' rc=%d' % rc)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert (tmp_path / "out").read_bytes() == b"got hello\n rc=0"


def test_descriptors_the_pusher_inherited_are_not_passed_on(tmp_path):
    """subprocess closes every other descriptor in the child (close_fds); so does this."""
    script = (
        "import os\n"
        "from treeship.transfer.transport import Connection\n"
        f"fd = os.dup2(os.open({str(tmp_path / 'held')!r}, os.O_WRONLY | os.O_CREAT), 50)\n"  # not a number ls takes
        "os.set_inheritable(fd, True)\n"
        "conn = Connection(['sh', '-c', 'ls /proc/self/fd'])\n"
        "data = b''\n"
        "while chunk := os.read(conn.rfd, 4096): data += chunk\n"
        "conn.close()\n"
        f"open({str(tmp_path / 'out')!r}, 'w').write(f'{{fd}} ' + ' '.join(sorted(data.decode().split())))\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    held, *child_fds = (tmp_path / "out").read_text().split()
    assert held not in child_fds, (held, child_fds)
    assert {"0", "1", "2"} <= set(child_fds)


def test_a_receiver_reaped_by_the_kernel_ends_as_popen_has_it_end():
    """With SIGCHLD ignored (inherited from a parent that ignores it), the kernel reaps the
    child: it is over, status 0 as subprocess takes it, and it is not signalled again."""
    script = (
        "import signal\n"
        "signal.signal(signal.SIGCHLD, signal.SIG_IGN)\n"
        "from treeship.transfer.transport import Connection\n"
        "conn = Connection(['sh', '-c', 'exit 0'])\n"
        "print(conn.close(), conn.close(kill=True), conn.proc.returncode)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], check=True, timeout=60, capture_output=True, text=True)
    assert out.stdout.split() == ["0", "0", "0"], out


def test_a_command_that_is_not_there_is_one_clear_error():
    with pytest.raises(UsageError, match="cannot run no-such-ssh-here: No such file or directory"):
        Connection(["no-such-ssh-here", "x"])


def test_a_nul_in_the_command_line_is_one_clear_error():
    """A %00 in a remote URL reaches the ssh command line: no program can take it."""
    with pytest.raises(UsageError, match="a NUL character in its command line"):
        Connection(["ssh", "--", "host", "treeship receive --repo '/srv/a\0b'"])
