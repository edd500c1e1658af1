"""Figures of the reliability and security runs: collected by the tests, printed at the end.

Each fault, flood or fuzz run adds one record; the terminal summary prints the totals that
docs/reliability.md quotes, and ``$TREESHIP_FIGURES`` (default
``.pytest_cache/treeship-reliability.json``) keeps every record. Used by
tests/reliability/conftest.py and tests/security/conftest.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

RECORDS: list[dict] = []
_printed = [False]


@pytest.fixture(scope="session")
def figures() -> list[dict]:
    """Append one dict per fault injected (``{"kind": "fault", ...}``) or per other run."""
    return RECORDS


def report(terminalreporter, config: pytest.Config) -> None:
    if not RECORDS or _printed[0]:
        return
    _printed[0] = True
    faults = [r for r in RECORDS if r.get("kind") == "fault"]
    retried = [r for r in faults if r.get("retry_bytes") is not None]
    lines = []
    if faults:
        actions: dict[str, int] = {}
        for r in faults:
            actions[r["action"]] = actions.get(r["action"], 0) + 1
        ratios = [r["retry_bytes"] / r["missing_bytes"] for r in retried if r["missing_bytes"]]
        lines += [
            f"fault points: {len(faults)} ({', '.join(f'{a}: {n}' for a, n in sorted(actions.items()))})",
            f"retries: {len(retried)}, completed: {sum(1 for r in retried if r.get('retry_ok'))}",
            f"bytes still missing after the faults: {sum(r['missing_bytes'] for r in retried)}; "
            f"resent by the retries: {sum(r['retry_bytes'] for r in retried)}; "
            f"worst retry/missing ratio: {max(ratios, default=0):.3f}",
        ]
    for r in RECORDS:
        if r.get("kind") != "fault":
            lines.append(f"{r['kind']}: " + ", ".join(f"{k}={v}" for k, v in r.items() if k != "kind"))
    terminalreporter.write_sep("-", "treeship reliability / security figures")
    for line in lines:
        terminalreporter.write_line(line)
    dest = Path(os.environ.get("TREESHIP_FIGURES") or Path(config.rootpath, ".pytest_cache",
                                                            "treeship-reliability.json"))
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(RECORDS, indent=1))
        terminalreporter.write_line(f"(every record: {dest})")
    except OSError:
        pass
