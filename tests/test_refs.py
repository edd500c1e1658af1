"""A branch is its ref: a branch named like the start of a commit's checksum (``b``,
``cafe``, ``2024``) names the commit its ref holds, not that commit (libostree's
``resolve_rev`` tries a checksum prefix first, as ``ostree rev-parse`` shows)."""

from __future__ import annotations

from pathlib import Path

from conftest import ostree
from treeship.repo import Repo


def _two_commits(tmp_path: Path) -> tuple[Path, str, str]:
    repo = tmp_path / "repo"
    ostree("init", f"--repo={repo}", "--mode=archive")
    commits = []
    for i in range(2):
        tree = tmp_path / f"tree{i}"
        tree.mkdir()
        (tree / "file").write_text(f"release {i}\n")
        commits.append(ostree("commit", f"--repo={repo}", f"--branch=other{i}", str(tree)).stdout.strip())
    return repo, commits[0], commits[1]


def _branch(repo: Path, name: str, commit: str) -> None:
    """A ref file, as ostree writes one (``ostree refs --create`` itself refuses the name:
    it resolves it to the commit, and says the ref exists)."""
    (repo / "refs" / "heads" / name).write_text(f"{commit}\n")


def test_a_branch_named_like_a_checksum_prefix_is_the_branch(tmp_path: Path):
    repo, first, second = _two_commits(tmp_path)
    name = first[:8]  # a unique prefix of the first commit, made the name of a branch at the second
    _branch(repo, name, second)
    assert ostree("rev-parse", f"--repo={repo}", name).stdout.strip() == first  # libostree's reading

    r = Repo.open(repo)

    assert r.resolve(name) == second
    assert r.resolve(second[:6]) == second  # a prefix that is no branch: still a prefix
    assert r.resolve(first) == first and r.resolve("other0") == first


def test_a_new_branch_named_like_a_checksum_prefix_has_no_head(treeship, tmp_path: Path):
    """Releasing onto branch ``cafe`` that does not exist yet starts it (no parent), whatever
    commit's checksum starts ``cafe``; pushing it sends that branch's commit."""
    repo, first, _ = _two_commits(tmp_path)
    name = first[:8]
    assert Repo.open(repo).head(name) is None and Repo.open(repo).resolve(name) == first
    tree = tmp_path / "tree2"
    tree.mkdir()
    (tree / "file").write_text("release 2\n")

    new = treeship("release", tree, "--repo", repo, "--branch", name, "--json").json()["commit"]

    assert new != first
    assert (repo / "refs" / "heads" / name).read_text().strip() == new
    log = ostree("log", f"--repo={repo}", new).stdout
    assert log.count("commit ") == 1, log  # no parent: a new branch
    world = tmp_path / "world"
    pushed = treeship("push", "--repo", repo, world, name, "--json").json()
    assert pushed["refs"][0]["new"] == new and (world / "refs" / "heads" / name).read_text().strip() == new


def test_releasing_onto_such_a_branch_takes_its_head_as_parent(treeship, tmp_path: Path):
    repo, first, second = _two_commits(tmp_path)
    name = first[:8]
    _branch(repo, name, second)
    tree = tmp_path / "tree2"
    tree.mkdir()
    (tree / "file").write_text("release 2\n")

    new = treeship("release", tree, "--repo", repo, "--branch", name, "--json").json()["commit"]

    assert ostree("rev-parse", f"--repo={repo}", f"{new}^").stdout.strip() == second


def test_a_damaged_ref_is_no_missing_branch(treeship, tmp_path: Path):
    """A ref file libostree cannot read is an error for a release onto that branch, not a
    new branch that would overwrite it."""
    repo, _, _ = _two_commits(tmp_path)
    (repo / "refs" / "heads" / "damaged").write_text("not a checksum\n")
    tree = tmp_path / "tree2"
    tree.mkdir()
    (tree / "file").write_text("release 2\n")

    r = treeship("release", tree, "--repo", repo, "--branch", "damaged", rc=5)

    assert "damaged" in r.stderr and "unreadable ref" in r.stderr, r.stderr
    assert (repo / "refs" / "heads" / "damaged").read_text() == "not a checksum\n"
