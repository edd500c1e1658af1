"""The fast `treeship receive` / `treeship push` entry (treeship/entry.py) stays in step with the click commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from treeship import cli, entry


@pytest.mark.parametrize("name, options, flags, arguments", [
    ("receive", entry.RECEIVE_OPTIONS, entry.RECEIVE_FLAGS, set()),
    ("push", entry.PUSH_OPTIONS, entry.PUSH_FLAGS, {"remote_name", "branches"}),
])
def test_fast_parsers_know_every_option_of_their_command(name, options, flags, arguments):
    command = cli.cli.commands[name]
    click_options = {o for p in command.params if isinstance(p, click.Option) for o in p.opts}
    click_flags = {o for p in command.params if isinstance(p, click.Option) and p.is_flag for o in p.opts}
    assert click_options - {"--help"} == set(options) | set(flags)
    assert click_flags == set(flags)
    assert set(options.values()) | set(flags.values()) | arguments == {p.name for p in command.params}

PLAIN = [
    ["receive", "--repo", "/srv/r", "--key-id", "alice", "--config=/etc/p.toml"],
    ["receive", "--repo=/srv/r", "--timeout", "5", "--create"],
    ["receive"],
    ["receive", "--key-id", "--repo", "--repo", "x"],  # a value may look like an option, as in click
]


@pytest.mark.parametrize("argv", PLAIN)
def test_fast_parser_reads_what_click_reads(argv, monkeypatch):
    monkeypatch.delenv("TREESHIP_REPO", raising=False)
    params = cli.cli.commands["receive"].make_context("receive", argv[1:]).params
    assert entry.plain_receive_args(argv) == params


@pytest.mark.parametrize("argv, expected", [
    (["receive", "--repo", "/srv/r", "--key-id", "alice", "--config=/etc/p.toml"],
     {"repo_path": "/srv/r", "key_id": "alice", "config": "/etc/p.toml", "timeout": 300.0, "create": False}),
    (["receive", "--repo=/srv/r", "--timeout", "5", "--create"],
     {"repo_path": "/srv/r", "key_id": None, "config": None, "timeout": 5.0, "create": True}),
])
def test_plain_arguments_take_the_fast_path(argv, expected):
    assert entry.plain_receive_args(argv) == expected


@pytest.mark.parametrize("argv", [
    ["push", "x"], ["receive", "--help"], ["receive", "--repo"], ["receive", "--timeout", "0.5"],
    ["receive", "--timeout", "nan"], ["receive", "--timeout", "inf"], ["receive", "--timeout", "1e300"],
    ["receive", "--timeout", "soon"], ["receive", "--bogus"],
    ["receive", "extra-argument"], ["receive", "--create=yes"], ["receive", "--repo", ""],
])
def test_anything_else_goes_to_click(argv):
    assert entry.plain_receive_args(argv) is None


def test_click_still_gives_help_and_errors(tmp_path):
    exe = [sys.executable, "-m", "treeship"]
    out = subprocess.run([*exe, "receive", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "authorized_keys" in out.stdout
    for value in ("0", "inf", "1e300", "nan"):  # inf and 1e300 overflowed the receiver's clock: exit 1
        bad = subprocess.run([*exe, "receive", "--timeout", value], capture_output=True, text=True)
        assert bad.returncode == 2 and "--timeout" in bad.stderr, (value, bad.stderr)


def test_both_ends_of_the_entry_take_the_same_timeouts():
    from treeship import cli

    assert entry.MAX_TIMEOUT == cli.MAX_TIMEOUT


def test_fast_path_reports_errors_as_the_cli_does(tmp_path):
    missing = tmp_path / "nope"
    p = subprocess.run([sys.executable, "-m", "treeship", "receive", "--repo", str(missing)],
                       input=b"", capture_output=True)
    assert p.returncode == 11  # the pusher hung up before HELLO: a transfer error, one line
    assert p.stderr.decode().count("\n") == 1 and p.stderr.startswith(b"treeship: error: ")


PLAIN_PUSH = [
    ["push", "origin", "main"],
    ["push", "--repo", "/r", "ssh://h/srv", "a/b", "c", "--json", "--force"],
    ["push", "--ssh-command=ssh -i k", "--receive-command", "/opt/treeship", "--delta", "r", "b"],
    ["push", "r", "--repo=/x", "b"],  # options between arguments, as click takes them
]


@pytest.mark.parametrize("argv", PLAIN_PUSH)
def test_fast_push_parser_reads_what_click_reads(argv, monkeypatch):
    for var in ("TREESHIP_REPO", "TREESHIP_SSH", "TREESHIP_RECEIVE"):
        monkeypatch.delenv(var, raising=False)
    params = cli.cli.commands["push"].make_context("push", argv[1:]).params
    assert entry.plain_push_args(argv) == params


def test_fast_push_parser_reads_the_environment_as_click_does(monkeypatch):
    monkeypatch.setenv("TREESHIP_REPO", "/env/repo")
    monkeypatch.setenv("TREESHIP_SSH", "ssh -p 2222")
    monkeypatch.setenv("TREESHIP_RECEIVE", "/opt/bin/treeship")
    argv = ["push", "r", "b"]
    assert entry.plain_push_args(argv) == cli.cli.commands["push"].make_context("push", argv[1:]).params


@pytest.mark.parametrize("argv", [["push", "r"], ["push", "--help"], ["push", "--", "r", "b"], ["push", "-f", "r", "b"],
                                  ["push", "--repo"], ["push", "--bogus", "r", "b"]])
def test_anything_else_is_left_to_click(argv):
    assert entry.plain_push_args(argv) is None


def test_a_closed_stderr_does_not_change_the_exit_code(tmp_path):
    p = subprocess.run(f"{sys.executable} -m treeship receive --repo {tmp_path / 'nope'} </dev/null 2>&-",
                       shell=True)
    assert p.returncode == 11  # a transfer error (the pusher hung up before HELLO), not 1


@pytest.mark.parametrize(("args", "says"), [
    (["push", "--bogus"], "No such option '--bogus'. (see 'treeship push --help')"),
    (["push"], "Missing argument 'REMOTE'. (see 'treeship push --help')"),
    (["frobnicate"], "No such command 'frobnicate'. (see 'treeship --help')"),
])
def test_a_usage_error_is_one_line_as_every_error(args, says):
    """click's own takes three or four lines (Usage, Try, Error); docs/cli.md promises one."""
    p = subprocess.run([sys.executable, "-m", "treeship", *args], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr == f"treeship: error: {says}\n", p.stderr


def test_treeship_alone_shows_its_help():
    p = subprocess.run([sys.executable, "-m", "treeship"], capture_output=True, text=True)
    assert p.returncode == 2 and "Commands:" in p.stderr and "push" in p.stderr


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import EXAMPLE_MANIFEST, treeship_command
    from pushkit import BRANCH, write_tree

    root = tmp_path_factory.mktemp("released")
    repo, manifest = root / "repo", root / "provenance.json"
    manifest.write_text(json.dumps(EXAMPLE_MANIFEST))
    subprocess.run([*treeship_command(), "release", str(write_tree(root / "tree")), "--repo", str(repo),
                    "--branch", BRANCH, "--provenance", str(manifest)], check=True, capture_output=True)
    return repo


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["push", "--help"], ["log", "{repo}", "x86/64"],
                                  ["log", "{repo}", "x86/64", "--json"], ["show", "{repo}", "x86/64"],
                                  ["attest", "{repo}", "x86/64", "--sign-ed25519", "{key}", "-o", "-"]])
