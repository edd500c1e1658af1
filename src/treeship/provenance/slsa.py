"""A release's provenance as an in-toto Statement v1 with an SLSA provenance v1 predicate.

Pure: the manifest and the release's subject in, the statement dict out. The mapping
(docs/provenance.md has the table):

- subject: the branch, digest ``{"sha256": <commit checksum>}`` — an OSTree commit checksum
  *is* the sha256 of the ``.commit`` object, which holds the root tree checksums and the
  metadata (provenance included);
- ``buildDefinition``: ``buildType`` :data:`BUILD_TYPE`; ``externalParameters`` the build's
  target, project, options and the release's branch and version; ``internalParameters`` the
  cache key of every element; ``resolvedDependencies`` every source (``git+URL@ref`` with
  ``{"gitCommit": sha}``, archives with their sha256);
- ``runDetails``: the builder (id, and the build tool's and treeship's versions) and
  ``finishedOn`` = ``build.created``.
"""

from __future__ import annotations

from typing import Any

from .sources import sha256_of, source_name, transport_url, vcs, vcs_uri

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
#: What ``externalParameters`` and ``internalParameters`` mean (documented in docs/provenance.md).
BUILD_TYPE = "urn:treeship:buildtype:release:v1"


def default_builder_id(manifest: dict[str, Any]) -> str:
    tool = (manifest.get("build") or {}).get("tool") or "unknown"
    return f"urn:treeship:builder:{tool}"


def statement(manifest: dict[str, Any], *, branch: str, commit: str, version: str | None, tool_version: str,
              builder_id: str | None = None) -> dict[str, Any]:
    """The statement about release ``commit`` on ``branch``."""
    build = manifest.get("build") or {}
    external: dict[str, Any] = {k: build[k] for k in ("target", "project", "options") if k in build}
    external["release"] = {"branch": branch, "version": version}
    elements = manifest.get("elements") or []
    internal: dict[str, Any] = {
        "provenanceSchema": manifest.get("schema"),
        "cacheKeys": {e["name"]: e["cache_key"] for e in elements if e.get("cache_key")},
    }
    deps: list[dict[str, Any]] = []
    unlocated: list[dict[str, Any]] = []
    for el in elements:
        for i, src in enumerate(el.get("sources") or []):
            rd = resource_descriptor(el["name"], i, src)
            if rd is None:
                unlocated.append({"element": el["name"], "source": i + 1, "kind": src.get("kind"),
                                  **({"path": src["path"]} if src.get("path") else {})})
            else:
                deps.append(rd)
    if unlocated:  # a ResourceDescriptor needs a uri or a digest; these have neither
        internal["sourcesWithoutLocation"] = unlocated
    builder_version = {"treeship": tool_version}
    if build.get("tool") and build.get("tool_version"):
        builder_version[str(build["tool"])] = str(build["tool_version"])
    run: dict[str, Any] = {"builder": {"id": builder_id or default_builder_id(manifest), "version": builder_version}}
    if build.get("created"):
        run["metadata"] = {"finishedOn": build["created"]}
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": branch, "digest": {"sha256": commit}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {"buildType": BUILD_TYPE, "externalParameters": external,
                                "internalParameters": internal, "resolvedDependencies": deps},
            "runDetails": run,
        },
    }


def resource_descriptor(element: str, index: int, src: dict[str, Any]) -> dict[str, Any] | None:
    """One source as an in-toto ResourceDescriptor, or None when neither a URI nor a digest is known."""
    rd: dict[str, Any] = {}
    digest: dict[str, str] = {}
    if vcs(src):
        uri = vcs_uri(src, src.get("ref") or src.get("commit"))
        if src.get("commit"):
            digest[f"{vcs(src)}Commit"] = str(src["commit"])
    else:
        uri = transport_url(src["url"]) if src.get("url") else None
        sha = sha256_of(src)
        if sha:
            digest["sha256"] = sha
    if uri is None and not digest:
        return None
    if uri:
        rd["uri"] = uri
    if digest:
        rd["digest"] = digest
    rd["name"] = source_name(element, index, src)
    annotations = {"element": element, "kind": src.get("kind")}
    for key in ("ref", "warning"):
        if src.get(key) is not None:
            annotations[key] = src[key]
    rd["annotations"] = annotations
    return rd
