"""Releases made between two pushes: the second push is still a fast-forward.

The receiver has v1; the release engineer made v2 and v3 and pushes v3. To see that v3
fast-forwards v1 the receiver needs v2's commit object (only that: v2's tree never
travels, and v2 stays marked partial there, as after a shallow ``ostree pull``). Before
the pusher sent it, this push was refused as "non-fast-forward".
"""

from __future__ import annotations

from pushkit import (
    BRANCH,
    fsck,
    no_session_leftovers,
    ostree,
    partial_commits,
    push,
    refs,
    refs_complete,
    release,
    tree_objects,
    write_tree,
)


def test_two_releases_between_pushes_fast_forward(treeship, tmp_path):
    local, srv = tmp_path / "local", tmp_path / "srv"
    tree = write_tree(tmp_path / "tree")
    v1 = release(treeship, tree, local, BRANCH, "--version", "1")
    push(treeship, local, str(srv), BRANCH)
    (tree / "etc" / "release-tag").write_text("2\n")
    v2 = release(treeship, tree, local, BRANCH, "--version", "2")
    (tree / "etc" / "release-tag").write_text("3\n")
    (tree / "usr" / "share" / "doc" / "file000.txt").write_text("changed in 3\n")
    v3 = release(treeship, tree, local, BRANCH, "--version", "3")

    out = push(treeship, local, str(srv), BRANCH).json()

    assert out["refs"][0]["status"] == "ok", out
    fsck(srv)
    assert refs(srv) == {BRANCH: v3}
    refs_complete(srv)
    assert partial_commits(srv) == {v2}  # history, not content: v2's own tree was never sent
    assert ostree("rev-parse", "--repo", srv, f"{BRANCH}^").stdout.strip() == v2
    assert ostree("rev-parse", "--repo", srv, f"{BRANCH}^^").stdout.strip() == v1
    new = tree_objects(local, v3) - tree_objects(local, v1)
    assert out["objects_sent"] == len(new) + 2  # v3's new objects, v3's commit and v2's commit
    no_session_leftovers(srv)

    (tree / "etc" / "release-tag").write_text("4\n")
    v4 = release(treeship, tree, local, BRANCH, "--version", "4")
    assert push(treeship, local, str(srv), BRANCH).json()["objects_sent"] <= 4  # v2 is not sent again
    assert refs(srv) == {BRANCH: v4}
    fsck(srv)
