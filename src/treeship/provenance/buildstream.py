"""Release a BuildStream element: find ``bst``, record the pipeline's provenance, check it out.

Which BuildStream is used is decided by ``bst --version``:

- 1.6.x (Debian's ``bst``): provenance from :mod:`.buildstream1` (the project loaded
  through BuildStream 1.6 itself), checkout with ``bst checkout ELEMENT DIR``;
- 2.5 and later 2.x: provenance from :mod:`.buildstream2` (``bst show --format`` with
  ``%{source-info}``), checkout with ``bst artifact checkout ELEMENT --directory DIR``.

Anything else is refused with a message naming what is supported. The element must be
built already: treeship never builds, it says which ``bst build`` to run.

Data flows one way: bst → JSON/YAML → a validated :class:`~treeship.provenance.Manifest`
and a directory, both handed to :mod:`treeship.release`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ProvenanceError, SourceError
from .manifest import SCHEMA_ID, Manifest, validate

SUPPORTED = "BuildStream 1.6.x or 2.5 and later 2.x"
#: Exit status of the helper scripts when the BuildStream they run under is not theirs.
EXIT_UNSUPPORTED = 64
HEX_COMMIT = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
HEX_KEY = re.compile(r"^[0-9a-f]{64}$")
TIMEOUT = 3600


@dataclass(frozen=True)
class BstRequest:
    """What ``treeship release --bst`` was asked for."""

    element: str
    project: str | None = None                     # --bst-project (bst's -C); None: bst's default
    options: tuple[tuple[str, str], ...] = ()      # --bst-option NAME VALUE (bst's -o)
    command: str | None = None                     # --bst-command; None: `bst` on PATH

    def global_args(self) -> list[str]:
        """bst's global options for this request (the same for every bst call)."""
        args = ["--no-colors", "--no-interactive"]
        if self.project is not None:
            args += ["--directory", os.path.abspath(self.project)]
        for name, value in self.options:
            args += ["--option", name, value]
        return args

    def command_line(self, *words: str) -> str:
        """The bst command a user would type for this request, e.g. to build the element."""
        shown = [self.command or "bst"]
        if self.project is not None:
            shown += ["-C", self.project]
        for name, value in self.options:
            shown += ["-o", name, value]
        return shlex.join([*shown, *words])


@dataclass(frozen=True)
class BstTool:
    """A ``bst`` executable and what it is."""

    path: str
    version: str
    major: int
    minor: int

    def interpreter(self) -> list[str]:
        """The Python that runs this bst (its shebang), to run treeship's helper scripts under."""
        try:
            with open(self.path, "rb") as f:
                first = f.readline(4096)
        except OSError as e:
            raise SourceError(f"{self.path}: cannot read: {e.strerror}") from None
        if not first.startswith(b"#!"):
            raise SourceError(f"{self.path} is not a Python script (no #! line): treeship needs bst's own "
                              "Python to read the project through BuildStream; give --bst-command the real bst")
        argv = shlex.split(first[2:].decode(errors="replace").strip())
        if not argv:
            raise SourceError(f"{self.path}: empty #! line")
        return argv


@dataclass
class Loaded:
    """What an adapter read from BuildStream, before it becomes a manifest."""

    version: str
    project: str
    options: dict[str, Any]
    target_state: str                 # "cached" when built; else bst's word for it
    elements: list[dict[str, Any]]    # name, kind, cache_key, sources, build_depends, runtime_depends


@dataclass
class Collected:
    """The provenance of one pipeline, and what could not be fully recorded."""

    manifest: Manifest
    target_state: str
    warnings: list[str] = field(default_factory=list)


def find_tool(command: str | None) -> BstTool:
    """Locate bst and read its version; refuse versions treeship does not know."""
    name = command or "bst"
    path = shutil.which(name)
    if path is None:
        hint = "" if command else " (install BuildStream, or give --bst-command PATH)"
        raise SourceError(f"{name}: BuildStream's bst command not found{hint}")
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=120, check=False)
    except OSError as e:
        raise SourceError(f"{path}: cannot run: {e.strerror}") from None
    out = (proc.stdout or proc.stderr).strip()
    m = re.match(r"^(\d+)\.(\d+)(?:\.\S*)?$", out.splitlines()[-1].strip() if out else "")
    if proc.returncode != 0 or m is None:
        raise SourceError(f"{path} --version did not print a BuildStream version ({_last_line(out) or 'no output'})")
    version = m.group(0)
    major, minor = int(m.group(1)), int(m.group(2))
    if not ((major, minor) == (1, 6) or (major == 2 and minor >= 5)):
        raise SourceError(f"{path} is BuildStream {version}; treeship supports {SUPPORTED}")
    return BstTool(path, version, major, minor)


