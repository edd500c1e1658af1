"""layout.py answers from a repository's files exactly as libostree does, or says "ask libostree"."""

from __future__ import annotations

import os
from pathlib import Path

import gi
import pytest

from conftest import ostree

gi.require_version("OSTree", "1.0")
from gi.repository import Gio, GLib, OSTree  # noqa: E402

from treeship import layout  # noqa: E402

C = "6c5f8cd838693e6888fe3bd78c374f85d7b584f18d9266f6e12cb7d17e470dc5"
MODES = {int(OSTree.RepoMode.ARCHIVE): "archive", int(OSTree.RepoMode.BARE): "bare",
         int(OSTree.RepoMode.BARE_USER): "bare-user", int(OSTree.RepoMode.BARE_USER_ONLY): "bare-user-only"}


def _libostree_mode(path: Path) -> str | None:
    repo = OSTree.Repo.new(Gio.File.new_for_path(str(path)))
    try:
        repo.open(None)
    except GLib.Error:
        return None
    return MODES[int(repo.get_mode())]


@pytest.mark.parametrize("config", [
    "[core]\nrepo_version=1\nmode=archive-z2\n",
    "[core]\nrepo_version=1\nmode=bare-user\n",
    "[core]\nrepo_version=1\n",
    "[core]\nrepo_version=1\nmode=archive\n\n[remote \"x\"]\nurl=ssh://h/p\n",
    "[DEFAULT]\nmode=archive\n[core]\nrepo_version=1\n",
    "[core]\nrepo_version=1\nMode=archive\n",
    "[core]\nrepo_version=1\nmode: archive\n",
    "[core]\nrepo_version=1\nmode=archive   \n",
    "[core]\nrepo_version=1\nmode=bare\nMODE=archive\n",
    "[core]\nrepo_version=1\n;x\nmode=archive\n",
    "[core]\nrepo_version=1\nmode = archive\n",
    "# comment\n[core]\nrepo_version=1\nmode=archive\n",
])
def test_mode_is_libostree_s_or_unknown(tmp_path, config):
    repo = tmp_path / "r"
    ostree("init", f"--repo={repo}", "--mode=archive")
    (repo / "config").write_text(config)
    ours = layout.mode(repo)
    assert ours is None or ours == _libostree_mode(repo)


def _heads_case(tmp_path: Path, make) -> Path:
    repo = tmp_path / "r"
    ostree("init", f"--repo={repo}", "--mode=archive")
    make(repo / "refs" / "heads")
    return repo


@pytest.mark.parametrize("name, make, expected", [
    ("plain", lambda h: (h / "main").write_text(C + "\n"), {"main": C}),
    ("nested", lambda h: ((h / "a" / "b").mkdir(parents=True), (h / "a" / "b" / "c").write_text(C + "\n")),
     {"a/b/c": C}),
    ("alias", lambda h: ((h / "main").write_text(C + "\n"), os.symlink("main", h / "stable")),
     {"main": C, "stable": C}),
    ("leading space", lambda h: (h / "main").write_text("  " + C + "\n"), None),
    ("other whitespace", lambda h: (h / "main").write_text(C + "\x1c"), None),
    ("link to a directory", lambda h: ((h / "real").mkdir(), (h / "real" / "x").write_text(C),
                                       os.symlink("real", h / "odd")), None),
    ("fifo", lambda h: ((h / "main").write_text(C + "\n"), os.mkfifo(h / "odd")), None),  # would block a read
    # names libostree does not take for refs, and skips: an editor's backup, a hidden file
    ("backup", lambda h: ((h / "main").write_text(C + "\n"), (h / "main.bak~").write_text(C + "\n")), None),
    ("hidden", lambda h: ((h / ".d").mkdir(), (h / ".d" / "x").write_text(C + "\n")), None),
])
def test_heads_are_what_ostree_wrote_or_unknown(tmp_path, name, make, expected):
    assert layout.heads(_heads_case(tmp_path, make)) == expected


def test_heads_agree_with_libostree_on_a_real_repository(tmp_path, treeship, sample_tree):
    repo = tmp_path / "r"
    treeship("init", "--repo", repo)
    for branch in ("a/x86_64", "a/aarch64", "b"):
        treeship("release", sample_tree, "--repo", repo, "--branch", branch)
    lib = OSTree.Repo.new(Gio.File.new_for_path(str(repo)))
    lib.open(None)
    assert layout.heads(repo) == dict(lib.list_refs(None, None)[1])


def test_has_object_tells_partial_commits_as_libostree_does(tmp_path, treeship, sample_tree):
    repo = tmp_path / "r"
    treeship("init", "--repo", repo)
    commit = treeship("release", sample_tree, "--repo", repo, "--branch", "b", "--json").json()["commit"]
    assert layout.has_object(repo, commit, "commit")
    (repo / "state" / f"{commit}.commitpartial").write_text("")
    assert not layout.has_object(repo, commit, "commit")
    assert not layout.has_object(repo, "0" * 64, "file")


def test_objects_present_agrees_with_has_object(tmp_path, treeship, sample_tree):
    """Listing a directory where several objects fall in it, a stat each elsewhere: the same
    answers as has_object, for objects here and not, a partial commit, dense and sparse."""
    repo = tmp_path / "r"
    treeship("init", "--repo", repo)
    commit = treeship("release", sample_tree, "--repo", repo, "--branch", "b", "--json").json()["commit"]
    suffix = {"filez": "file", "dirtree": "dirtree", "dirmeta": "dirmeta", "commit": "commit"}
    here = [(p.parent.name + p.name.split(".")[0], suffix[p.name.split(".")[1]])
            for p in (repo / "objects").rglob("*.*") if p.name.split(".")[1] in suffix]
    # absent ones: in directories that exist (dense: many per directory), and in ones that do not
    absent = [(c[:2] + format(i, "062x"), "file") for i, (c, _) in enumerate(here[:40])]
    absent += [(format(i, "064x"), "dirtree") for i in range(5)]  # objects/00: most likely absent
    (repo / "state" / f"{commit}.commitpartial").write_text("")
    asked = here + absent + [(commit, "commitmeta")]
    for order in (asked, asked[::-1], asked[::7]):
        assert layout.objects_present(repo, order) == [layout.has_object(repo, c, t) for c, t in order]
    assert layout.objects_present(repo, here) == [t != "commit" for _, t in here]  # the commit: partial
    assert not any(layout.objects_present(repo, absent))
    dangling = absent[0]  # a symlink to nothing: exists() says no, so must a listing
    link = repo / "objects" / layout.object_relpath(dangling[0], "filez")
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(tmp_path / "nowhere")
    assert layout.objects_present(repo, asked) == [layout.has_object(repo, c, t) for c, t in asked]
    assert layout.objects_present(repo, [dangling] * layout.LIST_FROM) == [False] * layout.LIST_FROM
    busy = {c[:2] for c, _ in asked}
    assert any(sum(1 for c, _ in asked if c[:2] == d) >= layout.LIST_FROM for d in busy)  # listed
    assert any(sum(1 for c, _ in asked if c[:2] == d) < layout.LIST_FROM for d in busy)  # stat'ed
