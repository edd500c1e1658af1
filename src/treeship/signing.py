"""Signing and verifying commits: GPG through libostree, ed25519 in OSTree's own format.

ed25519 is done here with PyNaCl because Debian 12's libostree is built without
libsodium. The format is exactly ``ostree sign``'s: detached metadata key
``ostree.sign.ed25519`` (``aay``), each entry the raw 64-byte signature over the
``.commit`` object's bytes; a secret key file holds base64(seed ‖ public key), a public
key is base64 of its 32 bytes.

The same keys sign arbitrary bytes too (``*_data`` functions: DSSE envelopes, see attest.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.signing

from .errors import RepoError, SigningError, UsageError, VerificationError
from .repo import ED25519_KEY, GPG_KEY, GpgSignature, Repo


@dataclass(frozen=True)
class Ed25519Secret:
    """A secret key as ``ostree sign`` stores it, and where it came from."""

    signing_key: nacl.signing.SigningKey
    origin: str

    @property
    def public_b64(self) -> str:
        return base64.b64encode(bytes(self.signing_key.verify_key)).decode()


@dataclass
class SignatureCheck:
    """One signature found on a commit, and what became of it."""

    type: str  # "gpg" | "ed25519"
    status: str  # "good" | "bad" | "unknown-key"
    key: str  # GPG fingerprint or ed25519 public key (base64)
    signer: str = ""
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Verification:
    commit: str
    signatures: list[SignatureCheck]

    @property
    def good(self) -> list[SignatureCheck]:
        return [s for s in self.signatures if s.status == "good"]

    @property
    def bad(self) -> list[SignatureCheck]:
        return [s for s in self.signatures if s.status == "bad"]

    @property
    def ok(self) -> bool:
        return bool(self.good) and not self.bad


# -- ed25519 keys ---------------------------------------------------------------------------


def _b64(text: str, origin: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SigningError(f"{origin}: not a base64 {what}") from None


def load_ed25519_secret(path: str | Path) -> Ed25519Secret:
    """Read an ``ostree sign`` secret key file: one line, base64(seed ‖ public)."""
    p = Path(path)
    try:
        lines = [ln for ln in p.read_text("ascii").splitlines() if ln.strip()]
    except FileNotFoundError:
        raise SigningError(f"{p}: no such ed25519 secret key file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SigningError(f"{p}: cannot read ed25519 secret key: {getattr(e, 'strerror', None) or e}") from None
    if len(lines) != 1:
        raise SigningError(f"{p}: an ed25519 secret key file holds exactly one base64 line")
    raw = _b64(lines[0], str(p), "ed25519 secret key")
    if len(raw) != 64:
        raise SigningError(f"{p}: an ed25519 secret key is 64 bytes (seed and public key), this is {len(raw)}")
    key = nacl.signing.SigningKey(raw[:32])
    if bytes(key.verify_key) != raw[32:]:
        raise SigningError(f"{p}: corrupt ed25519 secret key: its public half does not match its seed")
    return Ed25519Secret(key, str(p))


def load_ed25519_public(key_or_file: str) -> list[bytes]:
    """A base64 public key given inline, or a file with one base64 key per line."""
    p = Path(key_or_file)
    if p.is_file():
        try:
            lines = [ln.strip() for ln in p.read_text("ascii").splitlines() if ln.strip() and not ln.startswith("#")]
        except (OSError, UnicodeDecodeError) as e:
            raise SigningError(f"{p}: cannot read ed25519 public key: {getattr(e, 'strerror', None) or e}") from None
        origin = str(p)
    else:
        if os.sep in key_or_file and not _looks_b64(key_or_file):
            raise SigningError(f"{key_or_file}: no such ed25519 public key file")
        lines, origin = [key_or_file], "ed25519 public key"
    keys = []
    for ln in lines:
        raw = _b64(ln, origin, "ed25519 public key")
        if len(raw) != 32:
            raise SigningError(f"{origin}: an ed25519 public key is 32 bytes, this is {len(raw)}")
        keys.append(raw)
    if not keys:
        raise SigningError(f"{origin}: no ed25519 public key in it")
    return keys


def _looks_b64(text: str) -> bool:
    try:
        return len(base64.b64decode(text, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def generate_ed25519(prefix: str | Path) -> tuple[Path, Path]:
    """Write PREFIX.secret and PREFIX.pub in ``ostree sign``'s formats."""
    key = nacl.signing.SigningKey.generate()
    secret = Path(f"{prefix}.secret")
    public = Path(f"{prefix}.pub")
    for p in (secret, public):
        if p.exists():
            raise UsageError(f"{p}: already exists; not overwriting a key")
    raw = bytes(key) + bytes(key.verify_key)
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(raw).decode() + "\n")
    public.write_text(base64.b64encode(bytes(key.verify_key)).decode() + "\n")
    return secret, public


