"""`treeship diff A B`: elements (from the manifests) and files (from the trees) between two releases.

Real git repositories give the source commits and `git describe` refs; `ostree diff` is the
independent checker of the file list.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import make_tree, ostree

BRANCH = "stage3-sysroot/x86_64"
GCC_URL = "https://gitlab.example.org/gcc.git"


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org", "GIT_CONFIG_GLOBAL": "/dev/null"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def gcc_history(tmp_path: Path) -> list[tuple[str, str]]:
    """A real git repository whose tip moved by one commit: [(commit, describe), (commit, describe)]."""
    repo = tmp_path / "gcc.git"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    out = []
    for n in (1, 2):
        (repo / "gcc.c").write_text(f"int version = {n};\n")
        git(repo, "add", "gcc.c")
        git(repo, "commit", "-q", "-m", f"commit {n}")
        if n == 1:
            git(repo, "tag", "-a", "gcc-14.2.0", "-m", "release")
        out.append((git(repo, "rev-parse", "HEAD"), git(repo, "describe", "--tags", "--long")))
    return out


def manifest(gcc_commit: str, gcc_ref: str, gcc_key: str, sysroot_key: str) -> dict:
    return {
        "schema": "treeship.provenance/v1",
        "build": {"tool": "buildstream", "tool_version": "1.6.8", "project": "baserock",
                  "target": "bootstrap/stage3-sysroot.bst", "options": {"arch": "x86_64"},
                  "created": "2026-11-26T08:00:00Z"},
        "elements": [
            {"name": "bootstrap/binutils.bst", "kind": "autotools", "cache_key": "b" * 64,
             "sources": [{"kind": "tar", "url": "https://ftp.example.org/binutils-2.43.tar.xz", "ref": "c" * 64}],
             "build_depends": [], "runtime_depends": []},
            {"name": "bootstrap/gcc.bst", "kind": "autotools", "cache_key": gcc_key,
             "sources": [{"kind": "git", "url": GCC_URL, "ref": gcc_ref, "commit": gcc_commit}],
             "build_depends": ["bootstrap/binutils.bst"], "runtime_depends": []},
            {"name": "bootstrap/stage3-sysroot.bst", "kind": "compose", "cache_key": sysroot_key, "sources": [],
             "build_depends": ["bootstrap/gcc.bst", "bootstrap/binutils.bst"], "runtime_depends": []},
        ],
    }


def write_json(path: Path, data: dict) -> Path:
    import json

    path.write_text(json.dumps(data))
    return path


def release(treeship, tree: Path, repo: Path, version: str, *args: str | Path) -> str:
    return treeship("release", tree, "--repo", repo, "-b", BRANCH, "--version", version, *args,
                    "--json").json()["commit"]


def second_tree(tree1: Path, dest: Path) -> Path:
    """tree1 with every kind of change: content, mode only, added (also in a new dir), removed, type."""
    shutil.copytree(tree1, dest, symlinks=True)
    (dest / "usr" / "bin" / "hello").write_text("#!/bin/sh\necho hello, world\n")
    (dest / "etc" / "os-release").chmod(0o755)
    (dest / "usr" / "lib" / "libgcc_s.so.1").write_bytes(os.urandom(5000))
    (dest / "usr" / "share" / "doc").mkdir(parents=True)
    (dest / "usr" / "share" / "doc" / "README").write_text("docs\n")
    (dest / "etc" / "empty").unlink()
    (dest / "usr" / "lib" / "libfoo.so").unlink()
    (dest / "usr" / "lib" / "libfoo.so").write_text("INPUT(libfoo.so.1)\n")  # symlink → file
    return dest


@pytest.fixture
def two_releases(treeship, tmp_path: Path, repo: Path, gcc_history):
    (c1, d1), (c2, d2) = gcc_history
    tree1 = make_tree(tmp_path / "tree1")
    tree2 = second_tree(tree1, tmp_path / "tree2")
    m1 = write_json(tmp_path / "m1.json", manifest(c1, d1, "a" * 64, "1" * 64))
    m2 = write_json(tmp_path / "m2.json", manifest(c2, d2, "d" * 64, "2" * 64))
    old = release(treeship, tree1, repo, "2026.10", "--provenance", m1)
    new = release(treeship, tree2, repo, "2026.11", "--provenance", m2)
    return {"old": old, "new": new, "tree1": tree1, "tree2": tree2, "gcc": gcc_history}


def test_git_source_moved_by_one_commit_reads_as_release_notes(treeship, repo, two_releases):
    (c1, d1), (c2, d2) = two_releases["gcc"]
    assert d2.startswith("gcc-14.2.0-1-g")  # git describe form, one commit after the tag
    out = treeship("diff", f"{BRANCH}^", BRANCH, "--repo", repo).stdout
    lines = out.splitlines()
    assert lines[0] == f"Changes from {BRANCH}^ to {BRANCH}"
    assert lines[1].split()[:4] == ["from", two_releases["old"][:12], "version", "2026.10"]
    assert lines[2].split()[:4] == ["to", two_releases["new"][:12], "version", "2026.11"]
    assert "Elements: 0 added, 0 removed, 1 changed, 1 rebuilt, 1 unchanged" in lines
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["CHANGE", "ELEMENT", "DETAILS"])
    gcc = lines[header + 1]
    assert gcc.split()[:2] == ["changed", "bootstrap/gcc.bst"]
    assert f"git {GCC_URL}: commit {c1[:12]} → {c2[:12]}, ref {d1} → {d2}" in gcc
    column = gcc.index("git ")
    assert lines[header + 2] == " " * column + f"cache key {'a' * 12} → {'d' * 12}"
    sysroot = lines[header + 3]
    assert sysroot.split()[:2] == ["rebuilt", "bootstrap/stage3-sysroot.bst"]
    assert sysroot.endswith(f"cache key {'1' * 12} → {'2' * 12}")
    assert "bootstrap/binutils.bst" not in out  # unchanged: counted, not listed
    assert "Files: 3 added, 2 removed, 2 modified" in lines
    assert "  modified  usr/bin/hello" in out and "(mode 0644 → 0755)" in out


def test_json_lists_every_change_and_agrees_with_ostree_diff(treeship, repo, two_releases):
    (c1, d1), (c2, d2) = two_releases["gcc"]
    data = treeship("diff", two_releases["old"], two_releases["new"], "--repo", repo, "--format", "json").json()
    assert data["from"] == {"ref": two_releases["old"], "commit": two_releases["old"], "version": "2026.10",
                            "date": data["from"]["date"], "provenance": True}
    assert data["to"]["commit"] == two_releases["new"]
    el = data["elements"]
    assert el["build"] == {} and el["added"] == [] and el["removed"] == [] and el["unchanged"] == 1
    gcc, sysroot = el["changed"]
    assert gcc == {
        "name": "bootstrap/gcc.bst", "change": "changed",
        "kind": {"old": "autotools", "new": "autotools"},
        "cache_key": {"old": "a" * 64, "new": "d" * 64},
        "sources": [{"change": "changed", "kind": "git", "url": GCC_URL,
                     "fields": {"commit": {"old": c1, "new": c2}, "ref": {"old": d1, "new": d2}}}],
        "depends": {}, "other_fields": []}
    assert sysroot["change"] == "rebuilt" and sysroot["sources"] == []

    # Files: the same changes `ostree diff` sees (it also lists directories, and says M for a type change).
    changes = data["files"]["changes"]
    ours: dict[str, str] = {}
    for c in changes:
        ours[c["path"]] = "M" if c["path"] in ours else {"added": "A", "removed": "D", "modified": "M"}[c["change"]]
    theirs = {}
    for line in ostree("diff", "--repo", repo, two_releases["old"], two_releases["new"]).stdout.splitlines():
        kind, path = line.split(maxsplit=1)
        path = path.lstrip("/")
        if not any((t / path).is_dir() and not (t / path).is_symlink()
                   for t in (two_releases["tree1"], two_releases["tree2"])):
            theirs[path] = kind
    assert ours == theirs == {"usr/bin/hello": "M", "etc/os-release": "M", "usr/lib/libgcc_s.so.1": "A",
                              "usr/share/doc/README": "A", "etc/empty": "D", "usr/lib/libfoo.so": "M"}

    # Sizes are the files' own (a symlink's is its target's length), and the summary adds them up.
    def size(tree: Path, path: str) -> int:
        p = tree / path
        return len(os.readlink(p)) if p.is_symlink() else p.stat().st_size

    by_key = {(c["path"], c["change"]): c for c in changes}
    link = by_key[("usr/lib/libfoo.so", "removed")]
    assert link["type"] == "symlink" and link["old_size"] == len("libfoo.so.1")
    assert by_key[("usr/lib/libfoo.so", "added")]["type"] == "file"
    hello = by_key[("usr/bin/hello", "modified")]
    assert (hello["old_size"], hello["new_size"]) == (size(two_releases["tree1"], "usr/bin/hello"),
                                                      size(two_releases["tree2"], "usr/bin/hello"))
    mode = by_key[("etc/os-release", "modified")]
    assert (mode["old_mode"] & 0o7777, mode["new_mode"] & 0o7777) == (0o644, 0o755)
    assert data["files"]["summary"] == {
        "added": 3, "removed": 2, "modified": 2,
        "bytes_added": 5000 + len("docs\n") + len("INPUT(libfoo.so.1)\n"),
        "bytes_removed": len("libfoo.so.1"),
        "bytes_modified_old": hello["old_size"] + mode["old_size"],
        "bytes_modified_new": hello["new_size"] + mode["new_size"]}


def test_refs_may_be_branch_parent_or_checksums(treeship, repo, two_releases):
    by_name = treeship("diff", f"{BRANCH}^", BRANCH, "--repo", repo, "--format", "json").json()
    by_sum = treeship("diff", two_releases["old"], two_releases["new"], "--repo", repo, "--format", "json").json()
    for d in (by_name, by_sum):
        for side in ("from", "to"):
            d[side].pop("ref")
    assert by_name == by_sum


def test_the_same_release_has_no_changes(treeship, repo, two_releases):
    out = treeship("diff", BRANCH, two_releases["new"], "--repo", repo).stdout
    assert "Elements: 0 added, 0 removed, 0 changed, 0 rebuilt, 3 unchanged" in out
    assert out.rstrip().endswith("Files: 0 added, 0 removed, 0 modified")


def test_elements_added_removed_kind_deps_and_build_changes(treeship, tmp_path, repo):
    old = manifest("0" * 40, "v1", "a" * 64, "1" * 64)
    new = copy.deepcopy(old)
    new["build"]["tool_version"] = "1.6.9"
    new["build"]["options"] = {"arch": "aarch64"}
    binutils, gcc, sysroot = new["elements"]
    gcc["kind"] = "meson"
    gcc["sources"].insert(0, {"kind": "patch", "url": "https://example.org/fix.patch", "sha256": "e" * 64})
    gcc["sources"][1]["url"] = "https://mirror.example.org/gcc.git"  # moved mirror, same commit
    sysroot["build_depends"] = ["bootstrap/gcc.bst", "bootstrap/zlib.bst"]
    new["elements"] = [gcc, sysroot, {"name": "bootstrap/zlib.bst", "kind": "autotools", "cache_key": "f" * 64,
                                      "sources": [{"kind": "tar", "url": "https://zlib.net/zlib-1.3.1.tar.gz",
                                                   "ref": "9" * 64}]}]
    tree = make_tree(tmp_path / "tree")
    release(treeship, tree, repo, "1", "--provenance", write_json(tmp_path / "old.json", old))
    release(treeship, tree, repo, "2", "--provenance", write_json(tmp_path / "new.json", new), "--allow-unchanged")
    data = treeship("diff", f"{BRANCH}^", BRANCH, "--repo", repo, "--format", "json").json()["elements"]
    assert data["build"] == {"tool_version": {"old": "1.6.8", "new": "1.6.9"},
                             "options": {"old": {"arch": "x86_64"}, "new": {"arch": "aarch64"}}}
    assert [e["name"] for e in data["added"]] == ["bootstrap/zlib.bst"]
    assert [e["name"] for e in data["removed"]] == ["bootstrap/binutils.bst"]
    gcc_ch, sysroot_ch = data["changed"]
    assert gcc_ch["kind"] == {"old": "autotools", "new": "meson"} and gcc_ch["change"] == "changed"
    assert gcc_ch["sources"] == [
        {"change": "added", "kind": "patch", "url": "https://example.org/fix.patch",
         "fields": {"kind": {"old": None, "new": "patch"}, "url": {"old": None, "new": "https://example.org/fix.patch"},
                    "sha256": {"old": None, "new": "e" * 64}}},
        {"change": "changed", "kind": "git", "url": "https://mirror.example.org/gcc.git",
         "fields": {"url": {"old": GCC_URL, "new": "https://mirror.example.org/gcc.git"}}}]
    assert gcc_ch["cache_key"] == {"old": "a" * 64, "new": "a" * 64}
    assert sysroot_ch["depends"] == {"build": {"added": ["bootstrap/zlib.bst"], "removed": ["bootstrap/binutils.bst"]}}

    text = treeship("diff", f"{BRANCH}^", BRANCH, "--repo", repo).stdout
    assert "  tool_version  1.6.8 → 1.6.9" in text and "  options       arch=x86_64 → arch=aarch64" in text
    assert "Elements: 1 added, 1 removed, 2 changed, 0 rebuilt, 0 unchanged" in text
    assert "source added: patch https://example.org/fix.patch @ eeeeeeeeeeee" in text
    assert "kind autotools → meson" in text
    assert "build deps +bootstrap/zlib.bst -bootstrap/binutils.bst" in text
    assert "tar https://zlib.net/zlib-1.3.1.tar.gz @ 999999999999" in text
    assert text.rstrip().endswith("Files: 0 added, 0 removed, 0 modified")


def test_a_release_without_provenance_is_compared_by_files_only(treeship, tmp_path, repo, manifest_file):
    tree = make_tree(tmp_path / "tree")
    first = release(treeship, tree, repo, "1")
    (tree / "etc" / "new").write_text("x\n")
    release(treeship, tree, repo, "2", "--provenance", manifest_file)
    out = treeship("diff", f"{BRANCH}^", BRANCH, "--repo", repo).stdout
    assert (f"Elements: not compared: {BRANCH}^ ({first[:12]}) carries no provenance manifest; files only"
            in out.splitlines())
    assert "Files: 1 added, 0 removed, 0 modified" in out
    data = treeship("diff", f"{BRANCH}^", BRANCH, "--repo", repo, "--format", "json").json()
    assert data["elements"] is None and (data["from"]["provenance"], data["to"]["provenance"]) == (False, True)
    assert [(c["path"], c["change"]) for c in data["files"]["changes"]] == [("etc/new", "added")]


def test_long_file_lists_are_cut_in_text_only(treeship, tmp_path, repo):
    tree = make_tree(tmp_path / "tree")
    release(treeship, tree, repo, "1")
    for i in range(45):
        (tree / "usr" / "lib" / f"lib{i:02}.so").write_text(str(i))
    release(treeship, tree, repo, "2")
    out = treeship("diff", f"{BRANCH}^", BRANCH, "--repo", repo).stdout
    assert sum(1 for line in out.splitlines() if line.startswith("  added ")) == 40
    assert "  … 5 more added (--format json lists every path)" in out
    data = treeship("diff", f"{BRANCH}^", BRANCH, "--repo", repo, "--format", "json").json()
    assert len(data["files"]["changes"]) == 45


def test_unknown_ref_is_one_line_and_exit_5(treeship, repo, two_releases):
    r = treeship("diff", f"{BRANCH}^^", BRANCH, "--repo", repo, rc=5)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("treeship: error: ")
    r = treeship("diff", "nosuch/branch", BRANCH, "--repo", repo, rc=5)
    assert "nosuch/branch" in r.stderr and r.stdout == ""
