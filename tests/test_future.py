"""treeship.future.Future behaves as concurrent.futures.Future does, for what it offers."""

from __future__ import annotations

import concurrent.futures
import gc
import random
import shlex
import subprocess
import sys
import threading
import weakref

import pytest

from conftest import ostree, treeship_command
from pushkit import BRANCH, refs, release, write_tree
from treeship.future import CancelledError, Future

# Each step: (method, argument); what each returns or raises is compared between the two.
SEQUENCES = [
    [("set_result", 1), ("done", None), ("result", None), ("exception", None), ("cancel", None), ("cancelled", None)],
    [("set_exception", ValueError("x")), ("done", None), ("result", None), ("exception", None)],
    [("cancel", None), ("cancelled", None), ("done", None), ("set_running_or_notify_cancel", None),
     ("result", None), ("exception", None)],
    [("set_running_or_notify_cancel", None), ("cancel", None), ("done", None), ("set_result", 2), ("result", None)],
    [("set_running_or_notify_cancel", None), ("set_running_or_notify_cancel", None)],
    [("set_result", 1), ("set_result", 2)],
    [("cancel", None), ("set_result", 1)],
    [("cancel", None), ("cancel", None), ("cancelled", None)],
]


def _outcome(fut: object, method: str, arg: object) -> tuple[str, object]:
    try:
        value = getattr(fut, method)(arg) if method.startswith("set_r") and method != "set_running_or_notify_cancel" \
            or method == "set_exception" else getattr(fut, method)()
    except (CancelledError, concurrent.futures.CancelledError):
        return "cancelled", None
    except (RuntimeError, concurrent.futures.InvalidStateError):
        return "invalid state", None
    except ValueError as e:
        return "raised", str(e)
    if isinstance(value, BaseException):
        return "exception", str(value)
    return "value", value


@pytest.mark.parametrize("steps", SEQUENCES)
def test_it_answers_as_concurrent_futures_does(steps):
    ours, theirs = Future(), concurrent.futures.Future()
    for method, arg in steps:
        assert _outcome(ours, method, arg) == _outcome(theirs, method, arg), (method, steps)


def test_result_waits_for_another_thread():
    fut: Future = Future()
    started = threading.Event()

    def later() -> None:
        started.wait()
        fut.set_result("here")

    t = threading.Thread(target=later)
    t.start()
    assert not fut.done()
    started.set()
    assert fut.result() == "here"
    t.join()


def test_a_failed_result_leaves_no_cycle_behind():
    """result() raises the job's error, whose traceback holds result()'s frame: that frame
    must not keep the future (and through it the error) alive until the cycle collector runs."""
    class BadObject(Exception):  # (a class of one's own: builtin exceptions take no weak references)
        pass

    fut: Future = Future()
    fut.set_exception(BadObject("bad object"))
    gc.disable()
    try:
        with pytest.raises(BadObject) as raised:
            fut.result()
        gone = weakref.ref(raised.value)
        del fut, raised
        assert gone() is None
    finally:
        gc.enable()


def test_the_receiver_does_without_concurrent_futures(treeship, tmp_path):
    """The point of the module: a push's receiving end, with a large object for its verify
    thread and a ref to move (a flush), never imports concurrent.futures (nor logging)."""
    tree = write_tree(tmp_path / "tree")
    (tree / "usr" / "lib" / "big.so").write_bytes(random.Random(1).randbytes(600 << 10))
    local = tmp_path / "local"
    commit = release(treeship, tree, local)
    # The stream a pusher sends, recorded: a stand-in for ssh runs the remote command here.
    stream = tmp_path / "stream"
    fake_ssh = tmp_path / "ssh"
    fake_ssh.write_text('#!/bin/sh\nfor a; do last="$a"; done\nexec sh -c "$last"\n')
    fake_ssh.chmod(0o755)
    first = tmp_path / "first"
    ostree("init", f"--repo={first}", "--mode=archive")
    treeship("push", "--repo", local, f"ssh://host{first}", BRANCH, "--ssh-command", fake_ssh,
             "--receive-command", f"tee {stream} | {shlex.join(treeship_command())}")
    # The same stream into a fresh repository, the receiver run in-process to look at its modules.
    dest = tmp_path / "dest"
    ostree("init", f"--repo={dest}", "--mode=archive")
    found = tmp_path / "modules"
    code = ("import sys\nfrom pathlib import Path\nfrom treeship.entry import _main\nout = Path(sys.argv[2])\n"
            "sys.argv = ['treeship', 'receive', '--repo', sys.argv[1]]\ntry:\n    _main()\nfinally:\n"
            "    seen = [m for m in ('concurrent.futures', 'logging') if m in sys.modules]\n"
            "    out.write_text(' '.join(seen))\n")
    with open(stream, "rb") as f:
        done = subprocess.run([sys.executable, "-c", code, dest, found], stdin=f, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(b'"warnings":[]}')  # its last frame: STATUS, the push landed
    assert found.read_text() == ""
    assert refs(dest) == {BRANCH: commit}
