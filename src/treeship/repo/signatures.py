"""Signatures: a commit's detached metadata (read, appended to, merged from a received
``.commitmeta``), and GPG signing and verifying, of commits and of arbitrary data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import RepoError, SigningError, TransferError
from .core import Gio, GLib, OSTree, _Core, _from_variant, _storage_error, aay

GPG_KEY = "ostree.gpgsigs"  # where OSTree keeps a commit's signatures, in its detached metadata
ED25519_KEY = "ostree.sign.ed25519"
MAX_DETACHED_KEYS = 64  # entries of one .commitmeta a push may bring
MAX_SIGNATURES_PER_KEY = 1024
MAX_SIGNATURE_SIZE = 64 << 10  # an OpenPGP signature is a few hundred bytes; an ed25519 one 64


@dataclass
class GpgSignature:
    """One GPG signature of a commit as libostree's verifier reports it."""

    fingerprint: str
    user: str
    valid: bool
    key_missing: bool
    problem: str | None = None


def _gpg_signatures(result: OSTree.GpgVerifyResult) -> list[GpgSignature]:
    A = OSTree.GpgSignatureAttr
    attrs = [A.VALID, A.FINGERPRINT, A.USER_NAME, A.USER_EMAIL, A.KEY_MISSING,
             A.SIG_EXPIRED, A.KEY_EXPIRED, A.KEY_REVOKED]
    sigs = []
    for i in range(result.count_all()):
        valid, fpr, name, email, missing, sig_exp, key_exp, revoked = result.get(i, attrs).unpack()
        problem = None
        if missing:
            problem = "public key not in the given keyring"
        elif revoked:
            problem = "key revoked"
        elif key_exp:
            problem = "key expired"
        elif sig_exp:
            problem = "signature expired"
        elif not valid:
            problem = "BAD signature"
        user = f"{name} <{email}>" if email else name
        sigs.append(GpgSignature(fingerprint=fpr, user=user, valid=bool(valid), key_missing=bool(missing),
                                 problem=problem))
    return sigs


