"""The ``treeship`` command's entry point: ``treeship receive`` starts without click.

``treeship receive`` runs once per push, as the SSH forced command, and its start-up is
paid on every push: importing click and the CLI costs it about 25 ms, an eighth of what a
no-op push costs above ``ssh host true`` (docs/performance.md). So its few options are read
here when they are written plainly; anything else (``--help``, a typo, a bad value) goes
to the click command, which owns the help and the messages. tests/test_cli_entry.py keeps
the two in step.
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
    try:
        out["timeout"] = float(out["timeout"])
    except ValueError:
        return None
    if not out["timeout"] >= 1:  # also refuses nan, as click's FloatRange(min=1) does
        return None
    return out


def main() -> None:
    try:
        _main()
        code = 0
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
        from .cli import main as cli_main

        cli_main()
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
    has been closed by its context manager; only the standard streams are left to flush."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