def test_output_that_cannot_be_written_is_one_line_and_exit_8(args, released, ed25519_key):
    """stdout on a full disk (here /dev/full, which refuses every write) is an error the user
    can act on, not an internal one; everything printed goes through click.echo (attest's
    line through its own write), whose failure says so."""
    from pushkit import BRANCH

    argv = [a.replace("x86/64", BRANCH).replace("{key}", str(ed25519_key.secret)) for a in args]
    argv = [x for a in argv for x in (["--repo", str(released)] if a == "{repo}" else [a])]
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-m", "treeship", *argv], stdout=full, stderr=subprocess.PIPE, text=True)
    what = "the attestation to stdout" if args[0] == "attest" else "the output"
    assert (p.returncode, p.stderr) == (8, f"treeship: error: cannot write {what}: No space left on device\n")


@pytest.mark.parametrize("args", [["--help"], ["log", "{repo}", "x86/64"]])
def test_a_reader_that_stops_early_is_no_failure(args, released):
    """`treeship log | head -1`: the pipe closes under the output; that is the reader's choice
    (click exits 1 on it by itself). Here the reading end is closed before anything is written."""
    from pushkit import BRANCH

    argv = [a.replace("x86/64", BRANCH) for a in args]
    argv = [x for a in argv for x in (["--repo", str(released)] if a == "{repo}" else [a])]
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "treeship", *argv], stdout=w, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(w)
    assert (p.returncode, p.stderr) == (0, "")


@pytest.mark.parametrize("full_one", ["stdout", "stderr"])
def test_only_stdout_is_the_output(full_one, tmp_path):
    """A warning that stderr cannot take is not "cannot write the output", and is dropped (a
    stderr that cannot take a line must not change the exit code, as errors.report has it)."""
    verdict = tmp_path / "verdict"
    code = ("import sys\nimport click\nfrom treeship import cli\n"
            f"err = {full_one == 'stderr'}\n"
            "try:\n    click.echo('text', err=err)\nexcept OSError as e:\n    said = cli._writing_output(e)\n"
            "cli._warn('a warning nobody can read')\n"
            "open(sys.argv[1], 'w').write(str(said))\n")
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-c", code, verdict], **{full_one: full}, check=False,
                           **({"stdout": subprocess.DEVNULL} if full_one == "stderr" else {}))
    assert p.returncode == 0
    assert verdict.read_text() == str(full_one == "stdout")


def test_output_left_unwritten_at_exit_is_a_failure_too():
    """What waits in stdout's buffer is written as the process leaves (entry._leave): if that
    fails, a command that had succeeded exits 8 with the line, not 0 with nothing said."""
    code = "import sys\nfrom treeship.entry import _leave\nsys.stdout.write('one line')\n_leave(0)\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered, as stdout is by default
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-c", code], stdout=full, stderr=subprocess.PIPE, text=True, env=env)
    assert (p.returncode, p.stderr) == (8, "treeship: error: cannot write the output: No space left on device\n")


@pytest.mark.parametrize(("args", "code"), [(["push", "--bogus"], 2), ([], 2),
                                            (["log", "--repo", "/nonexistent", "x"], 5), (["push", "--help"], 0)])
def test_a_stderr_that_cannot_take_a_line_does_not_change_the_exit_code(args, code):
    """Usage errors, `treeship` alone (its help, on stderr), an error: the line is lost, the code is not."""
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-m", "treeship", *args], stdout=subprocess.DEVNULL, stderr=full)
    assert p.returncode == code
