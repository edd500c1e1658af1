"""What changed between two manifests: build fields, and elements added, removed, changed.

Pure: two manifest dicts in, a :class:`ManifestDiff` out. Sources of an element are paired
by (kind, url or local path) first, then the rest of the same kind in order, so a moved mirror reads as a
URL change and a new source as an addition. An element whose only change is its cache key is *rebuilt*: a
dependency or its configuration changed, not its own sources.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Build fields compared, in this order.
BUILD_FIELDS = ("tool", "tool_version", "project", "target", "options")


@dataclass
class SourceChange:
    """One source of an element that was added, removed, or changed (old → new per field)."""

    change: str  # "added" | "removed" | "changed"
    kind: str
    url: str | None  # or the local path of a source without a URL
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"change": self.change, "kind": self.kind, "url": self.url,
                "fields": {k: {"old": old, "new": new} for k, (old, new) in self.fields.items()}}


@dataclass
class ElementChange:
    """An element present in both manifests whose record differs."""

    name: str
    old_kind: str | None
    new_kind: str | None
    old_cache_key: str | None
    new_cache_key: str | None
    sources: list[SourceChange] = field(default_factory=list)
    depends: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # build|runtime → added|removed
    other_fields: list[str] = field(default_factory=list)

    @property
    def rebuilt_only(self) -> bool:
        """Only the cache key changed: something it depends on changed, not the element itself."""
        return not (self.sources or self.depends or self.other_fields or self.old_kind != self.new_kind)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "change": "rebuilt" if self.rebuilt_only else "changed",
                "kind": {"old": self.old_kind, "new": self.new_kind},
                "cache_key": {"old": self.old_cache_key, "new": self.new_cache_key},
                "sources": [s.to_dict() for s in self.sources], "depends": self.depends,
                "other_fields": self.other_fields}


@dataclass
class ManifestDiff:
    build: dict[str, tuple[Any, Any]]
    added: list[dict[str, Any]]
    removed: list[dict[str, Any]]
    changed: list[ElementChange]
    unchanged: int

    def to_dict(self) -> dict[str, Any]:
        return {"build": {k: {"old": old, "new": new} for k, (old, new) in self.build.items()},
                "added": self.added, "removed": self.removed,
                "changed": [c.to_dict() for c in self.changed], "unchanged": self.unchanged}


def diff(old: dict[str, Any], new: dict[str, Any]) -> ManifestDiff:
    old_build, new_build = old.get("build") or {}, new.get("build") or {}
    build = {k: (old_build.get(k), new_build.get(k)) for k in BUILD_FIELDS
             if old_build.get(k) != new_build.get(k)}
    old_els = {e["name"]: e for e in old.get("elements", [])}
    new_els = {e["name"]: e for e in new.get("elements", [])}
    added = [e for name, e in new_els.items() if name not in old_els]
    removed = [e for name, e in old_els.items() if name not in new_els]
    changed: list[ElementChange] = []
    unchanged = 0
    for name, b in new_els.items():
        a = old_els.get(name)
        if a is None:
            continue
        if a == b:
            unchanged += 1
            continue
        changed.append(_element_change(a, b))
    return ManifestDiff(build, added, removed, changed, unchanged)


_ELEMENT_FIELDS = {"name", "kind", "cache_key", "sources", "build_depends", "runtime_depends"}


def _element_change(a: dict[str, Any], b: dict[str, Any]) -> ElementChange:
    ch = ElementChange(a["name"], a.get("kind"), b.get("kind"), a.get("cache_key"), b.get("cache_key"),
                       sources=_source_changes(a.get("sources") or [], b.get("sources") or []))
    for dep in ("build", "runtime"):
        old_deps, new_deps = a.get(f"{dep}_depends") or [], b.get(f"{dep}_depends") or []
        plus = [d for d in new_deps if d not in old_deps]
        minus = [d for d in old_deps if d not in new_deps]
        if plus or minus:
            ch.depends[dep] = {"added": plus, "removed": minus}
    ch.other_fields = sorted(k for k in (a.keys() | b.keys()) - _ELEMENT_FIELDS if a.get(k) != b.get(k))
    if ch.rebuilt_only and ch.old_cache_key == ch.new_cache_key:  # only an order changed
        ch.other_fields = sorted(f"{k} (order)" for k in _ELEMENT_FIELDS if a.get(k) != b.get(k))
    return ch


def _source_changes(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[SourceChange]:
    pairs: list[tuple[dict[str, Any] | None, dict[str, Any] | None]] = []
    left = list(old)
    unmatched_new = []
    for s in new:
        match = next((o for o in left if o.get("kind") == s.get("kind") and _where(o) == _where(s)), None)
        if match is None:
            unmatched_new.append(s)
        else:
            left.remove(match)
            pairs.append((match, s))
    for s in unmatched_new:  # the rest, in order, by kind: a moved URL
        match = next((o for o in left if o.get("kind") == s.get("kind")), None)
        if match is not None:
            left.remove(match)
        pairs.append((match, s))
    pairs.extend((o, None) for o in left)
    out = []
    for a, b in pairs:
        if a is None and b is not None:
            out.append(SourceChange("added", b.get("kind", "?"), _where(b), _fields({}, b)))
        elif b is None and a is not None:
            out.append(SourceChange("removed", a.get("kind", "?"), _where(a), _fields(a, {})))
        elif a is not None and b is not None and a != b:
            out.append(SourceChange("changed", b.get("kind", "?"), _where(b), _fields(a, b)))
    return out


def _where(src: dict[str, Any]) -> str | None:
    return src.get("url") or src.get("path")


def _fields(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields that differ, ``kind`` and ``url`` first, then the version fields, then the rest."""
    order = ["kind", "url", "commit", "ref", "sha256"]
    keys = [k for k in order if k in a or k in b] + sorted((a.keys() | b.keys()) - set(order))
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}