def ed25519_sign(repo: Repo, checksum: str, secrets: list[Ed25519Secret]) -> list[str]:
    """Sign the commit's bytes with each key; return the public keys used."""
    if not secrets:
        return []  # an unsigned commit gets no (empty) signature entry
    data = repo.commit_bytes(checksum)
    sigs = [s.signing_key.sign(data).signature for s in secrets]
    repo.append_detached_signatures(checksum, ED25519_KEY, sigs)
    return [s.public_b64 for s in secrets]


def ed25519_check(repo: Repo, checksum: str, public_keys: list[bytes]) -> list[SignatureCheck]:
    """Check each ed25519 signature against the trusted keys.

    A signature that no trusted key verifies is reported ``unknown-key``: without the
    signer's key, a forgery and another signer's signature look the same.
    """
    data = repo.commit_bytes(checksum)
    sigs = repo.detached_metadata(checksum).get(ED25519_KEY, [])
    out = []
    verifiers = [nacl.signing.VerifyKey(k) for k in public_keys]
    for sig in sigs:
        if len(sig) != 64:
            out.append(SignatureCheck("ed25519", "bad", "", detail=f"malformed signature ({len(sig)} bytes)"))
            continue
        for vk in verifiers:
            try:
                vk.verify(data, sig)
            except nacl.exceptions.BadSignatureError:
                continue
            out.append(SignatureCheck("ed25519", "good", base64.b64encode(bytes(vk)).decode()))
            break
        else:
            out.append(SignatureCheck("ed25519", "unknown-key", "", detail="not made by any given public key"))
    return out


# -- GPG ------------------------------------------------------------------------------------


def gpg_check_secret_key(key_id: str, homedir: str | None) -> str | None:
    """Fail early, before any work, when GnuPG does not know the signing key.

    Returns the key's fingerprint (None when gpg is not installed).
    """
    gpg = shutil.which("gpg")
    if gpg is None:
        return None  # libostree will report the problem itself
    cmd = [gpg, "--batch", "--list-secret-keys", "--with-colons", key_id]
    if homedir:
        if not Path(homedir).is_dir():
            raise SigningError(f"{homedir}: GnuPG home directory does not exist")
        cmd[1:1] = ["--homedir", homedir]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0 or "sec:" not in res.stdout:
        where = f" in {homedir}" if homedir else ""
        raise SigningError(f"GPG secret key {key_id!r} not found{where}")
    fprs = [ln.split(":")[9] for ln in res.stdout.splitlines() if ln.startswith("fpr:")]
    return fprs[0] if fprs else None


def gpg_sign(repo: Repo, checksum: str, key_ids: list[str], homedir: str | None) -> None:
    for key_id in key_ids:
        repo.gpg_sign(checksum, key_id, homedir)


def gpg_check(repo: Repo, checksum: str, homedir: str | None, keyring: str | None) -> list[SignatureCheck]:
    """Check GPG signatures against a GnuPG home's public keys or a keyring file only."""
    with _gpg_trust(homedir, keyring) as trust:
        if trust is None:
            return [SignatureCheck("gpg", "unknown-key", "", detail="no GPG keyring given")
                    for _ in repo.detached_metadata(checksum).get(GPG_KEY, [])]
        sigs = repo.gpg_verify(checksum, *trust)
    return [_gpg_verdict(s) for s in sigs]


@contextmanager
def _gpg_trust(homedir: str | None, keyring: str | None) -> Iterator[tuple[str, str] | None]:
    """(empty keyring dir, keyring file) holding only the given keys; None when none is given.

    libostree reads ``*.gpg`` keyring files from a directory, which a modern GnuPG home
    (``pubring.kbx``) lacks: its public keys are exported to a private keyring first. An
    empty keyring directory keeps the system's trusted keys out of the verdict.
    """
    with tempfile.TemporaryDirectory(prefix="treeship-gpg-") as tmp:
        if keyring and not Path(keyring).is_file():
            raise VerificationError(f"{keyring}: no such GPG keyring file")
        extra = keyring
        if homedir:
            extra = os.path.join(tmp, "exported.gpg")
            _gpg_export(homedir, extra)
        if extra is None:
            yield None
            return
        keyring_dir = os.path.join(tmp, "keyrings")
        os.mkdir(keyring_dir)
        yield keyring_dir, extra


