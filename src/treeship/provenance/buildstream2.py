"""BuildStream 2.5+: the pipeline's provenance from ``bst show --format``.

One ``bst show --deps all`` of the target (and of the junctions) prints, per element,
``%{name}``, ``%{full-key}``, ``%{kind}``, ``%{state}``, ``%{build-deps}``,
``%{runtime-deps}`` and ``%{source-info}`` (YAML: kind, url, medium, version-type,
version, ...). Two things bst show does not say are asked of BuildStream itself through
``_bst2_script.py``, run under the ``bst`` executable's interpreter: the real URL behind
each alias-prefixed one (``repos:greet`` → ``file:///srv/git/greet``; includes,
conditionals and a junction's alias mappings resolve as in ``bst build``), which
junctions the pipeline uses, which sources report no source information (bst show drops
them silently), and the project options' resolved values.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from ..errors import ProvenanceError
from .buildstream import HEX_KEY, BstRequest, BstTool, Loaded, run_bst, run_script

SCRIPT = "_bst2_script.py"
_FIELDS = (("name", "%{name}"), ("key", "%{full-key}"), ("kind", "%{kind}"), ("state", "%{state}"),
           ("build_deps", "%{build-deps}"), ("runtime_deps", "%{runtime-deps}"), ("sources", "%{source-info}"))
_MARK = "@@treeship:"
SHOW_FORMAT = "".join(f"{_MARK}{name}@@\n{symbol}\n" for name, symbol in _FIELDS) + f"{_MARK}end@@"
_MARK_LINE = re.compile(r"^@@treeship:(\w+)@@$")


def load(req: BstRequest, tool: BstTool) -> Loaded:
    resolved = _resolve(req, tool)
    junctions = [str(j) for j in resolved.get("junctions") or []]
    proc = run_bst(tool, req, ["show", "--deps", "all", "--format", SHOW_FORMAT, req.element, *junctions],
                   what=f"{req.element}: bst show")
    shown = parse_show(proc.stdout, req.element)
    per_element = resolved.get("elements") or {}
    target = str(resolved.get("target") or req.element)
    state = next((el["state"] for el in shown if el["name"] == target), None)
    if state is None:
        raise ProvenanceError(f"{req.element}: bst show did not list the target {target}")
    elements = []
    for el in shown:
        info = per_element.get(el["name"]) or {}
        urls = info.get("urls") or {}
        sources = [_source(si, urls) for si in el["sources"]]
        sources += [{"kind": kind, "warning": "the source plugin reports no source information "
                     "(Source.collect_source_info); recorded by kind only"}
                    for kind in info.get("unreported") or []]
        elements.append({"name": el["name"], "kind": el["kind"], "cache_key": el["key"], "sources": sources,
                         "build_depends": el["build_deps"], "runtime_depends": el["runtime_deps"]})
    return Loaded(version=str(resolved.get("buildstream_version") or tool.version),
                  project=str(resolved.get("project") or ""), options=resolved.get("options") or {},
                  target_state=state, elements=elements)


def _resolve(req: BstRequest, tool: BstTool) -> dict[str, Any]:
    data = run_script(tool, req, SCRIPT, "treeship-resolve",
                      what=f"{req.element}: resolving source URLs through BuildStream {tool.version}",
                      label="the BuildStream 2 resolver")
    if not isinstance(data, dict) or not isinstance(data.get("elements"), dict):
        raise ProvenanceError(f"{req.element}: unexpected output from the BuildStream 2 resolver")
    return data


def parse_show(text: str, element: str) -> list[dict[str, Any]]:
    """Split ``bst show --format SHOW_FORMAT`` output into one dict per element.

    Every value is read as strings only (YAML's BaseLoader): a version such as ``1.10`` or
    a hex id made only of digits stays exactly what bst printed.
    """
    elements: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    field_name: str | None = None
    buf: list[str] = []

    def flush() -> None:
        if current is None or field_name is None or field_name == "end":
            return
        raw = "\n".join(buf).strip("\n")
        if field_name in ("build_deps", "runtime_deps", "sources"):
            try:
                value = yaml.load(raw, Loader=yaml.BaseLoader) if raw.strip() else []  # noqa: S506 - strings only
            except yaml.YAMLError as e:
                raise ProvenanceError(f"{element}: bst show printed unreadable {field_name} for "
                                      f"{current.get('name')}: {e}") from None
            current[field_name] = value if isinstance(value, list) else []
        else:
            current[field_name] = raw.strip()

    for line in text.splitlines():
        m = _MARK_LINE.match(line)
        if m is None:
            buf.append(line)
            continue
        flush()
        buf = []
        field_name = m.group(1)
        if field_name == "name":
            current = {}
            elements.append(current)
    flush()
    for el in elements:
        missing = [f for f, _ in _FIELDS if f not in el]
        if missing:
            raise ProvenanceError(f"{element}: bst show output lacks {', '.join(missing)} for {el.get('name')}")
        if not HEX_KEY.match(el["key"]):
            el["key"] = None
    return elements


def _source(info: Any, urls: dict[str, str]) -> dict[str, Any]:
    """One ``%{source-info}`` entry as a manifest source, its URL resolved."""
    if not isinstance(info, dict):
        return {"kind": "unknown", "warning": f"unreadable source-info entry {info!r:.60}"}
    kind = info.get("kind") or "unknown"
    url, medium = info.get("url"), info.get("medium")
    version_type, version = info.get("version-type"), info.get("version")
    entry: dict[str, Any] = {"kind": kind}
    warnings = []
    if url and (medium == "local" or kind == "local"):
        entry["path"] = url
    elif url:
        real = urls.get(url)
        if real is None:
            warnings.append(f"BuildStream did not resolve the URL {url!r}; recorded as bst printed it")
            real = url
        entry["url"] = real
        if real != url:
            entry["alias_url"] = url
    else:
        warnings.append("no URL reported")
    entry["ref"] = version
    if version_type == "commit" and version:
        entry["commit"] = version
    elif version_type == "sha256" and version and HEX_KEY.match(version):
        entry["sha256"] = version
    if not version:
        warnings.append("no version reported")
    for key, name in (("medium", "medium"), ("version-type", "version_type"), ("version-guess", "version_guess")):
        if info.get(key):
            entry[name] = info[key]
    if isinstance(info.get("extra-data"), dict) and info["extra-data"]:
        entry["extra_data"] = info["extra-data"]
    if warnings:
        entry["warning"] = "; ".join(warnings)
    return entry
