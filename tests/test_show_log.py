"""Reading releases back: `treeship show` (record and provenance) and `treeship log`."""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from gi.repository import GLib

from conftest import EXAMPLE_MANIFEST, make_tree, ostree, treeship_command

BRANCH = "demo/x86_64"

YAML_MANIFEST = """\
# A hand-written manifest: YAML, with an unquoted ISO date.
schema: treeship.provenance/v1
build:
  tool: buildstream
  tool_version: 1.6.8
  project: baserock
  target: bootstrap/stage3-sysroot.bst
  options:
    arch: x86_64
  created: 2026-11-26T08:00:00Z
elements:
  - name: bootstrap/gcc.bst
    kind: autotools
    cache_key: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
    sources:
      - kind: git
        url: https://gitlab.example.org/gcc.git
        ref: gcc-14.2.0-3-g0123456
        commit: 0123456789abcdef0123456789abcdef01234567
    build_depends: [bootstrap/binutils.bst]
    runtime_depends: []
  - name: bootstrap/binutils.bst
    kind: autotools
    cache_key: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb
    sources:
      - kind: tar
        url: https://ftp.example.org/binutils-2.43.tar.xz
        ref: cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc
    build_depends: []
    runtime_depends: []
"""


def rev_parse(repo: Path, ref: str) -> str:
    return ostree("rev-parse", "--repo", repo, ref).stdout.strip()


def stored_provenance(repo: Path, ref: str) -> dict:
    text = ostree("show", "--repo", repo, ref, "--print-metadata-key=treeship.provenance").stdout
    return json.loads(GLib.Variant.parse(None, text, None, None).unpack())


def release(treeship, tree: Path, repo: Path, version: str, *args: str | Path) -> str:
    return treeship("release", tree, "--repo", repo, "-b", BRANCH, "--version", version, "--allow-unchanged",
                    *args, "--json").json()["commit"]


# -- provenance ---------------------------------------------------------------------------------


@pytest.fixture
def yaml_manifest(tmp_path: Path) -> Path:
    p = tmp_path / "provenance.yaml"
    p.write_text(YAML_MANIFEST)
    return p


def test_yaml_fixture_means_the_example_manifest():
    # The YAML text above is the same manifest as EXAMPLE_MANIFEST, once the date stays a string.
    data = yaml.safe_load(YAML_MANIFEST)
    data["build"]["created"] = data["build"]["created"].strftime("%Y-%m-%dT%H:%M:%SZ")
    assert data == EXAMPLE_MANIFEST


def test_show_provenance_json_is_the_manifest(treeship, sample_tree, repo, manifest_file):
    release(treeship, sample_tree, repo, "1", "--provenance", manifest_file)
    out = treeship("show", BRANCH, "--repo", repo, "--provenance", "--format", "json").stdout
    assert json.loads(out) == EXAMPLE_MANIFEST
    # Key order is kept as given, too.
    assert list(json.loads(out)) == list(EXAMPLE_MANIFEST)
    assert list(json.loads(out)["elements"][0]) == list(EXAMPLE_MANIFEST["elements"][0])
    assert stored_provenance(repo, BRANCH) == EXAMPLE_MANIFEST


def test_yaml_manifest_with_unquoted_date(treeship, sample_tree, repo, yaml_manifest):
    release(treeship, sample_tree, repo, "1", "--provenance", yaml_manifest)
    shown = json.loads(treeship("show", BRANCH, "--repo", repo, "--provenance", "--format", "json").stdout)
    assert shown == EXAMPLE_MANIFEST
    assert shown["build"]["created"] == "2026-11-26T08:00:00Z"
    assert stored_provenance(repo, BRANCH)["build"]["created"] == "2026-11-26T08:00:00Z"


def test_show_provenance_yaml_round_trips(treeship, sample_tree, repo, manifest_file):
    release(treeship, sample_tree, repo, "1", "--provenance", manifest_file)
    out = treeship("show", BRANCH, "--repo", repo, "--provenance", "--format", "yaml").stdout
    assert not out.lstrip().startswith("{")  # YAML, not JSON
    assert yaml.safe_load(out) == EXAMPLE_MANIFEST  # a plain YAML reader gets strings back, dates included


