"""A push told the wrong thing says so, and sends nothing anywhere.

Each case here was, before, a push that went somewhere else than meant and reported
success: scp's ``host:path`` (or ``ssh:/host/path``) made a local directory of that name and
pushed into it; a forgotten remote made the first branch name one; an empty URL made the
current directory a repository. Local pushes (the receiver as a subprocess) and a stand-in
for ssh that runs the receiver here: no server is needed to say no.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_tree, treeship_command
from pushkit import release, write_tree

BRANCH = "stage3-sysroot/x86_64"


@pytest.fixture
def local(treeship, tmp_path: Path) -> Path:
    repo = tmp_path / "rel"
    treeship("release", make_tree(tmp_path / "tree"), "--repo", repo, "--branch", BRANCH, "--version", "1")
    return repo


def _one_error_line(res) -> str:
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("treeship: error: "), res.stderr
    return lines[0]


def _entries(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()}


@pytest.mark.parametrize(("remote", "says"), [
    ("releases.example.org:/srv/releases/repo", "scp's host:path is not a remote here"),
    ("alice@releases.example.org:srv/releases", "scp's host:path is not a remote here"),
    ("ssh:/releases.example.org/srv/releases", "a ssh URL begins ssh://"),
    (BRANCH, f"'{BRANCH}' is a branch of"),  # the remote forgotten: the branch taken for it
    ("no/such/dir/repo", "does not exist (a push creates a local repository only in a directory that exists)"),
    ("ssh://releases.example.org:0/srv", "bad port"),
    ("ssh://releases.example.org/srv/r?x=1", "no query or fragment"),
])
def test_a_remote_that_names_no_place_meant_is_refused_and_nothing_is_made(treeship, local, tmp_path, remote, says):
    before = _entries(tmp_path)
    res = treeship("push", "--repo", local, remote, BRANCH, rc=2)
    assert says in _one_error_line(res)
    assert res.stdout == ""
    assert _entries(tmp_path) == before


def test_an_empty_remote_url_is_refused_where_it_is_given(treeship, local, tmp_path):
    """`treeship remote add releases "$RELEASES_URL"` with the variable unset."""
    assert "empty remote URL" in _one_error_line(treeship("remote", "add", "--repo", local, "releases", "", rc=2))
    assert treeship("remote", "list", "--repo", local, "--json").json()["remotes"] == {}


def test_a_new_local_repository_is_made_inside_an_existing_directory_and_said(treeship, local, tmp_path):
    res = treeship("push", "--repo", local, "./world", BRANCH)
    assert f"created the repository {tmp_path / 'world'}" in res.stdout
    again = treeship("push", "--repo", local, "./world", BRANCH, "--json").json()
    assert again["created"] is None and again["ok"] is True


def test_a_named_remote_with_a_relative_path_means_one_place_from_anywhere(treeship, local, tmp_path):
    treeship("remote", "add", "--repo", local, "mirror", "../mirror", cwd=local)
    assert treeship("remote", "list", "--repo", local, "--json").json()["remotes"]["mirror"] == \
        str(tmp_path / "mirror")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    treeship("push", "--repo", local, "mirror", BRANCH, cwd=elsewhere)
    assert (tmp_path / "mirror" / "config").is_file() and not (tmp_path / "elsewhere" / "mirror").exists()


def test_remote_add_neither_makes_a_repository_nor_replaces_a_remote(treeship, local, tmp_path):
    res = treeship("remote", "add", "--repo", tmp_path / "typo", "r", "ssh://h/srv", rc=5)
    assert "no repository here" in _one_error_line(res)
    assert not (tmp_path / "typo").exists()
    treeship("remote", "add", "--repo", local, "r", "ssh://h/srv")
    res = treeship("remote", "add", "--repo", local, "r", "ssh://other/srv", rc=2)
    assert "remote 'r' exists already, at ssh://h/srv" in _one_error_line(res)


@pytest.mark.parametrize(("args", "rc", "says"), [
    (["nope", BRANCH], 2, "unknown remote 'nope'"),
    (["./world", "no/such-branch"], 5, "no/such-branch: no such branch"),
    (["./world", "--", "-bad"], 2, "invalid branch name '-bad'"),
    (["./world", "a//b"], 2, "invalid branch name 'a//b'"),
])
def test_push_json_is_json_on_failure_too(treeship, local, tmp_path, args, rc, says):
    """A malformed branch name is a usage error found before anything starts, not "no such branch"."""
    out = treeship("push", "--repo", local, "--json", *args, rc=rc).json()
    assert out["ok"] is False and out["error"]["exit_code"] == rc
    assert says in out["error"]["message"]
    assert not (tmp_path / "world").exists()  # nothing was made for a push that could not start


def test_a_missing_repository_with_json(treeship, tmp_path):
    out = treeship("push", "--repo", tmp_path / "nothing", "./world", BRANCH, "--json", rc=5).json()
    assert out == {"ok": False, "error": {"message": out["error"]["message"], "exit_code": 5}}
    assert "no repository here" in out["error"]["message"]


@pytest.mark.parametrize("value", ["nan", "inf", "1e300"])
def test_a_timeout_that_is_no_number_of_seconds_is_refused(treeship, local, value):
    """click's FloatRange takes nan, and a watchdog comparing against nan never fires; inf and
    1e300 overflowed the receiver's clock."""
    res = treeship("push", "--repo", local, "./world", BRANCH, "--timeout", value, rc=2)
    assert "a number of seconds from 1 to 10000000" in res.stderr