def _gpg_verdict(s: GpgSignature) -> SignatureCheck:
    if s.valid:
        return SignatureCheck("gpg", "good", s.fingerprint, s.user)
    if s.key_missing:
        return SignatureCheck("gpg", "unknown-key", s.fingerprint, detail=s.problem or "")
    return SignatureCheck("gpg", "bad", s.fingerprint, s.user, s.problem or "BAD signature")


def _gpg_export(homedir: str, dest: str) -> None:
    if not Path(homedir).is_dir():
        raise VerificationError(f"{homedir}: GnuPG home directory does not exist")
    gpg = shutil.which("gpg")
    if gpg is None:
        raise VerificationError("gpg is not installed; pass --gpg-keyring FILE instead")
    with open(dest, "wb") as f:
        res = subprocess.run([gpg, "--homedir", homedir, "--batch", "--export"], stdout=f,
                             stderr=subprocess.PIPE, check=False)
    if res.returncode != 0:
        msg = res.stderr.decode(errors="replace").strip().splitlines()
        raise VerificationError(f"{homedir}: cannot export public keys: {msg[-1] if msg else 'gpg failed'}")


def verify(repo: Repo, checksum: str, *, gpg_homedir: str | None = None, gpg_keyring: str | None = None,
           ed25519_keys: list[bytes] | None = None) -> Verification:
    """Every signature on the commit, each checked against the trust given."""
    checks = gpg_check(repo, checksum, gpg_homedir, gpg_keyring)
    checks += ed25519_check(repo, checksum, ed25519_keys or [])
    return Verification(checksum, checks)


# -- signing arbitrary bytes (DSSE envelopes: see attest.py) ----------------------------------


def ed25519_keyid(public_key: bytes) -> str:
    """A key id for an ed25519 public key: lowercase hex sha256 of its 32 raw bytes."""
    return hashlib.sha256(public_key).hexdigest()


def ed25519_sign_data(secret: Ed25519Secret, data: bytes) -> bytes:
    """The raw 64-byte ed25519 signature over ``data``."""
    return secret.signing_key.sign(data).signature


def ed25519_check_data(data: bytes, signature: bytes, public_keys: list[bytes]) -> SignatureCheck:
    """Which trusted key, if any, made ``signature`` over ``data``."""
    if len(signature) != 64:
        return SignatureCheck("ed25519", "bad", "", detail=f"malformed signature ({len(signature)} bytes)")
    for key in public_keys:
        try:
            nacl.signing.VerifyKey(key).verify(data, signature)
        except nacl.exceptions.BadSignatureError:
            continue
        return SignatureCheck("ed25519", "good", base64.b64encode(key).decode())
    return SignatureCheck("ed25519", "unknown-key", "", detail="not made by any given public key")


def gpg_sign_data(repo: Repo, data: bytes, key_id: str, homedir: str | None) -> tuple[bytes, str]:
    """A binary OpenPGP detached signature over ``data`` (made by libostree), and the key's fingerprint."""
    fingerprint = gpg_check_secret_key(key_id, homedir)
    return repo.gpg_sign_data(data, key_id, homedir), fingerprint or key_id


def gpg_check_data(repo: Repo, data: bytes, signature: bytes, homedir: str | None,
                   keyring: str | None) -> SignatureCheck:
    """Check one detached OpenPGP signature over ``data`` against the given keys only."""
    with _gpg_trust(homedir, keyring) as trust:
        if trust is None:
            return SignatureCheck("gpg", "unknown-key", "", detail="no GPG keyring given")
        try:
            sigs = repo.gpg_verify_data(data, signature, *trust)
        except RepoError:
            return SignatureCheck("gpg", "bad", "", detail="not an OpenPGP signature")
    if len(sigs) != 1:
        return SignatureCheck("gpg", "bad", "", detail=f"{len(sigs)} OpenPGP signatures where one was expected")
    return _gpg_verdict(sigs[0])
