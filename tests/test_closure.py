"""check_closure (Repo and FileRepo) finds whatever a commit's tree lacks, walking only where the commit
differs from a complete parent (the receiver checks every pushed commit this way)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import ostree
from treeship.filerepo import FileRepo
from treeship.repo import Repo


@pytest.fixture(params=["libostree", "files"])
def open_repo(request):
    """Both ways of reading a repository walk closures alike: through libostree (Repo), and
    through its files alone (FileRepo, a plain push's receiver)."""
    if request.param == "libostree":
        return Repo.open

    def files(path: Path) -> FileRepo:
        r = FileRepo.open(path, lambda: pytest.fail("FileRepo asked libostree"))
        assert r is not None
        return r

    return files


def _object(repo: Path, checksum: str, suffix: str) -> Path:
    return repo / "objects" / checksum[:2] / f"{checksum[2:]}.{suffix}"


def _ls(repo: Path, commit: str, path: str) -> dict[str, str]:
    """``ostree ls -C``: path → checksum (content, or dirtree for a directory)."""
    out = ostree("ls", f"--repo={repo}", "-C", "-R", commit, path).stdout
    listing = {}
    for line in out.splitlines():
        fields = line.split()
        if fields[0].startswith("d"):  # d0755 0 0 0 <tree> <meta> <path>
            listing[fields[-1]] = fields[4]
        elif fields[0].startswith("-"):  # -0644 0 0 <size> <checksum> <path>
            listing[fields[-1]] = fields[4]
    return listing


def _entry(repo: Path, commit: str, path: str) -> str:
    listing = _ls(repo, commit, "/")
    assert path in listing, (path, listing)  # says what `ostree ls` printed, should it ever not list it
    return listing[path]


@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, str, str]:
    """Two commits of one branch: ``changed/`` differs between them, ``same/`` does not."""
    tree = tmp_path / "tree"
    (tree / "same" / "deep").mkdir(parents=True)
    (tree / "changed").mkdir()
    (tree / "same" / "deep" / "kept").write_bytes(b"kept in both")
    (tree / "same" / "top").write_bytes(b"also in both")
    (tree / "changed" / "edited").write_bytes(b"first version")
    (tree / "changed" / "untouched").write_bytes(b"untouched in a changed directory")
    repo = tmp_path / "repo"
    ostree("init", f"--repo={repo}", "--mode=archive")
    first = ostree("commit", f"--repo={repo}", "--branch=main", str(tree)).stdout.strip()
    (tree / "changed" / "edited").write_bytes(b"second version")
    (tree / "changed" / "added").write_bytes(b"new in the second")
    second = ostree("commit", f"--repo={repo}", "--branch=main", str(tree)).stdout.strip()
    return repo, first, second


def test_complete_commits(open_repo, history):
    repo, first, second = history
    r = open_repo(repo)
    assert r.check_closure(first) is None
    assert r.check_closure(second) is None


@pytest.mark.parametrize("name", ["changed/edited", "changed/added"])
def test_a_missing_object_where_the_commits_differ_is_found(open_repo, history, name):
    repo, _, second = history
    csum = _entry(repo, second, f"/{name}")
    _object(repo, csum, "filez").unlink()
    assert open_repo(repo).check_closure(second) == f"content object {csum} is missing"
    # what the caller says it placed itself is not looked up (the receiver's own objects)...
    assert open_repo(repo).check_closure(second, placed={f"{csum[:2]}/{csum[2:]}.filez"}) is None
    # ... as that object: the same checksum as another type vouches for nothing
    assert open_repo(repo).check_closure(second, placed={f"{csum[:2]}/{csum[2:]}.dirmeta"}) is not None


def test_a_missing_dirtree_where_the_commits_differ_is_found(open_repo, history):
    repo, _, second = history
    tree = _entry(repo, second, "/changed")
    _object(repo, tree, "dirtree").unlink()
    assert open_repo(repo).check_closure(second) == f"dirtree {tree} is missing"


