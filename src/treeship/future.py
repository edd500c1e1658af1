"""A result another thread sets: the part of ``concurrent.futures.Future`` a push's receiving
end uses (its verify thread, its flush, a delta's import), without importing ``concurrent.futures``.

That import brings ``logging`` (and with it ``traceback``, ``string``, ``tokenize``): about
7 ms of CPU on a two-core machine, paid by every push that moves a ref, on the thread that
reads the stream (docs/performance.md). The semantics are concurrent.futures' for what is
here: a pending future may be cancelled, a running or finished one not; tests/test_future.py.
"""

from __future__ import annotations

import threading

TYPE_CHECKING = False  # not `from typing`: importing typing costs a receiver ~10 ms
if TYPE_CHECKING:
    from typing import Any

_PENDING, _RUNNING, _FINISHED, _CANCELLED = range(4)


class CancelledError(Exception):
    """result() or exception() of a future that was cancelled."""


class Future:
    """Set once (:meth:`set_result` or :meth:`set_exception`), or cancelled while pending;
    :meth:`result` waits for either."""

    __slots__ = ("_state", "_lock", "_done", "_value", "_error")

    def __init__(self) -> None:
        self._state = _PENDING
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def __class_getitem__(cls, item: object) -> type[Future]:  # Future[None] in annotations
        return cls

    def cancel(self) -> bool:
        """Cancel it unless it is running or done; whether it is cancelled."""
        with self._lock:
            if self._state in (_RUNNING, _FINISHED):
                return False
            self._state = _CANCELLED
        self._done.set()
        return True

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def set_running_or_notify_cancel(self) -> bool:
        """Mark it running, before its work starts; False if it was cancelled (skip the work)."""
        with self._lock:
            if self._state == _CANCELLED:
                return False
            if self._state != _PENDING:
                raise RuntimeError(f"future in state {self._state} cannot start running")
            self._state = _RUNNING
            return True

    def set_result(self, value: Any) -> None:
        self._finish(value, None)

    def set_exception(self, error: BaseException) -> None:
        self._finish(None, error)

    def _finish(self, value: Any, error: BaseException | None) -> None:
        with self._lock:
            if self._state in (_FINISHED, _CANCELLED):
                raise RuntimeError("future already done")
            self._value, self._error, self._state = value, error, _FINISHED
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def exception(self) -> BaseException | None:
        """Wait; what it raised (None if it returned)."""
        self._done.wait()
        if self._state == _CANCELLED:
            raise CancelledError()
        return self._error

    def result(self) -> Any:
        """Wait; its value, or raise what it raised."""
        error = self.exception()
        if error is None:
            return self._value
        try:
            raise error
        finally:  # the traceback holds this frame: no cycle through it back to the error (as concurrent.futures)
            self = error = None
