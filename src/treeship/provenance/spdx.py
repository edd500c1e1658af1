"""A release's provenance as an SPDX 2.3 JSON document (an SBOM).

Pure: the manifest and a few facts about the release in, a dict out. The mapping
(docs/provenance.md has the table):

- the release is one package (``SPDXRef-Release``), described by the document, its commit
  checksum an ``ostree-commit`` external reference;
- every element is a package carrying its cache key as an external reference
  (``cache-key``) and its kind in the comment;
- every source is a package whose ``downloadLocation`` pins the exact revision:
  ``git+https://host/repo.git@<commit>`` for git, the URL for archives (their sha256 as a
  checksum when known);
- relationships: the release GENERATED_FROM its target element (or the elements nothing
  depends on), each element GENERATED_FROM its sources, each build dependency
  BUILD_DEPENDENCY_OF and each runtime dependency RUNTIME_DEPENDENCY_OF its dependant.

The document is deterministic for a release: its namespace and creation time come from the
commit (checksum and timestamp), so printing it twice gives the same bytes.
"""

from __future__ import annotations

import re
from typing import Any

from .sources import download_location, sha256_of, source_name

NOASSERTION = "NOASSERTION"
NAMESPACE_PREFIX = "urn:treeship:spdx:"


def _spdx_id(prefix: str, name: str, taken: set[str]) -> str:
    base = f"SPDXRef-{prefix}-{re.sub(r'[^A-Za-z0-9.-]+', '-', name).strip('-') or 'x'}"
    sid, n = base, 2
    while sid in taken:
        sid, n = f"{base}-{n}", n + 1
    taken.add(sid)
    return sid


def to_spdx(manifest: dict[str, Any], *, commit: str, name: str, version: str | None, created: str,
            tool_version: str) -> dict[str, Any]:
    """The SPDX 2.3 document for the release ``commit`` (``created``: ``YYYY-MM-DDThh:mm:ssZ``)."""
    build = manifest.get("build") or {}
    taken: set[str] = {"SPDXRef-DOCUMENT", "SPDXRef-Release"}
    release = {
        "SPDXID": "SPDXRef-Release", "name": name, "versionInfo": version or commit[:12],
        "downloadLocation": NOASSERTION, "filesAnalyzed": False,
        "externalRefs": [{"referenceCategory": "OTHER", "referenceType": "ostree-commit",
                          "referenceLocator": commit,
                          "comment": "OSTree commit checksum: sha256 of the .commit object"}],
        "comment": _build_comment(build),
    }
    packages: list[dict[str, Any]] = [release]
    relationships: list[dict[str, str]] = [
        {"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": "SPDXRef-Release"}]
    ids: dict[str, str] = {}
    elements = manifest.get("elements") or []
    for el in elements:
        ids[el["name"]] = _spdx_id("Element", el["name"], taken)
    for el in elements:
        eid = ids[el["name"]]
        pkg: dict[str, Any] = {"SPDXID": eid, "name": el["name"], "downloadLocation": NOASSERTION,
                               "filesAnalyzed": False,
                               "comment": f"{build.get('tool') or 'build'} element, kind {el.get('kind') or '?'}"}
        if el.get("cache_key"):
            pkg["versionInfo"] = el["cache_key"]
            pkg["externalRefs"] = [{"referenceCategory": "OTHER", "referenceType": "cache-key",
                                    "referenceLocator": el["cache_key"],
                                    "comment": f"full cache key ({build.get('tool') or 'build tool'})"}]
        packages.append(pkg)
        for i, src in enumerate(el.get("sources") or []):
            sid = _spdx_id("Source", f"{el['name']}-{i + 1}", taken)
            packages.append(_source_package(sid, el["name"], i, src))
            relationships.append({"spdxElementId": eid, "relationshipType": "GENERATED_FROM",
                                  "relatedSpdxElement": sid})
        for key, rel in (("build_depends", "BUILD_DEPENDENCY_OF"), ("runtime_depends", "RUNTIME_DEPENDENCY_OF")):
            for dep in el.get(key) or []:
                if dep in ids:
                    relationships.append({"spdxElementId": ids[dep], "relationshipType": rel,
                                          "relatedSpdxElement": eid})
    for top in _tops(build.get("target"), elements):
        relationships.append({"spdxElementId": "SPDXRef-Release", "relationshipType": "GENERATED_FROM",
                              "relatedSpdxElement": ids[top]})
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{name} {version or commit[:12]}",
        "documentNamespace": f"{NAMESPACE_PREFIX}{commit}",
        "creationInfo": {"created": created, "creators": [f"Tool: treeship-{tool_version}"],
                         "comment": "Made from the release's treeship.provenance/v1 manifest."},
        "packages": packages,
        "relationships": relationships,
    }


def _build_comment(build: dict[str, Any]) -> str:
    parts = [f"{k}: {build[k]}" for k in ("tool", "tool_version", "project", "target", "created") if build.get(k)]
    if build.get("options"):
        parts.append("options: " + ", ".join(f"{k}={v}" for k, v in build["options"].items()))
    return "Built with " + "; ".join(parts) if parts else "A treeship release"


def _tops(target: str | None, elements: list[dict[str, Any]]) -> list[str]:
    """The target element, or else every element that no other element depends on."""
    names = [e["name"] for e in elements]
    if target in names:
        return [target]  # type: ignore[list-item]
    needed = {d for e in elements for key in ("build_depends", "runtime_depends") for d in e.get(key) or []}
    return [n for n in names if n not in needed]


def _source_package(sid: str, element: str, index: int, src: dict[str, Any]) -> dict[str, Any]:
    pkg: dict[str, Any] = {"SPDXID": sid, "name": source_name(element, index, src),
                           "downloadLocation": download_location(src) or NOASSERTION,
                           "filesAnalyzed": False, "primaryPackagePurpose": "SOURCE",
                           "comment": f"source {index + 1} of {element}, kind {src.get('kind')}"
                                      + (f"; warning: {src['warning']}" if src.get("warning") else "")}
    version = src.get("ref") or src.get("commit")
    if version:
        pkg["versionInfo"] = str(version)
    digest = sha256_of(src)
    if digest:
        pkg["checksums"] = [{"algorithm": "SHA256", "checksumValue": digest}]
    if src.get("url"):
        pkg["sourceInfo"] = f"{src.get('kind')} source from {src['url']}"
    return pkg