def test_show_provenance_text(treeship, sample_tree, repo, manifest_file):
    release(treeship, sample_tree, repo, "1", "--provenance", manifest_file)
    out = treeship("show", BRANCH, "--repo", repo, "--provenance").stdout
    for needle in ("bootstrap/gcc.bst", "bootstrap/binutils.bst", "buildstream 1.6.8",
                   "https://gitlab.example.org/gcc.git", "0123456789abcdef0123456789abcdef01234567",
                   "bootstrap/stage3-sysroot.bst"):
        assert needle in out, needle
    assert out.index("bootstrap/gcc.bst") < out.index("bootstrap/binutils.bst")


def test_provenance_of_older_release(treeship, sample_tree, repo, manifest_file, yaml_manifest, tmp_path):
    release(treeship, sample_tree, repo, "1", "--provenance", manifest_file)
    other = dict(EXAMPLE_MANIFEST, elements=[{"name": "only/one.bst"}])
    second = tmp_path / "second.json"
    second.write_text(json.dumps(other))
    release(treeship, sample_tree, repo, "2", "--provenance", second)
    head = json.loads(treeship("show", BRANCH, "--repo", repo, "--provenance", "--format", "json").stdout)
    prev = json.loads(treeship("show", f"{BRANCH}^", "--repo", repo, "--provenance", "--format", "json").stdout)
    assert head == other
    assert prev == EXAMPLE_MANIFEST


def test_show_provenance_of_release_without_one(treeship, sample_tree, repo):
    release(treeship, sample_tree, repo, "1")
    res = treeship("show", BRANCH, "--repo", repo, "--provenance", rc=4)
    assert "no provenance" in res.stderr
    assert res.stdout == ""


# -- show -----------------------------------------------------------------------------------------