def run_bst(tool: BstTool, req: BstRequest, args: Sequence[str], *, what: str,
            interpreter_script: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run bst (or a helper script under bst's Python) with the request's global options.

    A failure becomes one line: what treeship was doing, and bst's own error message.
    """
    if interpreter_script is not None:
        argv = [*tool.interpreter(), interpreter_script, *req.global_args(), *args]
    else:
        argv = [tool.path, *req.global_args(), *args]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=TIMEOUT,
                              check=False)
    except OSError as e:
        raise SourceError(f"{what}: cannot run {argv[0]}: {e.strerror}") from None
    except subprocess.TimeoutExpired:
        raise SourceError(f"{what}: bst did not finish within {TIMEOUT} s") from None
    if interpreter_script is not None and proc.returncode == EXIT_UNSUPPORTED:
        raise SourceError(f"{what}: {_last_line(proc.stderr) or 'unsupported BuildStream'}; "
                          f"treeship supports {SUPPORTED}")
    if proc.returncode != 0:
        raise SourceError(f"{what}: bst failed: {bst_error(proc.stderr) or f'exit status {proc.returncode}'}")
    return proc


def bst_error(stderr: str) -> str:
    """bst's error message from its stderr: the last paragraph that is not log lines (bst
    prints the error after a blank line), plus the first line of its indented detail
    (bst's hint, e.g. which command to run)."""
    paragraphs: list[list[str]] = [[]]
    for line in stderr.splitlines():
        if line.strip():
            paragraphs[-1].append(line)
        elif paragraphs[-1]:
            paragraphs.append([])
    detail = None
    for para in reversed([p for p in paragraphs if p]):
        if para[0].startswith("Traceback"):
            return f"{para[-1].strip()} (a Python traceback from BuildStream)"
        if para[0].startswith(("[", "Pipeline Summary")):
            continue
        if para[0][0] in " \t":
            detail = detail or para[0].strip()
            continue
        message = "; ".join(line.strip() for line in para[:3] if not line.startswith("["))
        return f"{message} ({detail})" if detail else message
    return _last_line(stderr)


def _last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")


def collect(req: BstRequest, tool: BstTool) -> Collected:
    """The provenance of ``req.element``'s pipeline, validated against the schema."""
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if tool.major == 1:
        from . import buildstream1 as adapter
    else:
        from . import buildstream2 as adapter  # type: ignore[no-redef]
    try:
        loaded = adapter.load(req, tool)
    except SourceError as e:
        if "Subproject fetch needed" not in e.message:
            raise
        # BuildStream 1.x cannot even load a pipeline whose junction was never fetched: never built
        raise SourceError(f"{req.element} is not built (its junctions' projects are not even fetched); "
                          f"build it first: {req.command_line('build', req.element)}") from None
    warnings: list[str] = []
    elements = []
    for el in loaded.elements:
        elements.append(_element(el, warnings))
    data: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "build": {"tool": "buildstream", "tool_version": loaded.version, "project": loaded.project,
                  "target": req.element, "options": loaded.options, "created": created},
        "elements": elements,
    }
    return Collected(validate(data, f"provenance of {req.element}"), loaded.target_state, warnings)


def _element(el: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    """One element as the schema wants it; what bst could not say becomes a warning."""
    out: dict[str, Any] = {"name": el["name"], "kind": el["kind"]}
    key = el.get("cache_key")
    if isinstance(key, str) and HEX_KEY.match(key):
        out["cache_key"] = key
    else:
        warnings.append(f"{el['name']}: BuildStream reports no cache key (sources not resolved?)")
    out["sources"] = []
    for src in el.get("sources", []):
        entry = {k: v for k, v in src.items() if v is not None and v != ""}
        commit = entry.get("commit")
        if commit is not None and not HEX_COMMIT.match(commit):
            entry.pop("commit")
            entry["warning"] = "; ".join(x for x in (entry.get("warning"), f"{commit!r} is not a full commit id")
                                         if x)
        ref = entry.get("ref")
        if entry["kind"] in ("tar", "zip", "remote", "deb") and isinstance(ref, str) and HEX_KEY.match(ref):
            entry.setdefault("sha256", ref)
        if entry.get("warning"):
            warnings.append(f"{el['name']}: {entry['kind']} source: {entry['warning']}")
        out["sources"].append(entry)
    out["build_depends"] = list(dict.fromkeys(el.get("build_depends", [])))
    out["runtime_depends"] = list(dict.fromkeys(el.get("runtime_depends", [])))
    return out


def checkout(req: BstRequest, tool: BstTool, dest: Path) -> None:
    """Check the (built) element out into ``dest``, which must not exist yet."""
    if tool.major == 1:
        args = ["checkout", req.element, str(dest)]
    else:
        args = ["artifact", "checkout", req.element, "--directory", str(dest)]
    run_bst(tool, req, args, what=f"{req.element}: checkout")
    if not dest.is_dir():
        raise SourceError(f"{req.element}: bst checkout produced no directory")


@contextmanager
def prepared(req: BstRequest, *, workdir: str | None = None) -> Iterator[tuple[Path, Collected]]:
    """Provenance first (it also tells whether the element is built), then the checkout into a
    private temp dir, removed afterwards."""
    tool = find_tool(req.command)
    collected = collect(req, tool)
    if collected.target_state != "cached":
        raise SourceError(f"{req.element} is not built (bst says: {collected.target_state}); "
                          f"build it first: {req.command_line('build', req.element)}")
    with tempfile.TemporaryDirectory(prefix="treeship-bst-", dir=workdir) as tmp:
        dest = Path(tmp) / "checkout"
        checkout(req, tool, dest)
        yield dest, collected


def run_script(tool: BstTool, req: BstRequest, script: str, command: str, *, what: str, label: str) -> Any:
    """Run one of our helper scripts under bst's own Python (its command ``command`` on the
    element) and return the JSON it wrote; ``label`` names the script in errors."""
    with tempfile.TemporaryDirectory(prefix="treeship-bst-") as tmp:
        out = Path(tmp) / "result.json"
        run_bst(tool, req, [command, "--output", str(out), req.element], what=what,
                interpreter_script=script_path(script))
        try:
            return json.loads(out.read_text("utf-8"))
        except (OSError, ValueError) as e:
            raise ProvenanceError(f"{req.element}: {label} wrote no readable result: {e}") from None


def script_path(name: str) -> str:
    """A helper script shipped in this package (run under bst's Python, never imported here)."""
    path = resources.files(__package__).joinpath(name)
    if not isinstance(path, Path) or not path.is_file():
        raise ProvenanceError(f"{name}: treeship's BuildStream helper script is missing from the installation")
    return str(path)
