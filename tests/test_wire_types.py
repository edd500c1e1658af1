"""The protocol's object type numbers are OSTree's own."""

import gi

gi.require_version("OSTree", "1.0")
from gi.repository import OSTree  # noqa: E402

from treeship.repo import OBJECT_TYPES as REPO_TYPES  # noqa: E402
from treeship.transfer import wire  # noqa: E402


def test_wire_object_types_are_ostree_object_types():
    assert {k: int(v) for k, v in REPO_TYPES.items()} == wire.OBJECT_TYPES
    assert wire.OBJECT_TYPES["commitmeta"] == int(OSTree.ObjectType.COMMIT_META)