def test_a_partial_parent_is_not_relied_on(open_repo, history):
    """Marked partial, the parent vouches for nothing: the shared subtree is walked, and a
    content object missing from it is found."""
    repo, first, second = history
    csum = _entry(repo, second, "/same/deep/kept")
    _object(repo, csum, "filez").unlink()
    (repo / "state").mkdir(exist_ok=True)
    (repo / "state" / f"{first}.commitpartial").write_text("")
    assert open_repo(repo).check_closure(second) == f"content object {csum} is missing"


def test_an_absent_parent_is_not_relied_on(open_repo, history, tmp_path):
    repo, first, second = history
    csum = _entry(repo, second, "/same/top")
    _object(repo, csum, "filez").unlink()
    _object(repo, first, "commit").unlink()
    assert open_repo(repo).check_closure(second) == f"content object {csum} is missing"


def test_a_complete_parent_s_shared_subtrees_are_not_walked_again(open_repo, history):
    """libostree's rule, which the receiver keeps: a commit not marked partial has its whole
    tree. So a subtree both commits share is not checked twice (here: not at all, its
    dirtree gone from under the complete parent, which only a repository broken by hand
    could show)."""
    repo, _, second = history
    shutil.rmtree(repo / "state", ignore_errors=True)
    tree = _entry(repo, second, "/same/deep")
    _object(repo, tree, "dirtree").unlink()
    assert open_repo(repo).check_closure(second) is None


def test_a_content_object_does_not_stand_in_for_a_dirmeta_of_its_checksum(open_repo, tmp_path):
    """A hostile tree names an existing content object's checksum as a directory's dirmeta:
    the dirmeta is looked for as a dirmeta, not taken as seen because the file was."""
    import hashlib

    from gi.repository import GLib

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "f").write_bytes(b"a file")
    (tree / "sub" / "g").write_bytes(b"another")
    repo = tmp_path / "repo"
    ostree("init", f"--repo={repo}", "--mode=archive")
    honest = ostree("commit", f"--repo={repo}", "--branch=main", str(tree)).stdout.strip()
    listing = _ls(repo, honest, "/")
    content, subtree = listing["/f"], listing["/sub"]
    commit_t = GLib.VariantType.new("(a{sv}aya(say)sstayay)")
    v = GLib.Variant.new_from_bytes(commit_t, GLib.Bytes.new(_object(repo, honest, "commit").read_bytes()), False)
    root_meta = bytes(v.get_child_value(7).get_data_as_bytes().get_data())

    def store(variant: GLib.Variant, suffix: str) -> str:
        data = bytes(variant.get_data_as_bytes().get_data())
        csum = hashlib.sha256(data).hexdigest()
        path = _object(repo, csum, suffix)
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        return csum

    evil_root = store(GLib.Variant("(a(say)a(sayay))", (
        [("f", list(bytes.fromhex(content)))],
        [("sub", list(bytes.fromhex(subtree)), list(bytes.fromhex(content)))])), "dirtree")
    evil = store(GLib.Variant("(a{sv}aya(say)sstayay)", (
        {}, [], [], "evil", "", 0, list(bytes.fromhex(evil_root)), list(root_meta))), "commit")

    assert not _object(repo, content, "dirmeta").exists()
    assert open_repo(repo).check_closure(evil) == f"dirmeta {content} is missing"
    placed = {f"{content[:2]}/{content[2:]}.filez"}
    assert open_repo(repo).check_closure(evil, placed=placed) == f"dirmeta {content} is missing"


def test_past_the_objects_it_remembers_the_walk_looks_them_up_again(open_repo, history, monkeypatch):
    """What the closure check remembers having found is bounded (memory, whatever the tree's
    size); past that, an object met twice is looked up twice, and the verdicts are the same."""
    from treeship import closure

    monkeypatch.setattr(closure, "SEEN_AT_MOST", 1)
    repo, first, _ = history
    assert open_repo(repo).check_closure(first) is None
    csum = _entry(repo, first, "/same/top")
    _object(repo, csum, "filez").unlink()
    assert open_repo(repo).check_closure(first) == f"content object {csum} is missing"
