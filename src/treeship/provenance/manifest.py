"""The manifest model: read JSON or YAML, validate against the shipped JSON Schema.

A manifest is kept as the plain dict the user gave (key order included) so that what is
stored in the commit, and shown back, is exactly what was handed in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ..errors import ProvenanceError

SCHEMA_ID = "treeship.provenance/v1"
#: Commit metadata key holding the manifest as a JSON string (covered by the checksum).
METADATA_KEY = "treeship.provenance"


class _StringTimestampLoader(yaml.SafeLoader):
    """SafeLoader that leaves ISO dates as strings: JSON has no date type."""


_StringTimestampLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@dataclass(frozen=True)
class Manifest:
    """A validated manifest and its stored form."""

    data: dict[str, Any]

    @property
    def stored(self) -> str:
        return dumps_json(self.data)

    @property
    def element_count(self) -> int:
        return len(self.data.get("elements", []))


@cache
def schema() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("provenance-v1.schema.json").read_text("utf-8")
    return json.loads(text)


def _path(error: jsonschema.ValidationError) -> str:
    out = "$"
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def validate(data: Any, origin: str = "provenance") -> Manifest:
    """Check ``data`` against the schema; name the first bad field in the error."""
    if not isinstance(data, dict):
        raise ProvenanceError(f"{origin}: the manifest must be a mapping, not {type(data).__name__}")
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: (list(e.absolute_path), e.message))
    if errors:
        best = jsonschema.exceptions.best_match(errors) or errors[0]
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ProvenanceError(f"{origin}: {_path(best)}: {best.message}{more}")
    names = [e["name"] for e in data["elements"]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ProvenanceError(f"{origin}: $.elements: element {dupes[0]!r} is listed more than once")
    return Manifest(data)


def load_file(path: str | Path) -> Manifest:
    """Read a manifest from a .json, .yaml or .yml file."""
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except FileNotFoundError:
        raise ProvenanceError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProvenanceError(f"{p}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.load(text, Loader=_StringTimestampLoader)  # noqa: S506 - a SafeLoader
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ProvenanceError(f"{p}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ProvenanceError(f"{p}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    return validate(data, str(p))


def parse_stored(text: str, origin: str) -> dict[str, Any]:
    """The manifest as stored in a commit (JSON text)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProvenanceError(f"{origin}: stored provenance is not valid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise ProvenanceError(f"{origin}: stored provenance is not a mapping")
    return data


def dumps_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def dumps_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)


def render_text(data: dict[str, Any]) -> str:
    """A short human summary: the build, then one block per element."""
    build = data.get("build", {})
    lines = []
    tool = " ".join(x for x in (build.get("tool"), build.get("tool_version")) if x)
    if tool:
        lines.append(f"Built with:  {tool}")
    for label, key in (("Project:", "project"), ("Target:", "target"), ("Created:", "created")):
        if build.get(key):
            lines.append(f"{label:<12} {build[key]}")
    if build.get("options"):
        opts = ", ".join(f"{k}={v}" for k, v in build["options"].items())
        lines.append(f"{'Options:':<12} {opts}")
    elements = data.get("elements", [])
    lines.append(f"Elements:    {len(elements)}")
    for el in elements:
        lines.append("")
        kind = f" ({el['kind']})" if el.get("kind") else ""
        lines.append(f"  {el['name']}{kind}")
        if el.get("cache_key"):
            lines.append(f"    cache key: {el['cache_key']}")
        for src in el.get("sources", []):
            ref = src.get("commit") or src.get("ref") or src.get("sha256") or ""
            extra = f" @ {ref}" if ref else ""
            described = ""
            if src.get("ref") and src.get("commit") and src["ref"] != src["commit"]:
                described = f" ({src['ref']})"
            where = src.get("url") or src.get("path") or ""
            lines.append(f"    source: {src['kind']} {where}{extra}{described}".rstrip())
            if src.get("warning"):
                lines.append(f"      warning: {src['warning']}")
        if el.get("build_depends"):
            lines.append(f"    build deps: {', '.join(el['build_depends'])}")
        if el.get("runtime_depends"):
            lines.append(f"    runtime deps: {', '.join(el['runtime_depends'])}")
    return "\n".join(lines) + "\n"
