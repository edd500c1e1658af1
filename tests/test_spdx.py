"""`treeship show REF --format spdx`: the provenance as an SPDX 2.3 JSON SBOM.

Checked twice: by spdx-tools (the SPDX project's own parser and validator), and against the
required fields, patterns and enumerations of the SPDX 2.3 JSON schema, restated here.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from conftest import EXAMPLE_MANIFEST, make_tree

BRANCH = "stage3-sysroot/x86_64"
DATE = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T(([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]|23:59:60)Z$"
CHECKSUM = {"type": "object", "required": ["algorithm", "checksumValue"], "additionalProperties": False,
            "properties": {"algorithm": {"enum": ["SHA1", "SHA256", "SHA512"]},
                           "checksumValue": {"pattern": "^[0-9a-fA-F]+$"}}}
# The parts of the SPDX 2.3 JSON schema (spdx-spec schemas/spdx-schema.json) this output uses.
SPDX_23_REQUIRED = {
    "type": "object",
    "required": ["SPDXID", "creationInfo", "dataLicense", "name", "spdxVersion", "documentNamespace"],
    "properties": {
        "spdxVersion": {"const": "SPDX-2.3"},
        "dataLicense": {"const": "CC0-1.0"},
        "SPDXID": {"const": "SPDXRef-DOCUMENT"},
        "documentNamespace": {"type": "string", "pattern": "^[a-z][a-z0-9+.-]*:[^#]+$"},
        "creationInfo": {"type": "object", "required": ["created", "creators"], "additionalProperties": False,
                         "properties": {"created": {"pattern": DATE}, "comment": {"type": "string"},
                                        "creators": {"type": "array", "minItems": 1,
                                                     "items": {"pattern": "^(Tool|Person|Organization): .+"}}}},
        "packages": {"type": "array", "items": {
            "type": "object", "required": ["SPDXID", "downloadLocation", "name"],
            "properties": {
                "SPDXID": {"pattern": "^SPDXRef-[a-zA-Z0-9.-]+$"},
                "filesAnalyzed": {"const": False},
                "checksums": {"type": "array", "items": CHECKSUM},
                "primaryPackagePurpose": {"enum": ["SOURCE", "OTHER", "INSTALL", "ARCHIVE", "LIBRARY"]},
                "externalRefs": {"type": "array", "items": {
                    "type": "object", "required": ["referenceCategory", "referenceLocator", "referenceType"],
                    "additionalProperties": False,
                    "properties": {"referenceCategory": {"enum": ["OTHER", "PERSISTENT-ID", "SECURITY",
                                                                  "PACKAGE-MANAGER"]},
                                   "referenceLocator": {"pattern": r"^\S+$"},
                                   "referenceType": {"pattern": r"^[A-Za-z0-9.-]+$"}, "comment": {"type": "string"}}}},
            }}},
        "relationships": {"type": "array", "items": {
            "type": "object", "required": ["spdxElementId", "relatedSpdxElement", "relationshipType"],
            "additionalProperties": False,
            "properties": {"relationshipType": {"enum": ["DESCRIBES", "GENERATED_FROM", "BUILD_DEPENDENCY_OF",
                                                         "RUNTIME_DEPENDENCY_OF", "DEPENDS_ON"]},
                           "spdxElementId": {"type": "string"}, "relatedSpdxElement": {"type": "string"},
                           "comment": {"type": "string"}}}},
    },
}


def release(treeship, tree: Path, repo: Path, manifest: dict, version: str, tmp_path: Path) -> str:
    path = tmp_path / f"provenance-{version}.json"
    path.write_text(json.dumps(manifest))
    return treeship("release", tree, "--repo", repo, "-b", BRANCH, "--version", version, "--provenance", path,
                    "--allow-unchanged", "--json").json()["commit"]


def sbom(treeship, repo: Path, ref: str, tmp_path: Path) -> tuple[dict, Path]:
    out = treeship("show", ref, "--repo", repo, "--provenance", "--format", "spdx").stdout
    path = tmp_path / "sbom.spdx.json"
    path.write_text(out)
    return json.loads(out), path


def test_sbom_is_valid_spdx_23_with_one_package_per_element_and_source(treeship, tmp_path, repo):
    commit = release(treeship, make_tree(tmp_path / "tree"), repo, EXAMPLE_MANIFEST, "2026.11", tmp_path)
    doc, path = sbom(treeship, repo, BRANCH, tmp_path)

    messages = validate_full_spdx_document(parse_file(str(path)))
    assert [m.validation_message for m in messages] == []
    jsonschema.validate(doc, SPDX_23_REQUIRED)

    assert doc["documentNamespace"] == f"urn:treeship:spdx:{commit}"
    assert doc["name"] == f"{BRANCH} 2026.11"
    # created is the release's own time, so the document is the same every time it is printed
    assert doc["creationInfo"]["created"] == treeship("show", commit, "--repo", repo, "--format", "json").json()["date"]
    assert doc["creationInfo"]["creators"] == ["Tool: treeship-0.1.0"]

    pkgs = {p["SPDXID"]: p for p in doc["packages"]}
    assert list(pkgs) == ["SPDXRef-Release", "SPDXRef-Element-bootstrap-gcc.bst",
                          "SPDXRef-Source-bootstrap-gcc.bst-1", "SPDXRef-Element-bootstrap-binutils.bst",
                          "SPDXRef-Source-bootstrap-binutils.bst-1"]
    rel = pkgs["SPDXRef-Release"]
    assert (rel["name"], rel["versionInfo"]) == (BRANCH, "2026.11")
    assert rel["externalRefs"][0]["referenceLocator"] == commit

    gcc = pkgs["SPDXRef-Element-bootstrap-gcc.bst"]
    assert gcc["name"] == "bootstrap/gcc.bst" and gcc["versionInfo"] == "a" * 64
    assert {"referenceCategory": "OTHER", "referenceType": "cache-key",
            "referenceLocator": "a" * 64} == {k: v for k, v in gcc["externalRefs"][0].items() if k != "comment"}

    git_src = pkgs["SPDXRef-Source-bootstrap-gcc.bst-1"]
    assert git_src["downloadLocation"] == ("git+https://gitlab.example.org/gcc.git"
                                           "@0123456789abcdef0123456789abcdef01234567")
    assert (git_src["name"], git_src["versionInfo"]) == ("gcc", "gcc-14.2.0-3-g0123456")
    assert git_src["primaryPackagePurpose"] == "SOURCE"
    tar_src = pkgs["SPDXRef-Source-bootstrap-binutils.bst-1"]
    assert tar_src["downloadLocation"] == "https://ftp.example.org/binutils-2.43.tar.xz"
    assert tar_src["checksums"] == [{"algorithm": "SHA256", "checksumValue": "c" * 64}]

    rels = {(r["spdxElementId"], r["relationshipType"], r["relatedSpdxElement"]) for r in doc["relationships"]}
    assert rels == {
        ("SPDXRef-DOCUMENT", "DESCRIBES", "SPDXRef-Release"),
        ("SPDXRef-Element-bootstrap-gcc.bst", "GENERATED_FROM", "SPDXRef-Source-bootstrap-gcc.bst-1"),
        ("SPDXRef-Element-bootstrap-binutils.bst", "GENERATED_FROM", "SPDXRef-Source-bootstrap-binutils.bst-1"),
        ("SPDXRef-Element-bootstrap-binutils.bst", "BUILD_DEPENDENCY_OF", "SPDXRef-Element-bootstrap-gcc.bst"),
        # the target (stage3-sysroot) is not among the elements: the release comes from what nothing needs
        ("SPDXRef-Release", "GENERATED_FROM", "SPDXRef-Element-bootstrap-gcc.bst"),
    }


def test_namespace_is_unique_per_release_and_output_is_stable(treeship, tmp_path, repo):
    tree = make_tree(tmp_path / "tree")
    first = release(treeship, tree, repo, EXAMPLE_MANIFEST, "1", tmp_path)
    second = release(treeship, tree, repo, EXAMPLE_MANIFEST, "2", tmp_path)
    old, _ = sbom(treeship, repo, f"{BRANCH}^", tmp_path)
    new, _ = sbom(treeship, repo, BRANCH, tmp_path)
    assert old["documentNamespace"].endswith(first) and new["documentNamespace"].endswith(second)
    by_checksum = treeship("show", second, "--repo", repo, "--format", "spdx").stdout  # --format spdx implies it
    assert json.loads(by_checksum) == new


def test_target_element_runtime_deps_local_sources_and_odd_names(treeship, tmp_path, repo):
    m = copy.deepcopy(EXAMPLE_MANIFEST)
    m["elements"][0]["runtime_depends"] = ["bootstrap/binutils.bst"]
    m["elements"].append({"name": "bootstrap/stage3-sysroot.bst", "kind": "compose", "cache_key": "d" * 64,
                          "sources": [{"kind": "local", "path": "files", "warning": "no URL"},
                                      {"kind": "git", "url": "git@example.org:tools/x.git", "commit": "e" * 40}],
                          "build_depends": ["bootstrap/gcc.bst"], "runtime_depends": []})
    m["elements"].append({"name": "bootstrap/gcc.bst:x", "kind": "import", "sources": []})  # sanitises to the same
    m["elements"].append({"name": "bootstrap/gcc.bst_x", "kind": "import", "sources": []})
    release(treeship, make_tree(tmp_path / "tree"), repo, m, "1", tmp_path)
    doc, path = sbom(treeship, repo, BRANCH, tmp_path)
    assert [v.validation_message for v in validate_full_spdx_document(parse_file(str(path)))] == []
    jsonschema.validate(doc, SPDX_23_REQUIRED)
    pkgs = {p["SPDXID"]: p for p in doc["packages"]}
    assert len(pkgs) == len(doc["packages"]) == 1 + 5 + 4
    assert pkgs["SPDXRef-Element-bootstrap-gcc.bst-x"]["name"] == "bootstrap/gcc.bst:x"
    assert pkgs["SPDXRef-Element-bootstrap-gcc.bst-x-2"]["name"] == "bootstrap/gcc.bst_x"
    local = pkgs["SPDXRef-Source-bootstrap-stage3-sysroot.bst-1"]
    assert local["downloadLocation"] == "NOASSERTION" and local["name"] == "files"
    assert local["comment"].endswith("kind local; warning: no URL")
    scp = pkgs["SPDXRef-Source-bootstrap-stage3-sysroot.bst-2"]
    assert scp["downloadLocation"] == f"git+ssh://git@example.org/tools/x.git@{'e' * 40}"
    rels = {(r["spdxElementId"], r["relationshipType"], r["relatedSpdxElement"]) for r in doc["relationships"]}
    assert ("SPDXRef-Release", "GENERATED_FROM", "SPDXRef-Element-bootstrap-stage3-sysroot.bst") in rels
    assert not any(r[0] == "SPDXRef-Release" and r[1] == "GENERATED_FROM"
                   and r[2] != "SPDXRef-Element-bootstrap-stage3-sysroot.bst" for r in rels)
    assert ("SPDXRef-Element-bootstrap-binutils.bst", "RUNTIME_DEPENDENCY_OF",
            "SPDXRef-Element-bootstrap-gcc.bst") in rels
    assert ("SPDXRef-Element-bootstrap-gcc.bst", "BUILD_DEPENDENCY_OF",
            "SPDXRef-Element-bootstrap-stage3-sysroot.bst") in rels


def test_release_without_provenance_has_no_sbom(treeship, tmp_path, repo):
    treeship("release", make_tree(tmp_path / "tree"), "--repo", repo, "-b", BRANCH)
    r = treeship("show", BRANCH, "--repo", repo, "--format", "spdx", rc=4)
    assert r.stdout == "" and r.stderr.count("\n") == 1 and "no provenance" in r.stderr
