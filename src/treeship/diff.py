"""``treeship diff A B``: what changed between two releases, as release notes.

Elements come from the two provenance manifests (:mod:`treeship.provenance.diff`), files
from the two OSTree trees (:meth:`treeship.repo.Repo.diff_trees`). A release without a
manifest is compared by its files only, and the output says so.
"""

from __future__ import annotations

import stat
from dataclasses import asdict, dataclass
from typing import Any

from . import history
from .provenance import diff as mdiff
from .repo import Repo, TreeChange

#: Paths listed per change in the text output; ``--format json`` lists all.
TEXT_FILE_LIMIT = 40


@dataclass(frozen=True)
class Side:
    """One of the two releases compared."""

    ref: str
    commit: str
    version: str | None
    date: str
    provenance: bool


@dataclass
class ReleaseDiff:
    old: Side
    new: Side
    elements: mdiff.ManifestDiff | None  # None when either release has no manifest
    files: list[TreeChange]

    def file_summary(self) -> dict[str, int]:
        def count(change: str) -> int:
            return sum(1 for f in self.files if f.change == change)

        return {
            "added": count("added"), "removed": count("removed"), "modified": count("modified"),
            "bytes_added": sum(f.new_size or 0 for f in self.files if f.change == "added"),
            "bytes_removed": sum(f.old_size or 0 for f in self.files if f.change == "removed"),
            "bytes_modified_old": sum(f.old_size or 0 for f in self.files if f.change == "modified"),
            "bytes_modified_new": sum(f.new_size or 0 for f in self.files if f.change == "modified"),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"from": asdict(self.old), "to": asdict(self.new),
                "elements": self.elements.to_dict() if self.elements else None,
                "files": {"summary": self.file_summary(), "changes": [asdict(f) for f in self.files]}}


def _side(repo: Repo, ref: str) -> tuple[Side, dict[str, Any] | None]:
    checksum = repo.require(ref)
    rec = history.record(repo, checksum)
    manifest = history.provenance(repo, checksum)
    return Side(ref, checksum, rec.version, rec.date, manifest is not None), manifest


def diff_releases(repo: Repo, old_ref: str, new_ref: str) -> ReleaseDiff:
    old, old_manifest = _side(repo, old_ref)
    new, new_manifest = _side(repo, new_ref)
    elements = None
    if old_manifest is not None and new_manifest is not None:
        elements = mdiff.diff(old_manifest, new_manifest)
    return ReleaseDiff(old, new, elements, repo.diff_trees(old.commit, new.commit))


# -- text ---------------------------------------------------------------------------------------


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _table(rows: list[tuple[str, str, list[str]]]) -> list[str]:
    """CHANGE, ELEMENT, DETAILS; a multi-line cell continues under its column."""
    width = max([len("ELEMENT")] + [len(name) for _, name, _ in rows])
    out = [f"  {'CHANGE':<8} {'ELEMENT':<{width}}  DETAILS"]
    for change, name, details in rows:
        details = details or [""]
        out.append(f"  {change:<8} {name:<{width}}  {details[0]}".rstrip())
        out.extend(f"  {'':<8} {'':<{width}}  {line}" for line in details[1:])
    return out


def _element_section(d: mdiff.ManifestDiff) -> list[str]:
    changed = [c for c in d.changed if not c.rebuilt_only]
    rebuilt = [c for c in d.changed if c.rebuilt_only]
    lines = [f"Elements: {len(d.added)} added, {len(d.removed)} removed, {len(changed)} changed, "
             f"{len(rebuilt)} rebuilt, {d.unchanged} unchanged"]
    rows: list[tuple[str, str, list[str]]] = []
    for e in d.added:
        rows.append(("added", e["name"], [e.get("kind") or ""] + [mdiff.describe_source(s)
                                                                  for s in e.get("sources") or []]))
    for e in d.removed:
        rows.append(("removed", e["name"], [e.get("kind") or ""]))
    rows += [("changed", c.name, mdiff.element_lines(c)) for c in changed]
    rows += [("rebuilt", c.name, mdiff.element_lines(c)) for c in rebuilt]
    if rows:
        lines += [""] + _table(rows)
    return lines


def _mode_note(f: TreeChange) -> str:
    if f.old_mode is not None and f.new_mode is not None and f.old_mode != f.new_mode:
        return f" (mode {stat.S_IMODE(f.old_mode):04o} → {stat.S_IMODE(f.new_mode):04o})"
    return ""


def _path(f: TreeChange) -> str:
    return f"{f.path} (symlink)" if f.type == "symlink" else f.path


def _file_section(d: ReleaseDiff, limit: int) -> list[str]:
    s = d.file_summary()
    lines = [f"Files: {s['added']} added, {s['removed']} removed, {s['modified']} modified"]
    if not d.files:
        return lines
    delta = s["bytes_modified_new"] - s["bytes_modified_old"]
    lines.append(f"  bytes: +{human_bytes(s['bytes_added'])} added, -{human_bytes(s['bytes_removed'])} removed, "
                 f"{'+' if delta >= 0 else '-'}{human_bytes(abs(delta))} in modified files")
    for change in ("added", "removed", "modified"):
        files = [f for f in d.files if f.change == change]
        width = min(60, max([len(_path(f)) for f in files[:limit]], default=0))
        for f in files[:limit]:
            if change == "modified":
                size = f"{human_bytes(f.old_size or 0)} → {human_bytes(f.new_size or 0)}{_mode_note(f)}"
            else:
                size = human_bytes((f.new_size if change == "added" else f.old_size) or 0)
            lines.append(f"  {change:<9} {_path(f):<{width}}  {size}")
        if len(files) > limit:
            lines.append(f"  … {len(files) - limit} more {change} (--format json lists every path)")
    return lines


def render_text(d: ReleaseDiff, limit: int = TEXT_FILE_LIMIT) -> str:
    lines = [f"Changes from {d.old.ref} to {d.new.ref}"]
    for label, side in (("from", d.old), ("to", d.new)):
        lines.append(f"  {label:<5} {side.commit[:12]}  version {side.version or '-'}  {side.date}")
    lines.append("")
    if d.elements is None:
        missing = [s for s in (d.old, d.new) if not s.provenance]
        which = " and ".join(f"{s.ref} ({s.commit[:12]})" for s in missing)
        lines.append(f"Elements: not compared: {which} carr{'ies' if len(missing) == 1 else 'y'} "
                     "no provenance manifest; files only")
    else:
        if d.elements.build:
            lines.append("Build:")
            for key, (old, new) in d.elements.build.items():
                lines.append(f"  {key:<13} {_value(old)} → {_value(new)}")
            lines.append("")
        lines += _element_section(d.elements)
    lines.append("")
    lines += _file_section(d, limit)
    return "\n".join(lines) + "\n"


def _value(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={x}" for k, x in v.items()) or "{}"
    return "-" if v is None else str(v)
