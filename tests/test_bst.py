"""treeship release --bst, against real BuildStream: 1.6 (Debian's bst) and 2.x (PyPI, own venv).

Each fixture project (tests/bstproject.py) is built once per session per BuildStream; the
provenance treeship records is checked against what bst itself says (`bst show
%{full-key}`) and what git says (`git rev-parse`), and the released tree against `bst
checkout`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bstproject import BuiltProject, bst_version, build_project, ensure_bst2, git
from conftest import ostree
from treeship.provenance.buildstream import script_path

BRANCH = "fixture/x86_64"
PIPELINE = {"base.bst": "import", "greet.bst": "import", "sub.bst:data.bst": "import", "system.bst": "compose",
            "sub.bst": "junction"}


@pytest.fixture(scope="session")
def bst1(tmp_path_factory: pytest.TempPathFactory) -> BuiltProject:
    bst = shutil.which("bst")
    if bst is None or not bst_version(bst).startswith("1.6."):
        pytest.skip("BuildStream 1.6 (Debian's `buildstream` package) is not installed")
    built = build_project(tmp_path_factory.mktemp("bst1"), 1, bst, "system.bst", "odd.bst")
    built.run("--option", "flavour", "fancy", "build", "system.bst")
    return built


@pytest.fixture(scope="session")
def bst2(tmp_path_factory: pytest.TempPathFactory) -> BuiltProject:
    try:
        bst = os.environ.get("TREESHIP_TEST_BST2") or ensure_bst2()
    except RuntimeError as e:
        pytest.skip(f"BuildStream 2 could not be installed from PyPI: {e}")
    built = build_project(tmp_path_factory.mktemp("bst2"), 2, bst, "system.bst", "odd.bst")
    built.run("--option", "flavour", "fancy", "build", "system.bst")
    return built


@pytest.fixture(params=[1, 2], ids=["bst1", "bst2"])
def built(request: pytest.FixtureRequest) -> BuiltProject:
    return request.getfixturevalue(f"bst{request.param}")


def release_bst(treeship, built: BuiltProject, repo: Path, element: str, *args: str, rc: int | None = 0,
                branch: str = BRANCH):
    # BuildStream 1.6 is found as `bst` on PATH; BuildStream 2 is named explicitly.
    which = [] if built.major == 1 else ["--bst-command", built.bst]
    return treeship("release", "--bst", element, "--bst-project", built.proj.project, *which, "--branch", branch,
                    "--repo", repo, *args, rc=rc, env=built.env)


def provenance(treeship, repo: Path, ref: str = BRANCH) -> dict:
    return treeship("show", ref, "--repo", repo, "--provenance", "--format", "json").json()


def listing(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Every path under root: type, content, executable bit (what a release must keep)."""
    out: dict[str, tuple] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel in skip:
            continue
        if p.is_symlink():
            out[rel] = ("symlink", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir",)
        else:
            out[rel] = ("file", p.read_bytes(), bool(p.stat().st_mode & 0o100))
    return out


def test_provenance_is_what_bst_and_git_say(treeship, repo, built):
    out = release_bst(treeship, built, repo, "system.bst", "--json").json()
    assert out["elements"] == len(PIPELINE) and out["warnings"] == []
    data = provenance(treeship, repo)
    build = data["build"]
    assert {k: build[k] for k in ("tool", "tool_version", "project", "target", "options")} == {
        "tool": "buildstream", "tool_version": built.version, "project": "fixture", "target": "system.bst",
        "options": {"flavour": "plain"}}
    created = datetime.strptime(build["created"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - created).total_seconds()) < 600

    els = {e["name"]: e for e in data["elements"]}
    assert {name: e["kind"] for name, e in els.items()} == PIPELINE  # junction element included
    assert {name: e["cache_key"] for name, e in els.items()} == built.full_keys("system.bst", "sub.bst")
    assert sorted(els["system.bst"]["build_depends"]) == ["base.bst", "greet.bst", "sub.bst:data.bst"]
    assert els["system.bst"]["runtime_depends"] == []
    assert els["greet.bst"]["build_depends"] == els["greet.bst"]["runtime_depends"] == ["base.bst"]

    p = built.proj

    def only_source(name: str) -> dict:
        (src,) = els[name]["sources"]
        return src

    # git behind an alias defined in an include file; the ref in `git describe` form
    greet = only_source("greet.bst")
    assert p.refs["greet"].startswith("v1.0-1-g")
    assert greet["kind"] == "git" and greet["url"] == p.url("greet") and greet["alias_url"] == "repos:greet"
    assert greet["commit"] == git(p.repos / "greet", "rev-parse", "HEAD")
    if built.major == 1:
        assert greet["ref"] == p.refs["greet"]  # as written in the element
    else:
        assert greet["ref"] == greet["commit"] and greet["version_guess"] == "1.0"  # bst show's `version`
    # the junctioned project's element, behind the subproject's own alias, its ref in project.refs
    data_src = only_source("sub.bst:data.bst")
    assert (data_src["url"], data_src["alias_url"]) == (p.url("data"), "upstream:data")
    assert data_src["commit"] == git(p.repos / "data", "rev-parse", "HEAD")
    # the junction element itself
    junction = only_source("sub.bst")
    assert (junction["url"], junction["commit"]) == (p.url("subproject"), git(p.repos / "subproject", "rev-parse",
                                                                               "HEAD"))
    local = only_source("base.bst")
    assert local["kind"] == "local" and local["path"] == "files/base" and "url" not in local


def test_released_tree_is_the_bst_checkout(treeship, repo, built, tmp_path):
    manifest_path = "usr/share/treeship/provenance.json"
    release_bst(treeship, built, repo, "system.bst", "--manifest-path", manifest_path)
    ours = tmp_path / "released"
    ostree("checkout", "--repo", repo, "--user-mode", BRANCH, ours)
    theirs = built.checkout("system.bst", tmp_path / "bst-checkout")
    assert listing(ours, skip=(manifest_path, "usr/share/treeship")) == listing(theirs)
    assert {rel for rel, what in listing(theirs).items() if what[0] == "file"} == {
        "etc/os-release", "usr/bin/hello", "usr/share/greet/hello.txt", "usr/share/greet/README",
        "usr/share/data/numbers.txt"}
    assert listing(ours)["usr/bin/hello"][2] is True
    assert json.loads((ours / manifest_path).read_text()) == provenance(treeship, repo)


def test_project_option_and_conditional(treeship, repo, built):
    # BuildStream 2 here through $TREESHIP_BST rather than --bst-command
    env = {**built.env, "TREESHIP_BST": built.bst}
    treeship("release", "--bst", "system.bst", "--bst-project", built.proj.project, "--bst-option", "flavour",
             "fancy", "--branch", BRANCH, "--repo", repo, env=env)
    data = provenance(treeship, repo)
    assert data["build"]["options"] == {"flavour": "fancy"}
    els = {e["name"]: e for e in data["elements"]}
    assert set(els) == {*PIPELINE, "extra.bst"}
    assert "extra.bst" in els["system.bst"]["build_depends"]  # added by the (?) conditional
    keys = built.full_keys("system.bst", "sub.bst", options=("--option", "flavour", "fancy"))
    assert {name: e["cache_key"] for name, e in els.items()} == keys
    assert keys["system.bst"] != built.full_keys("system.bst")["system.bst"]
    assert ostree("ls", "--repo", repo, BRANCH, "/usr/share/extra.txt").returncode == 0


def test_a_source_that_cannot_say_where_it_comes_from_is_kept_with_a_warning(treeship, repo, built):
    r = release_bst(treeship, built, repo, "odd.bst")
    warnings = [line for line in r.stderr.splitlines() if line.startswith("treeship: warning: ")]
    assert len(warnings) == 1 and warnings[0].startswith("treeship: warning: odd.bst: opaque source: ")
    (odd,) = provenance(treeship, repo)["elements"]
    (src,) = odd["sources"]
    assert src["kind"] == "opaque" and src["warning"] and "url" not in src and "commit" not in src
    assert odd["cache_key"] == built.full_keys("odd.bst")["odd.bst"]


def test_an_element_that_is_not_built_is_refused_with_the_command_to_run(treeship, repo, built, tmp_path):
    bst = built.bst if built.major == 2 else "bst"
    r = release_bst(treeship, built, repo, "lonely.bst", rc=3)
    (line,) = r.stderr.splitlines()
    assert line.startswith("treeship: error: lonely.bst is not built")
    assert line.endswith(f"build it first: {bst} -C {built.proj.project} build lonely.bst")
    # a project never built at all (BuildStream 1.x cannot even load it: its junction is not fetched)
    fresh = build_project(tmp_path / "fresh", built.major, built.bst)
    r = release_bst(treeship, fresh, repo, "system.bst", "--bst-option", "flavour", "fancy", rc=3)
    (line,) = r.stderr.splitlines()
    assert line.startswith("treeship: error: system.bst is not built")
    assert line.endswith(f"build it first: {bst} -C {fresh.proj.project} -o flavour fancy build system.bst")
    assert ostree("refs", "--repo", repo, check=False).stdout.strip() == ""


def test_bst_errors_are_one_line_with_bst_s_own_message(treeship, repo, built):
    for args, words in ((("missing.bst",), "Could not find element 'missing.bst'"),
                        (("system.bst", "--bst-option", "flavour", "weird"),
                         "Invalid value for enum option 'flavour': weird; Valid values: plain, fancy")):
        r = release_bst(treeship, built, repo, *args, rc=3)
        (line,) = r.stderr.splitlines()
        assert line.startswith(f"treeship: error: {args[0]}: ") and "bst failed: " in line and words in line, line


def test_git_source_moved_by_one_commit(treeship, repo, built, tmp_path):
    # A project of its own: this test moves a source and rebuilds.
    moved = build_project(tmp_path / "moved", built.major, built.bst, "system.bst")
    release_bst(treeship, moved, repo, "system.bst", "--version", "1")
    before = provenance(treeship, repo)
    old_commit = moved.proj.commits["greet"]
    new_commit = moved.proj.move_greet()
    moved.run("build", "system.bst")
    release_bst(treeship, moved, repo, "system.bst", "--version", "2")
    after = provenance(treeship, repo)

    greet = next(e for e in after["elements"] if e["name"] == "greet.bst")["sources"][0]
    assert new_commit == git(moved.proj.repos / "greet", "rev-parse", "HEAD") != old_commit
    assert greet["commit"] == new_commit
    if moved.major == 1:
        assert greet["ref"] == moved.proj.refs["greet"] and greet["ref"].startswith("v1.0-2-g")
    keys = {when: {e["name"]: e["cache_key"] for e in d["elements"]} for when, d in (("old", before), ("new", after))}
    assert keys["new"] == moved.full_keys("system.bst", "sub.bst")
    changed = {name for name in keys["new"] if keys["new"][name] != keys["old"][name]}
    assert changed == {"greet.bst", "system.bst"}

    diff = treeship("diff", f"{BRANCH}^", BRANCH, "--repo", repo, "--format", "json").json()["elements"]
    by_name = {e["name"]: e for e in diff["changed"]}
    assert set(by_name) == {"greet.bst", "system.bst"}
    (src,) = by_name["greet.bst"]["sources"]
    assert src["fields"]["commit"] == {"old": old_commit, "new": new_commit}


def test_usage_errors(treeship, repo, sample_tree, manifest_file):
    for args, words in (
        ((sample_tree, "--bst", "system.bst"), "not both"),
        (("--bst", "system.bst", "--provenance", manifest_file), "--provenance cannot be used with --bst"),
        ((sample_tree, "--bst-option", "flavour", "fancy"), "need --bst"),
        (("--bst", "system.bst", "--bst-command", "/nonexistent/bst"), "not found"),
        (("--bst", "system.bst", "--bst-command", "true"), "did not print a BuildStream version"),
    ):
        r = treeship("release", *args, "--branch", BRANCH, "--repo", repo, rc=None)
        (line,) = r.stderr.splitlines()
        assert r.returncode in (2, 3) and line.startswith("treeship: error: ") and words in line, line


def test_each_helper_script_refuses_the_other_buildstream(bst1, bst2):
    """The loader is pinned to 1.6 and the resolver to 2.5+, whatever bst --version said."""
    for built, script, words in ((bst2, "_bst1_script.py", "needs the 1.6 series"),
                                 (bst1, "_bst2_script.py", "needs 2.5 or later")):
        with open(built.bst) as f:
            interpreter = f.readline()[2:].split()
        p = subprocess.run([*interpreter, script_path(script), "--help"], capture_output=True, text=True,
                           check=False)
        assert p.returncode == 64 and f"BuildStream {built.version} is not supported" in p.stderr
        assert words in p.stderr
