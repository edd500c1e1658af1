"""The ``treeship`` command's entry point: ``treeship receive`` starts without click, and
``treeship push`` starts SSH before click loads.

``treeship receive`` runs once per push, as the SSH forced command, and its start-up is
paid on every push: importing click and the CLI costs it about 25 ms, an eighth of what a
no-op push costs above ``ssh host true`` (docs/performance.md). So its few options are read
here when they are written plainly; anything else (``--help``, a typo, a bad value) goes
to the click command, which owns the help and the messages. tests/test_cli_entry.py keeps
the two in step.

A push over SSH waits a quarter of a second for the handshake; plain ``treeship push``
command lines start it here, ~30 ms sooner than the CLI could, and the push takes that
connection (``transport.connect``). Anything unusual waits for the CLI as before.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not `from typing`: importing typing costs this entry ~10 ms
if TYPE_CHECKING:
    from typing import Any

#: receive's options taking a value → its parameter; the flags; (both as the click command has them)
RECEIVE_OPTIONS = {"--repo": "repo_path", "--config": "config", "--key-id": "key_id", "--timeout": "timeout"}
RECEIVE_FLAGS = {"--create": "create"}


def plain_receive_args(argv: list[str]) -> dict[str, Any] | None:
    """The parameters of ``receive ARGS`` if every argument is plain and valid, else None."""
    if argv[:1] != ["receive"]:
        return None
    out: dict[str, Any] = {"repo_path": os.environ.get("TREESHIP_REPO") or "./releases", "config": None,
                           "key_id": None, "timeout": 300.0, "create": False}
    args = argv[1:]
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if name in RECEIVE_FLAGS and not eq:
            out[RECEIVE_FLAGS[name]] = True
            i += 1
            continue
        if name not in RECEIVE_OPTIONS:
            return None
        if not eq:
            if i + 1 >= len(args):
                return None
            value = args[i + 1]
            i += 1
        i += 1
        if not value:
            return None
        out[RECEIVE_OPTIONS[name]] = value
    return out if _timeout_taken(out) else None


MAX_TIMEOUT = 10_000_000.0  # as cli.MAX_TIMEOUT


def _timeout_taken(out: dict[str, Any]) -> bool:
    """Make ``out["timeout"]`` a float as the click option does; False where click would refuse it."""
    try:
        out["timeout"] = float(out["timeout"])
    except ValueError:
        return False
    return 1 <= out["timeout"] <= MAX_TIMEOUT  # also refuses nan and inf


#: push's options taking a value, and its flags (as the click command has them)
PUSH_OPTIONS = {"--repo": "repo_path", "--ssh-command": "ssh_command", "--receive-command": "receive_command",
                "--timeout": "timeout"}
PUSH_FLAGS = {"--force": "force", "--delta": "delta", "--json": "as_json"}


def plain_push_args(argv: list[str]) -> dict[str, Any] | None:
    """The parameters of ``push ARGS`` if every argument is plain, else None."""
    if argv[:1] != ["push"]:
        return None
    out: dict[str, Any] = {"repo_path": os.environ.get("TREESHIP_REPO") or "./releases",
                           "ssh_command": os.environ.get("TREESHIP_SSH") or None,
                           "receive_command": os.environ.get("TREESHIP_RECEIVE") or None,
                           "force": False, "delta": False, "as_json": False, "timeout": 600.0}
    positional: list[str] = []
    args = argv[1:]
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        name, eq, value = arg.partition("=")
        if name in PUSH_FLAGS and not eq:
            out[PUSH_FLAGS[name]] = True
            continue
        if name not in PUSH_OPTIONS:
            return None  # --help, --, a typo: the CLI decides
        if not eq:
            if i >= len(args):
                return None
            value = args[i]
            i += 1
        if not value:
            return None
        out[PUSH_OPTIONS[name]] = value
    if len(positional) < 2:
        return None
    if not _timeout_taken(out):
        return None
    out["remote_name"], out["branches"] = positional[0], tuple(positional[1:])
    return out


def _prestart_push(argv: list[str]) -> None:
    args = plain_push_args(argv)
    if args is None or not os.path.isfile(os.path.join(args["repo_path"], "config")):
        return
    from .transfer import transport

    try:
        target = transport.resolve_remote(args["repo_path"], args["remote_name"])
        if target.kind == "ssh":
            transport.prestart(transport.receive_argv(target, ssh_command=args["ssh_command"],
                                                      receive_command=args["receive_command"]))
    except Exception:  # noqa: BLE001, S110 - the push itself will report it, in its words
        pass


def main() -> None:
    try:
        _main()
        code = 0
    except KeyboardInterrupt as e:  # a Ctrl-C before the CLI's own handling is in place (while importing)
        from .errors import report

        code = report(e)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    _leave(code)


def _main() -> None:
    args = plain_receive_args(sys.argv[1:])
    if args is None:
        _prestart_push(sys.argv[1:])
        from .cli import main as cli_main

        try:
            cli_main()
        finally:
            if "treeship.transfer.transport" in sys.modules:
                sys.modules["treeship.transfer.transport"].discard_prestarted()  # one the push did not take
        return
    from .errors import report
    from .transfer.receiver import serve

    try:
        serve(**args)
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        sys.exit(report(e))
    except KeyboardInterrupt as e:
        sys.exit(report(e))


def _leave(code: int) -> None:
    """Exit without tearing the interpreter down: with libostree loaded that takes 10-20 ms,
    which a push pays twice (both ends). By now every file, thread and temporary directory
    has been closed by its context manager; only the standard streams are left to flush.
    Output that cannot be written (a full disk) makes a success a failure, said in one line."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: the descriptor was closed when Python started
                stream.flush()
        except OSError as e:
            if code == 0 and stream is sys.stdout and not isinstance(e, BrokenPipeError):
                from .errors import output_failed, report

                code = report(output_failed(e))
        except ValueError:  # closed
            pass
    os._exit(code)