def _release_cli(*args: str | Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TREESHIP_REPO"}
    p = subprocess.run([*treeship_command(), "release", *map(str, args), "--json"], capture_output=True, text=True,
                       env=env, check=False, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["commit"]


@pytest.fixture(scope="module")
def history_repo(tmp_path_factory: pytest.TempPathFactory, ed25519_key) -> tuple[Path, list[str]]:
    """Releases 1, 2, 3 on BRANCH (3 signed, 2 with provenance and a body); commits oldest first.

    Made once for the module: the tests that use it only read.
    """
    base = tmp_path_factory.mktemp("history")
    tree = make_tree(base / "tree")
    repo = base / "releases"
    manifest = base / "provenance.json"
    manifest.write_text(json.dumps(EXAMPLE_MANIFEST))
    common = ("--repo", repo, "-b", BRANCH)
    c1 = _release_cli(tree, *common, "--version", "1", "--subject", "first release")
    (tree / "etc" / "os-release").write_text("NAME=Example\nVERSION=2\n")
    c2 = _release_cli(tree, *common, "--version", "2", "--provenance", manifest, "--body", "line a\nline b")
    (tree / "etc" / "os-release").write_text("NAME=Example\nVERSION=3\n")
    c3 = _release_cli(tree, *common, "--version", "3", "--sign-ed25519", ed25519_key.secret)
    return repo, [c1, c2, c3]


def ostree_date(repo: Path, ref: str) -> str:
    """`Date:  2026-11-26 08:59:56 +0000` from `ostree show`, as ISO 8601 UTC."""
    m = re.search(r"^Date:\s+(\S+) (\S+) \+0000$", ostree("show", "--repo", repo, ref).stdout, re.M)
    assert m
    return f"{m[1]}T{m[2]}Z"


def test_show_json_fields(treeship, history_repo):
    repo, (c1, c2, c3) = history_repo
    rec = treeship("show", f"{BRANCH}^", "--repo", repo, "--format", "json").json()
    assert rec["commit"] == c2 == rev_parse(repo, f"{BRANCH}^")
    assert rec["parent"] == c1
    assert rec["version"] == "2"
    assert rec["subject"] == f"{BRANCH} 2"
    assert rec["body"] == "line a\nline b"
    assert rec["ref_binding"] == [BRANCH]
    assert rec["gpg_signatures"] == 0 and rec["ed25519_signatures"] == 0 and rec["signed"] is False
    assert rec["date"] == ostree_date(repo, c2)
    assert datetime.fromtimestamp(rec["timestamp"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ") == rec["date"]
    fields = ostree("ls", "--repo", repo, "-d", "-C", c2, "/").stdout.split()
    assert (rec["root_contents"], rec["root_metadata"]) == (fields[-3], fields[-2])
    assert rec["metadata"]["version"] == "2"
    assert json.loads(rec["metadata"]["treeship.provenance"]) == EXAMPLE_MANIFEST

    head = treeship("show", BRANCH, "--repo", repo, "--format", "json").json()
    assert head["commit"] == c3 and head["parent"] == c2
    assert head["ed25519_signatures"] == 1 and head["signed"] is True
    first = treeship("show", c1, "--repo", repo, "--format", "json").json()
    assert first["parent"] is None and first["subject"] == "first release"
    # A unique prefix of the checksum names the commit too.
    assert treeship("show", c1[:10], "--repo", repo, "--format", "json").json()["commit"] == c1


def test_show_yaml_matches_json(treeship, history_repo):
    repo, _ = history_repo
    as_json = treeship("show", BRANCH, "--repo", repo, "--format", "json").json()
    as_yaml = yaml.safe_load(treeship("show", BRANCH, "--repo", repo, "--format", "yaml").stdout)
    assert as_yaml == as_json


def test_show_text(treeship, history_repo):
    repo, (c1, c2, c3) = history_repo
    out = treeship("show", f"{BRANCH}^", "--repo", repo).stdout
    assert f"commit   {c2}" in out
    assert f"parent   {c1}" in out
    assert re.search(r"^version\s+2$", out, re.M)
    assert BRANCH in out
    assert "2 elements" in out
    assert "    line a\n    line b" in out
    head = treeship("show", BRANCH, "--repo", repo).stdout
    assert "1 ed25519" in head


def test_show_unknown_ref(treeship, history_repo):
    repo, _ = history_repo
    res = treeship("show", "no/such-branch", "--repo", repo, rc=5)
    assert "no/such-branch" in res.stderr and "Traceback" not in res.stderr


# -- log ------------------------------------------------------------------------------------------


def test_log_json_newest_first(treeship, history_repo):
    repo, (c1, c2, c3) = history_repo
    out = treeship("log", BRANCH, "--repo", repo, "--json").json()
    assert out["branch"] == BRANCH
    rels = out["releases"]
    assert [r["commit"] for r in rels] == [c3, c2, c1]
    assert [r["version"] for r in rels] == ["3", "2", "1"]
    assert [r["subject"] for r in rels] == [f"{BRANCH} 3", f"{BRANCH} 2", "first release"]
    assert [r["signed"] for r in rels] == [True, False, False]
    assert [r["parent"] for r in rels] == [c2, c1, None]
    for r in rels:
        assert r["date"] == ostree_date(repo, r["commit"])
    # The same chain as ostree's own log.
    ostree_log = ostree("log", "--repo", repo, BRANCH).stdout
    assert re.findall(r"^commit ([0-9a-f]{64})$", ostree_log, re.M) == [c3, c2, c1]


def test_log_max_count(treeship, history_repo):
    repo, (_, _, c3) = history_repo
    one = treeship("log", BRANCH, "--repo", repo, "-n", "1", "--json").json()["releases"]
    assert [r["commit"] for r in one] == [c3]
    two = treeship("log", BRANCH, "--repo", repo, "--max-count", "2", "--json").json()["releases"]
    assert len(two) == 2
    treeship("log", BRANCH, "--repo", repo, "-n", "0", rc=2)


def test_log_text(treeship, history_repo):
    repo, (c1, c2, c3) = history_repo
    lines = treeship("log", BRANCH, "--repo", repo).stdout.splitlines()
    assert len(lines) == 4  # header + three releases
    assert [ln[:12] for ln in lines[1:]] == [c3[:12], c2[:12], c1[:12]]
    assert "ed25519" in lines[1]
    assert lines[1].split()[1] == "3"
    assert "first release" in lines[3]


def test_log_from_older_ref(treeship, history_repo):
    repo, (c1, c2, _) = history_repo
    rels = treeship("log", f"{BRANCH}^", "--repo", repo, "--json").json()["releases"]
    assert [r["commit"] for r in rels] == [c2, c1]