class _Signatures(_Core):
    """Detached metadata and GPG."""

    def detached_metadata(self, checksum: str) -> dict[str, Any]:
        try:
            _, v = self._repo.read_commit_detached_metadata(checksum, None)
        except GLib.Error as e:
            raise RepoError(f"commit {checksum}: cannot read signatures: {e.message}") from None
        if v is None:
            return {}
        out: dict[str, Any] = {}
        for i in range(v.n_children()):
            entry = v.get_child_value(i)
            key = entry.get_child_value(0).get_string()
            val = entry.get_child_value(1).get_variant()
            if val.get_type_string() == "aay":
                out[key] = [bytes(val.get_child_value(j).get_data_as_bytes().get_data() or b"")
                            for j in range(val.n_children())]
            else:
                out[key] = _from_variant(val)
        return out

    def _raw_detached(self, checksum: str) -> dict[str, GLib.Variant]:
        _, v = self._repo.read_commit_detached_metadata(checksum, None)
        if v is None:
            return {}
        return {v.get_child_value(i).get_child_value(0).get_string():
                v.get_child_value(i).get_child_value(1).get_variant() for i in range(v.n_children())}

    def append_detached_signatures(self, checksum: str, key: str, signatures: list[bytes]) -> None:
        """Add raw signatures under ``key`` (type ``aay``), keeping every other entry."""
        entries = self._raw_detached(checksum)
        old = entries.get(key)
        existing: list[bytes] = []
        if old is not None:
            existing = [bytes(old.get_child_value(j).get_data_as_bytes().get_data() or b"")
                        for j in range(old.n_children())]
        have = set(existing)
        merged = existing + [s for s in dict.fromkeys(signatures) if s not in have]
        entries[key] = aay(merged)
        try:
            self._repo.write_commit_detached_metadata(checksum, GLib.Variant("a{sv}", entries), None)
        except GLib.Error as e:
            raise _storage_error(e, f"writing signatures of {checksum}") from None

    @staticmethod
    def parse_signatures(commit: str, data: bytes) -> dict[str, list[bytes]]:
        """The signatures (``aay`` entries) of a received .commitmeta; TransferError if malformed.

        Bounded before anything is copied out: at most MAX_DETACHED_KEYS entries and
        MAX_SIGNATURES_PER_KEY signatures under a key, none over MAX_SIGNATURE_SIZE, an
        ed25519 one exactly 64 bytes (anything else is no signature, and breaks a client's
        check of the good ones)."""
        try:
            v = GLib.Variant.new_from_bytes(GLib.VariantType.new("a{sv}"), GLib.Bytes.new(data), False)
            if not v.is_normal_form():
                raise TransferError(f"{commit}.commitmeta: not in normal form")
            if v.n_children() > MAX_DETACHED_KEYS:
                raise TransferError(f"{commit}.commitmeta: more than {MAX_DETACHED_KEYS} entries")
            incoming = {v.get_child_value(i).get_child_value(0).get_string():
                        v.get_child_value(i).get_child_value(1).get_variant() for i in range(v.n_children())}
        except GLib.Error as e:
            raise TransferError(f"{commit}.commitmeta: malformed: {e.message}") from None
        out: dict[str, list[bytes]] = {}
        for key, val in incoming.items():
            if val.get_type_string() != "aay":
                continue
            if val.n_children() > MAX_SIGNATURES_PER_KEY:
                raise TransferError(f"{commit}.commitmeta: more than {MAX_SIGNATURES_PER_KEY} signatures under {key}")
            sigs = []
            for j in range(val.n_children()):
                child = val.get_child_value(j)
                size = child.get_size()
                if size > MAX_SIGNATURE_SIZE or (key == ED25519_KEY and size != 64):
                    raise TransferError(f"{commit}.commitmeta: a signature of {size} bytes under {key}")
                sigs.append(bytes(child.get_data_as_bytes().get_data() or b""))
            out[key] = sigs
        return out

    def merge_detached_signatures(self, commit: str, data: bytes) -> None:
        """Add the signatures of a received .commitmeta to the commit's own, never dropping any."""
        for key, sigs in self.parse_signatures(commit, data).items():
            self.append_detached_signatures(commit, key, sigs)

    # -- GPG (libostree's own code, so `ostree` agrees by construction) -----------------------

    def gpg_sign(self, checksum: str, key_id: str, homedir: str | None) -> None:
        try:
            self._repo.sign_commit(checksum, key_id, homedir, None)
        except GLib.Error as e:
            raise SigningError(f"GPG signing with key {key_id!r} failed: {e.message}") from None

    def gpg_verify(self, checksum: str, keyring_dir: str | None, keyring_file: str | None) -> list[GpgSignature]:
        """Every GPG signature on the commit, checked against the given keyrings only."""
        if not self.detached_metadata(checksum).get(GPG_KEY):
            return []
        d = Gio.File.new_for_path(keyring_dir) if keyring_dir else None
        f = Gio.File.new_for_path(keyring_file) if keyring_file else None
        try:
            result = self._repo.verify_commit_ext(checksum, d, f, None)
        except GLib.Error as e:
            raise RepoError(f"commit {checksum}: GPG verification could not run: {e.message}") from None
        return _gpg_signatures(result)

    def gpg_sign_data(self, data: bytes, key_id: str, homedir: str | None) -> bytes:
        """A binary OpenPGP detached signature over ``data`` (``gpg --verify SIG DATA`` checks it)."""
        empty = GLib.Variant("a{sv}", {}).get_data_as_bytes()
        try:
            _, out = self._repo.gpg_sign_data(GLib.Bytes.new(data), empty, [key_id], homedir, None)
        except GLib.Error as e:
            raise SigningError(f"GPG signing with key {key_id!r} failed: {e.message}") from None
        # libostree returns an a{sv} holding the signatures under ostree.gpgsigs (aay)
        v = GLib.Variant.new_from_bytes(GLib.VariantType.new("a{sv}"), out, False)
        sigs = v.lookup_value("ostree.gpgsigs", GLib.VariantType.new("aay"))
        if sigs is None or sigs.n_children() != 1:
            raise SigningError(f"GPG signing with key {key_id!r} produced no signature")
        return bytes(sigs.get_child_value(0).get_data_as_bytes().get_data() or b"")

    def gpg_verify_data(self, data: bytes, signature: bytes, keyring_dir: str | None,
                        keyring_file: str | None) -> list[GpgSignature]:
        """Check a detached OpenPGP signature over ``data`` against the given keyrings only.

        Raises RepoError when the signature bytes are not OpenPGP data at all.
        """
        d = Gio.File.new_for_path(keyring_dir) if keyring_dir else None
        f = Gio.File.new_for_path(keyring_file) if keyring_file else None
        try:
            result = self._repo.gpg_verify_data(None, GLib.Bytes.new(data), GLib.Bytes.new(signature), d, f, None)
        except GLib.Error as e:
            raise RepoError(f"GPG verification could not run: {e.message}") from None
        return _gpg_signatures(result)
