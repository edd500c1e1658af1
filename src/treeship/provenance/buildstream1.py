"""BuildStream 1.6: the pipeline's provenance, read through BuildStream itself.

``bst show`` (1.x) has no format symbol for source URLs or refs, and reading the ``.bst``
files by hand would miss includes, ``(?)`` conditionals, project options,
``project.refs``, aliases and junctions. So treeship runs ``_bst1_script.py`` under the
interpreter of the ``bst`` executable (its ``#!`` line): the script adds a command to
bst's own command line, loads the pipeline exactly as ``bst show --deps all`` does, and
writes JSON that this module checks. This is the only place that depends on BuildStream
1.x internals, and the script refuses any series but 1.6.
"""

from __future__ import annotations

from typing import Any

from ..errors import ProvenanceError
from .buildstream import BstRequest, BstTool, Loaded, run_script

SCRIPT = "_bst1_script.py"


def load(req: BstRequest, tool: BstTool) -> Loaded:
    data = run_script(tool, req, SCRIPT, "treeship-provenance",
                      what=f"{req.element}: reading the project through BuildStream {tool.version}",
                      label=f"BuildStream {tool.version} loader")
    return _checked(data, req.element)


def _checked(data: Any, element: str) -> Loaded:
    """The script's JSON, its shape checked (a wrong shape is a treeship bug, said plainly)."""
    def bad(why: str) -> ProvenanceError:
        return ProvenanceError(f"{element}: unexpected output from the BuildStream 1.x loader: {why}")

    if not isinstance(data, dict) or not isinstance(data.get("elements"), list):
        raise bad("no element list")
    elements = []
    for el in data["elements"]:
        if not isinstance(el, dict) or not isinstance(el.get("name"), str) or not isinstance(el.get("kind"), str):
            raise bad(f"malformed element {el!r:.80}")
        sources = el.get("sources") or []
        if not all(isinstance(s, dict) and isinstance(s.get("kind"), str) for s in sources):
            raise bad(f"{el['name']}: malformed sources")
        elements.append({
            "name": el["name"], "kind": el["kind"], "cache_key": el.get("cache_key"),
            "sources": sources,
            "build_depends": [str(d) for d in el.get("build_depends") or []],
            "runtime_depends": [str(d) for d in el.get("runtime_depends") or []],
        })
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise bad("options is not a mapping")
    return Loaded(version=str(data.get("buildstream_version", "")), project=str(data.get("project", "")),
                  options=options, target_state="cached" if data.get("target_cached") else "not cached",
                  elements=elements)