def short(value: Any) -> str:
    """Hex digests cut to 12 characters; everything else as is."""
    text = "-" if value is None else str(value)
    if len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text):
        return text[:12]
    return text


def describe_source(src: dict[str, Any]) -> str:
    """``git https://host/repo.git @ 0123456789ab (v1.2-3-g0123456)``."""
    version = src.get("commit") or src.get("sha256") or src.get("ref")
    text = f"{src.get('kind', '?')} {src.get('url') or src.get('path') or '(no url)'}"
    if version:
        text += f" @ {short(version)}"
    if src.get("ref") and src.get("ref") != version:
        text += f" ({short(src['ref'])})"
    return text


def describe_change(ch: SourceChange) -> str:
    where = f"{ch.kind} {ch.url or '(no url)'}"
    if ch.change == "added":
        return f"source added: {describe_source({k: new for k, (_, new) in ch.fields.items()})}"
    if ch.change == "removed":
        return f"source removed: {describe_source({k: old for k, (old, _) in ch.fields.items()})}"
    parts = [f"{k} {short(old)} → {short(new)}" for k, (old, new) in ch.fields.items()]
    return f"{where}: {', '.join(parts)}"


def element_lines(ch: ElementChange) -> list[str]:
    """The details of one changed element, one line each, for a table cell."""
    lines = [describe_change(s) for s in ch.sources]
    if ch.old_kind != ch.new_kind:
        lines.append(f"kind {ch.old_kind or '-'} → {ch.new_kind or '-'}")
    for dep, d in ch.depends.items():
        items = [f"+{x}" for x in d["added"]] + [f"-{x}" for x in d["removed"]]
        lines.append(f"{dep} deps {' '.join(items)}")
    if ch.other_fields:
        lines.append(f"other fields: {', '.join(ch.other_fields)}")
    if ch.old_cache_key != ch.new_cache_key:
        lines.append(f"cache key {short(ch.old_cache_key)} → {short(ch.new_cache_key)}")
    return lines