def test_an_unbalanced_quote_in_the_ssh_command_is_a_usage_error(treeship, local):
    res = treeship("push", "--repo", local, "--ssh-command", "ssh -i 'key", "ssh://h/srv", BRANCH, rc=2)
    assert "No closing quotation" in _one_error_line(res)


def _fake_ssh(tmp_path: Path, banner: str | None = None) -> str:
    """An ``ssh`` that runs the remote command here, with ``sh -c``, as sshd runs it."""
    script = tmp_path / "fake-ssh"
    script.write_text("#!/bin/sh\nfor last; do :; done\n" + (f"echo '{banner}'\n" if banner else "")
                      + 'exec sh -c "$last"\n')
    script.chmod(0o755)
    return str(script)


def test_text_the_server_prints_before_the_receiver_is_shown(treeship, local, tmp_path):
    """A login banner, or a ~/.bashrc that echoes: the error shows what came instead."""
    res = treeship("push", "--repo", local, "--ssh-command", _fake_ssh(tmp_path, "Welcome to the releases server"),
                   "--receive-command", shlex.join(treeship_command()), f"ssh://h{tmp_path}/dest", BRANCH, rc=11)
    line = _one_error_line(res)
    assert "the remote sent 'Welcome to the releases server' before treeship spoke" in line


def test_a_server_without_treeship_is_told_with_what_to_do(treeship, local, tmp_path):
    env = {"PATH": "/usr/bin:/bin"}  # no treeship there
    res = treeship("push", "--repo", local, "--ssh-command", _fake_ssh(tmp_path), f"ssh://h{tmp_path}/dest", BRANCH,
                   rc=11, env=env)
    line = _one_error_line(res)
    assert "not found" in line and "--receive-command" in line


@pytest.mark.parametrize("at_terminal", [False, True])
def test_ssh_is_told_not_to_ask_when_nobody_is_there_to_answer(monkeypatch, at_terminal):
    """BatchMode=yes unless stdin and stderr are a terminal, where ssh may ask as for git."""
    from treeship.transfer import transport

    monkeypatch.setattr(transport, "_at_terminal", lambda: at_terminal)
    argv = transport.receive_argv(transport.parse_url("ssh://h/srv"), ssh_command="/usr/bin/ssh")
    assert ("BatchMode=yes" in argv) is not at_terminal


def test_a_configured_remote_may_be_named_like_a_branch(treeship, local, tmp_path):
    """Only a REMOTE taken as a path is checked against the branches (a reviewer's `stable`)."""
    treeship("release", make_tree(tmp_path / "t2"), "--repo", local, "--branch", "stable", "--version", "1")
    treeship("remote", "add", "--repo", local, "stable", tmp_path / "stable-mirror")
    assert "created the repository" in treeship("push", "--repo", local, "stable", "stable").stdout


def test_json_comes_whatever_the_order_of_the_options(treeship, local):
    """--json is read first: an option given before it that is refused still gets JSON."""
    out = treeship("push", "--repo", local, "--timeout", "nan", "--json", "./world", BRANCH, rc=2).json()
    assert out["ok"] is False and out["error"]["exit_code"] == 2


def test_an_interrupt_before_the_cli_has_loaded_is_one_line():
    """Ctrl-C while the entry point is still importing: 'interrupted' and 130, no traceback."""
    code = ("import treeship.entry as e\n"
            "def boom():\n    raise KeyboardInterrupt\n"
            "e._main = boom\ne.main()\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, check=False)
    assert p.returncode == 130 and p.stderr == "treeship: interrupted\n", p.stderr


def test_a_destination_no_retry_can_fix_exits_as_the_receiver_did(treeship, local, tmp_path):
    """Exit 11 says a retry resumes; for a directory that is no repository (or not one in
    archive mode) the receiver's own code, 5, comes back through its ERROR frame instead."""
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("not a repository")
    res = treeship("push", "--repo", local, "./notes", BRANCH, rc=5)
    assert "directory is not empty and is not an OSTree repository" in _one_error_line(res)


@pytest.mark.parametrize(("code", "exits"), [(5, 5), (8, 8), (2, 11), (0, 11), (130, 11), (True, 11), (5.0, 11),
                                             ("5", 11), (None, 11)])
def test_only_a_receiver_s_repository_errors_keep_their_code(code, exits):
    """What a (hostile) receiver's ERROR frame says of its exit code is taken for 5 and 8
    only, as integers (5.0 made sys.exit print it and exit 1)."""
    from treeship.errors import RemoteError

    assert RemoteError("remote error: x", code).exit_code == exits


@pytest.mark.parametrize("as_json", [False, True])
def test_a_rejection_outlives_an_output_that_cannot_be_written(treeship, tmp_path, as_json):
    """Printing a rejected push's refs to a full stdout: the push still exits as rejected (10),
    with its reason on stderr, not as "cannot write the output" (8)."""
    dest = tmp_path / "dest"
    release(treeship, write_tree(tmp_path / "a", tag="a"), tmp_path / "one", BRANCH)
    treeship("push", "--repo", tmp_path / "one", dest, BRANCH)
    release(treeship, write_tree(tmp_path / "b", tag="b"), tmp_path / "two", BRANCH)
    with open("/dev/full", "w") as full:
        p = subprocess.run([*treeship_command(), "push", "--repo", str(tmp_path / "two"), str(dest), BRANCH,
                            *(["--json"] if as_json else [])], stdout=full, stderr=subprocess.PIPE, text=True)
    assert p.returncode == 10 and "non-fast-forward" in p.stderr and "cannot write" not in p.stderr, p.stderr
