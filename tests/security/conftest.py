"""The security tests share one record of figures with the reliability tests (tests/figures.py)."""

from __future__ import annotations

from figures import figures, report  # noqa: F401 - the fixture


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    report(terminalreporter, config)
