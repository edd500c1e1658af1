"""The receiver's verify thread (transfer/receiver.py, _Verifier): it runs at the lowest
priority, and a job the reading thread waits for is not left to it."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from treeship.errors import TransferError
from treeship.transfer.receiver import WORKER_NICE, _Verifier

WAIT = 30  # seconds: only a broken hand-over gets anywhere near it


def _until(condition) -> None:
    """Poll for a state another thread reaches (readiness, not a sleep standing in for sync)."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "the other thread never got there"
        time.sleep(0.001)


def _may_lower_a_threads_priority() -> bool:
    """Whether this system lets a thread lower its own priority (a sandbox may forbid it;
    the receiver then goes on at the normal one)."""
    allowed: list[bool] = []

    def probe() -> None:
        me = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, me, os.getpriority(os.PRIO_PROCESS, me) + 1)
            allowed.append(True)
        except OSError:
            allowed.append(False)

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return allowed == [True]


@pytest.mark.skipif(sys.platform != "linux", reason="a thread's own nice value is Linux's")
def test_the_worker_runs_at_the_lowest_priority():
    if not _may_lower_a_threads_priority():
        pytest.skip("this system does not let a thread lower its priority")
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    with _Verifier() as pool:
        fut = pool.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        assert pool.result(fut) == max(own, WORKER_NICE)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own  # the caller's is untouched
    with _Verifier(nice=None) as pool:  # a --delta push's: its jobs cannot be handed back
        fut = pool.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        assert pool.result(fut) == own


class _HeldJob:
    """A stepped job the worker has started and holds inside its first step until
    ``release`` is set; then ``more`` steps. ``ran``: the thread of each step, in order."""

    def __init__(self, pool: _Verifier, more: int) -> None:
        self.ran: list[int] = []
        self.release = threading.Event()
        started = threading.Event()

        def steps():
            self.ran.append(threading.get_ident())
            started.set()
            assert self.release.wait(WAIT)
            yield
            for _ in range(more):
                self.ran.append(threading.get_ident())
                yield
            return "checked"

        self.fut = pool.submit_steps(steps())
        self.job = pool._stepped[self.fut]
        assert started.wait(WAIT)


def test_a_stepped_job_the_reader_waits_for_is_handed_back_after_its_step():
    """The worker is inside a step when the result is wanted: it finishes that step, lets go,
    and the waiting thread runs the rest, each step exactly once."""
    with _Verifier() as pool:
        held = _HeldJob(pool, more=5)
        ran = held.ran
        out: dict[str, object] = {}
        waiter = threading.Thread(target=lambda: out.update(result=pool.result(held.fut),
                                                            thread=threading.get_ident()))
        waiter.start()
        _until(lambda: held.job.wanted)
        held.release.set()
        waiter.join(WAIT)
        assert not waiter.is_alive()
    assert out["result"] == "checked"
    worker = ran[0]
    assert worker not in (threading.get_ident(), out["thread"])
    assert ran[1:] == [out["thread"]] * 5


def test_a_queued_stepped_job_is_run_by_whoever_waits_for_it():
    busy, release = threading.Event(), threading.Event()

    def block() -> None:
        busy.set()
        assert release.wait(WAIT)

    def steps():
        yield
        return threading.get_ident()

    with _Verifier() as pool:
        first = pool.submit(block)
        assert busy.wait(WAIT)  # the worker is held: the stepped job stays queued
        assert pool.result(pool.submit_steps(steps())) == threading.get_ident()
        release.set()
        pool.result(first)


def test_a_failing_step_fails_the_result_wherever_it_ran():
    def steps():
        yield
        raise TransferError("object x.file: checksum mismatch")

    with _Verifier() as pool:
        with pytest.raises(TransferError, match="checksum mismatch"):
            pool.result(pool.submit_steps(steps()))


def test_a_job_handed_back_to_an_interrupted_waiter_is_not_lost():
    """A signal (Ctrl-C on a local push) interrupts result() after the worker let go of the
    job: the job goes back to the queue, and the receiver's error path, which waits for
    every pending job, gets its result instead of hanging (found by a reviewer)."""
    with _Verifier() as pool:
        held = _HeldJob(pool, more=3)
        fut, ran = held.fut, held.ran
        real_wait_for = pool._cond.wait_for

        def interrupted(predicate, timeout=None):
            held.release.set()  # the worker finishes its step, sees the job wanted, lets go
            assert real_wait_for(predicate, WAIT) and held.job.handed
            pool._cond.wait_for = real_wait_for
            raise KeyboardInterrupt

        pool._cond.wait_for = interrupted
        with pytest.raises(KeyboardInterrupt):
            pool.result(fut)
        out: dict[str, object] = {}  # what the error path does next, in a thread: a lost job would hang it
        again = threading.Thread(target=lambda: out.update(result=pool.result(fut)), daemon=True)
        again.start()
        again.join(WAIT)
        assert not again.is_alive(), "the job was lost: nobody will finish it"
    assert out["result"] == "checked"
    assert len(ran) == 4  # every step once, whichever thread ran it
