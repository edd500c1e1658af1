"""The receiver's policy: which key may write which branches, and on what conditions.

Read from a TOML file (``treeship receive --config FILE``)::

    [receive]
    protected = ["*/stable", "releases/*"]   # never rewound, never deleted
    max_object_size = "2G"                    # one object, as sent and (content) uncompressed
    max_push_size = "20G"                     # all objects of one push

    [keys.alice]                              # --key-id alice (from authorized_keys)
    branches = ["stage3-sysroot/*"]
    force = ["scratch/*"]                     # where --force may rewind

    [[signatures]]                            # commits on these branches must be signed
    branches = ["stage3-sysroot/*"]
    gpg_keyring = "/etc/treeship/trusted.gpg"
    ed25519_keys = ["/etc/treeship/release.pub"]   # base64 keys or files of them

    [summary]
    gpg_sign = ["KEYID"]
    gpg_homedir = "/etc/treeship/gnupg"
    ed25519_secret = "/etc/treeship/summary.secret"

    [deltas]
    enabled = true                            # static delta from the previous commit

Without a file: any branch, fast-forward only, no signature required, nothing protected,
summary regenerated unsigned. Globs are shell-style (``*`` also matches ``/``).
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from pathlib import Path

from .errors import UsageError

TYPE_CHECKING = False  # not `from typing`: importing typing costs a receiver ~10 ms
if TYPE_CHECKING:
    from typing import Any

_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgGtT]?)i?[bB]?\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: Any, what: str) -> int:
    """``1048576``, ``"512M"``, ``"2GiB"`` → bytes."""
    if isinstance(value, int) and value > 0:
        return value
    m = _SIZE.match(str(value))
    if not m or int(m.group(1)) <= 0:
        raise UsageError(f"policy: {what}: not a size: {value!r} (e.g. 1048576, 512M, 2G)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def matches(name: str, globs: list[str]) -> bool:
    return any(fnmatchcase(name, g) for g in globs)


# Plain classes, not dataclasses: importing dataclasses costs the receiver ~6 ms before it can
# answer HELLO, on every push (see wire.Frame). Records all the same: fields set once, by load().


class KeyRule:
    __slots__ = ("branches", "force")

    def __init__(self, branches: list[str], force: list[str] | None = None) -> None:
        self.branches = branches
        self.force = force if force is not None else []


class SignatureRule:
    __slots__ = ("branches", "gpg_keyring", "gpg_homedir", "ed25519_keys")

    def __init__(self, branches: list[str], gpg_keyring: str | None = None, gpg_homedir: str | None = None,
                 ed25519_keys: list[str] | None = None) -> None:
        self.branches = branches
        self.gpg_keyring = gpg_keyring
        self.gpg_homedir = gpg_homedir
        self.ed25519_keys = ed25519_keys if ed25519_keys is not None else []


class SummarySigning:
    __slots__ = ("gpg_sign", "gpg_homedir", "ed25519_secret")

    def __init__(self, gpg_sign: list[str] | None = None, gpg_homedir: str | None = None,
                 ed25519_secret: str | None = None) -> None:
        self.gpg_sign = gpg_sign if gpg_sign is not None else []
        self.gpg_homedir = gpg_homedir
        self.ed25519_secret = ed25519_secret


class Policy:
    __slots__ = ("protected", "max_object_size", "max_push_size", "keys", "signatures", "summary", "deltas",
                 "source")

    def __init__(self, protected: list[str] | None = None, max_object_size: int = 4 << 30,
                 max_push_size: int = 64 << 30, keys: dict[str, KeyRule] | None = None,
                 signatures: list[SignatureRule] | None = None, summary: SummarySigning | None = None,
                 deltas: bool = False, source: str = "(built-in default)") -> None:
        self.protected = protected if protected is not None else []
        self.max_object_size = max_object_size
        self.max_push_size = max_push_size
        self.keys = keys  # None: any key, any branch
        self.signatures = signatures if signatures is not None else []
        self.summary = summary if summary is not None else SummarySigning()
        self.deltas = deltas
        self.source = source

    def may_write(self, key_id: str | None, branch: str) -> str | None:
        """None if ``key_id`` may update ``branch``, else the reason it may not."""
        if self.keys is None:
            return None
        if key_id is None:
            return "this connection has no --key-id and the policy lists keys"
        rule = self.keys.get(key_id)
        if rule is None:
            return f"key {key_id!r} is not in the policy"
        if not matches(branch, rule.branches):
            return f"key {key_id!r} may not write this branch"
        return None

    def may_force(self, key_id: str | None, branch: str) -> bool:
        if matches(branch, self.protected):
            return False
        if self.keys is None:
            return False  # no [keys]: fast-forward only; force is granted per key, never by default
        rule = self.keys.get(key_id or "")
        return rule is not None and matches(branch, rule.force)

    def is_protected(self, branch: str) -> bool:
        return matches(branch, self.protected)

    def signature_rules(self, branch: str) -> list[SignatureRule]:
        return [r for r in self.signatures if matches(branch, r.branches)]


def _globs(value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise UsageError(f"policy: {what} must be a glob or a list of globs")


def _str(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise UsageError(f"policy: {what} must be a string")


def load(path: str | Path | None) -> Policy:
    """Read a policy file; None gives the permissive default."""
    if path is None:
        return Policy()
    import tomllib  # here: a receiver without a policy file does without (~14 ms)

    p = Path(path)
    try:
        data = tomllib.loads(p.read_text("utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{p}: no such policy file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{p}: cannot read policy: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{p}: not valid TOML: {e}") from None
    known = {"receive", "keys", "signatures", "summary", "deltas"}
    unknown = set(data) - known
    if unknown:
        raise UsageError(f"{p}: unknown section(s) {', '.join(sorted(unknown))}")
    recv = data.get("receive", {})
    pol = Policy(source=str(p))
    pol.protected = _globs(recv.get("protected", []), "receive.protected")
    if "max_object_size" in recv:
        pol.max_object_size = parse_size(recv["max_object_size"], "receive.max_object_size")
    if "max_push_size" in recv:
        pol.max_push_size = parse_size(recv["max_push_size"], "receive.max_push_size")
    if "keys" in data:
        pol.keys = {}
        for name, rule in data["keys"].items():
            if not isinstance(rule, dict) or "branches" not in rule:
                raise UsageError(f"{p}: keys.{name} needs branches = [globs]")
            pol.keys[name] = KeyRule(_globs(rule["branches"], f"keys.{name}.branches"),
                                     _globs(rule.get("force", []), f"keys.{name}.force"))
    for i, rule in enumerate(data.get("signatures", [])):
        what = f"signatures[{i}]"
        if not isinstance(rule, dict) or "branches" not in rule:
            raise UsageError(f"{p}: {what} needs branches = [globs]")
        sr = SignatureRule(_globs(rule["branches"], f"{what}.branches"),
                           _str(rule.get("gpg_keyring"), f"{what}.gpg_keyring"),
                           _str(rule.get("gpg_homedir"), f"{what}.gpg_homedir"),
                           _globs(rule.get("ed25519_keys", []), f"{what}.ed25519_keys"))
        if not (sr.gpg_keyring or sr.gpg_homedir or sr.ed25519_keys):
            raise UsageError(f"{p}: {what} names no trusted key (gpg_keyring, gpg_homedir, ed25519_keys)")
        pol.signatures.append(sr)
    summ = data.get("summary", {})
    pol.summary = SummarySigning(_globs(summ.get("gpg_sign", []), "summary.gpg_sign"),
                                 _str(summ.get("gpg_homedir"), "summary.gpg_homedir"),
                                 _str(summ.get("ed25519_secret"), "summary.ed25519_secret"))
    pol.deltas = bool(data.get("deltas", {}).get("enabled", False))
    return pol
